"""Single sign-on in a real browser: the TRE and the test OpenID Connect provider each on their own port.

The TRE here is the app served over HTTP in this process (not ``tre run``): single sign-on needs
the provider's settings at start-up and nothing of the workers or the hub, so a second full
service would only cost time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.conftest import make_test_app
from tests.e2e.conftest import free_port
from tests.tre.helpers import create_user, identity, next_code
from tests.tre.oidc_provider import OidcTestProvider, Person

pytestmark = pytest.mark.e2e


@dataclass
class SsoService:
    url: str
    app: Any
    provider: OidcTestProvider


def _body_read_before_sending(app: Any) -> Any:
    """The app with each answer's body read, and the answer closed, before werkzeug's test server sends
    any of it. That server closes an answer only after it has drained the request's socket, and a read
    of a socket the browser reset (a favicon fetch cut short by the next navigation) raises first: the
    static file's handle was then left for the garbage collector, whose warning failed a later test."""

    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        answer = app(environ, start_response)
        try:
            return [b"".join(answer)]
        finally:
            close = getattr(answer, "close", None)
            if close is not None:
                close()

    return wsgi


@pytest.fixture(scope="module")
def sso_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SsoService]:
    from tre.models import metadata

    provider = OidcTestProvider().start()
    base = tmp_path_factory.mktemp("sso")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = make_test_app(
        base / "instance", f"sqlite:///{base / 'tre.sqlite'}", public_url=url,
        oidc_issuer=provider.issuer, oidc_client_id=provider.client_id, oidc_client_secret=provider.client_secret,
        oidc_display_name="NHS Test Login",
    )
    metadata.create_all(app.extensions["tre.db"].engine)
    server = make_server("127.0.0.1", port, _body_read_before_sending(app), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SsoService(url, app, provider)
    server.shutdown()
    thread.join(timeout=5)
    provider.stop()
    app.extensions["tre.db"].dispose()


def test_person_signs_in_through_the_provider_then_gives_their_totp_code(page: Any, sso_service: SsoService) -> None:
    user, secret = create_user(sso_service.app, "ada@nhs.example", ["researcher"])
    assert secret
    identity(sso_service.app).link_oidc(user, {"iss": sso_service.provider.issuer, "sub": "idp-ada"})
    sso_service.provider.person = Person(sub="idp-ada", email="ada@nhs.example")

    page.goto(sso_service.url + "/auth/login")
    page.click("text=Sign in with NHS Test Login")
    page.wait_for_url("**/auth/mfa")
    page.fill("#code", next_code(secret))
    page.click("main button[type=submit]")
    page.goto(sso_service.url + "/account/")

    assert page.inner_text("h1") == "Your account"
    assert "linked to NHS Test Login" in page.inner_text("#sso-status")
    assert sso_service.provider.token_requests[-1] == {"client_auth": "client_secret_basic", "pkce_ok": True}


def test_a_stranger_is_turned_away_with_a_clear_page(page: Any, sso_service: SsoService) -> None:
    sso_service.provider.person = Person(sub="idp-stranger", email="stranger@nhs.example")

    page.goto(sso_service.url + "/auth/login")
    page.click("text=Sign in with NHS Test Login")
    page.locator("#sso-refusal").wait_for()

    assert "There is no account in this TRE" in page.inner_text("#sso-refusal")
    page.goto(sso_service.url + "/account/")
    assert "/auth/login" in page.url
