"""The person index pages: custodians start linkage runs and read their quality; linkage officers
review the uncertain band. Views parse, authorise (the route's declaration, then the service's own
check) and call one service."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, flash, g, jsonify, redirect, render_template, request, url_for

from pseudonymisation.linkage_review import LinkageReview
from pseudonymisation.person_index import LinkagePermissionDenied, LinkageServiceError
from pseudonymisation.tasks import person_index_service
from tre.access import requires
from tre.core.jobs import Job
from tre.core.permissions import Permission
from tre.web.pictures import linkage_quality_charts

bp = Blueprint("linkage", __name__, url_prefix="/linkage")


def _review() -> LinkageReview:
    p = current_app.extensions["tre.platform"]
    return LinkageReview(p.db.session, p.audit, p.keys, request_id=g.get("request_id"))


@bp.get("/")
@requires(Permission.LINKAGE_RUN)
def index() -> str:
    p = current_app.extensions["tre.platform"]
    service = person_index_service(p, request_id=g.get("request_id"))
    runs = service.runs(g.user)
    jobs = {r.job_id: p.db.session.get(Job, r.job_id) for r in runs if r.job_id}
    current = service.current_run()
    return render_template("linkage/index.html", title="Person index", runs=runs, jobs=jobs, current=current,
                           sources=[s.dataset.name for s in service.sources()])


@bp.post("/runs")
@requires(Permission.LINKAGE_RUN)
def start() -> Any:
    try:
        person_index_service(current_app.extensions["tre.platform"], request_id=g.get("request_id")).request_run(g.user)
    except LinkageServiceError as exc:
        flash(str(exc), "error")
    else:
        flash("Linkage run queued; this page shows its progress", "success")
    return redirect(url_for("linkage.index"))


@bp.get("/runs/<run_id>")
@requires(Permission.LINKAGE_RUN)
def quality(run_id: str) -> str:
    """A run's linkage quality: match rates per source, estimated precision and recall, and the
    match weight distribution (counts only; no identifier), each as a chart beside its table."""
    service = person_index_service(current_app.extensions["tre.platform"], request_id=g.get("request_id"))
    try:
        run = service.run_quality(g.user, run_id)
    except LinkageServiceError:
        abort(404)
    histogram = (run.quality or {}).get("match_weight_histogram", [])
    most = max((b["pairs"] for b in histogram), default=0)
    charts = {c.id: c for c in linkage_quality_charts(run.quality or {})}
    return render_template("linkage/quality.html", title="Linkage quality", run=run, q=run.quality or {},
                           histogram=histogram, most=most, charts=charts)


@bp.get("/runs/<run_id>/quality.json")
@requires(Permission.LINKAGE_RUN)
def quality_json(run_id: str) -> Any:
    """The same figures as JSON (counts and ratios only), for a custodian's own reports."""
    service = person_index_service(current_app.extensions["tre.platform"], request_id=g.get("request_id"))
    try:
        run = service.run_quality(g.user, run_id)
    except LinkageServiceError:
        abort(404)
    return jsonify({"run_id": run.id, "state": run.state, "settings": run.settings, "quality": run.quality})


@bp.get("/review")
@requires(Permission.LINKAGE_REVIEW)
def review_queue() -> str:
    try:
        run, pending = _review().queue(g.user)
    except LinkagePermissionDenied:
        abort(403)
    return render_template("linkage/review_queue.html", title="Clerical review", run=run, pending=pending)


@bp.get("/review/<candidate_id>")
@requires(Permission.LINKAGE_REVIEW)
def review_pair(candidate_id: str) -> str:
    try:
        pair = _review().view(g.user, candidate_id)
    except LinkagePermissionDenied:
        abort(403)
    except LinkageServiceError:
        abort(404)
    return render_template("linkage/review_pair.html", title="Candidate pair", pair=pair)


@bp.post("/review/<candidate_id>")
@requires(Permission.LINKAGE_REVIEW)
def decide(candidate_id: str) -> Any:
    try:
        _review().decide(g.user, candidate_id, request.form.get("decision", ""), request.form.get("rationale", ""))
    except LinkagePermissionDenied:
        abort(403)
    except LinkageServiceError as exc:
        flash(str(exc), "error")
        return redirect(url_for("linkage.review_queue"))
    flash("Decision recorded; the next linkage run applies it", "success")
    return redirect(url_for("linkage.review_queue"))
