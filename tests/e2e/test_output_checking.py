"""The airlock end to end, in a real browser against the really started service (web, worker, sweeper):
a researcher submits a table with a small cell, the automated verdict flags it, the author cannot
review it, two checkers review blind and one asks for changes, the author resubmits with the cell
suppressed, both approve, the bundle is released and downloaded, and every step is audited."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from tests.e2e.conftest import LiveService, free_port, sign_in

pytestmark = pytest.mark.e2e

RITA, OLIVE, OSCAR = (
    "rita.researcher@demo.tre.example",
    "olive.checker@demo.tre.example",
    "oscar.checker@demo.tre.example",
)
PROJECT = "Heart failure readmissions"
SMALL_CELL = "region,female,male\nNorth,25,3\nSouth,40,52\n"
SUPPRESSED = "region,all\nNorth,28\nSouth,92\n"


@pytest.fixture(scope="module")
def airlock_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """The service really started (web, worker, sweeper), without JupyterHub: outputs do not need it,
    and another hub on this machine would hold its ports."""
    service = LiveService(tmp_path_factory.mktemp("airlock") / "instance", free_port())
    service.env["TRE_WORKSPACE_RUNTIME"] = str(service.instance.parent / "no-workspace-runtime")
    service.start()
    yield service
    service.stop()


def _wait_for_state(page: Any, state: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.get_attribute("#state", "data-state") == state:
            return
        time.sleep(1)
        page.reload()
    raise AssertionError(f"the request did not become {state}; it is {page.get_attribute('#state', 'data-state')}")


def _vote_and_review(page: Any, url: str, vote: str, comment: str = "", *, claim: bool = True) -> None:
    page.goto(url)
    if claim:
        page.click("#claim")
    page.select_option(".vote-form select", vote)
    page.fill(".vote-form textarea", comment)
    page.click(".vote-form button")
    page.wait_for_selector("#submit-review")
    page.click("#submit-review")
    page.wait_for_selector("#reviewers")


def _workspace_token(service: LiveService, email: str, project_title: str) -> str:
    """The token a workspace of ``project_title`` holds (purpose output-submit), made with the service's
    own keys, as the hub's redeem does when the workspace starts (no hub runs here)."""
    import datetime as dt

    from projects.models import Project
    from tre.app import create_app
    from tre.core.identity import User

    with pytest.MonkeyPatch.context() as patch:
        for key, value in service.env.items():
            patch.setenv(key, value)
        app = create_app()
    with app.app_context():
        platform = app.extensions["tre.platform"]
        session = platform.db.session
        user = session.scalar(select(User).where(User.email == email))
        project = session.scalar(select(Project).where(Project.title == project_title))
        assert user is not None and project is not None
        user_id, project_id = user.id, project.id
        session.rollback()  # SQLite: our read transaction would hold the lock the issuing needs
        ttl = dt.timedelta(minutes=30)
        token = platform.tokens.issue(user_id, "tre-api", "output-submit", ttl, project_id=project_id)
        session.remove()
        platform.db.dispose()
    return token


def test_output_request_goes_through_the_airlock_and_every_step_is_audited(
    browser: Any, airlock_service: LiveService, tmp_path: Path
) -> None:
    rita = browser.new_context().new_page()
    olive = browser.new_context().new_page()
    oscar = browser.new_context().new_page()
    sign_in(rita, airlock_service, RITA)
    sign_in(olive, airlock_service, OLIVE)
    sign_in(oscar, airlock_service, OSCAR)
    table = tmp_path / "table.csv"

    # The researcher submits a table with a small cell from her workspace (files come only from there).
    from jupyter.client import resubmit, submit

    token = _workspace_token(airlock_service, RITA, PROJECT)
    table.write_text(SMALL_CELL)
    answer = submit(
        [table],
        "Emergency admissions in 2020 by region and sex; all adults in the extract",
        "None yet",
        title="Admissions by region and sex",
        api=airlock_service.url,
        token=token,
    )
    request_id = answer["id"]
    request_url = f"{airlock_service.url}/outputs/requests/{request_id}"
    rita.goto(request_url)
    assert rita.locator("#file").count() == 0  # no upload from outside the workspace

    # The automated verdict flags the small cell.
    _wait_for_state(rita, "awaiting_review")
    assert rita.get_attribute(".automated-verdict", "data-status") == "fail"
    assert "threshold" in rita.inner_text(".verdict-reasons")

    # The author cannot review her own request.
    assert rita.locator("#claim").count() == 0
    assert rita.goto(airlock_service.url + "/outputs/queue").status == 403

    # Two checkers review blind; one asks for changes.
    _vote_and_review(olive, request_url, "changes_requested", "North/male is 3: suppress or combine")
    assert "stay hidden until every required review is in" in olive.inner_text("main")
    oscar.goto(request_url)
    assert "North/male is 3" not in oscar.inner_text("main")
    _vote_and_review(oscar, request_url, "approve")
    assert "North/male is 3" in oscar.inner_text("main")  # unblinded once both reviews are in
    oscar.check("#outcome-return")
    oscar.fill("#decision-comment", "Please suppress the small cell before release")
    oscar.click("text=Record decision")

    # The author sees the shared comment, suppresses the cell and resubmits.
    rita.goto(request_url)
    assert rita.get_attribute("#state", "data-state") == "returned"
    assert "Please suppress the small cell before release" in rita.inner_text("#comments")
    table.write_text(SUPPRESSED)
    resubmit(
        request_id,
        [table],
        controls="Sex combined so that no count is below 10",
        api=airlock_service.url,
        token=token,
    )
    rita.goto(request_url)
    _wait_for_state(rita, "awaiting_review")
    assert rita.get_attribute(".automated-verdict", "data-status") != "fail"

    # Both approve; the request is released.
    _vote_and_review(olive, request_url, "approve")
    _vote_and_review(oscar, request_url, "approve")
    oscar.check("#outcome-approve")
    oscar.click("text=Record decision")
    oscar.click("#release")
    assert oscar.get_attribute("#state", "data-state") == "released"

    # The author downloads the bundle, outside the workspace.
    rita.goto(request_url)
    with rita.expect_download() as download:
        rita.click("#download-bundle")
    bundle = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
    assert bundle.read("files/outputs/table.csv").decode() == SUPPRESSED
    assert {"verdicts.json", "disclosure-control-record.json", "decisions.json", "SHA256SUMS"} <= set(bundle.namelist())

    # Every step is in the audit log.
    from tre.core.audit import AuditEvent

    engine = create_engine(f"sqlite:///{airlock_service.instance / 'tre.sqlite'}")
    with Session(engine) as s:
        actions = list(
            s.scalars(select(AuditEvent.action).where(AuditEvent.target_id == request_id).order_by(AuditEvent.seq))
        )
        checks = list(
            s.scalars(
                select(AuditEvent.action).where(AuditEvent.action == "output.check", AuditEvent.project_id.is_not(None))
            )
        )
    engine.dispose()
    for action in (
        "output.create",
        "output.add_file",
        "output.group",
        "output.submit",
        "output.checks_start",
        "output.checks_done",
        "output.claim",
        "output.vote",
        "output.submit_review",
        "output.return",
        "output.resubmit",
        "output.approve",
        "output.release",
        "output.download",
    ):
        assert action in actions, action
    assert actions.count("output.checks_done") == 2
    assert len(checks) >= 2
