"""Data custodians watch and start extracts."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, g, redirect, render_template, url_for
from sqlalchemy import select

from projects.models import Project
from projects.rules import ACTIVE
from pseudonymisation.services import ExtractServiceError
from pseudonymisation.tasks import extracts_service
from tre.access import requires
from tre.core.jobs import Job
from tre.core.permissions import Permission

bp = Blueprint("extracts", __name__, url_prefix="/extracts")


@bp.get("/")
@requires(Permission.EXTRACT_MANAGE)
def index() -> str:
    p = current_app.extensions["tre.platform"]
    service = extracts_service(p)
    rows = []
    for project in p.db.session.scalars(select(Project).where(Project.state == ACTIVE).order_by(Project.title)):
        extract = service.latest(project.id)
        job = p.db.session.get(Job, extract.job_id) if extract and extract.job_id else None
        rows.append({"project": project, "extract": extract, "job": job})
    return render_template("extracts/index.html", title="Extracts", rows=rows)


@bp.post("/<project_id>")
@requires(Permission.EXTRACT_MANAGE)
def build(project_id: str) -> Any:
    try:
        extracts_service(current_app.extensions["tre.platform"], request_id=g.get("request_id")).request(g.user, project_id)
    except ExtractServiceError as exc:
        flash(str(exc), "error")
    else:
        flash("Extract queued; this page shows its progress", "success")
    return redirect(url_for("extracts.index"))
