"""The delivery check and the expiry of idle uploads as thin database-backed jobs
(``pseudonymisation.deliveries.Deliveries.check``, ``pseudonymisation.uploads.Uploads.expire_idle``)."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from sqlalchemy.orm import Session

from pseudonymisation.database_sources import parse_sources
from pseudonymisation.deliveries import CHECK_JOB, Deliveries
from pseudonymisation.landing_s3 import S3Landing
from pseudonymisation.uploads import EXPIRE_JOB, Uploads
from tre.core.jobs import Job, JobContext, job_handler, on_worker_lost, periodic


def _platform() -> Any:
    from flask import current_app

    return current_app.extensions["tre.platform"]


def landing_s3_for(settings: Any) -> S3Landing | None:
    """The landing bucket when ``TRE_LANDING_S3_BUCKET`` is set (boto3 needed), else None."""
    if not settings.landing_s3_bucket:
        return None
    return _landing_s3(settings.landing_s3_bucket, settings.landing_s3_prefix, settings.landing_s3_endpoint_url,
                       settings.landing_s3_region)


@functools.lru_cache(maxsize=4)
def _landing_s3(bucket: str, prefix: str, endpoint_url: str, region: str) -> S3Landing:
    # One client per process and setting: making one costs tens of milliseconds, and they are thread-safe.
    try:
        import boto3  # noqa: PLC0415 - optional: only deployments that land files in S3 install it
    except ImportError:
        from tre.core.config import ConfigError

        raise ConfigError("TRE_LANDING_S3_BUCKET is set but boto3 is not installed: pip install 'tre[s3]'") from None
    client = boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None)
    return S3Landing(client, bucket, prefix)


def deliveries_service(platform: Any, session: Session | None = None, request_id: str | None = None) -> Deliveries:
    settings = platform.settings
    return Deliveries(session or platform.db.session, platform.audit, request_id=request_id,
                      landing_dir=settings.landing_dir, identifiable_path=settings.identifiable_path,
                      keys=platform.keys, landing_s3=landing_s3_for(settings),
                      database_sources=parse_sources(settings.database_sources))


def uploads_service(platform: Any, session: Session | None = None, request_id: str | None = None) -> Uploads:
    settings = platform.settings
    return Uploads(session or platform.db.session, platform.audit, request_id=request_id,
                   identifiable_path=settings.identifiable_path, chunk_bytes=settings.upload_chunk_bytes,
                   expiry=dt.timedelta(hours=settings.upload_expiry_hours),
                   deliveries=deliveries_service(platform, session, request_id))


@job_handler(EXPIRE_JOB)
def expire_idle_uploads(ctx: JobContext) -> dict[str, Any]:
    return {"expired": uploads_service(_platform(), ctx.session).expire_idle()}


periodic(EXPIRE_JOB, 600)


@job_handler(CHECK_JOB, queue="extracts")
def check_delivery(ctx: JobContext) -> dict[str, Any]:
    service = deliveries_service(_platform(), ctx.session)
    try:
        return service.check(ctx.payload["delivery_id"], progress=ctx.report_progress)
    except Exception as exc:
        ctx.session.rollback()
        job = ctx.session.get(Job, ctx.job_id)
        ctx.session.rollback()  # end the read: on SQLite it holds the write lock
        if job is not None and ctx.attempt >= job.max_attempts:
            service.fail(ctx.payload["delivery_id"], f"The check failed ({type(exc).__name__}); deliver it again")
        raise


@on_worker_lost(CHECK_JOB)
def _worker_lost(session: Session, payload: dict[str, Any], reason: str) -> None:
    """The sweeper gave up on a check whose worker died in its last attempt: the delivery is marked
    failed (audited) rather than left 'checking', and the custodian may deliver it again."""
    deliveries_service(_platform(), session).fail(payload["delivery_id"], reason)
