"""Site-wide roles and who may grant them: separation of duties for the roles that touch data.

An administrator's change of someone's roles takes effect at once for removals and for roles that
touch no data (researcher). A role that reaches data or its governance (custodian, committee, output
checker, auditor, administrator) is only *requested*: a second administrator, who is neither the
one who asked nor the person receiving it, approves it before it counts (ADR 0010). So nobody can
give themselves such a role, and no single administrator can give it to anyone.

Each call runs one use case in one transaction with its audit event, or changes nothing and raises.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import CheckConstraint, ForeignKey, String, bindparam, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from tre.core.db import Base, new_id, utcnow
from tre.core.permissions import Role, role_conflicts

if TYPE_CHECKING:
    from tre.core.audit import AuditLog
    from tre.core.identity import User

# Roles that need a second administrator: everything except the researcher's, which reaches data
# only through the project gate.
DUAL_CONTROL_ROLES = frozenset(
    {Role.DATA_CUSTODIAN, Role.DAC_CHAIR, Role.DAC_MEMBER, Role.OUTPUT_CHECKER, Role.AUDITOR, Role.ADMINISTRATOR,
     Role.LINKAGE_OFFICER}
)
PENDING, APPROVED, REFUSED = "pending", "approved", "refused"
NO_SUCH_GRANT = "There is no such role request waiting for a decision"
GRANT_STATES = (PENDING, APPROVED, REFUSED)


class RoleGrant(Base):
    """A request by one administrator to give a person a dual-control role, and its decision."""

    __tablename__ = "role_grants"
    __table_args__ = (
        CheckConstraint(f"role IN {tuple(r.value for r in Role)!r}", name="role_known"),
        CheckConstraint(f"state IN {GRANT_STATES!r}", name="state_known"),
        CheckConstraint("(decided_by IS NULL) = (state = 'pending')", name="decided_unless_pending"),
        CheckConstraint("(decided_at IS NULL) = (state = 'pending')", name="decided_at_unless_pending"),
        # The database itself refuses an approval by the one who asked or by the person receiving it.
        CheckConstraint(
            "state <> 'approved' OR (decided_by <> requested_by AND decided_by <> user_id)",
            name="approved_by_someone_else",
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(50))
    requested_by: Mapped[str] = mapped_column(String(32))
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    state: Mapped[str] = mapped_column(String(20), default=PENDING)
    decided_by: Mapped[str | None] = mapped_column(String(32))
    decided_at: Mapped[dt.datetime | None]


def needs_second_administrator(role: str) -> bool:
    return role in {r.value for r in DUAL_CONTROL_ROLES}


class RoleRequest(NamedTuple):
    """What ``request_roles`` did: the roles now held, those it asked a second administrator for, and
    every role of the person waiting for one (those asked now and any asked before), sorted."""

    granted: list[str]
    asked: list[str]
    awaiting: list[str]


# Built once, not per role change (ADR 0054): the same statement, so the same compiled-cache entry.
_PENDING_ROLES_OF = select(RoleGrant.role).where(RoleGrant.user_id == bindparam("user_id"), RoleGrant.state == PENDING)


def request_roles(
    s: Session, audit: AuditLog, actor: User, user: User, roles: list[str], request_id: str | None
) -> RoleRequest:
    """Inside the caller's transaction: give ``user`` exactly ``roles``, except that dual-control
    roles they do not hold yet become pending requests."""
    from tre.core.identity import UserRole

    wanted = sorted(set(roles))
    held = set(user.role_names)
    asked = [r for r in wanted if r not in held and needs_second_administrator(r)]
    granted = [r for r in wanted if r not in asked]
    kept = [r for r in user.roles if r.role in granted]
    added = [UserRole(role=r, granted_by=actor.id) for r in granted if r not in held]
    if added or len(kept) != len(user.roles):
        # Only a change marks the collection: replacing it with the same rows would have every flush
        # of the transaction (the next statement's autoflush, the commit's) work out that nothing changed.
        user.roles = kept + added
    already = set(s.scalars(_PENDING_ROLES_OF, {"user_id": user.id}))
    for role in asked:
        if role in already:
            continue
        grant = RoleGrant(user_id=user.id, role=role, requested_by=actor.id)
        s.add(grant)
        s.flush()
        audit.record(
            s, "user.role_grant_request", actor_id=actor.id, target_type="user", target_id=user.id,
            request_id=request_id, detail={"role": role, "grant": grant.id, "self": actor.id == user.id},
        )
    return RoleRequest(granted, asked, sorted(already | set(asked)))


def pending_grants(s: Session, user_id: str | None = None) -> list[RoleGrant]:
    query = select(RoleGrant).where(RoleGrant.state == PENDING).order_by(RoleGrant.requested_at)
    if user_id is not None:
        query = query.where(RoleGrant.user_id == user_id)
    return list(s.scalars(query))


def decide_grant(
    s: Session, audit: AuditLog, actor: User, grant_id: str, approve: bool, request_id: str | None
) -> tuple[RoleGrant | None, str | None]:
    """Inside the caller's transaction: approve or refuse a pending grant. Returns the grant, or
    None and the reason it cannot be decided by ``actor`` (the refusal is audited here)."""
    from tre.core.audit import DENIED
    from tre.core.identity import UserRole

    grant = s.get(RoleGrant, grant_id, with_for_update=True, populate_existing=True)
    problem = None
    if grant is None or grant.state != PENDING:
        problem = NO_SUCH_GRANT
    elif approve and actor.id == grant.requested_by:
        problem = "A second administrator must approve a role you asked for"
    elif approve and actor.id == grant.user_id:
        problem = "You cannot approve a role for yourself"
    elif approve and role_conflicts([*_held(s, grant.user_id), grant.role]):
        problem = "That role cannot be held with a role the person already has (separation of duties)"
    action = "user.role_grant_approve" if approve else "user.role_grant_refuse"
    if problem is not None:
        audit.record(
            s, action, actor_id=actor.id, outcome=DENIED, target_type="role_grant", target_id=grant_id[:64],
            request_id=request_id, detail={"reason": problem},
        )
        return None, problem
    assert grant is not None
    grant.state = APPROVED if approve else REFUSED
    grant.decided_by = actor.id
    grant.decided_at = utcnow()
    if approve and not s.scalar(
        select(UserRole.role).where(UserRole.user_id == grant.user_id, UserRole.role == grant.role)
    ):
        s.add(UserRole(user_id=grant.user_id, role=grant.role, granted_by=actor.id))
    audit.record(
        s, action, actor_id=actor.id, target_type="user", target_id=grant.user_id, request_id=request_id,
        detail={"role": grant.role, "grant": grant.id, "requested_by": grant.requested_by},
    )
    return grant, None


def _held(s: Session, user_id: str) -> list[str]:
    from tre.core.identity import UserRole

    return list(s.scalars(select(UserRole.role).where(UserRole.user_id == user_id)))


def describe_grant(grant: RoleGrant) -> dict[str, Any]:
    return {
        "id": grant.id, "user_id": grant.user_id, "role": grant.role, "requested_by": grant.requested_by,
        "requested_at": grant.requested_at.isoformat(), "state": grant.state,
    }
