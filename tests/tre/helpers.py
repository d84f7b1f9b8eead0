"""Small factories and a browser-like helper for tests of the control plane."""

from __future__ import annotations

import re
from typing import Any

import pyotp

from tre.core.identity import Identity, User

PASSWORD = "correct horse battery staple"


def identity(app: Any) -> Identity:
    p = app.extensions["tre.platform"]
    return Identity(p.db.session, p.keys, p.audit)


def create_user(app: Any, email: str, roles: list[str], *, mfa: bool = True) -> tuple[User, str | None]:
    """An account with a password and, unless told otherwise, MFA enrolled. Returns (user, totp secret)."""
    ident = identity(app)
    user = ident.create_user(None, email, email.split("@")[0].title(), roles, PASSWORD, bootstrap=True)
    if not mfa:
        return user, None
    secret = ident.start_mfa_enrolment(user)
    ident.finish_mfa_enrolment(user.id, secret, pyotp.TOTP(secret).now())
    # The enrolment code used up the current time step; tests sign in with the next one.
    return user, secret


def csrf_token(client: Any, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def next_code(secret: str) -> str:
    """A code for the time step after the current one (accepted: clocks drift by one step)."""
    totp = pyotp.TOTP(secret)
    import time

    return totp.at(int(time.time()) + totp.interval)


def sign_in(client: Any, email: str, secret: str, password: str = PASSWORD) -> Any:
    token = csrf_token(client, "/auth/login")
    client.post("/auth/login", data={"email": email, "password": password, "csrf_token": token})
    token = csrf_token(client, "/auth/mfa")
    return client.post("/auth/mfa", data={"code": next_code(secret), "csrf_token": token})
