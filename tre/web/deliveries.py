"""The custodian's pages for a dataset's deliveries: deliver a file from the landing folder, set the
thresholds that fail a delivery, see each delivery's verdict and its quality report (counts only),
with charts drawn on the server (``tre.web.pictures``), each beside the same figures as a table."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from projects import rules
from pseudonymisation import profiling
from pseudonymisation.delivery_checks import public_report
from pseudonymisation.delivery_tasks import deliveries_service
from pseudonymisation.omop_folders import OmopFolders
from tre.access import requires
from tre.authn import platform
from tre.core.permissions import Permission
from tre.web.pictures import delivery_quality_charts
from tre.web.projects import attempt, projects_service

bp = Blueprint("deliveries", __name__, url_prefix="/catalogue")

def _svc() -> Any:
    return deliveries_service(platform(), request_id=g.get("request_id"))


@bp.route("/datasets/<dataset_id>/deliveries", methods=["GET", "POST"])
@requires(Permission.DATASET_MANAGE)
def index(dataset_id: str) -> Any:
    ds, _ = attempt(lambda: projects_service().get_dataset(dataset_id))
    assert ds is not None
    svc = _svc()
    error = None
    if request.method == "POST":
        if request.form.get("action") == "rules":
            try:
                rules = json.loads(request.form.get("rules") or "")
            except ValueError:
                rules, error = None, "Write the rules as a JSON object"
            if rules is not None and not isinstance(rules, dict):
                rules, error = None, "Write the rules as a JSON object"
            if rules is not None:
                done, error = attempt(lambda: svc.set_rules(g.user, ds.id, rules))
                if done is not None:
                    flash("Delivery rules saved", "success")
                    return redirect(url_for("deliveries.index", dataset_id=ds.id))
        elif request.form.get("action") == "table":
            made, error = attempt(lambda: svc.receive_table(g.user, ds.id, request.form.get("database_source", ""),
                                                            request.form.get("table", "")))
            if made is not None:
                flash("Table received; it is being read and checked", "success")
                return redirect(url_for("deliveries.delivery", delivery_id=made.id))
        else:
            made, error = attempt(lambda: svc.receive(g.user, ds.id, request.form.get("source_name", "")))
            if made is not None:
                flash("Delivery received; its check is running", "success")
                return redirect(url_for("deliveries.delivery", delivery_id=made.id))
    deliveries, _ = attempt(lambda: svc.list_deliveries(g.user, ds.id))
    versions, _ = attempt(lambda: svc.versions(g.user, ds.id))
    rules, _ = attempt(lambda: svc.get_rules(g.user, ds.id))
    return render_template(
        "deliveries/index.html", title=f"Deliveries of {ds.title}", dataset=ds, deliveries=deliveries or [],
        versions=versions or [], database_sources=sorted(svc.database_sources),
        rules_text=request.form.get("rules") if error and request.method == "POST"
        else json.dumps(rules.to_dict() if rules else {}, indent=2), error=error,
    ), (422 if error else 200)


@bp.get("/deliveries/<delivery_id>")
@requires(Permission.DATASET_MANAGE)
def delivery(delivery_id: str) -> str:
    found, _ = attempt(lambda: _svc().get_delivery(g.user, delivery_id))
    assert found is not None
    ds, _ = attempt(lambda: projects_service().get_dataset(found.dataset_id))
    report = public_report(found.report) if found.report else None
    return render_template("deliveries/delivery.html", title="Delivery", delivery=found, dataset=ds,
                           report=report, charts=delivery_quality_charts(report) if report else [])


@bp.route("/omop", methods=["GET", "POST"])
@requires(Permission.DATASET_MANAGE)
def omop_folder() -> Any:
    """Register an OMOP CDM folder of the landing folder: name it, review the tables recognised with
    their roles, rules, keys and links (nothing registered yet), then confirm."""
    p = platform()
    svc = OmopFolders(p.db.session, p.audit, request_id=g.get("request_id"), landing_dir=p.settings.landing_dir,
                      identifiable_path=p.settings.identifiable_path)
    folder, prefix = request.form.get("folder", ""), request.form.get("prefix", "")
    found, _ = attempt(lambda: svc.folders_found(g.user))
    found = found or []
    if request.method == "GET" and found:
        # The first OMOP folder found is offered with a prefix made from its name (demo-omop: demo_omop),
        # so the demo's folder is one click from its review; both can be changed before anything is made.
        folder = found[0]
        prefix = re.sub(r"[^a-z0-9_]+", "_", folder.rsplit("/", 1)[-1].lower()).strip("_")
    tables, error = None, None
    if request.method == "POST":
        if request.form.get("action") == "confirm":
            made, error = attempt(lambda: svc.register_folder(g.user, folder, prefix))
            if made is not None:
                flash(f"Registered {len(made)} OMOP tables; their first deliveries are being checked", "success")
                return redirect(url_for("catalogue.index"))
        else:
            tables, error = attempt(lambda: svc.preview_folder(g.user, folder, prefix))
    return render_template("deliveries/omop.html", title="Register an OMOP CDM folder", folder=folder,
                           prefix=prefix, tables=tables, error=error, found=found, role_labels=rules.COLUMN_ROLE_LABELS,
                           rule_labels={str(k): v for k, v in profiling.RULE_LABELS.items()},
                           landing=p.settings.landing_dir is not None), (422 if error else 200)


__all__ = ["bp"]
