"""The JSON API under ``/api/v1``, described by an OpenAPI 3 document generated from the code.

flask-smorest builds the document from the schemas and docstrings here; errors use the same
``application/problem+json`` handler as the rest of the app (see ``tre.errors``).
"""

from __future__ import annotations

from typing import NoReturn

from flask import Flask
from flask_smorest import Api
from werkzeug.exceptions import default_exceptions


class TreApi(Api):  # type: ignore[misc]
    def _register_error_handlers(self) -> None:
        # tre.errors handles every HTTPException app-wide, as problem+json under /api/.
        return None


def refuse(exc: Exception, status: int | None = None) -> NoReturn:
    """The one way an API route answers a service's refusal: the status its kind calls for (or
    ``status``), and the service's own message as the problem's ``detail``, never a generic text.
    A refusal that lists what is missing (``problems``) also gives them as ``errors.missing``."""
    error = default_exceptions[status or status_for(exc)](description=str(exc) or None)
    problems = getattr(exc, "problems", None)
    if isinstance(problems, list) and all(isinstance(p, str) for p in problems):
        error.data = {"messages": {"missing": problems}}  # type: ignore[attr-defined]
    raise error


def status_for(exc: Exception) -> int:
    """404 for something that does not exist, 403 for a permission refusal, 422 for a rule's."""
    from disclosure.services import NotFound as NoSuchOutput
    from disclosure.services import OutputPermissionDenied
    from projects.services import NotFound as NoSuchProject
    from projects.services import ProjectPermissionDenied
    from tre.core.identity import PermissionDenied

    if isinstance(exc, NoSuchProject | NoSuchOutput | LookupError):
        return 404
    if isinstance(exc, ProjectPermissionDenied | OutputPermissionDenied | PermissionDenied):
        return 403
    return 422


API_CONFIG = {
    "API_TITLE": "Trusted Research Environment API",
    "API_VERSION": "v1",
    "OPENAPI_VERSION": "3.1.0",
    "OPENAPI_URL_PREFIX": "/api",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    # Served from our own static folder: nothing is fetched from the internet at run time.
    "OPENAPI_SWAGGER_UI_URL": "/static/swagger/",
}


def init_app(app: Flask) -> Api:
    for key, value in API_CONFIG.items():
        app.config.setdefault(key, value)
    api = TreApi(app, spec_kwargs={"info": {"description": "Projects, approvals, extracts and outputs."}})
    api.spec.components.security_scheme(
        "bearer", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    from tre.app import csrf
    from tre.blueprints import api_blueprints

    for blueprint in api_blueprints():
        api.register_blueprint(blueprint, url_prefix="/api/v1")
        # The API authenticates with bearer tokens, never cookies, so CSRF does not apply to it.
        csrf.exempt(blueprint)
    return api
