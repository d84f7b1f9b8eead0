"""Credentials after sign-up: administrator-issued reset links, changing one's own password,
personal API tokens, and ending every credential of a person at once (ADR 0010)."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from tre.core.audit import FAILURE
from tre.core.db import transaction, utcnow
from tre.core.identity.base import IdentityBase
from tre.core.identity.errors import AuthenticationFailed, IdentityError
from tre.core.identity.hashing import hasher, sha256_hex, verify_quietly
from tre.core.identity.mfa import matching_step
from tre.core.identity.models import PasswordResetLink, PersonalApiToken, User
from tre.core.identity.names import check_password_policy
from tre.core.identity.signin import count_failure, end_expired_lock
from tre.core.passwords import MIN_LENGTH
from tre.core.permissions import Permission

RESET_LINK_LIFETIME = dt.timedelta(hours=24)
MIN_PASSWORD_LENGTH = MIN_LENGTH


class Credentials(IdentityBase):
    def issue_reset_link(self, actor: User, user_id: str) -> str:
        """An administrator issues a single-use link; the token is shown once and stored hashed."""
        self._require(actor, Permission.USER_MANAGE, "user.issue_reset")
        token = secrets.token_urlsafe(32)
        with transaction(self.session) as s:
            user = self._get(s, user_id)
            for old in s.scalars(
                select(PasswordResetLink).where(
                    PasswordResetLink.user_id == user.id, PasswordResetLink.used_at.is_(None)
                )
            ):
                old.used_at = utcnow()  # a new link cancels any earlier one
            s.add(
                PasswordResetLink(
                    user_id=user.id,
                    token_hash=sha256_hex(token),
                    issued_by=actor.id,
                    expires_at=utcnow() + RESET_LINK_LIFETIME,
                )
            )
            self.audit.record(
                s,
                "user.issue_reset",
                actor_id=actor.id,
                target_type="user",
                target_id=user.id,
                request_id=self.request_id,
            )
        return token

    def reset_password(self, token: str, new_password: str) -> User:
        with transaction(self.session) as s:
            link = s.scalar(select(PasswordResetLink).where(PasswordResetLink.token_hash == sha256_hex(token or "")))
            if link is None or link.used_at is not None or link.expires_at < utcnow():
                raise IdentityError(
                    "This link has expired or has already been used. Ask an administrator for a new one"
                )
            user = self._get(s, link.user_id)
            # Refusing the password rolls back, so the link still works for a better one.
            check_password_policy(new_password, email=user.email, display_name=user.display_name)
            link.used_at = utcnow()
            user.password_hash = hasher.hash(new_password)
            user.failed_login_count = 0
            user.locked_until = None
            end_every_credential(s, user)
            # A reset also resets MFA: the person enrols again at their next sign-in.
            user.mfa_secret_sealed = None
            user.mfa_enrolled_at = None
            user.mfa_last_step = None
            self.audit.record(
                s,
                "auth.password_reset",
                actor_id=user.id,
                target_type="user",
                target_id=user.id,
                request_id=self.request_id,
            )
        return user

    def change_password(self, user_id: str, current_password: str, code: str, new_password: str) -> User:
        """The signed-in person changes their own password, proving it is them with the current
        password and a TOTP code (as at sign-in). A wrong password or code counts towards the
        lockout, like a failed sign-in. Success ends every session of the account (the caller
        starts a fresh one for the browser that asked) and is audited without any secret."""
        with transaction(self.session) as s:
            user = self._get(s, user_id, lock=True)
            if not user.is_active:
                raise AuthenticationFailed("Your account is not active")
            end_expired_lock(user, utcnow())
            if user.locked_until is not None:
                raise AuthenticationFailed(
                    "Your account is locked after too many failed attempts. Try again later or ask an administrator"
                )
            if user.password_hash is None or user.mfa_secret_sealed is None:
                raise IdentityError("Your account has no password or security code to check. Ask an administrator")
            secret = self.keys.unseal(user.mfa_secret_sealed, f"totp:{user.id}").decode()
            password_ok = verify_quietly(user.password_hash, current_password or "")
            step = matching_step(secret, code, after=user.mfa_last_step)
            if not password_ok or step is None:
                count_failure(user, utcnow())
                self.audit.record(
                    s, "auth.password_change", actor_id=user.id, outcome=FAILURE, target_type="user",
                    target_id=user.id, request_id=self.request_id,
                    detail={"reason": "wrong current password" if not password_ok else "wrong security code",
                            "failed_count": user.failed_login_count},
                )
                s.commit()
                raise AuthenticationFailed("Enter your current password and a correct security code")
            if verify_quietly(user.password_hash, new_password or ""):
                raise IdentityError("Choose a new password, not the one you have now")
            check_password_policy(new_password or "", email=user.email, display_name=user.display_name)
            user.password_hash = hasher.hash(new_password)
            user.mfa_last_step = step
            user.failed_login_count = 0
            end_every_credential(s, user)
            self.audit.record(
                s, "auth.password_change", actor_id=user.id, target_type="user", target_id=user.id,
                request_id=self.request_id, detail={"other_sessions_ended": True},
            )
        return user

    def create_personal_token(self, user: User, name: str, days: int) -> tuple[PersonalApiToken, str]:
        """A token for the person's own scripts: shown once, stored as a hash, at most 90 days."""
        from tre.core.tokens import new_personal_token

        name = (name or "").strip()
        if not name or len(name) > 100:
            raise IdentityError("Give the token a name (100 characters at most)")
        if not 1 <= days <= 90:
            raise IdentityError("A token lasts between 1 and 90 days")
        if not user.mfa_enrolled:
            raise IdentityError("Set up multi-factor authentication first")
        fresh = new_personal_token()
        with transaction(self.session) as s:
            row = PersonalApiToken(
                user_id=user.id, name=name, lookup_prefix=fresh.lookup_prefix, token_hash=fresh.hash,
                expires_at=utcnow() + dt.timedelta(days=days),
            )
            s.add(row)
            s.flush()
            self.audit.record(s, "token.create", actor_id=user.id, target_type="api_token", target_id=row.id,
                              request_id=self.request_id, detail={"days": days})
        return row, fresh.plaintext

    def revoke_personal_token(self, user: User, token_id: str) -> None:
        with transaction(self.session) as s:
            row = _own_token(s, user, token_id)
            if row is None:
                raise IdentityError("No such token of yours")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                self.audit.record(s, "token.revoke", actor_id=user.id, target_type="api_token", target_id=row.id,
                                  request_id=self.request_id)

    def personal_token(self, user: User, token_id: str) -> PersonalApiToken | None:
        """One of the person's own tokens (for the revocation's confirmation page); another's is None."""
        return _own_token(self.session, user, token_id)

    def personal_tokens(self, user: User) -> list[PersonalApiToken]:
        return list(self.session.scalars(
            select(PersonalApiToken).where(PersonalApiToken.user_id == user.id).order_by(PersonalApiToken.created_at)
        ))


def _own_token(s: Session, user: User, token_id: str) -> PersonalApiToken | None:
    row = s.get(PersonalApiToken, token_id)
    return row if row is not None and row.user_id == user.id else None


def end_every_credential(s: Session, user: User) -> None:
    """Every session cookie, API token and personal token of the person stops working for good."""
    user.session_epoch += 1
    user.token_generation += 1
    now = utcnow()
    for token in s.scalars(
        select(PersonalApiToken).where(PersonalApiToken.user_id == user.id, PersonalApiToken.revoked_at.is_(None))
    ):
        token.revoked_at = now
