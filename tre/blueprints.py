"""Every page blueprint and API blueprint of the app, registered in one place.

Each area adds its line here; ``create_app`` calls ``register_all``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask


def page_blueprints() -> list[Any]:
    from tre.health import bp as health
    from tre.metrics import bp as metrics
    from tre.web import bp as web
    from tre.web.admin import bp as admin
    from tre.web.audit import bp as audit
    from tre.web.auth import bp as auth

    return [web, health, metrics, auth, admin, audit]


def api_blueprints() -> list[Any]:
    from tre.api import identity, meta

    return [meta.blp, identity.blp]


def register_pages(app: Flask) -> None:
    for blueprint in page_blueprints():
        app.register_blueprint(blueprint)
