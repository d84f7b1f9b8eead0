"""The re-run job: a request's notebook is re-run in the sandbox, its files compared, the re-made tables
checked with the populations the session recorded, and the release held when a file is not reproduced.

Real: the workspace runtime, bubblewrap, nbclient, the database (SQLite and PostgreSQL), the job
runner. The "workspace run" that makes the submitted files is the same notebook executed by the runtime
outside any sandbox, as a kernel in a workspace executes it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from disclosure.ledger import load_ledger
from disclosure.models import OutputCheck, OutputRerun
from disclosure.rerun.jobs import run_rerun
from disclosure.rerun.results import rerun_view
from disclosure.services import OutputError
from jupyter.client import extract_version
from tests.disclosure.factories import World, platform, run_queued_jobs
from tests.disclosure.test_checks import CENSUS, census_csv
from tre.core.audit import AuditEvent

REPO = Path(__file__).resolve().parents[3]
RUNTIME = Path(os.environ.get("TRE_WORKSPACE_RUNTIME", "/opt/tre-workspace"))
DRIVER = REPO / "jupyter" / "rerun_driver.py"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (RUNTIME / "bin" / "python").exists(),
        reason=f"WORKSPACE RUNTIME NOT BUILT at {RUNTIME}: run make workspace-runtime",
    ),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="BUBBLEWRAP NOT INSTALLED (make workspace-runtime)"),
]


PYTHON3 = {"name": "python3", "display_name": "Python 3", "language": "python"}
IR = {"name": "ir", "display_name": "R", "language": "R"}


def notebook(*cells: str, kernel: dict[str, str] = PYTHON3) -> bytes:
    return json.dumps(
        {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {"kernelspec": kernel},
            "cells": [
                {
                    "cell_type": "code",
                    "id": f"c{i}",
                    "metadata": {},
                    "execution_count": None,
                    "outputs": [],
                    "source": c,
                }
                for i, c in enumerate(cells)
            ],
        }
    ).encode()


# Filters a cohort, makes a table through the disclosure session (which records its population) and a figure.
COHORT_NOTEBOOK = notebook(
    "import os\nfrom disclosure.session import Session\nimport matplotlib.pyplot as plt\n"
    "session = Session(suppress=True)\n"
    "cohort = session.read(os.path.join(os.environ['TRE_EXTRACT_DIR'], 'cohort', 'data'), dataset='cohort')",
    "adults = cohort[cohort.age >= 18]\n"
    "table = session.pivot_table(adults, index='region', columns='sex', values='age', aggfunc='count')",
    "ax = adults.groupby('region').size().plot.bar()\nplt.savefig('outputs/by_region.png')",
    "session.finalise('outputs')",
)


# The same in R (the R kernel, IRkernel, with the "tre" functions attached): a table through the
# disclosure session, the same checks and the same results.json.
R_NOTEBOOK = notebook(
    'by_region <- tre_crosstab("cohort", "region", "sex", suppress = TRUE)',
    "tre_finalise()",
    kernel=IR,
)
needs_r = pytest.mark.skipif(
    not (RUNTIME / "share" / "jupyter" / "kernels" / "ir" / "kernel.json").exists(),
    reason="R NOT INSTALLED in the workspace runtime (make workspace-runtime as root)",
)


def write_extract(world: World, dataset: str, frame: pd.DataFrame) -> Path:
    root = Path(platform(world.app).settings.instance_path) / "extracts" / world.project.id
    data = root / dataset / "data"
    data.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(data / "part-00000.parquet")
    (root / dataset / "manifest.json").write_text(json.dumps({"dataset": dataset, "rows": len(frame)}))
    return root


def cohort_frame() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 900
    return pd.DataFrame(
        {
            "region": rng.choice(["north", "south", "east"], n),
            "sex": rng.choice(["F", "M"], n),
            "age": rng.integers(0, 95, n),
        }
    )


def census_frame() -> pd.DataFrame:
    """The rows behind tests.disclosure.test_checks.census_csv (its suppressed cell truly 9), with a region."""
    table = pd.read_csv(io.BytesIO(census_csv()), index_col=[0, 1])
    rows = []
    for (eth, sex), counts in table.iterrows():
        for age, value in counts.items():
            n = 9 if pd.isna(value) else int(value)
            rows += [{"eth": eth, "sex": sex, "age": age, "region": ("north", "south")[i % 2]} for i in range(n)]
    return pd.DataFrame(rows)


def run_in_workspace(tmp_path: Path, code: bytes, extract: Path) -> Path:
    """The researcher's own run: the runtime's kernel, in a home, no sandbox; returns the home."""
    home = tmp_path / "home"
    (home / "outputs").mkdir(parents=True)
    (home / "analysis.ipynb").write_bytes(code)
    env = {
        "PATH": f"{RUNTIME}/bin:/usr/bin:/bin",
        "HOME": str(home),
        "TRE_EXTRACT_DIR": str(extract),
        "MPLBACKEND": "Agg",
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
    }
    subprocess.run(
        [
            str(RUNTIME / "bin" / "python"),
            str(DRIVER),
            "run",
            "notebook",
            str(home / "analysis.ipynb"),
            str(tmp_path / "s"),
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return home


def submit_with_code(
    world: World, files: dict[str, bytes], code: bytes, extract: Path, path: str = "analysis.ipynb"
) -> Any:
    req, _ = world.svc.submit_from_workspace(
        world.author,
        world.project.id,
        "Adults by region",
        client_key=None,
        groups=[("outputs", "Adults by region and sex", "Counts under 10 suppressed")],
        files=[(name, content, "outputs", None) for name, content in files.items()],
        code=(path, code, extract_version(extract)),
    )
    run_queued_jobs(world.app)
    return world.refresh(req)


def the_rerun(world: World, req: Any) -> OutputRerun:
    world.session.expire_all()
    return world.session.scalars(select(OutputRerun).where(OutputRerun.request_id == req.id)).one()


def approve(world: World, req: Any) -> Any:
    for checker in (world.olive, world.oscar):
        world.svc.claim(checker, req.id)
        for f in world.refresh(req).current_files:
            world.svc.vote(checker, req.id, f.id, "approve", "")
        world.svc.submit_review(checker, req.id)
    world.svc.consolidate(world.olive, req.id, "approve")
    return world.refresh(req)


@pytest.fixture
def world(app: Any) -> Any:
    with app.app_context():
        yield World(app)


def test_a_notebook_that_filters_a_cohort_and_makes_a_table_re_runs_and_reproduces(world: World, tmp_path) -> None:
    extract = write_extract(world, "cohort", cohort_frame())
    home = run_in_workspace(tmp_path, COHORT_NOTEBOOK, extract)
    table, figure = (
        (home / "outputs" / "output_0_0.csv").read_bytes(),
        (home / "outputs" / "by_region.png").read_bytes(),
    )

    req = submit_with_code(world, {"output_0_0.csv": table, "by_region.png": figure}, COHORT_NOTEBOOK, extract)

    rerun = the_rerun(world, req)
    assert rerun.state == "done", (rerun.reason, rerun.log)
    by_name = {r["name"]: r for r in rerun.files.values()}
    assert by_name["output_0_0.csv"]["outcome"] == "reproduced"
    assert by_name["by_region.png"]["outcome"] == "reproduced" and by_name["by_region.png"]["how"] == "image"
    # The checks ran on the re-made table with the population the session recorded, filter included.
    population = by_name["output_0_0.csv"]["check"]["population"]
    assert population == {"dataset": "cohort", "filters": [{"column": "age", "op": ">=", "value": 18}]}
    approved = approve(world, req)
    world.svc.release(world.oscar, approved.id)
    assert world.refresh(req).state == "released"
    # The ledger keeps the re-made table's entry, with its known population (the file had no specification).
    table_id = next(fid for fid, r in rerun.files.items() if r["name"] == "output_0_0.csv")
    (entry,) = [e for e in load_ledger(world.session, world.project.id).entries if e.output_id == table_id]
    assert entry.population == population
    event = world.session.scalars(select(AuditEvent).where(AuditEvent.action == "output.rerun")).one()
    assert event.detail["reproduced"] == 2 and event.detail["differs"] == 0


def test_the_same_notebook_with_the_submitted_table_edited_by_hand_is_flagged_differs(world: World, tmp_path) -> None:
    extract = write_extract(world, "cohort", cohort_frame())
    home = run_in_workspace(tmp_path, COHORT_NOTEBOOK, extract)
    table = pd.read_csv(home / "outputs" / "output_0_0.csv", index_col=0)
    table.iloc[0, 0] = table.iloc[0, 0] + 7  # "tidied" by hand after the notebook ran
    edited = table.to_csv().encode()

    req = submit_with_code(world, {"output_0_0.csv": edited}, COHORT_NOTEBOOK, extract)

    rerun = the_rerun(world, req)
    (outcome,) = rerun.files.values()
    assert outcome["outcome"] == "differs"
    assert (
        outcome["difference"].startswith("1 cell(s) differ")
        and "largest numeric difference is 7" in outcome["difference"]
    )
    assert outcome["cells"][0]["row"] == 1 and outcome["cells"][0]["column"] == 1
    # Held at release: the TRE's policy releases only reproduced files.
    approved = approve(world, req)
    with pytest.raises(OutputError, match="did not reproduce output_0_0.csv"):
        world.svc.release(world.oscar, approved.id)
    assert world.refresh(req).state == "approved"
    # The author's team sees that it differs, not the difference (content: ADR 0007).
    team = rerun_view(world.session, req, "team")
    assert team["files"] == {outcome_id: {"name": "output_0_0.csv", "outcome": "differs"} for outcome_id in rerun.files}
    assert "cells" not in json.dumps(team) and "log" not in team
    assert "cells" in json.dumps(rerun_view(world.session, req, "checker"))


def test_a_policy_that_allows_unreproduced_files_lets_them_be_released(world: World, tmp_path) -> None:
    extract = write_extract(world, "cohort", cohort_frame())
    world.svc.release_unreproduced = True
    code = notebook("open('outputs/notes.txt', 'w').write('made again')")

    req = submit_with_code(world, {"notes.txt": b"written by hand"}, code, extract)

    assert next(iter(the_rerun(world, req).files.values()))["outcome"] == "differs"
    world.svc.release(world.oscar, approve(world, req).id)
    assert world.refresh(req).state == "released"


def test_code_that_cannot_re_run_holds_every_file_and_says_why(world: World, tmp_path) -> None:
    extract = write_extract(world, "cohort", cohort_frame())
    code = notebook("import urllib.request\nurllib.request.urlopen('http://192.0.2.1/', timeout=5)")

    req = submit_with_code(world, {"notes.txt": b"anything"}, code, extract)

    rerun = the_rerun(world, req)
    assert rerun.state == "failed" and "no network at all" in rerun.reason
    assert any(line.startswith("error: URLError") for line in rerun.log)
    with pytest.raises(OutputError, match="could not be re-run"):
        world.svc.release(world.oscar, approve(world, req).id)


def test_the_filtered_cohort_differencing_pair_is_caught_through_the_re_run(world: World, tmp_path) -> None:
    # A 3-way table released with (mixed, F, 65+) suppressed; then a one-way table of the women over 65 by
    # region, made in a notebook and sent WITHOUT a specification: its own check cannot know the population.
    earlier = world.released(content=census_csv(), spec=CENSUS, name="census.csv")
    extract = write_extract(world, "census", census_frame())
    code = notebook(
        "import os\nfrom disclosure.session import Session\nsession = Session()\n"
        "census = session.read(os.path.join(os.environ['TRE_EXTRACT_DIR'], 'census', 'data'), dataset='census')\n"
        "women_65 = census[(census.sex == 'F') & (census.age == '65+')]\n"
        "session.pivot_table(women_65, index='region', values='eth', aggfunc='count', margins=True)\n"
        "session.finalise('outputs')"
    )
    home = run_in_workspace(tmp_path, code, extract)

    req = submit_with_code(world, {"output_0_0.csv": (home / "outputs" / "output_0_0.csv").read_bytes()}, code, extract)

    own = world.session.scalars(select(OutputCheck).where(OutputCheck.request_id == req.id)).one()
    assert own.differencing == []  # the submitted file alone: population unknown, nothing found
    (outcome,) = the_rerun(world, req).files.values()
    assert outcome["outcome"] == "reproduced"
    check = outcome["check"]
    assert check["status"] == "fail"
    assert check["population"]["filters"] == [
        {"column": "sex", "op": "==", "value": "F"},
        {"column": "age", "op": "==", "value": "65+"},
    ]
    (finding,) = check["differencing"]
    assert finding["earlier"] == world.refresh(earlier).current_files[0].id
    assert finding["cell"] == {"eth": "mixed", "sex": "F", "age": "65+"} and finding["revealed"] == 9


def test_running_the_job_again_after_it_finished_changes_nothing(world: World, tmp_path) -> None:
    extract = write_extract(world, "cohort", cohort_frame())
    req = submit_with_code(world, {"notes.txt": b"x"}, notebook("open('outputs/notes.txt', 'w').write('x')"), extract)
    rerun = the_rerun(world, req)
    before = (rerun.state, rerun.finished_at, dict(rerun.files))
    p = platform(world.app)

    answer = run_rerun(world.session, p.audit, p.files, p.settings, {"rerun_id": rerun.id}, sandbox=None)

    assert answer == {"state": "done", "already": True}
    rerun = the_rerun(world, req)
    assert (rerun.state, rerun.finished_at, dict(rerun.files)) == before


@needs_r
def test_an_r_notebook_that_makes_a_table_re_runs_and_reproduces(world: World, tmp_path) -> None:
    extract = write_extract(world, "cohort", cohort_frame())
    home = run_in_workspace(tmp_path, R_NOTEBOOK, extract)
    table = (home / "outputs" / "r-session" / "output_0_0.csv").read_bytes()

    req = submit_with_code(world, {"output_0_0.csv": table}, R_NOTEBOOK, extract)

    rerun = the_rerun(world, req)
    assert rerun.state == "done", (rerun.reason, rerun.log)
    (outcome,) = rerun.files.values()
    assert outcome["outcome"] == "reproduced" and outcome["remade_path"] == "outputs/r-session/output_0_0.csv"
    assert outcome["check"]["population"] == {"dataset": "cohort", "filters": []}


@needs_r
def test_an_r_notebook_whose_table_was_edited_by_hand_is_flagged_differs(world: World, tmp_path) -> None:
    extract = write_extract(world, "cohort", cohort_frame())
    home = run_in_workspace(tmp_path, R_NOTEBOOK, extract)
    table = pd.read_csv(home / "outputs" / "r-session" / "output_0_0.csv", index_col=0)
    table.iloc[0, 0] = table.iloc[0, 0] + 3
    edited = table.to_csv().encode()

    req = submit_with_code(world, {"output_0_0.csv": edited}, R_NOTEBOOK, extract)

    (outcome,) = the_rerun(world, req).files.values()
    assert outcome["outcome"] == "differs" and "largest numeric difference is 3" in outcome["difference"]
    with pytest.raises(OutputError, match="did not reproduce output_0_0.csv"):
        world.svc.release(world.oscar, approve(world, req).id)


@needs_r
def test_an_r_script_re_runs_and_a_table_it_writes_reproduces(world: World, tmp_path) -> None:
    extract = write_extract(world, "cohort", cohort_frame())
    code = (
        b'by_sex <- tre_sql("select sex, count(*) as n from cohort group by sex order by sex")\n'
        b'write.csv(by_sex, "outputs/by_sex.csv", row.names = FALSE)\n'
    )
    counts = cohort_frame().groupby("sex").size()
    table = ("\"sex\",\"n\"\n" + "".join(f'"{k}",{v}\n' for k, v in counts.items())).encode()

    req = submit_with_code(world, {"by_sex.csv": table}, code, extract, path="by_sex.R")

    rerun = the_rerun(world, req)
    assert rerun.state == "done", (rerun.reason, rerun.log)
    assert next(iter(rerun.files.values()))["outcome"] == "reproduced"
