"""Closure: access stops at once, each destruction hook runs once and is recorded, then data_destroyed;
the periodic job closes projects past their end date; reminders are written once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from projects import closure
from projects.gate import check_access
from projects.models import DestructionRecord, Project
from projects.rules import IllegalTransition, ProjectPolicy
from projects.services import ProjectPermissionDenied
from projects.tasks import close_expired_projects, send_reminders
from tests.projects.factories import TODAY, World, build_world, complete_draft, ready_for_access
from tre.core import jobs
from tre.core.audit import AuditEvent
from tre.core.db import transaction
from tre.core.jobs import Job
from tre.core.notifications import OutboxMessage


@pytest.fixture
def w(app: Any) -> Iterator[World]:
    # The test app runs Celery eagerly, which would run the destruction job inside the closing
    # commit; these tests run the job's function themselves instead.
    jobs.set_dispatcher(None)
    yield build_world(app)


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    # Only this test's hooks: the real ones (extracts, project keys) have tests of their own.
    monkeypatch.setattr(closure, "_HOOKS", {})
    calls: list[str] = []
    flaky = {"fail": True}

    def extracts(session: Any, project_id: str) -> dict[str, Any]:
        calls.append(f"extracts:{project_id}")
        return {"files_deleted": 2}

    def key(session: Any, project_id: str) -> None:
        calls.append(f"key:{project_id}")
        if flaky["fail"]:
            flaky["fail"] = False
            raise OSError("key store unreachable")

    closure.register_destruction_hook("test-extracts", extracts)
    closure.register_destruction_hook("test-key", key)
    yield calls
    closure.unregister_destruction_hook("test-extracts")
    closure.unregister_destruction_hook("test-key")


def test_closing_stops_access_at_once_and_queues_destruction(w: World) -> None:
    p = ready_for_access(w)

    w.svc.close(w.chair, p.id, "Study finished early")

    assert p.state == "closed" and p.closed_at is not None
    assert check_access(w.session, w.pi.id, p.id).reasons == ["project_not_active"]
    job = w.session.scalars(select(Job).where(Job.kind == closure.DESTROY_JOB)).one()
    assert job.payload == {"project_id": p.id}


def test_only_the_chair_closes_by_decision(w: World) -> None:
    p = ready_for_access(w)

    with pytest.raises(ProjectPermissionDenied):
        w.svc.close(w.pi, p.id, "I am done")


def test_a_draft_cannot_be_closed(w: World) -> None:
    p = complete_draft(w)

    with pytest.raises(IllegalTransition):
        w.svc.close(w.chair, p.id, "No")


def test_destruction_runs_each_hook_once_retries_failures_then_marks_data_destroyed(
    w: World, hooks: list[str]
) -> None:
    p = ready_for_access(w)
    w.svc.close(w.chair, p.id, "Done")

    with pytest.raises(RuntimeError, match="test-key"):
        closure.run_destruction(w.session, w.audit, p.id)
    assert w.session.get(Project, p.id).state == "closed"
    result = closure.run_destruction(w.session, w.audit, p.id)

    assert result["state"] == "data_destroyed" and result["ran"] == ["test-key"]
    assert hooks == [f"extracts:{p.id}", f"key:{p.id}", f"key:{p.id}"]
    records = w.session.scalars(select(DestructionRecord).where(DestructionRecord.project_id == p.id)).all()
    assert {r.hook for r in records} == {"test-extracts", "test-key"}
    w.session.refresh(p)
    assert p.state == "data_destroyed" and p.data_destroyed_at is not None
    steps = w.session.scalars(select(AuditEvent).where(AuditEvent.action == "project.destruction_step")).all()
    assert [e.outcome for e in steps] == ["success", "failure", "success"]


def test_destruction_of_an_open_project_is_refused(w: World) -> None:
    p = ready_for_access(w)

    with pytest.raises(Exception, match="closed"):
        closure.run_destruction(w.session, w.audit, p.id)


def test_hook_names_are_unique() -> None:
    def one(session: Any, project_id: str) -> None:
        return None

    closure.register_destruction_hook("test-unique", one)
    try:
        with pytest.raises(ValueError, match="already registered"):
            closure.register_destruction_hook("test-unique", lambda s, p: None)
    finally:
        closure.unregister_destruction_hook("test-unique")


def test_periodic_closure_closes_projects_past_their_end_date_only(w: World) -> None:
    p = ready_for_access(w)

    assert close_expired_projects(w.session, w.audit, p.end_date) == []
    closed = close_expired_projects(w.session, w.audit, p.end_date + dt.timedelta(days=1))

    assert closed == [p.id]
    w.session.refresh(p)
    assert p.state == "closed"
    event = w.session.scalars(select(AuditEvent).where(AuditEvent.action == "project.close")).one()
    assert event.actor_id is None and event.detail["by"] == "end date"


def test_reminders_are_written_once_for_training_due_and_project_ending(w: World) -> None:
    p = ready_for_access(w)
    with transaction(w.session):
        p.end_date = TODAY + dt.timedelta(days=10)
    policy = ProjectPolicy(training_warning_days=400)

    first = send_reminders(w.session, policy, TODAY)
    again = send_reminders(w.session, policy, TODAY)

    assert first == 4 and again == 0
    topics = sorted(
        w.session.scalars(select(OutboxMessage.topic).where(OutboxMessage.recipient_id == w.member.id))
    )
    assert topics.count("training.due") == 1 and topics.count("project.expiring") == 1


def test_daily_job_is_enqueued_once_per_day(w: World) -> None:
    from projects.tasks import DAILY_JOB, enqueue_daily

    enqueue_daily(w.session, TODAY)
    enqueue_daily(w.session, TODAY)

    assert len(w.session.scalars(select(Job).where(Job.kind == DAILY_JOB)).all()) == 1
