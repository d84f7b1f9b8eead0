"""A real worker is killed with SIGKILL while it seals and checks a delivery in one pass, or after it
checked it and before it wrote the verdict; the sweeper gives the job to a new worker and the
delivery becomes version 1 exactly once, with no half copy left. Runs on
the embedded default (SQLite + kombu's SQLAlchemy broker) and, when reachable, PostgreSQL + Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pseudonymisation.deliveries import CHECK_JOB, CHECKED_POINT, READING_POINT
from pseudonymisation.models import DatasetDelivery, DatasetVersion
from tests.celery_workers import Worker, kill_at, wait_for, worker_env, worker_pool
from tests.conftest import REDIS_URL, require_backend
from tests.projects.factories import build_world
from tests.pseudonymisation.test_deliveries import HEADER, write_delivery
from tre.core import jobs, migrate
from tre.core.audit import AuditEvent
from tre.core.testpoints import Barrier

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TYPES = ["integer", "string", "date", "string", "string", "integer"]


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


@pytest.mark.parametrize("point", [READING_POINT, CHECKED_POINT])
def test_delivery_whose_worker_is_killed_becomes_one_version_exactly_once(
    tmp_path: Path, backends: tuple[str, str], workers: list[Worker], point: str
) -> None:
    database_url, broker_url = backends
    instance, landing = tmp_path / "instance", tmp_path / "landing"
    instance.mkdir()
    write_delivery(landing / "2026-12" / "registry.csv", 5_000)
    barrier = Barrier(tmp_path / "testpoints")
    env = worker_env(instance, database_url, broker_url, barrier, landing_dir=landing)
    migrate.upgrade(database_url)
    from pseudonymisation.delivery_tasks import deliveries_service
    from tre.app import create_app

    app = create_app({"TRE_SETTINGS": {"instance_path": instance, "database_url": database_url,
                                       "broker_url": broker_url, "landing_dir": landing}})
    db = app.extensions["tre.db"]
    w = build_world(app)
    ds = w.svc.register_dataset(
        w.custodian, name="clinic_registry", title="Clinic registry", description="", source_kind="csv",
        source_location=str(landing / "2026-12" / "registry.csv"), sensitivity="special_category",
        columns=[{"name": c, "role": "attribute", "data_type": t} for c, t in zip(HEADER, TYPES, strict=True)],
    )
    log = tmp_path / "worker.log"
    barrier.arm(point)  # the first attempt holds there until killed
    workers.append(Worker(env, log))

    with app.app_context():
        delivery = deliveries_service(app.extensions["tre.platform"]).receive(w.custodian, ds.id,
                                                                             "2026-12/registry.csv")
    delivery_id = delivery.id

    kill_at(barrier, point, workers[0], log, timeout=90)

    def state() -> tuple[str, int]:
        with db.session_factory() as s:
            job = s.scalar(select(jobs.Job).where(jobs.Job.kind == CHECK_JOB))
            return s.get(DatasetDelivery, delivery_id).state, job.attempts

    assert state() == ("checking", 1)  # killed before the verdict
    with db.session_factory() as s:
        stored = s.get(DatasetDelivery, delivery_id).stored_path
    if point == READING_POINT:  # mid-way through the one pass: no copy recorded, none in place
        assert stored is None
        assert (instance / "identifiable").is_dir()  # the default zone, where the sealing began
        assert not list((instance / "identifiable").rglob("registry.csv"))
    workers.append(Worker(env, log))

    def done() -> bool:
        # The verdict commits inside the job; the job is marked succeeded in the queue's own commit after
        # it, so a loaded machine can be seen between the two: wait for both.
        with db.session_factory() as s:
            job = s.scalar(select(jobs.Job).where(jobs.Job.kind == CHECK_JOB))
            return s.get(DatasetDelivery, delivery_id).state == "accepted" and job.state == jobs.SUCCEEDED

    wait_for(done, 180, "the delivery's verdict and its job's end", log)

    with db.session_factory() as s:
        versions = s.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)).all()
        done = s.get(DatasetDelivery, delivery_id)
        job = s.scalar(select(jobs.Job).where(jobs.Job.kind == CHECK_JOB))
        checks = s.scalar(select(func.count()).select_from(AuditEvent)
                          .where(AuditEvent.action == "dataset.delivery_check"))
    assert [(v.version, v.rows) for v in versions] == [(1, 5_000)]
    assert done.version == 1 and done.rows == 5_000
    assert job.state == jobs.SUCCEEDED and job.attempts == 2
    assert checks == 1
    assert [p.name for p in Path(done.stored_path).parent.iterdir()] == ["registry.csv"]  # no half copy left
    db.dispose()
