"""A real worker is killed with SIGKILL in the middle of an automated output check; the sweeper
gives the check to a new worker and the request reaches its verdict exactly once. The workspace
sends the same submission twice (same Idempotency-Key) and one request is created. Runs on the
embedded default (SQLite + kombu's SQLAlchemy broker) and, when reachable, PostgreSQL + Redis."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import func, select

from disclosure.models import OutputCheck, OutputRequest
from tests.celery_workers import Worker, drain, kill_at, wait_for, worker_env, worker_pool
from tests.conftest import REDIS_URL, require_backend
from tests.disclosure.factories import active_project, person
from tre.core import jobs, migrate
from tre.core.audit import AuditEvent
from tre.core.testpoints import Barrier

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 200_000  # the kill needs no window: the worker holds at POINT until it is killed
# A file is checked (its table re-computed), the request row is locked and nothing is written yet.
POINT = "outputs.check.file_checked"
SPEC = {
    "dataset": "admissions",
    "filters": [],
    "dims": ["region", "sex"],
    "n_row_dims": 1,
    "statistic": "count",
    "value": None,
    "person": "pid",
}


@pytest.fixture(params=["sqlite+sqla", "postgresql+redis"])
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite+sqla":
        return f"sqlite:///{tmp_path / 'tre.sqlite'}", f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    from tests.conftest import _reset_postgres

    url: str = request.getfixturevalue("postgres_database")
    _reset_postgres(url)
    require_backend("redis", REDIS_URL)
    return url, REDIS_URL


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    with worker_pool() as started:
        yield started


def write_big_extract(instance: Path, project_id: str) -> None:
    rng = np.random.default_rng(11)
    frame = pd.DataFrame(
        {
            "region": rng.choice(["North", "South", "East", "West", "Central"], ROWS),
            "sex": rng.choice(["F", "M"], ROWS),
            "pid": rng.integers(0, ROWS // 2, ROWS),
        }
    )
    folder = instance / "extracts" / project_id / "admissions" / "data"
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "part-00000.parquet")


def submit(client: Any, token: str, key: str) -> Any:
    import json

    return client.post(
        "/api/v1/outputs/requests",
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
        data={
            "title": "Admissions by region and sex",
            "context": "All admissions in the extract, by region and sex",
            "controls": "Small counts suppressed by the session",
            "table_specs": json.dumps({"table.csv": SPEC}),
            "files": [
                (io.BytesIO(b"region,F,M\nNorth,1,2\n"), "table.csv"),
                (io.BytesIO(b"Methods: counts of admissions"), "notes.txt"),
            ],
        },
        content_type="multipart/form-data",
    )


def test_check_whose_worker_is_killed_reaches_its_verdict_exactly_once(
    tmp_path: Path, backends: tuple[str, str], workers: list[Worker]
) -> None:
    database_url, broker_url = backends
    instance = tmp_path / "instance"
    instance.mkdir()
    barrier = Barrier(tmp_path / "testpoints")
    env = worker_env(instance, database_url, broker_url, barrier)
    migrate.upgrade(database_url)
    from tre.app import create_app

    app = create_app(
        {"TRE_SETTINGS": {"instance_path": instance, "database_url": database_url, "broker_url": broker_url}}
    )
    db = app.extensions["tre.db"]
    platform = app.extensions["tre.platform"]
    author = person(app, "rita", ["researcher"])
    person(app, "olive", ["output_checker"])
    project = active_project(app, author)
    write_big_extract(instance, project.id)
    token = platform.tokens.issue(
        author.id, "tre-api", "output-submit", dt.timedelta(minutes=30), project_id=project.id
    )
    log = tmp_path / "worker.log"
    barrier.arm(POINT)  # the first attempt holds there until killed
    workers.append(Worker(env, log))
    client = app.test_client()

    first = submit(client, token, "workspace-run-1")
    again = submit(client, token, "workspace-run-1")

    assert (first.status_code, again.status_code) == (201, 200), first.get_data(as_text=True)
    assert first.json["id"] == again.json["id"]
    request_id = first.json["id"]

    def table_job() -> jobs.Job | None:
        with db.session_factory() as s:
            job = s.scalar(select(jobs.Job).where(jobs.Job.kind == "outputs.check"))
            if job is not None:
                s.expunge(job)
            return job

    kill_at(barrier, POINT, workers[0], log, timeout=90)
    killed = table_job()
    assert killed is not None and (killed.state, killed.attempts) == (jobs.RUNNING, 1)
    workers.append(Worker(env, log))

    def state() -> str:
        with db.session_factory() as s:
            return s.get(OutputRequest, request_id).state

    wait_for(lambda: state() == "awaiting_review", 180, "the request's verdict", log)
    # Every duplicate delivery still on its way is taken now and does nothing.
    assert set(drain(workers, broker_url, db, {killed.id})) <= {"not-claimed"}

    with db.session_factory() as s:
        requests = s.scalar(select(func.count()).select_from(OutputRequest))
        checks = s.scalars(select(OutputCheck).where(OutputCheck.request_id == request_id)).all()
        events = s.scalars(select(AuditEvent.action).where(AuditEvent.target_id == request_id)).all()
        check_events = s.scalars(select(AuditEvent).where(AuditEvent.action == "output.check")).all()
    job = table_job()
    assert requests == 1
    assert len(checks) == 2
    table_check = next(c for c in checks if c.recompute.get("status") != "not_applicable")
    assert table_check.recompute["status"] == "done"
    assert job is not None and job.state == jobs.SUCCEEDED and job.attempts == 2
    assert events.count("output.checks_done") == 1
    assert len(check_events) == 2
    db.dispose()
