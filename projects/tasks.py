"""Periodic and background work of the projects domain, as database-backed jobs.

The handlers are thin: they find the platform (the worker runs them inside the Flask app
context) and call the functions below, which the tests call directly. ``enqueue_daily`` makes
the daily job idempotent per date, so a scheduler may call it as often as it likes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from projects.closure import DESTROY_JOB, close_project, run_destruction
from projects.gate import current_agreement, has_signed_current, training_expiry
from projects.models import Project
from projects.rules import ACTIVE, APPROVED, SUSPENDED, ProjectPolicy
from tre.core.audit import AuditLog
from tre.core.identity import User
from tre.core.jobs import JobContext, enqueue, job_handler, periodic
from tre.core.notifications import notify, send_pending

DAILY_JOB = "projects.daily"
SEND_JOB = "notifications.send"


def close_expired_projects(session: Session, audit: AuditLog, today: dt.date) -> list[str]:
    """Close every approved, active or suspended project whose end date has passed."""
    due = list(
        session.scalars(
            select(Project.id).where(
                Project.state.in_((APPROVED, ACTIVE, SUSPENDED)), Project.end_date < today
            )
        )
    )
    for project_id in due:
        close_project(session, audit, project_id, actor_id=None, reason="The project reached its end date")
    return due


def send_reminders(session: Session, policy: ProjectPolicy, today: dt.date) -> int:
    """Remind members of running projects about training, agreements and the end date (once each)."""
    written = 0
    template = current_agreement(session)
    projects = session.scalars(select(Project).where(Project.state.in_((APPROVED, ACTIVE, SUSPENDED)))).all()
    for project in projects:
        for member in project.active_members:
            user = session.get(User, member.user_id)
            if user is None or not user.is_active:
                continue
            expiry = training_expiry(session, user.id, policy.training_course)
            if expiry is None or expiry <= today + dt.timedelta(days=policy.training_warning_days):
                state = (
                    "missing"
                    if expiry is None
                    else ("expired" if expiry < today else f"due:{expiry.isoformat()}")
                )
                written += _remind(
                    session,
                    user,
                    "training.due",
                    f"training:{user.id}:{state}",
                    "Your safe researcher training needs renewing",
                    "Your safe researcher training record is missing or expires soon. "
                    "Without in-date training you cannot use project data. "
                    "Ask an administrator to record your renewed training.",
                )
            if template is not None and not has_signed_current(session, user.id, project.id, template):
                written += _remind(
                    session,
                    user,
                    "agreement.due",
                    f"agreement:{template.id}:{project.id}:{user.id}",
                    f"Please sign the data access agreement: {project.title}",
                    f"Sign version {template.version} of the data access agreement on the project page of "
                    f"\u201c{project.title}\u201d before using its data.",
                )
            if project.end_date is not None and today <= project.end_date <= today + dt.timedelta(
                days=policy.expiry_warning_days
            ):
                written += _remind(
                    session,
                    user,
                    "project.expiring",
                    f"expiry:{project.id}:{project.end_date.isoformat()}:{user.id}",
                    f"Project ending soon: {project.title}",
                    f"\u201c{project.title}\u201d ends on {project.end_date:%d %B %Y}. Access stops then "
                    "and the project's data is destroyed. The principal investigator can ask the committee "
                    "for an extension.",
                )
    session.commit()
    return written


def _remind(session: Session, user: User, topic: str, key: str, subject: str, body: str) -> int:
    message = notify(
        session,
        recipient_id=user.id,
        recipient_email=user.email,
        subject=subject,
        body=body,
        topic=topic,
        dedupe_key=key,
    )
    return 0 if message is None else 1


def enqueue_daily(session: Session, today: dt.date) -> None:
    """Queue today's projects housekeeping (closures, reminders) once; commits."""
    enqueue(
        session, DAILY_JOB, {"date": today.isoformat()}, idempotency_key=f"{DAILY_JOB}:{today.isoformat()}"
    )
    session.commit()


def _platform() -> Any:
    from flask import current_app

    return current_app.extensions["tre.platform"]


@job_handler(DAILY_JOB)
def _daily(ctx: JobContext) -> dict[str, Any]:
    platform = _platform()
    today = dt.date.fromisoformat(ctx.payload["date"])
    closed = close_expired_projects(ctx.session, platform.audit, today)
    reminders = send_reminders(ctx.session, ProjectPolicy.from_settings(platform.settings), today)
    return {"closed": len(closed), "reminders": reminders}


@job_handler(DESTROY_JOB)
def _destroy(ctx: JobContext) -> dict[str, Any]:
    return run_destruction(ctx.session, _platform().audit, ctx.payload["project_id"])


@job_handler(SEND_JOB, queue="notifications")
def _send(ctx: JobContext) -> dict[str, Any]:
    return {"sent": send_pending(ctx.session, _platform().settings)}


# Hourly, so a project closes within the hour its end date passes (the job is idempotent per run and
# reminders are deduplicated); the outbox is sent every minute.
periodic(DAILY_JOB, 3600)
periodic(SEND_JOB, 60)
