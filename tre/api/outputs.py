"""Output requests over the API: the workspace submits, checkers review.

The workspace holds a token scoped to one project with purpose ``output-submit``: with it a
researcher submits a request (multipart: files, context, controls, optional table specifications)
and reads the status of that project's requests, nothing else. The same submission sent twice with
the same ``Idempotency-Key`` header creates one request. Checkers use their own tokens (a personal
token or a JWT of another purpose) for the review operations; a workspace token is refused there.
"""

from __future__ import annotations

import json
from typing import Any

import marshmallow as ma
from flask import g, request
from flask_smorest import Blueprint
from werkzeug.exceptions import default_exceptions

from disclosure import rules
from disclosure.models import OutputRequest
from disclosure.progress import status_of
from disclosure.rerun.results import rerun_view
from disclosure.services import (
    OutputError,
    Outputs,
    automated_status,
)
from tre.access import login_required, requires
from tre.api import refuse
from tre.authn import platform
from tre.core.permissions import Permission

blp = Blueprint("outputs_api", __name__, description="Output requests: workspace submission and checking")
BEARER = [{"bearer": []}]
WORKSPACE_PURPOSE = "output-submit"


def service() -> Outputs:
    return Outputs.from_platform(platform(), request_id=g.get("request_id"))


def abort(status: int, message: str, **messages: Any) -> Any:
    """Refuse with a message the caller can show (problem+json ``detail``, and ``errors`` when given)."""
    error = default_exceptions[status](description=message)
    if messages:
        error.data = {"messages": messages}  # type: ignore[attr-defined]
    raise error


def _workspace_claims() -> Any:
    claims = g.get("token_claims")
    if claims is not None and claims.purpose == WORKSPACE_PURPOSE:
        return claims
    return None


def _not_from_a_workspace() -> None:
    if _workspace_claims() is not None:
        abort(403, "A workspace token may only submit outputs and read their status")


class OutputFileStatusSchema(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String()
    group = ma.fields.String()
    sha256 = ma.fields.String()
    kind = ma.fields.String()
    automated_status = ma.fields.String(allow_none=True)
    reasons = ma.fields.List(ma.fields.String())
    recompute = ma.fields.Dict()


class OutputRequestStatusSchema(ma.Schema):
    id = ma.fields.String()
    project_id = ma.fields.String()
    title = ma.fields.String()
    state = ma.fields.String()
    round = ma.fields.Integer()
    reviews_required = ma.fields.Integer()
    automated_checks = ma.fields.String()
    automated_check_failures = ma.fields.List(ma.fields.String())
    files = ma.fields.List(ma.fields.Nested(OutputFileStatusSchema))
    shared_comments = ma.fields.List(ma.fields.Dict())
    decisions = ma.fields.List(ma.fields.Dict())
    missing = ma.fields.List(ma.fields.String())
    rerun = ma.fields.Dict(allow_none=True)


def describe(svc: Outputs, req: OutputRequest, viewer: Any, role: str) -> dict[str, Any]:
    s = svc.session
    picture = svc.review_picture(viewer, req, role)
    return _view(
        req,
        checks=svc.checks_of(req),
        status=automated_status(s, req, svc.policy.sha256),
        comments=picture.comments,
        decisions=picture.decisions,
        missing=svc.missing_for_submission(req) if req.state in rules.EDITABLE_STATES else [],
        # The re-run of the code this round was sent with (ADR 0018): in full for its checkers only.
        rerun=rerun_view(s, req, role),
    )


def describe_new(svc: Outputs, req: OutputRequest, *, code_sent: bool) -> dict[str, Any]:
    """The team's view of a request this call created and submitted, as its transaction committed it,
    without reading it back: its files are new rows, so none had a verdict, its check job was just
    queued, and no checker had seen it (no comments, no decisions). The request's state, files and
    groups are the objects the transaction wrote (the session keeps them after commit). Only its
    re-run, when code was sent, is read. A later status read (``GET``) shows the checks' progress."""
    return _view(
        req,
        checks={},
        status=status_of(req, set(), None),
        comments=[],
        decisions=[],
        missing=[],  # submitted: every requirement was met
        rerun=rerun_view(svc.session, req, "team") if code_sent else None,
    )


def _view(
    req: OutputRequest,
    *,
    checks: dict[str, Any],
    status: Any,
    comments: list[Any],
    decisions: list[Any],
    missing: list[str],
    rerun: Any,
) -> dict[str, Any]:
    groups = {grp.id: grp.name for grp in req.groups}
    return {
        "id": req.id,
        "project_id": req.project_id,
        "title": req.title,
        "state": req.state,
        "round": req.round,
        "reviews_required": req.reviews_required,
        "automated_checks": status.state,
        "automated_check_failures": status.reasons,
        "files": [
            {
                "id": f.id,
                "name": f.name,
                "group": groups.get(f.group_id, ""),
                "sha256": f.sha256,
                "kind": f.kind,
                "automated_status": checks[f.id].status if f.id in checks else None,
                "reasons": list(checks[f.id].verdict.get("reasons", [])) if f.id in checks else [],
                "recompute": checks[f.id].recompute if f.id in checks else {},
            }
            for f in req.current_files
        ],
        "shared_comments": [
            {"round": c.round, "body": c.body, "created_at": c.created_at.isoformat()}
            for c in comments
            if c.visibility == rules.SHARED
        ],
        "decisions": [
            {"round": d.round, "outcome": d.outcome, "comment": d.comment, "decided_at": d.decided_at.isoformat()}
            for d in decisions
        ],
        "missing": missing,
        "rerun": rerun,
    }


def _code_upload() -> tuple[str, bytes, str | None] | None:
    """The notebook or script sent with the files (field ``code``), its path in the home and the extract
    version it read; ``None`` when no code was sent."""
    upload = request.files.get("code")
    if upload is None:
        return None
    path = request.form.get("code_path") or upload.filename or ""
    return path, upload.read(), request.form.get("extract_version") or None


def _parse_json_field(name: str, default: Any) -> Any:
    raw = request.form.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return json.loads(raw)
    except ValueError:
        abort(422, f"{name} must be JSON")


@blp.route("/outputs/requests", methods=["POST"])
@blp.response(201, OutputRequestStatusSchema)
@blp.alt_response(
    200, schema=OutputRequestStatusSchema, description="The same Idempotency-Key again: the request it made"
)
@blp.doc(
    security=BEARER,
    requestBody={
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "title": {"type": "string"},
                        "group": {"type": "string", "description": "group name (default: outputs)"},
                        "context": {"type": "string"},
                        "controls": {"type": "string"},
                        "table_specs": {"type": "string", "description": "JSON object: file name -> specification"},
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "code": {
                            "type": "string",
                            "format": "binary",
                            "description": "the notebook (.ipynb) or script (.py) that made the files; re-run",
                        },
                        "code_path": {"type": "string", "description": "the code's path relative to the home"},
                        "extract_version": {"type": "string", "description": "digest of the extract's manifests"},
                    },
                    "required": ["title", "context", "controls", "files"],
                }
            }
        }
    },
    parameters=[{"in": "header", "name": "Idempotency-Key", "schema": {"type": "string"}, "required": False}],
)
@requires(Permission.OUTPUT_SUBMIT)
def submit_from_workspace() -> Any:
    """Submit outputs from a workspace (its project-scoped token with purpose ``output-submit``)."""
    claims = _workspace_claims()
    if claims is None or not claims.project_id:
        abort(403, "Submit outputs from the project's workspace (a token with purpose output-submit)")
    project_id = claims.project_id
    if request.form.get("project_id") not in (None, "", project_id):
        abort(403, "The token is for another project")
    specs = _parse_json_field("table_specs", {})
    if not isinstance(specs, dict):
        abort(422, "table_specs must be a JSON object keyed by file name")
    group = (request.form.get("group") or "outputs").strip()
    uploads = request.files.getlist("files")
    if not uploads:
        abort(422, "Attach at least one file (field: files)")
    files = [(u.filename or "", u.read(), group, specs.get(u.filename or "")) for u in uploads]
    unknown = sorted(set(specs) - {name for name, *_ in files})
    if unknown:
        abort(422, f"table_specs names files that were not sent: {', '.join(unknown)}")
    key = request.headers.get("Idempotency-Key") or None
    code = _code_upload()
    svc = service()
    try:
        req, created = svc.submit_from_workspace(
            g.user,
            project_id,
            request.form.get("title", ""),
            client_key=key,
            groups=[(group, request.form.get("context", ""), request.form.get("controls", ""))],
            files=files,
            code=code,
        )
    except OutputError as exc:
        refuse(exc)
    if created:
        return describe_new(svc, req, code_sent=code is not None), 201
    req = svc._get(svc.session, req.id)  # made by an earlier call: as it is now
    return describe(svc, req, g.user, "team"), 200


@blp.route("/outputs/requests/<string:request_id>/resubmission", methods=["POST"])
@blp.response(200, OutputRequestStatusSchema)
@blp.doc(
    security=BEARER,
    requestBody={
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "group": {
                            "type": "string",
                            "description": "group of the files sent (default: the replaced file's, else the first)",
                        },
                        "context": {"type": "string", "description": "the group's new context (optional)"},
                        "controls": {"type": "string", "description": "the group's new controls (optional)"},
                        "remove": {"type": "string", "description": "JSON list of current file names to drop"},
                        "table_specs": {"type": "string", "description": "JSON object: file name -> specification"},
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    },
                }
            }
        }
    },
)
@requires(Permission.OUTPUT_SUBMIT)
def resubmit_from_workspace(request_id: str) -> Any:
    """Change a returned request from its workspace (files replace those of the same name) and resubmit it.

    Only the project's workspace token (purpose ``output-submit``) may: output files come only from
    workspaces. Sent again after it succeeded, it changes nothing.
    """
    claims = _workspace_claims()
    if claims is None or not claims.project_id:
        abort(403, "Output files come only from the project's workspace (a token with purpose output-submit)")
    specs = _parse_json_field("table_specs", {})
    remove = _parse_json_field("remove", [])
    if not isinstance(specs, dict):
        abort(422, "table_specs must be a JSON object keyed by file name")
    if not isinstance(remove, list) or not all(isinstance(name, str) for name in remove):
        abort(422, "remove must be a JSON list of file names")
    group = (request.form.get("group") or "").strip()  # empty: the group of the file replaced
    files = [(u.filename or "", u.read(), group, specs.get(u.filename or "")) for u in request.files.getlist("files")]
    unknown = sorted(set(specs) - {name for name, *_ in files})
    if unknown:
        abort(422, f"table_specs names files that were not sent: {', '.join(unknown)}")
    context, controls = request.form.get("context"), request.form.get("controls")
    groups = [] if context is None and controls is None else [(group, context, controls)]
    svc = service()
    try:
        req, _changed = svc.resubmit_from_workspace(
            g.user, claims.project_id, request_id, groups=groups, files=files, remove=remove, code=_code_upload()
        )
    except OutputError as exc:
        refuse(exc)
    req = svc._get(svc.session, req.id)
    return describe(svc, req, g.user, "team")


def _get_visible(svc: Outputs, request_id: str) -> tuple[OutputRequest, str]:
    try:
        req, role = svc.get_for(g.user, request_id)
    except OutputError as exc:
        refuse(exc)
    claims = _workspace_claims()
    if claims is not None and (role != "team" or claims.project_id != req.project_id):
        abort(404, "No such output request")
    return req, role


@blp.route("/outputs/requests/<string:request_id>")
@blp.response(200, OutputRequestStatusSchema)
@blp.doc(security=BEARER)
@requires(Permission.OUTPUT_SUBMIT)
def request_status(request_id: str) -> dict[str, Any]:
    """A request's state, automated verdicts, shared comments and decisions (the project's team)."""
    svc = service()
    req, role = _get_visible(svc, request_id)
    return describe(svc, req, g.user, role)


class OutputQueueEntrySchema(ma.Schema):
    id = ma.fields.String()
    state = ma.fields.String()
    round = ma.fields.Integer()
    submitted_at = ma.fields.String(allow_none=True)
    automated_checks = ma.fields.String()
    reviewers = ma.fields.List(ma.fields.String())


@blp.route("/outputs/queue")
@blp.response(200, OutputQueueEntrySchema(many=True))
@blp.doc(security=BEARER)
@requires(Permission.OUTPUT_REVIEW)
def queue() -> list[dict[str, Any]]:
    """Requests waiting for checkers, oldest first (those the caller may check)."""
    _not_from_a_workspace()
    return [
        {
            "id": e.req.id,
            "state": e.req.state,
            "round": e.req.round,
            "submitted_at": e.req.last_submitted_at.isoformat() if e.req.last_submitted_at else None,
            "automated_checks": e.status.state,
            "reviewers": [r.reviewer_id for r in e.reviews],
        }
        for e in service().queue_for(g.user)
    ]


@blp.route("/outputs/requests/<string:request_id>/checker-view")
@blp.response(200, OutputRequestStatusSchema)
@blp.doc(security=BEARER)
@requires(Permission.OUTPUT_REVIEW)
def checker_view(request_id: str) -> dict[str, Any]:
    """A request as its checker sees it (blind to other checkers until every review is in)."""
    _not_from_a_workspace()
    svc = service()
    req, role = _get_visible(svc, request_id)
    if role != "checker":
        abort(403, "Only an eligible output checker sees this")
    return describe(svc, req, g.user, role)


class OutputVoteSchema(ma.Schema):
    file_id = ma.fields.String(required=True)
    vote = ma.fields.String(required=True, validate=ma.validate.OneOf(rules.VOTES))
    comment = ma.fields.String(load_default="")


class OutputCommentSchema(ma.Schema):
    body = ma.fields.String(required=True)
    visibility = ma.fields.String(required=True, validate=ma.validate.OneOf(rules.VISIBILITIES))


class OutputDecisionSchema(ma.Schema):
    outcome = ma.fields.String(required=True, validate=ma.validate.OneOf(rules.OUTCOMES))
    comment = ma.fields.String(load_default="")


class OutputRevokeSchema(ma.Schema):
    reason = ma.fields.String(required=True)


class OutputAssignSchema(ma.Schema):
    reviewer_id = ma.fields.String(required=True)


def _act(request_id: str, action: Any) -> dict[str, Any]:
    _not_from_a_workspace()
    svc = service()
    try:
        action(svc)
    except OutputError as exc:
        refuse(exc)
    req, role = _get_visible(svc, request_id)
    return describe(svc, req, g.user, role)


@blp.route("/outputs/requests/<string:request_id>/claim", methods=["POST"])
@blp.response(200, OutputRequestStatusSchema)
@blp.doc(security=BEARER)
@requires(Permission.OUTPUT_REVIEW)
def claim(request_id: str) -> dict[str, Any]:
    """Take one of the request's independent review places."""
    return _act(request_id, lambda svc: svc.claim(g.user, request_id))


@blp.route("/outputs/requests/<string:request_id>/assign", methods=["POST"])
@blp.arguments(OutputAssignSchema)
@blp.response(200, OutputRequestStatusSchema)
@blp.doc(security=BEARER)
@requires(Permission.OUTPUT_REVIEW)
def assign(body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """Give a review place to another eligible checker."""
    return _act(request_id, lambda svc: svc.assign(g.user, request_id, body["reviewer_id"]))


@blp.route("/outputs/requests/<string:request_id>/votes", methods=["POST"])
@blp.arguments(OutputVoteSchema)
@blp.response(200, OutputRequestStatusSchema)
@blp.doc(security=BEARER)
@requires(Permission.OUTPUT_REVIEW)
def vote(body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """Vote on one file: approve, changes_requested (with a comment) or undecided."""
    return _act(request_id, lambda svc: svc.vote(g.user, request_id, body["file_id"], body["vote"], body["comment"]))


@blp.route("/outputs/requests/<string:request_id>/review", methods=["POST"])
@blp.response(200, OutputRequestStatusSchema)
@blp.doc(security=BEARER)
@requires(Permission.OUTPUT_REVIEW)
def submit_review(request_id: str) -> dict[str, Any]:
    """Submit your review of this round (every file voted)."""
    return _act(request_id, lambda svc: svc.submit_review(g.user, request_id))


@blp.route("/outputs/requests/<string:request_id>/comments", methods=["POST"])
@blp.arguments(OutputCommentSchema)
@blp.response(200, OutputRequestStatusSchema)
@blp.doc(security=BEARER)
@requires(Permission.OUTPUT_REVIEW)
def comment(body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """A comment private to checkers or shared with the author."""
    return _act(request_id, lambda svc: svc.comment(g.user, request_id, body["body"], body["visibility"]))


@blp.route("/outputs/requests/<string:request_id>/decision", methods=["POST"])
@blp.arguments(OutputDecisionSchema)
@blp.response(200, OutputRequestStatusSchema)
@blp.doc(security=BEARER)
@requires(Permission.OUTPUT_REVIEW)
def decide(body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """Consolidate after every review: approve, return (with a comment) or reject (with a comment)."""
    return _act(request_id, lambda svc: svc.consolidate(g.user, request_id, body["outcome"], body["comment"]))


@blp.route("/outputs/requests/<string:request_id>/release", methods=["POST"])
@blp.response(200, OutputRequestStatusSchema)
@blp.doc(security=BEARER)
@requires(Permission.OUTPUT_REVIEW)
def release(request_id: str) -> dict[str, Any]:
    """Release an approved request: its bundle becomes downloadable by the project's team."""
    return _act(request_id, lambda svc: svc.release(g.user, request_id))


@blp.route("/outputs/requests/<string:request_id>/revoke", methods=["POST"])
@blp.arguments(OutputRevokeSchema)
@blp.response(200, OutputRequestStatusSchema)
@blp.doc(security=BEARER)
@requires(Permission.OUTPUT_REVIEW)
def revoke(body: dict[str, Any], request_id: str) -> dict[str, Any]:
    """Revoke a release found to be wrong (a reason is required)."""
    return _act(request_id, lambda svc: svc.revoke(g.user, request_id, body["reason"]))


def _content(data: bytes, mimetype: str, filename: str, disposition: str) -> Any:
    from flask import Response

    response = Response(data, mimetype=mimetype)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Content-Disposition"] = f'{disposition}; filename="{filename}"'
    return response


@blp.route("/outputs/files/<string:file_id>")
@blp.doc(security=BEARER, responses={"200": {"description": "The file's bytes"}})
@login_required
def file_content(file_id: str) -> Any:
    """One file's content: only for its checkers while they review it, and for the project's team
    once released (``docs/outputs.md``); every view and every refusal is audited."""
    _not_from_a_workspace()
    try:
        f, data = service().view_file(g.user, file_id)
    except OutputError as exc:
        refuse(exc)
    mimetype = "image/png" if f.kind == "image" else "text/plain"
    return _content(data, mimetype, f"{f.id}.{'png' if f.kind == 'image' else 'txt'}", "attachment")


@blp.route("/outputs/requests/<string:request_id>/code")
@blp.doc(security=BEARER, responses={"200": {"description": "The notebook or script the request was sent with"}})
@login_required
def code_content(request_id: str) -> Any:
    """The code the request's current round was sent with (the re-run ran it), without notebook cell
    outputs: only for the request's checkers while they review it (ADR 0029); audited."""
    _not_from_a_workspace()
    try:
        rerun, data = service().view_code(g.user, request_id)
    except OutputError as exc:
        refuse(exc)
    suffix = "ipynb" if rerun.code_kind == "notebook" else rerun.code_path.rsplit(".", 1)[-1].lower()
    return _content(data, "text/plain", f"code-{request_id}.{suffix}", "attachment")


@blp.route("/outputs/requests/<string:request_id>/bundle")
@blp.doc(security=BEARER, responses={"200": {"description": "The release bundle (zip)"}})
@login_required
def bundle(request_id: str) -> Any:
    """The released bundle, for the project's team while the access gate lets them in."""
    _not_from_a_workspace()
    try:
        data, release = service().download(g.user, request_id)
    except OutputError as exc:
        refuse(exc)
    response = _content(data, "application/zip", f"outputs-{release.request_id}.zip", "attachment")
    response.headers["X-Bundle-SHA256"] = release.bundle_sha256
    return response
