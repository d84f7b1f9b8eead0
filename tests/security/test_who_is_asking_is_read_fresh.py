"""Who is asking is read as it is now on every request, never remembered from an earlier one
(ADR 0027): a role taken away, an account deactivated or a personal token revoked counts from the
very next request of the same process, on the same keep-alive client. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.tre.helpers import create_user, identity, sign_in
from tre.core.db import transaction, utcnow
from tre.core.identity import PersonalApiToken


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
