"""The snapshot the security suites lean on: a restore puts back every row, and leaves the audit log
as append-only as it found it (on PostgreSQL the restore lifts the trigger for its own transaction);
and the check for database internals in answers recognises each driver's real errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError

from tests.projects.factories import make_user
from tests.security.backends import BACKENDS, DatabaseSnapshot, app_on, database_internals
from tre.core.audit import AuditEvent
from tre.core.db import transaction
from tre.core.identity import User


@pytest.fixture(params=BACKENDS)
def backend_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    with app_on(request.param, tmp_path) as application:
        yield application


def rows(app: Any) -> dict[str, int]:
    from tre.models import metadata

    session = app.extensions["tre.db"].session
    counts = {t.name: int(session.scalar(select(func.count()).select_from(t)) or 0) for t in metadata.sorted_tables}
    session.rollback()
    return counts


def test_restore_puts_back_every_row_and_the_audit_chain_still_verifies(backend_app: Any) -> None:
    app = backend_app
    make_user(app, "first.person", ["researcher"])
    snapshot = DatabaseSnapshot(app)
    snapshot.take()
    before = rows(app)

    make_user(app, "second.person", ["administrator", "auditor"])
    assert rows(app) != before
    snapshot.restore()

    assert rows(app) == before
    platform = app.extensions["tre.platform"]
    session = platform.db.session
    assert platform.audit.verify(session.scalars(select(AuditEvent).order_by(AuditEvent.seq))).ok
    make_user(app, "third.person", ["researcher"])  # the chain grows on from the restored end
    assert platform.audit.verify(session.scalars(select(AuditEvent).order_by(AuditEvent.seq))).ok


def test_after_a_restore_written_audit_events_still_cannot_be_changed(backend_app: Any) -> None:
    app = backend_app
    make_user(app, "first.person", ["researcher"])
    snapshot = DatabaseSnapshot(app)
    snapshot.take()
    make_user(app, "second.person", ["researcher"])
    snapshot.restore()

    session = app.extensions["tre.db"].session
    with pytest.raises(Exception, match="append-only"), transaction(session) as s:
        s.execute(update(AuditEvent).values(action="tampered"))
    with pytest.raises(Exception, match="append-only"), transaction(session) as s:
        s.execute(AuditEvent.__table__.delete())


def test_restore_does_nothing_when_nothing_was_written_since(backend_app: Any) -> None:
    app = backend_app
    make_user(app, "first.person", ["researcher"])
    snapshot = DatabaseSnapshot(app)
    snapshot.take()
    session = app.extensions["tre.db"].session
    session.scalars(select(User)).all()
    session.rollback()

    snapshot.restore()
    assert snapshot.restores == 0
    make_user(app, "second.person", ["researcher"])
    snapshot.restore()
    assert snapshot.restores == 1


def test_a_real_database_error_is_recognised_as_the_databases_internals(backend_app: Any) -> None:
    session = backend_app.extensions["tre.db"].session
    with pytest.raises(DBAPIError) as caught, transaction(session) as s:
        s.execute(text("INSERT INTO users (id) VALUES (NULL)"))

    assert database_internals(str(caught.value))
    assert not database_internals("<h1>Page not found</h1><p>Check the address.</p>")
