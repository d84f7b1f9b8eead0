"""A long extract fanned out over real worker processes (``celery -A tre.worker``, as ``tre worker``
starts it): the first worker is killed with SIGKILL in the middle of a partition, two others take
the remaining partitions and the killed one, and the merged extract is byte for byte the one a
single run of the pipeline makes. On the embedded default (SQLite + kombu's SQLAlchemy transport)
and, when reachable, PostgreSQL + Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from sqlalchemy import select

from pseudonymisation.models import Extract
from pseudonymisation.pipeline import ExtractKeys, ExtractOptions, run_extract
from pseudonymisation.services import BUILD_JOB, LINKAGE, MERGE_JOB, PARTITION_JOB, _key
from pseudonymisation.tasks import extracts_service
from tests.celery_workers import Worker, drain, kill_at, wait_for, worker_env, worker_pool
from tests.conftest import REDIS_URL, require_backend
from tests.projects.factories import TODAY, build_world, publish_agreement
from tests.pseudonymisation.conftest import event_schema, make_table, write_parquet
from tre.core import jobs, migrate
from tre.core.testpoints import Barrier

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

CHUNK_ROWS = 100_000
PARTITION_ROWS = 300_000  # 2.4 M rows: 24 chunks, 8 partitions of 3 chunks
MID_PARTITION = f"job.progress.{PARTITION_JOB}"  # after each chunk of a partition
APPROVED = ["nhs_number", "date_of_birth", "postcode", "sex", "event_date", "code", "value"]


@pytest.fixture(scope="module")
def long_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    block = make_table(200_000, patients=20_000, seed=3)
    table = pa.concat_tables([block] * 12)
    return write_parquet(table, tmp_path_factory.mktemp("long") / "events.parquet", row_group_rows=64_000)


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


def _active_project(app: Any, source: Path) -> tuple[Any, Any]:
    w = build_world(app)
    schema = event_schema()
    w.svc.register_dataset(
        w.custodian, name="events", title="Events", description="Events", source_kind="parquet",
        source_location=str(source), sensitivity="special_category",
        columns=[{"name": c.name, "role": str(c.role), "description": c.name, "sensitivity": "special_category"}
                 for c in schema.columns],
        schema_spec=schema.to_dict(),
    )
    p = w.svc.create_project(w.pi, "Long extract")
    w.svc.update_application(
        w.pi, p.id, lay_summary="s", scientific_purpose="s", public_benefit="s", legal_basis="6(1)(e)",
        ethics_reference="IRAS 1", funder="NIHR", start_date=TODAY, end_date=TODAY.replace(year=TODAY.year + 1),
    )
    from projects.models import Dataset

    dataset_id = app.extensions["tre.db"].session.scalar(select(Dataset.id).where(Dataset.name == "events"))
    w.svc.set_dataset_request(w.pi, p.id, dataset_id, APPROVED, "analysis")
    w.svc.submit(w.pi, p.id)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "fine")
    w.svc.cast_vote(w.drew, p.id, "approve", "fine")
    w.svc.decide(w.chair, p.id, "approved")
    publish_agreement(w)
    w.svc.activate(w.pi, p.id)
    return w, p


def _parent_pid(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def test_a_long_extract_over_real_workers_one_killed_mid_partition_equals_the_single_run(
    tmp_path: Path, backends: tuple[str, str], long_source: Path, workers: list[Worker]
) -> None:
    database_url, broker_url = backends
    instance = tmp_path / "instance"
    instance.mkdir()
    barrier = Barrier(tmp_path / "testpoints")
    env = worker_env(instance, database_url, broker_url, barrier, extract_chunk_rows=CHUNK_ROWS,
                     extract_partition_rows=PARTITION_ROWS)
    migrate.upgrade(database_url)
    from tre.app import create_app

    app = create_app({"TRE_SETTINGS": {
        "instance_path": instance, "database_url": database_url, "broker_url": broker_url,
        "extract_chunk_rows": CHUNK_ROWS, "extract_partition_rows": PARTITION_ROWS,
    }})
    db = app.extensions["tre.db"]
    log = tmp_path / "workers.log"
    try:
        w, p = _active_project(app, long_source)
        barrier.arm(MID_PARTITION)
        workers.append(Worker(env, log))
        with app.app_context():
            extract_id = extracts_service(app.extensions["tre.platform"]).request(w.custodian, p.id).id

        def partition_jobs() -> list[jobs.Job]:
            with db.session_factory() as s:
                found = list(s.scalars(select(jobs.Job).where(jobs.Job.kind == PARTITION_JOB)))
                s.expunge_all()
                return found

        # The first worker alone: it builds, fans out, and holds after the first chunk of its first
        # partition, until it is killed there.
        kill_at(barrier, MID_PARTITION, workers[0], log, timeout=240)
        running = [j for j in partition_jobs() if j.state == jobs.RUNNING]
        assert len(running) == 1 and running[0].attempts == 1 and 0 < running[0].progress < 1
        killed = [j.id for j in running]
        # Two more workers share the rest. So that both surely take partitions, however unequal
        # their starts, the first holds in its first partition until the second has started.
        barrier.arm(MID_PARTITION)
        workers.append(Worker(env, log))
        held = barrier.wait_reached(MID_PARTITION, timeout=240)
        assert os.getpgid(held["pid"]) == workers[1].proc.pid
        workers.append(Worker(env, log))

        def taken() -> int:  # partitions claimed since the kill: the held one, then the second worker's
            return sum(j.state in (jobs.RUNNING, jobs.SUCCEEDED) and not (j.id in killed and j.attempts == 1)
                       for j in partition_jobs())

        wait_for(lambda: taken() >= 2, 240, "the second worker to take a partition", log)
        barrier.release(MID_PARTITION)

        def extract_state() -> str:
            with db.session_factory() as s:
                extract = s.get(Extract, extract_id)
                assert extract is not None
                return extract.state

        wait_for(lambda: extract_state() in ("succeeded", "failed"), 420, "the extract to be merged", log)
        # Which worker ran each partition (a job's result names its pool process), while they live.
        survivors = {workers[1].proc.pid, workers[2].proc.pid}
        owners = {_parent_pid(j.result["pid"]) for j in partition_jobs()
                  if j.result is not None and (j.id not in killed or j.attempts == 2)}
        # The merge marks the extract done before its job records success: stop the workers gently
        # (each finishes what it runs) and run every message still queued: each must be a no-op.
        with db.session_factory() as s:
            kinds = (BUILD_JOB, PARTITION_JOB, MERGE_JOB)
            job_ids = set(s.scalars(select(jobs.Job.id).where(jobs.Job.kind.in_(kinds))))
        assert set(drain(workers, broker_url, db, job_ids)) <= {"not-claimed"}
        with db.session_factory() as s:
            extract = s.get(Extract, extract_id)
            assert extract is not None and extract.state == "succeeded"
            manifest = extract.manifest["manifests"]["events"]
            merges = [(j.state, j.attempts) for j in s.scalars(select(jobs.Job).where(jobs.Job.kind == MERGE_JOB))]
            platform = app.extensions["tre.platform"]
            keys = ExtractKeys(_key(s, platform.keys, LINKAGE, create=False),
                               _key(s, platform.keys, f"project:{p.id}", create=False))

        done = partition_jobs()
        assert len(done) == 8 and all(j.state == jobs.SUCCEEDED for j in done)
        assert merges == [(jobs.SUCCEEDED, 1)]  # merged exactly once
        # The killed partition was finished by another worker, on its second attempt.
        (resumed,) = [j for j in done if j.id in killed]
        assert resumed.attempts == 2
        # Both surviving workers took partitions.
        assert survivors <= owners, (survivors, owners)

        single_dir = tmp_path / "single"
        single = run_extract(ExtractOptions(long_source, event_schema(), APPROVED, single_dir, keys,
                                            chunk_rows=CHUNK_ROWS, project_id=p.id))
        assert manifest == single
        fanned_dir = app.extensions["tre.settings"].extracts_path / p.id / "events"
        assert sorted(x.name for x in (fanned_dir / "data").iterdir()) == [f"part-{i:06d}.parquet" for i in range(24)]
        for part in (single_dir / "data").iterdir():
            assert (fanned_dir / "data" / part.name).read_bytes() == part.read_bytes(), part.name
    finally:
        db.dispose()
