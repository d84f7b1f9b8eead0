"""The audit log: append-only events chained with a keyed hash.

Every state change, sign-in, refusal, data access and download writes one event *in the same
transaction* as the change it records, so the log never claims something that did not happen and
nothing happens unrecorded. Each event's ``chain_hash`` is HMAC-SHA256 over the previous event's
hash and this event's canonical content, with a key from the key provider: someone who can write
to the database but does not hold the key cannot edit, delete, insert or reorder events without
``verify_chain`` finding the first broken link. Events carry no foreign keys, so they never block
deleting live rows, and they hold ids, never names, NHS numbers or secrets.

The chain admits one writer at a time, so ``record`` only queues the event on the session; just
before the transaction commits, ``write_pending`` takes the chain's lock, links the queued events
onto the chain's end and inserts them. The lock is held for that moment and the commit, not for
the whole request, and a transaction that records nothing never takes it. A rollback (of the
transaction, or of the savepoint an event was recorded in) discards what was queued.

The chain alone cannot show that events were cut off its end: a shorter chain is still a valid
chain. So after every commit that wrote events, the chain's length and head are written to a signed
checkpoint kept outside the database (``CheckpointFile``, in the instance folder, signed with a key
derived by the key provider); ``verify`` reads it first and reports a chain that ends before the
checkpoint, or differs from it at the checkpoint's event, as truncated or rewritten
(docs/adr/0011-audit-checkpoints.md says what this can and cannot detect).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import DDL, BigInteger, Index, Integer, String, event, select, text
from sqlalchemy.orm import Mapped, Session, SessionTransaction, mapped_column, scoped_session

from tre.core.db import Base, utcnow

GENESIS = "0" * 64
CHAIN_KEY_PURPOSE = "audit-chain"
CHAIN_LOCK_ID = 7340031  # PostgreSQL advisory lock that admits one chain writer at a time
_PENDING = "tre_audit_pending"  # session.info key of the events waiting for the commit
_HEAD = "tre_audit_head"  # session.info key of the chain's new head, for the checkpoint after commit
CHECKPOINT_KEY_PURPOSE = "audit-checkpoint"
CHECKPOINT_FILE = "audit-checkpoint.json"

log = logging.getLogger(__name__)

SUCCESS, DENIED, FAILURE = "success", "denied", "failure"


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_actor_time", "actor_id", "occurred_at"),
        Index("ix_audit_events_project_time", "project_id", "occurred_at"),
        Index("ix_audit_events_action", "action"),
    )

    # An integer sequence gives the chain its order; SQLite needs INTEGER for autoincrement.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    occurred_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(20), default=SUCCESS)
    target_type: Mapped[str | None] = mapped_column(String(50))
    target_id: Mapped[str | None] = mapped_column(String(64))
    project_id: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    chain_hash: Mapped[str] = mapped_column(String(64), unique=True)


# The database refuses changes to written events, on both backends. (The chain still catches
# anyone who drops the trigger: it is a second wall, not the only one.)
_SQLITE_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END",
]
_POSTGRES_TRIGGERS = [
    "CREATE OR REPLACE FUNCTION audit_events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'audit events are append-only'; END $$",
    "CREATE TRIGGER audit_events_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change()",
    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change()",
]


def append_only_ddl(dialect: str) -> list[str]:
    """The statements that make the table append-only; migrations run the same ones."""
    return _POSTGRES_TRIGGERS if dialect == "postgresql" else _SQLITE_TRIGGERS


for _statement in _SQLITE_TRIGGERS:
    event.listen(AuditEvent.__table__, "after_create", DDL(_statement).execute_if(dialect="sqlite"))
for _statement in _POSTGRES_TRIGGERS:
    event.listen(AuditEvent.__table__, "after_create", DDL(_statement).execute_if(dialect="postgresql"))


def _canonical(
    seq: int,
    occurred_at: dt.datetime,
    actor_id: str | None,
    action: str,
    outcome: str,
    target_type: str | None,
    target_id: str | None,
    project_id: str | None,
    request_id: str | None,
    detail: dict[str, Any],
) -> bytes:
    # Microsecond UTC text so SQLite and PostgreSQL round-trip the same value.
    stamp = occurred_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = [seq, stamp, actor_id, action, outcome, target_type, target_id, project_id, request_id, detail]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def link_hash(key: bytes, prev_hash: str, content: bytes) -> str:
    return hmac.new(key, prev_hash.encode() + b"\n" + content, hashlib.sha256).hexdigest()


class CheckpointError(Exception):
    """The checkpoint file exists but cannot be read, or its signature does not hold."""


@dataclass(frozen=True)
class Checkpoint:
    """What the chain looked like after a commit: its last event and how many events it held."""

    seq: int
    head: str
    count: int
    at: str  # UTC, ISO 8601

    def body(self) -> bytes:
        return json.dumps([self.seq, self.head, self.count, self.at], separators=(",", ":")).encode()


class CheckpointFile:
    """The signed checkpoint, one small JSON file rewritten atomically after each commit with events.

    Writers in several threads and processes take an advisory file lock and only ever move the
    checkpoint forward, so a commit that finishes late never replaces a newer checkpoint.
    """

    def __init__(self, path: Path | str, key: bytes) -> None:
        self.path = Path(path)
        self._key = key

    def __repr__(self) -> str:
        return f"CheckpointFile({self.path})"

    def _sign(self, checkpoint: Checkpoint) -> str:
        return hmac.new(self._key, checkpoint.body(), hashlib.sha256).hexdigest()

    def read(self) -> Checkpoint | None:
        """The current checkpoint, None when none was written yet; CheckpointError if it is not valid."""
        try:
            raw = json.loads(self.path.read_bytes())
            checkpoint = Checkpoint(int(raw["seq"]), str(raw["head"]), int(raw["count"]), str(raw["at"]))
            signature = str(raw["signature"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"the audit checkpoint {self.path} cannot be read") from exc
        if not hmac.compare_digest(self._sign(checkpoint), signature):
            raise CheckpointError(f"the audit checkpoint {self.path} is not signed with this instance's key")
        return checkpoint

    def advance(self, seq: int, head: str) -> bool:
        """Write a checkpoint at ``seq`` unless the file already holds one at or beyond it."""
        import fcntl  # POSIX only, like the rest of the service

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                current = self.read()
            except CheckpointError:
                current = None  # rewritten below; verify reported it while it was broken
            if current is not None and current.seq >= seq:
                return False
            at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            checkpoint = Checkpoint(seq, head, seq, at)  # seq counts from 1 without gaps
            data = {"seq": seq, "head": head, "count": seq, "at": at, "signature": self._sign(checkpoint)}
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, separators=(",", ":"))
            os.replace(tmp, self.path)
            return True
        finally:
            os.close(lock_fd)  # releases the lock


class AuditLog:
    """Queues events on the caller's session; the caller's commit links them onto the chain."""

    def __init__(
        self,
        chain_key: bytes,
        checkpoints: CheckpointFile | None = None,
        latest_seq: Callable[[], int | None] | None = None,
    ) -> None:
        self._key = chain_key
        self.checkpoints = checkpoints
        # The table's last seq, read on a connection of its own (see ``verify``).
        self._latest_seq = latest_seq

    def __repr__(self) -> str:
        return "AuditLog(<key hidden>)"

    def record(
        self,
        session: Session,
        action: str,
        *,
        actor_id: str | None,
        outcome: str = SUCCESS,
        target_type: str | None = None,
        target_id: str | None = None,
        project_id: str | None = None,
        request_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Queue one event for the session's transaction and return it.

        The returned event gets its ``seq`` and hashes when the transaction commits (or when
        ``write_pending`` is called); until then they are ``None`` and the row is not in the table.
        """
        row = AuditEvent(
            occurred_at=utcnow(),
            actor_id=actor_id,
            action=action,
            outcome=outcome,
            target_type=target_type,
            target_id=target_id,
            project_id=project_id,
            request_id=request_id,
            detail=_plain(detail or {}),
        )
        session = _real(session)
        if session.get_transaction() is None:
            session.begin()  # so a close without commit ends a transaction, which discards the queue
        queue: list[_Queued] = session.info.setdefault(_PENDING, [])
        queue.append(_Queued(self._key, row, session.get_nested_transaction(), self.checkpoints))
        return row

    def verify(self, events: Iterable[AuditEvent]) -> ChainReport:
        """Check every link, and the chain against the checkpoint, read before the first event is.

        Reading the checkpoint first matters: it is written after its commit, so every event it
        counts is already in the table when ``events`` is read.
        """
        if self.checkpoints is None:
            return verify_chain(self._key, events)
        try:
            checkpoint = self.checkpoints.read()
        except CheckpointError as exc:
            return ChainReport(0, False, None, str(exc))
        report = verify_chain(self._key, events, checkpoint)
        if report.ok or checkpoint is None or report.checked >= checkpoint.count or self._latest_seq is None:
            return report
        if report.first_broken_seq != report.checked + 1 or not (report.problem or "").startswith("truncated"):
            return report
        # The events may have been read in a transaction that began before the checkpoint's commit
        # (a caller's long-open session): if the table, read afresh, still reaches the checkpoint,
        # nothing was cut off; the events read were verified, the checkpoint's are not in them.
        latest = self._latest_seq()
        if latest is not None and latest >= checkpoint.seq:
            return ChainReport(report.checked, True, head=report.head)
        return report


@dataclass(frozen=True)
class _Queued:
    key: bytes = field(repr=False)
    row: AuditEvent
    # The savepoint the event was recorded in (None: the transaction itself), so rolling back
    # that savepoint discards the event and nothing else.
    savepoint: SessionTransaction | None
    checkpoints: CheckpointFile | None = None


def write_pending(session: Session) -> None:
    """Link the session's queued events onto the chain and insert them, in the order recorded.

    Runs by itself just before every commit. Call it earlier only to read the events back inside
    the transaction: from then on the transaction holds the chain's lock until it ends.
    """
    session = _real(session)
    if not session.info.get(_PENDING):
        return
    session.flush()  # the caller's own changes first, so the chain's lock is not held for them
    _lock_chain(session)
    last = session.execute(
        select(AuditEvent.seq, AuditEvent.chain_hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq, prev_hash = (last[0], last[1]) if last else (0, GENESIS)
    while queue := session.info.pop(_PENDING, None):
        for queued in queue:
            ev = queued.row
            seq += 1
            content = _canonical(
                seq, ev.occurred_at, ev.actor_id, ev.action, ev.outcome, ev.target_type, ev.target_id,
                ev.project_id, ev.request_id, ev.detail,
            )
            ev.seq, ev.prev_hash = seq, prev_hash
            ev.chain_hash = prev_hash = link_hash(queued.key, prev_hash, content)
            session.add(ev)
            if queued.checkpoints is not None:
                session.info[_HEAD] = (queued.checkpoints, seq, prev_hash)
        session.flush()


@event.listens_for(Session, "before_commit")
def _write_before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint is being released: its events wait for the real commit
    write_pending(session)


@event.listens_for(Session, "after_commit")
def _checkpoint_after_commit(session: Session) -> None:
    head = session.info.pop(_HEAD, None)
    if head is None:
        return
    checkpoints, seq, chain_hash = head
    try:
        checkpoints.advance(seq, chain_hash)
    except OSError:
        # The events are committed; a checkpoint that lags behind only narrows what verify can
        # prove, so the request is not failed for it. The next commit writes it again.
        log.exception("audit checkpoint not written")


@event.listens_for(Session, "after_soft_rollback")
def _discard_after_rollback(session: Session, rolled_back: SessionTransaction) -> None:
    # A failed flush rolls back a sub-transaction, and with it everything up to the nearest
    # savepoint or the transaction itself: that boundary is what was undone.
    boundary: SessionTransaction | None = rolled_back
    while boundary is not None and not boundary.nested and boundary.parent is not None:
        boundary = boundary.parent
    queue: list[_Queued] = session.info.get(_PENDING, [])
    if boundary is None or boundary.parent is None:
        queue.clear()
        return
    queue[:] = [q for q in queue if not _inside(q.savepoint, boundary)]


@event.listens_for(Session, "after_transaction_end")
def _forget_when_transaction_ends(session: Session, ended: SessionTransaction) -> None:
    if ended.parent is None:
        session.info.pop(_PENDING, None)  # written at commit, or discarded by rollback or close
        session.info.pop(_HEAD, None)


def _real(session: Session | scoped_session[Session]) -> Session:
    """Services pass the app's scoped session, which does not proxy the transaction accessors."""
    return session() if isinstance(session, scoped_session) else session


def _inside(savepoint: SessionTransaction | None, boundary: SessionTransaction) -> bool:
    while savepoint is not None:
        if savepoint is boundary:
            return True
        savepoint = savepoint.parent
    return False


def _plain(detail: dict[str, Any]) -> dict[str, Any]:
    """Round-trip through JSON so what is hashed is exactly what the database will return."""
    return json.loads(json.dumps(detail, sort_keys=True, default=str))


def _lock_chain(session: Session) -> None:
    """Serialise writers so two transactions never chain onto the same previous event."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": CHAIN_LOCK_ID})
    # SQLite: every transaction begins IMMEDIATE (see tre.core.db), which already serialises writers.


@dataclass(frozen=True)
class ChainReport:
    checked: int
    ok: bool
    first_broken_seq: int | None = None
    problem: str | None = None
    head: str | None = None  # the last event's chain hash, for an external anchor
    checkpoint: Checkpoint | None = None


def verify_chain(key: bytes, events: Iterable[AuditEvent], checkpoint: Checkpoint | None = None) -> ChainReport:
    """Walk events in sequence order and report the first one whose link does not hold.

    With a checkpoint, the chain must also reach the checkpoint's event and hold its hash there.
    """
    prev_hash = GENESIS
    expected_seq = 1
    checked = 0
    for ev in events:
        if ev.seq != expected_seq:
            problem = "an event is missing before this one" if ev.seq > expected_seq else "events out of order"
            return ChainReport(checked, False, ev.seq, problem)
        if ev.prev_hash != prev_hash:
            return ChainReport(checked, False, ev.seq, "does not follow the previous event")
        content = _canonical(
            ev.seq, ev.occurred_at, ev.actor_id, ev.action, ev.outcome, ev.target_type, ev.target_id,
            ev.project_id, ev.request_id, ev.detail,
        )
        if not hmac.compare_digest(link_hash(key, prev_hash, content), ev.chain_hash):
            return ChainReport(checked, False, ev.seq, "content was changed or the event was forged")
        if checkpoint is not None and ev.seq == checkpoint.seq and ev.chain_hash != checkpoint.head:
            return ChainReport(checked, False, ev.seq, "the chain was rebuilt: it differs from the checkpoint here")
        prev_hash = ev.chain_hash
        expected_seq += 1
        checked += 1
    if checkpoint is not None and checked < checkpoint.count:
        problem = (
            f"truncated: the checkpoint of {checkpoint.at} counts {checkpoint.count} events, "
            f"the chain holds {checked}"
        )
        return ChainReport(checked, False, checked + 1, problem, head=prev_hash if checked else None,
                           checkpoint=checkpoint)
    head = prev_hash if checked else None
    return ChainReport(checked, True, head=head, checkpoint=checkpoint)


def iter_events(session: Session, batch: int = 1000) -> Iterator[AuditEvent]:
    """Every event in chain order, read in batches so a long log does not fill memory.

    Give it a session of its own: it expunges what it has read as it goes.
    """
    last = 0
    while True:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq
        session.expunge_all()
