"""The audit chain: every edit, deletion, insertion or reordering is found, on both databases.

Events are queued by ``record`` and linked onto the chain just before commit, so also: what a
rollback undoes is never written, concurrent writers build one gapless chain, and a transaction
that is slow between recording and committing does not hold up anyone else's commit.
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError

from tre.core.audit import (
    CHAIN_LANES,
    CHAIN_LOCK_ID,
    GENESIS,
    AuditEvent,
    AuditLog,
    CheckpointFile,
    LaneHead,
    iter_events,
    write_pending,
)
from tre.core.db import transaction
from tre.core.identity import User

KEY = b"k" * 32


@pytest.fixture
def log() -> AuditLog:
    return AuditLog(KEY)


def _write(app: Any, log: AuditLog, n: int) -> None:
    db = app.extensions["tre.db"]
    for i in range(n):
        with transaction(db.session) as s:
            log.record(s, "thing.happened", actor_id=f"user{i}", project_id="p1", detail={"i": i, "note": "é"})


def _verify(app: Any, log: AuditLog) -> Any:
    db = app.extensions["tre.db"]
    with db.session_factory() as s:
        return log.verify(iter_events(s, batch=3))


def _tamper(app: Any, sql: str) -> None:
    """An attacker with database access: drops the append-only triggers and edits rows."""
    engine = app.extensions["tre.db"].engine
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_events_no_update"))
            conn.execute(text("DROP TRIGGER audit_events_no_delete"))
        else:
            conn.execute(text("DROP TRIGGER audit_events_no_update_or_delete ON audit_events"))
        conn.execute(text(sql))


def test_untouched_chain_verifies(app: Any, log: AuditLog) -> None:
    _write(app, log, 7)

    report = _verify(app, log)

    assert report.ok and report.checked == 7


def test_application_cannot_update_or_delete_events(app: Any, log: AuditLog) -> None:
    _write(app, log, 2)
    engine = app.extensions["tre.db"].engine

    for sql in ("UPDATE audit_events SET action = 'x' WHERE seq = 1", "DELETE FROM audit_events WHERE seq = 1"):
        with pytest.raises(DatabaseError, match="append-only"), engine.begin() as conn:
            conn.execute(text(sql))


@pytest.mark.parametrize(
    ("sql", "broken_at"),
    [
        ("UPDATE audit_events SET actor_id = 'someone-else' WHERE seq = 3", 3),
        ("UPDATE audit_events SET outcome = 'denied' WHERE seq = 5", 5),
        ("DELETE FROM audit_events WHERE seq = 4", 5),
        ("UPDATE audit_events SET seq = seq + 100 WHERE seq = 2", 3),
    ],
    ids=["edited-actor", "edited-outcome", "deleted", "moved"],
)
def test_tampering_is_reported_at_the_first_broken_link(
    app: Any, log: AuditLog, sql: str, broken_at: int
) -> None:
    _write(app, log, 6)
    _tamper(app, sql)

    report = _verify(app, log)

    assert not report.ok
    assert report.first_broken_seq == broken_at


def test_swapping_two_events_is_detected(app: Any, log: AuditLog) -> None:
    _write(app, log, 4)
    _tamper(app, "UPDATE audit_events SET seq = 99 WHERE seq = 2")
    engine = app.extensions["tre.db"].engine
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET seq = 2 WHERE seq = 3"))
        conn.execute(text("UPDATE audit_events SET seq = 3 WHERE seq = 99"))

    report = _verify(app, log)

    assert not report.ok and report.first_broken_seq == 2


def test_event_inserted_without_the_key_is_detected(app: Any, log: AuditLog) -> None:
    _write(app, log, 3)
    forger = AuditLog(b"not-the-key" * 3)
    db = app.extensions["tre.db"]
    with transaction(db.session) as s:
        forger.record(s, "user.create", actor_id="intruder")

    report = _verify(app, log)

    assert not report.ok and report.first_broken_seq == 4


def test_chain_checked_with_another_key_fails_at_the_first_event(app: Any, log: AuditLog) -> None:
    _write(app, log, 2)

    report = _verify(app, AuditLog(b"another-key" * 3))

    assert not report.ok and report.first_broken_seq == 1


def _actions(app: Any) -> list[str]:
    with app.extensions["tre.db"].session_factory() as s:
        return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


class _Abandoned(Exception):
    pass


def test_recorded_event_is_written_and_linked_when_its_transaction_commits(app: Any, log: AuditLog) -> None:
    db = app.extensions["tre.db"]
    with transaction(db.session) as s:
        event = log.record(s, "thing.happened", actor_id="u1")
        assert event.seq is None
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 0

    assert (event.seq, event.prev_hash) == (1, GENESIS)
    assert _actions(app) == ["thing.happened"] and _verify(app, log).ok


def test_rollback_discards_the_events_it_queued(app: Any, log: AuditLog) -> None:
    db = app.extensions["tre.db"]
    with pytest.raises(_Abandoned), transaction(db.session) as s:
        log.record(s, "thing.undone", actor_id="u1")
        raise _Abandoned

    _write(app, log, 1)

    assert _actions(app) == ["thing.happened"]
    assert _verify(app, log).checked == 1


def test_closing_a_session_without_commit_discards_its_events(app: Any, log: AuditLog) -> None:
    db = app.extensions["tre.db"]
    s = db.session_factory()
    log.record(s, "thing.undone", actor_id="u1")
    s.close()
    with transaction(s):  # the same session, used again
        log.record(s, "thing.happened", actor_id="u1")
    s.close()

    assert _actions(app) == ["thing.happened"]


def test_savepoint_rollback_discards_only_the_events_recorded_inside_it(app: Any, log: AuditLog) -> None:
    db = app.extensions["tre.db"]
    with transaction(db.session) as s:
        log.record(s, "before", actor_id="u1")
        with contextlib.suppress(_Abandoned), s.begin_nested():
            log.record(s, "inside.undone", actor_id="u1")
            with s.begin_nested():
                log.record(s, "inside.inner.undone", actor_id="u1")
            raise _Abandoned
        with s.begin_nested():
            log.record(s, "inside.kept", actor_id="u1")
        log.record(s, "after", actor_id="u1")

    assert _actions(app) == ["before", "inside.kept", "after"]
    assert _verify(app, log).ok


def test_failed_insert_in_a_savepoint_keeps_the_events_recorded_outside_it(app: Any, log: AuditLog) -> None:
    # The idempotent-create pattern of the services: insert in a savepoint, catch the conflict.
    db = app.extensions["tre.db"]
    with transaction(db.session) as s:
        s.add(User(email="taken@example.org", display_name="First"))
    with transaction(db.session) as s:
        log.record(s, "before", actor_id="u1")
        with contextlib.suppress(IntegrityError), s.begin_nested():
            s.add(User(email="taken@example.org", display_name="Second"))
            s.flush()
        log.record(s, "after", actor_id="u1")

    assert _actions(app) == ["before", "after"]


def test_event_is_not_written_when_its_change_fails_to_commit(app: Any, log: AuditLog) -> None:
    db = app.extensions["tre.db"]
    with transaction(db.session) as s:
        s.add(User(email="taken@example.org", display_name="First"))
    with pytest.raises(IntegrityError), transaction(db.session) as s:
        s.add(User(email="taken@example.org", display_name="Second"))
        log.record(s, "user.create", actor_id="admin")

    assert _actions(app) == []


def test_events_written_early_can_be_read_back_inside_the_transaction(app: Any, log: AuditLog) -> None:
    db = app.extensions["tre.db"]
    with transaction(db.session) as s:
        log.record(s, "first", actor_id="u1")
        write_pending(s)
        assert list(s.scalars(select(AuditEvent.action))) == ["first"]
        log.record(s, "second", actor_id="u1")

    assert _actions(app) == ["first", "second"]
    assert _verify(app, log).checked == 2


def test_concurrent_writers_build_gapless_lanes_with_each_transaction_linked_together(
    app: Any, log: AuditLog
) -> None:
    db = app.extensions["tre.db"]
    writers, rounds = 8, 12
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def write(n: int) -> None:
        try:
            start.wait()
            for i in range(rounds):
                with contextlib.suppress(_Abandoned), db.session_factory() as s, transaction(s):
                    log.record(s, "thing.happened", actor_id=f"w{n}", detail={"i": i})
                    if i % 3 == 0:
                        log.record(s, "thing.followed", actor_id=f"w{n}", detail={"i": i})
                    if i % 4 == 3:
                        raise _Abandoned
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert failures == []
    committed = [i for i in range(rounds) if i % 4 != 3]
    expected = writers * sum(2 if i % 3 == 0 else 1 for i in committed)
    report = _verify(app, log)
    assert report.ok and report.checked == expected
    with db.session_factory() as s:
        rows = s.execute(select(AuditEvent.lane, AuditEvent.lane_seq, AuditEvent.seq, AuditEvent.action,
                                AuditEvent.actor_id, AuditEvent.detail)
                         .order_by(AuditEvent.lane, AuditEvent.lane_seq)).all()
    assert len({r.seq for r in rows}) == expected
    for lane in {r.lane for r in rows}:
        assert [r.lane_seq for r in rows if r.lane == lane] == list(range(1, sum(r.lane == lane for r in rows) + 1))
    # A transaction's events are linked together: each follow-up comes right after its own event.
    for previous, row in zip(rows, rows[1:], strict=False):
        if row.action == "thing.followed":
            assert previous.lane == row.lane
            assert (previous.action, previous.actor_id, previous.detail) == ("thing.happened", row.actor_id, row.detail)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_open_transaction_with_a_recorded_event_does_not_block_another_writer(app: Any, log: AuditLog) -> None:
    db = app.extensions["tre.db"]
    recorded, finish = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def slow_writer() -> None:
        try:
            with db.session_factory() as s, transaction(s):
                log.record(s, "slow.writer", actor_id="a")
                s.execute(text("SELECT 1"))  # its transaction is open on the server
                recorded.set()
                finish.wait(timeout=120)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)
        finally:
            recorded.set()

    slow = threading.Thread(target=slow_writer)
    slow.start()
    try:
        recorded.wait()
        with db.session_factory() as s, transaction(s):
            # Turns waiting for the slow writer into an error instead of a hang.
            s.execute(text("SET LOCAL lock_timeout = '10s'"))
            log.record(s, "quick.writer", actor_id="b")
    finally:
        finish.set()
        slow.join()

    assert failures == []
    assert _actions(app) == ["quick.writer", "slow.writer"]
    assert _verify(app, log).ok


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_chain_lock_is_taken_at_commit_and_only_when_something_was_recorded(app: Any, log: AuditLog) -> None:
    db = app.extensions["tre.db"]
    with db.engine.connect() as other_writer:
        other_writer.execute(text("SELECT pg_advisory_xact_lock(:id, lane) FROM generate_series(0, :n - 1) AS lane"),
                             {"id": CHAIN_LOCK_ID, "n": CHAIN_LANES})  # every lane taken

        with db.session_factory() as s, transaction(s):
            s.execute(text("SET LOCAL lock_timeout = '1s'"))
            s.add(User(email="unaudited@example.org", display_name="No event"))

        with db.session_factory() as s:
            s.execute(text("SET LOCAL lock_timeout = '1s'"))
            log.record(s, "thing.happened", actor_id="u1")
            with pytest.raises(OperationalError, match="lock timeout"):
                s.commit()
            s.rollback()
        other_writer.rollback()

    assert _actions(app) == []
    with db.session_factory() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 1


# --- the checkpoint: the chain commits to its length and head outside the database -------------

CHECKPOINT_KEY = b"c" * 32


def _checkpointed_log(app: Any) -> AuditLog:
    path = app.extensions["tre.platform"].settings.instance_path / "test-checkpoint.json"
    engine = app.extensions["tre.db"].engine

    def lane_lengths() -> dict[int, int]:
        raw = engine.raw_connection()  # as the platform does: no BEGIN IMMEDIATE on SQLite
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT lane, max(lane_seq) FROM audit_events GROUP BY lane")
            return dict(cursor.fetchall())
        finally:
            raw.close()

    return AuditLog(KEY, CheckpointFile(path, CHECKPOINT_KEY), lane_lengths)


def test_events_read_before_a_later_checkpoint_are_not_called_truncated(app: Any) -> None:
    # A caller's session read the events, then other requests committed and moved the checkpoint on.
    log = _checkpointed_log(app)
    _write(app, log, 3)
    with app.extensions["tre.db"].session_factory() as s:
        events = list(iter_events(s))
    _write(app, log, 2)

    report = log.verify(events)

    assert report.ok and report.checked == 3


def test_truncating_the_last_events_is_reported_against_the_checkpoint(app: Any) -> None:
    log = _checkpointed_log(app)
    _write(app, log, 40)
    _tamper(app, "DELETE FROM audit_events WHERE seq > 15")  # the last 25, triggers dropped

    report = _verify(app, log)

    assert not report.ok
    assert report.first_broken_seq == 16
    assert report.problem is not None and "truncated" in report.problem and "40" in report.problem


def test_checkpoint_follows_every_commit_that_wrote_events(app: Any) -> None:
    log = _checkpointed_log(app)
    _write(app, log, 3)
    assert log.checkpoints is not None

    checkpoint = log.checkpoints.read()
    report = _verify(app, log)

    assert checkpoint is not None and checkpoint.count == 3
    assert report.ok and checkpoint.lanes == (LaneHead(0, 3, report.head or ""),)


def test_chain_rebuilt_with_the_chain_key_is_reported_at_the_checkpoint(app: Any) -> None:
    # An attacker who holds the chain key (not the checkpoint key) cuts the last events and
    # appends as many new ones, so length and links hold: the head no longer matches.
    log = _checkpointed_log(app)
    _write(app, log, 6)
    _tamper(app, "DELETE FROM audit_events WHERE seq > 4")
    _write(app, AuditLog(KEY), 2)
    with app.extensions["tre.db"].session_factory() as s:
        sixth = s.scalar(select(AuditEvent.seq).where(AuditEvent.lane_seq == 6))

    report = _verify(app, log)

    assert not report.ok and report.first_broken_seq == sixth and "rebuilt" in (report.problem or "")


def test_edited_checkpoint_is_refused(app: Any) -> None:
    log = _checkpointed_log(app)
    _write(app, log, 5)
    _tamper(app, "DELETE FROM audit_events WHERE seq > 2")
    assert log.checkpoints is not None
    path = log.checkpoints.path
    forged = json.loads(path.read_text())
    forged["lanes"][0][1] = forged["count"] = 2  # the attacker lowers the count to match the cut chain
    path.write_text(json.dumps(forged))

    report = _verify(app, log)

    assert not report.ok and "not signed" in (report.problem or "")


def test_checkpoint_never_moves_back(tmp_path: Any) -> None:
    checkpoints = CheckpointFile(tmp_path / "cp.json", CHECKPOINT_KEY)

    assert checkpoints.advance(0, 10, "a" * 64)
    assert not checkpoints.advance(0, 9, "b" * 64)  # a commit that finished late
    assert checkpoints.advance(1, 3, "c" * 64)  # another lane moves on its own

    current = checkpoint_lanes = checkpoints.read()
    assert current is not None and current.lanes == (LaneHead(0, 10, "a" * 64), LaneHead(1, 3, "c" * 64))
    assert checkpoint_lanes is not None and checkpoint_lanes.count == 13


def test_checkpoint_is_advanced_without_asking_for_its_folder_each_commit(tmp_path: Any, monkeypatch: Any) -> None:
    import os

    checkpoints = CheckpointFile(tmp_path / "cp.json", CHECKPOINT_KEY)
    assert checkpoints.advance(0, 1, "a" * 64)
    made: list[Any] = []
    real_mkdir = os.mkdir
    monkeypatch.setattr(os, "mkdir", lambda *a, **k: (made.append(a), real_mkdir(*a, **k)))

    for seq in range(2, 6):
        assert checkpoints.advance(0, seq, "b" * 64)

    assert made == []  # ADR 0054: the folder is made when it is missing, not asked for every time
    current = checkpoints.read()
    assert current is not None and current.lanes == (LaneHead(0, 5, "b" * 64),)


def test_checkpoint_makes_its_folder_when_it_is_missing(tmp_path: Any) -> None:
    import shutil

    folder = tmp_path / "instance" / "audit"
    checkpoints = CheckpointFile(folder / "cp.json", CHECKPOINT_KEY)
    assert checkpoints.advance(0, 1, "a" * 64)
    shutil.rmtree(tmp_path / "instance")  # gone between two commits

    assert checkpoints.advance(0, 2, "b" * 64)

    current = checkpoints.read()
    assert current is not None and current.lanes == (LaneHead(0, 2, "b" * 64),)


def test_checkpoint_file_is_compact_json_with_its_signature(tmp_path: Any) -> None:
    checkpoints = CheckpointFile(tmp_path / "cp.json", CHECKPOINT_KEY)
    assert checkpoints.advance(2, 7, "c" * 64)

    text = (tmp_path / "cp.json").read_text()
    data = json.loads(text)
    assert text == json.dumps(data, separators=(",", ":"))
    assert list(data) == ["lanes", "count", "at", "signature"] and data["lanes"] == [[2, 7, "c" * 64]]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_rolled_back_events_leave_the_checkpoint_alone(app: Any) -> None:
    log = _checkpointed_log(app)
    _write(app, log, 2)
    db = app.extensions["tre.db"]
    with contextlib.suppress(_Abandoned), transaction(db.session) as s:
        log.record(s, "thing.happened", actor_id="u1")
        write_pending(s)
        raise _Abandoned

    assert log.checkpoints is not None
    checkpoint = log.checkpoints.read()
    assert checkpoint is not None and checkpoint.count == 2
    assert _verify(app, log).ok


# --- lanes: several chains, so concurrent commits on PostgreSQL do not queue behind one lock ------


def _write_in_lane(app: Any, log: AuditLog, lane: int, n: int, actor: str = "u") -> None:
    """Events chained in a chosen lane, as a transaction that found that lane free would chain them."""
    db = app.extensions["tre.db"]
    for i in range(n):
        with db.session_factory() as s, transaction(s):
            s.info["tre_audit_lane"] = lane
            log.record(s, "thing.happened", actor_id=f"{actor}{lane}-{i}", detail={"i": i})


def _interleaved_lanes(app: Any, log: AuditLog) -> None:
    for _ in range(3):
        for lane in (0, 1, 2):
            _write_in_lane(app, log, lane, 2)


def _seq_of(app: Any, lane: int, lane_seq: int) -> int:
    with app.extensions["tre.db"].session_factory() as s:
        seq = s.scalar(select(AuditEvent.seq).where(AuditEvent.lane == lane, AuditEvent.lane_seq == lane_seq))
    assert seq is not None
    return int(seq)


def test_chain_of_several_lanes_verifies(app: Any) -> None:
    log = _checkpointed_log(app)
    _interleaved_lanes(app, log)

    report = _verify(app, log)

    assert report.ok and report.checked == 18
    assert [lane for lane, _, _ in report.heads] == [0, 1, 2]
    assert report.checkpoint is not None and report.checkpoint.count == 18


@pytest.mark.parametrize(
    ("sql", "broken_lane", "broken_lane_seq"),
    [
        ("UPDATE audit_events SET actor_id = 'someone-else' WHERE lane = 1 AND lane_seq = 3", 1, 3),
        ("DELETE FROM audit_events WHERE lane = 2 AND lane_seq = 2", 2, 3),
        ("UPDATE audit_events SET lane = 2, lane_seq = 99 WHERE lane = 1 AND lane_seq = 4", 1, 4),
        ("UPDATE audit_events SET lane_seq = lane_seq + 100 WHERE lane = 2 AND lane_seq = 1", 2, 1),
    ],
    ids=["edited-in-lane-1", "deleted-from-lane-2", "moved-to-another-lane", "renumbered-in-its-lane"],
)
def test_tampering_in_any_lane_is_reported_at_its_first_broken_link(
    app: Any, sql: str, broken_lane: int, broken_lane_seq: int
) -> None:
    log = _checkpointed_log(app)
    _interleaved_lanes(app, log)
    # Where the report must point: the first event, in seq order, whose link no longer holds (the
    # moved or renumbered event itself, which keeps its seq).
    where = _seq_of(app, broken_lane, broken_lane_seq)
    _tamper(app, sql)

    report = _verify(app, log)

    assert not report.ok
    assert report.first_broken_seq == where


def test_swapping_the_seq_of_events_in_two_lanes_is_detected(app: Any) -> None:
    log = _checkpointed_log(app)
    _interleaved_lanes(app, log)
    first, second = _seq_of(app, 0, 3), _seq_of(app, 1, 3)
    _tamper(app, f"UPDATE audit_events SET seq = 999 WHERE seq = {first}")
    with app.extensions["tre.db"].engine.begin() as conn:
        conn.execute(text(f"UPDATE audit_events SET seq = {first} WHERE seq = {second}"))
        conn.execute(text(f"UPDATE audit_events SET seq = {second} WHERE seq = 999"))

    report = _verify(app, log)

    assert not report.ok and report.first_broken_seq == first


def test_cutting_the_end_of_one_lane_is_reported_against_the_checkpoint(app: Any) -> None:
    log = _checkpointed_log(app)
    _interleaved_lanes(app, log)
    _tamper(app, "DELETE FROM audit_events WHERE lane = 1 AND lane_seq > 4")  # lane 1's last two

    report = _verify(app, log)

    assert not report.ok and report.truncated
    assert report.problem is not None and "lanes 1 end early" in report.problem and "18" in report.problem


def test_deleting_a_whole_lane_is_reported_against_the_checkpoint(app: Any) -> None:
    log = _checkpointed_log(app)
    _interleaved_lanes(app, log)
    _tamper(app, "DELETE FROM audit_events WHERE lane = 2")

    report = _verify(app, log)

    assert not report.ok and report.truncated and "lanes 2 end early" in (report.problem or "")


def test_checkpoint_written_before_lanes_is_read_as_lane_zero(app: Any) -> None:
    # An instance upgraded from a version with one chain keeps its checkpoint file as it was.
    import hashlib
    import hmac

    log = _checkpointed_log(app)
    _write(app, log, 3)
    assert log.checkpoints is not None
    head = _verify(app, log).head
    body = json.dumps([3, head, 3, "2026-12-05T00:00:00.000000Z"], separators=(",", ":")).encode()
    old = {"seq": 3, "head": head, "count": 3, "at": "2026-12-05T00:00:00.000000Z",
           "signature": hmac.new(CHECKPOINT_KEY, body, hashlib.sha256).hexdigest()}
    log.checkpoints.path.write_text(json.dumps(old))

    assert _verify(app, log).ok
    _tamper(app, "DELETE FROM audit_events WHERE seq = 3")
    assert _verify(app, log).truncated


def _wait_until(condition: Any, what: str, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_writer_committing_while_another_holds_lane_zero_takes_another_lane_without_waiting(
    app: Any,
) -> None:
    log = _checkpointed_log(app)
    db = app.extensions["tre.db"]
    _write(app, log, 2)
    chained, finish = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def held_writer() -> None:
        try:
            with db.session_factory() as s, transaction(s):
                log.record(s, "held.writer", actor_id="a")
                write_pending(s)  # the controlled point: chained onto lane 0, lock held, not committed
                chained.set()
                finish.wait(timeout=120)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)
        finally:
            chained.set()

    held = threading.Thread(target=held_writer)
    held.start()
    try:
        chained.wait()
        with db.session_factory() as s, transaction(s):
            s.execute(text("SET LOCAL lock_timeout = '10s'"))  # waiting for lane 0 would be an error
            log.record(s, "quick.writer", actor_id="b")
    finally:
        finish.set()
        held.join()

    assert failures == []
    with db.session_factory() as s:
        placed = {action: lane for action, lane in s.execute(select(AuditEvent.action, AuditEvent.lane))}
    assert placed == {"thing.happened": 0, "held.writer": 0, "quick.writer": 1}
    report = _verify(app, log)
    assert report.ok and report.checked == 4
    assert report.checkpoint is not None and {h.lane for h in report.checkpoint.lanes} == {0, 1}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_writer_finding_every_lane_taken_waits_and_chains_after_the_holder_without_forking(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tre.core.audit as audit

    monkeypatch.setattr(audit, "CHAIN_LANES", 1)  # one lane, so the second writer must wait for it
    log = _checkpointed_log(app)
    db = app.extensions["tre.db"]
    chained, finish = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def run(name: str, hold: bool) -> None:
        try:
            with db.session_factory() as s, transaction(s):
                log.record(s, name, actor_id=name)
                if hold:
                    write_pending(s)
                    chained.set()
                    finish.wait(timeout=120)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)
        finally:
            chained.set()

    first = threading.Thread(target=run, args=("first", True))
    first.start()
    chained.wait()
    second = threading.Thread(target=run, args=("second", False))
    second.start()
    try:
        with db.engine.connect() as watcher:
            def second_waits_for_the_lane() -> bool:
                waiting = watcher.execute(text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                )).scalar_one()
                watcher.rollback()
                return bool(waiting)

            _wait_until(second_waits_for_the_lane, "the second writer waits for the lane")
    finally:
        finish.set()
        first.join()
        second.join()

    assert failures == []
    with db.session_factory() as s:
        rows = s.execute(select(AuditEvent.action, AuditEvent.lane, AuditEvent.lane_seq, AuditEvent.prev_hash,
                                AuditEvent.chain_hash).order_by(AuditEvent.lane_seq)).all()
    assert [(r.action, r.lane, r.lane_seq) for r in rows] == [("first", 0, 1), ("second", 0, 2)]
    assert rows[1].prev_hash == rows[0].chain_hash  # chained after the holder, not beside it
    assert _verify(app, log).ok


def test_a_commits_events_are_inserted_without_the_unit_of_work(app: Any, log: AuditLog) -> None:
    """ADR 0051: ``write_pending`` inserts the chained rows itself, in one statement per batch; no
    flush carries an event, and the rows (and the objects ``record`` returned) hold the same values."""
    from sqlalchemy import event as orm_event

    db = app.extensions["tre.db"]
    flushed: list[object] = []
    s = db.session_factory()
    orm_event.listen(s, "before_flush", lambda session, *_: flushed.extend(session.new))
    with transaction(s):
        first = log.record(s, "thing.happened", actor_id="u1", detail={"n": 1})
        second = log.record(s, "thing.happened", actor_id="u2", target_type="user", target_id="u3")
    s.close()

    assert not [o for o in flushed if isinstance(o, AuditEvent)]
    with db.session_factory() as s:
        rows = s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        assert [(r.seq, r.lane, r.lane_seq, r.prev_hash, r.chain_hash, r.actor_id, r.detail) for r in rows] == [
            (e.seq, e.lane, e.lane_seq, e.prev_hash, e.chain_hash, e.actor_id, e.detail) for e in (first, second)
        ]
    assert _verify(app, log).ok


# --- the cost of an audited commit (ADR 0075) ----------------------------------------------------


def test_checkpoint_merges_what_another_writer_wrote_since_its_own_last_write(tmp_path: Any) -> None:
    path = tmp_path / "cp.json"
    mine, theirs = CheckpointFile(path, CHECKPOINT_KEY), CheckpointFile(path, CHECKPOINT_KEY)
    assert mine.advance(0, 1, "a" * 64)
    assert theirs.advance(1, 4, "b" * 64)  # another process's commit replaced the file

    assert mine.advance(0, 2, "c" * 64)

    current = CheckpointFile(path, CHECKPOINT_KEY).read()
    assert current is not None and current.lanes == (LaneHead(0, 2, "c" * 64), LaneHead(1, 4, "b" * 64))


def test_checkpoint_written_back_by_an_attacker_is_read_not_taken_from_memory(tmp_path: Any) -> None:
    # The attacker keeps an old signed checkpoint, lets the writer move on, then puts the old one
    # back: the writer's next commit reads the file it finds (as before), and verify of the file in
    # between showed the old one; what it merges is what the file says, not what it wrote itself.
    path = tmp_path / "cp.json"
    writer = CheckpointFile(path, CHECKPOINT_KEY)
    assert writer.advance(0, 1, "a" * 64)
    assert writer.advance(1, 1, "b" * 64)
    old = path.read_bytes()
    assert writer.advance(1, 2, "c" * 64)
    path.write_bytes(old)

    assert writer.advance(0, 2, "d" * 64)

    current = writer.read()
    assert current is not None and current.lanes == (LaneHead(0, 2, "d" * 64), LaneHead(1, 1, "b" * 64))


def test_checkpoint_edited_between_two_commits_is_reported_and_then_rewritten(app: Any) -> None:
    log = _checkpointed_log(app)
    _write(app, log, 3)
    assert log.checkpoints is not None
    path = log.checkpoints.path
    forged = json.loads(path.read_text())
    forged["lanes"][0][1] = forged["count"] = 1
    path.write_text(json.dumps(forged, separators=(",", ":")))

    assert "not signed" in (_verify(app, log).problem or "")
    _write(app, log, 1)  # the writer reads the edited file, finds it unsigned, and writes its own head

    assert log.checkpoints.read() == CheckpointFile(path, CHECKPOINT_KEY).read()
    assert _verify(app, log).ok


def test_checkpoint_does_not_parse_again_the_bytes_it_wrote_itself(tmp_path: Any, monkeypatch: Any) -> None:
    path = tmp_path / "cp.json"
    writer = CheckpointFile(path, CHECKPOINT_KEY)
    assert writer.advance(0, 1, "a" * 64)
    assert CheckpointFile(path, CHECKPOINT_KEY).advance(1, 1, "b" * 64)  # another writer's file
    parsed: list[bytes] = []
    real_parse = CheckpointFile._parse
    monkeypatch.setattr(CheckpointFile, "_parse", lambda self, data: (parsed.append(data), real_parse(self, data))[1])

    assert writer.advance(0, 2, "c" * 64)  # the file is another writer's: parsed and checked
    assert writer.advance(0, 3, "d" * 64)  # the file is the one it just wrote: not parsed again
    assert writer.advance(0, 4, "e" * 64)

    assert len(parsed) == 1
    current = CheckpointFile(path, CHECKPOINT_KEY).read()
    assert current is not None and current.lanes == (LaneHead(0, 4, "e" * 64), LaneHead(1, 1, "b" * 64))


def test_a_commits_chain_statements_skip_the_sessions_orm_execution(app: Any, log: AuditLog) -> None:
    """The lane's lock, its end and the INSERT go to the transaction's connection as Core statements:
    the session's ORM execution hook sees none of them, and the chain still verifies."""
    from sqlalchemy import event as orm_event

    db = app.extensions["tre.db"]
    seen: list[str] = []
    statements: list[str] = []
    s = db.session_factory()
    orm_event.listen(s, "do_orm_execute", lambda state: seen.append(str(state.statement)))
    with transaction(s):
        log.record(s, "thing.happened", actor_id="u1")
        log.record(s, "thing.happened", actor_id="u2")
        connection = s.connection()
        orm_event.listen(connection, "before_cursor_execute", lambda *a: statements.append(a[2]))
    s.close()

    assert seen == []
    expected = 3 if db.engine.dialect.name == "postgresql" else 2  # lock (PostgreSQL), lane end, INSERT
    assert len(statements) == expected
    assert _verify(app, log).ok


def test_an_events_link_is_the_keyed_hash_of_its_canonical_json_as_before(app: Any, log: AuditLog) -> None:
    """The canonical text and the HMAC are computed with prebuilt helpers now: the link is still
    HMAC-SHA256(key, previous hash, newline, sorted compact ASCII JSON of the hashed fields)."""
    import hashlib
    import hmac

    _write(app, log, 2)
    with app.extensions["tre.db"].session_factory() as s:
        events = s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()

    for ev in events:
        stamp = ev.occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = [ev.seq, stamp, ev.actor_id, ev.action, ev.outcome, ev.target_type, ev.target_id, ev.project_id,
                ev.request_id, ev.detail]
        content = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        assert ev.chain_hash == hmac.new(KEY, ev.prev_hash.encode() + b"\n" + content, hashlib.sha256).hexdigest()
