"""The account page: changing one's password, and personal API tokens (shown once, stored hashed,
working until revoked or expired)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import select

from tests.tre.helpers import PASSWORD, create_user, csrf_token, identity, next_code, sign_in
from tre.core.db import transaction
from tre.core.identity import PersonalApiToken, User


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


def _a_minute_later(app: Any, email: str) -> None:
    """Signing in spent the next TOTP time step; in life the next code comes 30 seconds later.
    Move the spent step back two steps instead of waiting."""
    db = app.extensions["tre.db"]
    with transaction(db.session) as s:
        user = s.scalar(select(User).where(User.email == email))
        assert user is not None and user.mfa_last_step is not None
        user.mfa_last_step -= 2


def _change(client: Any, secret: str, current: str, new: str, again: str | None = None) -> Any:
    return client.post(
        "/account/password",
        data={"current_password": current, "code": next_code(secret), "password": new,
              "password_again": new if again is None else again,
              "csrf_token": csrf_token(client, "/account/password")},
    )


def test_changing_the_password_keeps_this_browser_signed_in_and_signs_out_every_other(
    sqlite_app: Any, client: Any
) -> None:
    _, secret = create_user(sqlite_app, "rita@nhs.example", ["researcher"])
    assert secret
    sign_in(client, "rita@nhs.example", secret)
    _a_minute_later(sqlite_app, "rita@nhs.example")
    elsewhere = sqlite_app.test_client()
    sign_in(elsewhere, "rita@nhs.example", secret)
    _a_minute_later(sqlite_app, "rita@nhs.example")
    assert elsewhere.get("/account/").status_code == 200
    assert 'href="/account/password"' in client.get("/account/").get_data(as_text=True)

    response = _change(client, secret, PASSWORD, "marmalade otter violin cascade")

    assert response.status_code == 302 and response.headers["Location"].endswith("/account/")
    assert "Your password has been changed" in client.get("/account/").get_data(as_text=True)
    assert elsewhere.get("/account/").status_code == 302  # the other session has ended
    assert identity(sqlite_app).authenticate("rita@nhs.example", "marmalade otter violin cascade")


@pytest.mark.parametrize(
    ("current", "new", "again", "message"),
    [
        (PASSWORD, "marmalade otter violin cascade", "marmalade otter violin", "two new passwords are not the same"),
        ("not my password at all", "marmalade otter violin cascade", None, "current password and a correct security"),
        (PASSWORD, "qwerty123456", None, "harder to guess"),
        (PASSWORD, "rita-quartz-lamp-9051", None, "must not contain your name"),
    ],
)
def test_a_refused_change_says_why_on_the_page_and_keeps_the_password(
    sqlite_app: Any, client: Any, current: str, new: str, again: str | None, message: str
) -> None:
    _, secret = create_user(sqlite_app, "rita@nhs.example", ["researcher"])
    assert secret
    sign_in(client, "rita@nhs.example", secret)
    _a_minute_later(sqlite_app, "rita@nhs.example")

    response = _change(client, secret, current, new, again)

    page = response.get_data(as_text=True)
    assert response.status_code == 400 and message in page
    assert new not in page and current not in page  # nothing typed is echoed back
    assert client.get("/account/").status_code == 200  # still signed in
    assert identity(sqlite_app).authenticate("rita@nhs.example", PASSWORD)


def test_the_change_password_form_masks_its_fields_for_password_managers(sqlite_app: Any, client: Any) -> None:
    _, secret = create_user(sqlite_app, "rita@nhs.example", ["researcher"])
    assert secret
    sign_in(client, "rita@nhs.example", secret)

    page = client.get("/account/password").get_data(as_text=True)

    for name, purpose in (("current_password", "current-password"), ("password", "new-password"),
                          ("password_again", "new-password")):
        field = re.search(rf'<input[^>]*name="{name}"[^>]*>', page)
        assert field, name
        assert 'type="password"' in field.group(0) and f'autocomplete="{purpose}"' in field.group(0), name
