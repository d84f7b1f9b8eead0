"""Demo accounts, one or more per kind of user, so a newcomer can click through every journey.

Passwords are random per instance and written, with each account's TOTP secret, to
``demo-accounts.json`` and ``demo-logins.txt`` in the instance folder (mode 0600). MFA is
enrolled already so nobody needs a phone to try the service: ``tre demo code EMAIL`` prints the
code an authenticator app would show. Refused outside the embedded environment.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
from sqlalchemy import select

from tre.core.db import transaction, utcnow
from tre.core.identity import Identity, User
from tre.core.passwords import context_words, password_problem
from tre.core.permissions import Role

DOMAIN = "demo.tre.example"
ACCOUNTS_FILE = "demo-accounts.json"
LOGINS_FILE = "demo-logins.txt"


@dataclass(frozen=True)
class DemoPerson:
    key: str
    name: str
    roles: tuple[Role, ...]
    what: str

    @property
    def email(self) -> str:
        return f"{self.key}@{DOMAIN}"


PEOPLE: tuple[DemoPerson, ...] = (
    DemoPerson("rita.researcher", "Dr Rita Patel", (Role.RESEARCHER,), "researcher (principal investigator)"),
    DemoPerson("sam.scientist", "Sam Okafor", (Role.RESEARCHER,), "researcher (team member)"),
    DemoPerson("rob.other", "Rob Lindqvist", (Role.RESEARCHER,), "researcher on another project"),
    DemoPerson("chris.chair", "Prof Chris Adeyemi", (Role.DAC_CHAIR, Role.DAC_MEMBER), "data access committee chair"),
    DemoPerson("dana.dac", "Dana Kowalski", (Role.DAC_MEMBER,), "data access committee member"),
    DemoPerson("drew.dac", "Drew MacLeod", (Role.DAC_MEMBER,), "data access committee member"),
    DemoPerson("della.dac", "Della Osei", (Role.DAC_MEMBER,), "data access committee member"),
    DemoPerson("olive.checker", "Olive Brennan", (Role.OUTPUT_CHECKER,), "output checker"),
    DemoPerson("oscar.checker", "Oscar Nwosu", (Role.OUTPUT_CHECKER,), "output checker"),
    DemoPerson("cara.custodian", "Cara Hughes", (Role.DATA_CUSTODIAN,), "data custodian"),
    DemoPerson("adam.admin", "Adam Fletcher", (Role.ADMINISTRATOR,), "administrator"),
    DemoPerson("audrey.auditor", "Audrey Singh", (Role.AUDITOR,), "auditor"),
)


def _demo_password(email: str, name: str) -> str:
    """A random password the policy accepts. Not prefixed "demo-": the demo addresses are at
    demo.tre.example, so "demo" is a context word the policy refuses. A random one can, rarely,
    hold a short context word, so draw again."""
    words = context_words(email, name)
    for _ in range(100):
        password = secrets.token_urlsafe(12)
        if password_problem(password, words) is None:
            return password
    raise RuntimeError("no acceptable random password in 100 draws")  # pragma: no cover


def load_accounts(identity: Identity, instance: Path) -> list[dict[str, Any]]:
    """Create the demo accounts that do not exist yet; return every account's login details."""
    path = instance / ACCOUNTS_FILE
    known: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
    for person in PEOPLE:
        existing = identity.session.scalar(select(User).where(User.email == person.email))
        if existing is not None and person.email in known:
            continue
        if existing is not None:
            raise RuntimeError(f"{person.email} exists but its demo login is unknown; use a fresh instance")
        password = _demo_password(person.email, person.name)
        user = identity.create_user(
            None, person.email, person.name, [r.value for r in person.roles], password, bootstrap=True
        )
        secret = pyotp.random_base32()
        _enrol_for_demo(identity, user.id, secret)
        known[person.email] = {
            "email": person.email, "name": person.name, "what": person.what,
            "roles": [r.value for r in person.roles], "password": password, "totp_secret": secret,
        }
    _write_private(path, json.dumps(known, indent=2))
    _write_private(instance / LOGINS_FILE, _logins_text(list(known.values())))
    return list(known.values())


def _enrol_for_demo(identity: Identity, user_id: str, secret: str) -> None:
    with transaction(identity.session) as s:
        user = s.get(User, user_id)
        assert user is not None
        user.mfa_secret_sealed = identity.keys.seal(secret.encode(), f"totp:{user.id}")
        user.mfa_enrolled_at = utcnow()
        identity.audit.record(
            s, "auth.mfa_enrol", actor_id=None, target_type="user", target_id=user.id,
            detail={"demo": True},
        )


def _logins_text(accounts: list[dict[str, Any]]) -> str:
    lines = [
        "Demo logins (synthetic data only). After the password, enter the security code printed by:",
        "    .venv/bin/tre demo code EMAIL",
        "",
    ]
    width = max(len(a["email"]) for a in accounts)
    for a in accounts:
        lines.append(f"  {a['email']:<{width}}  password {a['password']}   {a['what']}")
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def current_code(instance: Path, email: str) -> str:
    accounts = json.loads((instance / ACCOUNTS_FILE).read_text())
    entry = accounts.get(email.strip().lower())
    if entry is None:
        raise KeyError(email)
    return pyotp.TOTP(entry["totp_secret"]).now()
