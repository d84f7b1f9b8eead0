"""Facts about the service itself: its version and the background jobs a custodian may watch."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app
from flask_smorest import Blueprint, abort

from tre.access import public, requires
from tre.core.jobs import Job
from tre.core.permissions import Permission

blp = Blueprint("meta", __name__, description="The service itself")


class VersionSchema(ma.Schema):
    service = ma.fields.String(required=True)
    api_version = ma.fields.String(required=True)


class JobSchema(ma.Schema):
    id = ma.fields.String(required=True)
    kind = ma.fields.String(required=True)
    state = ma.fields.String(required=True)
    attempts = ma.fields.Integer(required=True)
    max_attempts = ma.fields.Integer(required=True)
    progress = ma.fields.Float(required=True)
    progress_message = ma.fields.String(required=True)
    last_error = ma.fields.String(allow_none=True)
    created_at = ma.fields.DateTime(required=True)
    finished_at = ma.fields.DateTime(allow_none=True)


@blp.route("/version")
@blp.response(200, VersionSchema)
@public
def version() -> dict[str, Any]:
    """The service name and API version."""
    return {"service": "tre", "api_version": "v1"}


@blp.route("/jobs/<string:job_id>")
@blp.response(200, JobSchema)
@blp.doc(security=[{"bearer": []}])
@requires(Permission.JOB_VIEW)
def get_job(job_id: str) -> Job:
    """The state of one background job (extracts, checks, notifications)."""
    job = current_app.extensions["tre.db"].session.get(Job, job_id)
    if job is None:
        abort(404)
    return job
