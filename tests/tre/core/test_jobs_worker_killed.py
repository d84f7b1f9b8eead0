"""A real Celery worker is killed with SIGKILL mid-job; the sweeper brings the job back and a new
worker finishes it exactly once. Runs on the embedded default (SQLite + kombu's SQLAlchemy broker)
and, when reachable, on PostgreSQL with Redis and with RabbitMQ."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RABBITMQ_URL, REDIS_URL, require_backend
from tre.core import jobs, migrate
from tre.core.db import transaction

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite+sqla", "postgresql+redis", "postgresql+rabbitmq"])
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite+sqla":
        return f"sqlite:///{tmp_path / 'tre.sqlite'}", f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    database_url: str = request.getfixturevalue("database_url_postgres")
    if request.param == "postgresql+redis":
        require_backend("redis", REDIS_URL)
        return database_url, REDIS_URL
    require_backend("rabbitmq", RABBITMQ_URL)
    return database_url, RABBITMQ_URL


@pytest.fixture
def database_url_postgres(postgres_database: str) -> str:
    from tests.conftest import _reset_postgres

    _reset_postgres(postgres_database)
    return postgres_database


class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log.open("ab")
        argv = [
            sys.executable, "-m", "celery", "-A", "tre.worker", "worker", "--beat",
            "--schedule", str(Path(env["TRE_INSTANCE_PATH"]) / "beat-schedule"),
            "--concurrency", "1", "-Q", ",".join(jobs.QUEUES), "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def started_workers() -> Iterator[list[Worker]]:
    workers: list[Worker] = []
    yield workers
    for worker in workers:
        worker.stop()


def _wait_for(condition: Any, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}; worker log ends:\n{tail}")


def test_job_whose_worker_is_killed_is_finished_exactly_once_by_another_worker(
    tmp_path: Path, backends: tuple[str, str], started_workers: list[Worker]
) -> None:
    database_url, broker_url = backends
    instance = tmp_path / "instance"
    instance.mkdir()
    env = dict(
        os.environ,
        TRE_INSTANCE_PATH=str(instance),
        TRE_DATABASE_URL=database_url,
        TRE_BROKER_URL=broker_url,
        TRE_JOB_LEASE_SECONDS="2",
        TRE_JOB_SWEEP_INTERVAL_SECONDS="1",
        TRE_JOB_REQUEUE_AFTER_SECONDS="4",
    )
    migrate.upgrade(database_url)
    from tre.app import create_app

    app = create_app({"TRE_SETTINGS": {
        "instance_path": instance, "database_url": database_url, "broker_url": broker_url,
    }})
    db = app.extensions["tre.db"]
    marker = tmp_path / "marker.log"
    log = tmp_path / "worker.log"

    started_workers.append(Worker(env, log))
    with transaction(db.session) as s:
        job_id = jobs.enqueue(s, "kernel.selftest", {"sleep": 8, "marker_file": str(marker)}).id

    _wait_for(lambda: marker.exists() and "started" in marker.read_text(), 60, "the first start", log)
    started_workers[0].kill()

    started_workers.append(Worker(env, log))

    def state() -> jobs.Job:
        with db.session_factory() as s:
            job = s.get(jobs.Job, job_id)
            assert job is not None
            s.expunge(job)
            return job

    _wait_for(lambda: state().state in (jobs.SUCCEEDED, jobs.FAILED), 90, "the job to finish", log)
    time.sleep(3)  # give a stray duplicate delivery the chance to run, if one existed

    job = state()
    starts = marker.read_text().splitlines()
    assert job.state == jobs.SUCCEEDED
    assert job.attempts == 2
    assert len(starts) == 2, starts
    assert job.result is not None and job.result["attempt"] == 2
    db.dispose()
