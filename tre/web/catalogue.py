"""The dataset catalogue: researchers browse descriptions and column lists (never data);
data custodians register datasets with a role for every column."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from projects import rules
from projects.rules import RuleViolation
from tre.access import requires
from tre.core.permissions import Permission
from tre.web.projects import attempt, projects_service

bp = Blueprint("catalogue", __name__, url_prefix="/catalogue")


@bp.get("/")
@requires(Permission.CATALOGUE_BROWSE)
def index() -> str:
    return render_template(
        "catalogue/index.html", title="Datasets", datasets=projects_service().list_datasets()
    )


@bp.get("/datasets/<dataset_id>")
@requires(Permission.CATALOGUE_BROWSE)
def dataset(dataset_id: str) -> str:
    ds, _ = attempt(lambda: projects_service().get_dataset(dataset_id))
    return render_template(
        "catalogue/dataset.html",
        title=ds.title if ds else "Dataset",
        dataset=ds,
        role_labels=rules.COLUMN_ROLE_LABELS,
    )


def parse_columns(text: str) -> list[dict[str, str]]:
    """One column a line: ``name | role | description``.

    The role is direct_identifier, quasi_identifier or attribute.
    """
    columns = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 2:
            raise RuleViolation(f"Line {number}: write the column as name | role | description")
        columns.append({"name": parts[0], "role": parts[1], "description": " | ".join(parts[2:])})
    return columns


@bp.route("/new", methods=["GET", "POST"])
@requires(Permission.DATASET_MANAGE)
def register() -> Any:
    error = None
    form = request.form
    if request.method == "POST":

        def run() -> Any:
            return projects_service().register_dataset(
                g.user,
                name=form.get("name", ""),
                title=form.get("title", ""),
                description=form.get("description", ""),
                source_kind=form.get("source_kind", ""),
                source_location=form.get("source_location", ""),
                sensitivity=form.get("sensitivity", ""),
                columns=parse_columns(form.get("columns", "")),
            )

        ds, error = attempt(run)
        if ds is not None:
            flash("Dataset registered", "success")
            return redirect(url_for("catalogue.dataset", dataset_id=ds.id))
    return render_template(
        "catalogue/new.html",
        title="Register a dataset",
        form=form,
        error=error,
        kinds=rules.SOURCE_KINDS,
        levels=rules.SENSITIVITY_LEVELS,
    ), (400 if error else 200)
