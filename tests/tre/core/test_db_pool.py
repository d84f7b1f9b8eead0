"""A process keeps its database connections between requests (ADR 0080).

With SQLAlchemy's default pool (5 kept, 10 more for a burst) a web process of 8 threads opened a new
PostgreSQL connection for most requests over the fifth and closed it afterwards: a new server process,
its catalogue caches filled again, and every statement prepared again. The pool now keeps
``TRE_DATABASE_POOL_SIZE`` connections. Counted on the real server, with threads really holding them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text

from tests.conftest import _reset_postgres, make_test_app
from tre.core.db import Database

THREADS = 8  # a web process's threads (GUNICORN_THREADS' default)


@pytest.fixture
def pg_app(tmp_path: Path, postgres_database: str) -> Iterator[Any]:
    _reset_postgres(postgres_database)
    application = make_test_app(tmp_path / "instance", postgres_database)
    yield application
    application.extensions["tre.db"].dispose()


def _all_threads_at_once(database: Database) -> None:
    """Each of THREADS threads takes a connection and runs a read while all the others hold theirs."""
    together = threading.Barrier(THREADS)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            session = database.session()
            session.execute(select(text("1"))).all()
            session.connection()  # held until every thread has one
            together.wait(timeout=30)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)
        finally:
            database.remove()

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures
    assert not any(t.is_alive() for t in threads)


def test_a_busy_web_process_opens_each_connection_once(pg_app: Any) -> None:
    database: Database = pg_app.extensions["tre.db"]
    opened: list[object] = []
    event.listen(database.engine, "connect", lambda dbapi_connection, _record: opened.append(dbapi_connection))

    for _ in range(3):
        _all_threads_at_once(database)

    assert len(opened) == THREADS  # the second and third rounds found all of theirs in the pool
    assert database.engine.pool.checkedin() == THREADS  # type: ignore[attr-defined]


def test_the_pool_size_is_the_setting(tmp_path: Path, postgres_database: str) -> None:
    _reset_postgres(postgres_database)
    application = make_test_app(tmp_path / "instance", postgres_database, database_pool_size=3)
    database: Database = application.extensions["tre.db"]
    try:
        assert database.engine.pool.size() == 3  # type: ignore[attr-defined]
    finally:
        database.dispose()
