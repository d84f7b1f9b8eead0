"""The audit log: append-only events chained with a keyed hash.

Every state change, sign-in, refusal, data access and download writes one event *in the same
transaction* as the change it records, so the log never claims something that did not happen and
nothing happens unrecorded. Each event's ``chain_hash`` is HMAC-SHA256 over the previous event's
hash and this event's canonical content, with a key from the key provider: someone who can write
to the database but does not hold the key cannot edit, delete, insert or reorder events without
``verify_chain`` finding the first broken link. Events carry no foreign keys, so they never block
deleting live rows, and they hold ids, never names, NHS numbers or secrets.

The log is a small number of chains, *lanes* (docs/adr/0016-audit-chain-lanes.md): each event
belongs to one lane and links to the previous event of that lane (``lane_seq`` counts from 1 in
each lane without gaps), and ``seq`` orders all events. A lane admits one writer at a time, so
``record`` only queues the event on the session; just before the transaction commits,
``write_pending`` takes a free lane (on PostgreSQL the first of ``CHAIN_LANES`` advisory locks
nobody holds, so concurrent commits no longer queue behind one lock; SQLite has one writer anyway
and uses lane 0 alone), links the queued events onto that lane's end and inserts them. The lock
is held for that moment and the commit, and a transaction that records nothing never takes it. A
rollback (of the transaction, or of the savepoint an event was recorded in) discards what was
queued.

The chain alone cannot show that events were cut off its end: a shorter chain is still a valid
chain. So after every commit that wrote events, each lane's length and head are written to a signed
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
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    DDL,
    BigInteger,
    Index,
    Integer,
    SmallInteger,
    String,
    UniqueConstraint,
    bindparam,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Session, SessionTransaction, mapped_column, scoped_session

from tre.core.db import Base, utcnow

GENESIS = "0" * 64
CHAIN_KEY_PURPOSE = "audit-chain"
CHAIN_LOCK_ID = 7340031  # PostgreSQL advisory locks (CHAIN_LOCK_ID, lane): one writer per lane
CHAIN_LANES = 8  # lanes on PostgreSQL: commits of audited writes run this many at once
_PENDING = "tre_audit_pending"  # session.info key of the events waiting for the commit
_HEAD = "tre_audit_head"  # session.info key of the lane's new head, for the checkpoint after commit
_LANE = "tre_audit_lane"  # session.info key of the lane this transaction holds
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
        UniqueConstraint("lane", "lane_seq"),  # two writers can never fork a lane
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
    # The lane the event was chained in and its place there (1, 2, ... without gaps). Not part of
    # the hashed content (events before lanes existed are all lane 0 with lane_seq = seq): moving an
    # event to another lane or place breaks the links around it.
    lane: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    lane_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))


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
    return _CANONICAL_JSON(body).encode()


# The encoder ``json.dumps`` would build for these options on every call, built once: the same text.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode


def link_hash(key: bytes, prev_hash: str, content: bytes) -> str:
    # hmac.digest: the same HMAC-SHA256, in one call into the hash library rather than an HMAC object.
    return hmac.digest(key, prev_hash.encode() + b"\n" + content, "sha256").hex()


class CheckpointError(Exception):
    """The checkpoint file exists but cannot be read, or its signature does not hold."""


@dataclass(frozen=True, order=True)
class LaneHead:
    """The end of one lane: how many events it holds and the last one's chain hash."""

    lane: int
    lane_seq: int
    head: str


@dataclass(frozen=True)
class Checkpoint:
    """What the chain looked like after a commit: the head of every lane written so far."""

    lanes: tuple[LaneHead, ...]  # sorted by lane
    at: str  # UTC, ISO 8601

    @property
    def count(self) -> int:
        """Events the checkpoint counts (each lane's events are numbered from 1 without gaps)."""
        return sum(h.lane_seq for h in self.lanes)

    def lane(self, lane: int) -> LaneHead | None:
        return next((h for h in self.lanes if h.lane == lane), None)

    def body(self) -> bytes:
        lanes = [[h.lane, h.lane_seq, h.head] for h in self.lanes]
        return json.dumps(["lanes", lanes, self.at], separators=(",", ":")).encode()


class CheckpointFile:
    """The signed checkpoint, one small JSON file rewritten atomically after each commit with events.

    Writers in several threads and processes take an advisory file lock and only ever move a lane's
    head forward, so a commit that finishes late never replaces a newer head.

    Under the lock a writer reads the file and merges its head into it. When the bytes read are,
    byte for byte, those this object wrote last, they say what that write said: its checkpoint is
    used rather than parsed and its signature checked again. Any other bytes (another writer's
    commit, in this process or another, or a file someone edited) are parsed and checked as ever.
    """

    def __init__(self, path: Path | str, key: bytes) -> None:
        self.path = Path(path)
        self._key = key
        # Worked out once, not on every commit (ADR 0054): the lock's path and the temporary file's.
        self._lock_path = str(self.path.with_name(self.path.name + ".lock"))
        self._tmp_prefix = str(self.path.with_name(f".{self.path.name}."))
        # The bytes this object wrote last and the checkpoint they hold.
        self._written: tuple[bytes, Checkpoint] | None = None

    def __repr__(self) -> str:
        return f"CheckpointFile({self.path})"

    def _sign(self, body: bytes) -> str:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def read(self) -> Checkpoint | None:
        """The current checkpoint, None when none was written yet; CheckpointError if it is not valid."""
        data = self._bytes()
        return None if data is None else self._parse(data)

    def _bytes(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"the audit checkpoint {self.path} cannot be read") from exc

    def _parse(self, data: bytes) -> Checkpoint:
        try:
            raw = json.loads(data)
            signature = str(raw["signature"])
            if "lanes" in raw:
                lanes = tuple(sorted(LaneHead(int(a), int(b), str(c)) for a, b, c in raw["lanes"]))
                checkpoint = Checkpoint(lanes, str(raw["at"]))
                body = checkpoint.body()
            else:  # written before lanes (ADR 0011): one chain, which is lane 0
                seq, head, count, at = int(raw["seq"]), str(raw["head"]), int(raw["count"]), str(raw["at"])
                checkpoint = Checkpoint((LaneHead(0, seq, head),), at)
                body = json.dumps([seq, head, count, at], separators=(",", ":")).encode()
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"the audit checkpoint {self.path} cannot be read") from exc
        if not hmac.compare_digest(self._sign(body), signature):
            raise CheckpointError(f"the audit checkpoint {self.path} is not signed with this instance's key")
        return checkpoint

    def advance(self, lane: int, lane_seq: int, head: str) -> bool:
        """Record ``head`` as the end of ``lane`` unless the file already holds that lane at or beyond it."""
        import fcntl  # POSIX only, like the rest of the service

        try:
            lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # no folder yet (or no more): made here, not asked for on every commit
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                current = self._read_under_lock()
            except CheckpointError:
                current = None  # rewritten below; verify reported it while it was broken
            heads = {h.lane: h for h in current.lanes} if current is not None else {}
            known = heads.get(lane)
            if known is not None and known.lane_seq >= lane_seq:
                return False
            heads[lane] = LaneHead(lane, lane_seq, head)
            at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            checkpoint = Checkpoint(tuple(sorted(heads.values())), at)
            data = {"lanes": [[h.lane, h.lane_seq, h.head] for h in checkpoint.lanes], "count": checkpoint.count,
                    "at": at, "signature": self._sign(checkpoint.body())}
            tmp = f"{self._tmp_prefix}{os.getpid()}.tmp"
            text_ = json.dumps(data, separators=(",", ":")).encode()  # the same text as json.dump, in one write
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                rest = text_
                while rest:  # a regular file takes it whole, short of a full disk
                    rest = rest[os.write(fd, rest):]
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            self._written = (text_, checkpoint)
            return True
        finally:
            os.close(lock_fd)  # releases the lock

    def _read_under_lock(self) -> Checkpoint | None:
        """``read``, but the bytes this object wrote last are not parsed and verified a second time."""
        data, written = self._bytes(), self._written
        if data is None:
            return None
        if written is not None and data == written[0]:
            return written[1]
        return self._parse(data)


class AuditLog:
    """Queues events on the caller's session; the caller's commit links them onto the chain."""

    def __init__(
        self,
        chain_key: bytes,
        checkpoints: CheckpointFile | None = None,
        lane_lengths: Callable[[], dict[int, int]] | None = None,
    ) -> None:
        self._key = chain_key
        self.checkpoints = checkpoints
        # Each lane's last lane_seq in the table, read on a connection of its own (see ``verify``).
        self._lane_lengths = lane_lengths

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
        if report.ok or checkpoint is None or self._lane_lengths is None or not report.truncated:
            return report
        # The events may have been read in a transaction that began before the checkpoint's commit
        # (a caller's long-open session): if the table, read afresh, still reaches the checkpoint in
        # every lane, nothing was cut off; the events read were verified, the checkpoint's are not in them.
        lengths = self._lane_lengths()
        if all(lengths.get(h.lane, 0) >= h.lane_seq for h in checkpoint.lanes):
            return ChainReport(report.checked, True, heads=report.heads)
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
    session.flush()  # the caller's own changes first, so the lane's lock is not held for them
    # The chain's statements go to the transaction's connection itself: they are Core statements
    # with every value bound, so the session's ORM execution (its events, autoflush, ORM result
    # rows) has nothing to add, and the flush above already sent the caller's changes.
    conn = session.connection()
    postgres = conn.dialect.name == "postgresql"
    lane = _take_lane(session, conn, postgres)
    first = True
    while queue := session.info.pop(_PENDING, None):
        if first:  # the lane's end and the first batch's numbers in one statement
            lane_seq, prev_hash, seqs = _lane_end_and_seqs(conn, lane, len(queue), postgres)
            first = False
        else:  # events queued while the previous batch was written (rare): numbered after them
            _, _, seqs = _lane_end_and_seqs(conn, lane, len(queue), postgres)
        rows: list[dict[str, Any]] = []
        for queued, seq in zip(queue, seqs, strict=True):
            ev = queued.row
            lane_seq += 1
            content = _canonical(
                seq, ev.occurred_at, ev.actor_id, ev.action, ev.outcome, ev.target_type, ev.target_id,
                ev.project_id, ev.request_id, ev.detail,
            )
            ev.seq, ev.lane, ev.lane_seq, ev.prev_hash = seq, lane, lane_seq, prev_hash
            ev.chain_hash = prev_hash = link_hash(queued.key, prev_hash, content)
            rows.append({column: getattr(ev, column) for column in _EVENT_COLUMNS})
            if queued.checkpoints is not None:
                session.info[_HEAD] = (queued.checkpoints, lane, lane_seq, prev_hash)
        # One INSERT of the batch's rows, not the unit of work (ADR 0051): every value is set above,
        # and nothing in the transaction holds the events as objects (``record`` returns each with
        # its values filled in, as before; it is not added to the session). A single row (most
        # commits) is sent as one execute, not as an executemany of one.
        conn.execute(_INSERT_EVENTS, rows[0] if len(rows) == 1 else rows)


_EVENT_COLUMNS = ("seq", "occurred_at", "actor_id", "action", "outcome", "target_type", "target_id", "project_id",
                  "request_id", "detail", "prev_hash", "chain_hash", "lane", "lane_seq")
_INSERT_EVENTS = AuditEvent.__table__.insert()  # a Core insert: no unit of work, no ORM bulk path


def _lane_end_statement(postgres: bool) -> Any:
    """One statement: the lane's last ``lane_seq`` and chain hash, and the numbers ``seq`` takes.

    PostgreSQL draws the numbers from the column's own sequence, so lanes need no lock in common
    (a rollback leaves a gap in ``seq``). SQLite admits one writer at a time (``BEGIN IMMEDIATE``),
    so the next numbers are simply those after the table's last. The lane's lock is already held
    (``_take_lane`` ran as a statement of its own before this one, so on PostgreSQL this statement's
    snapshot already sees every event chained onto the lane before the lock was granted).
    """
    events = AuditEvent.__table__.c  # the table's columns: a Core statement, no ORM compilation

    def newest(column: Any) -> Any:
        return (select(column).where(events.lane == bindparam("lane"))
                .order_by(events.lane_seq.desc()).limit(1).scalar_subquery())

    if postgres:
        serial = func.pg_get_serial_sequence("audit_events", "seq")
        numbers = (select(func.array_agg(func.nextval(serial)))
                   .select_from(func.generate_series(1, bindparam("n"))).scalar_subquery())
    else:
        numbers = select(func.max(events.seq)).scalar_subquery()
    return select(newest(events.lane_seq), newest(events.chain_hash), numbers)


_LANE_END = {True: _lane_end_statement(True), False: _lane_end_statement(False)}  # built once, cached by key


def _lane_end_and_seqs(conn: Connection, lane: int, n: int, postgres: bool) -> tuple[int, str, list[int]]:
    row = conn.execute(_LANE_END[postgres], {"lane": lane, "n": n}).one()
    lane_seq, prev_hash = (int(row[0]), str(row[1])) if row[0] is not None else (0, GENESIS)
    if postgres:
        seqs = [int(x) for x in row[2]]
    else:
        top = int(row[2] or 0)
        seqs = list(range(top + 1, top + 1 + n))
    return lane_seq, prev_hash, seqs


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
    checkpoints, lane, lane_seq, chain_hash = head
    try:
        checkpoints.advance(lane, lane_seq, chain_hash)
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
        session.info.pop(_LANE, None)  # the transaction's end released the lane's lock


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


_TRY_LANES = text("SELECT lane FROM generate_series(0, :n - 1) AS lane "
                  "WHERE pg_try_advisory_xact_lock(:id, lane) LIMIT 1")
_WAIT_FOR_LANE = text("SELECT pg_advisory_xact_lock(:id, :lane)")


def _take_lane(session: Session, conn: Connection, postgres: bool) -> int:
    """Lock a lane for this transaction, so no one else chains onto the same previous event, and
    return it. PostgreSQL: the first lane whose advisory lock is free (uncontended writes all go to
    lane 0), waiting only when all ``CHAIN_LANES`` are taken. SQLite: lane 0, as every transaction
    begins IMMEDIATE (see tre.core.db), which already admits one writer at a time."""
    held = session.info.get(_LANE)
    if held is not None:
        return int(held)
    lane = 0
    if postgres:
        free = conn.execute(_TRY_LANES, {"n": CHAIN_LANES, "id": CHAIN_LOCK_ID}).scalar()
        if free is None:
            lane = secrets.randbelow(CHAIN_LANES)
            conn.execute(_WAIT_FOR_LANE, {"id": CHAIN_LOCK_ID, "lane": lane})
        else:
            lane = int(free)
    session.info[_LANE] = lane
    return lane


@dataclass(frozen=True)
class ChainReport:
    checked: int
    ok: bool
    first_broken_seq: int | None = None
    problem: str | None = None
    heads: tuple[tuple[int, int, str], ...] = ()  # (lane, seq, chain hash) of each lane's last event
    checkpoint: Checkpoint | None = None
    truncated: bool = False  # a lane ends before the checkpoint's head

    @property
    def head(self) -> str | None:
        """The chain hash of the last event written (the highest seq), for an external anchor."""
        return max(self.heads, key=lambda h: h[1])[2] if self.heads else None


def verify_chain(key: bytes, events: Iterable[AuditEvent], checkpoint: Checkpoint | None = None) -> ChainReport:
    """Walk events in ``seq`` order and report the first one whose link in its lane does not hold.

    Each lane must run 1, 2, 3... with every event linked to the one before it in the lane. With a
    checkpoint, every lane it names must also reach the checkpoint's head and hold its hash there.
    """
    lanes: dict[int, tuple[int, str, int]] = {}  # lane: (events seen, last chain hash, last seq)
    checked = 0
    for ev in events:
        seen, prev_hash, _ = lanes.get(ev.lane, (0, GENESIS, 0))
        if ev.lane_seq != seen + 1:
            problem = "an event is missing before this one" if ev.lane_seq > seen + 1 else "events out of order"
            return ChainReport(checked, False, ev.seq, problem)
        if ev.prev_hash != prev_hash:
            return ChainReport(checked, False, ev.seq, "does not follow the previous event")
        content = _canonical(
            ev.seq, ev.occurred_at, ev.actor_id, ev.action, ev.outcome, ev.target_type, ev.target_id,
            ev.project_id, ev.request_id, ev.detail,
        )
        if not hmac.compare_digest(link_hash(key, prev_hash, content), ev.chain_hash):
            return ChainReport(checked, False, ev.seq, "content was changed or the event was forged")
        mark = checkpoint.lane(ev.lane) if checkpoint is not None else None
        if mark is not None and ev.lane_seq == mark.lane_seq and ev.chain_hash != mark.head:
            return ChainReport(checked, False, ev.seq, "the chain was rebuilt: it differs from the checkpoint here")
        lanes[ev.lane] = (ev.lane_seq, ev.chain_hash, ev.seq)
        checked += 1
    heads = tuple((lane, seq, chain_hash) for lane, (_, chain_hash, seq) in sorted(lanes.items()))
    short = [h for h in (checkpoint.lanes if checkpoint is not None else ()) if lanes.get(h.lane, (0,))[0] < h.lane_seq]
    if checkpoint is not None and short:
        held = sum(n for n, _, _ in lanes.values())
        problem = (
            f"truncated: the checkpoint of {checkpoint.at} counts {checkpoint.count} events, "
            f"the chain holds {held}"
            + ("" if checkpoint.lanes == (short[0],) and short[0].lane == 0 else
               f" (lanes {', '.join(str(h.lane) for h in short)} end early)")
        )
        after = max((seq for _, _, seq in lanes.values()), default=0) + 1
        return ChainReport(checked, False, after, problem, heads=heads, checkpoint=checkpoint, truncated=True)
    return ChainReport(checked, True, heads=heads, checkpoint=checkpoint)


def iter_events(session: Session, batch: int = 1000) -> Iterator[AuditEvent]:
    """Every event in ``seq`` order, read in batches so a long log does not fill memory.

    Give it a session of its own: it expunges what it has read as it goes. On PostgreSQL the batches
    are read in one REPEATABLE READ snapshot: lanes commit independently, so an event can become
    visible after one with a higher ``seq``, and batches read at different moments could skip it.
    """
    if session.get_bind().dialect.name == "postgresql" and session.get_transaction() is None:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
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
