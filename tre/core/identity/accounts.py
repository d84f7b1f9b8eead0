"""Accounts: creating them, their roles (roles that touch data wait for a second administrator,
tre/core/roles.py), activation, and how an account is described to administrators."""

from __future__ import annotations

from typing import Any, NamedTuple

from sqlalchemy import select

from tre.core.db import transaction, utcnow
from tre.core.identity.base import IdentityBase
from tre.core.identity.credentials import end_every_credential
from tre.core.identity.errors import IdentityError, PermissionDenied
from tre.core.identity.hashing import hasher
from tre.core.identity.models import User, UserRole
from tre.core.identity.names import check_password_policy, normalise_display_name, normalise_email
from tre.core.permissions import Permission, Role, role_conflicts
from tre.core.roles import NO_SUCH_GRANT, RoleGrant, decide_grant, pending_grants, request_roles

_ROLE_NAMES = frozenset(r.value for r in Role)  # every role's name, once per process


class Accounts(IdentityBase):
    def create_user(
        self,
        actor: User | None,
        email: str,
        display_name: str,
        roles: list[str],
        password: str | None = None,
        *,
        bootstrap: bool = False,
    ) -> User:
        """Create an account. Only administrators may, except when setting up an empty instance."""
        if not bootstrap:
            self._require(actor, Permission.USER_MANAGE, "user.create")
        email = normalise_email(email)
        display_name = normalise_display_name(display_name)
        unknown = [r for r in roles if r not in _ROLE_NAMES]
        if unknown:
            raise IdentityError(f"Unknown role: {', '.join(unknown)}")
        _refuse_conflicting(roles)
        if password is not None:
            check_password_policy(password, email=email, display_name=display_name)
        with transaction(self.session) as s:
            if s.scalar(select(User).where(User.email == email)) is not None:
                raise IdentityError("An account with that email address already exists")
            user = User(email=email, display_name=display_name)
            user.password_hash = hasher.hash(password) if password else None
            actor_id = actor.id if actor else None
            user.roles = []
            s.add(user)
            s.flush()
            if bootstrap or actor is None:
                # Setting up an empty instance (the command line of the server): no second person yet.
                user.roles = [UserRole(role=r, granted_by=actor_id) for r in sorted(set(roles))]
                granted, pending = sorted(set(roles)), list[str]()
            else:
                granted, pending, _ = request_roles(s, self.audit, actor, user, roles, self.request_id)
            self.audit.record(
                s,
                "user.create",
                actor_id=actor_id,
                target_type="user",
                target_id=user.id,
                request_id=self.request_id,
                detail={"roles": granted, "awaiting_second_administrator": pending},
            )
        return user

    def set_roles(self, actor: User, user_id: str, roles: list[str]) -> User:
        return self.change_roles(actor, user_id, roles).user

    def change_roles(self, actor: User, user_id: str, roles: list[str]) -> RolesChanged:
        """Replace an account's roles (dual-control ones are only requested): the account, and every
        role of it waiting for a second administrator as this transaction committed them."""
        self._require(actor, Permission.USER_MANAGE, "user.set_roles")
        unknown = [r for r in roles if r not in _ROLE_NAMES]
        if unknown:
            raise IdentityError(f"Unknown role: {', '.join(unknown)}")
        _refuse_conflicting(roles)
        with transaction(self.session) as s:
            # Lock the account so two administrators changing roles at once queue, not collide.
            user = self._get(s, user_id, lock=True)
            before = user.role_names
            if actor.id == user.id and Role.ADMINISTRATOR.value in before and Role.ADMINISTRATOR.value not in roles:
                raise IdentityError("You cannot remove your own administrator role")
            after, pending, awaiting = request_roles(s, self.audit, actor, user, roles, self.request_id)
            self.audit.record(
                s,
                "user.set_roles",
                actor_id=actor.id,
                target_type="user",
                target_id=user.id,
                request_id=self.request_id,
                detail={"before": before, "after": after, "awaiting_second_administrator": pending},
            )
        return RolesChanged(user, awaiting)

    def pending_role_grants(self, actor: User, user_id: str | None = None) -> list[RoleGrant]:
        self._require(actor, Permission.USER_MANAGE, "user.role_grants")
        return pending_grants(self.session, user_id)

    def decide_role_grant(self, actor: User, grant_id: str, *, approve: bool) -> RoleGrant:
        """A second administrator approves (or any administrator refuses) a requested role."""
        action = "user.role_grant_approve" if approve else "user.role_grant_refuse"
        self._require(actor, Permission.USER_MANAGE, action)
        with transaction(self.session) as s:
            grant, problem = decide_grant(s, self.audit, actor, grant_id, approve, self.request_id)
            if problem is not None:
                s.commit()
                raise IdentityError(problem) if problem == NO_SUCH_GRANT else PermissionDenied(problem)
        assert grant is not None
        return grant

    def set_active(self, actor: User, user_id: str, active: bool) -> User:
        self._require(actor, Permission.USER_MANAGE, "user.set_active")
        with transaction(self.session) as s:
            user = self._get(s, user_id)
            if actor.id == user.id and not active:
                raise IdentityError("You cannot deactivate your own account")
            user.is_active = active
            end_every_credential(s, user)
            if active:
                user.failed_login_count = 0
                user.locked_until = None
            self.audit.record(
                s,
                "user.activate" if active else "user.deactivate",
                actor_id=actor.id,
                target_type="user",
                target_id=user.id,
                request_id=self.request_id,
            )
        return user


class RolesChanged(NamedTuple):
    user: User
    awaiting_second_administrator: list[str]  # role names, sorted


def _refuse_conflicting(roles: list[str]) -> None:
    conflicts = role_conflicts(roles)
    if conflicts:
        a, b = conflicts[0]
        raise IdentityError(f"One person cannot hold both the {a} and {b} roles (separation of duties)")


def describe(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "display_name": user.display_name,
        "roles": user.role_names,
        "is_active": user.is_active,
        "mfa_enrolled": user.mfa_enrolled,
        "locked": bool(user.locked_until and user.locked_until > utcnow()),
    }
