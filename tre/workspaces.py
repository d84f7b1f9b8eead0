"""Wiring for workspaces: builds the projects package's ``Workspaces`` service from the platform,
and stops JupyterHub servers whose person the access gate no longer admits."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from flask import current_app, g

from projects.workspaces import WorkspacePaths, Workspaces
from tre.core.jobs import JobContext, job_handler, periodic
from tre.core.platform import HUB_API_TOKEN_FILE, read_secret

log = logging.getLogger(__name__)
ENFORCE_JOB = "workspaces.enforce_gate"


def paths_for(settings: Any) -> WorkspacePaths:
    return WorkspacePaths(settings.extracts_path, settings.workspaces_path)


def workspaces_service(platform: Any = None, request_id: str | None = None, session: Any = None) -> Workspaces:
    p = platform or current_app.extensions["tre.platform"]
    return Workspaces(
        session or p.db.session, p.audit, p.tokens, paths_for(p.settings), p.settings.public_url,
        request_id=request_id if request_id is not None else g.get("request_id"),
    )


def stop_hub_server(hub_url: str, api_token: str, username: str, server: str) -> bool:
    """Ask the hub to stop a named server; True when it is stopped or was not running."""
    url = f"{hub_url.rstrip('/')}/hub/api/users/{username}/servers/{server}"
    request = urllib.request.Request(url, method="DELETE", headers={"Authorization": f"token {api_token}"})  # noqa: S310
    try:
        # Bandit B310: the URL is the hub's, from the control plane's own settings
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  # nosec B310
            return response.status in (202, 204)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return True  # no such server (already gone)
        log.warning("hub refused to stop a server: HTTP %s %s", exc.code, json.dumps(exc.reason)[:100])
        return False
    except OSError as exc:
        log.warning("hub unreachable while stopping a server: %s", type(exc).__name__)
        return False


@job_handler(ENFORCE_JOB, queue="default")
def enforce_gate(ctx: JobContext) -> dict[str, int]:
    """Stop, within a minute, every running workspace whose person the gate no longer admits."""
    p = current_app.extensions["tre.platform"]
    # The job's own session: on SQLite a second session in this thread would wait on the first's lock.
    service = workspaces_service(p, request_id=None, session=ctx.session)
    stale = service.workspaces_to_stop()
    token = read_secret(p.settings, HUB_API_TOKEN_FILE)
    stopped = 0
    for ws in stale:
        if stop_hub_server(p.settings.jupyterhub_api_url, token, ws.hub_username, ws.server_name):
            service.record_stopped(ws.id, "the access gate closed")
            stopped += 1
    return {"stale": len(stale), "stopped": stopped}


periodic(ENFORCE_JOB, 30)
