"""Closing a project: access stops at once, then every part destroys what it holds for the project.

Other packages register a destruction hook here (``register_destruction_hook``): the extract
pipeline deletes the project's extracts, the key provider destroys the project key, JupyterHub
removes workspaces. Closure itself is one transaction (the state becomes ``closed``, so the gate
refuses everyone from that commit on); destruction then runs as a job that calls each hook not yet
recorded as done, records each completion with an audit event, and moves the project to
``data_destroyed`` once every registered hook has finished. Hooks must be idempotent: a failed or
interrupted job runs again and calls the unfinished ones again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from projects.models import DestructionRecord, Project
from projects.rules import CLOSED, DATA_DESTROYED, RuleViolation, check_transition
from tre.core.audit import FAILURE, AuditLog
from tre.core.db import transaction, utcnow

# fn(session, project_id) -> a small dict of ids or counts for the record (no names, no data).
DestructionHook = Callable[[Session, str], dict[str, Any] | None]

_HOOKS: dict[str, DestructionHook] = {}
DESTROY_JOB = "projects.destroy_data"


def register_destruction_hook(name: str, fn: DestructionHook) -> DestructionHook:
    """Register ``fn`` under a stable ``name`` (e.g. ``"extracts"``, ``"project-key"``)."""
    if not name or len(name) > 100:
        raise ValueError("a destruction hook needs a name of 1 to 100 characters")
    existing = _HOOKS.get(name)
    if existing is not None and existing is not fn:
        raise ValueError(f"a destruction hook named {name!r} is already registered")
    _HOOKS[name] = fn
    return fn


def unregister_destruction_hook(name: str) -> None:
    """For tests."""
    _HOOKS.pop(name, None)


def registered_hooks() -> list[str]:
    return sorted(_HOOKS)


def close_project(
    session: Session,
    audit: AuditLog,
    project_id: str,
    *,
    actor_id: str | None,
    reason: str,
    request_id: str | None = None,
) -> Project:
    """Move the project to ``closed`` (access stops with this commit) and queue data destruction."""
    from tre.core.jobs import enqueue

    reason = (reason or "").strip()
    if not reason:
        raise RuleViolation("Give the reason for closing the project")
    with transaction(session) as s:
        project = s.get(Project, project_id, with_for_update=True)
        if project is None:
            raise RuleViolation("No such project")
        before = project.state
        check_transition(before, CLOSED)
        now = utcnow()
        project.state = CLOSED
        project.state_changed_at = now
        project.closed_at = now
        project.closure_reason = reason[:2000]
        audit.record(
            s,
            "project.close",
            actor_id=actor_id,
            target_type="project",
            target_id=project.id,
            project_id=project.id,
            request_id=request_id,
            detail={"from": before, "to": CLOSED, "by": "person" if actor_id else "end date"},
        )
        enqueue(s, DESTROY_JOB, {"project_id": project.id}, idempotency_key=f"{DESTROY_JOB}:{project.id}")
    return project


def run_destruction(session: Session, audit: AuditLog, project_id: str) -> dict[str, Any]:
    """Call every registered hook not yet done for the project; finish when all are done.

    Each hook's completion commits on its own with its audit event, so work already done is never
    repeated or lost. Raises ``RuntimeError`` naming the hooks that failed (the job retries).
    """
    project = session.get(Project, project_id)
    if project is None:
        raise RuleViolation("No such project")
    if project.state == DATA_DESTROYED:
        return {"state": DATA_DESTROYED, "ran": []}
    if project.state != CLOSED:
        raise RuleViolation("Only a closed project's data can be destroyed")
    done = set(
        session.scalars(select(DestructionRecord.hook).where(DestructionRecord.project_id == project_id))
    )
    ran: list[str] = []
    failed: list[str] = []
    for name in registered_hooks():
        if name in done:
            continue
        try:
            with transaction(session) as s:
                detail = _HOOKS[name](s, project_id) or {}
                s.add(DestructionRecord(project_id=project_id, hook=name, detail=detail))
                audit.record(
                    s,
                    "project.destruction_step",
                    actor_id=None,
                    target_type="project",
                    target_id=project_id,
                    project_id=project_id,
                    detail={"hook": name, **detail},
                )
        except Exception as exc:  # noqa: BLE001 - one part failing must not stop the others
            failed.append(name)
            with transaction(session) as s:
                audit.record(
                    s,
                    "project.destruction_step",
                    actor_id=None,
                    outcome=FAILURE,
                    target_type="project",
                    target_id=project_id,
                    project_id=project_id,
                    detail={"hook": name, "error": type(exc).__name__},
                )
            continue
        ran.append(name)
    if failed:
        raise RuntimeError(f"destruction hooks failed: {', '.join(failed)}")
    with transaction(session) as s:
        project = s.get(Project, project_id, with_for_update=True)
        assert project is not None
        check_transition(project.state, DATA_DESTROYED)
        project.state = DATA_DESTROYED
        project.state_changed_at = project.data_destroyed_at = utcnow()
        audit.record(
            s,
            "project.data_destroyed",
            actor_id=None,
            target_type="project",
            target_id=project_id,
            project_id=project_id,
            detail={"hooks": registered_hooks()},
        )
    return {"state": DATA_DESTROYED, "ran": ran}
