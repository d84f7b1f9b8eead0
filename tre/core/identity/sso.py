"""Single sign-on (OpenID Connect) as a first factor: matching a provider's identity to an existing
account (nobody is ever created here), and linking or unlinking that identity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from tre.core.audit import DENIED
from tre.core.db import transaction, utcnow
from tre.core.identity.base import IdentityBase
from tre.core.identity.errors import IdentityError, SsoRefused
from tre.core.identity.hashing import sha256_hex
from tre.core.identity.models import OidcLink, User
from tre.core.identity.names import normalise_email
from tre.core.permissions import Permission


@dataclass(frozen=True)
class SsoSignIn:
    """A single sign-on the TRE accepted as a first factor, and what must still follow it."""

    user: User
    # True when the provider's ``amr`` names a method the administrator trusts and the account
    # has its MFA set up: the person is signed in without typing a TOTP code.
    second_factor_done: bool


class SingleSignOn(IdentityBase):
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
                    detail={"reason": refused.reason, "issuer": issuer[:200], "subject_hash": sha256_hex(subject)[:16]},
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
