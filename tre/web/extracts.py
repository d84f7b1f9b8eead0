"""Data custodians watch and start extracts, read their manifests, and load opt-out lists."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for
from sqlalchemy import select

from projects.models import Dataset, Project
from projects.rules import ACTIVE
from pseudonymisation.optout_lists import OptOutError, OptOutLists
from pseudonymisation.services import ExtractServiceError
from pseudonymisation.tasks import extracts_service
from tre.access import requires
from tre.core.db import utcnow
from tre.core.identity import User
from tre.core.jobs import Job
from tre.core.permissions import Permission
from tre.web.pictures import extract_progress, extract_progress_chart

bp = Blueprint("extracts", __name__, url_prefix="/extracts")


@bp.get("/")
@requires(Permission.EXTRACT_MANAGE)
def index() -> str:
    p = current_app.extensions["tre.platform"]
    service = extracts_service(p)
    rows = []
    now = utcnow()
    for project in p.db.session.scalars(select(Project).where(Project.state == ACTIVE).order_by(Project.title)):
        extract = service.latest(project.id)
        job = p.db.session.get(Job, extract.job_id) if extract and extract.job_id else None
        chart = None
        if extract is not None and job is not None and extract.state in ("queued", "running"):
            estimate = extract_progress(job.progress, job.progress_message, job.started_at, now)
            chart = extract_progress_chart(estimate, id=f"progress-{project.id}", title=f"Extract of {project.title}")
        rows.append({"project": project, "extract": extract, "job": job, "chart": chart})
    return render_template("extracts/index.html", title="Extracts", rows=rows)


@bp.post("/<project_id>")
@requires(Permission.EXTRACT_MANAGE)
def build(project_id: str) -> Any:
    try:
        service = extracts_service(current_app.extensions["tre.platform"], request_id=g.get("request_id"))
        service.request(g.user, project_id)
    except ExtractServiceError as exc:
        flash(str(exc), "error")
    else:
        flash("Extract queued; this page shows its progress", "success")
    return redirect(url_for("extracts.index"))


@bp.get("/<project_id>/manifest")
@requires(Permission.EXTRACT_MANAGE)
def manifest(project_id: str) -> Any:
    """The latest extract's manifest: rows in and out, and which opt-out lists it applied or skipped."""
    p = current_app.extensions["tre.platform"]
    project = p.db.session.get(Project, project_id)
    if project is None:
        abort(404)
    extract = extracts_service(p).latest(project_id)
    return render_template("extracts/manifest.html", title="Extract manifest", project=project, extract=extract)


# --- opt-out lists (data custodians) -------------------------------------------------------------------


def _optout_lists() -> OptOutLists:
    p = current_app.extensions["tre.platform"]
    return OptOutLists(p.db.session, p.audit, p.files, request_id=g.get("request_id"))


def _render_optouts(error: str | None = None, form: Any = None) -> tuple[str, int]:
    p = current_app.extensions["tre.platform"]
    datasets = {d.id: d for d in p.db.session.scalars(select(Dataset).order_by(Dataset.title))}
    return render_template(
        "extracts/optouts.html",
        title="Opt-out lists",
        lists=_optout_lists().current(),
        datasets=datasets,
        error=error,
        form=form or {},
    ), (400 if error else 200)


@bp.get("/optouts")
@requires(Permission.OPTOUT_MANAGE)
def optouts() -> Any:
    return _render_optouts()


@bp.post("/optouts")
@requires(Permission.OPTOUT_MANAGE)
def load_optout_list() -> Any:
    """Load a new version of a list from an uploaded file or pasted numbers; refused whole on any bad line."""
    form = request.form
    upload = request.files.get("file")
    content: str | bytes = upload.read() if upload is not None and upload.filename else form.get("numbers", "")
    try:
        version = _optout_lists().load(
            g.user,
            form.get("name", ""),
            content,
            dataset=form.get("dataset") or None,
            description=form.get("description", ""),
        )
    except OptOutError as exc:
        # Keep what was typed except the numbers: the page never echoes them.
        return _render_optouts(str(exc), {k: v for k, v in form.items() if k != "numbers"})
    flash(f"Loaded {version.name} version {version.version}: {version.number_count:,} NHS numbers", "success")
    return redirect(url_for("extracts.optout_history", name=version.name))


@bp.get("/optouts/<name>")
@requires(Permission.OPTOUT_MANAGE)
def optout_history(name: str) -> Any:
    history = _optout_lists().history(name)
    if not history:
        abort(404)
    p = current_app.extensions["tre.platform"]
    people = {u.id: u for u in p.db.session.scalars(select(User).where(User.id.in_({v.loaded_by for v in history})))}
    dataset = p.db.session.get(Dataset, history[0].dataset_id) if history[0].dataset_id else None
    return render_template(
        "extracts/optout_history.html",
        title=f"Opt-out list {name}",
        name=name,
        history=history,
        people=people,
        dataset=dataset,
    )
