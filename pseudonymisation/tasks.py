"""Background work of the extract service, as thin database-backed jobs, and its closure hook.

The handlers find the platform through the app context the worker provides, build the service
and call it; the service functions are what the tests exercise.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy.orm import Session

from projects.closure import register_destruction_hook
from pseudonymisation.services import BUILD_JOB, MERGE_JOB, PARTITION_JOB, Extracts, ExtractServiceError
from tre.core.jobs import JobContext, PermanentJobError, job_handler


def _platform() -> Any:
    from flask import current_app

    return current_app.extensions["tre.platform"]


def extracts_service(platform: Any, session: Session | None = None, request_id: str | None = None) -> Extracts:
    return Extracts(session or platform.db.session, platform.audit, platform.keys,
                    platform.settings.extracts_path, request_id=request_id, files=platform.files,
                    chunk_rows=platform.settings.extract_chunk_rows,
                    partition_rows=platform.settings.extract_partition_rows)


@job_handler(BUILD_JOB, queue="extracts")
def build_extract(ctx: JobContext) -> dict[str, Any]:
    service = extracts_service(_platform(), ctx.session)
    try:
        manifest = service.build(ctx.payload["extract_id"], progress=ctx.report_progress)
    except ExtractServiceError as exc:
        raise PermanentJobError(str(exc)) from None
    if manifest is None:
        return {"fanned_out": True}  # the partition jobs and then the merge job finish it
    return {"datasets": sorted(manifest.get("manifests", {}))}


@job_handler(PARTITION_JOB, queue="extracts")
def build_partition(ctx: JobContext) -> dict[str, Any]:
    service = extracts_service(_platform(), ctx.session)
    p = ctx.payload
    try:
        done = service.build_partition(p["extract_id"], p["dataset"], p["partition"], job_id=ctx.job_id,
                                       progress=ctx.report_progress)
    except ExtractServiceError as exc:
        raise PermanentJobError(str(exc)) from None
    return {"dataset": p["dataset"], "partition": p["partition"]["index"], "pid": os.getpid(), **done}


@job_handler(MERGE_JOB, queue="extracts")
def merge_extract(ctx: JobContext) -> dict[str, Any]:
    service = extracts_service(_platform(), ctx.session)
    try:
        manifest = service.merge(ctx.payload["extract_id"], progress=ctx.report_progress)
    except ExtractServiceError as exc:
        raise PermanentJobError(str(exc)) from None
    return {"datasets": sorted(manifest.get("manifests", {}))}


def _destroy(session: Session, project_id: str) -> dict[str, Any]:
    return extracts_service(_platform(), session).destroy_for_project(session, project_id)


register_destruction_hook("extracts-and-project-key", _destroy)
