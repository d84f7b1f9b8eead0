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
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, make_response, request
from limits import RateLimitItem, parse
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
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
FAILED_AUTHENTICATION = "failed-authentication"  # the name its counter and its audit event carry


def client_address() -> str:
    """The client's address as counted for limits (after ProxyFix, when proxies are trusted)."""
    return request.remote_addr or "unknown"


@dataclass(frozen=True)
class Limits:
    """The counters of one instance, over the ``limits`` library's moving windows.

    Every request asks one question (has this address used up its failed authentications?) and a
    POST to a limited endpoint one more. flask-limiter asked the same of the same storage, but its
    per-request resolution of which limits apply (parsing, filtering, scoping) cost more CPU than a
    page's database read; the limits are fixed at start, so they are parsed once here.
    """

    storage: Storage
    window: MovingWindowRateLimiter
    prefix: str  # one instance's counters never meet another's in a shared Redis
    failed: RateLimitItem
    endpoints: dict[str, RateLimitItem]

    def _ids(self, name: str) -> tuple[str, str, str]:
        return (self.prefix, name, client_address())

    def check(self) -> Response | None:
        """Before anyone is authenticated: a 429 for an address past a limit, else None."""
        if not self.window.test(self.failed, *self._ids(FAILED_AUTHENTICATION)):
            return self._refuse(FAILED_AUTHENTICATION, self.failed)
        endpoint = request.endpoint
        if request.method == "POST" and endpoint in self.endpoints:
            item = self.endpoints[endpoint]
            if not self.window.hit(item, *self._ids(endpoint)):
                return self._refuse(endpoint, item)
        return None

    def count_failure(self, response: Response) -> Response:
        if response.status_code == 401:
            self.window.hit(self.failed, *self._ids(FAILED_AUTHENTICATION))
        return response

    def _refuse(self, name: str, item: RateLimitItem) -> Response:
        """The 429 answer, with Retry-After; audited for the first refusal of each client, limit and window."""
        _audit_first_breach(self, name, item)
        from tre import errors

        response = make_response(errors.handle_http_exception(
            TooManyRequests("Too many attempts from your address. Wait a minute and try again")
        ))
        reset_at = self.window.get_window_stats(item, *self._ids(name)).reset_time
        response.headers["Retry-After"] = str(max(1, int(reset_at - time.time())))
        return response


def init_app(app: Flask) -> Limits | None:
    settings = app.extensions["tre.settings"]
    if settings.trusted_proxies > 0:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    if not settings.rate_limits:
        return None
    storage = storage_from_string(settings.rate_limit_storage_url or "memory://")
    limits = Limits(
        storage=storage,
        # A sliding window: no burst of twice the limit across a window's edge.
        window=MovingWindowRateLimiter(storage),
        prefix="tre-" + hashlib.sha256(str(settings.instance_path).encode()).hexdigest()[:12],
        failed=parse(FAILED_AUTHENTICATION_LIMIT),
        endpoints={endpoint: parse(limit) for endpoint, limit in ENDPOINT_LIMITS.items()},
    )
    app.extensions["tre.limits"] = limits
    # Registered before who-is-asking (tre/app.py), so a flood of bad credentials stops here.
    app.before_request(limits.check)
    app.after_request(limits.count_failure)
    return limits


def _audit_first_breach(limits: Limits, name: str, item: RateLimitItem) -> None:
    expiry = max(1, item.get_expiry())
    window = int(time.time()) // expiry * expiry
    marker = f"{limits.prefix}/audited/{name}/{client_address()}/{window}"
    try:
        first = limits.storage.incr(marker, expiry) == 1
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
                "limit": str(item), "client": client_address()[:64], "method": request.method,
                "window_starts": window, "note": "first refusal of this client and limit in this window",
            },
        )
