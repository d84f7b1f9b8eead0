"""When a PostgreSQL transaction is begun (ADR 0072), and how pooled connections are checked (ADR 0052).

On PostgreSQL the connections are in autocommit mode and a transaction is begun just before the first
statement that is not a plain read: a session that only runs plain select()s sends neither BEGIN nor
COMMIT, and its prepared statements survive. What the server sees is observed on the connection itself
(psycopg's transaction status) and from a second connection (locks held, rows visible)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.pq import Trace, TransactionStatus
from sqlalchemy import Column, Integer, MetaData, Table, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Mapped, declarative_base, mapped_column

from tests.conftest import POSTGRES_URL, _reset_postgres, make_test_app
from tre.access import public
from tre.core import db as dbmod
from tre.core.db import Database

scratch = MetaData()
numbers = Table("scratch_numbers", scratch, Column("n", Integer, primary_key=True))

Scratch = declarative_base(metadata=scratch)


class Number(Scratch):  # type: ignore[misc,valid-type]
    __tablename__ = "scratch_rows"
    n: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(default="")


def _database(url: str) -> Iterator[Database]:
    database = Database(url)
    scratch.create_all(database.engine)
    with database.engine.begin() as conn:
        conn.execute(numbers.insert(), [{"n": 1}, {"n": 2}])
        conn.execute(Number.__table__.insert(), [{"n": 1, "label": "one"}])
    yield database
    database.dispose()


@pytest.fixture
def pg(postgres_database: str) -> Iterator[Database]:
    _reset_postgres(postgres_database)
    yield from _database(postgres_database)


@pytest.fixture
def other(pg: Database) -> Iterator[Any]:
    """A second connection to the same database, outside the pool under test."""
    engine = dbmod.create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def _rows(database: Database) -> set[int]:
    with database.engine.connect() as conn:
        return set(conn.scalars(select(numbers.c.n)))


def _server_transaction(session: Any) -> bool:
    """Has the server a transaction open on this session's connection?"""
    dbapi_connection = session.connection().connection.dbapi_connection
    return dbapi_connection.pgconn.transaction_status != TransactionStatus.IDLE


class Sent:
    """The BEGIN, COMMIT and ROLLBACK this session's connection sends to the server, wherever they come
    from (psycopg's own included), read from libpq's trace of the wire protocol."""

    def __init__(self, session: Any, tmp_path: Path) -> None:
        self._pgconn = session.connection().connection.dbapi_connection.pgconn
        self._file = (tmp_path / "wire.trace").open("w")
        self._pgconn.trace(self._file.fileno())
        self._pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)

    @property
    def commands(self) -> list[str]:
        self._pgconn.untrace()
        self._file.close()
        wire = Path(self._file.name).read_text()
        assert re.search(r"^F\s+\d+\s+(?:Query|Parse)\s", wire, re.MULTILINE)  # the trace saw the statements
        return re.findall(r'^F\s+\d+\s+(?:Query|Parse)\s.*?"(BEGIN|COMMIT|ROLLBACK)"', wire, re.MULTILINE)


# --- PostgreSQL: what begins a transaction ---------------------------------------------------------


def test_a_session_of_plain_selects_sends_no_begin_and_no_commit(pg: Database, tmp_path: Path) -> None:
    s = pg.session()
    sent = Sent(s, tmp_path)
    assert s.scalars(select(numbers.c.n)).all() == [1, 2]
    assert s.get(Number, 1).label == "one"
    assert not _server_transaction(s)
    s.commit()
    pg.remove()
    assert sent.commands == []


def test_a_union_of_plain_selects_sends_no_begin_and_no_rollback(pg: Database, tmp_path: Path) -> None:
    # The DAC's turnaround page reads its window with a UNION ALL: it began a transaction, so its request
    # ended with a ROLLBACK, and psycopg forgot every statement it had prepared on the connection.
    s = pg.session()
    sent = Sent(s, tmp_path)
    low = select(numbers.c.n).where(numbers.c.n == 1)
    high = select(numbers.c.n).where(numbers.c.n == 2)
    assert sorted(s.scalars(low.union_all(high)).all()) == [1, 2]
    assert s.scalars(low.union(high).order_by("n")).all() == [1, 2]
    assert s.scalars(low.except_(high)).all() == [1]
    assert not _server_transaction(s)
    pg.remove()
    assert sent.commands == []


def test_a_write_begins_a_transaction_that_a_rollback_undoes(pg: Database, tmp_path: Path) -> None:
    s = pg.session()
    sent = Sent(s, tmp_path)
    s.scalars(select(numbers.c.n)).all()
    assert not _server_transaction(s)
    s.execute(insert(numbers).values(n=3))
    assert _server_transaction(s)
    assert s.scalars(select(numbers.c.n)).all() == [1, 2, 3]  # the transaction sees its own write
    pg.remove()
    assert sent.commands == ["BEGIN", "ROLLBACK"]
    assert _rows(pg) == {1, 2}


def test_a_committed_write_is_kept(pg: Database, tmp_path: Path) -> None:
    s = pg.session()
    sent = Sent(s, tmp_path)
    s.add(Number(n=4, label="four"))
    s.commit()
    pg.remove()
    assert sent.commands == ["BEGIN", "COMMIT"]
    with pg.session_factory() as fresh:
        assert fresh.get(Number, 4).label == "four"


def test_a_write_from_another_connection_is_not_seen_before_it_commits(pg: Database, other: Any) -> None:
    other.execute(text("BEGIN"))
    other.execute(insert(numbers).values(n=8))
    assert _rows(pg) == {1, 2}
    other.execute(text("COMMIT"))
    assert _rows(pg) == {1, 2, 8}


def test_a_flushed_orm_write_is_rolled_back_with_its_session(pg: Database) -> None:
    s = pg.session()
    s.add(Number(n=5))
    s.flush()
    assert _server_transaction(s)
    pg.remove()
    with pg.session_factory() as fresh:
        assert fresh.get(Number, 5) is None


def test_a_row_lock_is_held_until_the_transaction_ends(pg: Database, other: Any) -> None:
    # Taken outside a transaction, FOR UPDATE would be released as soon as the statement ended, and
    # two writers that each read-then-update a row could both go ahead.
    s = pg.session()
    s.execute(select(numbers.c.n).where(numbers.c.n == 1).with_for_update()).all()
    assert _server_transaction(s)
    with pytest.raises(OperationalError, match="could not obtain lock"):
        other.execute(text("SELECT n FROM scratch_numbers WHERE n = 1 FOR UPDATE NOWAIT"))
    pg.remove()
    assert other.execute(text("SELECT n FROM scratch_numbers WHERE n = 1 FOR UPDATE NOWAIT")).scalar() == 1


def test_an_advisory_transaction_lock_is_held_until_the_transaction_ends(pg: Database, other: Any) -> None:
    # The audit chain's lanes are serialised by this kind of lock (tre/core/audit.py).
    s = pg.session()
    s.execute(text("SELECT pg_advisory_xact_lock(4242)"))
    assert _server_transaction(s)
    assert other.execute(text("SELECT pg_try_advisory_xact_lock(4242)")).scalar() is False
    pg.remove()
    assert other.execute(text("SELECT pg_try_advisory_xact_lock(4242)")).scalar() is True


@pytest.mark.parametrize(
    "statement",
    [
        select(numbers.c.n).with_for_update(),
        select(numbers.c.n).with_for_update(read=True),
        text("SELECT n FROM scratch_numbers"),
        text(" SELECT n FROM scratch_numbers"),
        text("/* comment */ SELECT n FROM scratch_numbers"),
        text("WITH c AS (DELETE FROM scratch_numbers RETURNING n) SELECT n FROM c"),
        select(text("set_config('application_name', 'x', false)")),
        select(text("nextval('scratch_seq')")),
    ],
    ids=["for-update", "for-share", "text", "text-space", "text-comment", "text-with-delete", "set-config",
         "nextval"],
)
def test_anything_but_a_plain_select_begins_a_transaction_first(pg: Database, statement: Any) -> None:
    with pg.engine.begin() as conn:
        conn.execute(text("CREATE SEQUENCE IF NOT EXISTS scratch_seq"))
    s = pg.session()
    s.execute(statement).all()
    assert _server_transaction(s)
    pg.remove()
    assert _rows(pg) == {1, 2}  # the DELETE in a WITH was rolled back with the rest


def test_a_savepoint_begins_the_transaction_and_rolls_back_alone(pg: Database) -> None:
    s = pg.session()
    with pytest.raises(RuntimeError), s.begin_nested():
        assert _server_transaction(s)
        s.execute(insert(numbers).values(n=6))
        raise RuntimeError
    s.execute(insert(numbers).values(n=7))
    s.commit()
    pg.remove()
    assert _rows(pg) == {1, 2, 7}


def test_a_server_side_cursor_reads_inside_a_transaction(pg: Database) -> None:
    s = pg.session()
    streamed = s.connection(execution_options={"stream_results": True, "yield_per": 1})
    assert [row.n for row in streamed.execute(select(numbers.c.n).order_by(numbers.c.n))] == [1, 2]
    pg.remove()


def test_a_failed_plain_read_leaves_the_connection_usable(pg: Database) -> None:
    s = pg.session()
    with pytest.raises(Exception, match="division by zero"):
        s.execute(select(numbers.c.n / 0)).all()
    pg.remove()
    with pg.session() as again:
        assert again.scalar(select(numbers.c.n).order_by(numbers.c.n).limit(1)) == 1


def test_a_repeatable_read_snapshot_still_holds_and_the_pool_gets_autocommit_back(pg: Database, other: Any) -> None:
    # The audit log's verification reads every lane in one snapshot this way (tre/core/audit.py).
    s = pg.session()
    snapshot = s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    assert set(snapshot.scalars(select(numbers.c.n))) == {1, 2}
    other.execute(insert(numbers).values(n=9))
    assert set(snapshot.scalars(select(numbers.c.n))) == {1, 2}
    pg.remove()
    with pg.engine.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is True
        assert set(conn.scalars(select(numbers.c.n))) == {1, 2, 9}


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the plain-read pattern scans from now on (the memo emptied first)."""
    scanned: list[str] = []
    pattern = dbmod._NOT_A_PLAIN_READ

    class Counting:
        def search(self, statement: str) -> Any:
            scanned.append(statement)
            return pattern.search(statement)

    monkeypatch.setattr(dbmod, "_NOT_A_PLAIN_READ", Counting())
    monkeypatch.setattr(dbmod, "_PLAIN_SELECT_MEMO", {})
    return scanned


def test_each_statement_text_is_scanned_once_and_a_locking_one_stays_refused(pg: Database, scans: list[str]) -> None:
    plain = select(numbers.c.n).where(numbers.c.n > 0)
    for _ in range(3):
        s = pg.session()
        s.scalars(plain).all()
        s.scalars(plain).all()
        assert not _server_transaction(s)
        pg.remove()
    assert len(scans) == 1
    locking = select(numbers.c.n).with_for_update()
    for _ in range(2):
        s = pg.session()
        s.scalars(locking).all()
        assert _server_transaction(s)
        pg.remove()
    assert len(scans) == 2


def test_an_in_list_of_any_length_is_scanned_once(pg: Database, scans: list[str]) -> None:
    # The text sent differs with each list's length; the compiled text asked does not.
    for length in (1, 2, 5, 40):
        s = pg.session()
        s.scalars(select(numbers.c.n).where(numbers.c.n.in_(list(range(length))))).all()
        assert not _server_transaction(s)
        pg.remove()
    assert len(scans) == 1


# --- SQLite: unchanged -------------------------------------------------------------------------------


def test_on_sqlite_every_session_still_begins_immediately(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'tre.sqlite'}")
    scratch.create_all(database.engine)
    s = database.session()
    s.scalars(select(numbers.c.n)).all()
    assert s.connection().connection.dbapi_connection.in_transaction
    database.dispose()


# --- Through the app: a request's teardown -----------------------------------------------------------


class Conflict(Exception):
    pass


@pytest.fixture
def pg_app(tmp_path: Path, postgres_database: str) -> Iterator[Any]:
    _reset_postgres(postgres_database)
    application = make_test_app(tmp_path / "instance", postgres_database)
    database: Database = application.extensions["tre.db"]
    from tre.models import metadata

    metadata.create_all(database.engine)
    scratch.create_all(database.engine)
    with database.engine.begin() as conn:
        conn.execute(numbers.insert(), [{"n": 1}, {"n": 2}])

    def read() -> str:
        return str(len(database.session.scalars(select(numbers.c.n).where(numbers.c.n > 0)).all()))

    def prepared() -> str:
        return str(database.session.scalar(text("SELECT count(*) FROM pg_prepared_statements")))

    def write_then_fail() -> str:
        database.session.add(Number(n=9))
        database.session.flush()
        database.session.execute(insert(numbers).values(n=9))
        raise Conflict

    application.add_url_rule("/t/read", "t_read", public(read))
    application.add_url_rule("/t/prepared", "t_prepared", public(prepared))
    application.add_url_rule("/t/write-then-fail", "t_write_then_fail", public(write_then_fail))
    application.register_error_handler(Conflict, lambda _e: ("conflict", 409))
    yield application
    database.dispose()


def test_a_read_only_request_leaves_its_statements_prepared(pg_app: Any) -> None:
    client = pg_app.test_client()
    for _ in range(3):  # psycopg prepares a statement on its second run on a connection (ADR 0071)
        assert client.get("/t/read").get_data(as_text=True) == "2"
    assert int(client.get("/t/prepared").get_data(as_text=True)) >= 1


def test_a_request_that_flushed_a_write_then_failed_leaves_nothing(pg_app: Any) -> None:
    client = pg_app.test_client()
    assert client.get("/t/write-then-fail").status_code == 409
    database: Database = pg_app.extensions["tre.db"]
    assert _rows(database) == {1, 2}
    with database.session_factory() as s:
        assert s.get(Number, 9) is None


# --- Pooled connections: pinged only when in doubt ---------------------------------------------------


class Pings:
    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = engine.dialect.do_ping

        def counted(dbapi_connection: Any) -> bool:
            self.count += 1
            return real(dbapi_connection)

        monkeypatch.setattr(engine.dialect, "do_ping", counted)


def _backend_pid(database: Database) -> int:
    with database.session() as s:
        pid = int(s.scalar(select(text("pg_backend_pid()"))))
    database.remove()
    return pid


def test_a_quiet_pooled_connection_is_not_pinged(pg: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _backend_pid(pg)
    pings = Pings(pg.engine, monkeypatch)
    assert _backend_pid(pg) == first
    assert pings.count == 0


def test_a_connection_idle_longer_than_the_limit_is_pinged(pg: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _backend_pid(pg)
    pings = Pings(pg.engine, monkeypatch)
    monkeypatch.setattr(dbmod, "PING_AFTER_IDLE_SECONDS", -1.0)
    assert _backend_pid(pg) == first
    assert pings.count == 1


def test_a_pooled_connection_killed_by_the_server_does_not_fail_the_next_request(
    pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _backend_pid(pg)
    pings = Pings(pg.engine, monkeypatch)
    admin = dbmod.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:  # waits (up to 10 s) until the backend has gone
            assert conn.scalar(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": first}) is True
    finally:
        admin.dispose()
    assert _rows(pg) == {1, 2}  # the next checkout gets a working connection
    assert pings.count == 1  # found by the ping the server's goodbye prompted, not by a failed statement
    assert _backend_pid(pg) != first
