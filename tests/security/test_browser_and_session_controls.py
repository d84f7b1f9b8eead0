"""Browser protections, session lifetime and password handling that the ASVS map cites.

Each test here backs one or more rows of docs/assurance/README.md ("OWASP ASVS 5.0.0, levels 1
and 2"): headers on every kind of answer (HSTS when served over HTTPS), the session cookie's
attributes and name, the idle and absolute session limits, deactivation ending sessions, the API
ignoring the browser's cookie, passwords checked as typed and refused when common.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_test_app
from tests.tre.helpers import PASSWORD, create_user, csrf_token, identity, next_code, sign_in
from tre.access import public
from tre.app import HSTS
from tre.authn import SESSION_IDLE_LIMIT
from tre.core.identity import AuthenticationFailed, IdentityError


def _cookie_value(client: Any, name: str = "tre_session") -> str | None:
    cookie = client.get_cookie(name)
    return cookie.value if cookie is not None else None


def test_pages_api_answers_and_errors_carry_the_browser_protections(sqlite_app: Any, client: Any) -> None:
    _, secret = create_user(sqlite_app, "ada@nhs.example", ["researcher"])
    anonymous = sqlite_app.test_client()
    sign_in(client, "ada@nhs.example", secret)
    answers = {
        "home page": anonymous.get("/"),
        "sign-in page": anonymous.get("/auth/login"),
        "signed-in page": client.get("/projects/"),
        "missing page": anonymous.get("/no-such-page"),
        "API document": anonymous.get("/api/openapi.json"),
        "API refusal": anonymous.get("/api/v1/me"),
        "API missing": anonymous.get("/api/v1/no-such-thing"),
    }

    for what, response in answers.items():
        headers = response.headers
        policy = headers.get("Content-Security-Policy", "")
        assert headers.get("X-Content-Type-Options") == "nosniff", what
        assert headers.get("Referrer-Policy") in {"same-origin", "strict-origin", "no-referrer"}, what
        assert "frame-ancestors 'none'" in policy and "base-uri 'none'" in policy, what
        assert "no-store" in headers.get("Cache-Control", ""), what
    cross_site = anonymous.get("/api/openapi.json", headers={"Origin": "https://evil.example"})
    assert not any(name.lower().startswith("access-control-") for name in cross_site.headers.keys())


def test_session_cookie_is_httponly_samesite_lax_and_secure_when_configured(tmp_path: Path) -> None:
    app = make_test_app(tmp_path / "instance", f"sqlite:///{tmp_path / 'tre.sqlite'}", session_cookie_secure=True)
    try:
        response = app.test_client().get("/auth/login", base_url="https://localhost")
        cookies = response.headers.getlist("Set-Cookie")

        assert len(cookies) == 1
        assert cookies[0].startswith("__Host-tre_session=")  # set by this host alone, never shared
        attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookies[0].split(";")[1:]}
        assert "httponly" in attributes and "secure" in attributes
        assert attributes["samesite"].lower() == "samesite=lax"
        # What browsers require of a __Host- cookie, or they refuse it.
        assert attributes["path"] == "Path=/" and "domain" not in attributes
    finally:
        app.extensions["tre.db"].dispose()


def test_over_plain_http_the_cookie_has_no_host_prefix_and_signing_in_works(sqlite_app: Any, client: Any) -> None:
    # The embedded `make run` serves http://127.0.0.1:5000, where a browser would drop a __Host- cookie.
    _, secret = create_user(sqlite_app, "ada@nhs.example", ["researcher"])

    sign_in(client, "ada@nhs.example", secret)

    assert client.get_cookie("tre_session") is not None and client.get_cookie("__Host-tre_session") is None
    assert client.get("/projects/").status_code == 200


def test_hsts_is_on_every_answer_when_served_over_https_and_absent_over_http(tmp_path: Path, client: Any) -> None:
    app = make_test_app(
        tmp_path / "https", f"sqlite:///{tmp_path / 'https.sqlite'}",
        public_url="https://tre.example.nhs.uk", session_cookie_secure=True,
    )
    try:
        over_https = app.test_client()
        answers = {
            "page": over_https.get("/", base_url="https://tre.example.nhs.uk"),
            "sign-in page": over_https.get("/auth/login", base_url="https://tre.example.nhs.uk"),
            "missing page": over_https.get("/no-such-page", base_url="https://tre.example.nhs.uk"),
            "API refusal": over_https.get("/api/v1/me", base_url="https://tre.example.nhs.uk"),
            "static file": over_https.get("/static/reset-token.js", base_url="https://tre.example.nhs.uk"),
        }

        for what, response in answers.items():
            response.close()  # the static file is streamed
            assert response.headers.get("Strict-Transport-Security") == HSTS, what
        assert HSTS == "max-age=31536000; includeSubDomains"
    finally:
        app.extensions["tre.db"].dispose()
    assert "Strict-Transport-Security" not in client.get("/").headers  # the http:// default never pins


def test_signing_in_replaces_the_session_cookie(sqlite_app: Any, client: Any) -> None:
    _, secret = create_user(sqlite_app, "ada@nhs.example", ["researcher"])
    csrf_token(client, "/auth/login")  # the anonymous visit gets a cookie holding only a CSRF token
    before = _cookie_value(client)
    assert before

    sign_in(client, "ada@nhs.example", secret)

    after = _cookie_value(client)
    assert after and after != before
    planted = sqlite_app.test_client()
    planted.set_cookie("tre_session", before)  # a cookie fixed on the person before they signed in
    assert planted.get("/projects/").status_code == 302


def test_a_session_idle_past_the_limit_ends_and_a_recent_one_does_not(sqlite_app: Any, client: Any) -> None:
    _, secret = create_user(sqlite_app, "ada@nhs.example", ["researcher"])
    sign_in(client, "ada@nhs.example", secret)
    now = int(dt.datetime.now(dt.UTC).timestamp())

    with client.session_transaction() as session:
        session["seen"] = now - int(SESSION_IDLE_LIMIT.total_seconds()) + 60
    assert client.get("/projects/").status_code == 200

    with client.session_transaction() as session:
        session["seen"] = now - int(SESSION_IDLE_LIMIT.total_seconds()) - 60
    response = client.get("/projects/")

    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
    assert client.get("/projects/").status_code == 302  # the session was cleared, not just refused once


def test_a_session_ends_at_the_absolute_limit_however_active_it_is(sqlite_app: Any, client: Any) -> None:
    limit = sqlite_app.extensions["tre.settings"].session_max_hours * 3600
    _, secret = create_user(sqlite_app, "ada@nhs.example", ["researcher"])
    sign_in(client, "ada@nhs.example", secret)
    now = int(dt.datetime.now(dt.UTC).timestamp())

    with client.session_transaction() as session:
        session["signed_in"] = now - limit + 60  # active a moment ago, signed in nearly 12 hours back
    assert client.get("/projects/").status_code == 200

    with client.session_transaction() as session:
        session["signed_in"] = now - limit - 60
    response = client.get("/projects/")  # seen just now, so only the absolute limit can end it

    assert limit == 12 * 3600
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]
    assert client.get("/projects/").status_code == 302
    with client.session_transaction() as session:
        session.update({"uid": "x", "seen": now})  # a session that never recorded its sign-in counts for nothing
    assert client.get("/projects/").status_code == 302


def test_the_absolute_session_limit_is_a_setting(tmp_path: Path) -> None:
    app = make_test_app(tmp_path / "instance", f"sqlite:///{tmp_path / 'tre.sqlite'}", session_max_hours=2)
    try:
        assert app.permanent_session_lifetime == dt.timedelta(hours=2)  # the cookie does not outlive it
    finally:
        app.extensions["tre.db"].dispose()


def test_deactivating_an_account_ends_its_open_sessions_at_once(sqlite_app: Any, client: Any) -> None:
    admin, _ = create_user(sqlite_app, "admin@nhs.example", ["administrator"])
    ada, secret = create_user(sqlite_app, "ada@nhs.example", ["researcher"])
    sign_in(client, "ada@nhs.example", secret)
    copied = _cookie_value(client)
    assert client.get("/projects/").status_code == 200

    identity(sqlite_app).set_active(admin, ada.id, False)
    identity(sqlite_app).set_active(admin, ada.id, True)  # reactivating must not bring the old session back

    assert client.get("/projects/").status_code == 302
    other = sqlite_app.test_client()
    other.set_cookie("tre_session", copied or "")
    assert other.get("/projects/").status_code == 302


def test_the_api_ignores_a_signed_in_browsers_cookie(sqlite_app: Any, client: Any) -> None:
    _, secret = create_user(sqlite_app, "ada@nhs.example", ["researcher"])
    sign_in(client, "ada@nhs.example", secret)
    assert client.get("/projects/").status_code == 200  # the cookie works for pages

    response = client.get("/api/v1/me")

    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"


def test_passwords_are_checked_exactly_as_typed_and_long_ones_work(sqlite_app: Any, client: Any) -> None:
    long_password = "  Ünïcödé & spaces, no rules: " + "x" * 70 + "  "
    ident = identity(sqlite_app)
    user, _ = create_user(sqlite_app, "ada@nhs.example", ["researcher"])
    admin, _ = create_user(sqlite_app, "admin@nhs.example", ["administrator"])
    ident.reset_password(ident.issue_reset_link(admin, user.id), long_password)

    assert len(long_password) > 64
    assert ident.authenticate("ada@nhs.example", long_password).id == user.id
    for altered in (long_password.strip(), long_password.upper(), long_password[:64]):
        with pytest.raises(AuthenticationFailed):
            ident.authenticate("ada@nhs.example", altered)
    with pytest.raises(Exception, match="at least 12"):
        ident.reset_password(ident.issue_reset_link(admin, user.id), "elevenchars")


def test_common_passwords_and_ones_built_on_the_person_or_the_service_are_refused_wherever_set(
    sqlite_app: Any,
) -> None:
    ident = identity(sqlite_app)
    admin, _ = create_user(sqlite_app, "admin@nhs.example", ["administrator"])
    user, secret = create_user(sqlite_app, "ada.lovelace@nhs.example", ["researcher"])
    assert secret

    for weak in ("qwerty123456", "password1234", "Ada.Lovelace-2024", "tre-account-2025", "Lovelace#Analytic"):
        with pytest.raises(IdentityError):
            ident.reset_password(ident.issue_reset_link(admin, user.id), weak)
        with pytest.raises(IdentityError):
            ident.create_user(admin, "new.person@nhs.example", "Ada Lovelace", ["researcher"], weak)
        with pytest.raises(IdentityError):
            ident.change_password(user.id, PASSWORD, next_code(secret), weak)  # right password and code


def test_password_fields_are_masked_and_let_password_managers_fill_them(client: Any) -> None:
    for path, purpose in (("/auth/login", "current-password"), ("/auth/reset", "new-password")):
        page = client.get(path).get_data(as_text=True)
        field = re.search(r"<input[^>]*name=\"password\"[^>]*>", page)

        assert field, path
        assert 'type="password"' in field.group(0), path
        assert f'autocomplete="{purpose}"' in field.group(0), path
        assert not re.search(r"on(paste|copy|drop)=", page), path


def test_source_control_files_are_not_served_and_trace_is_not_supported(client: Any) -> None:
    for path in ("/.git/config", "/.git/HEAD", "/static/../.git/config", "/.env"):
        assert client.get(path).status_code == 404, path

    response = client.open("/", method="TRACE", headers={"X-Probe": "echo-me"})

    assert response.status_code in (403, 404, 405)
    assert "echo-me" not in response.get_data(as_text=True)


def test_an_unexpected_error_is_logged_with_the_request_id_it_answers_with(
    sqlite_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    @sqlite_app.get("/explode-for-the-log")
    @public
    def explode() -> str:
        raise RuntimeError("boom")

    sqlite_app.config["PROPAGATE_EXCEPTIONS"] = False
    with caplog.at_level(logging.ERROR):
        response = sqlite_app.test_client().get("/explode-for-the-log")

    request_id = response.headers["X-Request-Id"]
    assert response.status_code == 500
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and request_id in r.getMessage()]
    assert logged
    # The redacting filter renders the traceback into the record's text (masked), so look there too.
    assert logged[0].exc_info is not None or "RuntimeError: boom" in (logged[0].exc_text or "")
