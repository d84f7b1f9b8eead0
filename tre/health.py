"""Liveness and readiness for people and for orchestrators.

``/healthz`` answers while the process can serve a request. ``/readyz`` also checks that the
database answers and the broker accepts a connection; it names which part is down, never how.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from tre.access import public

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@public
def healthz() -> Any:
    return jsonify(status="ok")


def _check_database() -> bool:
    try:
        with current_app.extensions["tre.db"].engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        current_app.logger.warning("readiness: database unreachable", exc_info=True)
        return False


def _check_broker() -> bool:
    celery = current_app.extensions.get("celery")
    if celery is None:
        return False
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        current_app.logger.warning("readiness: broker unreachable", exc_info=True)
        return False


@bp.get("/readyz")
@public
def readyz() -> Any:
    checks = {"database": _check_database(), "broker": _check_broker()}
    ready = all(checks.values())
    response = jsonify(status="ready" if ready else "not ready",
                       checks={k: "ok" if v else "unavailable" for k, v in checks.items()})
    response.status_code = 200 if ready else 503
    return response
