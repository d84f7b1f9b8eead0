"""Resubmission from the workspace: a returned request's files are replaced and it goes back to the
checkers, only with the project's workspace token; nothing else uploads output files."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import pytest
from sqlalchemy import inspect, select

from disclosure import rules
from disclosure.models import OutputRequest
from tests.disclosure.factories import SAFE_CSV, SMALL_CELL_CSV, World, platform, run_queued_jobs
from tre.core.audit import AuditEvent
from tre.core.identity import Identity


@pytest.fixture
def world(app: Any) -> Any:
    with app.app_context():
        w = World(app)
    return w


def workspace_token(world: World, user: Any) -> str:
    tokens = platform(world.app).tokens
    world.session.rollback()  # issuing writes; the test's read transaction would hold SQLite's lock
    return tokens.issue(user.id, "tre-api", "output-submit", dt.timedelta(minutes=10), project_id=world.project.id)


def returned(world: World) -> OutputRequest:
    req = world.reviewed(votes={"olive": "changes_requested", "oscar": "changes_requested"})
    world.svc.consolidate(world.olive, req.id, "return", "Round the counts to 5")
    return fresh(world, req)


def fresh(world: World, req: OutputRequest) -> OutputRequest:
    """The request as the database has it now (the test's read transaction ended first)."""
    (request_id,) = inspect(req).identity  # readable even once the instance has left its session
    world.session.rollback()
    world.session.expire_all()
    found = world.session.get(OutputRequest, request_id)
    assert found is not None
    return found


def resubmit(world: World, request_id: str, bearer: str, files: list[tuple[bytes, str]], **fields: Any) -> Any:
    data: dict[str, Any] = {"group": "tables", "files": [(io.BytesIO(c), n) for c, n in files], **fields}
    world.session.rollback()  # the test's own read transaction would hold SQLite's lock
    return world.app.test_client().post(
        f"/api/v1/outputs/requests/{request_id}/resubmission",
        headers={"Authorization": f"Bearer {bearer}"},
        data=data,
        content_type="multipart/form-data",
    )


def test_workspace_replaces_a_file_of_a_returned_request_and_resubmits_it(world: World) -> None:
    req = returned(world)
    old_sha = req.current_files[0].sha256

    response = resubmit(world, req.id, workspace_token(world, world.author), [(SAFE_CSV, "table.csv")])

    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["state"] == rules.SUBMITTED and response.json["round"] == 2
    after = fresh(world, req)
    assert [f.name for f in after.current_files] == ["table.csv"]
    assert after.current_files[0].sha256 != old_sha
    run_queued_jobs(world.app)
    assert fresh(world, req).state == rules.AWAITING_REVIEW


def test_the_same_resubmission_sent_again_changes_nothing(world: World) -> None:
    req = returned(world)
    bearer = workspace_token(world, world.author)

    first = resubmit(world, req.id, bearer, [(SAFE_CSV, "table.csv")])
    again = resubmit(world, req.id, bearer, [(SAFE_CSV, "table.csv")])

    assert (first.status_code, again.status_code) == (200, 200)
    assert fresh(world, req).round == 2
    events = world.session.scalars(select(AuditEvent.action).where(AuditEvent.target_id == req.id)).all()
    assert events.count("output.resubmit") == 1


def test_resubmission_can_drop_a_file_and_change_the_groups_context(world: World) -> None:
    req = returned(world)

    response = resubmit(
        world,
        req.id,
        workspace_token(world, world.author),
        [(b"region,count\nAll,120\n", "total.csv")],
        remove=json.dumps(["table.csv"]),
        context="Admissions, all regions together",
    )

    assert response.status_code == 200, response.get_data(as_text=True)
    after = fresh(world, req)
    assert [f.name for f in after.current_files] == ["total.csv"]
    assert after.groups[0].context == "Admissions, all regions together"
    assert after.groups[0].controls == "None yet"  # not sent: kept


def test_a_request_that_was_not_returned_cannot_be_changed_from_the_workspace(world: World) -> None:
    req = world.submitted(content=SAFE_CSV)
    before = req.current_files[0].sha256

    response = resubmit(world, req.id, workspace_token(world, world.author), [(SMALL_CELL_CSV, "table.csv")])

    assert response.status_code == 422
    assert "returned for changes" in response.json["detail"]
    assert fresh(world, req).current_files[0].sha256 == before


def test_a_personal_token_cannot_send_output_files(world: World) -> None:
    """The curious researcher at home: their own API token does not upload files into a request."""
    req = returned(world)
    p = platform(world.app)
    _, personal = Identity(p.db.session, p.keys, p.audit).create_personal_token(world.author, "home", 30)

    response = resubmit(world, req.id, personal, [(SAFE_CSV, "table.csv")])

    assert response.status_code == 403
    assert fresh(world, req).state == rules.RETURNED


def test_a_colleagues_workspace_cannot_change_the_authors_request(world: World) -> None:
    req = returned(world)

    response = resubmit(world, req.id, workspace_token(world, world.colleague), [(SAFE_CSV, "table.csv")])

    assert response.status_code == 403
    assert fresh(world, req).state == rules.RETURNED
    denied = world.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "output.resubmit", AuditEvent.outcome == "denied")
    ).all()
    assert [e.actor_id for e in denied] == [world.colleague.id]


def test_tre_submit_resubmits_a_returned_request_from_the_workspace(world: World, tmp_path: Any) -> None:
    """The workspace's own client (``tre-submit --resubmit``) against the real control plane."""
    import threading

    from werkzeug.serving import make_server

    from jupyter.client import main

    req = returned(world)
    request_id = req.id
    bearer = workspace_token(world, world.author)
    table = tmp_path / "table.csv"
    table.write_bytes(SAFE_CSV)
    server = make_server("127.0.0.1", 0, world.app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    world.session.rollback()
    try:
        env = {"TRE_OUTPUT_API": f"http://127.0.0.1:{server.server_port}", "TRE_OUTPUT_TOKEN": bearer}
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            code = main(["--resubmit", request_id, str(table), "--controls", "Counts rounded to 5"])
    finally:
        server.shutdown()
        serving.join(timeout=30)
        server.server_close()

    assert code == 0
    after = fresh(world, req)
    assert after.state == rules.SUBMITTED and after.round == 2
    assert [f.name for f in after.current_files] == ["table.csv"]
    assert after.groups[0].controls == "Counts rounded to 5"
