"""People: accounts, roles, passwords (argon2id), TOTP multi-factor authentication, lockout,
single sign-on, administrator-issued reset links, changing one's own password, recovery codes,
personal API tokens and the token revocation list.

One service, ``Identity``, made of one part per job (each its own module):

- ``accounts``: creating accounts, roles (data roles need a second administrator), activation;
- ``signin``: the password, signing out, and the lockout both factors count towards;
- ``mfa``: enrolling TOTP, checking codes and recovery codes;
- ``sso``: OpenID Connect sign-in and links;
- ``credentials``: reset links, password changes, personal tokens, ending every credential;
- ``models``, ``errors``, ``names`` (email and name spelling, password policy), ``hashing``.

The services each run one use case in one transaction with its audit event: they check policy and
permission, change state, record, commit — or change nothing and raise.
"""

from __future__ import annotations

from tre.core.identity.accounts import Accounts, describe
from tre.core.identity.credentials import MIN_PASSWORD_LENGTH, RESET_LINK_LIFETIME, Credentials
from tre.core.identity.errors import AuthenticationFailed, IdentityError, PermissionDenied, SsoRefused
from tre.core.identity.mfa import RECOVERY_CODE_COUNT, TOTP_ISSUER, SecondFactor, current_totp
from tre.core.identity.models import (
    SSO_LINK_METHODS,
    Caller,
    OidcLink,
    PasswordResetLink,
    PersonalApiToken,
    RecoveryCode,
    TokenUse,
    User,
    UserRole,
)
from tre.core.identity.names import check_password_policy, normalise_display_name, normalise_email
from tre.core.identity.signin import LOCKOUT, MAX_FAILED_LOGINS, SIGN_IN_REFUSED, SignIn
from tre.core.identity.sso import SingleSignOn, SsoSignIn


class Identity(Accounts, SignIn, SecondFactor, SingleSignOn, Credentials):
    """Every identity use case, for one session, key provider and audit log."""


__all__ = [
    "LOCKOUT", "MAX_FAILED_LOGINS", "MIN_PASSWORD_LENGTH", "RECOVERY_CODE_COUNT", "RESET_LINK_LIFETIME",
    "SIGN_IN_REFUSED", "SSO_LINK_METHODS", "TOTP_ISSUER", "AuthenticationFailed", "Caller", "Identity", "IdentityError",
    "OidcLink", "PasswordResetLink", "PermissionDenied", "PersonalApiToken", "RecoveryCode", "SsoRefused",
    "SsoSignIn", "TokenUse", "User", "UserRole", "check_password_policy", "current_totp", "describe",
    "normalise_display_name", "normalise_email",
]
