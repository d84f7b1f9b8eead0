"""Extracts, opt-out lists and governed re-identification over the API (data custodians)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app, g
from flask_smorest import Blueprint, abort

from pseudonymisation.optout_lists import OptOutError, OptOutLists, UploadRefused
from pseudonymisation.services import ExtractServiceError
from pseudonymisation.tasks import extracts_service
from tre.access import requires
from tre.api import refuse
from tre.core.jobs import Job
from tre.core.permissions import Permission

blp = Blueprint("extracts-api", __name__, description="Project extracts and governed re-identification")
BEARER = [{"bearer": []}]


class ExtractSchema(ma.Schema):
    id = ma.fields.String()
    project_id = ma.fields.String()
    state = ma.fields.String()
    job_id = ma.fields.String(allow_none=True)
    progress = ma.fields.Float()
    progress_message = ma.fields.String()
    error = ma.fields.String(allow_none=True)
    manifest = ma.fields.Dict(allow_none=True)


class ReidRequestSchema(ma.Schema):
    project_id = ma.fields.String(required=True)
    tokens = ma.fields.List(ma.fields.String(validate=ma.validate.Length(max=100)), required=True,
                            validate=ma.validate.Length(min=1, max=100))
    purpose = ma.fields.String(required=True, validate=ma.validate.Length(min=20, max=4000))


class ReidDecisionSchema(ma.Schema):
    decision = ma.fields.String(required=True, validate=ma.validate.OneOf(["approve", "reject"]))
    rationale = ma.fields.String(required=True, validate=ma.validate.Length(min=5, max=4000))


class ReidStateSchema(ma.Schema):
    id = ma.fields.String()
    project_id = ma.fields.String()
    state = ma.fields.String()


class ReidentifiedSchema(ma.Schema):
    token = ma.fields.String()
    nhs_number = ma.fields.String(allow_none=True)
    check_digit_valid = ma.fields.Boolean()
    # A token without a number: the run of the person index that knew the person, and their records'
    # identifiers (empty when the token is nobody's in this project's index).
    person_index_run = ma.fields.String(allow_none=True)
    person_records = ma.fields.List(ma.fields.Dict())


def _service() -> Any:
    return extracts_service(current_app.extensions["tre.platform"], request_id=g.get("request_id"))


def _describe(extract: Any) -> dict[str, Any]:
    job = current_app.extensions["tre.db"].session.get(Job, extract.job_id) if extract.job_id else None
    return {
        "id": extract.id, "project_id": extract.project_id, "state": extract.state, "job_id": extract.job_id,
        "progress": job.progress if job else 0.0, "progress_message": job.progress_message if job else "",
        "error": (job.last_error if job else None) or extract.error, "manifest": extract.manifest,
    }


@blp.route("/projects/<string:project_id>/extracts", methods=["POST"])
@blp.response(202, ExtractSchema)
@blp.doc(security=BEARER)
@requires(Permission.EXTRACT_MANAGE)
def build(project_id: str) -> dict[str, Any]:
    """Build the project's extract from its approved columns (a background job; asking twice is one job)."""
    try:
        return _describe(_service().request(g.user, project_id))
    except ExtractServiceError as exc:
        refuse(exc, 409)


@blp.route("/projects/<string:project_id>/extracts/latest")
@blp.response(200, ExtractSchema)
@blp.doc(security=BEARER)
@requires(Permission.EXTRACT_MANAGE)
def latest(project_id: str) -> dict[str, Any]:
    """The project's latest extract with its job's progress and, when finished, its manifest."""
    extract = _service().latest(project_id)
    if extract is None:
        abort(404, message="No extract for this project")
    return _describe(extract)


@blp.route("/reidentifications", methods=["POST"])
@blp.arguments(ReidRequestSchema)
@blp.response(201, ReidStateSchema)
@blp.doc(security=BEARER)
@requires(Permission.REIDENTIFY_REQUEST)
def request_reidentification(body: dict[str, Any]) -> Any:
    """Ask for the identifiers behind tokens, for an approved purpose; two other people must approve."""
    try:
        return _service().request_reidentification(g.user, body["project_id"], body["tokens"], body["purpose"])
    except ExtractServiceError as exc:
        refuse(exc, 422)


@blp.route("/reidentifications/<string:request_id>/decision", methods=["POST"])
@blp.arguments(ReidDecisionSchema)
@blp.response(200, ReidStateSchema)
@blp.doc(security=BEARER)
@requires(Permission.REIDENTIFY_APPROVE)
def decide_reidentification(body: dict[str, Any], request_id: str) -> Any:
    """Approve or reject someone else's re-identification request, with a rationale."""
    try:
        return _service().decide_reidentification(g.user, request_id, body["decision"], body["rationale"])
    except ExtractServiceError as exc:
        refuse(exc, 422)


@blp.route("/reidentifications/<string:request_id>/identifiers", methods=["POST"])
@blp.response(200, ReidentifiedSchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.REIDENTIFY_REQUEST)
def fulfil_reidentification(request_id: str) -> Any:
    """The requester receives the identifiers of an approved request, once."""
    try:
        return _service().fulfil_reidentification(g.user, request_id)
    except ExtractServiceError as exc:
        refuse(exc, 422)


# --- opt-out lists ----------------------------------------------------------------------------------


class OptOutListInSchema(ma.Schema):
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=100))
    dataset = ma.fields.String(load_default=None, allow_none=True)  # a catalogue name or id; none: every source
    description = ma.fields.String(load_default="", validate=ma.validate.Length(max=2000))
    numbers = ma.fields.String(required=True)  # one NHS number a line, or CSV text whose first column holds them


class OptOutListSchema(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String()
    version = ma.fields.Integer()
    dataset_id = ma.fields.String(allow_none=True)
    description = ma.fields.String()
    fingerprint = ma.fields.String()
    number_count = ma.fields.Integer()
    duplicates = ma.fields.Integer()
    loaded_by = ma.fields.String(allow_none=True)
    loaded_at = ma.fields.DateTime()


def _optout_lists() -> OptOutLists:
    p = current_app.extensions["tre.platform"]
    return OptOutLists(p.db.session, p.audit, p.files, request_id=g.get("request_id"))


@blp.route("/optout-lists")
@blp.response(200, OptOutListSchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.OPTOUT_MANAGE)
def list_optout_lists() -> Any:
    """The version in force of every opt-out list (names, scopes, counts, fingerprints; never numbers)."""
    return _optout_lists().current()


@blp.route("/optout-lists", methods=["POST"])
@blp.arguments(OptOutListInSchema)
@blp.response(201, OptOutListSchema)
@blp.doc(security=BEARER)
@requires(Permission.OPTOUT_MANAGE)
def load_optout_list(body: dict[str, Any]) -> Any:
    """Load a new version of a list; any line that is not a valid NHS number refuses the whole upload
    (422, with each bad line's number and reason and never its content)."""
    try:
        return _optout_lists().load(g.user, body["name"], body["numbers"], dataset=body["dataset"],
                                    description=body["description"])
    except UploadRefused as exc:
        abort(422, message=str(exc), messages={"lines": [{"line": p.line, "reason": p.reason} for p in exc.problems]})
    except OptOutError as exc:
        abort(422, message=str(exc))


@blp.route("/optout-lists/<string:name>")
@blp.response(200, OptOutListSchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.OPTOUT_MANAGE)
def optout_list_history(name: str) -> Any:
    """Every version of one list, newest (the one in force) first."""
    history = _optout_lists().history(name)
    if not history:
        abort(404, message="No such opt-out list")
    return history
