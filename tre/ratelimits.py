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

import functools
import hashlib
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, g, make_response, request
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from limits import parse
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
    # flask-limiter holds only the endpoint limits (decorators below); the application-wide limit
    # is tested by ``FailedAuthenticationLimit`` through the same strategy and storage (ADR 0056).
    limiter = Limiter(
        key_func=client_address,
        storage_uri=storage,
        key_prefix=prefix,
        headers_enabled=False,  # only a refusal says when to come back (Retry-After)
        # A sliding window: no burst of twice the limit across a window's edge.
        strategy="moving-window",
        on_breach=_audit_breach,
    )
    # The answer built by ``_audit_breach`` (with Retry-After), not the generic HTTP error page.
    app.register_error_handler(RateLimitExceeded, lambda error: error.get_response())
    if not settings.rate_limits:
        limiter.init_app(app)
        return limiter
    limited = FailedAuthenticationLimit(limiter, prefix)
    app.extensions["tre.failed_authentication_limit"] = limited
    app.before_request(limited.check)
    app.after_request(limited.count)
    _init_endpoint_limits(app, limiter)
    app.extensions["tre.limiter"] = limiter
    return limiter


def _init_endpoint_limits(app: Flask, limiter: Limiter) -> None:
    """Wrap each view of ENDPOINT_LIMITS in flask-limiter's decorator for its POST, and let
    flask-limiter's own request hooks run only for a POST to one of those endpoints.

    The decorator tests an endpoint's limits when its view is called. flask-limiter's hooks around
    every request evaluate application, default and blueprint limits, of which this limiter holds
    none; for any other endpoint they would resolve, filter and find nothing on every request."""
    hooks = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    already = [list(funcs.get(None, ())) for funcs in hooks]
    limiter.init_app(app)
    limited_endpoints = frozenset(endpoint for endpoint in ENDPOINT_LIMITS if endpoint in app.view_functions)
    for endpoint in limited_endpoints:
        view = app.view_functions[endpoint]
        limited_view = limiter.limit(ENDPOINT_LIMITS[endpoint], methods=["POST"])(view)
        app.view_functions[endpoint] = _limited_on_post(view, limited_view)
    for funcs, before in zip(hooks, already, strict=True):
        app_funcs = funcs.get(None, [])
        for index, func in enumerate(app_funcs):
            if func not in before:
                app_funcs[index] = _only_for(limited_endpoints, func, funcs is app.after_request_funcs)


def _limited_on_post(view: Callable[..., Any], limited_view: Callable[..., Any]) -> Callable[..., Any]:
    """The view, through flask-limiter's decorator for a POST only (the GET of each page is free, and
    the decorator would only find the GET exempt)."""

    # Named as the view, so flask-limiter finds its decorated limits under the endpoint's own name.
    @functools.wraps(view)
    def view_limited_on_post(*args: Any, **kwargs: Any) -> Any:
        if request.method == "POST":
            return limited_view(*args, **kwargs)
        return view(*args, **kwargs)

    return view_limited_on_post


def _only_for(endpoints: frozenset[str], hook: Callable[..., Any], passes_answer: bool) -> Callable[..., Any]:
    """``hook``, run only for a POST to one of ``endpoints``; for any other request it does nothing
    (an after-request hook, ``passes_answer``, hands the answer on unchanged)."""

    @functools.wraps(hook)
    def only_for_limited_posts(*args: Any) -> Any:
        if request.method == "POST" and request.endpoint in endpoints:
            return hook(*args)
        return args[0] if passes_answer else None

    return only_for_limited_posts


# How long this process trusts an address's last clean test of the failed-authentication limit before
# asking the storage again (ADR 0069). A process forgets an address's clean answer the moment it
# answers that address 401, so past the limit each process lets through at most the one request it
# had already trusted (and that one counts if it fails): the overshoot is bounded by the processes,
# not by the attacker's speed.
CLEAN_FOR_SECONDS = 1.0
# Addresses remembered per process; past this the memory starts again rather than grow.
CLEAN_ADDRESSES_CAP = 4096


class FailedAuthenticationLimit:
    """FAILED_AUTHENTICATION_LIMIT for every route, counted by flask-limiter's own moving-window
    strategy in its storage, under the key flask-limiter gave an application limit: hit when the
    answer is 401, and tested before authentication on every request to a route, unless this
    process found the same address under the limit less than CLEAN_FOR_SECONDS ago and has not
    refused it a credential since (ADR 0069). Each test is one storage command (with Redis, a round
    trip and a script); nearly every request of a signed-in person comes from an address with no
    recent failure, so the per-process memory of clean answers spares most of them.

    As flask-limiter did, a request that reaches no route (404, 405) or a static file is neither
    tested nor counted."""

    def __init__(self, limiter: Limiter, prefix: str) -> None:
        self.extension = limiter
        self.item = parse(FAILED_AUTHENTICATION_LIMIT)  # once per app, not per request
        self.prefix = prefix
        self.clean_until: dict[str, float] = {}  # address -> monotonic time its clean answer ends
        self.clock = time.monotonic  # a test sets its own

    def _identifiers(self) -> list[str] | None:
        endpoint = request.endpoint
        if not endpoint or endpoint.rpartition(".")[2] == "static":
            return None
        return [self.prefix, client_address(), "global"]

    def check(self) -> Response | None:
        identifiers = self._identifiers()
        if identifiers is None:
            return None
        address = identifiers[1]
        now = self.clock()
        if self.clean_until.get(address, 0.0) > now:
            return None
        if self.extension.limiter.test(self.item, *identifiers):
            if len(self.clean_until) >= CLEAN_ADDRESSES_CAP:
                self.clean_until.clear()
            self.clean_until[address] = now + CLEAN_FOR_SECONDS
            return None
        self.clean_until.pop(address, None)
        return _audit_breach(RequestLimit(self.extension, self.item, identifiers, breached=True, shared=True))

    def count(self, response: Response) -> Response:
        if response.status_code == 401:
            identifiers = self._identifiers()
            if identifiers is not None:
                # Forgotten before the hit: the next request from this address asks the storage.
                self.clean_until.pop(identifiers[1], None)
                self.extension.limiter.hit(self.item, *identifiers)
        return response


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
