"""The audit chain: every edit, deletion, insertion or reordering is found, on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from tre.core.audit import AuditLog, iter_events
from tre.core.db import transaction

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
