"""Every refused authentication is an audit event that says why, and never holds the credential that
was presented (ADR 0010): the red team's 13 unaudited cases, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from tests.tre.helpers import create_user, identity
from tre.core.audit import AuditEvent


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _unb64(part: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def _edit(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    return ".".join([header, _b64({**_unb64(payload), **changes}), signature])


def _alg_none(token: str) -> str:
    _, payload, _ = token.split(".")
    return ".".join([_b64({"alg": "none", "typ": "JWT"}), payload, ""])


def _wrong_secret(personal: str) -> str:
    prefix, lookup, secret = personal.split("_", 2)
    return f"{prefix}_{lookup}_{'A' * len(secret)}"


CASES: dict[str, tuple[Callable[[str, str], str | None], str]] = {
    "no token": (lambda jwt, personal: None, "no credentials"),
    "garbage bearer": (lambda jwt, personal: "garbage", "token malformed"),
    "alg none": (lambda jwt, personal: _alg_none(jwt), "token algorithm"),
    "edited payload": (lambda jwt, personal: _edit(jwt, sub="someone-else"), "token signature"),
    "edited exp": (lambda jwt, personal: _edit(jwt, exp=4102444800), "token signature"),
    "wrong personal secret": (lambda jwt, personal: _wrong_secret(personal), "personal token secret wrong"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_bearer_is_audited_with_its_reason_and_without_the_credential(app: Any, case: str) -> None:
    user, _ = create_user(app, "rita@nhs.example", ["researcher"])
    platform = app.extensions["tre.platform"]
    jwt = platform.tokens.issue(user.id, "tre-api", "api", dt.timedelta(minutes=5))
    _, personal = identity(app).create_personal_token(user, "script", 30)
    make, reason = CASES[case]
    presented = make(jwt, personal)
    headers = {} if presented is None else {"Authorization": f"Bearer {presented}"}

    response = app.test_client().get("/api/v1/me", headers=headers)

    assert response.status_code == 401
    events = platform.db.session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.refused")).all()
    assert [(e.outcome, e.detail["reason"], e.target_id) for e in events] == [("denied", reason, "identity.me")]
    recorded = json.dumps(events[0].detail)
    for secret in filter(None, [presented, jwt, personal, (presented or "").split(".")[-1] or None]):
        assert secret not in recorded


def test_web_post_without_csrf_token_is_audited(app: Any) -> None:
    response = app.test_client().post("/auth/login", data={"email": "rita@nhs.example", "password": "x"})

    assert response.status_code == 400
    db = app.extensions["tre.db"]
    events = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.refused")).all()
    assert len(events) == 1 and events[0].detail["reason"].startswith("csrf:")
    assert "rita" not in json.dumps(events[0].detail)
