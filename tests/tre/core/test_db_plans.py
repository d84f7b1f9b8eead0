"""Each statement is planned once per PostgreSQL connection (ADR 0071, ADR 0080): psycopg prepares it on
its second run, the server keeps one generic plan for it instead of planning again for each run's values,
and a connection keeps as many statements prepared as the application sends. Asked of the real server
(pg_prepared_statements, SHOW)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, literal_column, select, text
from sqlalchemy.exc import DBAPIError

from tests.conftest import _reset_postgres
from tre.core.db import PREPARED_MAX, Database

scratch = MetaData()
numbers = Table("scratch_plan_numbers", scratch, Column("n", Integer, primary_key=True))
BY_KEY = select(numbers.c.n).where(numbers.c.n == 1)
KNOWN_TWICE = text("SELECT count(*) FROM pg_prepared_statements WHERE generic_plans = 2 AND statement LIKE :like")
KNOWN = text("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE :like")


@pytest.fixture
def pg(postgres_database: str) -> Iterator[Database]:
    _reset_postgres(postgres_database)
    database = Database(postgres_database, pool_size=1, max_overflow=0)  # one connection: the same each time
    scratch.create_all(database.engine)
    with database.engine.begin() as conn:
        conn.execute(numbers.insert(), [{"n": 1}, {"n": 2}])
    yield database
    database.dispose()


def _plans(database: Database) -> tuple[int, int] | None:
    with database.engine.begin() as conn:  # committed: a ROLLBACK makes psycopg forget what it prepared
        row = conn.execute(KNOWN, {"like": "%FROM scratch_plan_numbers%"}).first()
        return None if row is None else (int(row[0]), int(row[1]))


def _run(database: Database, times: int) -> None:
    for _ in range(times):
        with database.engine.begin() as conn:
            assert conn.scalars(BY_KEY).all() == [1]


def test_a_statement_is_prepared_on_its_second_run_and_planned_once(pg: Database) -> None:
    _run(pg, 1)
    # A statement run once is not prepared: one-off statements stay unnamed, and a text of several
    # statements (a restore's script) could not be prepared at all.
    assert _plans(pg) is None

    _run(pg, 5)

    generic, custom = _plans(pg) or (0, 0)
    # Prepared on the second run; every run after that used the one generic plan, none a custom one.
    assert (generic, custom) == (5, 0)


def test_a_connection_keeps_more_statements_prepared_than_psycopgs_default(pg: Database) -> None:
    # The load benchmark's mix sends about 350 distinct statements; psycopg keeps 100 unless told.
    distinct = [select(numbers.c.n, literal_column(str(i)).label(f"c{i}")) for i in range(150)]
    for _ in range(3):  # prepared on the second pass; the third finds each one prepared: none was evicted
        with pg.engine.begin() as conn:
            for statement in distinct:
                conn.execute(statement).all()
    with pg.engine.begin() as conn:
        kept = conn.scalar(KNOWN_TWICE, {"like": "% AS c%FROM scratch_plan_numbers"})
        raw = conn.connection.dbapi_connection
        assert raw is not None
        assert raw.prepared_max == PREPARED_MAX
    assert kept == 150


def test_the_plan_setting_outlives_a_failed_transaction_and_the_pool(pg: Database) -> None:
    with pytest.raises(DBAPIError), pg.engine.begin() as conn:
        conn.execute(text("SELECT 1 / 0"))
    for _ in range(2):
        with pg.engine.connect() as conn:
            assert conn.scalar(text("SHOW plan_cache_mode")) == "force_generic_plan"
