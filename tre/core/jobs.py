"""Background jobs whose state lives in the database, not in the broker.

The brokers that need no server lose a message when a worker is killed mid-task, and even Redis
only redelivers after its visibility timeout. So the ``jobs`` table is the source of truth:

* ``enqueue`` writes a job row in the caller's transaction (idempotent by key) and the message is
  sent only after that transaction commits;
* a worker *claims* a job with one conditional UPDATE, runs its handler, and marks it succeeded in
  the same transaction as the handler's own writes, guarded by its lease, so the effects commit
  exactly once even if a message is delivered twice;
* while a handler runs, a thread renews the lease; a worker that dies stops renewing, and the
  periodic sweeper puts the job back in the queue (or fails it, with the reason, after the last
  attempt);
* the message carries only the job id: no payload, no secret, no identifier.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import CheckConstraint, Index, String, Text, and_, bindparam, event, or_, select, update
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Mapped, Session, mapped_column

from tre.core import testpoints
from tre.core.db import Base, Database, database_unavailable, new_id, utcnow
from tre.core.logs import job_id_var

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED)
QUEUES = ("default", "checks", "extracts", "notifications")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"state IN {JOB_STATES!r}", name="state_known"),
        CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name="attempts_bounded"),
        CheckConstraint("(state = 'running') = (lease_owner IS NOT NULL)", name="lease_only_while_running"),
        CheckConstraint(
            "(state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)", name="finished_when_final"
        ),
        Index("ix_jobs_state_lease", "state", "lease_expires_at"),
        # The jobs finished in the last hour, for the Prometheus scrape (tre/metrics.py), without the rest.
        Index("ix_jobs_finished_at", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(50), default="default")
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(20), default=QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    progress: Mapped[float] = mapped_column(default=0.0)
    progress_message: Mapped[str] = mapped_column(String(500), default="")
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None]
    last_sent_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


@dataclasses.dataclass
class JobContext:
    """What a handler gets: its own session (commit is done for it), the payload and a progress call."""

    session: Session
    job_id: str
    payload: dict[str, Any]
    attempt: int
    report_progress: Callable[[float, str], None]


Handler = Callable[[JobContext], dict[str, Any] | None]


@dataclasses.dataclass(frozen=True)
class _Registered:
    handler: Handler
    queue: str


_HANDLERS: dict[str, _Registered] = {}

# Set by the Celery integration; called with (job_id, queue) after the enqueueing transaction commits.
Dispatcher = Callable[[str, str], None]
_dispatcher: Dispatcher | None = None


class JobError(Exception):
    """A job cannot be enqueued or run as asked."""


class PermanentJobError(JobError):
    """The handler says retrying cannot help (bad input): the job fails at once with this reason."""


def job_handler(kind: str, queue: str = "default") -> Callable[[Handler], Handler]:
    """Register the function that runs jobs of ``kind``; domain packages use this in their tasks module."""
    if queue not in QUEUES:
        raise JobError(f"unknown queue {queue!r}; known queues: {', '.join(QUEUES)}")

    def register(fn: Handler) -> Handler:
        existing = _HANDLERS.get(kind)
        if existing is not None and existing.handler is not fn:
            raise JobError(f"a handler for job kind {kind!r} is already registered")
        _HANDLERS[kind] = _Registered(fn, queue)
        return fn

    return register


FailureHook = Callable[[Session, dict[str, Any], str], None]
_FAILURE_HOOKS: dict[str, FailureHook] = {}


def on_worker_lost(kind: str) -> Callable[[FailureHook], FailureHook]:
    """Register what to do when the sweeper fails a job of ``kind`` because its worker died during
    the last attempt: the handler never ran to the end, so the domain object it was building must be
    told here (for example, an extract marked failed so it can be requested again). The hook gets a
    fresh session, the job's payload and the reason; it commits its own change."""

    def register(fn: FailureHook) -> FailureHook:
        _FAILURE_HOOKS[kind] = fn
        return fn

    return register


_PERIODIC: dict[str, int] = {}


def periodic(kind: str, every_seconds: int) -> None:
    """Run jobs of ``kind`` about every ``every_seconds`` (at most once per interval, whatever the clock)."""
    if kind not in _HANDLERS:
        raise JobError(f"no handler registered for job kind {kind!r}")
    if every_seconds < 1:
        raise JobError("a periodic job needs an interval of at least one second")
    _PERIODIC[kind] = every_seconds


def enqueue_due_periodic(db: Database) -> list[str]:
    """Enqueue each periodic job once per interval; the idempotency key makes repeats harmless."""
    now = int(utcnow().timestamp())
    sent = []
    with db.session_factory() as s:
        for kind, every in sorted(_PERIODIC.items()):
            start = now - now % every
            payload = {"interval_start": start, "date": dt.datetime.fromtimestamp(start, dt.UTC).date().isoformat()}
            job = enqueue(s, kind, payload,
                          idempotency_key=f"periodic:{kind}:{now // every}")
            sent.append(job.id)
        s.commit()
    return sent


def registered_kinds() -> list[str]:
    return sorted(_HANDLERS)


def set_dispatcher(dispatcher: Dispatcher | None) -> None:
    global _dispatcher
    _dispatcher = dispatcher


def enqueue(
    session: Session,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    max_attempts: int = 3,
    new_key: bool = False,
) -> Job:
    """Add a job in the caller's transaction; the same idempotency key returns the existing job.

    The message is sent when (and only if) the caller's transaction commits. ``new_key``: the caller
    knows no job can hold this key yet (it names a row made in this transaction), so it is not looked
    up first; the unique key still catches a mistake, as it catches a race.
    """
    if kind not in _HANDLERS:
        raise JobError(f"no handler registered for job kind {kind!r}")
    if max_attempts < 1:
        raise JobError("max_attempts must be at least 1")
    key = idempotency_key or f"{kind}:{uuid.uuid4().hex}"
    existing = None if new_key else session.scalar(select(Job).where(Job.idempotency_key == key))
    if existing is not None:
        return existing
    if new_key:  # every value the unit of work would have filled in, in its order (ADR 0054)
        job = Job(
            id=new_id(),
            kind=kind,
            queue=_HANDLERS[kind].queue,
            idempotency_key=key,
            payload=dict(payload or {}),
            state=QUEUED,
            attempts=0,
            max_attempts=max_attempts,
            progress=0.0,
            progress_message="",
            last_sent_at=utcnow(),
            created_at=utcnow(),
        )
    else:
        job = Job(
            kind=kind,
            queue=_HANDLERS[kind].queue,
            idempotency_key=key,
            payload=dict(payload or {}),
            max_attempts=max_attempts,
        )
    if new_key:  # no savepoint: a collision here is a mistake that must fail the caller's transaction
        # One Core INSERT of the row, not the unit of work (ADR 0054): every value is known here. The
        # caller's other pending changes are flushed by its next read or its commit, as before.
        session.execute(_INSERT_JOB, _job_values(job))
        session.info.setdefault("tre_jobs_to_send", []).append((job.id, job.queue))
        return job
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        # Someone else enqueued the same key between our SELECT and INSERT.
        existing = session.scalar(select(Job).where(Job.idempotency_key == key))
        if existing is None:
            raise
        return existing
    session.info.setdefault("tre_jobs_to_send", []).append((job.id, job.queue))
    return job


# The columns a new job is inserted with; the others (lease, error, result, start, finish) are left
# out, so they are SQL NULL as the unit of work leaves them (a JSON column given None would hold 'null').
_NEW_JOB_COLUMNS = ("id", "kind", "queue", "idempotency_key", "payload", "state", "attempts", "max_attempts",
                    "progress", "progress_message", "last_sent_at", "created_at")
_INSERT_JOB = Job.__table__.insert()  # a Core insert: no unit of work


def _job_values(job: Job) -> dict[str, Any]:
    return {column: getattr(job, column) for column in _NEW_JOB_COLUMNS}


@event.listens_for(Session, "after_commit")
def _send_after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint was released, not the transaction: nothing is visible to workers yet
    pending = session.info.pop("tre_jobs_to_send", [])
    if _dispatcher is None:
        return  # no broker configured: the sweeper (or a test) will run them
    for job_id, queue in pending:
        try:
            _dispatcher(job_id, queue)
        except Exception:
            # The job row is committed; the sweeper re-sends it. Accepted work is never lost.
            log.exception("could not send job %s to the broker; the sweeper will retry", job_id)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop("tre_jobs_to_send", None)


@dataclasses.dataclass
class _Lease:
    db: Database
    lease: dt.timedelta
    interval: float  # seconds between renewals: a third of the lease (at least 0.2 s), as before
    due: float  # when it is next renewed (time.monotonic)


class _LeaseKeeper:
    """Renews the lease of every job this process is running, from one thread (started with the first
    job and again, in a forked child, with the child's first: a thread does not survive a fork) that
    dies with the process, which is the point. A thread started and joined per job cost each job about
    0.1 ms of CPU and 0.5 ms of wall time (ADR 0048); renewals are as before, each job's every third of
    its lease, in a transaction of its own."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._thread: threading.Thread | None = None
        # When the thread's wait ends (time.monotonic; None: it waits until told). Minus infinity while
        # it is not waiting: it reads the leases again before it next waits.
        self._wakes_at: float | None = -math.inf

    def hold(self, db: Database, job_id: str, owner: str, lease: dt.timedelta) -> None:
        interval = max(lease.total_seconds() / 3, 0.2)
        due = time.monotonic() + interval
        with self._cond:
            self._leases[(job_id, owner)] = _Lease(db, lease, interval, due)
            if self._thread is None or not self._thread.is_alive():
                self._wakes_at = -math.inf
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()
            elif self._wakes_at is None or self._wakes_at > due:
                # Only a thread that would sleep past this lease's renewal is woken: one waking anyway
                # before it (a job's lease outlives the job that came before it) was woken for nothing
                # at every job (ADR 0077).
                self._cond.notify()

    def release(self, job_id: str, owner: str) -> None:
        """No renewal of this job starts after this returns (one already under way ends harmlessly: the
        job's row no longer names this owner once it has finished or failed)."""
        with self._cond:
            self._leases.pop((job_id, owner), None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [(key, held) for key, held in self._leases.items() if held.due <= now]
                if not due:
                    soonest = min((held.due for held in self._leases.values()), default=None)
                    self._wakes_at = soonest
                    self._cond.wait(None if soonest is None else soonest - now)
                    self._wakes_at = -math.inf
                    continue
                for _, held in due:
                    held.due = now + held.interval
            for (job_id, owner), held in due:
                with self._cond:
                    if (job_id, owner) not in self._leases:
                        continue  # released meanwhile
                self._renew(held, job_id, owner)

    @staticmethod
    def _renew(held: _Lease, job_id: str, owner: str) -> None:
        try:
            with held.db.session_factory() as s:
                s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.lease_owner == owner)
                    .values(lease_expires_at=utcnow() + held.lease)
                )
                s.commit()
        except Exception:
            log.warning("could not renew the lease of job %s", job_id, exc_info=True)


_KEEPER = _LeaseKeeper()
os.register_at_fork(after_in_child=_KEEPER._reset)  # the parent's thread and lock are not the child's


# The statements every job sends, built once: SQLAlchemy keeps a statement object's cache key, so a
# job no longer builds and keys them (the values are bound at each execution). Neither session holds
# the job as an object (the claim's is new; the handler's ends with this update), so nothing in it is
# synchronised with the row.
_UNSYNCED = {"synchronize_session": False}
_CLAIM = (
    update(Job)
    .where(
        Job.id == bindparam("claim_job_id"),
        Job.attempts < Job.max_attempts,
        or_(Job.state == QUEUED, and_(Job.state == RUNNING, Job.lease_expires_at < bindparam("claim_now"))),
    )
    .values(
        state=RUNNING,
        attempts=Job.attempts + 1,
        lease_owner=bindparam("claim_owner"),
        lease_expires_at=bindparam("claim_expires"),
        started_at=bindparam("claim_now"),
    )
    .execution_options(**_UNSYNCED)
)
_CLAIM_RETURNING = _CLAIM.returning(Job.kind, Job.payload, Job.attempts)
_SUCCEED = (
    update(Job)
    .where(Job.id == bindparam("done_job_id"), Job.lease_owner == bindparam("done_owner"))
    .values(
        state=SUCCEEDED,
        result=bindparam("done_result", type_=Job.__table__.c.result.type),
        progress=1.0,
        lease_owner=None,
        lease_expires_at=None,
        finished_at=bindparam("done_at"),
        last_error=None,
    )
    .execution_options(**_UNSYNCED)
)


def run_job(db: Database, job_id: str, *, lease_seconds: int) -> str:
    """Claim and run one job. Returns what happened: claimed-by-other, succeeded, retry or failed."""
    owner = uuid.uuid4().hex
    lease = dt.timedelta(seconds=lease_seconds)
    now = utcnow()
    claim_params = {"claim_job_id": job_id, "claim_now": now, "claim_owner": owner, "claim_expires": now + lease}
    with db.session_factory() as s:
        if db.engine.dialect.update_returning:
            # What the handler needs comes back with the claim: no second statement to read it.
            claimed = s.connection().execute(_CLAIM_RETURNING, claim_params).one_or_none()
            s.commit()
            if claimed is None:
                return "not-claimed"
            kind, payload, attempt = claimed.kind, dict(claimed.payload), claimed.attempts
        else:  # SQLite before 3.35 has no RETURNING
            if s.connection().execute(_CLAIM, claim_params).rowcount != 1:
                s.commit()
                return "not-claimed"
            s.commit()
            job = s.get(Job, job_id)
            assert job is not None
            kind, payload, attempt = job.kind, dict(job.payload), job.attempts

    registered = _HANDLERS.get(kind)
    _KEEPER.hold(db, job_id, owner, lease)
    token = job_id_var.set(job_id)
    try:
        if registered is None:
            raise PermanentJobError(f"no handler registered for job kind {kind!r}")
        with db.session_factory() as session:
            ctx = JobContext(session, job_id, payload, attempt, _progress_reporter(db, job_id, owner, kind))
            result = registered.handler(ctx)
            # On the session's connection, not through the ORM's bulk UPDATE (which prepares, and first
            # flushes, for a statement that synchronises nothing): the handler's work is flushed at commit.
            finished = session.connection().execute(
                _SUCCEED,
                {"done_job_id": job_id, "done_owner": owner, "done_result": result or {}, "done_at": utcnow()},
            )
            if finished.rowcount != 1:
                # We lost the lease (the sweeper gave the job to another worker): our work must not land.
                session.rollback()
                return "lease-lost"
            session.commit()
            return SUCCEEDED
    except Exception as exc:  # noqa: BLE001 - every failure is recorded on the job, never lost
        return _record_failure(db, job_id, owner, exc)
    finally:
        job_id_var.reset(token)
        _KEEPER.release(job_id, owner)


def _describe(exc: BaseException) -> str:
    """The reason kept on the job, which custodians and the request's author may see: a database
    error is named, never quoted (its message carries the SQL)."""
    if isinstance(exc, StatementError):
        what = "the database was unavailable" if database_unavailable(exc) else "a database error"
        return f"{what} ({type(exc.orig).__name__})"
    return f"{type(exc).__name__}: {exc}"[:1000]


def _record_failure(db: Database, job_id: str, owner: str, exc: Exception) -> str:
    permanent = isinstance(exc, PermanentJobError)
    log.warning("job %s attempt failed: %s", job_id, type(exc).__name__)
    with db.session_factory() as s:
        job = s.get(Job, job_id)
        if job is None or job.lease_owner != owner:
            return "lease-lost"
        final = permanent or job.attempts >= job.max_attempts
        job.last_error = _describe(exc)
        job.lease_owner = None
        job.lease_expires_at = None
        if final:
            job.state = FAILED
            job.finished_at = utcnow()
        else:
            job.state = QUEUED
            job.last_sent_at = utcnow()
            s.info.setdefault("tre_jobs_to_send", []).append((job.id, job.queue))
        s.commit()
        return FAILED if final else "retry"


def _progress_reporter(db: Database, job_id: str, owner: str, kind: str) -> Callable[[float, str], None]:
    def report(fraction: float, message: str = "") -> None:
        with db.session_factory() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner)
                .values(progress=min(max(fraction, 0.0), 1.0), progress_message=message[:500])
            )
            s.commit()
        testpoints.reach(f"job.progress.{kind}")  # a test may hold the job here, mid-work (ADR 0004)

    return report


@dataclasses.dataclass(frozen=True)
class SweepReport:
    requeued_lost: int = 0
    resent_stale: int = 0
    failed: int = 0


def sweep(db: Database, *, requeue_after_seconds: int) -> SweepReport:
    """Take back jobs whose worker died and re-send queued jobs no worker picked up."""
    now = utcnow()
    requeued = failed = resent = 0
    to_send: list[tuple[str, str]] = []
    given_up: list[tuple[str, dict[str, Any], str]] = []
    with db.session_factory() as s:
        lost = s.scalars(select(Job).where(Job.state == RUNNING, Job.lease_expires_at < now)).all()
        for job in lost:
            job.lease_owner = None
            job.lease_expires_at = None
            job.last_error = f"worker lost during attempt {job.attempts}"
            if job.attempts >= job.max_attempts:
                job.state = FAILED
                job.finished_at = now
                failed += 1
                given_up.append((job.kind, dict(job.payload), job.last_error))
            else:
                job.state = QUEUED
                job.last_sent_at = now
                to_send.append((job.id, job.queue))
                requeued += 1
        stale_before = now - dt.timedelta(seconds=requeue_after_seconds)
        stale = s.scalars(select(Job).where(Job.state == QUEUED, Job.last_sent_at < stale_before)).all()
        for job in stale:
            job.last_sent_at = now
            to_send.append((job.id, job.queue))
            resent += 1
        s.info["tre_jobs_to_send"] = to_send
        s.commit()
    for kind, payload, reason in given_up:
        hook = _FAILURE_HOOKS.get(kind)
        if hook is None:
            continue
        try:
            with db.session_factory() as hs:
                hook(hs, payload, reason)
        except Exception as exc:  # noqa: BLE001 - the job is failed either way; the hook is told once
            log.error("job sweep: the worker-lost hook of %s failed: %s", kind, type(exc).__name__)
    if requeued or failed or resent:
        log.info("job sweep: %d lost requeued, %d stale resent, %d failed", requeued, resent, failed)
    return SweepReport(requeued, resent, failed)


# The diagnostic job `tre jobs selftest` sends: proves a worker takes jobs end to end.
@job_handler("kernel.selftest")
def _selftest(ctx: JobContext) -> dict[str, Any]:
    import os
    import time

    seconds = float(ctx.payload.get("sleep", 0))
    marker = ctx.payload.get("marker_file")
    if marker:
        with open(marker, "a", encoding="utf-8") as fh:
            fh.write(f"started {os.getpid()} attempt {ctx.attempt}\n")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx.report_progress(1 - (deadline - time.monotonic()) / max(seconds, 1e-9), "sleeping")
        time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
    return {"pid": os.getpid(), "attempt": ctx.attempt}
