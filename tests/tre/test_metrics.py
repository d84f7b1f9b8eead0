"""Prometheus metrics: request latency and background jobs, for this machine or a token holder."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.statements import count_rows
from tre.core import jobs
from tre.core.db import transaction, utcnow


def test_metrics_report_request_latency_and_jobs_by_state(sqlite_app: Any, client: Any) -> None:
    jobs.set_dispatcher(None)
    db = sqlite_app.extensions["tre.db"]
    with transaction(db.session) as s:
        jobs.enqueue(s, "kernel.selftest", {})
    client.get("/healthz")

    body = client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_data(as_text=True)

    assert 'tre_http_request_duration_seconds_count{endpoint="health.healthz",method="GET",status="200"}' in body
    assert 'tre_jobs{kind="kernel.selftest",state="queued"} 1.0' in body
    assert 'tre_job_queue_oldest_seconds{queue="default"}' in body


def test_mean_job_duration_reads_only_the_jobs_finished_in_the_last_hour(app: Any) -> None:
    db = app.extensions["tre.db"]
    now = utcnow()

    def finished(key: str, ended: dt.datetime, seconds: int) -> jobs.Job:
        return jobs.Job(
            kind="kernel.selftest",
            idempotency_key=key,
            state=jobs.SUCCEEDED,
            started_at=ended - dt.timedelta(seconds=seconds),
            finished_at=ended,
        )

    with transaction(db.session) as s:
        s.add(finished("recent", now - dt.timedelta(minutes=10), 4))
        s.add_all(finished(f"old-{i}", now - dt.timedelta(days=30, minutes=i), 100) for i in range(20))
    client = app.test_client()

    rows, response = count_rows(app, lambda: client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}))

    body = response.get_data(as_text=True)
    assert 'tre_job_mean_duration_seconds{kind="kernel.selftest"} 4.0' in body  # the old jobs are not averaged
    assert 'tre_jobs{kind="kernel.selftest",state="succeeded"} 21.0' in body
    assert rows == 2  # the one state count and the one job of the last hour: not the 20 before it


def test_metrics_are_refused_to_other_machines_when_no_token_is_set(client: Any) -> None:
    response = client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"})

    assert response.status_code == 403


def test_metrics_need_the_configured_token(tmp_path: Any) -> None:
    from tests.conftest import make_test_app

    app = make_test_app(tmp_path / "i", f"sqlite:///{tmp_path / 'm.sqlite'}", metrics_token="s3cret-scrape")
    from tre.models import metadata

    metadata.create_all(app.extensions["tre.db"].engine)
    c = app.test_client()

    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"}).status_code == 200
