"""Single sign-on with an OpenID Connect provider: authorisation code flow with PKCE (docs/sso.md).

Off unless ``TRE_OIDC_ISSUER``, ``TRE_OIDC_CLIENT_ID`` and ``TRE_OIDC_CLIENT_SECRET`` are all set;
while it is off, every route here answers 404 and the sign-in page shows no button.

authlib does the protocol: ``state`` bound to this browser's session, PKCE (S256), the code
exchange with client authentication, and the id_token's signature against the provider's JWKS,
its expiry and its ``nonce``. authlib checks the audience only when asked and accepts a token
response without an id_token, so this module asks for the audience and issuer explicitly and
refuses a response that carries no verified id_token. The verified claims then go to the identity
service, which alone decides which existing account (if any) they open.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from authlib.integrations.base_client import MismatchingStateError, OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for
from joserfc.errors import JoseError

from tre.access import login_required, public
from tre.authn import identity_service, start_session
from tre.core.config import Settings
from tre.core.identity import IdentityError, SsoRefused
from tre.web.auth import begin_second_factor, safe_next

bp = Blueprint("sso", __name__, url_prefix="/auth/sso")
log = logging.getLogger(__name__)

CLIENT_NAME = "tre_sso"
EXTENSION = "tre.oidc"
PROVIDER_TIMEOUT_SECONDS = 10
PROTOCOL_FAILURE = (
    "Single sign-on did not complete, so you have not been signed in. Start again from the sign-in page; "
    "if it keeps failing, sign in with your password or contact the service desk"
)


@bp.record_once
def _register_client(state: Any) -> None:
    app = state.app
    settings: Settings = app.extensions["tre.settings"]
    if not settings.oidc_enabled:
        return
    # authlib logs the PKCE code verifier at DEBUG; it must never reach a log, whatever the level.
    logging.getLogger("authlib").setLevel(logging.INFO)
    oauth = OAuth(app)
    app.extensions[EXTENSION] = oauth.register(
        CLIENT_NAME,
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret,
        server_metadata_url=settings.oidc_discovery_url,
        client_kwargs={
            "scope": settings.oidc_scopes,
            "code_challenge_method": "S256",
            "default_timeout": PROVIDER_TIMEOUT_SECONDS,
        },
    )


@bp.after_app_request
def _allow_forms_to_reach_the_provider(response: Any) -> Any:
    """The sign-in and link buttons are forms whose answer redirects to the provider; browsers check
    such redirects against the page's CSP ``form-action``, so the provider's origin is added there."""
    client = current_app.extensions.get(EXTENSION)
    if client is None:  # single sign-on is off: nothing to add (and no header to look up)
        return response
    policy = response.headers.get("Content-Security-Policy")
    if not policy or "form-action 'self'" not in policy:
        return response
    origins = {_origin(_settings().oidc_issuer), _origin(client.server_metadata.get("authorization_endpoint", ""))}
    extra = " ".join(sorted(o for o in origins if o))
    response.headers["Content-Security-Policy"] = policy.replace("form-action 'self'", f"form-action 'self' {extra}")
    return response


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else ""


def sso_display_name() -> str | None:
    """The sign-in button's label, or None when single sign-on is off."""
    settings: Settings = current_app.extensions["tre.settings"]
    return settings.oidc_display_name if EXTENSION in current_app.extensions else None


def _client() -> Any:
    client = current_app.extensions.get(EXTENSION)
    if client is None:
        abort(404)
    return client


def _settings() -> Settings:
    return current_app.extensions["tre.settings"]  # type: ignore[no-any-return]


def _redirect_uri() -> str:
    # Built from the configured public address (what the provider has registered), not the Host header.
    return _settings().public_url.rstrip("/") + url_for("sso.callback")


def _send_to_provider(intent: str, next_url: str) -> Any:
    client = _client()
    session["sso_intent"] = intent
    session["sso_next"] = next_url
    try:
        return client.authorize_redirect(_redirect_uri())
    except Exception as exc:  # noqa: BLE001 - an unreachable provider is a page, not a traceback
        log.warning("single sign-on provider unreachable: %s", type(exc).__name__)
        return _refused(PROTOCOL_FAILURE, 503)


@bp.post("/start")
@public
def start() -> Any:
    return _send_to_provider("sign-in", safe_next(request.form.get("next")))


@bp.post("/link")
@login_required
def link() -> Any:
    return _send_to_provider("link", url_for("account.index"))


def _claims_options() -> dict[str, Any]:
    settings = _settings()
    return {
        "iss": {"essential": True, "value": settings.oidc_issuer},
        "aud": {"essential": True, "value": settings.oidc_client_id},
        "sub": {"essential": True},
    }


def _verified_claims() -> dict[str, Any]:
    """Finish the code exchange and return the id_token's claims, verified; raise on anything less."""
    token = _client().authorize_access_token(claims_options=_claims_options())
    claims = token.get("userinfo")
    if claims is None:
        raise _NoIdToken()
    return dict(claims)


class _NoIdToken(Exception):
    pass


def _failure_reason(exc: Exception) -> str:
    """What the audit log says about a refused answer: the kind of failure, never the token."""
    if isinstance(exc, MismatchingStateError):
        return "state does not match this browser's sign-in"
    if isinstance(exc, OAuthError):
        return f"provider error: {str(exc.error)[:60]}"
    if isinstance(exc, JoseError):
        return f"id_token rejected: {exc.error} {str(getattr(exc, 'claim', '') or '')}".strip()
    if isinstance(exc, _NoIdToken):
        return "token response has no id_token"
    return f"single sign-on failed: {type(exc).__name__}"


@bp.get("/callback")
@public
def callback() -> Any:
    _client()
    intent = session.pop("sso_intent", None)
    next_url = session.pop("sso_next", None)
    service = identity_service()
    try:
        claims = _verified_claims()
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, nobody is signed in
        reason = _failure_reason(exc)
        log.warning("single sign-on refused: %s", reason)
        service.record_sso_refusal(reason, user_id=g.user.id if g.get("user") else None)
        return _refused(PROTOCOL_FAILURE, 403)

    if intent == "link":
        user = g.get("user")
        if user is None:
            service.record_sso_refusal("link asked without a signed-in session")
            return _refused("Your session ended before the link was made. Sign in and try again", 403)
        try:
            service.link_oidc(user, claims)
        except IdentityError as exc:
            flash(str(exc), "error")
        else:
            flash("Single sign-on is now linked to your account", "success")
        return redirect(url_for("account.index"))

    settings = _settings()
    try:
        result = service.sign_in_with_oidc(
            claims,
            link_by_verified_email=settings.oidc_link_by_verified_email,
            trusted_amr=settings.oidc_trusted_amr_values,
        )
    except SsoRefused as exc:
        return _refused(str(exc), 403)
    if result.second_factor_done:
        start_session(result.user)
        return redirect(safe_next(next_url))
    return begin_second_factor(result.user, safe_next(next_url))


def _refused(message: str, status: int) -> Any:
    return render_template("auth/sso_refused.html", title="You have not been signed in", message=message), status
