"""Background work of the extract service, as thin database-backed jobs, and its closure hook.

The handlers find the platform through the app context the worker provides, build the service
and call it; the service functions are what the tests exercise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from projects.closure import register_destruction_hook
from pseudonymisation import linkage
from pseudonymisation.extract_options import IdentifierInOutput
from pseudonymisation.models import Extract
from pseudonymisation.person_index import RUN_JOB, LinkageServiceError, PersonIndex
from pseudonymisation.person_index_models import LinkageRun
from pseudonymisation.services import BUILD_JOB, MERGE_JOB, PARTITION_JOB, Extracts, ExtractServiceError
from tre.core.filemodes import share_read_only_with_group
from tre.core.jobs import Job, JobContext, PermanentJobError, job_handler, on_worker_lost


def _platform() -> Any:
    from flask import current_app

    return current_app.extensions["tre.platform"]


def extracts_service(platform: Any, session: Session | None = None, request_id: str | None = None) -> Extracts:
    return Extracts(session or platform.db.session, platform.audit, platform.keys,
                    platform.settings.extracts_path, request_id=request_id, files=platform.files,
                    chunk_rows=platform.settings.extract_chunk_rows,
                    partition_rows=platform.settings.extract_partition_rows)


def _run(ctx: JobContext, work: Callable[[Extracts], Any]) -> Any:
    """Run an extract job's work; when it fails for good (a refusal, or its last attempt), the
    extract is marked failed with the reason, so it can be requested again."""
    service = extracts_service(_platform(), ctx.session)
    try:
        return work(service)
    except Exception as exc:
        ctx.session.rollback()
        job = ctx.session.get(Job, ctx.job_id)
        ctx.session.rollback()  # end the read: on SQLite it holds the write lock
        # A column of NHS numbers is refused again on every attempt: fail at once (ADR 0068).
        refused = isinstance(exc, (ExtractServiceError, PermanentJobError, IdentifierInOutput))
        if refused or (job is not None and ctx.attempt >= job.max_attempts):
            service.fail(ctx.payload["extract_id"], exc)
        if isinstance(exc, (ExtractServiceError, IdentifierInOutput)):
            raise PermanentJobError(str(exc)) from None
        raise


def _share_with_project(ctx: JobContext) -> None:
    """Written under umask 077, a finished extract is the service's alone: from now its project's
    unix group reads it and nobody else (service only where the service is not root). Opening a
    workspace shares it again (projects/workspaces.py), so a crash just before this loses nothing."""
    extract = ctx.session.get(Extract, ctx.payload["extract_id"])
    if extract is not None:
        folder = _platform().settings.extracts_path / extract.project_id
        if folder.is_dir():
            share_read_only_with_group(folder, extract.project_id)


@job_handler(BUILD_JOB, queue="extracts")
def build_extract(ctx: JobContext) -> dict[str, Any]:
    manifest = _run(ctx, lambda service: service.build(ctx.payload["extract_id"], progress=ctx.report_progress))
    if manifest is None:
        return {"fanned_out": True}  # the partition jobs and then the merge job finish it
    _share_with_project(ctx)
    return {"datasets": sorted(manifest.get("manifests", {}))}


@job_handler(PARTITION_JOB, queue="extracts")
def build_partition(ctx: JobContext) -> dict[str, Any]:
    p = ctx.payload
    done = _run(ctx, lambda service: service.build_partition(
        p["extract_id"], p["dataset"], p["partition"], job_id=ctx.job_id, progress=ctx.report_progress
    ))
    return {"dataset": p["dataset"], "partition": p["partition"]["index"], "pid": os.getpid(), **done}


@job_handler(MERGE_JOB, queue="extracts")
def merge_extract(ctx: JobContext) -> dict[str, Any]:
    manifest = _run(ctx, lambda service: service.merge(ctx.payload["extract_id"], progress=ctx.report_progress))
    _share_with_project(ctx)
    return {"datasets": sorted(manifest.get("manifests", {}))}


@on_worker_lost(BUILD_JOB)
@on_worker_lost(PARTITION_JOB)
@on_worker_lost(MERGE_JOB)
def _worker_lost(session: Session, payload: dict[str, Any], reason: str) -> None:
    """The sweeper gave up on an extract job whose worker died in its last attempt: the extract is
    marked failed (and audited) instead of staying 'running', so it can be requested again."""
    extracts_service(_platform(), session).fail(payload["extract_id"], PermanentJobError(reason))


# --- the person index ---------------------------------------------------------------------------------

def person_index_service(platform: Any, session: Session | None = None, request_id: str | None = None) -> PersonIndex:
    config = platform.settings
    settings = linkage.LinkageSettings(
        backend=config.linkage_backend, spark_master=config.linkage_spark_master,
        spark_checkpoint_dir=config.linkage_spark_checkpoint_dir or None,
    )
    return PersonIndex(session or platform.db.session, platform.audit, platform.keys, request_id=request_id,
                       settings=settings)


@job_handler(RUN_JOB, queue="extracts")
def build_person_index(ctx: JobContext) -> dict[str, Any]:
    """Build the person index; everything it writes commits with the job's success, once."""
    service = person_index_service(_platform(), ctx.session)
    run_id = ctx.payload["run_id"]
    run = ctx.session.get(LinkageRun, run_id)
    if run is not None and run.state == "queued":
        run.state = "running"
        ctx.session.commit()  # shown as running at once; a killed attempt leaves only this behind
    try:
        quality = service.build(run_id, progress=ctx.report_progress)
    except Exception as exc:
        ctx.session.rollback()
        job = ctx.session.get(Job, ctx.job_id)
        ctx.session.rollback()
        refused = isinstance(exc, (LinkageServiceError, PermanentJobError))
        if refused or (job is not None and ctx.attempt >= job.max_attempts):
            service.fail(run_id, exc)
        if isinstance(exc, LinkageServiceError):
            raise PermanentJobError(str(exc)) from None
        raise
    return {"records": quality["records"], "people": quality["people"]}


@on_worker_lost(RUN_JOB)
def _person_index_worker_lost(session: Session, payload: dict[str, Any], reason: str) -> None:
    person_index_service(_platform(), session).fail(payload["run_id"], PermanentJobError(reason))


def _destroy(session: Session, project_id: str) -> dict[str, Any]:
    return extracts_service(_platform(), session).destroy_for_project(session, project_id)


register_destruction_hook("extracts-and-project-key", _destroy)
