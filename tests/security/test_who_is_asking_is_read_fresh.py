"""Who is asking is read as it is now on every request, never remembered from an earlier one
(ADR 0027, ADR 0044): a role taken away, an account deactivated or a personal or signed token revoked
counts from the very next request of the same process, on the same keep-alive client. SQLite and
PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from tests.tre.helpers import create_user, identity, sign_in
from tre.authn import API_AUDIENCE
from tre.core.audit import AuditEvent
from tre.core.db import transaction, utcnow
from tre.core.identity import PersonalApiToken, User
from tre.core.platform import revoke_token


def _admin(app: Any) -> Any:
    admin, _ = create_user(app, "ada.admin@nhs.example", ["administrator"])
    return admin


def test_a_personal_token_loses_a_removed_role_on_its_next_request(app: Any) -> None:
    admin = _admin(app)
    checker, _ = create_user(app, "carl.checker@nhs.example", ["output_checker"])
    _, token = identity(app).create_personal_token(checker, "script", 30)
    client, headers = app.test_client(), {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/outputs/queue", headers=headers).status_code == 200

    identity(app).set_roles(admin, checker.id, ["researcher"])

    assert client.get("/api/v1/outputs/queue", headers=headers).status_code == 403


def test_a_personal_token_of_a_deactivated_account_is_refused_on_its_next_request(app: Any) -> None:
    admin = _admin(app)
    person, _ = create_user(app, "rita@nhs.example", ["researcher"])
    _, token = identity(app).create_personal_token(person, "script", 30)
    client, headers = app.test_client(), {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/me", headers=headers).status_code == 200

    identity(app).set_active(admin, person.id, False)

    assert client.get("/api/v1/me", headers=headers).status_code == 401


def test_a_revoked_personal_token_is_refused_on_its_next_request(app: Any) -> None:
    person, _ = create_user(app, "rita@nhs.example", ["researcher"])
    row, token = identity(app).create_personal_token(person, "script", 30)
    client, headers = app.test_client(), {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/me", headers=headers).status_code == 200

    db = app.extensions["tre.platform"].db
    with transaction(db.session) as s:
        s.get(PersonalApiToken, row.id).revoked_at = utcnow()

    assert client.get("/api/v1/me", headers=headers).status_code == 401


def test_a_signed_in_page_loses_a_removed_role_on_its_next_request(app: Any) -> None:
    admin = _admin(app)
    checker, secret = create_user(app, "carl.checker@nhs.example", ["output_checker"])
    client = app.test_client()
    sign_in(client, checker.email, secret or "")
    assert client.get("/outputs/queue").status_code == 200

    identity(app).set_roles(admin, checker.id, ["researcher"])

    assert client.get("/outputs/queue").status_code == 403


def _signed_token(app: Any, user: Any) -> tuple[str, Any]:
    tokens = app.extensions["tre.platform"].tokens
    return tokens.issue_with_claims(user.id, API_AUDIENCE, "api", dt.timedelta(minutes=10))


def _refusals(app: Any) -> list[str]:
    s = app.extensions["tre.platform"].db.session
    s.expire_all()
    return [e.detail["reason"] for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "auth.refused"))]


# A signed (JWT) token's revocation, its person's token generation and the person are read together,
# in the request's own transaction (ADR 0044): each still counts from the very next request.


def test_a_revoked_signed_token_is_refused_on_its_next_request(app: Any) -> None:
    person, _ = create_user(app, "rita@nhs.example", ["researcher"])
    token, claims = _signed_token(app, person)
    client, headers = app.test_client(), {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/me", headers=headers).status_code == 200

    revoke_token(app.extensions["tre.platform"].db, claims.jti, claims.expires_at)

    assert client.get("/api/v1/me", headers=headers).status_code == 401
    assert _refusals(app) == ["token revoked"]


def test_a_signed_token_of_a_deactivated_account_is_refused_on_its_next_request(app: Any) -> None:
    admin = _admin(app)
    person, _ = create_user(app, "rita@nhs.example", ["researcher"])
    token, _ = _signed_token(app, person)
    client, headers = app.test_client(), {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/me", headers=headers).status_code == 200

    identity(app).set_active(admin, person.id, False)

    assert client.get("/api/v1/me", headers=headers).status_code == 401
    assert _refusals(app) == ["token superseded"]  # deactivation moved the person's token generation


def test_a_signed_token_loses_a_removed_role_on_its_next_request(app: Any) -> None:
    admin = _admin(app)
    checker, _ = create_user(app, "carl.checker@nhs.example", ["output_checker"])
    token, _ = _signed_token(app, checker)
    client, headers = app.test_client(), {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/outputs/queue", headers=headers).status_code == 200

    identity(app).set_roles(admin, checker.id, ["researcher"])

    assert client.get("/api/v1/outputs/queue", headers=headers).status_code == 403


def test_a_revoked_signed_token_of_a_removed_account_is_refused_as_revoked(app: Any) -> None:
    person, _ = create_user(app, "rita@nhs.example", ["researcher"])
    token, claims = _signed_token(app, person)
    revoke_token(app.extensions["tre.platform"].db, claims.jti, claims.expires_at)
    db = app.extensions["tre.platform"].db
    with transaction(db.session) as s:
        s.delete(s.get(User, person.id))

    assert app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert _refusals(app) == ["token revoked"]
