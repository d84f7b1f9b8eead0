"""The dataset catalogue: researchers browse descriptions and column lists (never data);
data custodians register datasets with a role for every column, then confirm the schema proposed
from the source and set its extract schema (what each column becomes in an extract)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from projects import rules
from projects.rules import RuleViolation
from pseudonymisation import profiling
from pseudonymisation.dataset_schemas import DatasetSchemas, may_set_schema
from pseudonymisation.schema import DatasetSchema, Role
from tre.access import requires
from tre.authn import platform
from tre.core.permissions import Permission
from tre.web.projects import attempt, projects_service

bp = Blueprint("catalogue", __name__, url_prefix="/catalogue")


@bp.get("/")
@requires(Permission.CATALOGUE_BROWSE)
def index() -> str:
    return render_template(
        "catalogue/index.html", title="Datasets", datasets=projects_service().catalogue_cards()
    )


@bp.get("/datasets/<dataset_id>")
@requires(Permission.CATALOGUE_BROWSE)
def dataset(dataset_id: str) -> str:
    found, _ = attempt(lambda: projects_service().dataset_entry(dataset_id))
    ds, columns = found if found else (None, [])
    return render_template(
        "catalogue/dataset.html",
        title=ds.title if ds else "Dataset",
        dataset=ds,
        columns=columns,
        role_labels=rules.COLUMN_ROLE_LABELS,
        may_set_schema=ds is not None and may_set_schema(g.user, ds),
        schema_problem=DatasetSchema.problem_of(ds.schema_spec) if ds is not None else None,
    )


def schema_service() -> DatasetSchemas:
    p = platform()
    return DatasetSchemas(p.db.session, p.audit, request_id=g.get("request_id"), keys=p.keys)


def _choices_from_form(names: list[str]) -> dict[str, dict[str, str]]:
    return {
        n: {"role": request.form.get(f"role__{n}", ""), "rule": request.form.get(f"rule__{n}", "")} for n in names
    }


def _current_choices(ds: Any, proposal: Any) -> tuple[dict[str, dict[str, str]], str | None]:
    """The confirmed schema if there is one, else the proposal, else the registered roles."""
    if ds.schema_spec:
        spec = ds.schema_spec
        by_name = {c["name"]: c for c in spec.get("columns", [])}
        chosen = {
            n: {"role": by_name[n]["role"], "rule": (by_name[n].get("transform") or {}).get("kind", "keep")}
            for n in ds.column_names if n in by_name
        }
        return chosen, spec.get("nhs_number_column")
    proposed = {c.name: {"role": str(c.role), "rule": str(c.rule)} for c in proposal.columns} if proposal else {}
    chosen = {n: proposed.get(n, {"role": c.role, "rule": "drop"}) for n, c in zip(ds.column_names, ds.columns,
                                                                                   strict=True)}
    return chosen, proposal.nhs_number_column if proposal else None


@bp.route("/datasets/<dataset_id>/schema", methods=["GET", "POST"])
@requires(Permission.DATASET_MANAGE)
def schema(dataset_id: str) -> Any:
    """The custodian's page: the proposal read from the source, the roles and rules to confirm, and a
    preview of a few transformed rows (tokens and bands, never identifiers)."""
    ds, _ = attempt(lambda: projects_service().get_dataset(dataset_id))
    assert ds is not None
    svc = schema_service()
    proposal, error = attempt(lambda: svc.propose(g.user, ds.id))
    choices, nhs = _current_choices(ds, proposal)
    shown = None
    if request.method == "POST":
        choices = _choices_from_form(ds.column_names)
        nhs = request.form.get("nhs_number_column") or None
        if request.form.get("action") == "confirm":
            types = {c.name: c.data_type for c in proposal.columns} if proposal else None
            done, error = attempt(lambda: svc.confirm(
                g.user, ds.id, choices, nhs, row_count=proposal.row_count if proposal else None, data_types=types
            ))
            if done is not None:
                flash("Extract schema confirmed", "success")
                return redirect(url_for("catalogue.dataset", dataset_id=ds.id))
        else:
            shown, error = attempt(lambda: svc.preview(g.user, ds.id, choices, nhs))
    return render_template(
        "catalogue/schema.html",
        title=f"Schema of {ds.title}",
        dataset=ds,
        proposal={c.name: c for c in proposal.columns} if proposal else {},
        summary=proposal,
        choices=choices,
        nhs_number_column=nhs,
        preview=shown,
        error=error,
        schema_problem=DatasetSchema.problem_of(ds.schema_spec),
        roles=[r.value for r in Role],
        role_labels=rules.COLUMN_ROLE_LABELS,
        rules=[str(r) for r in profiling.RULES],
        rule_labels={str(k): v for k, v in profiling.RULE_LABELS.items()},
    ), (422 if error and request.method == "POST" else 200)


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
