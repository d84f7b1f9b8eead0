"""The Flask application factory: wires the kernel, the domain packages and the edges together."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, current_app, g, request, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect

from tre import access, errors
from tre.authn import load_current_user
from tre.core.config import Settings
from tre.core.db import Database
from tre.core.filemodes import ensure_private_folder
from tre.core.logs import request_id_var

csrf = CSRFProtect()

SERVICE_NAME = "Trusted Research Environment"
SESSION_COOKIE = "tre_session"
# Browsers keep a __Host- cookie only if it is Secure, has Path=/ and no Domain, so it can be set
# by this host alone; over plain HTTP (the embedded `make run` on 127.0.0.1) they would drop it.
SECURE_SESSION_COOKIE = "__Host-" + SESSION_COOKIE
HSTS = "max-age=31536000; includeSubDomains"


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the signer built once per key instead of on every request.

    Flask builds a serializer (and its signer, with the key derivation settings) to open and to save
    every request's session, a cookie or not: a few microseconds of every answer, for an object that
    depends only on the app's secret key. It is rebuilt whenever the key (or its fallbacks) is not
    the one it was built for, so a changed key counts from the next request. Nothing about a session
    or a person is kept: each cookie is still verified, and who it belongs to read, per request.
    """

    # (the key and its fallbacks, the serializer built for them), replaced as one pair so that a thread
    # never pairs one key with another key's serializer; the serializer is itsdangerous's, as Flask builds it
    _built: tuple[tuple[Any, Any], Any] | None = None

    def get_signing_serializer(self, app: Flask) -> Any:
        key = (app.secret_key, tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        built = self._built
        if built is None or built[0] != key:
            built = self._built = (key, super().get_signing_serializer(app))
        return built[1]


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app. ``test_config`` may hold ``TRE_SETTINGS`` overrides and plain Flask config."""
    test_config = dict(test_config or {})
    overrides = test_config.pop("TRE_SETTINGS", {})
    settings = Settings.from_env(**overrides)
    # The instance folder is the service's alone (its entry points also set umask 077, see
    # tre/core/filemodes.py): workspaces reach their extract through the hub, never through it.
    ensure_private_folder(settings.instance_path, "instance folder")

    app = Flask(
        __name__,
        instance_path=str(settings.instance_path),
        static_folder=str(Path(__file__).parent / "web" / "static"),
        static_url_path="/static",
    )
    app.config.update(
        SECRET_KEY=_secret_key(settings.instance_path),
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure,
        SESSION_COOKIE_NAME=SECURE_SESSION_COOKIE if settings.session_cookie_secure else SESSION_COOKIE,
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_DOMAIN=None,
        # The cookie outlives no session: tre/authn.py ends a session at this age in any case.
        PERMANENT_SESSION_LIFETIME=settings.session_max_hours * 3600,
        # Write the cookie only when the session changed (tre/authn.py moves "seen" once a minute at
        # most), not on every request: signing it was a tenth of a simple page's CPU.
        SESSION_REFRESH_EACH_REQUEST=False,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        JSON_SORT_KEYS=False,
    )
    app.config.update(test_config)
    app.extensions["tre.settings"] = settings
    app.session_interface = SessionInterface()

    _configure_logging(app, settings)

    db = Database(settings.database_url, pool_size=settings.database_pool_size)
    app.extensions["tre.db"] = db
    app.teardown_appcontext(db.remove)

    _import_models()

    from tre.core.platform import build_platform, initialise_keys

    initialise_keys(settings)
    platform = build_platform(settings, db)
    app.extensions["tre.platform"] = platform

    from tre.core.queue import make_celery

    app.extensions["celery"] = make_celery(app)

    csrf.init_app(app)
    errors.init_app(app)

    from tre import api as api_package
    from tre.blueprints import register_pages

    register_pages(app)
    api_package.init_app(app)

    from tre import metrics

    metrics.init_app(app)
    app.before_request(_begin_request)
    # Limits are counted before anyone is authenticated, so a flood of bad credentials stops here.
    from tre import authn, ratelimits

    ratelimits.init_app(app)
    authn.init_app(app)
    app.before_request(load_current_user)
    app.before_request(access.enforce_declared_access)
    https = settings.public_url.startswith("https://")
    app.extensions["tre.security_headers"] = {
        inline: security_header_defaults(https, inline_scripts=inline) for inline in (False, True)
    }
    app.after_request(_security_headers)
    app.context_processor(_template_context)
    app.extensions["tre.fixed_urls"] = {}
    app.jinja_env.globals["fixed_url"] = fixed_url
    return app


def compile_templates(app: Flask) -> int:
    """Load (compile) every HTML template into the app's template cache; returns how many."""
    env = app.jinja_env
    names = [name for name in env.list_templates() if name.endswith(".html")]
    for name in names:
        env.get_template(name)
    return len(names)


def _import_models() -> None:
    """Import every module that defines tables so the metadata is whole (for Alembic and tests)."""
    import tre.models  # noqa: F401


def _secret_key(instance: Path) -> str:
    """The session-signing key lives in the instance folder, created once with owner-only access."""
    path = instance / "session-secret"
    if not path.exists():
        fd = path.open("x", encoding="utf-8")
        path.chmod(0o600)
        with fd:
            fd.write(secrets.token_urlsafe(48))
    return path.read_text(encoding="utf-8").strip()


def _configure_logging(app: Flask, settings: Settings) -> None:
    from tre.core import logs

    logs.configure(settings.log_level, settings.log_format)
    app.logger.setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))


def _begin_request() -> None:
    incoming = request.headers.get("X-Request-Id", "")
    # Accept a caller's id only if it is short and plain, so it cannot smuggle anything into logs.
    # Otherwise 32 random hex digits, as uuid4().hex gave, without building a UUID object.
    g.request_id = incoming if incoming.isalnum() and len(incoming) <= 64 else os.urandom(16).hex()
    request_id_var.set(g.request_id)


# The API docs page (from flask-smorest) starts Swagger UI with an inline script; nothing else may.
SWAGGER_UI_ENDPOINT = "api-docs.openapi_swagger_ui"


def _content_security_policy(inline_scripts: bool) -> str:
    inline = " 'unsafe-inline'" if inline_scripts else ""
    return (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        f"script-src 'self'{inline}; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )


def security_header_defaults(https: bool, inline_scripts: bool) -> tuple[tuple[str, str, str], ...]:
    """The headers every answer gets unless its view set them: (lower-case name, name, value), in order."""
    headers = [
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "same-origin"),
        ("Content-Security-Policy", _content_security_policy(inline_scripts)),
        ("Cache-Control", "no-store"),
    ]
    if https:
        # Served over HTTPS: browsers must never come back over plain HTTP, for a year.
        headers.append(("Strict-Transport-Security", HSTS))
    return tuple((name.lower(), name, value) for name, value in headers)


def _security_headers(response: Any) -> Any:
    """Add each default header the view did not set, keeping the view's own.

    The values depend only on the settings, so they are built once per app (``create_app``); the
    answer's header names are read once, instead of three scans (and a KeyError) per header that
    Werkzeug's ``setdefault`` makes.
    """
    defaults = current_app.extensions["tre.security_headers"][request.endpoint == SWAGGER_UI_ENDPOINT]
    headers = response.headers
    present = {name.lower() for name, _ in headers}
    for lower, name, value in defaults:
        if lower not in present:
            headers.add(name, value)
    if g.get("request_id"):
        headers["X-Request-Id"] = g.request_id
    return response


def fixed_url(endpoint: str, filename: str | None = None) -> str:
    """``url_for`` for a URL that takes no arguments (or a static file), built once per mount point.

    Every page's header, menu and footer carry about twenty such links, and building each through the
    URL map was a few per cent of a page's CPU. They depend only on the URL rules (fixed when the app
    is made) and on the prefix the app is mounted under, which is part of the key.
    """
    cache: dict[tuple[str, str, str | None], str] = current_app.extensions["tre.fixed_urls"]
    key = (request.script_root, endpoint, filename)
    url = cache.get(key)
    if url is None:
        url = url_for(endpoint, filename=filename) if filename is not None else url_for(endpoint)
        cache[key] = url
    return url


def _link(endpoint: str, fallback: str = "web.about") -> str:
    from flask import current_app

    return fixed_url(endpoint if endpoint in current_app.view_functions else fallback)


def _nav_for(user: Any) -> list[tuple[str, str]]:
    """The header menu: one entry for each area the person's roles open, nothing else."""
    from flask import current_app

    from tre.core.permissions import Permission, has_permission

    if user is None:
        return []
    entries = [
        (Permission.PROJECT_VIEW_OWN, "My projects", "projects.index"),
        (Permission.OUTPUT_SUBMIT, "My outputs", "outputs.index"),
        (Permission.CATALOGUE_BROWSE, "Datasets", "catalogue.index"),
        (Permission.APPLICATION_REVIEW, "Applications", "dac.queue"),
        (Permission.OUTPUT_REVIEW, "Output checking", "outputs.queue"),
        (Permission.EXTRACT_MANAGE, "Extracts", "extracts.index"),
        (Permission.USER_MANAGE, "People", "admin.users"),
        (Permission.TRAINING_MANAGE, "Training", "projects.training"),
        (Permission.AGREEMENT_MANAGE, "Agreement", "projects.agreements"),
        (Permission.AUDIT_VIEW, "Audit log", "audit.search"),
    ]
    items = [
        (label, fixed_url(endpoint))
        for permission, label, endpoint in entries
        if has_permission(user, permission) and endpoint in current_app.view_functions
    ]
    if "projects.messages" in current_app.view_functions:
        items.append(("My messages", fixed_url("projects.messages")))
    return items


def _template_context() -> dict[str, Any]:
    from flask import current_app

    return {
        "service_name": SERVICE_NAME,
        "current_user": g.get("user"),
        "endpoints": current_app.view_functions.keys(),
        "nav_for": _nav_for,
        "links": {
            "researcher": _link("projects.index"),
            "committee": _link("dac.queue"),
            "checker": _link("outputs.queue"),
        },
    }
