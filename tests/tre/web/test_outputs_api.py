"""The outputs API: the workspace's scoped token submits (idempotently), checkers review."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import pytest
from sqlalchemy import func, select

from disclosure.models import OutputFile, OutputRequest
from tests.disclosure.factories import SAFE_CSV, SMALL_CELL_CSV, World, active_project, platform, run_queued_jobs
from tre.core.audit import AuditEvent


@pytest.fixture
def world(app: Any) -> Any:
    with app.app_context():
        w = World(app)
    return w


def token(world: World, user: Any, *, purpose: str = "output-submit", project_id: str | None = "") -> str:
    project = world.project.id if project_id == "" else project_id
    return platform(world.app).tokens.issue(user.id, "tre-api", purpose, dt.timedelta(minutes=10), project_id=project)


def post_request(
    world: World,
    bearer: str,
    *,
    key: str | None = None,
    files: list[tuple[bytes, str]] | None = None,
    context: str = "Admissions by region, adults 2020",
    specs: dict[str, Any] | None = None,
) -> Any:
    headers = {"Authorization": f"Bearer {bearer}"}
    if key:
        headers["Idempotency-Key"] = key
    files = files if files is not None else [(SMALL_CELL_CSV, "table.csv")]
    data: dict[str, Any] = {
        "title": "Admissions",
        "group": "tables",
        "context": context,
        "controls": "None applied",
        "files": [(io.BytesIO(c), n) for c, n in files],
    }
    if specs is not None:
        data["table_specs"] = json.dumps(specs)
    return world.app.test_client().post(
        "/api/v1/outputs/requests", headers=headers, data=data, content_type="multipart/form-data"
    )


def _count(world: World, model: Any) -> int:
    world.session.rollback()
    return int(world.session.scalar(select(func.count()).select_from(model)) or 0)


def test_workspace_token_submits_files_context_and_controls(world: World) -> None:
    response = post_request(world, token(world, world.author), files=[(SAFE_CSV, "t.csv"), (b"notes", "n.txt")])

    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.json
    assert body["state"] == "submitted" and body["project_id"] == world.project.id
    assert sorted(f["name"] for f in body["files"]) == ["n.txt", "t.csv"]
    run_queued_jobs(world.app)
    status = world.app.test_client().get(
        f"/api/v1/outputs/requests/{body['id']}", headers={"Authorization": f"Bearer {token(world, world.author)}"}
    )
    assert status.json["state"] == "awaiting_review"
    assert {f["automated_status"] for f in status.json["files"]} == {"review"}


def test_same_submission_twice_with_the_same_idempotency_key_creates_one_request(world: World) -> None:
    bearer = token(world, world.author)

    first = post_request(world, bearer, key="run-42")
    second = post_request(world, bearer, key="run-42")

    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json["id"] == second.json["id"]
    assert _count(world, OutputRequest) == 1
    assert _count(world, OutputFile) == 1


def test_token_of_another_purpose_cannot_submit(world: World) -> None:
    response = post_request(world, token(world, world.author, purpose="api"))

    assert response.status_code == 403
    assert "workspace" in response.json["detail"]
    assert _count(world, OutputRequest) == 0


def test_workspace_token_for_a_project_the_person_is_not_on_is_refused_by_the_gate(world: World) -> None:
    other = active_project(world.app, world.outsider, title="Another project")

    response = post_request(world, token(world, world.author, project_id=other.id))

    # A project-bound token lives only while the gate lets its person in (ADR 0010): refused at
    # authentication, and the refusal is audited.
    assert response.status_code == 401
    assert _count(world, OutputRequest) == 0
    refused = world.session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.refused")).all()
    assert [e.detail["reason"] for e in refused] == ["token for a project its person may no longer use"]


def test_bad_file_in_a_submission_changes_nothing(world: World) -> None:
    response = post_request(
        world, token(world, world.author), files=[(SAFE_CSV, "ok.csv"), (b"PK\x03\x04zip", "all.zip")]
    )

    assert response.status_code == 422
    assert "archives" in response.json["detail"]
    assert _count(world, OutputRequest) == 0


def test_submission_without_context_lists_what_is_missing_and_changes_nothing(world: World) -> None:
    response = post_request(world, token(world, world.author), context="")

    assert response.status_code == 422
    assert response.json["errors"]["missing"] == [
        "Describe the context of group tables: what it shows, population, denominators"
    ]
    assert _count(world, OutputRequest) == 0
    assert world.session.scalars(select(AuditEvent).where(AuditEvent.action == "output.create")).all() == []


def test_table_specification_must_name_a_file_that_was_sent(world: World) -> None:
    response = post_request(world, token(world, world.author), specs={"other.csv": {"dims": ["a"]}})

    assert response.status_code == 422
    assert "other.csv" in response.json["detail"]


def test_workspace_token_reads_only_its_own_projects_requests(world: World) -> None:
    with world.app.app_context():
        other = active_project(world.app, world.outsider, title="Another project")
        theirs, _ = world.svc.create_request(world.outsider, other.id, "Theirs")

    response = world.app.test_client().get(
        f"/api/v1/outputs/requests/{theirs.id}", headers={"Authorization": f"Bearer {token(world, world.author)}"}
    )

    assert response.status_code == 403


def test_checker_reviews_over_the_api_blind_then_consolidates(world: World) -> None:
    created = post_request(world, token(world, world.author), files=[(SAFE_CSV, "t.csv")])
    request_id = created.json["id"]
    file_id = created.json["files"][0]["id"]
    run_queued_jobs(world.app)
    client = world.app.test_client()

    for checker in (world.olive, world.oscar):
        auth = {"Authorization": f"Bearer {token(world, checker, purpose='api', project_id=None)}"}
        assert client.post(f"/api/v1/outputs/requests/{request_id}/claim", headers=auth).status_code == 200
        voted = client.post(
            f"/api/v1/outputs/requests/{request_id}/votes", headers=auth, json={"file_id": file_id, "vote": "approve"}
        )
        assert voted.status_code == 200, voted.get_data(as_text=True)
        assert client.post(f"/api/v1/outputs/requests/{request_id}/review", headers=auth).status_code == 200
    auth = {"Authorization": f"Bearer {token(world, world.olive, purpose='api', project_id=None)}"}
    decided = client.post(f"/api/v1/outputs/requests/{request_id}/decision", headers=auth, json={"outcome": "approve"})

    assert decided.status_code == 200 and decided.json["state"] == "approved"


def test_changes_requested_without_comment_is_refused_over_the_api(world: World) -> None:
    created = post_request(world, token(world, world.author), files=[(SAFE_CSV, "t.csv")])
    run_queued_jobs(world.app)
    auth = {"Authorization": f"Bearer {token(world, world.olive, purpose='api', project_id=None)}"}
    client = world.app.test_client()
    client.post(f"/api/v1/outputs/requests/{created.json['id']}/claim", headers=auth)

    refused = client.post(
        f"/api/v1/outputs/requests/{created.json['id']}/votes",
        headers=auth,
        json={"file_id": created.json["files"][0]["id"], "vote": "changes_requested"},
    )

    assert refused.status_code == 422
    assert "comment is required" in refused.json["detail"]


def test_submission_reply_is_what_a_status_read_returns_before_any_check_runs(world: World) -> None:
    """The reply to a new submission is built from what its transaction wrote, without reading it back
    (issue 26): it must say exactly what reading the request back says while its checks wait."""
    bearer = token(world, world.author)
    created = post_request(world, bearer, files=[(SAFE_CSV, "t.csv"), (b"notes", "n.txt")])

    read = world.app.test_client().get(
        f"/api/v1/outputs/requests/{created.json['id']}", headers={"Authorization": f"Bearer {bearer}"}
    )

    assert created.status_code == 201 and read.status_code == 200
    assert created.json == read.json
    assert created.json["automated_checks"] == "running" and created.json["state"] == "submitted"
