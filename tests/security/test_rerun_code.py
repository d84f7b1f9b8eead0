"""Attacks on the code a request was sent with: it is shown (code cells as text, never outputs) only to
the request's checkers while they review it, on the review page and over the API; every other person
(the author and the team, a removed member, a researcher of another project, a checker who is also a
researcher on the project, a checker without a review place, an auditor) gets neither, and each refusal
of the API is audited (ADR 0029)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, update

from projects.models import ProjectMember
from tests.disclosure.factories import SAFE_CSV, active_project, person, run_queued_jobs
from tests.disclosure.factories import outputs as outputs_service
from tests.security.backends import BACKENDS, app_on
from tre.core import jobs
from tre.core.audit import AuditEvent
from tre.core.db import transaction, utcnow
from tre.core.identity import Identity

CODE_CANARY = "CODE_CANARY_4471"
OUTPUT_CANARY = "9434765919"  # what a cell printed: an NHS number; it must never leave the workspace
NOTEBOOK = json.dumps(
    {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3"}},
        "cells": [
            {
                "cell_type": "code",
                "id": "a",
                "metadata": {},
                "execution_count": 1,
                "source": f"frame = load()  # {CODE_CANARY}\nframe.head()",
                "outputs": [{"output_type": "execute_result", "data": {"text/plain": OUTPUT_CANARY}}],
            },
            {"cell_type": "markdown", "id": "b", "metadata": {}, "source": "<script>alert('x')</script>"},
        ],
    }
).encode()
ACTORS = (
    "checker",
    "checker_not_assigned",
    "checker_and_researcher",
    "author",
    "member",
    "removed_member",
    "other_project",
    "auditor",
)


def _build(app: Any) -> dict[str, Any]:
    jobs.set_dispatcher(None)
    p = {
        "author": person(app, "rita", ["researcher"]),
        "member": person(app, "sam", ["researcher"]),
        "removed_member": person(app, "lee", ["researcher"]),
        "other_project": person(app, "rob", ["researcher"]),
        "checker_and_researcher": person(app, "carla", ["output_checker", "researcher"]),
        "checker": person(app, "olive", ["output_checker"]),
        "checker_not_assigned": person(app, "otto", ["output_checker"]),
        "auditor": person(app, "audrey", ["auditor"]),
    }
    second = person(app, "oscar", ["output_checker"])
    project = active_project(app, p["author"], [p["member"], p["removed_member"], p["checker_and_researcher"]])
    active_project(app, p["other_project"], title="Another team's study")
    svc = outputs_service(app)
    requests = {}
    for state in ("awaiting_review", "released"):
        req, _ = svc.submit_from_workspace(
            p["author"],
            project.id,
            f"Table ({state})",
            client_key=None,
            groups=[("outputs", "Admissions", "Suppressed under 10")],
            files=[("table.csv", SAFE_CSV, "outputs", None)],
            code=("analysis/table.ipynb", NOTEBOOK, None),
        )
        requests[state] = req.id
    run_queued_jobs(app)  # the checks and the re-runs (what they find does not matter to this attack)
    for request_id in requests.values():
        svc.claim(p["checker"], request_id)
    released = requests["released"]
    svc.claim(second, released)
    for checker in (p["checker"], second):
        for f in svc._get(svc.session, released).current_files:
            svc.vote(checker, released, f.id, "approve", "")
        svc.submit_review(checker, released)
    svc.consolidate(p["checker"], released, "approve")
    svc.release_unreproduced = True
    svc.release(second, released)
    session = app.extensions["tre.db"].session
    with transaction(session) as s:
        s.execute(
            update(ProjectMember)
            .where(ProjectMember.user_id == p["removed_member"].id)
            .values(removed_at=utcnow(), removed_by=p["author"].id)
        )
    plat = app.extensions["tre.platform"]
    ident = Identity(plat.db.session, plat.keys, plat.audit)
    tokens = {actor: ident.create_personal_token(user, "code attack", 30)[1] for actor, user in p.items()}
    return {"app": app, "people": p, "tokens": tokens, "requests": requests}


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with app_on(request.param, tmp_path_factory.mktemp(f"code-{request.param}")) as app:
        yield _build(app)


def _page(world: dict[str, Any], actor: str, request_id: str) -> Any:
    client = world["app"].test_client()
    user = world["people"][actor]
    with client.session_transaction() as sess:
        now = int(utcnow().timestamp())
        sess.update({"uid": user.id, "epoch": user.session_epoch, "seen": now, "signed_in": now})
    return client.get(f"/outputs/requests/{request_id}")


def _api(world: dict[str, Any], actor: str, request_id: str) -> Any:
    return (
        world["app"]
        .test_client()
        .get(
            f"/api/v1/outputs/requests/{request_id}/code", headers={"Authorization": f"Bearer {world['tokens'][actor]}"}
        )
    )


def _denied(world: dict[str, Any]) -> int:
    session = world["app"].extensions["tre.db"].session
    session.expire_all()
    count = session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.action == "output.view_code", AuditEvent.outcome == "denied")
    )
    session.rollback()
    return int(count or 0)


def test_only_the_reviewing_checker_sees_the_code_and_every_api_refusal_is_audited(world: dict[str, Any]) -> None:
    failures = []
    for state, request_id in world["requests"].items():
        for actor in ACTORS:
            allowed = actor == "checker" and state == "awaiting_review"
            page = _page(world, actor, request_id)
            on_page = CODE_CANARY in page.get_data(as_text=True)
            before = _denied(world)
            api = _api(world, actor, request_id)
            by_api = api.status_code == 200 and CODE_CANARY in api.get_data(as_text=True)
            if on_page != allowed or by_api != allowed:
                failures.append(f"{actor} {state}: page {on_page}, api {api.status_code}, expected {allowed}")
            if not allowed and (api.status_code not in (403, 404) or _denied(world) != before + 1):
                failures.append(f"{actor} {state}: api refusal {api.status_code} not audited")
            for body in (page.get_data(as_text=True), api.get_data(as_text=True)):
                if OUTPUT_CANARY in body:
                    failures.append(f"{actor} {state}: a cell output was served")
    assert not failures, "\n".join(failures)


def test_the_checker_reads_the_code_as_escaped_text_with_no_cell_outputs(world: dict[str, Any]) -> None:
    body = _page(world, "checker", world["requests"]["awaiting_review"]).get_data(as_text=True)

    assert 'id="rerun-code"' in body and CODE_CANARY in body
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in body and "<script>alert" not in body
    assert OUTPUT_CANARY not in body
