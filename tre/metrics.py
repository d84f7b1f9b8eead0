"""Prometheus metrics: request latency per route, and background jobs read from the database.

Job and queue figures come from the jobs table at scrape time, so they are right whichever
process did the work. Request latency is measured in each web process; under gunicorn the
processes share it through ``PROMETHEUS_MULTIPROC_DIR`` (set by ``tre run``).
"""

from __future__ import annotations

import datetime as dt
import hmac
import os
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from tre.access import public
from tre.core.db import utcnow
from tre.core.jobs import FAILED, QUEUED, SUCCEEDED, Job

bp = Blueprint("metrics", __name__)

REQUEST_SECONDS = Histogram(
    "tre_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["endpoint", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class JobCollector(Collector):
    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        db = self.app.extensions["tre.db"]
        by_state = GaugeMetricFamily("tre_jobs", "Background jobs by kind and state", labels=["kind", "state"])
        oldest = GaugeMetricFamily(
            "tre_job_queue_oldest_seconds", "Age of the oldest job waiting for a worker", labels=["queue"]
        )
        duration = GaugeMetricFamily(
            "tre_job_mean_duration_seconds", "Mean run time of jobs finished in the last hour", labels=["kind"]
        )
        with db.session_factory() as s:
            for kind, state, count in s.execute(
                select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
            ):
                by_state.add_metric([kind, state], count)
            now = utcnow()
            for queue, first in s.execute(
                select(Job.queue, func.min(Job.created_at)).where(Job.state == QUEUED).group_by(Job.queue)
            ):
                if first is not None:
                    first = first if first.tzinfo else first.replace(tzinfo=now.tzinfo)
                    oldest.add_metric([queue], (now - first).total_seconds())
            # Only the last hour's finished jobs are read (a range of ix_jobs_finished_at), not every job
            # that ever ran: the table keeps them all, and the scrape comes every few seconds.
            totals: dict[str, list[float]] = {}
            for kind, started, finished in s.execute(
                select(Job.kind, Job.started_at, Job.finished_at).where(
                    Job.finished_at >= now - dt.timedelta(hours=1),
                    Job.state.in_((SUCCEEDED, FAILED)),
                    Job.started_at.is_not(None),
                )
            ):
                totals.setdefault(kind, []).append((finished - started).total_seconds())
            for kind, values in totals.items():
                duration.add_metric([kind], sum(values) / len(values))
        yield by_state
        yield oldest
        yield duration


def _registry(app: Flask) -> CollectorRegistry:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(REQUEST_SECONDS)
    registry.register(JobCollector(app))
    return registry


@bp.get("/metrics")
@public
def metrics() -> Response:
    """Scraped by Prometheus: with the configured bearer token, or from this machine when none is set."""
    token = current_app.extensions["tre.settings"].metrics_token
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            abort(401)
    elif request.remote_addr not in {"127.0.0.1", "::1"}:
        abort(403)
    return Response(generate_latest(_registry(current_app._get_current_object())), mimetype=CONTENT_TYPE_LATEST)  # type: ignore[attr-defined]


def _start_timer() -> None:
    g.started_at = time.perf_counter()


def _observe(response: Any) -> Any:
    started = g.get("started_at")
    if started is not None:
        REQUEST_SECONDS.labels(request.endpoint or "unmatched", request.method, str(response.status_code)).observe(
            time.perf_counter() - started
        )
    return response


def init_app(app: Flask) -> None:
    app.before_request(_start_timer)
    app.after_request(_observe)
