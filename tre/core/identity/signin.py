"""Signing in with a password, signing out, and the lockout both factors count towards.

Only a completed second factor clears the failure count (tre/core/identity/mfa.py); every refused
password sign-in gets the same answer after the same hashing work, whatever the reason (ADR 0010).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from tre.core.audit import DENIED, FAILURE
from tre.core.db import transaction, utcnow
from tre.core.identity.base import IdentityBase
from tre.core.identity.errors import AuthenticationFailed, IdentityError
from tre.core.identity.hashing import DUMMY_HASH, hasher, verify_quietly
from tre.core.identity.models import User
from tre.core.identity.names import normalise_email

MAX_FAILED_LOGINS = 5
LOCKOUT = dt.timedelta(minutes=15)
# One answer for every refused password sign-in, so it never tells which accounts exist or are locked.
SIGN_IN_REFUSED = (
    f"Enter a correct email address and password. After {MAX_FAILED_LOGINS} failed attempts an account "
    f"is locked for {LOCKOUT.seconds // 60} minutes"
)


class SignIn(IdentityBase):
    def authenticate(self, email: str, password: str) -> User:
        """Check an email and password; count failures and lock the account after too many.

        No account enumeration: an unknown address, a wrong password, a locked or an inactive
        account all get the same message after the same password-hash work. A right password
        does not clear the failure count (only a completed second factor does), so wrong TOTP
        codes between right passwords still lead to the lock.
        """
        failed: AuthenticationFailed | None = AuthenticationFailed(SIGN_IN_REFUSED)
        try:
            email = normalise_email(email)
        except IdentityError:
            email = ""
        now = utcnow()
        with transaction(self.session) as s:
            user = s.scalar(select(User).where(User.email == email)) if email else None
            if user is None or user.password_hash is None:
                verify_quietly(DUMMY_HASH, password)
                self.audit.record(
                    s, "auth.login", actor_id=None, outcome=FAILURE, request_id=self.request_id,
                    detail={"reason": "unknown account or no password"},
                )
            else:
                end_expired_lock(user, now)
                password_ok = verify_quietly(user.password_hash, password)
                if user.locked_until is not None:
                    self.audit.record(
                        s, "auth.login", actor_id=user.id, outcome=DENIED, request_id=self.request_id,
                        detail={"reason": "account locked"},
                    )
                elif not password_ok or not user.is_active:
                    reason = "wrong password" if user.is_active else "account inactive"
                    if count_failure(user, now):
                        reason += "; account locked"
                    self.audit.record(
                        s, "auth.login", actor_id=user.id, outcome=FAILURE, request_id=self.request_id,
                        detail={"reason": reason, "failed_count": user.failed_login_count},
                    )
                else:
                    if hasher.check_needs_rehash(user.password_hash):
                        user.password_hash = hasher.hash(password)
                    self.audit.record(
                        s, "auth.password_ok", actor_id=user.id, request_id=self.request_id,
                        detail={"mfa_required": True},
                    )
                    failed = None
        if failed is not None:
            raise failed
        assert user is not None
        return user

    def sign_out(self, user_id: str) -> None:
        with transaction(self.session) as s:
            user = self._get(s, user_id)
            user.session_epoch += 1
            self.audit.record(s, "auth.logout", actor_id=user.id, request_id=self.request_id)



def end_expired_lock(user: User, now: dt.datetime) -> None:
    """A lock that has run out starts the count again (else one more mistake would re-lock)."""
    if user.locked_until is not None and user.locked_until <= now:
        user.locked_until = None
        user.failed_login_count = 0


def count_failure(user: User, now: dt.datetime) -> bool:
    """One more wrong password or code; True when this one locks the account."""
    user.failed_login_count += 1
    if user.failed_login_count >= MAX_FAILED_LOGINS and user.locked_until is None:
        user.locked_until = now + LOCKOUT
        return True
    return False
