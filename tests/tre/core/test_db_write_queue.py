"""The embedded database's write queue (ADR 0047): writers wait their turn on a kernel lock beside the
SQLite file, taken just before ``BEGIN IMMEDIATE`` and given up by commit, rollback or close."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from tre.core.db import READ_WITHOUT_WRITE_LOCK, WRITE_QUEUE_SUFFIX, make_engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'tre.db'}")
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))
    yield eng
    eng.dispose()


def queue_file(tmp_path: Path) -> Path:
    return tmp_path / ("tre.db" + WRITE_QUEUE_SUFFIX)


def queue_is_free(path: Path) -> bool:
    """Can someone else take the queue now? (A descriptor of our own, so it is a different lock.)"""
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def no_patience(conn: Connection) -> None:
    """SQLite's busy timeout set to nothing, without beginning a transaction."""
    conn.connection.dbapi_connection.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]


def test_a_transaction_holds_the_queue_until_it_commits(engine: Engine, tmp_path: Path) -> None:
    with engine.connect() as conn:
        conn.execute(text("UPDATE counter SET n = n + 1"))
        assert not queue_is_free(queue_file(tmp_path))
        conn.commit()
        assert queue_is_free(queue_file(tmp_path))


def test_a_rolled_back_transaction_gives_the_queue_up(engine: Engine, tmp_path: Path) -> None:
    with engine.connect() as conn:
        conn.execute(text("UPDATE counter SET n = n + 1"))
        conn.rollback()
        assert queue_is_free(queue_file(tmp_path))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 0


def test_a_connection_returned_to_the_pool_mid_transaction_gives_the_queue_up(engine: Engine, tmp_path: Path) -> None:
    conn = engine.connect()
    conn.execute(text("SELECT n FROM counter"))
    assert not queue_is_free(queue_file(tmp_path))
    conn.close()  # the pool's reset rolls back
    assert queue_is_free(queue_file(tmp_path))


def test_a_begin_that_sqlite_refuses_gives_the_queue_up(engine: Engine, tmp_path: Path) -> None:
    # A writer that does not queue (the sqlite3 command line, say) holds SQLite's own write lock.
    outsider = sqlite3.connect(tmp_path / "tre.db", isolation_level=None)
    outsider.execute("BEGIN IMMEDIATE")
    try:
        with engine.connect() as conn:
            no_patience(conn)
            with pytest.raises(OperationalError, match="locked"):
                conn.execute(text("SELECT n FROM counter"))
            assert queue_is_free(queue_file(tmp_path))
    finally:
        outsider.execute("ROLLBACK")
        outsider.close()


def test_writers_in_many_threads_are_serialised(engine: Engine) -> None:
    # Read, then write what was read: a lost update would show if two transactions overlapped.
    threads, rounds = 6, 25

    def add() -> None:
        for _ in range(rounds):
            with engine.begin() as conn:
                n = conn.execute(text("SELECT n FROM counter")).scalar_one()
                conn.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

    workers = [threading.Thread(target=add) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == threads * rounds


def test_a_second_connection_in_the_thread_holding_the_queue_does_not_wait_on_it(engine: Engine) -> None:
    # Waiting on the queue its own thread holds would hang for ever; it falls back to SQLite's busy
    # timeout, which refuses it as it did before the queue existed.
    with engine.connect() as first:
        first.execute(text("UPDATE counter SET n = n + 1"))
        with engine.connect() as second:
            no_patience(second)
            with pytest.raises(OperationalError, match="locked"):
                second.execute(text("SELECT n FROM counter"))
        first.commit()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 1


def test_a_connection_given_back_on_another_thread_frees_the_thread_that_began(engine: Engine, tmp_path: Path) -> None:
    conn = engine.connect()
    conn.execute(text("UPDATE counter SET n = n + 1"))  # this thread now holds the queue
    giver = threading.Thread(target=conn.close)  # the pool's reset rolls back, on the other thread
    giver.start()
    giver.join(timeout=60)
    assert queue_is_free(queue_file(tmp_path))
    # This thread queues again: were it still marked as holding, its next transaction would skip the
    # queue and leave it free.
    with engine.connect() as first:
        first.execute(text("SELECT n FROM counter"))
        assert not queue_is_free(queue_file(tmp_path))
        first.rollback()
    assert queue_is_free(queue_file(tmp_path))


HOLDER = """
import sys
from sqlalchemy import text
from tre.core.db import make_engine
engine = make_engine(sys.argv[1])
conn = engine.connect()
conn.execute(text("UPDATE counter SET n = n + 1"))
print("holding", flush=True)
sys.stdin.readline()
"""


def test_a_killed_holder_frees_the_queue_and_its_write_is_lost(engine: Engine, tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(engine.url)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "holding"
            assert not queue_is_free(queue_file(tmp_path))
        finally:
            holder.kill()
            holder.wait(timeout=60)
    assert queue_is_free(queue_file(tmp_path))
    with engine.begin() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 0


def test_the_queue_file_is_private_to_the_service(engine: Engine, tmp_path: Path) -> None:
    mode = stat.S_IMODE(queue_file(tmp_path).stat().st_mode)
    assert mode & 0o077 == 0


def test_an_in_memory_database_needs_no_queue() -> None:
    eng = make_engine("sqlite://")
    try:
        with eng.begin() as conn:
            assert conn.connection.dbapi_connection.queue_path is None  # type: ignore[union-attr]
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        eng.dispose()


def test_a_read_without_the_write_lock_neither_queues_nor_waits_for_a_writer(engine: Engine, tmp_path: Path) -> None:
    # Who is asking reads in such a transaction (ADR 0049): a writer holding SQLite's write lock and
    # the queue does not hold it up, and it sees the last committed state, not the writer's.
    outsider = sqlite3.connect(tmp_path / "tre.db", isolation_level=None)
    outsider.execute("BEGIN IMMEDIATE")
    outsider.execute("UPDATE counter SET n = 41")
    try:
        with engine.connect() as conn:
            no_patience(conn)  # a BEGIN IMMEDIATE would now fail at once with "locked"
            reading = conn.execution_options(**READ_WITHOUT_WRITE_LOCK)
            assert reading.execute(text("SELECT n FROM counter")).scalar_one() == 0
            assert queue_is_free(queue_file(tmp_path))
            reading.commit()
    finally:
        outsider.execute("ROLLBACK")
        outsider.close()


def test_a_read_without_the_write_lock_refuses_to_write(engine: Engine, tmp_path: Path) -> None:
    # Without BEGIN each statement would commit on its own: a write there fails instead.
    with engine.connect() as conn:
        reading = conn.execution_options(**READ_WITHOUT_WRITE_LOCK)
        reading.execute(text("SELECT n FROM counter"))
        with pytest.raises(sqlite3.ProgrammingError, match="only a SELECT"):
            reading.connection.dbapi_connection.cursor().execute("UPDATE counter SET n = 7")  # type: ignore[union-attr]
        reading.rollback()
    # The pooled connection's next transaction (without the options) begins as usual and may write.
    with engine.connect() as conn:
        conn.execute(text("UPDATE counter SET n = n + 1"))
        assert not queue_is_free(queue_file(tmp_path))
        conn.commit()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 1
