"""The database: one declarative base for every package's models, engines, sessions and transactions.

SQLite is the embedded default and PostgreSQL the production database; the same models and
migrations serve both. Timestamps are stored as UTC and always come back timezone-aware.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import re
import select as io_select
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import JSON, CompoundSelect, DateTime, MetaData, Select, String, TypeDecorator, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, scoped_session, sessionmaker

log = logging.getLogger(__name__)

# Named constraints make migrations deterministic and let SQLite's batch mode alter tables.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    """Random identifiers: not guessable, not ordered, safe to show in URLs."""
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC, returns aware UTC; refuses naive datetimes so local time never sneaks in."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
        str: String(),
    }


# Writers on the embedded database queue in the kernel, not in SQLite's busy handler (ADR 0047).
# SQLite's handler sleeps between tries, up to 100 ms a sleep, and a waiter that keeps waking just
# after someone else took the lock can wait seconds while the lock sits free between sleeps. Each
# connection to a database file holds its own descriptor of a lock file beside it, and takes an
# exclusive flock on it just before BEGIN IMMEDIATE: a waiter sleeps in the kernel and is woken the
# moment the holder's COMMIT or ROLLBACK releases it, so the write lock is handed over at once.
# SQLite's own lock and busy timeout stay underneath for anything that does not queue (the sqlite3
# command line, a second connection opened by a thread that already holds the queue).
WRITE_QUEUE_SUFFIX = "-writequeue"
_BEGIN_IMMEDIATE = "BEGIN IMMEDIATE"
# The threads holding the queue now. A connection may be given back (and so rolled back) on a thread
# other than the one that began on it, so each connection remembers which thread it queued for.
_holding_threads: set[int] = set()
os.register_at_fork(after_in_child=_holding_threads.clear)  # a child holds nothing of its parent's


# A transaction begun with these execution options on SQLite sends no BEGIN IMMEDIATE: its reads run
# without the write lock (and without the write queue's turn), each SELECT its own read of the last
# committed state (WAL). Only SELECTs may run in it: anything else fails rather than commit on its own
# (ADR 0049). On PostgreSQL the options change nothing.
READ_WITHOUT_WRITE_LOCK = {"tre_read_without_write_lock": True}
_READS = ("SELECT", "select", "WITH", "with")


class _WriteQueueCursor(sqlite3.Cursor):
    connection: _WriteQueuedConnection

    def execute(self, sql: str, parameters: Any = (), /) -> _WriteQueueCursor:
        if sql != _BEGIN_IMMEDIATE:
            if self.connection.reading_without_lock and not sql.lstrip().startswith(_READS):
                raise sqlite3.ProgrammingError("only a SELECT may run in a read without the write lock")
            return super().execute(sql, parameters)
        queued = self.connection.join_write_queue()
        try:
            return super().execute(sql, parameters)
        except BaseException:
            if queued:
                self.connection.leave_write_queue()
            raise


class _WriteQueuedConnection(sqlite3.Connection):
    """A sqlite3 connection whose ``BEGIN IMMEDIATE`` first waits its turn on the write queue, and
    whose commit, rollback and close give the turn up."""

    queue_path: str | None = None
    _queue_fd: int | None = None
    _queue_pid: int | None = None
    _queued = False
    _queued_for: int | None = None
    reading_without_lock = False  # a transaction begun by READ_WITHOUT_WRITE_LOCK, until it ends

    def cursor(self, factory: Any = _WriteQueueCursor) -> Any:
        return super().cursor(factory)

    def join_write_queue(self) -> bool:
        """Wait for the write queue; False (and no wait) for a database without a file, or when this
        thread already holds the queue through another connection (waiting would deadlock it)."""
        thread = threading.get_ident()
        if self.queue_path is None or self._queued or thread in _holding_threads:
            return False
        if self._queue_fd is None or self._queue_pid != os.getpid():
            # A descriptor inherited over fork shares its lock with the parent: open our own.
            self._queue_fd = os.open(self.queue_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._queue_pid = os.getpid()
        fcntl.flock(self._queue_fd, fcntl.LOCK_EX)  # releases the GIL while it waits
        self._queued, self._queued_for = True, thread
        _holding_threads.add(thread)
        return True

    def leave_write_queue(self) -> None:
        if not self._queued:
            return
        self._queued = False
        if self._queued_for is not None:
            _holding_threads.discard(self._queued_for)
        self._queued_for = None
        if self._queue_fd is not None and self._queue_pid == os.getpid():
            fcntl.flock(self._queue_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        self.reading_without_lock = False
        try:
            super().commit()
        finally:
            self.leave_write_queue()

    def rollback(self) -> None:
        self.reading_without_lock = False
        try:
            super().rollback()
        finally:
            self.leave_write_queue()

    def close(self) -> None:
        self.reading_without_lock = False
        try:
            super().close()
        finally:
            self.leave_write_queue()
            if self._queue_fd is not None and self._queue_pid == os.getpid():
                os.close(self._queue_fd)
            self._queue_fd = None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module, which would otherwise run SAVEPOINTs
    # outside any transaction (so a rolled-back savepoint's work could still be committed).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets the web server read while a worker writes; foreign keys are off by default in SQLite.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    if isinstance(dbapi_connection, _WriteQueuedConnection):
        main = [row[2] for row in cursor.execute("PRAGMA database_list") if row[1] == "main"]
        if main and main[0]:  # an in-memory or temporary database has no file, and no other writer
            dbapi_connection.queue_path = main[0] + WRITE_QUEUE_SUFFIX
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    if conn.get_execution_options().get("tre_read_without_write_lock"):
        dbapi_connection = conn.connection.dbapi_connection
        if isinstance(dbapi_connection, _WriteQueuedConnection):
            dbapi_connection.reading_without_lock = True
            return
    # IMMEDIATE takes the write lock at the start, so two processes never deadlock upgrading a
    # read lock to a write lock (SQLite would fail one of them at once, without waiting).
    conn.exec_driver_sql(_BEGIN_IMMEDIATE)


def make_engine(url: str, **kwargs: Any) -> Engine:
    # A failed statement's bound values (emails, names, tokens' hashes) stay out of its error message,
    # which ends up in logs and in a failed job's reason.
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "factory": _WriteQueuedConnection}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    lazy_begin = make_url(url).get_dialect().driver == "psycopg"
    if lazy_begin:
        kwargs.setdefault("isolation_level", "AUTOCOMMIT")
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _plan_once_per_connection)
        event.listen(engine, "connect", _note_idle_since)
        event.listen(engine, "checkin", _note_idle_since)
        event.listen(engine, "checkout", _pinger(engine.dialect))
    if lazy_begin:
        from psycopg.pq import TransactionStatus

        event.listen(engine, "before_cursor_execute", _begin_unless_a_plain_read(TransactionStatus.IDLE))
    return engine


# Each statement is planned once per connection, not at every execution (ADR 0071, ADR 0080). psycopg
# prepares a statement once a connection has sent it PREPARE_AFTER times (its default, 5, left each of ~30
# pooled connections planning each of a few hundred statements six times before keeping it), and
# PostgreSQL's plan cache, left to itself, kept re-planning prepared statements whose generic plan it
# guessed to be dearer than a plan for the values at hand: 41 % of the statements of the load benchmark
# were planned, and planning took as much of the server's time as executing. The application's statements
# are look-ups by key and small filtered reads, whose generic plans the comparison in ADR 0071 found no
# slower. A statement is prepared on its second run, not its first: a one-off statement stays unnamed, and
# a text of several statements (a restore's script) cannot be prepared at all. Since ADR 0080 a connection
# keeps up to PREPARED_MAX of them: the load benchmark's mix sends about 350 distinct statements, and
# psycopg's default of 100 left each web connection evicting and re-preparing statements all the time.
# Each kept statement costs the server about 24 KiB for its plan; the pool's size bounds the connections.
PREPARE_AFTER = 1
PREPARED_MAX = 512
_PLAN_GENERICALLY = "SET plan_cache_mode = force_generic_plan"


def _plan_once_per_connection(dbapi_connection: Any, _record: Any) -> None:
    if hasattr(dbapi_connection, "prepare_threshold"):  # psycopg 3
        dbapi_connection.prepare_threshold = PREPARE_AFTER
        dbapi_connection.prepared_max = PREPARED_MAX
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True  # a session setting, outside any transaction
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(_PLAN_GENERICALLY)
    finally:
        dbapi_connection.autocommit = autocommit


# A pooled PostgreSQL connection is pinged (a round trip) on checkout only when there is reason to doubt
# it (ADR 0052): the server has sent it something while it sat in the pool (a server that terminates a
# backend, shuts down or crashes sends an error or closes the socket, which makes it readable), or it
# has been idle longer than this. Pinging every checkout, as pool_pre_ping did, cost each request a
# round trip. A ping that finds the connection gone raises DisconnectionError, so the pool invalidates
# it and hands out a fresh one: the request does not see it.
PING_AFTER_IDLE_SECONDS = 10.0
_IDLE_SINCE = "tre_idle_since"


def _note_idle_since(_dbapi_connection: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _doubtful(dbapi_connection: Any, record: Any) -> bool:
    if time.monotonic() - record.info.get(_IDLE_SINCE, 0.0) > PING_AFTER_IDLE_SECONDS:
        return True
    try:
        descriptor = dbapi_connection.fileno()
    except Exception as err:  # closed: no socket to ask
        raise DisconnectionError("connection has no socket") from err
    poller = io_select.poll()  # not select(): it has no limit on the descriptor's number
    poller.register(descriptor, io_select.POLLIN)
    return bool(poller.poll(0))  # data, an error or a hang-up waiting


def _pinger(dialect: Any) -> Any:
    def ping_if_doubtful(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if getattr(dbapi_connection, "closed", False) or getattr(dbapi_connection, "broken", False):
            raise DisconnectionError("connection closed while pooled")
        if not _doubtful(dbapi_connection, record):
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as err:
            if dialect.is_disconnect(err, dbapi_connection, None):
                raise DisconnectionError("connection lost while pooled") from err
            raise

    return ping_if_doubtful


# On PostgreSQL (psycopg 3) a transaction is begun only when something needs one (ADR 0072). The engine's
# connections are in autocommit mode, and the BEGIN goes out just before the first statement that is not
# a plain read: a plain read runs on its own, and a request that only reads sends neither BEGIN nor
# COMMIT (two round trips, each costing both processes CPU). Under READ COMMITTED, the isolation used
# everywhere else, every statement of a transaction already reads its own snapshot, so a plain read
# outside the transaction sees what it would have seen inside. What needs the transaction is begun
# first: writes, row locks, advisory locks, savepoints, server-side cursors, anything not compiled from
# select() or a UNION (INTERSECT, EXCEPT) of select()s (text() included), a call that changes state. Deny
# by default: a statement counts as a plain read only when it was compiled from a Core or ORM select(), or
# a compound of them, with no row lock and no state-changing call, and is not sent as executemany. A
# connection asked for another isolation level (REPEATABLE READ for a snapshot) is out of autocommit and
# begins as psycopg always does, at its first statement; the pool puts it back in autocommit when it is
# returned. The commit or rollback that ends a session sends nothing
# when no transaction was begun, so a read-only request's prepared statements also survive (a ROLLBACK
# makes psycopg forget them all, which is why ADR 0052 used to end such requests by COMMIT). A UNION counts
# as a read since ADR 0080: the DAC's turnaround page read its window with one, so each of its requests
# began a transaction, ended it by ROLLBACK, and left its connection to prepare every statement again.
_NOT_A_PLAIN_READ = re.compile(
    r"\bFOR\s+(?:NO\s+KEY\s+)?(?:UPDATE|SHARE|KEY\s+SHARE)\b|\bINTO\b|set_config|nextval|setval|advisory|\blo_|;",
    re.IGNORECASE,
)


def _plain_read(cursor: Any, context: Any, executemany: bool) -> bool:
    compiled = getattr(context, "compiled", None)
    return (
        not executemany
        and compiled is not None
        and isinstance(compiled.statement, (Select, CompoundSelect))
        and _plain_select_text(compiled.string)
        and getattr(cursor, "name", None) is None  # a server-side cursor is DECLAREd: it needs a transaction
    )


def _begin_unless_a_plain_read(idle: Any) -> Any:
    def before_cursor_execute(
        _conn: Any, cursor: Any, _statement: str, _parameters: Any, context: Any, executemany: bool
    ) -> None:
        dbapi_connection = cursor.connection
        if not dbapi_connection.autocommit or dbapi_connection.pgconn.transaction_status != idle:
            return  # another isolation level (psycopg begins by itself), or the transaction is under way
        if not _plain_read(cursor, context, executemany):
            dbapi_connection.execute(b"BEGIN", prepare=False)

    return before_cursor_execute


# What _plain_select_text answered for each statement text seen, so the pattern scans each text once
# per process rather than on every execution (a page's SELECTs are a few hundred to a few thousand
# characters; scanning one took 10-50 µs). The text asked is the compiled statement's, before its
# expanding IN lists are filled in: the same for a list of any length (the text sent differs with each
# length, so every new queue length missed the memo and was scanned again). Statements come from
# SQLAlchemy's compiled cache, so there are a few hundred; past the cap the memo starts again.
_PLAIN_SELECT_MEMO: dict[str, bool] = {}
_PLAIN_SELECT_MEMO_CAP = 4096


def _plain_select_text(statement: str) -> bool:
    known = _PLAIN_SELECT_MEMO.get(statement)
    if known is None:
        known = statement.startswith("SELECT ") and _NOT_A_PLAIN_READ.search(statement) is None
        if len(_PLAIN_SELECT_MEMO) >= _PLAIN_SELECT_MEMO_CAP:
            _PLAIN_SELECT_MEMO.clear()
        _PLAIN_SELECT_MEMO[statement] = known
    return known


# PostgreSQL SQLSTATEs that mean the server went away or is not taking work yet: class 08 (connection
# exception), 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now (recovering).
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
# SQLite's equivalents: the file cannot be opened, or another process holds it past the busy timeout.
_UNAVAILABLE_SQLITE = {"SQLITE_CANTOPEN", "SQLITE_BUSY", "SQLITE_LOCKED"}


def database_unavailable(error: BaseException) -> bool:
    """Did the database go away or refuse to take work for now (so trying again later may succeed),
    rather than refuse this statement?"""
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    if getattr(error.orig, "sqlite_errorname", None) in _UNAVAILABLE_SQLITE:
        return True
    sqlstate = getattr(error.orig, "sqlstate", "")  # psycopg's errors carry it; SQLite's do not
    if sqlstate is None:  # raised by the driver itself: connection refused, closed or broken
        return isinstance(error, OperationalError)
    return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


class Database:
    """An engine and a scoped session factory; one per app (and per worker process)."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.session_factory = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.session = scoped_session(self.session_factory)

    def remove(self, error: BaseException | None = None) -> None:
        """End this thread's session (Flask calls it at the end of every request and app context): its
        transaction, if any, is rolled back. On PostgreSQL a session that only read has none (ADR 0072)."""
        self.session.remove()

    def dispose(self) -> None:
        self.session.remove()
        self.engine.dispose()


@contextlib.contextmanager
def transaction(session: Session) -> Iterator[Session]:
    """Commit everything done inside, or roll all of it back: a service call changes all or nothing."""
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
