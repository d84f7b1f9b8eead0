"""Every route declares who may reach it; a route that declares nothing is refused to everyone.

``public`` marks a page anybody may see (the home page, health checks); ``login_required`` a page
for any signed-in person; ``requires(permission)`` a page for people whose roles grant it. The
check runs before every request, so forgetting a decorator fails closed, and a test walks the
route table to fail the build as well.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, abort, current_app, g, redirect, request, url_for

from tre.core.permissions import Permission, has_permission

F = TypeVar("F", bound=Callable[..., Any])

ATTR = "__tre_access__"
PUBLIC = "public"
LOGIN = "login"
HUB_SERVICE = "service:jupyterhub"

# What an API token of each purpose may reach: the one table the access check asks (ADR 0010). A
# bearer token whose purpose is not here reaches nothing; ``EVERY_API_ROUTE`` still leaves each
# route's own declaration (its permission) to decide. A workspace's ``output-submit`` token may only
# submit (or resubmit) its project's outputs and read their status (the views check the project).
EVERY_API_ROUTE = "every API route its person may use"
TOKEN_PURPOSES: dict[str, frozenset[str] | str] = {
    "api": EVERY_API_ROUTE,  # a person's own short-lived API token (tools and tests)
    "personal": EVERY_API_ROUTE,  # a personal token the person made for their scripts
    "output-submit": frozenset(
        {"outputs_api.submit_from_workspace", "outputs_api.resubmit_from_workspace", "outputs_api.request_status"}
    ),
}


def purpose_allows(purpose: str, endpoint: str) -> bool:
    """May a token with ``purpose`` be used for ``endpoint``? Unknown purposes may not."""
    allowed = TOKEN_PURPOSES.get(purpose)
    if allowed is None:
        return False
    if allowed == EVERY_API_ROUTE:
        return True
    return endpoint in allowed


# Endpoints registered by libraries (static files, the OpenAPI document and its docs page).
LIBRARY_PUBLIC_ENDPOINTS = frozenset(
    {"static", "api-docs.openapi_json", "api-docs.openapi_swagger_ui"}
)


def public(view: F) -> F:
    setattr(view, ATTR, PUBLIC)
    return view


def login_required(view: F) -> F:
    setattr(view, ATTR, LOGIN)
    return view


def hub_service(view: F) -> F:
    """Only JupyterHub, presenting the shared service secret, may call this route."""
    setattr(view, ATTR, HUB_SERVICE)
    return view


def requires(permission: Permission) -> Callable[[F], F]:
    def mark(view: F) -> F:
        setattr(view, ATTR, permission)
        return view

    return mark


def declared_access(app: Flask, endpoint: str) -> str | Permission | None:
    if endpoint in LIBRARY_PUBLIC_ENDPOINTS:
        return PUBLIC
    view = app.view_functions.get(endpoint)
    if view is None:
        return None
    declared = getattr(view, ATTR, None)
    if declared is None and hasattr(view, "view_class"):
        # Class-based views declare on the class.
        declared = getattr(view.view_class, ATTR, None)
    return declared


def enforce_declared_access() -> None:
    """Runs before every request: refuse what is undeclared, unauthenticated or not permitted."""
    endpoint = request.endpoint
    if endpoint is None:
        return  # no route matched: Flask answers 404 itself
    declared = declared_access(current_app, endpoint)
    if declared is None:
        current_app.logger.error("route %s declares no access rule; refused", endpoint)
        _record_denial(endpoint, "route declares no access rule")
        abort(403)
    if declared == PUBLIC:
        return
    if declared == HUB_SERVICE:
        _require_hub_secret(endpoint)
        return
    user = g.get("user")
    if user is None:
        if request.path.startswith("/api/") or request.method != "GET":
            record_authentication_refusal(g.get("auth_refusal") or "no credentials", endpoint)
            abort(401)
        return redirect(url_for("auth.login", next=request.path))  # type: ignore[return-value]
    purpose = g.get("token_purpose")
    if purpose is not None and not purpose_allows(purpose, endpoint):
        _record_denial(endpoint, f"a token for {purpose!r} may not be used here")
        abort(403)
    if declared == LOGIN:
        return
    if not has_permission(user, declared):  # type: ignore[arg-type]
        _record_denial(endpoint, f"missing permission {declared}")
        abort(403)


def _require_hub_secret(endpoint: str) -> None:
    import hmac

    from tre.core.platform import HUB_SERVICE_TOKEN_FILE, read_secret

    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    expected = read_secret(current_app.extensions["tre.settings"], HUB_SERVICE_TOKEN_FILE)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        _record_denial(endpoint, "hub service secret missing or wrong")
        abort(401)


def _record_denial(endpoint: str, reason: str) -> None:
    """Every refusal is evidence: write it to the audit log in its own small transaction."""
    from tre.core.audit import DENIED
    from tre.core.db import transaction

    platform = current_app.extensions["tre.platform"]
    user = g.get("user")
    with transaction(platform.db.session) as s:
        platform.audit.record(
            s, "access.denied", actor_id=user.id if user else None, outcome=DENIED,
            target_type="route", target_id=endpoint[:64], request_id=g.get("request_id"),
            detail={"reason": reason, "method": request.method},
        )


def record_authentication_refusal(reason: str, endpoint: str | None = None) -> None:
    """A request refused because nobody could be authenticated: audited with the reason and the
    client's address, never with the credential presented (ADR 0010)."""
    from tre.core.audit import DENIED
    from tre.core.db import transaction

    platform = current_app.extensions["tre.platform"]
    with transaction(platform.db.session) as s:
        platform.audit.record(
            s, "auth.refused", actor_id=None, outcome=DENIED,
            target_type="route", target_id=(endpoint or request.endpoint or request.path)[:64],
            request_id=g.get("request_id"),
            detail={"reason": reason[:200], "method": request.method, "client": (request.remote_addr or "")[:64]},
        )
