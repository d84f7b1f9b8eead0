"""Prometheus metrics: request latency and background jobs, for this machine or a token holder."""

from __future__ import annotations

from typing import Any

from tre.core import jobs
from tre.core.db import transaction


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
