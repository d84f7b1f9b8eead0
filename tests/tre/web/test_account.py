"""Personal API tokens: shown once, stored hashed, working until revoked or expired."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select

from tests.tre.helpers import create_user, csrf_token, sign_in
from tre.core.identity import PersonalApiToken


def test_personal_token_is_shown_once_stored_hashed_and_works_until_revoked(sqlite_app: Any, client: Any) -> None:
    _, secret = create_user(sqlite_app, "rita@nhs.example", ["researcher"])
    assert secret
    sign_in(client, "rita@nhs.example", secret)

    page = client.post(
        "/account/tokens", data={"name": "nightly", "days": "7", "csrf_token": csrf_token(client, "/account/")}
    ).get_data(as_text=True)
    token = re.search(r'id="new-token">([^<]+)<', page).group(1)  # type: ignore[union-attr]
    api = sqlite_app.test_client()
    assert api.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).get_json()["email"] == "rita@nhs.example"
    stored = sqlite_app.extensions["tre.db"].session.scalar(select(PersonalApiToken))
    assert stored is not None and token not in (stored.token_hash, stored.lookup_prefix)
    assert token not in client.get("/account/").get_data(as_text=True)  # never shown again

    client.post(f"/account/tokens/{stored.id}/revoke", data={"csrf_token": csrf_token(client, "/account/")})

    assert api.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_malformed_personal_token_is_refused_not_an_error(client: Any) -> None:
    response = client.get("/api/v1/me", headers={"Authorization": "Bearer trepat_not-a-real-token"})

    assert response.status_code == 401


def test_token_lifetime_is_bounded(sqlite_app: Any, client: Any) -> None:
    _, secret = create_user(sqlite_app, "rita@nhs.example", ["researcher"])
    assert secret
    sign_in(client, "rita@nhs.example", secret)

    client.post(
        "/account/tokens", data={"name": "forever", "days": "3650", "csrf_token": csrf_token(client, "/account/")}
    )

    assert sqlite_app.extensions["tre.db"].session.scalar(select(PersonalApiToken)) is None
