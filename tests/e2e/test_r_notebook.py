"""Through the real control plane, worker and JupyterHub, in R: a researcher's R notebook in her workspace
reads the project's extract, makes a table through the R disclosure functions (``tre_crosstab``, the same
session and rules as Python) and submits it with ``tre_submit``; an output checker finds the request in
the queue, its table with the automated verdict of the queue's own checks (issue 25)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import LiveService, sign_in
from tests.e2e.test_workspace_journey import OLIVE, RITA, open_lab, run_in_workspace

RUNTIME = Path(os.environ.get("TRE_WORKSPACE_RUNTIME", "/opt/tre-workspace"))
TITLE = "Patients by deprivation decile and sex (R)"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="NOT ROOT: workspaces need their own unix accounts; skipped"),
    pytest.mark.skipif(
        not (RUNTIME / "bin" / "jupyter-labhub").exists(),
        reason="WORKSPACE RUNTIME NOT BUILT (make workspace-runtime); skipped",
    ),
    pytest.mark.skipif(
        not (RUNTIME / "share" / "jupyter" / "kernels" / "ir" / "kernel.json").exists(),
        reason="R NOT INSTALLED in the workspace runtime (make workspace-runtime as root); skipped",
    ),
]

# The notebook's cells, as the researcher writes them in R.
R_NOTEBOOK = f"""
tables <- tre_tables()
has <- function(t) all(c("sex", "deprivation_decile") %in% names(tre_sql(sprintf("select * from %s limit 1", t))))
patients <- Filter(has, tables)[[1]]
cat("ROWS", tre_sql(sprintf("select count(*) as n from %s", patients))$n, "\\n")
by_decile <- tre_crosstab(patients, "deprivation_decile", "sex", suppress = TRUE)
cat("STATUS", attr(by_decile, "status"), "\\n")
tre_finalise()
answer <- tre_submit(
  "Number of patients in the extract by deprivation decile (1 most deprived) and sex, made in R",
  "tre_crosstab with suppression: cells under the threshold are suppressed",
  title = {TITLE!r}
)
cat("SUBMITTED", answer$id, answer$state, "\\n")
"""


def _word_after(text: str, marker: str) -> list[str]:
    return text.split(marker + " ", 1)[1].split()


def test_an_r_notebook_submits_a_checked_table_that_the_checker_sees_with_its_verdict(
    page: Any, live_service: LiveService
) -> None:
    sign_in(page, live_service, RITA)
    page.goto(live_service.url + "/projects/")
    page.get_by_role("link", name="Heart failure readmissions").first.click()
    page.click("#open-workspace")
    base = open_lab(page)

    ran = run_in_workspace(page, base, R_NOTEBOOK, timeout=300, kernel="ir")

    out = ran["stdout"]
    assert int(_word_after(out, "ROWS")[0]) > 0, out
    session_status = _word_after(out, "STATUS")[0]
    assert session_status in {"pass", "review", "fail"}, out
    request_id, state = _word_after(out, "SUBMITTED")[:2]
    assert state == "submitted", out

    # The output checker finds it in the queue and opens it: the table carries the queue's verdict.
    olive = page.context.browser.new_context().new_page()
    sign_in(olive, live_service, OLIVE)
    olive.goto(live_service.url + "/outputs/queue")
    olive.get_by_role("link", name=TITLE, exact=True).click()
    assert request_id in olive.url
    tables = olive.locator(".nhsuk-card[data-file-name$='.csv'] .automated-verdict")
    deadline = time.monotonic() + 180
    while tables.count() == 0 and time.monotonic() < deadline:
        time.sleep(3)  # the automated checks run in the worker; the page shows them once done
        olive.reload()
    assert tables.count() >= 1, olive.inner_text("main")[-2000:]
    verdicts = {tables.nth(i).get_attribute("data-status") for i in range(tables.count())}
    assert verdicts <= {"pass", "review", "fail", "error"} and verdicts, verdicts
    assert "Number of patients in the extract by deprivation decile" in olive.inner_text("main")
