"""Researchers' pages: my projects, the application wizard, the project page, agreement signing,
extension requests, and my messages; plus the administrators' training and agreement pages.

Views parse the form, call one service method and show its result or its (safe) error message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from sqlalchemy import bindparam, func, select

from projects import permissions as perm
from projects import rules
from projects.gate import team_access_with_facts
from projects.models import (
    AgreementTemplate,
    ApplicationVersion,
    Dataset,
    ExtensionRequest,
    Project,
    TrainingRecord,
)
from projects.rules import ProjectPolicy, RuleViolation
from projects.services import (
    IncompleteApplication,
    NotFound,
    ProjectPermissionDenied,
    Projects,
    approved_columns,
)
from tre.access import login_required, requires
from tre.authn import platform
from tre.core.db import utcnow
from tre.core.identity import User
from tre.core.notifications import OutboxMessage
from tre.core.permissions import Permission
from tre.web import textdiff
from tre.web.confirm import Confirmation, render_confirmation

bp = Blueprint("projects", __name__, url_prefix="/projects")

T = TypeVar("T")


def projects_service() -> Projects:
    p = platform()
    return Projects(p.db.session, p.audit, ProjectPolicy.from_settings(p.settings), request_id=g.get("request_id"))


def attempt(fn: Callable[[], T]) -> tuple[T | None, str | list[str] | None]:
    """Run a service call; a missing thing is a 404, a refusal a 403, a rule's message is returned."""
    try:
        return fn(), None
    except NotFound:
        abort(404)
    except ProjectPermissionDenied:
        abort(403)
    except IncompleteApplication as exc:
        return None, exc.problems
    except RuleViolation as exc:
        return None, str(exc)


def parse_date(value: str | None) -> dt.date | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise RuleViolation("Enter dates in the format 2026-04-30") from None


def _project_for_view(project_id: str) -> Project:
    project, _ = attempt(lambda: projects_service().get_project(g.user, project_id))
    assert project is not None
    return project


_NAMES = select(User.id, User.display_name).where(User.id.in_(bindparam("ids", expanding=True)))
# What the project page says of the application's versions (how many were submitted), of an extension
# waiting for the chair (the end date asked for) and the current agreement (its id, version and content
# hash: the team's gate answers stand on it and the page names its version), in one statement.
def _latest_agreement(column: Any) -> Any:
    return select(column).order_by(AgreementTemplate.version.desc()).limit(1).scalar_subquery()


_VERSIONS_AND_EXTENSION = select(
    select(func.count())
    .select_from(ApplicationVersion)
    .where(ApplicationVersion.project_id == bindparam("id"))
    .scalar_subquery()
    .label("versions_submitted"),
    select(ExtensionRequest.requested_end_date)
    .where(ExtensionRequest.project_id == bindparam("id"), ExtensionRequest.decided_at.is_(None))
    .limit(1)
    .scalar_subquery()
    .label("extension_until"),
    _latest_agreement(AgreementTemplate.id).label("agreement_id"),
    _latest_agreement(AgreementTemplate.version).label("agreement_version"),
    _latest_agreement(AgreementTemplate.content_hash).label("agreement_hash"),
)


@dataclass(frozen=True)
class _Agreement:
    """What the project page uses of the current agreement: the gate's id and hash, and the version shown."""

    id: str
    version: int
    content_hash: str


_EXEMPTABLE_STATES = (rules.IN_REVIEW, rules.APPROVED, rules.ACTIVE, rules.SUSPENDED)  # the exemption form's


def _people(ids: list[str]) -> dict[str, Any]:
    """Each person's name by id (rows with ``display_name``): pages show names, so the accounts and
    their roles are not loaded."""
    if not ids:
        return {}
    return {row.id: row for row in platform().db.session.execute(_NAMES, {"ids": sorted(set(ids))})}


@bp.get("/")
@requires(Permission.PROJECT_VIEW_OWN)
def index() -> str:
    svc = projects_service()
    return render_template(
        "projects/index.html",
        title="My projects",
        projects=svc.project_rows_of(g.user.id),
        labels=rules.STATE_LABELS,
    )


@bp.route("/new", methods=["GET", "POST"])
@requires(Permission.PROJECT_APPLY)
def new() -> Any:
    error = None
    if request.method == "POST":
        project, error = attempt(lambda: projects_service().create_project(g.user, request.form.get("title", "")))
        if project is not None:
            flash("Draft saved. Fill in each section, then submit it to the committee.", "success")
            return redirect(url_for("projects.edit", project_id=project.id))
    return render_template("projects/new.html", title="Start an application", error=error), (400 if error else 200)


def _team_status(
    svc: Projects, project: Project, template: Any, people: dict[str, Any]
) -> list[dict[str, Any]]:
    # The gate's own facts say who signed the current version and whose training runs until when:
    # one set of reads for the team, shown beside the gate's answer they produced.
    ids = [m.user_id for m in project.active_members]
    answers = team_access_with_facts(svc.session, project.id, ids, svc.policy.training_course, template=template)
    return [
        {
            "member": m,
            "person": people.get(m.user_id),
            "signed": answers[m.user_id][0].current_agreement_signed,
            "training": answers[m.user_id][0].training_expires_on,
            "access": answers[m.user_id][1],
        }
        for m in project.active_members
    ]


@bp.get("/<project_id>")
@login_required
def show(project_id: str) -> str:
    return _render_show(project_id)


def _render_show(project_id: str, error: str | list[str] | None = None) -> str:
    svc = projects_service()
    project = _project_for_view(project_id)
    member = any(m.user_id == g.user.id for m in project.active_members)
    is_pi = project.pi_id == g.user.id
    # The answers as they stand, and what each requested column becomes, are shown to the PI of an
    # application still being written only: nobody else reads the dataset requests they come from.
    checking = is_pi and project.state in rules.EDITABLE_STATES
    decisions = svc.decisions(project)
    facts = svc.session.execute(_VERSIONS_AND_EXTENSION, {"id": project.id}).one()
    agreement = (
        _Agreement(facts.agreement_id, facts.agreement_version, facts.agreement_hash)
        if facts.agreement_id is not None
        else None
    )
    people = _people([m.user_id for m in project.active_members])
    team = _team_status(svc, project, agreement, people)
    versions_submitted, extension_until = facts.versions_submitted, facts.extension_until
    return render_template(
        "projects/show.html",
        title=project.title,
        project=project,
        labels=rules.STATE_LABELS,
        error=error,
        is_pi=is_pi,
        is_member=member,
        # A committee member who reached the project page is pointed to where the committee acts on it.
        committee_review=(
            perm.can_review(g.user) and not member and not is_pi and project.state in rules.UNDER_REVIEW_STATES
        ),
        editable=project.state in rules.EDITABLE_STATES,
        missing=(
            [
                (field_anchor(f), m)
                for f, m in rules.submission_problems(svc.application_snapshot(project), utcnow().date())
            ]
            if checking
            else []
        ),
        role_labels=rules.COLUMN_ROLE_LABELS,
        becomes=column_outcomes(r.dataset for r in project.dataset_requests) if checking else {},
        people=people,
        decisions=decisions,
        approved=approved_columns(svc.session, project.id),
        team=team,
        can_remove_members=perm.is_pi(g.user, project) or perm.can_govern(g.user),
        # The viewer's own line of the team's answers: the same gate, not asked twice.
        my_access=next((row["access"] for row in team if row["member"].user_id == g.user.id), None),
        agreement=agreement,
        extension_until=extension_until,
        versions_submitted=versions_submitted,
        today=dt.date.today(),
        optout_exemptions=svc.optout_exemptions(project),
        # The lists in force are offered only on the form that exempts a project from one.
        optout_list_names=_optout_list_names()
        if g.user.has(Permission.OPTOUT_EXEMPT) and project.state in _EXEMPTABLE_STATES
        else [],
        privacy=_privacy_budget(project.id)
        if member or is_pi or g.user.has(Permission.APPLICATION_DECIDE)
        else None,
    )


def column_outcomes(datasets: Any) -> dict[str, dict[str, str]]:
    """What each column becomes in a project's extract, in words, per dataset id: the rule of the
    extract schema its custodian confirmed (a token, an age band, a district...), or that the schema is
    not confirmed yet (the extract service refuses such a dataset)."""
    from pseudonymisation.profiling import RULE_LABELS
    from pseudonymisation.schema import DatasetSchema, SchemaError

    out: dict[str, dict[str, str]] = {}
    for ds in datasets:
        if not ds.schema_spec:
            unconfirmed = "not known yet: the custodian has not confirmed the extract schema"
            out[ds.id] = {c.name: unconfirmed for c in ds.columns}
            continue
        try:
            schema = DatasetSchema.from_dict(ds.schema_spec)
        except (KeyError, TypeError, ValueError, SchemaError):
            # A schema confirmed before a rule it breaks (ADR 0068), or unreadable: extracts are refused.
            refused = "not known: the custodian must correct the extract schema (extracts are refused until then)"
            out[ds.id] = {c.name: refused for c in ds.columns}
            continue
        words: dict[str, str] = {}
        for c in ds.columns:
            try:
                kind = schema.column(c.name).effective_transform.kind
            except SchemaError:
                words[c.name] = "not in the extract schema"
                continue
            words[c.name] = RULE_LABELS.get(kind, str(kind))
        out[ds.id] = words
    return out


def _privacy_budget(project_id: str) -> Any:
    """What the team may spend on differentially private releases (the budget is the project's, not secret
    from its own team)."""
    from disclosure.budget import budget_state

    return budget_state(platform().db.session, project_id)


def _optout_list_names() -> list[str]:
    """The names of the opt-out lists in force, offered to the chair deciding an exemption."""
    from pseudonymisation.optout_lists import current_versions

    return [v.name for v in current_versions(platform().db.session)]


@bp.route("/<project_id>/edit", methods=["GET", "POST"])
@requires(Permission.PROJECT_APPLY)
def edit(project_id: str) -> Any:
    svc = projects_service()
    project = _project_for_view(project_id)
    if project.state not in rules.EDITABLE_STATES or project.pi_id != g.user.id:
        flash(
            "Only the principal investigator can change the application, and only before it is submitted "
            "or when the committee returns it for changes.",
            "error",
        )
        return redirect(url_for("projects.show", project_id=project.id))
    error: str | list[str] | None = None
    form: Any = request.form
    if request.method == "POST":

        def save() -> Project:
            fields = {
                k: form.get(k, "")
                for k in (
                    "title",
                    "lay_summary",
                    "scientific_purpose",
                    "public_benefit",
                    "legal_basis",
                    "ethics_reference",
                    "funder",
                )
            }
            return svc.update_application(
                g.user,
                project.id,
                **fields,
                start_date=parse_date(form.get("start_date")),
                end_date=parse_date(form.get("end_date")),
            )

        saved, error = attempt(save)
        if saved is not None:
            flash("Application saved", "success")
            return redirect(url_for("projects.edit", project_id=project.id) + "#datasets")
    return _render_edit(svc, project, error, form=form if request.method == "POST" else None)


def field_anchor(field: str) -> str:
    """The id of the form field a submission problem is about (see ``rules.submission_problems``)."""
    kind, _, dataset = field.partition(":")
    if kind in ("columns", "justification") and dataset:
        return f"{kind}-{dataset}"
    return field


def _render_edit(
    svc: Projects,
    project: Project,
    error: str | list[str] | None,
    *,
    form: Any = None,
    problems: list[tuple[str, str]] | None = None,
) -> tuple[str, int]:
    """The application form; an incomplete submission's problems head it, each linked to its field
    (the error summary) and repeated beside the field."""
    datasets = svc.list_datasets()
    # A dataset's column problem links to its first checkbox (the fieldset's first field).
    first_box = {f"columns-{ds.name}": f"col-{ds.name}-{ds.columns[0].name}" for ds in datasets if ds.columns}
    field_errors: dict[str, str] = {}
    summary: Any = error
    if problems:
        anchors = [field_anchor(f) for f, _ in problems]
        summary = [(f"#{first_box.get(a, a)}", message) for a, (_, message) in zip(anchors, problems, strict=True)]
        for a, (_, message) in zip(anchors, problems, strict=True):
            field_errors.setdefault(a, message)
    requested = {r.dataset_id: r for r in project.dataset_requests}
    return render_template(
        "projects/edit.html",
        title="Edit application",
        project=project,
        error=summary,
        field_errors=field_errors,
        form=form,
        datasets=datasets,
        requested=requested,
        role_labels=rules.COLUMN_ROLE_LABELS,
        becomes=column_outcomes(datasets),
        people=_people([m.user_id for m in project.active_members]),
    ), (400 if summary else 200)


@bp.post("/<project_id>/datasets/<dataset_id>")
@requires(Permission.PROJECT_APPLY)
def request_dataset(project_id: str, dataset_id: str) -> Any:
    svc = projects_service()
    columns = request.form.getlist("columns")
    if columns:
        _, error = attempt(
            lambda: svc.set_dataset_request(
                g.user, project_id, dataset_id, columns, request.form.get("justification", "")
            )
        )
    else:
        _, error = attempt(lambda: svc.remove_dataset_request(g.user, project_id, dataset_id))
    if error:
        flash(error if isinstance(error, str) else "; ".join(error), "error")
    else:
        flash("Dataset request saved" if columns else "Dataset removed from the application", "success")
    return redirect(url_for("projects.edit", project_id=project_id) + "#datasets")


@bp.post("/<project_id>/members")
@requires(Permission.PROJECT_APPLY)
def add_member(project_id: str) -> Any:
    _, error = attempt(lambda: projects_service().add_member(g.user, project_id, request.form.get("email", "")))
    flash(str(error) if error else "Team member added", "error" if error else "success")
    return redirect(url_for("projects.edit", project_id=project_id) + "#team")


@bp.get("/<project_id>/members/<user_id>/remove")
@login_required
def confirm_remove_member(project_id: str, user_id: str) -> Any:
    """The confirmation page: asked of the service as the removal is, so who may not remove is refused
    (and audited) here too; changes nothing."""
    found, error = attempt(lambda: projects_service().member_to_remove(g.user, project_id, user_id))
    if found is None:
        flash(str(error), "error")
        return redirect(url_for("projects.show", project_id=project_id))
    project, member = found
    person = _people([member.user_id]).get(member.user_id)
    name = person.display_name if person else "this person"
    return render_confirmation(
        Confirmation(
            caption=project.title,
            question=f"Are you sure you want to remove {name} from the team?",
            consequences=[
                f"{name} loses access to the project's data and workspace at once",
                "Their output requests stay with the project; they cannot submit new ones",
                "To give them access again, add them to the team again",
            ],
            action=url_for("projects.remove_member", project_id=project.id, user_id=member.user_id),
            button=f"Yes, remove {name}",
            cancel=url_for("projects.show", project_id=project.id) + "#team",
            cancel_text="No, keep them on the team",
        ),
        title=f"Remove {name} from {project.title}",
    )


@bp.post("/<project_id>/members/<user_id>/remove")
@login_required
def remove_member(project_id: str, user_id: str) -> Any:
    _, error = attempt(lambda: projects_service().remove_member(g.user, project_id, user_id))
    flash(
        str(error) if error else "Team member removed; their access has stopped",
        "error" if error else "success",
    )
    return redirect(url_for("projects.show", project_id=project_id))


@bp.post("/<project_id>/submit")
@requires(Permission.PROJECT_APPLY)
def submit(project_id: str) -> Any:
    svc = projects_service()
    version, error = attempt(lambda: svc.submit(g.user, project_id))
    if version is None:
        project = _project_for_view(project_id)
        if project.state in rules.EDITABLE_STATES and project.pi_id == g.user.id:
            # The problems go on the form, each linked to the field that needs it.
            problems = rules.submission_problems(svc.application_snapshot(project), utcnow().date())
            return _render_edit(svc, project, None if problems else error, problems=problems)
        return _render_show(project_id, error), 400
    flash(f"Application submitted (version {version.number}). The committee has been told.", "success")
    return redirect(url_for("projects.show", project_id=project_id))


@bp.post("/<project_id>/activate")
@login_required
def activate(project_id: str) -> Any:
    _, error = attempt(lambda: projects_service().activate(g.user, project_id))
    flash(str(error) if error else "The project is active", "error" if error else "success")
    return redirect(url_for("projects.show", project_id=project_id))


@bp.route("/<project_id>/agreement", methods=["GET", "POST"])
@login_required
def agreement(project_id: str) -> Any:
    svc = projects_service()
    project = _project_for_view(project_id)
    error = None
    if request.method == "POST":
        sig, error = attempt(
            lambda: svc.sign_agreement(
                g.user, project.id, request.form.get("content_hash", ""), request.form.get("signed_name", "")
            )
        )
        if sig is not None:
            flash("Agreement signed", "success")
            return redirect(url_for("projects.show", project_id=project.id))
    template = svc.current_agreement()
    mine = [s for s in svc.signatures(project) if s.user_id == g.user.id]
    signed = template is not None and any(s.template_id == template.id for s in mine)
    earlier = None
    if template is not None and not signed and mine:
        # What changed since the version this person last signed for this project.
        earlier = max(
            (t for t in (svc.session.get(AgreementTemplate, s.template_id) for s in mine) if t is not None),
            key=lambda t: t.version,
            default=None,
        )
    return render_template(
        "projects/agreement.html",
        title="Data access agreement",
        project=project,
        agreement=template,
        signed=signed,
        earlier=earlier,
        diff=textdiff.changes(earlier.body, template.body) if earlier is not None and template is not None else None,
        error=error,
    ), (400 if error else 200)


@bp.post("/<project_id>/extension")
@login_required
def request_extension(project_id: str) -> Any:
    svc = projects_service()
    _, error = attempt(
        lambda: svc.request_extension(
            g.user,
            project_id,
            parse_date(request.form.get("end_date")) or dt.date.min,
            request.form.get("reason", ""),
        )
    )
    flash(
        str(error) if error else "Extension requested: the committee chair will decide",
        "error" if error else "success",
    )
    return redirect(url_for("projects.show", project_id=project_id))


@bp.get("/messages")
@login_required
def messages() -> str:
    # The three columns the page shows, not the messages as objects: a checker is sent one for every
    # submission, so under load this list is the full 200 (issue 26, docs/operations.md).
    rows = platform().db.session.execute(_MY_MESSAGES, {"uid": g.user.id}).all()
    return render_template("projects/messages.html", title="My messages", messages=rows)


_MY_MESSAGES = (
    select(OutboxMessage.subject, OutboxMessage.created_at, OutboxMessage.body)
    .where(OutboxMessage.recipient_id == bindparam("uid"))
    .order_by(OutboxMessage.created_at.desc())
    .limit(200)
)


# --- administrators: training records and agreement versions --------------------------------------


_ACTIVE_PEOPLE_TRAINING = (
    select(User.id, User.display_name, User.email, func.max(TrainingRecord.expires_on).label("expires_on"))
    .outerjoin(TrainingRecord, (TrainingRecord.user_id == User.id) & (TrainingRecord.course == bindparam("course")))
    .where(User.is_active.is_(True))
    .group_by(User.id, User.display_name, User.email)
    .order_by(User.display_name)
)


@bp.route("/admin/training", methods=["GET", "POST"])
@requires(Permission.TRAINING_MANAGE)
def training() -> Any:
    svc = projects_service()
    error = None
    if request.method == "POST":
        form = request.form
        record, error = attempt(
            lambda: svc.record_training(
                g.user,
                form.get("user_id", ""),
                parse_date(form.get("completed_on")),  # type: ignore[arg-type]
                parse_date(form.get("expires_on")),  # type: ignore[arg-type]
                reference=form.get("reference", ""),
            )
        )
        if record is not None:
            flash("Training recorded", "success")
            return redirect(url_for("projects.training"))
    # Three columns and the latest expiry of each active person in one statement, not the accounts
    # with their roles and a statement per person: the same statements however many people there are.
    people = svc.session.execute(_ACTIVE_PEOPLE_TRAINING, {"course": svc.policy.training_course}).all()
    warn_before = dt.date.today() + dt.timedelta(days=svc.policy.training_warning_days)
    return render_template(
        "projects/training.html",
        title="Training records",
        people=people,
        error=error,
        today=dt.date.today(),
        warn_before=warn_before,
    ), (400 if error else 200)


@bp.post("/admin/training/import")
@requires(Permission.TRAINING_MANAGE)
def import_training() -> Any:
    count, error = attempt(lambda: projects_service().import_training(g.user, request.form.get("csv", "")))
    flash(str(error) if error else f"{count} training records imported", "error" if error else "success")
    return redirect(url_for("projects.training"))


@bp.route("/admin/agreements", methods=["GET", "POST"])
@requires(Permission.AGREEMENT_MANAGE)
def agreements() -> Any:
    svc = projects_service()
    error = None
    if request.method == "POST":
        template, error = attempt(
            lambda: svc.publish_agreement(g.user, request.form.get("title", ""), request.form.get("body", ""))
        )
        if template is not None:
            flash(f"Version {template.version} published. Every member must sign it again.", "success")
            return redirect(url_for("projects.agreements"))
    current = svc.current_agreement()
    previous = (
        svc.session.scalar(select(AgreementTemplate).where(AgreementTemplate.version == current.version - 1))
        if current is not None
        else None
    )
    return render_template(
        "projects/agreements.html",
        title="Data access agreement",
        agreement=current,
        previous=previous,
        diff=textdiff.changes(previous.body, current.body) if previous is not None and current is not None else None,
        error=error,
    ), (400 if error else 200)


def dataset_names(ids: list[str]) -> dict[str, Dataset]:
    if not ids:
        return {}
    return {d.id: d for d in platform().db.session.scalars(select(Dataset).where(Dataset.id.in_(ids)))}
