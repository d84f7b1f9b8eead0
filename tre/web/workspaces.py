"""The "Open workspace" button: ask the gate, mint a single-use login token, hand it to the hub.

The token travels in a POST body (never a URL, so never a log line or a browser history entry).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, g, redirect, render_template, url_for

from projects.workspaces import WorkspaceError
from tre.access import login_required
from tre.workspaces import workspaces_service

bp = Blueprint("workspaces", __name__)


@bp.post("/projects/<project_id>/workspace")
@login_required  # the access gate, asked inside, decides who may open this project's workspace
def open_workspace(project_id: str) -> Any:
    try:
        token = workspaces_service().issue_login_token(g.user, project_id)
    except WorkspaceError as exc:
        flash(str(exc), "error")
        return redirect(url_for("projects.show", project_id=project_id))
    hub = current_app.extensions["tre.settings"].jupyterhub_url.rstrip("/")
    response = current_app.make_response(
        render_template("workspaces/handoff.html", title="Opening your workspace", action=f"{hub}/hub/tre-login",
                        token=token)
    )
    # The hub accepts the form only from our origin; "same-origin" would make the browser send
    # "Origin: null" on this cross-origin POST, so this page alone sends its origin (never a path).
    response.headers["Referrer-Policy"] = "strict-origin"
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(hub))
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        f"frame-ancestors 'none'; form-action 'self' {origin}; base-uri 'none'"
    )
    return response
