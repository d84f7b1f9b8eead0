"""Signing in with two factors, enrolment, lockout, sign-out, reset links and CSRF."""

from __future__ import annotations

import re
from typing import Any

import pyotp
from sqlalchemy import select

from tests.tre.helpers import PASSWORD, create_user, csrf_token, identity, next_code, sign_in
from tre.core.audit import AuditEvent
from tre.core.identity import MAX_FAILED_LOGINS, User


def _events(app: Any, action: str) -> list[AuditEvent]:
    db = app.extensions["tre.db"]
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_sign_in_with_password_and_code_reaches_a_permitted_page(sqlite_app: Any, client: Any) -> None:
    _, secret = create_user(sqlite_app, "ada@nhs.example", ["administrator"])
    assert secret

    response = sign_in(client, "ada@nhs.example", secret)

    assert response.status_code == 302
    assert client.get("/admin/users").status_code == 200


def test_password_alone_does_not_sign_anyone_in(sqlite_app: Any, client: Any) -> None:
    create_user(sqlite_app, "ada@nhs.example", ["administrator"])
    token = csrf_token(client, "/auth/login")
    client.post("/auth/login", data={"email": "ada@nhs.example", "password": PASSWORD, "csrf_token": token})

    response = client.get("/admin/users")

    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]


def test_wrong_password_gets_the_same_message_as_an_unknown_email(sqlite_app: Any, client: Any) -> None:
    create_user(sqlite_app, "ada@nhs.example", ["researcher"])
    token = csrf_token(client, "/auth/login")

    wrong = client.post("/auth/login", data={"email": "ada@nhs.example", "password": "nope", "csrf_token": token})
    unknown = client.post("/auth/login", data={"email": "who@nhs.example", "password": "nope", "csrf_token": token})

    assert wrong.status_code == unknown.status_code == 400
    message = "Enter a correct email address and password"
    assert message in wrong.get_data(as_text=True) and message in unknown.get_data(as_text=True)
    assert len(_events(sqlite_app, "auth.login")) == 2


def test_account_locks_after_repeated_failures_even_with_the_right_password(sqlite_app: Any, client: Any) -> None:
    create_user(sqlite_app, "ada@nhs.example", ["researcher"])
    token = csrf_token(client, "/auth/login")
    for _ in range(MAX_FAILED_LOGINS):
        client.post("/auth/login", data={"email": "ada@nhs.example", "password": "guess", "csrf_token": token})

    response = client.post("/auth/login", data={"email": "ada@nhs.example", "password": PASSWORD, "csrf_token": token})
    unknown = client.post("/auth/login", data={"email": "bob@nhs.example", "password": PASSWORD, "csrf_token": token})

    assert response.status_code == unknown.status_code == 400
    # The same page as for an unknown address (no enumeration), which says an account may lock.
    def shape(page: str) -> str:  # the form's CSRF token is signed with the second it was made
        return re.sub(r'name="csrf_token" value="[^"]*"', "", page).replace("ada@nhs.example", "bob@nhs.example")

    page = response.get_data(as_text=True)
    assert shape(page) == shape(unknown.get_data(as_text=True))
    assert "locked" in page


def test_new_account_must_enrol_mfa_before_anything_else(sqlite_app: Any, client: Any) -> None:
    create_user(sqlite_app, "new@nhs.example", ["auditor"], mfa=False)
    token = csrf_token(client, "/auth/login")
    response = client.post("/auth/login", data={"email": "new@nhs.example", "password": PASSWORD, "csrf_token": token})
    assert response.headers["Location"].endswith("/auth/mfa/enrol")
    assert client.get("/audit/").status_code == 302  # not signed in yet

    page = client.get("/auth/mfa/enrol").get_data(as_text=True)
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page).group(1)  # type: ignore[union-attr]
    assert "<svg" in page  # the QR code
    done = client.post(
        "/auth/mfa/enrol", data={"code": pyotp.TOTP(secret).now(), "csrf_token": csrf_token(client, "/auth/mfa/enrol")}
    )

    assert done.status_code == 200
    assert len(re.findall(r"<li>[0-9a-f]{6}-[0-9a-f]{6}</li>", done.get_data(as_text=True))) == 10
    assert client.get("/audit/").status_code == 200


def test_a_totp_code_works_only_once(sqlite_app: Any) -> None:
    user, secret = create_user(sqlite_app, "ada@nhs.example", ["researcher"])
    assert secret
    code = next_code(secret)
    identity(sqlite_app).verify_second_factor(user.id, code)

    try:
        identity(sqlite_app).verify_second_factor(user.id, code)
    except Exception as exc:  # noqa: BLE001
        assert "not correct" in str(exc)
    else:
        raise AssertionError("a replayed code was accepted")


def test_sign_out_invalidates_a_copied_session_cookie(sqlite_app: Any, client: Any) -> None:
    _, secret = create_user(sqlite_app, "ada@nhs.example", ["administrator"])
    assert secret
    sign_in(client, "ada@nhs.example", secret)
    stolen = client.get_cookie("tre_session").value

    client.post("/auth/logout", data={"csrf_token": csrf_token(client, "/admin/users")})
    thief = sqlite_app.test_client()
    thief.set_cookie("tre_session", stolen)

    assert thief.get("/admin/users").status_code == 302


def test_form_post_without_csrf_token_is_refused_and_changes_nothing(sqlite_app: Any, client: Any) -> None:
    _, secret = create_user(sqlite_app, "ada@nhs.example", ["administrator"])
    assert secret
    sign_in(client, "ada@nhs.example", secret)

    response = client.post("/admin/users/new", data={"email": "x@nhs.example", "display_name": "X", "roles": "auditor"})

    assert response.status_code == 400
    db = sqlite_app.extensions["tre.db"]
    assert db.session.scalar(select(User).where(User.email == "x@nhs.example")) is None


def test_person_refused_a_page_is_recorded_and_an_auditor_finds_it(sqlite_app: Any, client: Any) -> None:
    researcher, secret = create_user(sqlite_app, "rita@nhs.example", ["researcher"])
    _, auditor_secret = create_user(sqlite_app, "audrey@nhs.example", ["auditor"])
    assert secret and auditor_secret
    sign_in(client, "rita@nhs.example", secret)

    assert client.get("/admin/users").status_code == 403

    auditor = sqlite_app.test_client()
    sign_in(auditor, "audrey@nhs.example", auditor_secret)
    page = auditor.get("/audit/?person=rita@nhs.example&action=access.denied").get_data(as_text=True)
    assert "access.denied" in page and "admin.users" in page
    export = auditor.get("/audit/export.csv?action=access.denied")
    assert export.mimetype == "text/csv" and researcher.id in export.get_data(as_text=True)


def test_reset_link_sets_a_new_password_once_and_signs_out_old_sessions(sqlite_app: Any, client: Any) -> None:
    admin, admin_secret = create_user(sqlite_app, "adam@nhs.example", ["administrator"])
    user, _ = create_user(sqlite_app, "rita@nhs.example", ["researcher"])
    token = identity(sqlite_app).issue_reset_link(admin, user.id)

    form = {"token": token, "password": "a brand new passphrase", "csrf_token": csrf_token(client, "/auth/reset")}
    first = client.post("/auth/reset", data=form)
    second = client.post("/auth/reset", data=form | {"csrf_token": csrf_token(client, "/auth/reset")})

    assert first.status_code == 200 and "Password changed" in first.get_data(as_text=True)
    assert second.status_code == 400 and "already been used" in second.get_data(as_text=True)
    assert identity(sqlite_app).authenticate("rita@nhs.example", "a brand new passphrase").id == user.id


def test_next_parameter_cannot_redirect_off_site(sqlite_app: Any, client: Any) -> None:
    _, secret = create_user(sqlite_app, "ada@nhs.example", ["administrator"])
    assert secret
    token = csrf_token(client, "/auth/login")
    client.post(
        "/auth/login",
        data={"email": "ada@nhs.example", "password": PASSWORD, "csrf_token": token, "next": "//evil.example/steal"},
    )
    response = client.post("/auth/mfa", data={"code": next_code(secret), "csrf_token": csrf_token(client, "/auth/mfa")})

    assert response.headers["Location"] == "/"
