"""The tables of people: accounts and roles, recovery codes, reset links, personal tokens, single
sign-on links, and spent or revoked token ids."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import CheckConstraint, ForeignKey, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tre.core.db import Base, new_id, utcnow
from tre.core.permissions import Permission, Role, has_permission


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


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as ``tre.authn`` read them at the start of this request: the account's columns
    that requests use and its role names, not an ORM object (ADR 0049).

    ``g.user`` is one of these. Services take it where they take a ``User`` as the actor: they use
    its id, its permissions and the few columns below, and read or lock the account itself from the
    database whenever they change it. Nothing is kept after the request (ADR 0027).
    """

    id: str
    email: str
    display_name: str
    is_active: bool
    mfa_enrolled: bool
    session_epoch: int
    token_generation: int
    locked_until: dt.datetime | None
    role_names: list[str]  # sorted, as ``User.role_names``

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




class TokenUse(Base):
    """Revoked token ids, and single-use token ids already spent. Pruned after they expire."""

    __tablename__ = "token_uses"
    __table_args__ = (CheckConstraint("kind IN ('revoked', 'consumed')", name="kind_known"),)

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    expires_at: Mapped[dt.datetime]
    recorded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
