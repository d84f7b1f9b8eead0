"""The database crashes at an exact, chosen point inside a transaction, not at a moment set by time.

A hook on the app's own engine or session (a SQLAlchemy event listener the test registers) crashes a
PRIVATE PostgreSQL cluster (tests/reliability/pg_cluster.py, ``pg_ctl stop -m immediate``) the first
time the chosen point is reached, and then lets the request or job carry on into the dead
connection, as it would in production. The points:

* a workspace submission, after its request row is written but before its first audit event;
* the same, after its files are written but before their audit event;
* the same, after every row is flushed, just before COMMIT;
* the same, just after COMMIT: the change is durable and, since the reply is built from what the
  transaction wrote (ADR 0038), the client is still told; a retry with the same Idempotency-Key
  gets the same request. (A reply lost on the way instead, the connection dropped after the
  commit, is the real workspace client's test: it tries again by itself and gets the same request);
* a checker's claim of a review place, after the place is written but before its audit event;
* an automated output check (a database-backed job, run through its Celery task), after its first
  verdict row and before the second file is checked;
* the same job, after all its writes, just before it records its own success;
  each job point with the database down until restarted (the sweeper takes the job back when its
  lease runs out) and with the database back at once (the attempt's failure is recorded);
* an extract build, half-way through its chunks, as it reports its progress: resumed after the
  restart and built once.

After each crash the cluster is started again and the test asserts: the client got a 503 problem
document without a trace or SQL; nothing is half-written (every request, file and verdict has its
audit event and every such event its row, every request its check job, every review place its
claim); the audit chain verifies
(what ``tre audit verify`` checks); the same request sent again succeeds exactly once, or the job is
taken back by the sweeper and finishes exactly once; and the app serves again without a restart of
its own. One cluster and one app serve every point in turn, so the crashes also come one after
another on the same pool."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from disclosure.models import OutputCheck, OutputFile, OutputRequest, OutputReview
from disclosure.services import CHECK_JOB
from tests.disclosure.factories import SAFE_CSV, World
from tests.reliability.pg_cluster import Cluster, private_cluster
from tests.security.figures import record
from tests.tre.web.test_outputs_api import post_request
from tre.core import jobs, migrate
from tre.core.audit import SUCCESS, AuditEvent, iter_events
from tre.core.queue import RUN_JOB, SWEEP

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

INJECTED = "reliability: database crashes injected at a chosen point inside a transaction"
LOST = "reliability: accepted work lost after those crashes"
NOTES = b"Methods: counts of admissions by region, adults 2020"
Matches = Callable[[str, Any], bool]


def inserting(table: str) -> Matches:
    return lambda statement, _params: statement.lstrip().upper().startswith(f"INSERT INTO {table.upper()} ")


def marking_job_succeeded(statement: str, params: Any) -> bool:
    return statement.lstrip().upper().startswith("UPDATE JOBS SET") and isinstance(params, dict) and (
        params.get("state") == jobs.SUCCEEDED
    )


class Crash:
    """Crashes the cluster once, from inside the app's own database calls, at the armed point; the
    code that reached the point then carries on and meets the dead connection by itself."""

    def __init__(self, cluster: Cluster, app: Any) -> None:
        self.cluster = cluster
        self.engine = app.extensions["tre.db"].engine
        self.sessions = app.extensions["tre.db"].session_factory
        self.fired = False
        self.comes_back_at_once = False  # a fast restart: up again before the caller's next statement
        self._listeners: list[tuple[Any, str, Any]] = []

    def _fire(self) -> None:
        if not self.fired:
            self.fired = True
            self.cluster.crash()
            if self.comes_back_at_once:
                self.cluster.start()

    def _listen(self, target: Any, name: str, fn: Any) -> None:
        event.listen(target, name, fn)
        self._listeners.append((target, name, fn))

    def disarm(self) -> None:
        for target, name, fn in self._listeners:
            event.remove(target, name, fn)
        self._listeners.clear()
        self.fired = self.comes_back_at_once = False

    def after_statement(self, matches: Matches) -> None:
        """Once a matching statement has run (its rows are written, not committed)."""

        def hook(_conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
            if matches(statement, params):
                self._fire()

        self._listen(self.engine, "after_cursor_execute", hook)

    def before_statement(self, matches: Matches) -> None:
        """Just before a matching statement is sent (everything before it is written, not committed)."""

        def hook(_conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
            if matches(statement, params):
                self._fire()

        self._listen(self.engine, "before_cursor_execute", hook)

    def _watch(self, matches: Matches) -> list[bool]:
        seen: list[bool] = []

        def saw(_conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
            if matches(statement, params):
                seen.append(True)

        self._listen(self.engine, "after_cursor_execute", saw)
        self._listen(self.engine, "rollback", lambda _conn: seen.clear())
        return seen

    def before_commit_of(self, matches: Matches) -> None:
        """Just before COMMIT is sent for a transaction that ran a matching statement (all flushed)."""
        seen = self._watch(matches)

        def hook(_conn: Any) -> None:
            if seen:
                self._fire()

        self._listen(self.engine, "commit", hook)

    def after_commit_of(self, matches: Matches) -> None:
        """Just after such a transaction committed: durable, but the caller has not answered yet."""
        seen = self._watch(matches)
        committing: list[bool] = []

        def commit(_conn: Any) -> None:
            if seen:
                committing.append(True)

        def hook(_session: Any) -> None:
            # The session's after_commit also follows a savepoint's release: wait for the real COMMIT.
            if committing:
                self._fire()

        self._listen(self.engine, "commit", commit)
        self._listen(self.sessions, "after_commit", hook)


@dataclass
class Rig:
    cluster: Cluster
    app: Any
    world: World
    bearer: str
    crash: Crash

    @property
    def db(self) -> Any:
        return self.app.extensions["tre.db"]

    def submit(self, key: str) -> Any:
        return post_request(self.world, self.bearer, key=key, files=[(SAFE_CSV, "table.csv"), (NOTES, "notes.txt")])

    def status(self, request_id: str) -> Any:
        return self.app.test_client().get(
            f"/api/v1/outputs/requests/{request_id}", headers={"Authorization": f"Bearer {self.bearer}"}
        )

    def task(self, name: str, *args: Any) -> Any:
        return self.app.extensions["celery"].tasks[name].apply(args=list(args), throw=False)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    from tests.conftest import make_test_app

    with private_cluster() as cluster:
        migrate.upgrade(cluster.url)
        # A short lease, so the sweeper takes back a job whose attempt the crash cut short.
        app = make_test_app(tmp_path_factory.mktemp("crash-points") / "instance", cluster.url, job_lease_seconds=1)
        db = app.extensions["tre.db"]
        try:
            with app.app_context():
                world = World(app)  # jobs stay queued until the test runs them through their task
            bearer = app.extensions["tre.platform"].tokens.issue(
                world.author.id, "tre-api", "output-submit", dt.timedelta(minutes=30), project_id=world.project.id
            )
            yield Rig(cluster, app, world, bearer, Crash(cluster, app))
        finally:
            db.dispose()


@pytest.fixture
def crash(rig: Rig) -> Iterator[Crash]:
    yield rig.crash
    rig.crash.disarm()
    if not _answers(rig):  # a test that failed half-way leaves the next one a running server
        rig.cluster.start()


def _answers(rig: Rig) -> bool:
    try:
        with rig.db.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means the server is down
        return False


def assert_clear_failure(response: Any) -> None:
    """A 503 problem document that says to try again, and nothing about the system."""
    body = response.get_data(as_text=True)
    assert response.status_code == 503, body
    assert response.mimetype == "application/problem+json"
    assert response.json["title"] and response.json["request_id"]
    assert response.headers.get("Retry-After", "").isdigit()
    for leak in ("Traceback", "sqlalchemy", "psycopg", "INSERT", "SELECT", "UPDATE", "output_requests", "SQL"):
        assert leak not in body, leak


def assert_nothing_half_written(rig: Rig) -> None:
    """Every row has its audit event and every event its row; the chain verifies (as ``tre audit
    verify`` checks it); no idempotency key made two requests."""
    with rig.db.session_factory() as s:
        requests = {r.id: r.client_key for r in s.scalars(select(OutputRequest))}
        files = {f.id: f.request_id for f in s.scalars(select(OutputFile))}
        checks = [(c.file_id, c.request_id) for c in s.scalars(select(OutputCheck))]
        reviews = [(r.request_id, r.reviewer_id) for r in s.scalars(select(OutputReview))]
        done = {r.id for r in s.scalars(select(OutputRequest).where(OutputRequest.state == "awaiting_review"))}
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.outcome == SUCCESS)))
        check_jobs = [j.payload["request_id"] for j in s.scalars(select(jobs.Job).where(jobs.Job.kind == CHECK_JOB))]

    def targets(action: str) -> list[str]:
        return [e.target_id for e in events if e.action == action and e.target_id]

    assert set(targets("output.create")) == set(requests) == set(targets("output.submit"))
    assert len(targets("output.create")) == len(requests)
    assert sorted(e.detail["file_id"] for e in events if e.action == "output.add_file") == sorted(files)
    assert set(files.values()) <= set(requests)
    assert sorted(targets("output.check")) == sorted(file_id for file_id, _ in checks)  # one verdict each
    assert sorted(targets("output.checks_done")) == sorted(done)
    assert sorted(check_jobs) == sorted(requests)
    claimed = [(e.target_id, e.detail["reviewer_id"]) for e in events if e.action in ("output.claim", "output.assign")]
    assert sorted(claimed) == sorted(reviews)
    keys = [k for k in requests.values() if k is not None]
    assert len(keys) == len(set(keys))
    with rig.db.session_factory() as s:
        report = rig.app.extensions["tre.platform"].audit.verify(iter_events(s))
    assert report.ok, report


def _requests_with_key(rig: Rig, key: str) -> list[str]:
    with rig.db.session_factory() as s:
        return list(s.scalars(select(OutputRequest.id).where(OutputRequest.client_key == key)))


SUBMISSION_POINTS = {
    "request-row-written-before-its-audit-event": lambda c: c.after_statement(inserting("output_requests")),
    "files-written-before-their-audit-event": lambda c: c.after_statement(inserting("output_files")),
    "all-flushed-just-before-commit": lambda c: c.before_commit_of(inserting("output_requests")),
}


@pytest.mark.parametrize("point", list(SUBMISSION_POINTS))
def test_a_crash_inside_a_submission_changes_nothing_and_the_same_request_sent_again_is_made_once(
    rig: Rig, crash: Crash, point: str
) -> None:
    key = f"crash-{point}"
    SUBMISSION_POINTS[point](crash)

    failed = rig.submit(key)

    assert crash.fired, "the crash point was never reached"
    record(INJECTED, 1)
    assert_clear_failure(failed)
    crash.disarm()
    rig.cluster.start()
    assert _requests_with_key(rig, key) == []  # the crash left nothing behind
    assert_nothing_half_written(rig)

    retried = rig.submit(key)
    again = rig.submit(key)

    assert retried.status_code == 201, retried.get_data(as_text=True)
    assert again.status_code == 200 and again.json["id"] == retried.json["id"]
    made = _requests_with_key(rig, key)
    record(LOST, len({retried.json["id"]} - set(made)))
    assert made == [retried.json["id"]]
    assert rig.status(retried.json["id"]).status_code == 200  # served again, the app never restarted
    assert_nothing_half_written(rig)


def test_a_crash_just_after_commit_still_answers_the_committed_request_and_a_retry_makes_no_duplicate(
    rig: Rig, crash: Crash
) -> None:
    """The reply is built from what the committed transaction wrote (ADR 0038), so a database that
    dies just after COMMIT no longer costs the client its answer; a client that retries anyway (its
    answer lost on the way) gets the same request."""
    key = "crash-after-commit"
    crash.after_commit_of(inserting("output_requests"))

    answered = rig.submit(key)

    assert crash.fired
    record(INJECTED, 1)
    assert answered.status_code == 201, answered.get_data(as_text=True)  # durable, and the client is told
    crash.disarm()
    rig.cluster.start()
    (made,) = _requests_with_key(rig, key)
    assert answered.json["id"] == made
    assert_nothing_half_written(rig)

    retried = rig.submit(key)

    assert retried.status_code == 200, retried.get_data(as_text=True)  # the request it already made
    assert retried.json["id"] == made and retried.json["state"] in ("submitted", "checking", "awaiting_review")
    record(LOST, len({made} - set(_requests_with_key(rig, key))))
    assert _requests_with_key(rig, key) == [made]
    assert_nothing_half_written(rig)


def test_the_workspace_client_whose_answer_was_lost_after_commit_tries_again_and_gets_the_same_request(
    rig: Rig, tmp_path: Path
) -> None:
    """The connection drops after the submission committed and before any answer is sent (a proxy or
    network failure): the real workspace client tries again with the same key and gets the request it
    made, not a second one."""
    import socket

    from werkzeug.serving import make_server

    from jupyter.client import submit

    table = tmp_path / "table.csv"
    table.write_bytes(SAFE_CSV)
    dropped: list[str] = []

    def drop_first_answer(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["REQUEST_METHOD"] != "POST" or dropped:
            return rig.app(environ, start_response)
        body = b"".join(rig.app(environ, lambda status, headers, exc_info=None: None))  # committed here
        dropped.append(body.decode(errors="replace"))
        environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)  # the answer never reaches the client
        start_response("500 Lost", [])
        return [b""]

    server = make_server("127.0.0.1", 0, drop_first_answer, threaded=True)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    with rig.db.session_factory() as s:
        before = set(s.scalars(select(OutputRequest.id)))
    try:
        answer = submit([table], "Admissions by region", "None needed: all cells 25 or more", title="Admissions",
                        api=f"http://127.0.0.1:{server.server_port}", token=rig.bearer)
    finally:
        server.shutdown()
        serving.join(timeout=30)

    assert len(dropped) == 1 and '"id"' in dropped[0]  # the first try was made, and its answer lost
    with rig.db.session_factory() as s:
        made = set(s.scalars(select(OutputRequest.id))) - before
    record(LOST, len({answer["id"]} - made))
    assert made == {answer["id"]}  # one request, however many times it was sent
    assert_nothing_half_written(rig)


def test_a_crash_inside_a_checkers_claim_changes_nothing_and_the_claim_sent_again_takes_one_place(
    rig: Rig, crash: Crash
) -> None:
    submitted = rig.submit("claimed-after-a-crash")
    assert submitted.status_code == 201, submitted.get_data(as_text=True)
    request_id = submitted.json["id"]
    checker = rig.app.extensions["tre.platform"].tokens.issue(
        rig.world.olive.id, "tre-api", "api", dt.timedelta(minutes=30), project_id=None
    )

    def claim() -> Any:
        return rig.app.test_client().post(
            f"/api/v1/outputs/requests/{request_id}/claim", headers={"Authorization": f"Bearer {checker}"}
        )

    crash.after_statement(inserting("output_reviews"))  # the seat is taken, its audit event not yet written

    failed = claim()

    assert crash.fired
    record(INJECTED, 1)
    assert_clear_failure(failed)
    crash.disarm()
    rig.cluster.start()
    assert_nothing_half_written(rig)

    retried = claim()
    again = claim()

    assert retried.status_code == 200, retried.get_data(as_text=True)
    assert again.status_code == 422  # "already holds a review": a second claim never takes a second place
    with rig.db.session_factory() as s:
        seats = s.scalars(select(OutputReview.reviewer_id).where(OutputReview.request_id == request_id)).all()
    record(LOST, int(seats != [rig.world.olive.id]))
    assert seats == [rig.world.olive.id]
    assert_nothing_half_written(rig)


JOB_POINTS = {
    "after-the-first-verdict-before-the-second-file": lambda c: c.after_statement(inserting("output_checks")),
    "all-written-just-before-the-job-records-success": lambda c: c.before_statement(marking_job_succeeded),
}


@pytest.mark.parametrize("back_at_once", [False, True], ids=["down-until-restarted", "back-at-once"])
@pytest.mark.parametrize("point", list(JOB_POINTS))
def test_a_crash_inside_an_output_check_job_is_retried_after_the_restart_and_finishes_exactly_once(
    rig: Rig, crash: Crash, point: str, back_at_once: bool
) -> None:
    submitted = rig.submit(f"job-{point}-{back_at_once}")
    assert submitted.status_code == 201, submitted.get_data(as_text=True)
    request_id = submitted.json["id"]
    with rig.db.session_factory() as s:
        (job_id,) = [j.id for j in s.scalars(select(jobs.Job).where(jobs.Job.kind == CHECK_JOB))
                     if j.payload["request_id"] == request_id]
    JOB_POINTS[point](crash)
    crash.comes_back_at_once = back_at_once

    cut_short = rig.task(RUN_JOB, job_id)  # as a worker runs it: the Celery task around run_job

    assert crash.fired
    record(INJECTED, 1)
    crash.disarm()
    if back_at_once:
        # The attempt's failure is recorded at once, and says what happened without quoting any SQL.
        assert cut_short.result == "retry"
        with rig.db.session_factory() as s:
            job = s.get(jobs.Job, job_id)
            assert job is not None and (job.state, job.attempts) == (jobs.QUEUED, 1)
            assert job.last_error == "the database was unavailable (OperationalError)"
    else:
        # Nothing could be recorded: the job stays claimed until its lease runs out.
        assert cut_short.failed()
        rig.cluster.start()
        with rig.db.session_factory() as s:
            job = s.get(jobs.Job, job_id)
            assert job is not None and (job.state, job.attempts) == (jobs.RUNNING, 1)  # its claim, and no more
    with rig.db.session_factory() as s:
        assert s.scalars(select(OutputCheck).where(OutputCheck.request_id == request_id)).all() == []
    assert_nothing_half_written(rig)

    if not back_at_once:
        # The worker stopped renewing its lease; the sweeper takes the job back once the lease runs out.
        deadline = time.monotonic() + 60
        while rig.task(SWEEP).result["requeued_lost"] == 0:
            assert time.monotonic() < deadline, "the sweeper never took the job back"
            time.sleep(0.25)
    finished = rig.task(RUN_JOB, job_id)
    stray = rig.task(RUN_JOB, job_id)  # a duplicate delivery of the same message

    assert (finished.result, stray.result) == (jobs.SUCCEEDED, "not-claimed")
    with rig.db.session_factory() as s:
        job = s.get(jobs.Job, job_id)
        record(LOST, int(job is None or job.state != jobs.SUCCEEDED))
        assert job is not None and (job.state, job.attempts) == (jobs.SUCCEEDED, 2)
        assert len(s.scalars(select(OutputCheck).where(OutputCheck.request_id == request_id)).all()) == 2
        checks_done = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "output.checks_done", AuditEvent.target_id == request_id)
        ).all()
    assert len(checks_done) == 1
    response = rig.status(request_id)
    assert response.status_code == 200 and response.json["state"] == "awaiting_review"
    assert_nothing_half_written(rig)


def reporting_progress_past(fraction: float) -> Matches:
    def matches(statement: str, params: Any) -> bool:
        return statement.lstrip().upper().startswith("UPDATE JOBS SET PROGRESS") and isinstance(params, dict) and (
            float(params.get("progress", 0)) >= fraction
        )

    return matches


def test_a_crash_in_the_middle_of_an_extract_build_is_resumed_after_the_restart_and_built_once(
    tmp_path: Path, cluster: Cluster
) -> None:
    from pseudonymisation.models import Extract
    from pseudonymisation.services import BUILD_JOB
    from pseudonymisation.tasks import extracts_service
    from tests.conftest import make_test_app
    from tests.disclosure.factories import no_broker
    from tests.pseudonymisation.conftest import make_table, write_parquet
    from tests.pseudonymisation.test_partitioned_extracts_workers import _active_project

    rows = 20_000
    source = write_parquet(make_table(rows, patients=2_000, seed=5), tmp_path / "events.parquet", row_group_rows=2_000)
    migrate.upgrade(cluster.url)
    app = make_test_app(tmp_path / "instance", cluster.url, job_lease_seconds=1, extract_chunk_rows=2_000,
                        extract_partition_rows=0)
    no_broker()  # the job waits for the test to run it through its task, as a worker would
    db = app.extensions["tre.db"]
    crash = Crash(cluster, app)
    try:
        w, p = _active_project(app, source)
        with app.app_context():
            extract_id = extracts_service(app.extensions["tre.platform"]).request(w.custodian, p.id).id
        with db.session_factory() as s:
            job_id = s.scalar(select(jobs.Job.id).where(jobs.Job.kind == BUILD_JOB))
        # Half the chunks are written (files and checkpoints) when the job reports its progress.
        crash.after_statement(reporting_progress_past(0.5))

        cut_short = app.extensions["celery"].tasks[RUN_JOB].apply(args=[job_id], throw=False)

        assert crash.fired and cut_short.failed()
        record(INJECTED, 1)
        crash.disarm()
        cluster.start()
        with db.session_factory() as s:
            extract = s.get(Extract, extract_id)
            assert extract is not None and extract.state not in ("succeeded", "failed")
        deadline = time.monotonic() + 60
        while app.extensions["celery"].tasks[SWEEP].apply(throw=False).result["requeued_lost"] == 0:
            assert time.monotonic() < deadline, "the sweeper never took the job back"
            time.sleep(0.25)
        finished = app.extensions["celery"].tasks[RUN_JOB].apply(args=[job_id], throw=False)

        assert finished.result == jobs.SUCCEEDED
        with db.session_factory() as s:
            job = s.get(jobs.Job, job_id)
            extract = s.get(Extract, extract_id)
            record(LOST, int(extract is None or extract.state != "succeeded"))
            assert job is not None and (job.state, job.attempts) == (jobs.SUCCEEDED, 2)
            assert extract is not None and extract.state == "succeeded"
            assert extract.manifest["manifests"]["events"]["rows"]["in"] == rows
            built = s.scalars(select(AuditEvent.outcome).where(
                AuditEvent.action == "extract.build", AuditEvent.target_id == extract_id)).all()
            report = app.extensions["tre.platform"].audit.verify(iter_events(s))
        assert built == [SUCCESS]  # built once, and no failure recorded on the way
        assert report.ok, report
    finally:
        crash.disarm()
        db.dispose()
