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
    from tre.web.account import bp as account
    from tre.web.admin import bp as admin
    from tre.web.audit import bp as audit
    from tre.web.auth import bp as auth
    from tre.web.catalogue import bp as catalogue
    from tre.web.dac import bp as dac
    from tre.web.deliveries import bp as deliveries
    from tre.web.extracts import bp as extracts
    from tre.web.linkage import bp as linkage
    from tre.web.outputs import bp as outputs
    from tre.web.outputs import prometheus_bp as outputs_metrics
    from tre.web.projects import bp as projects
    from tre.web.sso import bp as sso
    from tre.web.uploads import bp as uploads
    from tre.web.workspaces import bp as workspaces

    return [
        web, health, metrics, auth, admin, audit, projects, dac, catalogue, outputs, outputs_metrics, workspaces,
        extracts, linkage, account, sso, deliveries, uploads,
    ]


def api_blueprints() -> list[Any]:
    from tre.api import datasets as datasets_api
    from tre.api import deliveries as deliveries_api
    from tre.api import extracts as extracts_api
    from tre.api import hub, identity, meta
    from tre.api import outputs as outputs_api
    from tre.api import projects as projects_api

    return [meta.blp, identity.blp, hub.blp, projects_api.blp, outputs_api.blp, extracts_api.blp,
            datasets_api.blp, deliveries_api.blp]


def register_pages(app: Flask) -> None:
    for blueprint in page_blueprints():
        app.register_blueprint(blueprint)
