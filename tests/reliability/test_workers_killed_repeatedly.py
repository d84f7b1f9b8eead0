"""Workers are killed with SIGKILL again and again, in a row, in the middle of the same job: an
automated output check, and an extract build. Each time the sweeper takes the job back after its
lease runs out and the next real worker process (``celery -A tre.worker``, as ``tre worker`` starts
it) picks it up; the job ends done exactly once in effect, on the attempt after the last kill
(normally its third and last), and nothing is lost or done twice. Extends the single-kill tests in
tests/tre/core/test_jobs_worker_killed.py, tests/disclosure/test_checks_worker_killed.py and
tests/pseudonymisation/ (embedded default: SQLite + kombu's SQLAlchemy transport, to keep the run
short)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from sqlalchemy import func, select

from disclosure.models import OutputCheck, OutputRequest
from pseudonymisation.models import Extract
from pseudonymisation.pipeline import ExtractKeys, ExtractOptions, run_extract
from pseudonymisation.services import BUILD_JOB, LINKAGE, _key
from pseudonymisation.tasks import extracts_service
from tests.celery_workers import Worker, drain, kill_at, wait_for, worker_env, worker_pool
from tests.disclosure.factories import active_project, person
from tests.disclosure.test_checks_worker_killed import POINT, submit, write_big_extract
from tests.pseudonymisation.conftest import event_schema, make_table, write_parquet
from tests.pseudonymisation.test_partitioned_extracts_workers import APPROVED, _active_project
from tests.security.figures import record
from tre.core import jobs, migrate
from tre.core.audit import AuditEvent
from tre.core.testpoints import Barrier

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

KILLS = 2  # a job has 3 attempts: killed on the first and the second, done on the third
CHUNK_ROWS = 20_000  # 30 chunks: each killed attempt holds after one, the last resumes from there


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    with worker_pool() as started:
        yield started


def _setup(tmp_path: Path, **settings: Any) -> tuple[Any, dict[str, str], Barrier]:
    instance = tmp_path / "instance"
    instance.mkdir()
    database_url = f"sqlite:///{tmp_path / 'tre.sqlite'}"
    broker_url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    barrier = Barrier(tmp_path / "testpoints")
    env = worker_env(instance, database_url, broker_url, barrier, **settings)
    migrate.upgrade(database_url)
    from tre.app import create_app

    app = create_app(
        {"TRE_SETTINGS": {"instance_path": instance, "database_url": database_url, "broker_url": broker_url,
                          **settings}}
    )
    return app, env, barrier


def _job(app: Any, kind: str) -> jobs.Job | None:
    with app.extensions["tre.db"].session_factory() as s:
        job = s.scalar(select(jobs.Job).where(jobs.Job.kind == kind))
        if job is not None:
            s.expunge(job)
        return job


def _kill_in_a_row(
    app: Any, kind: str, point: str, env: dict[str, str], barrier: Barrier, log: Path, workers: list[Worker]
) -> None:
    """Kill the worker running ``kind`` on each of its first KILLS attempts, in the middle of the
    work: each attempt holds at the test point ``point`` until its worker is killed; the attempt
    after the last kill is left alone."""
    for attempt in range(1, KILLS + 1):
        barrier.arm(point)
        workers.append(Worker(env, log))
        kill_at(barrier, point, workers[-1], log)
        job = _job(app, kind)
        assert job is not None and (job.state, job.attempts) == (jobs.RUNNING, attempt)
        record("reliability: workers SIGKILLed mid-job", 1)
    workers.append(Worker(env, log))


def test_output_check_whose_workers_are_killed_twice_in_a_row_reaches_one_verdict(
    tmp_path: Path, workers: list[Worker]
) -> None:
    app, env, barrier = _setup(tmp_path)
    db = app.extensions["tre.db"]
    platform = app.extensions["tre.platform"]
    author = person(app, "rita", ["researcher"])
    person(app, "olive", ["output_checker"])
    project = active_project(app, author)
    write_big_extract(Path(env["TRE_INSTANCE_PATH"]), project.id)
    token = platform.tokens.issue(
        author.id, "tre-api", "output-submit", dt.timedelta(minutes=30), project_id=project.id
    )
    log = tmp_path / "worker.log"
    response = submit(app.test_client(), token, "run-1")
    assert response.status_code == 201, response.get_data(as_text=True)
    request_id = response.json["id"]

    _kill_in_a_row(app, "outputs.check", POINT, env, barrier, log, workers)

    def state() -> str:
        with db.session_factory() as s:
            return s.get(OutputRequest, request_id).state

    wait_for(lambda: state() == "awaiting_review", 240, "the request's verdict", log)
    check_job = _job(app, "outputs.check")
    assert check_job is not None
    assert set(drain(workers, env["TRE_BROKER_URL"], db, {check_job.id})) <= {"not-claimed"}

    with db.session_factory() as s:
        requests = s.scalar(select(func.count()).select_from(OutputRequest))
        checks = s.scalars(select(OutputCheck).where(OutputCheck.request_id == request_id)).all()
        done_events = s.scalars(
            select(AuditEvent).where(AuditEvent.target_id == request_id, AuditEvent.action == "output.checks_done")
        ).all()
        check_events = s.scalars(select(AuditEvent).where(AuditEvent.action == "output.check")).all()
    job = _job(app, "outputs.check")
    assert requests == 1
    assert job is not None and (job.state, job.attempts) == (jobs.SUCCEEDED, KILLS + 1)
    assert len(checks) == 2  # one per file, none from the killed attempts
    table_check = next(c for c in checks if c.recompute.get("status") != "not_applicable")
    assert table_check.recompute["status"] == "done"
    assert len(done_events) == 1 and len(check_events) == 2
    assert platform.audit.verify(_events(db)).ok
    db.dispose()


def _events(db: Any) -> list[AuditEvent]:
    with db.session_factory() as s:
        events = list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        s.expunge_all()
        return events


def test_extract_build_whose_workers_are_killed_twice_in_a_row_equals_a_single_run(
    tmp_path: Path, workers: list[Worker]
) -> None:
    source = write_parquet(
        pa.concat_tables([make_table(100_000, patients=10_000, seed=5)] * 6), tmp_path / "events.parquet",
        row_group_rows=20_000,
    )
    app, env, barrier = _setup(tmp_path, extract_chunk_rows=CHUNK_ROWS, extract_partition_rows=0)
    db = app.extensions["tre.db"]
    log = tmp_path / "worker.log"
    try:
        w, p = _active_project(app, source)
        with app.app_context():
            extract_id = extracts_service(app.extensions["tre.platform"]).request(w.custodian, p.id).id

        # Each attempt holds at its first progress report, just after a chunk's checkpoint.
        _kill_in_a_row(app, BUILD_JOB, f"job.progress.{BUILD_JOB}", env, barrier, log, workers)

        def extract_state() -> str:
            with db.session_factory() as s:
                return s.get(Extract, extract_id).state

        wait_for(lambda: extract_state() in ("succeeded", "failed"), 240, "the extract to finish", log)
        job = _job(app, BUILD_JOB)
        assert job is not None
        assert set(drain(workers, env["TRE_BROKER_URL"], db, {job.id})) <= {"not-claimed"}
        job = _job(app, BUILD_JOB)
        with db.session_factory() as s:
            extract = s.get(Extract, extract_id)
            assert extract is not None and extract.state == "succeeded"
            manifest = extract.manifest["manifests"]["events"]
            extracts = s.scalar(select(func.count()).select_from(Extract))
            built = s.scalars(select(AuditEvent.action).where(AuditEvent.target_id == extract_id)).all()
            platform = app.extensions["tre.platform"]
            keys = ExtractKeys(_key(s, platform.keys, LINKAGE, create=False),
                               _key(s, platform.keys, f"project:{p.id}", create=False))
        assert job is not None and (job.state, job.attempts) == (jobs.SUCCEEDED, KILLS + 1)
        assert extracts == 1
        assert built.count("extract.build") == 1, built
        single = run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "single", keys,
                                            chunk_rows=CHUNK_ROWS, project_id=p.id))
        assert manifest == single
        built_dir = app.extensions["tre.settings"].extracts_path / p.id / "events" / "data"
        for part in (tmp_path / "single" / "data").iterdir():
            assert (built_dir / part.name).read_bytes() == part.read_bytes(), part.name
        assert platform.audit.verify(_events(db)).ok
    finally:
        db.dispose()
