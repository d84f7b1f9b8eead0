"""THE access gate: may this person touch this project's data *now*, and if not, why not.

Every part that hands out data asks here: extracts before they run, the JupyterHub spawner before a
workspace starts, the output queue before a release. ``check_access`` only answers (pages use it to
show people what is missing); ``require_access`` and ``ask_gate`` also write the answer to the audit
log — a refusal always with its reasons — and are what data-touching code must call.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, bindparam, exists, func, select
from sqlalchemy.orm import Session, scoped_session

from projects.models import AgreementSignature, AgreementTemplate, Project, ProjectMember, TrainingRecord
from projects.rules import GATE_REASONS, SAFE_RESEARCHER_COURSE, GateFacts, gate_reasons
from tre.core.audit import DENIED, AuditLog
from tre.core.db import transaction, utcnow
from tre.core.identity import User


@dataclass(frozen=True)
class GateDecision:
    allowed: bool
    # Stable reason codes (see ``projects.rules.GATE_REASONS``); empty when allowed.
    reasons: list[str] = field(default_factory=list)

    @property
    def messages(self) -> list[str]:
        """The reasons as sentences that are safe to show to the person."""
        return [GATE_REASONS.get(r, r) for r in self.reasons]


class AccessRefused(Exception):
    """The gate said no; ``decision.reasons`` says why. The message is safe to show."""

    def __init__(self, decision: GateDecision) -> None:
        self.decision = decision
        super().__init__("Access refused: " + "; ".join(decision.messages))


def current_agreement(session: Session) -> AgreementTemplate | None:
    return session.scalar(select(AgreementTemplate).order_by(AgreementTemplate.version.desc()).limit(1))


def training_expiry(session: Session, user_id: str, course: str = SAFE_RESEARCHER_COURSE) -> dt.date | None:
    """The latest expiry date of the person's records for ``course`` (None when there is none)."""
    return session.scalar(
        select(func.max(TrainingRecord.expires_on)).where(
            TrainingRecord.user_id == user_id, TrainingRecord.course == course
        )
    )


def has_signed_current(
    session: Session, user_id: str, project_id: str, template: AgreementTemplate | None
) -> bool:
    if template is None:
        return False
    return (
        session.scalar(
            select(AgreementSignature.id).where(
                AgreementSignature.template_id == template.id,
                AgreementSignature.project_id == project_id,
                AgreementSignature.user_id == user_id,
                AgreementSignature.content_hash == template.content_hash,
            )
        )
        is not None
    )


def _facts_statement() -> Select[Any]:
    """Every fact the gate needs about one person and one project, in one statement (one row of
    scalar subqueries, each an index look-up). Built once: SQLAlchemy keeps the cache key of a
    statement object, so running it again costs no statement building (docs/operations.md)."""
    uid, pid, course = bindparam("gate_user_id"), bindparam("gate_project_id"), bindparam("gate_course")
    def latest(column: Any) -> Any:  # of the current (highest version) agreement
        return (select(column).order_by(AgreementTemplate.version.desc()).limit(1)
                .correlate(None).scalar_subquery())

    return select(
        select(User.id).where(User.id == uid).scalar_subquery().label("user_id"),
        select(User.is_active).where(User.id == uid).scalar_subquery().label("user_active"),
        select(User.mfa_enrolled_at.is_not(None)).where(User.id == uid).scalar_subquery().label("mfa_enrolled"),
        select(Project.id).where(Project.id == pid).scalar_subquery().label("project_id"),
        select(Project.state).where(Project.id == pid).scalar_subquery().label("project_state"),
        select(Project.start_date).where(Project.id == pid).scalar_subquery().label("start_date"),
        select(Project.end_date).where(Project.id == pid).scalar_subquery().label("end_date"),
        exists().where(
            ProjectMember.project_id == pid, ProjectMember.user_id == uid, ProjectMember.removed_at.is_(None)
        ).label("active_member"),
        latest(AgreementTemplate.id).label("template_id"),
        exists().where(
            AgreementSignature.template_id == latest(AgreementTemplate.id),
            AgreementSignature.project_id == pid,
            AgreementSignature.user_id == uid,
            AgreementSignature.content_hash == latest(AgreementTemplate.content_hash),
        ).label("signed"),
        select(func.max(TrainingRecord.expires_on)).where(
            TrainingRecord.user_id == uid, TrainingRecord.course == course
        ).scalar_subquery().label("training_expires_on"),
    )


_FACTS = _facts_statement()


def gather_facts(
    session: Session, user_id: str, project_id: str, course: str = SAFE_RESEARCHER_COURSE
) -> GateFacts:
    """The gate's facts about one person and one project, in one statement (it was eight: the
    person, the project with its relations, the agreement, membership, signature and training)."""
    row = session.execute(
        _FACTS, {"gate_user_id": user_id or None, "gate_project_id": project_id or None, "gate_course": course}
    ).one()
    user = row.user_id is not None
    project = row.project_id is not None
    return GateFacts(
        user_exists=user,
        user_active=bool(user and row.user_active),
        mfa_enrolled=bool(user and row.mfa_enrolled),
        project_exists=project,
        project_state=row.project_state if project else None,
        start_date=row.start_date if project else None,
        end_date=row.end_date if project else None,
        active_member=bool(user and project and row.active_member),
        agreement_published=row.template_id is not None,
        current_agreement_signed=bool(user and project and row.signed),
        training_expires_on=row.training_expires_on if user else None,
    )


def training_expiries(
    session: Session, user_ids: list[str], course: str = SAFE_RESEARCHER_COURSE
) -> dict[str, dt.date]:
    """``training_expiry`` for several people in one statement (people without a record are absent)."""
    if not user_ids:
        return {}
    rows = session.execute(
        select(TrainingRecord.user_id, func.max(TrainingRecord.expires_on))
        .where(TrainingRecord.user_id.in_(user_ids), TrainingRecord.course == course)
        .group_by(TrainingRecord.user_id)
    )
    return {user_id: expires for user_id, expires in rows if expires is not None}


# Every fact the gate needs of each person of one project, one row per person found, in one statement
# (it was four: the people, their membership, their signatures and their training). The agreement is
# the caller's (its id and content hash as parameters), so the team's answers and the page showing
# them stand on the same version. Built once, as ``_FACTS``.
def _team_facts_statement() -> Select[Any]:
    pid, template_id, content_hash = bindparam("project_id"), bindparam("template_id"), bindparam("content_hash")
    return select(
        User.id,
        User.is_active,
        User.mfa_enrolled_at,
        exists().where(
            ProjectMember.project_id == pid, ProjectMember.user_id == User.id, ProjectMember.removed_at.is_(None)
        ).label("member"),
        exists().where(
            AgreementSignature.template_id == template_id,
            AgreementSignature.project_id == pid,
            AgreementSignature.user_id == User.id,
            AgreementSignature.content_hash == content_hash,
        ).label("signed"),
        select(func.max(TrainingRecord.expires_on))
        .where(TrainingRecord.user_id == User.id, TrainingRecord.course == bindparam("course"))
        .scalar_subquery()
        .label("training_expires_on"),
    ).where(User.id.in_(bindparam("ids", expanding=True)))


_TEAM_FACTS = _team_facts_statement()
_NOT_READ: Any = object()


def gather_team_facts(
    session: Session,
    project_id: str,
    user_ids: list[str],
    course: str = SAFE_RESEARCHER_COURSE,
    *,
    template: Any = _NOT_READ,
) -> dict[str, GateFacts]:
    """``gather_facts`` for several people of one project, in a number of statements that does not
    grow with the team (a project page shows every member's access): the project (found in the
    session when the caller has it) and one row per person. ``template`` is the current agreement
    (anything with its ``id`` and ``content_hash``, or None when none is published) when the caller
    has just read it in the same transaction (not read twice)."""
    ids = sorted(set(user_ids))
    project = session.get(Project, project_id) if project_id else None
    if template is _NOT_READ:
        template = current_agreement(session)
    rows = {}
    if ids:
        params = {
            "ids": ids,
            "course": course,
            # No project or no agreement: nobody is a member or signed; the people and training still count.
            "project_id": project.id if project is not None else None,
            "template_id": template.id if template is not None else None,
            "content_hash": template.content_hash if template is not None else None,
        }
        rows = {row.id: row for row in session.execute(_TEAM_FACTS, params)}
    facts = {}
    for user_id in ids:
        row = rows.get(user_id)
        facts[user_id] = GateFacts(
            user_exists=row is not None,
            user_active=bool(row is not None and row.is_active),
            mfa_enrolled=bool(row is not None and row.mfa_enrolled_at is not None),
            project_exists=project is not None,
            project_state=project.state if project else None,
            start_date=project.start_date if project else None,
            end_date=project.end_date if project else None,
            active_member=bool(row is not None and project is not None and row.member),
            agreement_published=template is not None,
            current_agreement_signed=bool(row is not None and project is not None and row.signed),
            training_expires_on=row.training_expires_on if row is not None else None,
        )
    return facts


def today_utc(now: dt.datetime | None = None) -> dt.date:
    return (now or utcnow()).astimezone(dt.UTC).date()


def check_access(
    session: Session, user_id: str, project_id: str, *, now: dt.datetime | None = None
) -> GateDecision:
    """Answer without recording anything. Dates are compared in UTC, inclusive at both ends."""
    reasons = gate_reasons(gather_facts(session, user_id, project_id), today_utc(now))
    return GateDecision(not reasons, reasons)


# session.info: (the transaction, {(person, project) the gate let in during it}); see ``remember_allowed``.
_ALLOWED_IN_TRANSACTION = "tre_gate_allowed"


def _root_transaction(session: Any) -> Any:
    real = session() if isinstance(session, scoped_session) else session
    return real.get_transaction()


def remember_allowed(session: Any, user_id: str, project_id: str) -> None:
    """Note, for the rest of the session's current transaction only, that the gate let this person into
    this project (ADR 0038, ADR 0076): ``allowed_earlier`` answers from it. Nothing is kept past the
    transaction: its end (commit or rollback) begins another, which finds nothing noted."""
    root = _root_transaction(session)
    if root is None:
        return
    asked = session.info.get(_ALLOWED_IN_TRANSACTION)
    if asked is None or asked[0] is not root:
        asked = session.info[_ALLOWED_IN_TRANSACTION] = (root, set())
    asked[1].add((user_id, project_id))


def allowed_earlier(session: Any, user_id: str, project_id: str) -> bool:
    """Whether the gate let this person into this project earlier in the session's current transaction
    (``remember_allowed``). Within one transaction nothing could have changed on SQLite (it holds the
    write lock), and on PostgreSQL a change committed meanwhile is no more visible than one committed
    after the last ask and before the commit."""
    asked = session.info.get(_ALLOWED_IN_TRANSACTION)
    if asked is None or (user_id, project_id) not in asked[1]:
        return False
    root = _root_transaction(session)
    return root is not None and asked[0] is root


def check_team_access(
    session: Session, project_id: str, user_ids: list[str], *, now: dt.datetime | None = None
) -> dict[str, GateDecision]:
    """``check_access`` for each of several people of one project; answers, records nothing."""
    return {user_id: decision for user_id, (_, decision) in
            team_access_with_facts(session, project_id, user_ids, now=now).items()}


def team_access_with_facts(
    session: Session,
    project_id: str,
    user_ids: list[str],
    course: str = SAFE_RESEARCHER_COURSE,
    *,
    now: dt.datetime | None = None,
    template: Any = _NOT_READ,
) -> dict[str, tuple[GateFacts, GateDecision]]:
    """``check_team_access`` with the facts each answer stands on (signed, trained until...), for a
    page that shows both: the same reads, asked once."""
    today = today_utc(now)
    out = {}
    for user_id, facts in gather_team_facts(session, project_id, user_ids, course, template=template).items():
        reasons = gate_reasons(facts, today)
        out[user_id] = (facts, GateDecision(not reasons, reasons))
    return out


def ask_gate(
    session: Session,
    audit: AuditLog,
    user_id: str,
    project_id: str,
    *,
    purpose: str,
    now: dt.datetime | None = None,
    request_id: str | None = None,
) -> GateDecision:
    """Answer and record the answer (allowed or refused, with reasons) in its own transaction.

    Call it with a session that holds no uncommitted work of yours: it commits.
    """
    decision = check_access(session, user_id, project_id, now=now)
    with transaction(session) as s:
        audit.record(
            s,
            "gate.check",
            actor_id=user_id or None,
            outcome="success" if decision.allowed else DENIED,
            target_type="project",
            target_id=project_id or None,
            project_id=project_id or None,
            request_id=request_id,
            detail={"purpose": purpose[:50], "reasons": decision.reasons},
        )
    return decision


def require_access(
    session: Session,
    audit: AuditLog,
    user_id: str,
    project_id: str,
    *,
    purpose: str,
    now: dt.datetime | None = None,
    request_id: str | None = None,
) -> GateDecision:
    """Return the (allowing) decision, or record the refusal and raise ``AccessRefused``."""
    decision = ask_gate(session, audit, user_id, project_id, purpose=purpose, now=now, request_id=request_id)
    if not decision.allowed:
        raise AccessRefused(decision)
    return decision
