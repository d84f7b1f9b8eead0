"""The second factor: enrolling a TOTP authenticator (with one-time recovery codes) and checking a
code at sign-in; wrong codes count towards the same lockout as wrong passwords."""

from __future__ import annotations

import secrets

import pyotp
from sqlalchemy import select

from tre.core.audit import DENIED, FAILURE
from tre.core.db import transaction, utcnow
from tre.core.identity.base import IdentityBase
from tre.core.identity.errors import AuthenticationFailed, IdentityError
from tre.core.identity.hashing import code_hasher, recovery_code_matches
from tre.core.identity.models import RecoveryCode, User
from tre.core.identity.signin import count_failure, end_expired_lock

RECOVERY_CODE_COUNT = 10
TOTP_ISSUER = "NHS Trusted Research Environment"


class SecondFactor(IdentityBase):
    def start_mfa_enrolment(self, user: User) -> str:
        """A fresh TOTP secret for the person to add to their authenticator app (not yet active)."""
        if user.mfa_enrolled:
            raise IdentityError("Multi-factor authentication is already set up")
        return pyotp.random_base32()

    @staticmethod
    def provisioning_uri(user: User, secret: str) -> str:
        return pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)

    def finish_mfa_enrolment(self, user_id: str, secret: str, code: str) -> list[str]:
        """Activate MFA once the person proves their app works; returns one-time recovery codes."""
        with transaction(self.session) as s:
            user = self._get(s, user_id)
            if user.mfa_enrolled:
                raise IdentityError("Multi-factor authentication is already set up")
            step = matching_step(secret, code, after=None)
            if step is None:
                self.audit.record(
                    s,
                    "auth.mfa_enrol",
                    actor_id=user.id,
                    outcome=FAILURE,
                    request_id=self.request_id,
                    detail={"reason": "wrong code"},
                )
                s.commit()
                raise AuthenticationFailed("The code is not correct. Check the time on your device and try again")
            user.mfa_secret_sealed = self.keys.seal(secret.encode(), f"totp:{user.id}")
            user.mfa_enrolled_at = utcnow()
            user.mfa_last_step = step
            codes = [f"{secrets.token_hex(3)}-{secrets.token_hex(3)}" for _ in range(RECOVERY_CODE_COUNT)]
            for old in s.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user.id)):
                s.delete(old)
            for c in codes:
                s.add(RecoveryCode(user_id=user.id, code_hash=code_hasher.hash(c)))
            self.audit.record(s, "auth.mfa_enrol", actor_id=user.id, request_id=self.request_id)
        return codes

    def verify_second_factor(self, user_id: str, code: str) -> User:
        """Accept a TOTP code (each time step once) or an unused recovery code."""
        code = (code or "").strip().replace(" ", "")
        with transaction(self.session) as s:
            user = self._get(s, user_id)
            if not user.is_active or user.mfa_secret_sealed is None:
                raise AuthenticationFailed("Multi-factor authentication is not set up for this account")
            now = utcnow()
            end_expired_lock(user, now)
            if user.locked_until is not None:
                self.audit.record(
                    s, "auth.mfa", actor_id=user.id, outcome=DENIED, request_id=self.request_id,
                    detail={"reason": "account locked"},
                )
                s.commit()
                raise AuthenticationFailed("Your account is locked after too many failed attempts")
            secret = self.keys.unseal(user.mfa_secret_sealed, f"totp:{user.id}").decode()
            step = matching_step(secret, code, after=user.mfa_last_step)
            used_recovery = False
            if step is None and "-" in code:
                unused = s.scalars(
                    select(RecoveryCode).where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
                )
                rc = next((row for row in unused if recovery_code_matches(row.code_hash, code.lower())), None)
                if rc is not None:
                    rc.used_at = utcnow()
                    used_recovery = True
            if step is None and not used_recovery:
                count_failure(user, now)
                self.audit.record(
                    s,
                    "auth.mfa",
                    actor_id=user.id,
                    outcome=FAILURE,
                    request_id=self.request_id,
                    detail={"failed_count": user.failed_login_count},
                )
                s.commit()
                raise AuthenticationFailed("The code is not correct")
            if step is not None:
                user.mfa_last_step = step
            # Only a completed second factor clears the count of wrong passwords and codes.
            user.failed_login_count = 0
            user.last_login_at = now
            self.audit.record(
                s,
                "auth.login",
                actor_id=user.id,
                request_id=self.request_id,
                detail={"second_factor": "recovery code" if used_recovery else "totp"},
            )
        return user


def matching_step(secret: str, code: str, after: int | None) -> int | None:
    """The TOTP time step ``code`` matches (now, or one step either side), if later than ``after``."""
    code = (code or "").strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    now_step = int(utcnow().timestamp()) // totp.interval
    for step in (now_step - 1, now_step, now_step + 1):
        if after is not None and step <= after:
            continue
        if secrets.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def current_totp(secret: str) -> str:
    """The code an authenticator app would show now (demo tooling and tests)."""
    return pyotp.TOTP(secret).now()
