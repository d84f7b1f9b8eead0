"""What every identity service holds (the session, the key provider, the audit log) and the two
helpers they share: reading an account, and refusing (audited) someone without a permission."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, joinedload

from tre.core.audit import DENIED, AuditLog
from tre.core.db import transaction
from tre.core.identity.errors import IdentityError, PermissionDenied
from tre.core.identity.models import User
from tre.core.keys import KeyProvider
from tre.core.permissions import Permission, has_permission

_WITH_ROLES = (joinedload(User.roles),)
_LOCK_ACCOUNT = {"of": User}


@dataclass
class IdentityBase:
    """What the identity services need: the session, the key provider and the audit log."""

    session: Session
    keys: KeyProvider
    audit: AuditLog
    request_id: str | None = None

    def _get(self, s: Session, user_id: str, *, lock: bool = False) -> User:
        """The account with its roles, in one statement (joined, not the relationship's own second
        ``selectin`` read); ``lock``: locked (PostgreSQL: ``FOR UPDATE OF users``, the account's row
        alone, as before: a lock cannot reach the outer join's side) and read afresh."""
        user = s.get(User, user_id, options=_WITH_ROLES, with_for_update=_LOCK_ACCOUNT if lock else None,
                     populate_existing=lock)
        if user is None:
            raise IdentityError("No such account")
        return user

    def _require(self, actor: User | None, permission: Permission, action: str) -> None:
        if actor is None or not has_permission(actor, permission):
            with transaction(self.session) as s:
                self.audit.record(
                    s,
                    action,
                    actor_id=actor.id if actor else None,
                    outcome=DENIED,
                    request_id=self.request_id,
                    detail={"missing_permission": str(permission)},
                )
            raise PermissionDenied("You do not have permission to do that")
