"""The security suites on both database backends, with the world built once per module and backend.

``database_for`` gives a database of the module's own: a SQLite file in a fresh folder, or a fresh
PostgreSQL database (a random name, dropped at the end), so no other test run sharing the server is
touched. ``DatabaseSnapshot`` puts that database back to the state it had when the world was built,
so every cell or test sees the same world without building it again: on SQLite by copying the file
back; on PostgreSQL by emptying every table and refilling it from a copy kept in a schema of its own
(much faster than a new database, and it needs no superuser).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from tests.conftest import fresh_postgres_database, make_test_app

BACKENDS = ("sqlite", "postgresql")
SNAPSHOT_SCHEMA = "world_snapshot"
# Statements that cannot change a row; anything else counts as a write (DDL included).
_READS = ("SELECT", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA", "SHOW", "SET ")


# What a database error carries when it escapes: the drivers' and SQLAlchemy's names, their error
# texts, and Python's traceback. No answer of ours, whatever its status, may show any of them.
_INTERNALS = (
    "sqlalchemy",
    "psycopg",
    "sqlite3.",
    "background on this error",
    "syntax error at or near",
    "violates foreign key constraint",
    "violates unique constraint",
    "unique constraint failed",
    "traceback (most recent call last)",
)


def database_internals(body: str) -> str:
    """The first sign of the database's internals in ``body``, or ``""`` when there is none."""
    lowered = body.lower()
    return next((marker for marker in _INTERNALS if marker in lowered), "")


@contextlib.contextmanager
def database_for(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'tre.sqlite'}"
        return
    with fresh_postgres_database() as url:
        yield url


@contextlib.contextmanager
def app_on(backend: str, folder: Path, **settings: Any) -> Iterator[Any]:
    """An app on ``backend`` with its schema created from the models, in a database of its own."""
    from tre.models import metadata

    with database_for(backend, folder) as url:
        app = make_test_app(folder / "instance", url, **settings)
        db = app.extensions["tre.db"]
        metadata.create_all(db.engine)
        try:
            yield app
        finally:
            db.session.remove()
            db.dispose()


class DatabaseSnapshot:
    """Remembers the app's database as it is now (``take``) and puts it back (``restore``)."""

    def __init__(self, app: Any) -> None:
        from tre.models import metadata

        self.db = app.extensions["tre.db"]
        self.dialect = self.db.engine.dialect.name
        self.tables = [t.name for t in metadata.sorted_tables]  # parents before children
        self.restores = 0
        self._refill = ""
        self.writes = 0  # statements since the last take or restore that may have changed something
        event.listen(self.db.engine, "before_cursor_execute", self._note_write)
        # The audit chain's signed checkpoint lives outside the database (ADR 0011): rewinding the
        # database without it would look exactly like the truncation it exists to catch.
        checkpoints = app.extensions["tre.platform"].audit.checkpoints
        self._checkpoint_file: Path | None = checkpoints.path if checkpoints is not None else None
        self._checkpoint: bytes | None = None
        if self.dialect == "sqlite":
            database = self.db.engine.url.database
            assert database, "the snapshot needs a SQLite file, not an in-memory database"
            self.file = Path(database)

    def take(self) -> None:
        self._release()
        if self._checkpoint_file is not None:
            self._checkpoint = self._checkpoint_file.read_bytes() if self._checkpoint_file.exists() else None
        if self.dialect == "sqlite":
            shutil.copyfile(self.file, self.file.with_suffix(".snapshot"))
            self.writes = 0
            return
        with self.db.engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {SNAPSHOT_SCHEMA} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {SNAPSHOT_SCHEMA}"))
            for table in self.tables:
                conn.execute(text(f'CREATE TABLE {SNAPSHOT_SCHEMA}."{table}" AS TABLE public."{table}"'))
            sequences = conn.execute(
                text("SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'")
            ).all()
        # One batch, one round trip. The audit log refuses deletes by trigger (it is append-only): the
        # snapshot is the one place allowed to rewind it, and only inside the restoring transaction.
        # DELETE, children first, rather than TRUNCATE: on tables this small it is many times faster.
        self._refill = ";\n".join(
            [
                "ALTER TABLE public.audit_events DISABLE TRIGGER USER",
                *(f'DELETE FROM public."{t}"' for t in reversed(self.tables)),
                *(f'INSERT INTO public."{t}" SELECT * FROM {SNAPSHOT_SCHEMA}."{t}"' for t in self.tables),
                "ALTER TABLE public.audit_events ENABLE TRIGGER USER",
                *(
                    f"SELECT setval('public.\"{name}\"', {value or 1}, {'true' if value is not None else 'false'})"
                    for name, value in sequences
                ),
            ]
        )
        self.writes = 0

    def restore(self) -> None:
        """Put the database back as it was taken (skipped when no statement since could have written)."""
        if not self.writes:
            return
        self._release()
        self.restores += 1
        if self.dialect == "sqlite":
            for suffix in ("-wal", "-shm"):
                Path(f"{self.file}{suffix}").unlink(missing_ok=True)
            shutil.copyfile(self.file.with_suffix(".snapshot"), self.file)
        else:
            with self.db.engine.begin() as conn:
                conn.exec_driver_sql(self._refill)
        if self._checkpoint_file is not None:
            if self._checkpoint is None:
                self._checkpoint_file.unlink(missing_ok=True)
            else:
                self._checkpoint_file.write_bytes(self._checkpoint)
        self.writes = 0

    def _note_write(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.lstrip()[:9].upper().startswith(_READS):
            self.writes += 1

    def _release(self) -> None:
        """End every session, so no transaction of the app's holds a lock or sees the old state."""
        self.db.session.remove()
        if self.dialect == "sqlite":
            self.db.engine.dispose()  # the file is replaced underneath: no connection may keep it open
            wal = Path(f"{self.file}-wal")
            assert not wal.exists() or wal.stat().st_size == 0
