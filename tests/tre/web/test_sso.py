"""Single sign-on through a real (small) OpenID Connect provider over HTTP: who gets in, who does not."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests
from sqlalchemy import select

from tests.conftest import make_test_app
from tests.tre.helpers import create_user, csrf_token, identity, next_code, sign_in
from tests.tre.oidc_provider import TAMPERINGS, OidcTestProvider, Person
from tre.core.audit import AuditEvent
from tre.core.db import utcnow
from tre.core.identity import OidcLink, User


@pytest.fixture
def provider() -> Iterator[OidcTestProvider]:
    p = OidcTestProvider().start()
    yield p
    p.stop()


def _sso_app(tmp_path: Path, provider: OidcTestProvider, **settings: Any) -> Any:
    from tre.models import metadata

    app = make_test_app(
        tmp_path / "instance", f"sqlite:///{tmp_path / 'tre.sqlite'}",
        oidc_issuer=provider.issuer, oidc_client_id=provider.client_id, oidc_client_secret=provider.client_secret,
        oidc_display_name="NHS Test Login", **settings,
    )
    metadata.create_all(app.extensions["tre.db"].engine)
    return app


@pytest.fixture
def make_sso_app(tmp_path: Path, provider: OidcTestProvider) -> Iterator[Any]:
    made: list[Any] = []

    def make(**settings: Any) -> Any:
        app = _sso_app(tmp_path, provider, **settings)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["tre.db"].session.remove()
        app.extensions["tre.db"].dispose()


@pytest.fixture
def sso_app(make_sso_app: Any) -> Any:
    return make_sso_app()


def _go_to_provider(client: Any, *, path: str = "/auth/sso/start", form_from: str = "/auth/login") -> str:
    """Press the button; follow the redirect to the provider over real HTTP; return the callback URL."""
    started = client.post(path, data={"csrf_token": csrf_token(client, form_from), "next": "/account/"})
    assert started.status_code == 302, started.get_data(as_text=True)
    at_provider = requests.get(started.headers["Location"], allow_redirects=False, timeout=10)
    assert at_provider.status_code == 302, at_provider.text
    back = urlsplit(at_provider.headers["Location"])
    assert back.path == "/auth/sso/callback"
    return f"{back.path}?{back.query}"


def sso_sign_in(client: Any, **kwargs: Any) -> Any:
    return client.get(_go_to_provider(client, **kwargs))


def _link(app: Any, user: User, provider: OidcTestProvider, sub: str) -> None:
    identity(app).link_oidc(user, {"iss": provider.issuer, "sub": sub})


def _events(app: Any, action: str) -> list[AuditEvent]:
    db = app.extensions["tre.db"]
    db.session.expire_all()
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def _signed_in(client: Any) -> bool:
    return client.get("/account/").status_code == 200


# --- switched off ------------------------------------------------------------------------------------


def test_without_oidc_settings_the_login_page_has_no_sso_button_and_sso_routes_do_not_exist(client: Any) -> None:
    page = client.get("/auth/login").get_data(as_text=True)

    assert "sso-start" not in page and "single sign-on" not in page.lower()
    assert client.get("/auth/sso/callback?code=x&state=y").status_code == 404
    token = csrf_token(client, "/auth/login")
    assert client.post("/auth/sso/start", data={"csrf_token": token}).status_code == 404


def test_with_oidc_settings_the_login_page_offers_the_provider(sso_app: Any, provider: OidcTestProvider) -> None:
    response = sso_app.test_client().get("/auth/login")

    assert "Sign in with NHS Test Login" in response.get_data(as_text=True)
    # The button's answer redirects to the provider, which the page's CSP must allow for forms.
    assert f"form-action 'self' {provider.issuer};" in response.headers["Content-Security-Policy"]


# --- who gets in -------------------------------------------------------------------------------------


def test_linked_account_signs_in_with_sso_and_still_has_to_give_its_totp_code(
    sso_app: Any, provider: OidcTestProvider
) -> None:
    user, secret = create_user(sso_app, "ada@nhs.example", ["researcher"])
    assert secret
    _link(sso_app, user, provider, "idp-ada")
    provider.person = Person(sub="idp-ada", email="ada@nhs.example")
    client = sso_app.test_client()

    after_sso = sso_sign_in(client)

    assert after_sso.status_code == 302 and after_sso.headers["Location"].endswith("/auth/mfa")
    assert not _signed_in(client)  # the provider alone is not enough
    mfa = client.post("/auth/mfa", data={"code": next_code(secret), "csrf_token": csrf_token(client, "/auth/mfa")})
    assert mfa.status_code == 302 and mfa.headers["Location"] == "/account/"
    assert _signed_in(client)
    sso = _events(sso_app, "auth.sso")
    assert [(e.outcome, e.actor_id, e.detail["mfa_required"]) for e in sso] == [("success", user.id, True)]
    assert _events(sso_app, "auth.login")[-1].detail == {"second_factor": "totp"}


def test_sign_out_after_sso_ends_the_session(sso_app: Any, provider: OidcTestProvider) -> None:
    user, secret = create_user(sso_app, "ada@nhs.example", ["researcher"])
    _link(sso_app, user, provider, "idp-ada")
    provider.person = Person(sub="idp-ada", email="ada@nhs.example")
    client = sso_app.test_client()
    sso_sign_in(client)
    client.post("/auth/mfa", data={"code": next_code(secret), "csrf_token": csrf_token(client, "/auth/mfa")})
    stolen_cookie = client.get_cookie("tre_session").value

    client.post("/auth/logout", data={"csrf_token": csrf_token(client, "/account/")})

    assert not _signed_in(client)
    replay = sso_app.test_client()
    replay.set_cookie("tre_session", stolen_cookie)
    assert not _signed_in(replay)  # the session epoch moved on


def test_sso_sends_a_person_without_totp_to_enrol_it(sso_app: Any, provider: OidcTestProvider) -> None:
    user, _ = create_user(sso_app, "bo@nhs.example", ["researcher"], mfa=False)
    _link(sso_app, user, provider, "idp-bo")
    provider.person = Person(sub="idp-bo", email="bo@nhs.example", amr=["pwd", "mfa"])
    client = sso_app.test_client()

    response = sso_sign_in(client)

    assert response.headers["Location"].endswith("/auth/mfa/enrol")
    assert not _signed_in(client)


def test_trusted_amr_replaces_the_totp_code_only_when_the_provider_reports_it(
    make_sso_app: Any, provider: OidcTestProvider
) -> None:
    app = make_sso_app(oidc_trusted_amr="mfa, hwk")
    user, _ = create_user(app, "ada@nhs.example", ["researcher"])
    _link(app, user, provider, "idp-ada")

    provider.person = Person(sub="idp-ada", email="ada@nhs.example", amr=["pwd"])
    weak = app.test_client()
    assert sso_sign_in(weak).headers["Location"].endswith("/auth/mfa")
    assert not _signed_in(weak)

    provider.person = Person(sub="idp-ada", email="ada@nhs.example", amr=["pwd", "hwk"])
    strong = app.test_client()
    response = sso_sign_in(strong)
    assert response.status_code == 302 and response.headers["Location"] == "/account/"
    assert _signed_in(strong)
    assert _events(app, "auth.login")[-1].detail == {"second_factor": "identity provider", "amr": ["hwk"]}


def test_first_sso_links_by_verified_email_when_the_administrator_allows_it(
    make_sso_app: Any, provider: OidcTestProvider
) -> None:
    app = make_sso_app(oidc_link_by_verified_email=True)
    user, _ = create_user(app, "ada@nhs.example", ["researcher"])
    provider.person = Person(sub="idp-ada", email="Ada@NHS.example", email_verified=True)

    response = sso_sign_in(app.test_client())

    assert response.headers["Location"].endswith("/auth/mfa")
    links = identity(app).oidc_links(user.id)
    assert [(link.issuer, link.subject, link.method) for link in links] == [
        (provider.issuer, "idp-ada", "verified email")
    ]
    assert [e.detail["method"] for e in _events(app, "user.sso_link")] == ["verified email"]


def test_signed_in_person_links_sso_from_their_account_page(sso_app: Any, provider: OidcTestProvider) -> None:
    user, secret = create_user(sso_app, "ada@nhs.example", ["researcher"])
    assert secret
    client = sso_app.test_client()
    sign_in(client, "ada@nhs.example", secret)
    assert "Link NHS Test Login" in client.get("/account/").get_data(as_text=True)
    provider.person = Person(sub="idp-ada", email="someone-else@elsewhere.example", email_verified=False)

    response = sso_sign_in(client, path="/auth/sso/link", form_from="/account/")

    assert response.headers["Location"] == "/account/"
    assert [link.method for link in identity(sso_app).oidc_links(user.id)] == ["signed-in person"]
    assert "linked to NHS Test Login" in client.get("/account/").get_data(as_text=True)
    # ... and now the provider opens this account (after TOTP).
    fresh = sso_app.test_client()
    assert sso_sign_in(fresh).headers["Location"].endswith("/auth/mfa")


# --- who does not ------------------------------------------------------------------------------------


def _assert_refused(app: Any, response: Any, reason: str, text: str) -> None:
    assert response.status_code == 403
    assert text in response.get_data(as_text=True)
    last = _events(app, "auth.sso")[-1]
    assert last.outcome == "denied" and reason in last.detail["reason"]
    with app.test_request_context():
        pass


def test_unknown_person_is_refused_with_a_clear_page_and_an_audit_event(
    sso_app: Any, provider: OidcTestProvider
) -> None:
    provider.person = Person(sub="idp-stranger", email="stranger@nhs.example")
    client = sso_app.test_client()

    response = sso_sign_in(client)

    _assert_refused(sso_app, response, "no linked account", "There is no account in this TRE")
    assert not _signed_in(client)
    assert sso_app.extensions["tre.db"].session.scalar(select(User)) is None  # nobody was created


def test_matching_verified_email_does_not_link_unless_the_administrator_allowed_it(
    sso_app: Any, provider: OidcTestProvider
) -> None:
    create_user(sso_app, "ada@nhs.example", ["researcher"])
    provider.person = Person(sub="idp-ada", email="ada@nhs.example", email_verified=True)

    response = sso_sign_in(sso_app.test_client())

    _assert_refused(sso_app, response, "no linked account", "There is no account in this TRE")
    assert sso_app.extensions["tre.db"].session.scalar(select(OidcLink)) is None


def test_unverified_email_is_refused_even_when_email_linking_is_allowed(
    make_sso_app: Any, provider: OidcTestProvider
) -> None:
    app = make_sso_app(oidc_link_by_verified_email=True)
    create_user(app, "ada@nhs.example", ["researcher"])
    provider.person = Person(sub="idp-ada", email="ada@nhs.example", email_verified=False)

    response = sso_sign_in(app.test_client())

    _assert_refused(app, response, "email not verified", "has not verified your email")
    assert app.extensions["tre.db"].session.scalar(select(OidcLink)) is None


def test_deactivated_account_is_refused(sso_app: Any, provider: OidcTestProvider) -> None:
    admin, _ = create_user(sso_app, "admin@nhs.example", ["administrator"])
    user, _ = create_user(sso_app, "ada@nhs.example", ["researcher"])
    _link(sso_app, user, provider, "idp-ada")
    identity(sso_app).set_active(admin, user.id, False)
    provider.person = Person(sub="idp-ada", email="ada@nhs.example")
    client = sso_app.test_client()

    response = sso_sign_in(client)

    _assert_refused(sso_app, response, "account inactive", "not active")
    assert client.get("/auth/mfa").status_code == 302  # no half-signed-in state either


def test_locked_account_is_refused(sso_app: Any, provider: OidcTestProvider) -> None:
    user, _ = create_user(sso_app, "ada@nhs.example", ["researcher"])
    _link(sso_app, user, provider, "idp-ada")
    db = sso_app.extensions["tre.db"]
    db.session.get(User, user.id).locked_until = utcnow() + dt.timedelta(minutes=10)
    db.session.commit()
    provider.person = Person(sub="idp-ada", email="ada@nhs.example")

    response = sso_sign_in(sso_app.test_client())

    _assert_refused(sso_app, response, "account locked", "locked")


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("signature", "id_token rejected"),
        ("expired", "exp"),
        ("audience", "aud"),
        ("issuer", "iss"),
        ("nonce", "nonce"),
        ("no_id_token", "no id_token"),
    ],
)
def test_a_bad_id_token_signs_nobody_in(sso_app: Any, provider: OidcTestProvider, tamper: str, reason: str) -> None:
    assert tamper in TAMPERINGS
    user, _ = create_user(sso_app, "ada@nhs.example", ["researcher"])
    _link(sso_app, user, provider, "idp-ada")
    provider.person = Person(sub="idp-ada", email="ada@nhs.example")
    provider.tamper = tamper
    client = sso_app.test_client()

    response = sso_sign_in(client)

    _assert_refused(sso_app, response, reason, "Single sign-on did not complete")
    assert client.get("/auth/mfa").status_code == 302 and not _signed_in(client)
    assert provider.token_requests and provider.token_requests[-1]["pkce_ok"]  # it did reach the token step


def test_a_callback_with_another_state_is_refused_before_any_code_is_spent(
    sso_app: Any, provider: OidcTestProvider
) -> None:
    user, _ = create_user(sso_app, "ada@nhs.example", ["researcher"])
    _link(sso_app, user, provider, "idp-ada")
    provider.person = Person(sub="idp-ada", email="ada@nhs.example")
    client = sso_app.test_client()
    callback = urlsplit(_go_to_provider(client))
    params = dict(parse_qsl(callback.query))
    params["state"] = "forged-" + params["state"]

    response = client.get(f"{callback.path}?{urlencode(params)}")

    _assert_refused(sso_app, response, "state does not match", "Single sign-on did not complete")
    assert provider.token_requests == []


def test_a_callback_cannot_be_replayed(sso_app: Any, provider: OidcTestProvider) -> None:
    user, _ = create_user(sso_app, "ada@nhs.example", ["researcher"])
    _link(sso_app, user, provider, "idp-ada")
    provider.person = Person(sub="idp-ada", email="ada@nhs.example")
    client = sso_app.test_client()
    callback = _go_to_provider(client)
    assert client.get(callback).status_code == 302

    response = sso_app.test_client().get(callback)  # an attacker replays the URL in their own browser

    _assert_refused(sso_app, response, "state does not match", "Single sign-on did not complete")


def test_the_flow_uses_pkce_s256_nonce_and_client_authentication(sso_app: Any, provider: OidcTestProvider) -> None:
    user, _ = create_user(sso_app, "ada@nhs.example", ["researcher"])
    _link(sso_app, user, provider, "idp-ada")
    provider.person = Person(sub="idp-ada", email="ada@nhs.example")

    sso_sign_in(sso_app.test_client())

    asked = provider.authorize_requests[-1]
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) >= 43
    assert asked["nonce"] and asked["state"]
    assert asked["redirect_uri"] == "http://127.0.0.1:5000/auth/sso/callback"
    assert provider.token_requests == [{"client_auth": "client_secret_basic", "pkce_ok": True}]


def test_an_unreachable_provider_gives_a_page_not_an_error(tmp_path: Path) -> None:
    from tre.models import metadata

    app = make_test_app(
        tmp_path / "instance", f"sqlite:///{tmp_path / 'tre.sqlite'}",
        oidc_issuer="http://127.0.0.1:1", oidc_client_id="c", oidc_client_secret="s3cret-value",
    )
    metadata.create_all(app.extensions["tre.db"].engine)
    client = app.test_client()

    response = client.post("/auth/sso/start", data={"csrf_token": csrf_token(client, "/auth/login")})

    assert response.status_code == 503
    assert "Single sign-on did not complete" in response.get_data(as_text=True)
    app.extensions["tre.db"].dispose()


def test_nothing_logged_or_audited_contains_the_client_secret_or_any_token(
    sso_app: Any, provider: OidcTestProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    user, secret = create_user(sso_app, "ada@nhs.example", ["researcher"])
    assert secret
    _link(sso_app, user, provider, "idp-ada")
    provider.person = Person(sub="idp-ada", email="ada@nhs.example")
    client = sso_app.test_client()
    sso_sign_in(client)
    client.post("/auth/mfa", data={"code": next_code(secret), "csrf_token": csrf_token(client, "/auth/mfa")})
    for tamper in ("signature", "nonce"):
        provider.tamper = tamper
        sso_sign_in(sso_app.test_client())

    audit_text = json.dumps([e.detail for e in _events(sso_app, "auth.sso")] + [
        e.detail for e in _events(sso_app, "auth.login")
    ])
    settings_text = repr(sso_app.extensions["tre.settings"])
    assert len(provider.issued_secrets) >= 1 + 3 * 3  # secret + codes, verifiers, tokens of three flows
    assert "single sign-on refused" in caplog.text  # the refusals were logged, as kinds of failure
    for value in provider.issued_secrets:
        assert value not in caplog.text
        assert value not in audit_text
        assert value not in settings_text


def test_administrator_sees_a_persons_sso_link_and_removes_it(sso_app: Any, provider: OidcTestProvider) -> None:
    _, admin_secret = create_user(sso_app, "admin@nhs.example", ["administrator"])
    assert admin_secret
    user, _ = create_user(sso_app, "ada@nhs.example", ["researcher"])
    _link(sso_app, user, provider, "idp-ada")
    admin = sso_app.test_client()
    sign_in(admin, "admin@nhs.example", admin_secret)
    page = admin.get(f"/admin/users/{user.id}").get_data(as_text=True)
    assert f"Linked to {provider.issuer}" in page
    link_id = identity(sso_app).oidc_links(user.id)[0].id

    removed = admin.post(f"/admin/users/{user.id}/sso/{link_id}/remove",
                         data={"csrf_token": csrf_token(admin, f"/admin/users/{user.id}")})

    assert removed.status_code == 302
    assert "Not linked" in admin.get(f"/admin/users/{user.id}").get_data(as_text=True)
    assert [e.actor_id for e in _events(sso_app, "user.sso_unlink")] == [
        identity(sso_app).session.scalar(select(User.id).where(User.email == "admin@nhs.example"))
    ]
    provider.person = Person(sub="idp-ada", email="ada@nhs.example")
    _assert_refused(sso_app, sso_sign_in(sso_app.test_client()), "no linked account", "There is no account")
