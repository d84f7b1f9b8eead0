"""Rate limits on the ways in: sign-in, the TOTP code, reset links, making tokens, redeeming them,
and on failed authentication anywhere (ADR 0010).

Counted per client address. Behind a reverse proxy that address is taken from ``X-Forwarded-For``
only as far as ``TRE_TRUSTED_PROXIES`` proxies vouch for it (werkzeug's ProxyFix); with the
default 0 the connecting address counts and the header is ignored, so a client cannot pick its
own address. Counters live in memory (one process, the embedded default) or in Redis
(``TRE_RATE_LIMIT_STORAGE_URL``) so every worker process shares them.

A refusal answers 429 with Retry-After and is audited once per client, limit and window (the
first refusal in the window is the event; the requests refused after it in the same window are
that event's repeat, bounded by the window), so a flood cannot flood the audit chain.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from flask import Flask, Response, current_app, g, make_response, request
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from werkzeug.exceptions import TooManyRequests
from werkzeug.middleware.proxy_fix import ProxyFix

# Per client address, on POST (the GET of each page is free). A person signing in uses one of
# each; the account lockout (5 wrong answers) still guards each account on top of these.
ENDPOINT_LIMITS: dict[str, str] = {
    "auth.login": "20 per minute",
    "auth.second_factor": "20 per minute",
    "auth.enrol": "20 per minute",
    "auth.reset": "10 per minute",
    "account.change_password": "10 per minute",
    "account.create_token": "10 per minute",
    "hub.redeem": "60 per minute",
}
# Requests answered 401 (no or a refused credential) from one address, on any route; past it the
# address gets 429 for the rest of the window whatever it sends.
FAILED_AUTHENTICATION_LIMIT = "60 per minute"


def client_address() -> str:
    """The client's address as counted for limits (after ProxyFix, when proxies are trusted)."""
    return request.remote_addr or "unknown"


def init_app(app: Flask) -> Limiter:
    settings = app.extensions["tre.settings"]
    if settings.trusted_proxies > 0:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    app.config["RATELIMIT_ENABLED"] = settings.rate_limits
    storage = settings.rate_limit_storage_url or "memory://"
    # One instance's counters never meet another's in a shared Redis.
    prefix = "tre-" + hashlib.sha256(str(settings.instance_path).encode()).hexdigest()[:12]
    limiter = Limiter(
        key_func=client_address,
        storage_uri=storage,
        key_prefix=prefix,
        headers_enabled=False,  # only a refusal says when to come back (Retry-After)
        # A sliding window: no burst of twice the limit across a window's edge.
        strategy="moving-window",
        application_limits=[FAILED_AUTHENTICATION_LIMIT],
        application_limits_deduct_when=lambda response: response.status_code == 401,
        on_breach=_audit_breach,
    )
    limiter.init_app(app)
    # The answer built by ``_audit_breach`` (with Retry-After), not the generic HTTP error page.
    app.register_error_handler(RateLimitExceeded, lambda error: error.get_response())
    if not settings.rate_limits:
        return limiter
    for endpoint, limit in ENDPOINT_LIMITS.items():
        view = app.view_functions.get(endpoint)
        if view is not None:
            app.view_functions[endpoint] = limiter.limit(limit, methods=["POST"])(view)  # type: ignore[assignment]
    app.extensions["tre.limiter"] = limiter
    return limiter


def _audit_breach(limit: RequestLimit) -> Response:
    """The 429 answer, with Retry-After; audited for the first refusal of each client, limit and window."""
    _audit_first_breach(limit)
    from tre import errors

    response = make_response(errors.handle_http_exception(
        TooManyRequests("Too many attempts from your address. Wait a minute and try again")
    ))
    response.headers["Retry-After"] = str(max(1, int(limit.reset_at - time.time())))
    return response


def _audit_first_breach(limit: RequestLimit) -> None:
    limiter: Limiter = current_app.extensions["tre.limiter"]
    expiry = max(1, limit.limit.get_expiry())
    window = int(time.time()) // expiry * expiry
    marker = f"audited/{limit.key}/{window}"
    try:
        first = limiter.storage.incr(marker, expiry) == 1
    except Exception:  # noqa: BLE001 - a storage fault must not turn a 429 into a 500
        first = True
    if not first:
        return
    from tre.core.audit import DENIED
    from tre.core.db import transaction

    platform: Any = current_app.extensions["tre.platform"]
    with transaction(platform.db.session) as s:
        platform.audit.record(
            s, "auth.rate_limited", actor_id=None, outcome=DENIED,
            target_type="route", target_id=(request.endpoint or request.path)[:64],
            request_id=g.get("request_id"),
            detail={
                "limit": str(limit.limit), "client": client_address()[:64], "method": request.method,
                "window_starts": window, "note": "first refusal of this client and limit in this window",
            },
        )
