"""How a session's transaction ends, and how pooled PostgreSQL connections are checked (ADR 0052).

On PostgreSQL a transaction that only ran plain select()s is committed at the end of a request, so
psycopg keeps its prepared statements (a ROLLBACK makes it forget them all); anything else is rolled
back as before. A pooled connection is pinged on checkout only when there is reason to doubt it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, event, insert, select, text
from sqlalchemy.engine import Engine
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


class Endings:
    """Counts how the engine's transactions end (observed with the engine's own events)."""

    def __init__(self, engine: Engine) -> None:
        self.commits = 0
        self.rollbacks = 0
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "rollback", self._rollback)

    def _commit(self, _conn: Any) -> None:
        self.commits += 1

    def _rollback(self, _conn: Any) -> None:
        self.rollbacks += 1


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
def lite(tmp_path: Path) -> Iterator[Database]:
    yield from _database(f"sqlite:///{tmp_path / 'tre.sqlite'}")


def _rows(database: Database) -> set[int]:
    with database.engine.connect() as conn:
        return set(conn.scalars(select(numbers.c.n)))


def _ended_by(database: Database, work: Any, error: BaseException | None = None) -> str:
    endings = Endings(database.engine)
    work(database.session)
    database.remove(error)
    assert endings.commits + endings.rollbacks == 1
    return "commit" if endings.commits else "rollback"


# --- PostgreSQL: what is committed, what is rolled back ---------------------------------------------


def test_a_transaction_of_plain_selects_is_committed(pg: Database) -> None:
    assert _ended_by(pg, lambda s: (s.scalars(select(numbers.c.n)).all(), s.get(Number, 1))) == "commit"


def test_a_core_insert_is_rolled_back_not_committed(pg: Database) -> None:
    def work(s: Any) -> None:
        s.scalars(select(numbers.c.n)).all()
        s.execute(insert(numbers).values(n=3))

    assert _ended_by(pg, work) == "rollback"
    assert _rows(pg) == {1, 2}


def test_a_flushed_write_is_rolled_back_though_the_session_holds_no_changes(pg: Database) -> None:
    def work(s: Any) -> None:
        s.add(Number(n=5))
        s.flush()
        assert not (s.new or s.dirty or s.deleted)

    assert _ended_by(pg, work) == "rollback"
    with pg.session_factory() as s:
        assert s.get(Number, 5) is None


def test_pending_orm_changes_are_not_committed(pg: Database) -> None:
    def work(s: Any) -> None:
        with s.no_autoflush:
            s.get(Number, 1).label = "changed"
            s.add(Number(n=6))

    assert _ended_by(pg, work) == "rollback"
    with pg.session_factory() as s:
        assert s.get(Number, 1).label == "one"
        assert s.get(Number, 6) is None


def test_work_waiting_in_the_session_for_a_commit_is_not_committed(pg: Database) -> None:
    # Audit events and jobs wait in session.info until a commit writes or sends them.
    assert _ended_by(pg, lambda s: (s.scalar(select(numbers.c.n).limit(1)), s.info.setdefault("x", [1]))) == "rollback"


@pytest.mark.parametrize(
    "statement",
    [
        select(numbers.c.n).with_for_update(),
        select(numbers.c.n).with_for_update(read=True),
        select(select(numbers.c.n).cte("c")),
        text("SELECT n FROM scratch_numbers"),
        text(" SELECT n FROM scratch_numbers"),
        text("/* comment */ SELECT n FROM scratch_numbers"),
        text("WITH c AS (DELETE FROM scratch_numbers RETURNING n) SELECT n FROM c"),
        select(text("set_config('application_name', 'x', false)")),
        select(text("nextval('scratch_seq')")),
    ],
    ids=["for-update", "for-share", "with", "text", "text-space", "text-comment", "text-with-delete",
         "set-config", "nextval"],
)
def test_anything_but_a_plain_select_is_rolled_back(pg: Database, statement: Any) -> None:
    with pg.engine.begin() as conn:
        conn.execute(text("CREATE SEQUENCE IF NOT EXISTS scratch_seq"))
    assert _ended_by(pg, lambda s: s.execute(statement).all()) == "rollback"
    assert _rows(pg) == {1, 2}


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the read-only pattern scans from now on (the memo emptied first)."""
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
        assert _ended_by(pg, lambda s: (s.scalars(plain).all(), s.scalars(plain).all())) == "commit"
    assert len(scans) == 1
    locking = select(numbers.c.n).with_for_update()
    for _ in range(2):
        assert _ended_by(pg, lambda s: s.scalars(locking).all()) == "rollback"
    assert len(scans) == 2


def test_an_in_list_of_any_length_is_scanned_once(pg: Database, scans: list[str]) -> None:
    # The text sent differs with each list's length; the compiled text asked does not.
    for length in (1, 2, 5, 40):
        listed = select(numbers.c.n).where(numbers.c.n.in_(list(range(length))))
        assert _ended_by(pg, lambda s, q=listed: s.scalars(q).all()) == "commit"
    assert len(scans) == 1


def test_a_savepoint_is_rolled_back(pg: Database) -> None:
    def work(s: Any) -> None:
        with s.begin_nested():
            s.scalars(select(numbers.c.n)).all()

    assert _ended_by(pg, work) == "rollback"


def test_an_errored_statement_is_rolled_back(pg: Database) -> None:
    def work(s: Any) -> None:
        with pytest.raises(Exception, match="division by zero"):
            s.execute(select(numbers.c.n / 0)).all()

    assert _ended_by(pg, work) == "rollback"
    with pg.session() as s:  # the pooled connection is usable again
        assert s.scalar(select(numbers.c.n).order_by(numbers.c.n).limit(1)) == 1


def test_a_failed_request_is_rolled_back_though_it_only_read(pg: Database) -> None:
    assert _ended_by(pg, lambda s: s.scalars(select(numbers.c.n)).all(), error=RuntimeError("boom")) == "rollback"


def test_a_read_after_a_write_in_the_same_transaction_is_still_rolled_back(pg: Database) -> None:
    def work(s: Any) -> None:
        s.execute(insert(numbers).values(n=7))
        s.scalars(select(numbers.c.n)).all()

    assert _ended_by(pg, work) == "rollback"
    assert _rows(pg) == {1, 2}


# --- SQLite: unchanged -------------------------------------------------------------------------------


def test_on_sqlite_a_read_only_session_is_rolled_back_as_before(lite: Database) -> None:
    assert _ended_by(lite, lambda s: s.scalars(select(numbers.c.n)).all()) == "rollback"


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
