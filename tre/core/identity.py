"""People: accounts, roles, passwords (argon2id), TOTP multi-factor authentication, lockout,
administrator-issued reset links, changing one's own password, recovery codes (argon2id too),
personal API tokens and the token revocation list.

The services here each run one use case in one transaction with its audit event: they check
policy and permission, change state, record, commit — or change nothing and raise.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from confusable_homoglyphs import confusables
from sqlalchemy import CheckConstraint, ForeignKey, LargeBinary, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from tre.core.audit import DENIED, FAILURE, AuditLog
from tre.core.db import Base, new_id, transaction, utcnow
from tre.core.keys import KeyProvider
from tre.core.passwords import MIN_LENGTH, context_words, password_problem
from tre.core.permissions import Permission, Role, has_permission
from tre.core.roles import NO_SUCH_GRANT, RoleGrant, decide_grant, pending_grants, request_roles

MAX_FAILED_LOGINS = 5
LOCKOUT = dt.timedelta(minutes=15)
RESET_LINK_LIFETIME = dt.timedelta(hours=24)
RECOVERY_CODE_COUNT = 10
MIN_PASSWORD_LENGTH = MIN_LENGTH
TOTP_ISSUER = "NHS Trusted Research Environment"

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verifying against this keeps a login for an unknown email as slow as one for a known email.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
# Recovery codes (48 random bits) are salted and stretched too (ASVS V6.5.2), with OWASP's minimum
# argon2id cost (19 MiB, 2 passes): a wrong code is checked against up to ten of them.
_code_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


# One answer for every refused password sign-in, so it never tells which accounts exist or are locked.
SIGN_IN_REFUSED = (
    f"Enter a correct email address and password. After {MAX_FAILED_LOGINS} failed attempts an account "
    f"is locked for {LOCKOUT.seconds // 60} minutes"
)


class IdentityError(Exception):
    """A request about a person that cannot be carried out; the message is safe to show."""


class AuthenticationFailed(IdentityError):
    pass


class SsoRefused(AuthenticationFailed):
    """A single sign-on that does not open any account; ``reason`` is what the audit log records."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PermissionDenied(IdentityError):
    pass


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("email = lower(email)", name="email_lowercase"),
        CheckConstraint("failed_login_count >= 0", name="failures_non_negative"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(default=True)
    mfa_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    mfa_enrolled_at: Mapped[dt.datetime | None]
    mfa_last_step: Mapped[int | None]  # the last TOTP time step accepted, so a code works once
    failed_login_count: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[dt.datetime | None]
    # Bumped on sign-out, password change or reset: every older session cookie stops working.
    session_epoch: Mapped[int] = mapped_column(default=0)
    # Bumped on a password change or reset (with its MFA reset) and on deactivation or
    # reactivation: every API token minted before (its ``gen`` claim) and every personal token
    # stops working, and stays dead when the account is reactivated (ADR 0010).
    token_generation: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[dt.datetime | None]

    roles: Mapped[list[UserRole]] = relationship(back_populates="user", cascade="all, delete-orphan", lazy="selectin")

    @property
    def role_names(self) -> list[str]:
        return sorted(r.role for r in self.roles)

    @property
    def mfa_enrolled(self) -> bool:
        return self.mfa_enrolled_at is not None

    def has(self, permission: Permission) -> bool:
        return has_permission(self, permission)


class UserRole(Base):
    __tablename__ = "user_roles"
    __table_args__ = (CheckConstraint(f"role IN {tuple(r.value for r in Role)!r}", name="role_known"),)

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(50), primary_key=True)
    granted_by: Mapped[str | None] = mapped_column(String(32))
    granted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship(back_populates="roles")


class RecoveryCode(Base):
    __tablename__ = "recovery_codes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # argon2id; codes made before argon2id was used here are a SHA-256 hex digest (64 characters),
    # still accepted until used or replaced (see ``_recovery_code_matches``).
    code_hash: Mapped[str] = mapped_column(String(255))
    used_at: Mapped[dt.datetime | None]


class PasswordResetLink(Base):
    __tablename__ = "password_reset_links"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    issued_by: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[dt.datetime]
    used_at: Mapped[dt.datetime | None]


class PersonalApiToken(Base):
    __tablename__ = "personal_api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    lookup_prefix: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]


SSO_LINK_METHODS = ("verified email", "signed-in person")


class OidcLink(Base):
    """A person's identity at the single sign-on provider: one (issuer, subject) opens one account.

    Created only for an existing account, either at a first sign-in whose verified email matches
    (when the administrator allowed that) or by the person while signed in with password and TOTP.
    """

    __tablename__ = "oidc_links"
    __table_args__ = (
        UniqueConstraint("issuer", "subject", name="oidc_subject_once"),
        UniqueConstraint("user_id", "issuer", name="oidc_one_link_per_issuer"),
        CheckConstraint(f"method IN {SSO_LINK_METHODS!r}", name="method_known"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(30))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None]


@dataclass(frozen=True)
class SsoSignIn:
    """A single sign-on the TRE accepted as a first factor, and what must still follow it."""

    user: User
    # True when the provider's ``amr`` names a method the administrator trusts and the account
    # has its MFA set up: the person is signed in without typing a TOTP code.
    second_factor_done: bool


class TokenUse(Base):
    """Revoked token ids, and single-use token ids already spent. Pruned after they expire."""

    __tablename__ = "token_uses"
    __table_args__ = (CheckConstraint("kind IN ('revoked', 'consumed')", name="kind_known"),)

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    expires_at: Mapped[dt.datetime]
    recorded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def normalise_email(email: str) -> str:
    """The one spelling of an address: NFKC, lower case, and plain ASCII only, so no two accounts
    can look alike through look-alike letters from another script, full-width forms, invisible or
    right-to-left override characters (they are refused with a clear error, not stripped)."""
    email = unicodedata.normalize("NFKC", email or "").strip().lower()
    if _has_hidden_characters(email) or not email.isascii():
        raise IdentityError(
            "Type the email address in plain (ASCII) letters and digits: it holds a look-alike letter from "
            "another alphabet, an invisible character or a right-to-left character"
        )
    if "@" not in email or len(email) > 320 or email.startswith("@") or email.endswith("@"):
        raise IdentityError("Enter an email address in the correct format, like name@example.nhs.uk")
    return email


def normalise_display_name(name: str) -> str:
    """A person's name in NFKC; any script, but not mixed with look-alikes from another script in
    one word (a Cyrillic 'а' inside a Latin name), and no invisible or direction-changing character."""
    name = " ".join(unicodedata.normalize("NFKC", name or "").split())
    if not name or len(name) > 200:
        raise IdentityError("Enter the person's name (200 characters at most)")
    if _has_hidden_characters(name):
        raise IdentityError("The name holds an invisible or right-to-left character: type it again")
    if any(confusables.is_dangerous(word) for word in name.split()):
        raise IdentityError("The name mixes look-alike letters from different alphabets: type it again")
    return name


def _has_hidden_characters(text: str) -> bool:
    # Cc control, Cf format (bidi overrides and isolates, zero-width joiners), Co private use,
    # Cs surrogates, Cn unassigned; line and paragraph separators.
    return any(unicodedata.category(c) in {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"} for c in text)


def check_password_policy(password: str, *, email: str = "", display_name: str = "") -> None:
    """Refuse a new password that is too short or long, easy to guess, or built on the person's
    name, email address or this service's name (tre/core/passwords.py)."""
    problem = password_problem(password, context_words(email, display_name))
    if problem is not None:
        raise IdentityError(problem)


@dataclass
class Identity:
    """What the identity services need: the session, the key provider and the audit log."""

    session: Session
    keys: KeyProvider
    audit: AuditLog
    request_id: str | None = None

    # --- accounts ---------------------------------------------------------------------------------

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
        unknown = [r for r in roles if r not in {x.value for x in Role}]
        if unknown:
            raise IdentityError(f"Unknown role: {', '.join(unknown)}")
        if password is not None:
            check_password_policy(password, email=email, display_name=display_name)
        with transaction(self.session) as s:
            if s.scalar(select(User).where(User.email == email)) is not None:
                raise IdentityError("An account with that email address already exists")
            user = User(email=email, display_name=display_name)
            user.password_hash = _hasher.hash(password) if password else None
            actor_id = actor.id if actor else None
            user.roles = []
            s.add(user)
            s.flush()
            if bootstrap or actor is None:
                # Setting up an empty instance (the command line of the server): no second person yet.
                user.roles = [UserRole(role=r, granted_by=actor_id) for r in sorted(set(roles))]
                granted, pending = sorted(set(roles)), list[str]()
            else:
                granted, pending = request_roles(s, self.audit, actor, user, roles, self.request_id)
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
        self._require(actor, Permission.USER_MANAGE, "user.set_roles")
        unknown = [r for r in roles if r not in {x.value for x in Role}]
        if unknown:
            raise IdentityError(f"Unknown role: {', '.join(unknown)}")
        with transaction(self.session) as s:
            # Lock the account so two administrators changing roles at once queue, not collide.
            user = self._get(s, user_id, lock=True)
            before = user.role_names
            if actor.id == user.id and Role.ADMINISTRATOR.value in before and Role.ADMINISTRATOR.value not in roles:
                raise IdentityError("You cannot remove your own administrator role")
            after, pending = request_roles(s, self.audit, actor, user, roles, self.request_id)
            self.audit.record(
                s,
                "user.set_roles",
                actor_id=actor.id,
                target_type="user",
                target_id=user.id,
                request_id=self.request_id,
                detail={"before": before, "after": after, "awaiting_second_administrator": pending},
            )
        return user

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
            _end_every_credential(s, user)
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

    # --- signing in -------------------------------------------------------------------------------

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
                _verify_quietly(_DUMMY_HASH, password)
                self.audit.record(
                    s, "auth.login", actor_id=None, outcome=FAILURE, request_id=self.request_id,
                    detail={"reason": "unknown account or no password"},
                )
            else:
                _end_expired_lock(user, now)
                password_ok = _verify_quietly(user.password_hash, password)
                if user.locked_until is not None:
                    self.audit.record(
                        s, "auth.login", actor_id=user.id, outcome=DENIED, request_id=self.request_id,
                        detail={"reason": "account locked"},
                    )
                elif not password_ok or not user.is_active:
                    reason = "wrong password" if user.is_active else "account inactive"
                    if _count_failure(user, now):
                        reason += "; account locked"
                    self.audit.record(
                        s, "auth.login", actor_id=user.id, outcome=FAILURE, request_id=self.request_id,
                        detail={"reason": reason, "failed_count": user.failed_login_count},
                    )
                else:
                    if _hasher.check_needs_rehash(user.password_hash):
                        user.password_hash = _hasher.hash(password)
                    self.audit.record(
                        s, "auth.password_ok", actor_id=user.id, request_id=self.request_id,
                        detail={"mfa_required": True},
                    )
                    failed = None
        if failed is not None:
            raise failed
        assert user is not None
        return user

    # --- single sign-on (OpenID Connect) ---------------------------------------------------------

    def sign_in_with_oidc(
        self,
        claims: Mapping[str, Any],
        *,
        link_by_verified_email: bool,
        trusted_amr: frozenset[str] = frozenset(),
    ) -> SsoSignIn:
        """Match an id_token's claims (already verified by the caller) to an existing active account.

        Deny by default: only a stored (issuer, subject) link opens an account, or, when the
        administrator allowed it, a first sign-in whose email the provider says is verified and
        matches an account that has no link at this provider yet. Nobody is ever created here.
        """
        issuer, subject = str(claims.get("iss") or ""), str(claims.get("sub") or "")
        now = utcnow()
        refused: SsoRefused | None = None
        result: SsoSignIn | None = None
        with transaction(self.session) as s:
            user: User | None = None
            link = s.scalar(select(OidcLink).where(OidcLink.issuer == issuer, OidcLink.subject == subject))
            if not issuer or not subject:
                refused = SsoRefused("The identity provider's answer was incomplete", "no issuer or subject")
            elif link is not None:
                user = s.get(User, link.user_id)
            elif not link_by_verified_email:
                refused = _not_linked("no linked account")
            elif not _claim_true(claims.get("email_verified")):
                refused = SsoRefused(
                    "Your identity provider has not verified your email address, so it cannot be used to find "
                    "your account. Sign in with your password and link single sign-on from your account page",
                    "email not verified",
                )
            else:
                try:
                    email = normalise_email(str(claims.get("email") or ""))
                except IdentityError:
                    refused = _not_linked("no email from provider")
                else:
                    user = s.scalar(select(User).where(User.email == email))
                    if user is None:
                        refused = _not_linked("no account with that email")
                    elif s.scalar(select(OidcLink).where(OidcLink.user_id == user.id, OidcLink.issuer == issuer)):
                        refused = SsoRefused(
                            "Your account is linked to a different identity at this provider. Ask an administrator",
                            "account linked to another subject",
                        )
            if refused is None and user is not None and not user.is_active:
                refused = SsoRefused("Your account is not active. Ask an administrator", "account inactive")
            if refused is None and user is not None and user.locked_until is not None and user.locked_until > now:
                refused = SsoRefused(
                    "Your account is locked after too many failed attempts. Try again later or ask an administrator",
                    "account locked",
                )
            if refused is not None or user is None:
                refused = refused or _not_linked("no linked account")
                self.audit.record(
                    s, "auth.sso", actor_id=user.id if user else None, outcome=DENIED, request_id=self.request_id,
                    detail={"reason": refused.reason, "issuer": issuer[:200], "subject_hash": _sha256(subject)[:16]},
                )
            else:
                if link is None:
                    link = OidcLink(user_id=user.id, issuer=issuer, subject=subject, method="verified email")
                    s.add(link)
                    s.flush()
                    self.audit.record(
                        s, "user.sso_link", actor_id=user.id, target_type="user", target_id=user.id,
                        request_id=self.request_id, detail={"issuer": issuer[:200], "method": link.method},
                    )
                link.last_used_at = now
                user.last_login_at = now
                amr = claims.get("amr")
                amr_values = {str(v) for v in amr} if isinstance(amr, list) else set()
                trusted = bool(trusted_amr & amr_values) and user.mfa_enrolled
                self.audit.record(
                    s, "auth.sso", actor_id=user.id, request_id=self.request_id,
                    detail={"issuer": issuer[:200], "mfa_required": not trusted},
                )
                if trusted:
                    self.audit.record(
                        s, "auth.login", actor_id=user.id, request_id=self.request_id,
                        detail={"second_factor": "identity provider", "amr": sorted(trusted_amr & amr_values)},
                    )
                result = SsoSignIn(user, second_factor_done=trusted)
        if refused is not None:
            raise refused
        assert result is not None
        return result

    def record_sso_refusal(self, reason: str, user_id: str | None = None) -> None:
        """An SSO answer refused before any claims could be trusted (bad state, bad id_token...)."""
        with transaction(self.session) as s:
            self.audit.record(
                s, "auth.sso", actor_id=user_id, outcome=DENIED, request_id=self.request_id,
                detail={"reason": reason[:200]},
            )

    def link_oidc(self, user: User, claims: Mapping[str, Any]) -> OidcLink:
        """The signed-in person (password and TOTP) links their identity at the provider to this account."""
        issuer, subject = str(claims.get("iss") or ""), str(claims.get("sub") or "")
        if not issuer or not subject:
            raise IdentityError("The identity provider's answer was incomplete")
        with transaction(self.session) as s:
            taken = s.scalar(select(OidcLink).where(OidcLink.issuer == issuer, OidcLink.subject == subject))
            mine = s.scalar(select(OidcLink).where(OidcLink.user_id == user.id, OidcLink.issuer == issuer))
            if taken is not None or mine is not None:
                self.audit.record(
                    s, "user.sso_link", actor_id=user.id, outcome=DENIED, target_type="user", target_id=user.id,
                    request_id=self.request_id,
                    detail={"reason": "already linked" if taken is mine else "identity or account linked elsewhere"},
                )
                s.commit()
                if taken is not None and taken is mine:
                    raise IdentityError("This identity is already linked to your account")
                raise IdentityError(
                    "This identity or your account is already linked at this provider. Ask an administrator"
                )
            link = OidcLink(user_id=user.id, issuer=issuer, subject=subject, method="signed-in person")
            s.add(link)
            s.flush()
            self.audit.record(
                s, "user.sso_link", actor_id=user.id, target_type="user", target_id=user.id,
                request_id=self.request_id, detail={"issuer": issuer[:200], "method": link.method},
            )
        return link

    def oidc_links(self, user_id: str) -> list[OidcLink]:
        return list(self.session.scalars(
            select(OidcLink).where(OidcLink.user_id == user_id).order_by(OidcLink.created_at)
        ))

    def remove_oidc_link(self, actor: User, user_id: str, link_id: str) -> None:
        """An administrator removes a person's single sign-on link (they can still use their password)."""
        self._require(actor, Permission.USER_MANAGE, "user.sso_unlink")
        with transaction(self.session) as s:
            link = s.get(OidcLink, link_id)
            if link is None or link.user_id != user_id:
                raise IdentityError("No such single sign-on link for this person")
            s.delete(link)
            self.audit.record(
                s, "user.sso_unlink", actor_id=actor.id, target_type="user", target_id=user_id,
                request_id=self.request_id, detail={"issuer": link.issuer[:200]},
            )

    # --- multi-factor authentication --------------------------------------------------------------

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
            step = _matching_step(secret, code, after=None)
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
                s.add(RecoveryCode(user_id=user.id, code_hash=_code_hasher.hash(c)))
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
            _end_expired_lock(user, now)
            if user.locked_until is not None:
                self.audit.record(
                    s, "auth.mfa", actor_id=user.id, outcome=DENIED, request_id=self.request_id,
                    detail={"reason": "account locked"},
                )
                s.commit()
                raise AuthenticationFailed("Your account is locked after too many failed attempts")
            secret = self.keys.unseal(user.mfa_secret_sealed, f"totp:{user.id}").decode()
            step = _matching_step(secret, code, after=user.mfa_last_step)
            used_recovery = False
            if step is None and "-" in code:
                unused = s.scalars(
                    select(RecoveryCode).where(RecoveryCode.user_id == user.id, RecoveryCode.used_at.is_(None))
                )
                rc = next((row for row in unused if _recovery_code_matches(row.code_hash, code.lower())), None)
                if rc is not None:
                    rc.used_at = utcnow()
                    used_recovery = True
            if step is None and not used_recovery:
                _count_failure(user, now)
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

    # --- sign-out and password reset -------------------------------------------------------------

    def sign_out(self, user_id: str) -> None:
        with transaction(self.session) as s:
            user = self._get(s, user_id)
            user.session_epoch += 1
            self.audit.record(s, "auth.logout", actor_id=user.id, request_id=self.request_id)

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
                    token_hash=_sha256(token),
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
            link = s.scalar(select(PasswordResetLink).where(PasswordResetLink.token_hash == _sha256(token or "")))
            if link is None or link.used_at is not None or link.expires_at < utcnow():
                raise IdentityError(
                    "This link has expired or has already been used. Ask an administrator for a new one"
                )
            user = self._get(s, link.user_id)
            # Refusing the password rolls back, so the link still works for a better one.
            check_password_policy(new_password, email=user.email, display_name=user.display_name)
            link.used_at = utcnow()
            user.password_hash = _hasher.hash(new_password)
            user.failed_login_count = 0
            user.locked_until = None
            _end_every_credential(s, user)
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
            _end_expired_lock(user, utcnow())
            if user.locked_until is not None:
                raise AuthenticationFailed(
                    "Your account is locked after too many failed attempts. Try again later or ask an administrator"
                )
            if user.password_hash is None or user.mfa_secret_sealed is None:
                raise IdentityError("Your account has no password or security code to check. Ask an administrator")
            secret = self.keys.unseal(user.mfa_secret_sealed, f"totp:{user.id}").decode()
            password_ok = _verify_quietly(user.password_hash, current_password or "")
            step = _matching_step(secret, code, after=user.mfa_last_step)
            if not password_ok or step is None:
                _count_failure(user, utcnow())
                self.audit.record(
                    s, "auth.password_change", actor_id=user.id, outcome=FAILURE, target_type="user",
                    target_id=user.id, request_id=self.request_id,
                    detail={"reason": "wrong current password" if not password_ok else "wrong security code",
                            "failed_count": user.failed_login_count},
                )
                s.commit()
                raise AuthenticationFailed("Enter your current password and a correct security code")
            if _verify_quietly(user.password_hash, new_password or ""):
                raise IdentityError("Choose a new password, not the one you have now")
            check_password_policy(new_password or "", email=user.email, display_name=user.display_name)
            user.password_hash = _hasher.hash(new_password)
            user.mfa_last_step = step
            user.failed_login_count = 0
            _end_every_credential(s, user)
            self.audit.record(
                s, "auth.password_change", actor_id=user.id, target_type="user", target_id=user.id,
                request_id=self.request_id, detail={"other_sessions_ended": True},
            )
        return user

    # --- personal API tokens ---------------------------------------------------------------------

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
            row = s.get(PersonalApiToken, token_id)
            if row is None or row.user_id != user.id:
                raise IdentityError("No such token of yours")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                self.audit.record(s, "token.revoke", actor_id=user.id, target_type="api_token", target_id=row.id,
                                  request_id=self.request_id)

    def personal_tokens(self, user: User) -> list[PersonalApiToken]:
        return list(self.session.scalars(
            select(PersonalApiToken).where(PersonalApiToken.user_id == user.id).order_by(PersonalApiToken.created_at)
        ))

    # --- helpers ----------------------------------------------------------------------------------

    def _get(self, s: Session, user_id: str, *, lock: bool = False) -> User:
        user = s.get(User, user_id, with_for_update=lock or None, populate_existing=lock)
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


def _not_linked(reason: str) -> SsoRefused:
    # One message for every "who are you?" refusal, so the page does not reveal which accounts exist.
    return SsoRefused(
        "There is no account in this TRE for the identity you signed in with. Access is granted only by "
        "an administrator: ask them to create your account, then link single sign-on to it",
        reason,
    )


def _claim_true(value: Any) -> bool:
    # Some providers send booleans as strings.
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _end_every_credential(s: Session, user: User) -> None:
    """Every session cookie, API token and personal token of the person stops working for good."""
    user.session_epoch += 1
    user.token_generation += 1
    now = utcnow()
    for token in s.scalars(
        select(PersonalApiToken).where(PersonalApiToken.user_id == user.id, PersonalApiToken.revoked_at.is_(None))
    ):
        token.revoked_at = now


def _end_expired_lock(user: User, now: dt.datetime) -> None:
    """A lock that has run out starts the count again (else one more mistake would re-lock)."""
    if user.locked_until is not None and user.locked_until <= now:
        user.locked_until = None
        user.failed_login_count = 0


def _count_failure(user: User, now: dt.datetime) -> bool:
    """One more wrong password or code; True when this one locks the account."""
    user.failed_login_count += 1
    if user.failed_login_count >= MAX_FAILED_LOGINS and user.locked_until is None:
        user.locked_until = now + LOCKOUT
        return True
    return False


def _verify_quietly(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _recovery_code_matches(stored: str, code: str) -> bool:
    if stored.startswith("$argon2"):
        return _verify_quietly_with(_code_hasher, stored, code)
    # A code made before recovery codes were hashed with argon2id: plain SHA-256 of the code.
    return secrets.compare_digest(stored, _sha256(code))


def _verify_quietly_with(hasher: PasswordHasher, stored: str, value: str) -> bool:
    try:
        return hasher.verify(stored, value)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _matching_step(secret: str, code: str, after: int | None) -> int | None:
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
