"""The workspace sends the code that made its outputs with them; the request keeps it and queues its
re-run; what the re-run found is shown in full to the checkers only, and the code's content only where
the content rule allows (ADR 0007)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from typing import Any

import pytest
from sqlalchemy import func, select, update

from disclosure.models import OutputRequest, OutputRerun
from disclosure.progress import RERUN_JOB
from disclosure.services import OutputError
from tests.disclosure.factories import SAFE_CSV, World, platform
from tre.core import jobs
from tre.core.audit import AuditEvent
from tre.core.db import transaction, utcnow
from tre.core.identity import Identity

NOTEBOOK = json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}).encode()
VERSION = "c0" * 32


@pytest.fixture
def world(app: Any) -> Any:
    with app.app_context():
        w = World(app)
    return w


def workspace_token(world: World) -> str:
    tokens = platform(world.app).tokens
    world.session.rollback()
    return tokens.issue(
        world.author.id, "tre-api", "output-submit", dt.timedelta(minutes=10), project_id=world.project.id
    )


def personal_token(world: World, user: Any) -> str:
    plat = platform(world.app)
    world.session.rollback()
    _, token = Identity(plat.db.session, plat.keys, plat.audit).create_personal_token(user, "checking", 30)
    return token


def send(world: World, bearer: str, code: tuple[str, bytes] | None, **fields: str) -> Any:
    data: dict[str, Any] = {
        "title": "Table 1",
        "context": "Admissions by region",
        "controls": "Counts under 10 suppressed",
        "files": [(io.BytesIO(SAFE_CSV), "table.csv")],
        **fields,
    }
    if code is not None:
        data["code"] = (io.BytesIO(code[1]), code[0].rsplit("/", 1)[-1])
        data["code_path"] = code[0]
    world.session.rollback()
    return world.app.test_client().post(
        "/api/v1/outputs/requests",
        headers={"Authorization": f"Bearer {bearer}"},
        data=data,
        content_type="multipart/form-data",
    )


def test_outputs_sent_with_their_notebook_keep_it_and_queue_its_re_run(world: World) -> None:
    response = send(world, workspace_token(world), ("analysis/table1.ipynb", NOTEBOOK), extract_version=VERSION)

    assert response.status_code == 201, response.get_data(as_text=True)
    rerun = world.session.scalars(select(OutputRerun)).one()
    assert (rerun.request_id, rerun.round, rerun.state) == (response.json["id"], 1, "pending")
    assert (rerun.code_path, rerun.code_kind, rerun.extract_version) == ("analysis/table1.ipynb", "notebook", VERSION)
    assert platform(world.app).files.get(rerun.code_sha256) == NOTEBOOK
    job = world.session.scalars(select(jobs.Job).where(jobs.Job.kind == RERUN_JOB)).one()
    assert job.payload == {"rerun_id": rerun.id}
    event = world.session.scalars(select(AuditEvent).where(AuditEvent.action == "output.code")).one()
    assert event.detail["code_sha256"] == rerun.code_sha256 and "cells" not in json.dumps(event.detail)
    assert response.json["rerun"]["state"] == "pending" and "log" not in response.json["rerun"]


def test_code_that_is_refused_leaves_no_request_behind(world: World) -> None:
    response = send(world, workspace_token(world), ("../../instance/master.key.py", b"x = 1\n"))

    assert response.status_code == 422, response.get_data(as_text=True)
    assert "relative to the workspace home" in response.get_data(as_text=True)
    assert world.session.scalar(select(func.count()).select_from(OutputRequest)) == 0
    assert world.session.scalar(select(func.count()).select_from(OutputRerun)) == 0


def test_outputs_sent_without_code_have_no_re_run_and_are_not_held_by_it(world: World) -> None:
    response = send(world, workspace_token(world), None)

    assert response.status_code == 201
    assert response.json["rerun"] is None
    assert world.session.scalar(select(func.count()).select_from(OutputRerun)) == 0


def test_the_team_sees_that_a_file_differs_but_only_its_checker_sees_how(world: World) -> None:
    bearer = workspace_token(world)
    request_id = send(world, bearer, ("t.ipynb", NOTEBOOK)).json["id"]
    file_id = world.session.get(OutputRequest, request_id).current_files[0].id
    difference = {
        "outcome": "differs",
        "name": "table.csv",
        "difference": "1 cell(s) differ",
        "cells": [{"rerun": "7"}],
    }
    with transaction(world.session) as s:
        s.execute(
            update(OutputRerun)
            .where(OutputRerun.request_id == request_id)
            .values(state="done", files={file_id: difference}, log=["status: ok"], finished_at=utcnow())
        )
    world.svc.claim(world.olive, request_id)
    client = world.app.test_client()

    team = client.get(f"/api/v1/outputs/requests/{request_id}", headers={"Authorization": f"Bearer {bearer}"})
    checker = client.get(
        f"/api/v1/outputs/requests/{request_id}/checker-view",
        headers={"Authorization": f"Bearer {personal_token(world, world.olive)}"},
    )

    assert team.status_code == 200 and checker.status_code == 200
    assert team.json["rerun"]["files"] == {file_id: {"name": "table.csv", "outcome": "differs"}}
    assert "1 cell(s) differ" not in team.get_data(as_text=True) and "log" not in team.json["rerun"]
    assert checker.json["rerun"]["files"][file_id]["cells"] == [{"rerun": "7"}]
    assert checker.json["rerun"]["log"] == ["status: ok"]


def test_the_code_is_shown_to_a_reviewing_checker_and_refused_to_the_author_before_release(world: World) -> None:
    request_id = send(world, workspace_token(world), ("t.ipynb", NOTEBOOK)).json["id"]
    world.svc.claim(world.olive, request_id)
    client = world.app.test_client()
    url = f"/api/v1/outputs/requests/{request_id}/code"

    shown = client.get(url, headers={"Authorization": f"Bearer {personal_token(world, world.olive)}"})
    refused = client.get(url, headers={"Authorization": f"Bearer {personal_token(world, world.author)}"})
    from_workspace = client.get(url, headers={"Authorization": f"Bearer {workspace_token(world)}"})

    assert shown.status_code == 200 and shown.data == NOTEBOOK
    assert shown.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert refused.status_code == 403 and from_workspace.status_code == 403
    actions = world.session.scalars(select(AuditEvent.action).where(AuditEvent.target_id == request_id)).all()
    assert "output.view_code" in actions


def test_under_a_policy_requiring_code_a_submission_without_it_is_refused_audited_and_leaves_nothing(
    world: World,
) -> None:
    plat = platform(world.app)
    plat.settings = dataclasses.replace(plat.settings, rerun_require_code=True)  # TRE_RERUN_REQUIRE_CODE=true

    refused = send(world, workspace_token(world), None)
    accepted = send(world, workspace_token(world), ("t.ipynb", NOTEBOOK))

    assert refused.status_code == 422, refused.get_data(as_text=True)
    assert "only with the code that made them" in refused.get_data(as_text=True)
    assert "tre-submit --code" in refused.get_data(as_text=True)
    assert accepted.status_code == 201
    assert world.session.scalar(select(func.count()).select_from(OutputRequest)) == 1
    (event,) = world.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "output.submit", AuditEvent.outcome == "denied")
    ).all()
    assert event.project_id == world.project.id and event.actor_id == world.author.id
    assert "only with the code" in event.detail["rule"]


def test_under_a_policy_requiring_code_a_draft_or_a_returned_request_cannot_be_submitted_without_it(
    world: World,
) -> None:
    with world.app.app_context():
        req = world.draft()
        world.svc.require_code = True
        with pytest.raises(OutputError, match="only with the code that made them"):
            world.svc.submit(world.author, req.id)
        assert world.refresh(req).state == "draft"
        denied = world.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "output.submit", AuditEvent.outcome == "denied")
        ).all()
        assert [e.target_id for e in denied] == [req.id]


def test_under_a_policy_requiring_code_a_resubmission_without_it_is_refused_and_audited(world: World) -> None:
    with world.app.app_context():
        req = world.reviewed(votes={"olive": "changes_requested", "oscar": "changes_requested"})
        world.svc.consolidate(world.olive, req.id, "return", "Round the counts")
        world.svc.require_code = True
        files = [("table.csv", SAFE_CSV, "", None)]

        with pytest.raises(OutputError, match="only with the code that made them"):
            world.svc.resubmit_from_workspace(world.author, world.project.id, req.id, groups=[], files=files)
        world.svc.resubmit_from_workspace(
            world.author, world.project.id, req.id, groups=[], files=files, code=("t.ipynb", NOTEBOOK, None)
        )

        assert world.refresh(req).state in ("submitted", "checking", "awaiting_review")
        denied = world.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "output.resubmit", AuditEvent.outcome == "denied")
        ).all()
        assert [e.target_id for e in denied] == [req.id]
