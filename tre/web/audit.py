"""Auditors search the audit log by person, project, action and time, and export what they find."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

from flask import Blueprint, Response, g, render_template, request
from sqlalchemy import Select, select

from tre.access import requires
from tre.authn import platform
from tre.core.audit import AuditEvent
from tre.core.db import transaction
from tre.core.identity import User
from tre.core.permissions import Permission

bp = Blueprint("audit", __name__, url_prefix="/audit")

PAGE_SIZE = 100


def _parse_date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _query(args: Any) -> tuple[Select[Any], dict[str, str], list[str]]:
    filters = {k: (args.get(k) or "").strip() for k in ("person", "project", "action", "outcome", "start", "end")}
    problems: list[str] = []
    stmt = select(AuditEvent)
    person = filters["person"]
    if person:
        if "@" in person:
            uid = platform().db.session.scalar(select(User.id).where(User.email == person.lower()))
            if uid is None:
                problems.append("No account has that email address")
            stmt = stmt.where(AuditEvent.actor_id == (uid or "-"))
        else:
            stmt = stmt.where(AuditEvent.actor_id == person)
    if filters["project"]:
        stmt = stmt.where(AuditEvent.project_id == filters["project"])
    if filters["action"]:
        stmt = stmt.where(AuditEvent.action.startswith(filters["action"], autoescape=True))
    if filters["outcome"]:
        stmt = stmt.where(AuditEvent.outcome == filters["outcome"])
    for key, op in (("start", "ge"), ("end", "lt")):
        if filters[key]:
            when = _parse_date(filters[key])
            if when is None:
                problems.append(f"Enter the {'from' if key == 'start' else 'to'} date as YYYY-MM-DD")
            else:
                if key == "end":
                    when += dt.timedelta(days=1)
                stmt = stmt.where(AuditEvent.occurred_at >= when if op == "ge" else AuditEvent.occurred_at < when)
    return stmt, filters, problems


def _record_view(action: str, filters: dict[str, str], count: int) -> None:
    p = platform()
    with transaction(p.db.session) as s:
        p.audit.record(
            s,
            action,
            actor_id=g.user.id,
            request_id=g.get("request_id"),
            detail={"filters": {k: v for k, v in filters.items() if v}, "rows": count},
        )


@bp.get("/")
@requires(Permission.AUDIT_VIEW)
def search() -> Any:
    stmt, filters, problems = _query(request.args)
    db = platform().db.session
    events = db.scalars(stmt.order_by(AuditEvent.seq.desc()).limit(PAGE_SIZE)).all()
    # Only each actor's email is shown: two columns, not the accounts with their roles.
    actors = {e.actor_id for e in events if e.actor_id}
    rows = db.execute(select(User.id, User.email).where(User.id.in_(actors))) if actors else ()
    names = {uid: email for uid, email in rows}
    _record_view("audit.search", filters, len(events))
    return render_template(
        "audit/search.html",
        title="Audit log",
        events=events,
        filters=filters,
        problems=problems,
        names=names,
        page_size=PAGE_SIZE,
    ), (400 if problems else 200)


@bp.get("/export.csv")
@requires(Permission.AUDIT_EXPORT)
def export() -> Response:
    stmt, filters, problems = _query(request.args)
    if problems:
        return Response("; ".join(problems), status=400, mimetype="text/plain")
    rows = platform().db.session.scalars(stmt.order_by(AuditEvent.seq)).all()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "seq",
            "occurred_at",
            "actor_id",
            "action",
            "outcome",
            "target_type",
            "target_id",
            "project_id",
            "request_id",
            "detail",
            "prev_hash",
            "chain_hash",
        ]
    )
    for e in rows:
        writer.writerow(
            [
                e.seq,
                e.occurred_at.isoformat(),
                e.actor_id,
                e.action,
                e.outcome,
                e.target_type,
                e.target_id,
                e.project_id,
                e.request_id,
                _csv_safe(str(e.detail)),
                e.prev_hash,
                e.chain_hash,
            ]
        )
    _record_view("audit.export", filters, len(rows))
    return Response(
        out.getvalue(), mimetype="text/csv", headers={"Content-Disposition": "attachment; filename=audit-log.csv"}
    )


def _csv_safe(value: str) -> str:
    """Stop a spreadsheet treating a cell as a formula (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value
