"""A real Celery worker is killed with SIGKILL mid-job; the sweeper brings the job back and a new
worker finishes it exactly once. Runs on the embedded default (SQLite + kombu's SQLAlchemy broker)
and, when reachable, on PostgreSQL with Redis and with RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.celery_workers import Worker, drain, kill_at, wait_for, worker_env, worker_pool
from tests.conftest import RABBITMQ_URL, REDIS_URL, require_backend
from tre.core import jobs, migrate
from tre.core.db import transaction
from tre.core.testpoints import Barrier

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


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    with worker_pool() as started:
        yield started


def test_job_whose_worker_is_killed_is_finished_exactly_once_by_another_worker(
    tmp_path: Path, backends: tuple[str, str], workers: list[Worker]
) -> None:
    database_url, broker_url = backends
    instance = tmp_path / "instance"
    instance.mkdir()
    barrier = Barrier(tmp_path / "testpoints")
    env = worker_env(instance, database_url, broker_url, barrier)
    migrate.upgrade(database_url)
    from tre.app import create_app

    app = create_app({"TRE_SETTINGS": {
        "instance_path": instance, "database_url": database_url, "broker_url": broker_url,
    }})
    db = app.extensions["tre.db"]
    marker = tmp_path / "marker.log"
    log = tmp_path / "worker.log"

    # The first attempt holds at its first progress report until its worker is killed there.
    barrier.arm("job.progress.kernel.selftest")
    workers.append(Worker(env, log))
    with transaction(db.session) as s:
        job_id = jobs.enqueue(s, "kernel.selftest", {"sleep": 1, "marker_file": str(marker)}).id

    kill_at(barrier, "job.progress.kernel.selftest", workers[0], log, timeout=60)

    workers.append(Worker(env, log))

    def state() -> jobs.Job:
        with db.session_factory() as s:
            job = s.get(jobs.Job, job_id)
            assert job is not None
            s.expunge(job)
            return job

    wait_for(lambda: state().state in (jobs.SUCCEEDED, jobs.FAILED), 90, "the job to finish", log)
    # Every duplicate delivery still on its way is taken now and does nothing.
    assert set(drain(workers, broker_url, db, {job_id})) <= {"not-claimed"}

    job = state()
    starts = marker.read_text().splitlines()
    assert job.state == jobs.SUCCEEDED
    assert job.attempts == 2
    assert len(starts) == 2, starts
    assert job.result is not None and job.result["attempt"] == 2
    db.dispose()
