"""A used instance (every table filled: tests/full_instance.py) backed up with ``tre backup`` and
restored with ``tre restore`` on the other database is the same service: every row equal, the audit
chain intact, the released bundle the same bytes, and people can still sign in."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fresh_postgres_database, make_test_app
from tests.disclosure.factories import outputs
from tests.full_instance import all_rows, build_full_instance, empty_tables, tre
from tests.tre.helpers import sign_in
from tre.core.identity import User
from tre.models import metadata


@pytest.fixture
def other_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database on the other backend from ``database_url``."""
    if database_url.startswith("sqlite"):
        with fresh_postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'restored.sqlite'}"


def test_a_full_instance_restored_on_the_other_database_is_the_same_service(
    tmp_path: Path, database_url: str, other_database_url: str
) -> None:
    full = build_full_instance(tmp_path / "source", database_url)
    source_db = full.app.extensions["tre.db"]
    with source_db.engine.connect() as conn:
        empty = empty_tables(conn, metadata)
        before = all_rows(conn, metadata)
    source_db.session.remove()
    source_db.dispose()
    assert not empty, (
        f"tables the full instance leaves empty: {', '.join(empty)} — add the workflow that fills them "
        "to tests/full_instance.py, or backups of them go untested"
    )

    archive = tmp_path / "backup.tar.gz"
    tre(["backup", str(archive)], full.instance, database_url)
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    shutil.copy2(full.instance / "master.key", target / "master.key")  # kept apart from backups
    restored = tre(["restore", str(archive)], target, other_database_url)
    assert "audit chain intact" in restored.output
    assert "audit chain intact" in tre(["audit", "verify"], target, other_database_url).output

    app = make_test_app(target, other_database_url)
    db = app.extensions["tre.db"]
    with db.engine.connect() as conn:
        after = all_rows(conn, metadata)
    for table, rows in before.items():
        assert after[table] == rows, f"table {table} differs after the restore"

    member = db.session.get(User, full.team_member_id)
    bundle, release = outputs(app).download(member, full.released_request_id)
    assert bundle == full.bundle and release.bundle_sha256 == full.bundle_sha256
    assert hashlib.sha256(bundle).hexdigest() == full.bundle_sha256

    client = app.test_client()
    signed_in = sign_in(client, full.sign_in_email, full.sign_in_secret)
    assert signed_in.status_code in (302, 303)
    home = client.get("/", follow_redirects=True)
    assert home.status_code == 200 and "Fiona" in home.get_data(as_text=True)
    db.session.remove()
    db.dispose()


def test_empty_tables_names_each_table_without_rows(tmp_path: Path) -> None:
    from sqlalchemy import Column, Integer, MetaData, Table, insert

    from tre.core.db import make_engine

    md = MetaData()
    filled = Table("filled", md, Column("id", Integer, primary_key=True))
    Table("forgotten", md, Column("id", Integer, primary_key=True))
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(filled), [{"id": 1}])
        assert empty_tables(conn, md) == ["forgotten"]
    engine.dispose()
