"""Shared fixtures: an app on each database backend, a client, and real servers when reachable.

Every test that takes ``database_url`` (directly or through ``app``) runs on SQLite and, when the
PostgreSQL server named by ``TRE_TEST_POSTGRES_URL`` answers, on PostgreSQL too. A backend that
cannot be reached is skipped, and the summary at the end says so in capitals.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_URL = os.environ.get(
    "TRE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TRE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
RABBITMQ_URL = os.environ.get("TRE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")

_SKIPPED_BACKENDS: set[str] = set()


def reachable(url: str) -> bool:
    parsed = urlparse(url.replace("postgresql+psycopg", "postgresql"))
    host, port = parsed.hostname or "127.0.0.1", parsed.port
    if port is None:
        port = {"postgresql": 5432, "redis": 6379, "amqp": 5672}.get(parsed.scheme, 0)
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_backend(name: str, url: str) -> None:
    if not reachable(url):
        _SKIPPED_BACKENDS.add(name)
        pytest.skip(f"{name.upper()} NOT REACHABLE at {url}: backend not tested")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"backend postgresql: {'reachable' if reachable(POSTGRES_URL) else 'NOT REACHABLE'} ({POSTGRES_URL})",
        f"backend redis: {'reachable' if reachable(REDIS_URL) else 'NOT REACHABLE'} ({REDIS_URL})",
        f"backend rabbitmq: {'reachable' if reachable(RABBITMQ_URL) else 'NOT REACHABLE'}",
    ]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for name in sorted(_SKIPPED_BACKENDS):
        terminalreporter.write_line(
            f"!!! {name.upper()} WAS NOT REACHABLE: tests on that backend were SKIPPED !!!", red=True, bold=True
        )


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with fresh_postgres_database() as url:
        yield url


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A PostgreSQL database of its own (a random name, so runs sharing the server never meet), dropped
    when done; skips the test when the server is not reachable."""
    require_backend("postgresql", POSTGRES_URL)
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"tre_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tre.sqlite'}"
    url: str = request.getfixturevalue("postgres_database")
    _reset_postgres(url)
    return url


def _reset_postgres(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def make_test_app(instance: Path, database_url: str, **settings: Any) -> Any:
    from tre.app import create_app

    # Rate limits are off unless a test turns them on (tests/tre/test_ratelimits.py): a test client
    # sends every request from one address, and the access matrix alone sends thousands.
    overrides = {"instance_path": instance, "database_url": database_url, "broker_url": "memory://",
                 "rate_limits": False}
    overrides.update(settings)
    return create_app({"TRE_SETTINGS": overrides, "TESTING": True, "CELERY_ALWAYS_EAGER": True})


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> Iterator[Any]:
    """An app with its schema created from the models (migrations have their own test)."""
    from tre.models import metadata

    application = make_test_app(tmp_path / "instance", database_url)
    db = application.extensions["tre.db"]
    metadata.create_all(db.engine)
    # No app context is held open here: each test-client request must get its own, as in
    # production, or ``g`` (and the CSRF token cached in it) would leak between requests.
    yield application
    db.session.remove()
    db.dispose()


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[Any]:
    """An app on SQLite only, for tests about the web layer rather than the database."""
    from tre.models import metadata

    application = make_test_app(tmp_path / "instance", f"sqlite:///{tmp_path / 'tre.sqlite'}")
    db = application.extensions["tre.db"]
    metadata.create_all(db.engine)
    yield application
    db.session.remove()
    db.dispose()


@pytest.fixture
def client(sqlite_app: Any) -> Any:
    return sqlite_app.test_client()


@pytest.fixture
def db_session(app: Any) -> Any:
    return app.extensions["tre.db"].session
