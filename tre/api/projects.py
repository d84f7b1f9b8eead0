"""Projects over the API: the same operations as the pages — applications, committee review,
decisions, lifecycle, agreements, training, the catalogue and the access gate."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import g
from flask_smorest import Blueprint, abort

from projects import rules
from projects.gate import ask_gate
from projects.models import Project
from projects.rules import ProjectPolicy, RuleViolation
from projects.services import (
    APPLICATION_FIELDS,
    Projects,
    approved_columns,
    approved_columns_of,
)
from tre.access import login_required, requires
from tre.api import refuse
from tre.authn import platform
from tre.core.permissions import Permission

blp = Blueprint(
    "projects-api", __name__, description="Projects, committee review, agreements, training, datasets"
)
BEARER = [{"bearer": []}]


def _svc() -> Projects:
    p = platform()
    return Projects(
        p.db.session, p.audit, ProjectPolicy.from_settings(p.settings), request_id=g.get("request_id")
    )


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except RuleViolation as exc:
        refuse(exc)


# --- schemas --------------------------------------------------------------------------------------


class DatasetColumnSchema(ma.Schema):
    name = ma.fields.String(required=True)
    role = ma.fields.String(required=True, validate=ma.validate.OneOf(rules.COLUMN_ROLES))
    data_type = ma.fields.String(load_default="string")
    description = ma.fields.String(load_default="")
    sensitivity = ma.fields.String(validate=ma.validate.OneOf(rules.SENSITIVITY_LEVELS))


class CatalogueDatasetSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    name = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    description = ma.fields.String(load_default="")
    source_kind = ma.fields.String(required=True, validate=ma.validate.OneOf(rules.SOURCE_KINDS))
    source_location = ma.fields.String(required=True, load_only=True)
    sensitivity = ma.fields.String(required=True, validate=ma.validate.OneOf(rules.SENSITIVITY_LEVELS))
    row_count = ma.fields.Integer(allow_none=True, load_default=None)
    columns = ma.fields.List(ma.fields.Nested(DatasetColumnSchema), required=True)


class ProjectCreateSchema(ma.Schema):
    title = ma.fields.String(required=True)


class ApplicationSchema(ma.Schema):
    title = ma.fields.String()
    lay_summary = ma.fields.String()
    scientific_purpose = ma.fields.String()
    public_benefit = ma.fields.String()
    legal_basis = ma.fields.String()
    ethics_reference = ma.fields.String()
    funder = ma.fields.String()
    start_date = ma.fields.Date(allow_none=True)
    end_date = ma.fields.Date(allow_none=True)


class DecisionOutSchema(ma.Schema):
    outcome = ma.fields.String()
    conditions = ma.fields.String()
    public_comment = ma.fields.String()
    decided_at = ma.fields.DateTime()


class MemberOutSchema(ma.Schema):
    user_id = ma.fields.String()
    role = ma.fields.String()


class ProjectSchema(ApplicationSchema):
    id = ma.fields.String(dump_only=True)
    state = ma.fields.String(dump_only=True)
    pi_id = ma.fields.String(dump_only=True)
    current_version = ma.fields.Integer(dump_only=True)
    members = ma.fields.List(ma.fields.Nested(MemberOutSchema), dump_only=True)
    requested = ma.fields.Dict(
        keys=ma.fields.String(), values=ma.fields.List(ma.fields.String()), dump_only=True
    )
    approved_columns = ma.fields.Dict(
        keys=ma.fields.String(), values=ma.fields.List(ma.fields.String()), dump_only=True
    )
    decisions = ma.fields.List(ma.fields.Nested(DecisionOutSchema), dump_only=True)


class DatasetRequestSchema(ma.Schema):
    columns = ma.fields.List(ma.fields.String(), required=True)
    justification = ma.fields.String(required=True)


class EmailSchema(ma.Schema):
    email = ma.fields.Email(required=True)


class ApplicationVersionSchema(ma.Schema):
    number = ma.fields.Integer()
    submitted_at = ma.fields.DateTime()


class ReviewersSchema(ma.Schema):
    reviewer_ids = ma.fields.List(ma.fields.String(), required=True)


class ReasonSchema(ma.Schema):
    reason = ma.fields.String(required=True)


class VoteSchema(ma.Schema):
    reviewer_id = ma.fields.String(dump_only=True)
    choice = ma.fields.String(required=True, validate=ma.validate.OneOf(rules.VOTE_CHOICES))
    rationale = ma.fields.String(required=True)
    cast_at = ma.fields.DateTime(dump_only=True)


class DecisionInSchema(ma.Schema):
    outcome = ma.fields.String(required=True, validate=ma.validate.OneOf(rules.DECISION_OUTCOMES))
    conditions = ma.fields.String(load_default="")
    public_comment = ma.fields.String(load_default="")
    approved_columns = ma.fields.Dict(
        keys=ma.fields.String(), values=ma.fields.List(ma.fields.String()), load_default=None, allow_none=True
    )


class ExtensionInSchema(ma.Schema):
    end_date = ma.fields.Date(required=True)
    reason = ma.fields.String(required=True)


class ExtensionSchema(ma.Schema):
    id = ma.fields.String()
    requested_end_date = ma.fields.Date()
    outcome = ma.fields.String(allow_none=True)


class GrantSchema(ma.Schema):
    grant = ma.fields.Boolean(required=True)


class AgreementSchema(ma.Schema):
    version = ma.fields.Integer(dump_only=True)
    title = ma.fields.String(required=True)
    body = ma.fields.String(required=True)
    content_hash = ma.fields.String(dump_only=True)


class SignSchema(ma.Schema):
    content_hash = ma.fields.String(required=True)
    signed_name = ma.fields.String(required=True)


class SignatureSchema(ma.Schema):
    user_id = ma.fields.String()
    content_hash = ma.fields.String()
    signed_at = ma.fields.DateTime()


class TrainingInSchema(ma.Schema):
    user_id = ma.fields.String(required=True)
    completed_on = ma.fields.Date(required=True)
    expires_on = ma.fields.Date(required=True)
    reference = ma.fields.String(load_default="")


class TrainingSchema(ma.Schema):
    id = ma.fields.String()
    user_id = ma.fields.String()
    course = ma.fields.String()
    completed_on = ma.fields.Date()
    expires_on = ma.fields.Date()


class ApprovedColumnsSchema(ma.Schema):
    project_id = ma.fields.String()
    datasets = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.List(ma.fields.String()))


class OptOutExemptionInSchema(ma.Schema):
    list_name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=100))
    basis = ma.fields.String(required=True, validate=ma.validate.Length(min=10, max=20_000))


class OptOutExemptionSchema(ma.Schema):
    list_name = ma.fields.String()
    basis = ma.fields.String()
    decided_by = ma.fields.String()
    decided_at = ma.fields.DateTime()


class GateDecisionSchema(ma.Schema):
    allowed = ma.fields.Boolean()
    reasons = ma.fields.List(ma.fields.String())
    messages = ma.fields.List(ma.fields.String())


def _describe(
    svc: Projects, project: Project, approved: dict[str, list[str]] | None = None, decisions: list[Any] | None = None
) -> dict[str, Any]:
    """One project as the API shows it; a list passes ``approved`` and ``decisions`` read for all at once."""
    out: dict[str, Any] = {k: getattr(project, k) for k in APPLICATION_FIELDS}
    out.update(
        id=project.id,
        state=project.state,
        pi_id=project.pi_id,
        current_version=project.current_version,
        members=[{"user_id": m.user_id, "role": m.role} for m in project.active_members],
        requested={r.dataset.name: list(r.columns) for r in project.dataset_requests},
        approved_columns=approved_columns(svc.session, project.id) if approved is None else approved,
        decisions=svc.decisions(project) if decisions is None else decisions,
    )
    return out


def _project(svc: Projects, project_id: str) -> Project:
    # The API names each requested dataset and never shows its columns: they are not read.
    return _call(svc.get_project, g.user, project_id, dataset_columns=False)


# --- the catalogue --------------------------------------------------------------------------------


@blp.route("/datasets")
@blp.response(200, CatalogueDatasetSchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.CATALOGUE_BROWSE)
def list_datasets() -> Any:
    """The catalogue: descriptions and columns, never data."""
    return _svc().catalogue_entries()


@blp.route("/datasets", methods=["POST"])
@blp.arguments(CatalogueDatasetSchema)
@blp.response(201, CatalogueDatasetSchema)
@blp.doc(security=BEARER)
@requires(Permission.DATASET_MANAGE)
def register_dataset(body: dict[str, Any]) -> Any:
    """Register a dataset with a role for every column (data custodians)."""
    return _call(_svc().register_dataset, g.user, **body)


# --- applications ---------------------------------------------------------------------------------


@blp.route("/projects")
@blp.response(200, ProjectSchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.PROJECT_VIEW_OWN)
def list_projects() -> Any:
    """The projects the caller is a member of."""
    svc = _svc()
    projects = svc.projects_of(g.user.id)
    ids = [p.id for p in projects]
    approved = approved_columns_of(svc.session, ids)
    decisions = svc.decisions_of(ids)
    return [_describe(svc, p, approved.get(p.id, {}), decisions.get(p.id, [])) for p in projects]


@blp.route("/projects", methods=["POST"])
@blp.arguments(ProjectCreateSchema)
@blp.response(201, ProjectSchema)
@blp.doc(security=BEARER)
@requires(Permission.PROJECT_APPLY)
def create_project(body: dict[str, Any]) -> Any:
    """Start a draft application; the caller is its principal investigator."""
    svc = _svc()
    return _describe(svc, _call(svc.create_project, g.user, body["title"]))


@blp.route("/projects/<string:project_id>")
@blp.response(200, ProjectSchema)
@blp.doc(security=BEARER)
@login_required
def get_project(project_id: str) -> Any:
    """A project the caller may see (its team, or the committee)."""
    svc = _svc()
    return _describe(svc, _project(svc, project_id))


@blp.route("/projects/<string:project_id>", methods=["PATCH"])
@blp.arguments(ApplicationSchema)
@blp.response(200, ProjectSchema)
@blp.doc(security=BEARER)
@requires(Permission.PROJECT_APPLY)
def update_application(body: dict[str, Any], project_id: str) -> Any:
    """Save application fields (incomplete drafts are fine)."""
    svc = _svc()
    return _describe(svc, _call(svc.update_application, g.user, project_id, **body))


@blp.route("/projects/<string:project_id>/datasets/<string:dataset_id>", methods=["PUT"])
@blp.arguments(DatasetRequestSchema)
@blp.response(200, ProjectSchema)
@blp.doc(security=BEARER)
@requires(Permission.PROJECT_APPLY)
def request_dataset(body: dict[str, Any], project_id: str, dataset_id: str) -> Any:
    """Ask for exactly these columns of a dataset, with the reason."""
    svc = _svc()
    _call(svc.set_dataset_request, g.user, project_id, dataset_id, body["columns"], body["justification"])
    return _describe(svc, _project(svc, project_id))


@blp.route("/projects/<string:project_id>/members", methods=["POST"])
@blp.arguments(EmailSchema)
@blp.response(200, ProjectSchema)
@blp.doc(security=BEARER)
@requires(Permission.PROJECT_APPLY)
def add_member(body: dict[str, Any], project_id: str) -> Any:
    """Add a researcher to the team."""
    svc = _svc()
    _call(svc.add_member, g.user, project_id, body["email"])
    return _describe(svc, _project(svc, project_id))


@blp.route("/projects/<string:project_id>/submit", methods=["POST"])
@blp.response(201, ApplicationVersionSchema)
@blp.doc(security=BEARER)
@requires(Permission.PROJECT_APPLY)
def submit(project_id: str) -> Any:
    """Submit the application; a 422 lists precisely what is missing in ``errors.missing``."""
    return _call(_svc().submit, g.user, project_id)


# --- committee ------------------------------------------------------------------------------------


@blp.route("/review-queue")
@blp.response(200, ProjectSchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.APPLICATION_REVIEW)
def review_queue() -> Any:
    """Applications waiting for the committee, oldest first."""
    svc = _svc()
    # The approved columns and decisions of all at once, as the project list reads them (ADR 0061).
    projects = svc.review_queue()
    ids = [p.id for p in projects]
    approved, decisions = approved_columns_of(svc.session, ids), svc.decisions_of(ids)
    return [_describe(svc, p, approved.get(p.id, {}), decisions.get(p.id, [])) for p in projects]


@blp.route("/projects/<string:project_id>/reviewers", methods=["POST"])
@blp.arguments(ReviewersSchema)
@blp.response(200, ProjectSchema)
@blp.doc(security=BEARER)
@requires(Permission.APPLICATION_ASSIGN)
def assign_reviewers(body: dict[str, Any], project_id: str) -> Any:
    """Assign committee members to review the current version (the chair)."""
    svc = _svc()
    _call(svc.assign_reviewers, g.user, project_id, body["reviewer_ids"])
    return _describe(svc, _project(svc, project_id))


@blp.route("/projects/<string:project_id>/conflict", methods=["POST"])
@blp.arguments(ReasonSchema)
@blp.response(204)
@blp.doc(security=BEARER)
@requires(Permission.APPLICATION_REVIEW)
def declare_conflict(body: dict[str, Any], project_id: str) -> None:
    """Declare a conflict of interest: no vote, no sight of others' votes."""
    _call(_svc().declare_conflict, g.user, project_id, body["reason"])


@blp.route("/projects/<string:project_id>/conflict/withdraw", methods=["POST"])
@blp.arguments(ReasonSchema)
@blp.response(204)
@blp.doc(security=BEARER)
@requires(Permission.APPLICATION_REVIEW)
def withdraw_conflict(body: dict[str, Any], project_id: str) -> None:
    """Withdraw one's own declaration of a conflict of interest made in error, with the reason; the body
    names nobody else (422, with the reason, when there is none to withdraw or the application no longer
    waits for the committee)."""
    _call(_svc().withdraw_conflict, g.user, project_id, body["reason"])


@blp.route("/projects/<string:project_id>/votes", methods=["POST"])
@blp.arguments(VoteSchema)
@blp.response(201, VoteSchema)
@blp.doc(security=BEARER)
@requires(Permission.APPLICATION_REVIEW)
def cast_vote(body: dict[str, Any], project_id: str) -> Any:
    """Vote on the current version, with the rationale."""
    return _call(_svc().cast_vote, g.user, project_id, body["choice"], body["rationale"])


@blp.route("/projects/<string:project_id>/votes")
@blp.response(200, VoteSchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.APPLICATION_REVIEW)
def list_votes(project_id: str) -> Any:
    """Votes on the current version, if the caller may see them (403 for a conflicted member)."""
    svc = _svc()
    votes = svc.votes_visible_to(g.user, _project(svc, project_id))
    if votes is None:
        abort(403, message="You cannot see the votes on this application")
    return votes


@blp.route("/projects/<string:project_id>/decision", methods=["POST"])
@blp.arguments(DecisionInSchema)
@blp.response(201, DecisionOutSchema)
@blp.doc(security=BEARER)
@requires(Permission.APPLICATION_DECIDE)
def decide(body: dict[str, Any], project_id: str) -> Any:
    """The chair's decision; ``approved_columns`` (dataset name to columns) may be fewer than asked."""
    return _call(
        _svc().decide,
        g.user,
        project_id,
        body["outcome"],
        conditions=body["conditions"],
        public_comment=body["public_comment"],
        approved_columns=body["approved_columns"],
    )


@blp.route("/projects/<string:project_id>/approved-columns")
@blp.response(200, ApprovedColumnsSchema)
@blp.doc(security=BEARER)
@login_required
def get_approved_columns(project_id: str) -> Any:
    """THE approved columns per dataset: all that extracts, workspaces and output checks may use."""
    svc = _svc()
    _project(svc, project_id)
    return {"project_id": project_id, "datasets": approved_columns(svc.session, project_id)}


# --- opt-out exemptions ---------------------------------------------------------------------------


@blp.route("/projects/<string:project_id>/optout-exemptions")
@blp.response(200, OptOutExemptionSchema(many=True))
@blp.doc(security=BEARER)
@login_required
def list_optout_exemptions(project_id: str) -> Any:
    """The opt-out lists the committee exempted this project from, with the legal basis it recorded."""
    svc = _svc()
    return svc.optout_exemptions(_project(svc, project_id))


@blp.route("/projects/<string:project_id>/optout-exemptions", methods=["POST"])
@blp.arguments(OptOutExemptionInSchema)
@blp.response(201, OptOutExemptionSchema)
@blp.doc(security=BEARER)
@requires(Permission.OPTOUT_EXEMPT)
def exempt_from_optout(body: dict[str, Any], project_id: str) -> Any:
    """The chair records that the project's legal basis exempts it from the named opt-out list."""
    return _call(_svc().set_optout_exemption, g.user, project_id, body["list_name"], body["basis"])


@blp.route("/projects/<string:project_id>/optout-exemptions/<string:list_name>", methods=["DELETE"])
@blp.response(204)
@blp.doc(security=BEARER)
@requires(Permission.OPTOUT_EXEMPT)
def revoke_optout_exemption(project_id: str, list_name: str) -> None:
    """Withdraw an exemption: extracts requested afterwards remove the list's patients again."""
    _call(_svc().revoke_optout_exemption, g.user, project_id, list_name)


# --- lifecycle ------------------------------------------------------------------------------------


@blp.route("/projects/<string:project_id>/activate", methods=["POST"])
@blp.response(200, ProjectSchema)
@blp.doc(security=BEARER)
@login_required
def activate(project_id: str) -> Any:
    """Start an approved project (its principal investigator or the chair)."""
    svc = _svc()
    return _describe(svc, _call(svc.activate, g.user, project_id))


@blp.route("/projects/<string:project_id>/suspend", methods=["POST"])
@blp.arguments(ReasonSchema)
@blp.response(200, ProjectSchema)
@blp.doc(security=BEARER)
@requires(Permission.APPLICATION_DECIDE)
def suspend(body: dict[str, Any], project_id: str) -> Any:
    """Suspend an active project: access stops at once."""
    svc = _svc()
    return _describe(svc, _call(svc.suspend, g.user, project_id, body["reason"]))


@blp.route("/projects/<string:project_id>/reinstate", methods=["POST"])
@blp.response(200, ProjectSchema)
@blp.doc(security=BEARER)
@requires(Permission.APPLICATION_DECIDE)
def reinstate(project_id: str) -> Any:
    """Reinstate a suspended project."""
    svc = _svc()
    return _describe(svc, _call(svc.reinstate, g.user, project_id))


@blp.route("/projects/<string:project_id>/close", methods=["POST"])
@blp.arguments(ReasonSchema)
@blp.response(200, ProjectSchema)
@blp.doc(security=BEARER)
@requires(Permission.APPLICATION_DECIDE)
def close(body: dict[str, Any], project_id: str) -> Any:
    """Close the project: access stops at once and data destruction is queued."""
    svc = _svc()
    return _describe(svc, _call(svc.close, g.user, project_id, body["reason"]))


@blp.route("/projects/<string:project_id>/extensions", methods=["POST"])
@blp.arguments(ExtensionInSchema)
@blp.response(201, ExtensionSchema)
@blp.doc(security=BEARER)
@login_required
def request_extension(body: dict[str, Any], project_id: str) -> Any:
    """Ask the chair to extend the end date (the principal investigator)."""
    return _call(_svc().request_extension, g.user, project_id, body["end_date"], body["reason"])


@blp.route("/extensions/<string:extension_id>/decision", methods=["POST"])
@blp.arguments(GrantSchema)
@blp.response(200, ExtensionSchema)
@blp.doc(security=BEARER)
@requires(Permission.APPLICATION_DECIDE)
def decide_extension(body: dict[str, Any], extension_id: str) -> Any:
    """Grant or refuse an extension (the chair)."""
    return _call(_svc().decide_extension, g.user, extension_id, body["grant"])


# --- agreements, training, the gate ---------------------------------------------------------------


@blp.route("/agreement")
@blp.response(200, AgreementSchema)
@blp.doc(security=BEARER)
@login_required
def get_agreement() -> Any:
    """The current version of the data access agreement."""
    template = _svc().current_agreement()
    if template is None:
        abort(404, message="No agreement has been published")
    return template


@blp.route("/agreement", methods=["POST"])
@blp.arguments(AgreementSchema)
@blp.response(201, AgreementSchema)
@blp.doc(security=BEARER)
@requires(Permission.AGREEMENT_MANAGE)
def publish_agreement(body: dict[str, Any]) -> Any:
    """Publish a new version; everyone must sign it again before further access."""
    return _call(_svc().publish_agreement, g.user, body["title"], body["body"])


@blp.route("/projects/<string:project_id>/signatures", methods=["POST"])
@blp.arguments(SignSchema)
@blp.response(201, SignatureSchema)
@blp.doc(security=BEARER)
@login_required
def sign(body: dict[str, Any], project_id: str) -> Any:
    """Sign the current agreement version for the project (``content_hash`` of what was read)."""
    return _call(_svc().sign_agreement, g.user, project_id, body["content_hash"], body["signed_name"])


@blp.route("/training", methods=["POST"])
@blp.arguments(TrainingInSchema)
@blp.response(201, TrainingSchema)
@blp.doc(security=BEARER)
@requires(Permission.TRAINING_MANAGE)
def record_training(body: dict[str, Any]) -> Any:
    """Record safe researcher training with its expiry (administrators)."""
    return _call(
        _svc().record_training,
        g.user,
        body["user_id"],
        body["completed_on"],
        body["expires_on"],
        reference=body["reference"],
    )


@blp.route("/projects/<string:project_id>/access")
@blp.response(200, GateDecisionSchema)
@blp.doc(security=BEARER)
@login_required
def my_access(project_id: str) -> Any:
    """The access gate's answer for the caller on this project now (recorded in the audit log)."""
    p = platform()
    decision = ask_gate(
        p.db.session, p.audit, g.user.id, project_id, purpose="api", request_id=g.get("request_id")
    )
    return {"allowed": decision.allowed, "reasons": decision.reasons, "messages": decision.messages}
