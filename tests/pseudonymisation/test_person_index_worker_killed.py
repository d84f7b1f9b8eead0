"""A real worker is killed with SIGKILL while building the person index, after linking and before
writing; the sweeper gives the job to a second worker, which builds the index once, and that index
is the one an uninterrupted build of the same inputs makes. On the embedded default (SQLite + kombu's
SQLAlchemy transport) and, when reachable, PostgreSQL + Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from pseudonymisation.person_index import RUN_JOB
from pseudonymisation.person_index_models import LinkageRun, PersonIndexEntry
from pseudonymisation.tasks import person_index_service
from tests.celery_workers import Worker, drain, kill_at, wait_for, worker_env, worker_pool
from tests.conftest import REDIS_URL, require_backend
from tests.projects.factories import build_world
from tests.pseudonymisation.test_person_index import _entries, _register
from tre.core import jobs, migrate
from tre.core.testpoints import Barrier
from tre.demo import linkage_sources

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

POINT = "linkage.build.before_write"  # linked and scored, nothing written yet


@pytest.fixture(params=["sqlite+sqla", "postgresql+redis"])
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite+sqla":
        return f"sqlite:///{tmp_path / 'tre.sqlite'}", f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    from tests.conftest import _reset_postgres

    database_url: str = request.getfixturevalue("postgres_database")
    require_backend("redis", REDIS_URL)
    _reset_postgres(database_url)
    return database_url, REDIS_URL


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    with worker_pool() as started:
        yield started


def test_person_index_worker_killed_before_writing_is_built_once_by_another_worker_the_same(
    tmp_path: Path, backends: tuple[str, str], workers: list[Worker]
) -> None:
    database_url, broker_url = backends
    instance = tmp_path / "instance"
    instance.mkdir()
    made = linkage_sources.generate(300, seed=9)
    paths = linkage_sources.write(made, tmp_path / "sources")
    barrier = Barrier(tmp_path / "testpoints")
    env = worker_env(instance, database_url, broker_url, barrier)
    migrate.upgrade(database_url)
    from tre.app import create_app

    app: Any = create_app({"TRE_SETTINGS": {
        "instance_path": instance, "database_url": database_url, "broker_url": broker_url,
    }})
    db = app.extensions["tre.db"]
    log = tmp_path / "workers.log"
    try:
        w = build_world(app)
        _register(app, w, paths)
        barrier.arm(POINT)
        workers.append(Worker(env, log))
        with app.app_context():
            run_id = person_index_service(app.extensions["tre.platform"]).request_run(w.custodian).id

        kill_at(barrier, POINT, workers[0], log, timeout=240)
        with db.session_factory() as s:
            run = s.get(LinkageRun, run_id)
            assert run is not None and run.state == "running"
            assert s.scalar(select(func.count()).select_from(PersonIndexEntry)) == 0  # nothing half-written
            (job,) = s.scalars(select(jobs.Job).where(jobs.Job.kind == RUN_JOB)).all()
            assert job.state == jobs.RUNNING and job.attempts == 1

        workers.append(Worker(env, log))

        def state() -> str:
            with db.session_factory() as s:
                found = s.get(LinkageRun, run_id)
                assert found is not None
                return found.state

        wait_for(lambda: state() in ("succeeded", "failed"), 300, "the index to be built", log)
        assert set(drain(workers, broker_url, db, {job.id})) <= {"not-claimed"}
        final = state()
        with db.session_factory() as s:
            (job,) = s.scalars(select(jobs.Job).where(jobs.Job.kind == RUN_JOB)).all()
            assert (final, job.state, job.attempts) == ("succeeded", jobs.SUCCEEDED, 2)
            settings = s.get(LinkageRun, run_id).settings  # type: ignore[union-attr]
            fresh = LinkageRun(inputs_sha256="uninterrupted", settings=settings)
            s.add(fresh)
            s.commit()
            fresh_id = fresh.id
        with app.app_context(), db.session_factory() as s:
            person_index_service(app.extensions["tre.platform"], s).build(fresh_id)
            s.commit()
        built = _entries(app, run_id)
        assert len(built) == sum(t.num_rows for t in made.tables.values())
        assert built == _entries(app, fresh_id)
    finally:
        db.dispose()
