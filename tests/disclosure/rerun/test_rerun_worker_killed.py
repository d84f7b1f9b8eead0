"""A real worker is killed with SIGKILL just after the re-run sandbox ran a request's notebook (nothing
written yet); the sweeper gives the job to a new worker, which re-runs it, and the outcome is recorded
exactly once. Runs on the embedded default (SQLite + kombu's SQLAlchemy broker) and, when reachable,
PostgreSQL + Redis. Needs the workspace runtime and bubblewrap, like every re-run."""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from disclosure.models import OutputRerun
from disclosure.progress import RERUN_JOB
from tests.celery_workers import Worker, drain, kill_at, wait_for, worker_env
from tests.disclosure.factories import active_project, person
from tests.disclosure.rerun.test_jobs import RUNTIME, notebook
from tests.disclosure.test_checks_worker_killed import backends, workers  # noqa: F401  (fixtures)
from tre.core import jobs, migrate
from tre.core.audit import AuditEvent
from tre.core.testpoints import Barrier

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (RUNTIME / "bin" / "python").exists(),
        reason=f"WORKSPACE RUNTIME NOT BUILT at {RUNTIME}: run make workspace-runtime",
    ),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="BUBBLEWRAP NOT INSTALLED (make workspace-runtime)"),
]

POINT = "outputs.rerun.ran"  # the sandbox ran and answered; nothing of the outcome is written yet
CODE = notebook("open('outputs/notes.txt', 'w').write('made in the notebook')")


def test_rerun_whose_worker_is_killed_is_recorded_exactly_once(
    tmp_path: Path,
    backends: tuple[str, str],  # noqa: F811
    workers: list[Worker],  # noqa: F811
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
    token = platform.tokens.issue(
        author.id, "tre-api", "output-submit", dt.timedelta(minutes=30), project_id=project.id
    )
    log = tmp_path / "worker.log"
    barrier.arm(POINT)
    workers.append(Worker(env, log))

    response = app.test_client().post(
        "/api/v1/outputs/requests",
        headers={"Authorization": f"Bearer {token}"},
        data={
            "title": "Notes",
            "context": "Notes written by the notebook",
            "controls": "No data",
            "files": [(io.BytesIO(b"made in the notebook"), "notes.txt")],
            "code": (io.BytesIO(CODE), "analysis.ipynb"),
            "code_path": "analysis.ipynb",
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    request_id = response.json["id"]

    def rerun_job() -> Any:
        with db.session_factory() as s:
            job = s.scalar(select(jobs.Job).where(jobs.Job.kind == RERUN_JOB))
            if job is not None:
                s.expunge(job)
            return job

    kill_at(barrier, POINT, workers[0], log, timeout=180)
    killed = rerun_job()
    assert killed is not None and (killed.state, killed.attempts) == (jobs.RUNNING, 1)
    with db.session_factory() as s:
        assert s.scalar(select(OutputRerun.state).where(OutputRerun.request_id == request_id)) == "pending"
    workers.append(Worker(env, log))

    def state() -> str:
        with db.session_factory() as s:
            return s.scalar(select(OutputRerun.state).where(OutputRerun.request_id == request_id))

    wait_for(lambda: state() != "pending", 300, "the re-run's outcome", log)
    assert set(drain(workers, broker_url, db, {killed.id})) <= {"not-claimed"}

    with db.session_factory() as s:
        rerun = s.scalars(select(OutputRerun).where(OutputRerun.request_id == request_id)).one()
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "output.rerun")).all()
    job = rerun_job()
    assert rerun.state == "done", (rerun.reason, rerun.log)
    assert [r["outcome"] for r in rerun.files.values()] == ["reproduced"]
    assert job.state == jobs.SUCCEEDED and job.attempts == 2 and rerun.job_id == job.id
    assert len(events) == 1 and json.loads(json.dumps(events[0].detail))["reproduced"] == 1
    assert not (instance / "reruns" / rerun.id).exists()  # the killed attempt's scratch folder is gone
    db.dispose()
