"""The database-backed job table: idempotent enqueue, send-after-commit, retries, leases, sweeper."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select, update

from tre.core import jobs
from tre.core.db import transaction, utcnow

CALLS: list[dict[str, Any]] = []


@jobs.job_handler("test.record")
def _record(ctx: jobs.JobContext) -> dict[str, Any]:
    CALLS.append(dict(ctx.payload))
    if ctx.payload.get("fail_until_attempt", 0) >= ctx.attempt:
        raise RuntimeError("transient failure")
    if ctx.payload.get("bad_input"):
        raise jobs.PermanentJobError("the input can never be processed")
    return {"attempt": ctx.attempt}


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    CALLS.clear()


@pytest.fixture
def db(app: Any) -> Any:
    return app.extensions["tre.db"]


@pytest.fixture
def no_dispatch() -> Any:
    """Stop jobs being run at commit, so a test can act as the worker itself."""
    jobs.set_dispatcher(None)
    yield
    jobs.set_dispatcher(None)


def _job(db: Any, job_id: str) -> jobs.Job:
    with db.session_factory() as s:
        job = s.get(jobs.Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def test_enqueue_runs_the_job_after_commit_and_records_success(db: Any) -> None:
    with transaction(db.session) as s:
        job_id = jobs.enqueue(s, "test.record", {"n": 1}).id
        assert CALLS == []  # nothing runs before the transaction commits

    job = _job(db, job_id)
    assert CALLS == [{"n": 1}]
    assert job.state == jobs.SUCCEEDED
    assert job.result == {"attempt": 1}
    assert job.finished_at is not None and job.lease_owner is None


def test_enqueue_same_idempotency_key_twice_creates_one_job(db: Any, no_dispatch: None) -> None:
    with transaction(db.session) as s:
        first = jobs.enqueue(s, "test.record", {"n": 1}, idempotency_key="request-7")
    with transaction(db.session) as s:
        second = jobs.enqueue(s, "test.record", {"n": 2}, idempotency_key="request-7")

    assert first.id == second.id
    with db.session_factory() as s:
        assert len(s.scalars(select(jobs.Job)).all()) == 1


def test_enqueue_in_rolled_back_transaction_leaves_nothing_and_sends_nothing(db: Any) -> None:
    with pytest.raises(RuntimeError), transaction(db.session) as s:
        jobs.enqueue(s, "test.record", {"n": 1})
        raise RuntimeError("the service call failed after enqueueing")

    assert CALLS == []
    with db.session_factory() as s:
        assert s.scalars(select(jobs.Job)).all() == []


def test_enqueue_unknown_kind_is_refused(db: Any) -> None:
    with pytest.raises(jobs.JobError, match="no handler registered"):
        jobs.enqueue(db.session, "test.nobody-handles-this")


def test_transient_failures_are_retried_until_success(db: Any) -> None:
    with transaction(db.session) as s:
        job_id = jobs.enqueue(s, "test.record", {"fail_until_attempt": 2}, max_attempts=3).id

    job = _job(db, job_id)
    assert job.state == jobs.SUCCEEDED
    assert job.attempts == 3
    assert len(CALLS) == 3


def test_job_failing_every_attempt_ends_failed_with_the_reason(db: Any) -> None:
    with transaction(db.session) as s:
        job_id = jobs.enqueue(s, "test.record", {"fail_until_attempt": 99}, max_attempts=2).id

    job = _job(db, job_id)
    assert job.state == jobs.FAILED
    assert job.attempts == 2
    assert job.last_error == "RuntimeError: transient failure"


def test_permanent_error_fails_at_once_without_retrying(db: Any) -> None:
    with transaction(db.session) as s:
        job_id = jobs.enqueue(s, "test.record", {"bad_input": True}, max_attempts=3).id

    job = _job(db, job_id)
    assert job.state == jobs.FAILED
    assert job.attempts == 1
    assert "can never be processed" in (job.last_error or "")


def test_a_job_already_claimed_is_not_run_again(db: Any, no_dispatch: None) -> None:
    with transaction(db.session) as s:
        job_id = jobs.enqueue(s, "test.record", {}).id
    assert jobs.run_job(db, job_id, lease_seconds=60) == jobs.SUCCEEDED

    assert jobs.run_job(db, job_id, lease_seconds=60) == "not-claimed"
    assert len(CALLS) == 1


def test_a_database_without_returning_claims_and_runs_a_job_exactly_once(
    db: Any, no_dispatch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.35 cannot return the claimed row; the claim then reads it in a second statement."""
    monkeypatch.setattr(db.engine.dialect, "update_returning", False)
    with transaction(db.session) as s:
        job_id = jobs.enqueue(s, "test.record", {"n": 7}).id

    assert jobs.run_job(db, job_id, lease_seconds=60) == jobs.SUCCEEDED
    assert jobs.run_job(db, job_id, lease_seconds=60) == "not-claimed"
    assert CALLS == [{"n": 7}]
    assert _job(db, job_id).result == {"attempt": 1}


def test_sweeper_requeues_a_job_whose_worker_stopped_renewing_its_lease(db: Any, no_dispatch: None) -> None:
    with transaction(db.session) as s:
        job_id = jobs.enqueue(s, "test.record", {}).id
    _pretend_a_worker_died_holding(db, job_id)

    report = jobs.sweep(db, requeue_after_seconds=60)

    assert report.requeued_lost == 1
    job = _job(db, job_id)
    assert job.state == jobs.QUEUED and job.last_error == "worker lost during attempt 1"
    assert jobs.run_job(db, job_id, lease_seconds=60) == jobs.SUCCEEDED
    assert _job(db, job_id).attempts == 2


def test_sweeper_fails_a_lost_job_after_its_last_attempt(db: Any, no_dispatch: None) -> None:
    with transaction(db.session) as s:
        job_id = jobs.enqueue(s, "test.record", {}, max_attempts=1).id
    _pretend_a_worker_died_holding(db, job_id)

    report = jobs.sweep(db, requeue_after_seconds=60)

    assert report.failed == 1
    job = _job(db, job_id)
    assert job.state == jobs.FAILED and job.last_error == "worker lost during attempt 1"


LOST: list[tuple[dict[str, Any], str]] = []


@jobs.job_handler("test.with-lost-hook")
def _never_finishes(ctx: jobs.JobContext) -> None:
    raise AssertionError("the tests below only pretend a worker ran this")


@jobs.on_worker_lost("test.with-lost-hook")
def _told_of_loss(session: Any, payload: dict[str, Any], reason: str) -> None:
    LOST.append((payload, reason))


def test_sweeper_tells_the_kinds_hook_when_it_gives_up_on_a_lost_job(db: Any, no_dispatch: None) -> None:
    LOST.clear()
    with transaction(db.session) as s:
        retried = jobs.enqueue(s, "test.with-lost-hook", {"n": "retried"}, max_attempts=2).id
        given_up = jobs.enqueue(s, "test.with-lost-hook", {"n": "given-up"}, max_attempts=1).id
    _pretend_a_worker_died_holding(db, retried)
    _pretend_a_worker_died_holding(db, given_up)

    jobs.sweep(db, requeue_after_seconds=60)

    # Only the job the sweeper failed for good is reported; the other will run again.
    assert LOST == [({"n": "given-up"}, "worker lost during attempt 1")]
    assert _job(db, given_up).state == jobs.FAILED


def test_sweeper_resends_queued_jobs_nobody_picked_up(db: Any, no_dispatch: None) -> None:
    with transaction(db.session) as s:
        job_id = jobs.enqueue(s, "test.record", {}).id
    sent: list[str] = []
    jobs.set_dispatcher(lambda jid, queue: sent.append(jid))
    with db.session_factory() as s:
        s.execute(
            update(jobs.Job).where(jobs.Job.id == job_id).values(last_sent_at=utcnow() - dt.timedelta(hours=1))
        )
        s.commit()

    report = jobs.sweep(db, requeue_after_seconds=60)

    assert report.resent_stale == 1
    assert sent == [job_id]


@jobs.job_handler("test.lease-stolen")
def _lose_the_lease(ctx: jobs.JobContext) -> None:
    # While this worker runs, the sweeper hands the job to another worker.
    ctx.session.execute(update(jobs.Job).where(jobs.Job.id == ctx.job_id).values(lease_owner="another"))
    ctx.session.commit()
    ctx.session.execute(update(jobs.Job).where(jobs.Job.id == ctx.job_id).values(progress_message="mine"))


def test_worker_that_lost_its_lease_does_not_commit_its_work(db: Any, no_dispatch: None) -> None:
    with transaction(db.session) as s:
        job_id = jobs.enqueue(s, "test.lease-stolen", {}).id

    assert jobs.run_job(db, job_id, lease_seconds=60) == "lease-lost"
    job = _job(db, job_id)
    assert job.state == jobs.RUNNING and job.lease_owner == "another"
    assert job.progress_message == ""  # the write made after losing the lease was rolled back


def _pretend_a_worker_died_holding(db: Any, job_id: str) -> None:
    with db.session_factory() as s:
        s.execute(
            update(jobs.Job)
            .where(jobs.Job.id == job_id)
            .values(
                state=jobs.RUNNING,
                attempts=1,
                lease_owner="dead-worker",
                lease_expires_at=utcnow() - dt.timedelta(seconds=1),
            )
        )
        s.commit()


@jobs.job_handler("test.periodic")
def _periodic(ctx: jobs.JobContext) -> None:
    CALLS.append({"periodic": ctx.payload["interval_start"]})


def test_periodic_job_is_enqueued_once_per_interval_however_often_the_scheduler_ticks(
    db: Any, no_dispatch: None
) -> None:
    jobs.periodic("test.periodic", 3600)
    try:
        first = jobs.enqueue_due_periodic(db)
        second = jobs.enqueue_due_periodic(db)
    finally:
        jobs._PERIODIC.pop("test.periodic", None)

    assert first == second
    with db.session_factory() as s:
        kinds = [j.kind for j in s.scalars(select(jobs.Job))]
    assert kinds.count("test.periodic") == 1


def test_jobs_enqueued_together_are_sent_only_when_their_transaction_commits(db: Any) -> None:
    sent: list[tuple[str, bool]] = []

    def record(job_id: str, queue: str) -> None:
        with db.session_factory() as s:
            sent.append((job_id, s.get(jobs.Job, job_id) is not None))

    jobs.set_dispatcher(record)
    try:
        with transaction(db.session) as s:
            first = jobs.enqueue(s, "test.record", {"n": 1}).id
            second = jobs.enqueue(s, "test.record", {"n": 2}).id
            assert sent == []  # releasing the first savepoint sent nothing
    finally:
        jobs.set_dispatcher(None)

    assert sent == [(first, True), (second, True)]  # both sent after commit, and visible to a worker


LEASES: list[tuple[Any, Any, list[Any]]] = []
LEASE_DB: list[Any] = []


@jobs.job_handler("test.outlives-a-third-of-its-lease")
def _outlive_a_third_of_the_lease(ctx: jobs.JobContext) -> None:
    import threading
    import time

    def expires() -> Any:
        with LEASE_DB[0].session_factory() as s:  # not the job's own transaction: what is committed now
            return s.scalars(select(jobs.Job.lease_expires_at).where(jobs.Job.id == ctx.job_id)).one()

    first = expires()
    time.sleep(0.9)  # the lease is 1 s: renewed every third of it
    keepers = [t for t in threading.enumerate() if t.name.startswith("lease")]
    LEASES.append((first, expires(), keepers))


def test_one_thread_renews_the_lease_of_every_job_the_process_runs(db: Any, no_dispatch: None) -> None:
    """Each running job's lease is still renewed every third of it, now by one thread of the process
    for all its jobs (ADR 0048), not a thread started and joined per job."""
    import threading

    LEASES.clear()
    LEASE_DB[:] = [db]
    with transaction(db.session) as s:
        ids = [jobs.enqueue(s, "test.outlives-a-third-of-its-lease", {"n": n}).id for n in range(2)]
    outcomes: list[str] = []
    runners = [
        threading.Thread(target=lambda job_id=job_id: outcomes.append(jobs.run_job(db, job_id, lease_seconds=1)))
        for job_id in ids
    ]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(30)

    assert outcomes == [jobs.SUCCEEDED, jobs.SUCCEEDED]
    assert len(LEASES) == 2
    for first, later, _ in LEASES:
        assert later > first  # renewed while the job ran
    keepers = {id(keeper) for _, _, running in LEASES for keeper in running}
    assert len(keepers) == 1  # one keeper for both jobs


def _stored(db: Any, job_id: str) -> dict[str, Any]:
    """The row as the database holds it, with each nullable column's SQL NULL told apart from JSON null."""
    from sqlalchemy import text

    with db.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).mappings().one()
        result_is_null = conn.execute(text("SELECT result IS NULL FROM jobs WHERE id = :id"), {"id": job_id}).scalar()
    return {**row, "result is SQL NULL": bool(result_is_null)}


def test_a_job_with_a_new_key_stores_the_row_the_unit_of_work_stores(db: Any, no_dispatch: None) -> None:
    with transaction(db.session) as s:
        through_orm = jobs.enqueue(s, "test.record", {"n": [1, 2]}, idempotency_key="k-orm", max_attempts=4).id
        known_new = jobs.enqueue(s, "test.record", {"n": [1, 2]}, idempotency_key="k-new", max_attempts=4,
                                 new_key=True)
        assert known_new.state == jobs.QUEUED and known_new.created_at is not None  # the caller's view is whole

    orm_row, new_row = _stored(db, through_orm), _stored(db, known_new.id)
    varying = {"id", "idempotency_key", "last_sent_at", "created_at"}
    assert {k: v for k, v in new_row.items() if k not in varying} == {
        k: v for k, v in orm_row.items() if k not in varying
    }
    assert new_row["result is SQL NULL"] and new_row["created_at"] is not None and new_row["last_sent_at"] is not None
    assert len(new_row["id"]) == len(orm_row["id"])


def test_a_job_with_a_new_key_is_inserted_without_a_flush_of_the_session(db: Any, no_dispatch: None) -> None:
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    flushed: list[list[str]] = []

    def seen(session: Any, _context: Any, _instances: Any) -> None:
        flushed.append(sorted(type(o).__name__ for o in session.new))

    event.listen(Session, "before_flush", seen)
    try:
        with transaction(db.session) as s:
            job = jobs.enqueue(s, "test.record", {"n": 1}, idempotency_key="k-new", new_key=True)
            assert flushed == []  # ADR 0054: one INSERT, not the unit of work
    finally:
        event.remove(Session, "before_flush", seen)
    assert all("Job" not in names for names in flushed)
    assert _job(db, job.id).idempotency_key == "k-new"


def test_a_job_with_a_new_key_that_is_not_new_fails_the_transaction(db: Any, no_dispatch: None) -> None:
    from sqlalchemy.exc import IntegrityError

    with transaction(db.session) as s:
        jobs.enqueue(s, "test.record", {"n": 1}, idempotency_key="k-taken")
    with pytest.raises(IntegrityError), transaction(db.session) as s:
        jobs.enqueue(s, "test.record", {"n": 2}, idempotency_key="k-taken", new_key=True)
    with db.session_factory() as s:
        assert len(s.scalars(select(jobs.Job)).all()) == 1


def test_a_job_with_a_new_key_is_sent_once_after_commit(db: Any) -> None:
    sent: list[tuple[str, str]] = []
    jobs.set_dispatcher(lambda job_id, queue: sent.append((job_id, queue)))
    try:
        with transaction(db.session) as s:
            job = jobs.enqueue(s, "test.record", {"n": 1}, new_key=True)
            assert sent == []
    finally:
        jobs.set_dispatcher(None)
    assert sent == [(job.id, job.queue)]


class _RenewalsSeen:
    """A stand-in for the database the lease keeper renews through: it notes each job renewed."""

    def __init__(self) -> None:
        import threading

        self.renewed: list[str] = []
        self.seen = threading.Condition()

    def session_factory(self) -> Any:
        keeper = self

        class _Session:
            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: Any) -> None:
                return None

            def execute(self, statement: Any) -> None:
                job_id = statement.compile().params["id_1"]
                with keeper.seen:
                    keeper.renewed.append(job_id)
                    keeper.seen.notify_all()

            def commit(self) -> None:
                return None

        return _Session()


def test_the_lease_keeper_is_woken_only_for_a_lease_due_before_its_next_renewal() -> None:
    """A job whose lease is due after the keeper's next renewal does not wake the keeper (each job did,
    for nothing, ADR 0077); one due sooner does, and is renewed on time; both are renewed."""
    import datetime as dt
    import time

    keeper = jobs._LeaseKeeper()
    renewals = _RenewalsSeen()
    notified: list[int] = []
    notify = keeper._cond.notify
    keeper._cond.notify = lambda n=1: (notified.append(n), notify(n))  # type: ignore[method-assign]

    def waiting() -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with keeper._cond:
                if keeper._wakes_at is not None and keeper._wakes_at > -float("inf"):
                    return True
            time.sleep(0.01)
        return False

    try:
        keeper.hold(renewals, "long", "owner", dt.timedelta(seconds=30))  # starts the thread: renewed in 10 s
        assert waiting()
        keeper.hold(renewals, "longer", "owner", dt.timedelta(seconds=60))  # due after 10 s: no wake
        assert notified == []
        keeper.hold(renewals, "short", "owner", dt.timedelta(seconds=0.6))  # due in 0.2 s: woken
        assert notified == [1]
        with renewals.seen:
            assert renewals.seen.wait_for(lambda: "short" in renewals.renewed, timeout=10)
        assert "long" not in renewals.renewed and "longer" not in renewals.renewed
    finally:
        for job_id in ("long", "longer", "short"):
            keeper.release(job_id, "owner")
