"""Backups write and read every column type from the model's type, on SQLite and PostgreSQL, and a
backup that fails says what it left behind."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Double,
    Enum,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    Time,
    Uuid,
    insert,
    select,
    types,
)

from tests.conftest import fresh_postgres_database
from tre.core.backup import BackupError, codec_for, create_backup, read_manifest, restore_backup
from tre.core.db import UTCDateTime, make_engine
from tre.models import metadata as service_metadata


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


def _every_type_table(md: MetaData) -> Table:
    return Table(
        "every_type", md,
        Column("id", Integer, primary_key=True),
        Column("big", BigInteger),
        Column("flag", Boolean),
        Column("day", Date),
        Column("at_utc", UTCDateTime()),
        Column("at_local", DateTime()),
        Column("at_zoned", DateTime(timezone=True)),
        Column("clock", Time()),
        Column("money", Numeric(14, 4)),
        Column("ratio", Double()),
        Column("blob", LargeBinary),
        Column("doc", JSON),
        Column("colour", Enum(Colour)),
        Column("short", String(20)),
        Column("long", Text),
        Column("ident", Uuid()),
    )


ROWS: list[dict[str, Any]] = [
    {
        "id": 1, "big": 2**62 + 7, "flag": True, "day": dt.date(1970, 1, 1),
        "at_utc": dt.datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=dt.UTC),
        "at_local": dt.datetime(2026, 10, 25, 1, 30, 59, 999999),
        "at_zoned": dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        "clock": dt.time(23, 59, 58), "money": decimal.Decimal("-1234567890.1234"), "ratio": 0.1 + 0.2,
        "blob": bytes(range(256)) * 3, "doc": {"nested": [1, 2.5, None, "é", {"deep": True}], "empty": {}},
        "colour": Colour.GREEN, "short": "£ and ☃", "long": "line\n" * 200_000,
        "ident": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    },
    {"id": 2, "flag": False, "money": decimal.Decimal("0.0001"), "ratio": -0.0, "blob": b"", "doc": [],
     "long": "", "short": ""},
    {"id": 3},  # every other column NULL
]


@pytest.fixture
def other_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database on the other backend from ``database_url``."""
    if database_url.startswith("sqlite"):
        with fresh_postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'other.sqlite'}"


def test_every_column_type_comes_back_equal_on_the_other_backend(
    tmp_path: Path, database_url: str, other_database_url: str
) -> None:
    md = MetaData()
    table = _every_type_table(md)
    source = make_engine(database_url)
    md.create_all(source)
    with source.begin() as conn:
        for row in ROWS:
            conn.execute(insert(table), row)
        written = [r._asdict() for r in conn.execute(select(table).order_by(table.c.id))]
    archive = tmp_path / "types.tar.gz"
    create_backup(source, md, tmp_path / "source", archive)
    source.dispose()

    target = make_engine(other_database_url)
    md.create_all(target)
    restore_backup(archive, target, md, tmp_path / "target")
    with target.connect() as conn:
        restored = [r._asdict() for r in conn.execute(select(table).order_by(table.c.id))]
    target.dispose()

    # A plain DateTime(timezone=True) keeps its zone on PostgreSQL only (SQLite keeps the UTC wall
    # time): the instant is what must survive. The service's own timestamps are all UTCDateTime.
    assert [_instant(r.pop("at_zoned")) for r in restored] == [_instant(r.pop("at_zoned")) for r in written]
    assert restored == written
    assert restored[0]["at_utc"] == ROWS[0]["at_utc"] and restored[0]["money"] == ROWS[0]["money"]
    assert restored[0]["colour"] is Colour.GREEN and restored[0]["long"] == ROWS[0]["long"]


def _instant(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)


def test_every_column_of_every_service_table_has_a_codec() -> None:
    # The check is by type, not by value: a table nobody has filled yet is covered too.
    for table in service_metadata.sorted_tables:
        for column in table.columns:
            assert codec_for(column.type).name, f"{table.name}.{column.name}"


def test_a_column_type_without_a_codec_stops_the_backup_before_anything_is_written(tmp_path: Path) -> None:
    class Strange(types.UserDefinedType[Any]):
        cache_ok = True

        def get_col_spec(self, **_: Any) -> str:
            return "STRANGE"

    md = MetaData()
    Table("odd", md, Column("id", Integer, primary_key=True), Column("thing", Strange()))
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    out = tmp_path / "b.tar.gz"
    with pytest.raises(BackupError, match=r"odd\.thing"):
        create_backup(engine, md, tmp_path, out)
    engine.dispose()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("b.tar.gz")]


def test_a_backup_that_fails_midway_removes_its_incomplete_file_and_keeps_the_older_backup(tmp_path: Path) -> None:
    md = MetaData()
    table = Table("t", md, Column("id", Integer, primary_key=True), Column("v", Text))
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "v": "a"}])
    out = tmp_path / "b.tar.gz"
    create_backup(engine, md, tmp_path, out)
    before = out.read_bytes()

    class BrokenStore:
        def sealed_objects(self) -> Iterator[tuple[str, bytes]]:
            yield "ab" * 32, b"sealed"
            raise OSError(28, "No space left on device")

    with pytest.raises(BackupError, match="No space left on device.*nothing was left behind"):
        create_backup(engine, md, tmp_path, out, files=BrokenStore())
    engine.dispose()
    assert out.read_bytes() == before
    assert not list(tmp_path.glob("*.incomplete"))
    assert read_manifest(out)["tables"] == {"t": 1}


def test_tre_backup_that_fails_exits_non_zero_with_one_line_and_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tre.cli import main

    instance = tmp_path / "instance"
    monkeypatch.setenv("TRE_INSTANCE_PATH", str(instance))
    monkeypatch.delenv("TRE_DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(main, ["init"]).exit_code == 0
    # The database lost a table the service expects: the backup cannot be whole.
    engine = make_engine(f"sqlite:///{instance / 'tre.sqlite'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE output_comments")
    engine.dispose()

    result = runner.invoke(main, ["backup", str(tmp_path / "b.tar.gz")])
    assert result.exit_code == 1
    assert "backup failed" in result.output and "output_comments" in result.output
    assert "nothing was left behind" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, BackupError)
    assert not (tmp_path / "b.tar.gz").exists() and not (tmp_path / "b.tar.gz.incomplete").exists()


def test_a_backup_from_another_schema_revision_is_refused(tmp_path: Path) -> None:
    md = MetaData()
    Table("t", md, Column("id", Integer, primary_key=True))
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    md.create_all(engine)
    out = tmp_path / "b.tar.gz"
    create_backup(engine, md, tmp_path, out, revision="0001")
    engine.dispose()
    target = make_engine(f"sqlite:///{tmp_path / 'y.sqlite'}")
    md.create_all(target)
    with pytest.raises(BackupError, match="revision 0001.*0002"):
        restore_backup(out, target, md, tmp_path / "t", revision="0002")
    target.dispose()
    with tarfile.open(out) as tar:
        assert "db/t.jsonl" in tar.getnames()


def test_rows_written_while_a_backup_reads_are_all_in_it_or_all_out(
    tmp_path: Path, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An account and its role written between the backup's read of users and of user_roles: with a
    # per-statement snapshot the role would be backed up without its account, and the restore fail.
    import tre.core.backup as backup_module
    from tests.conftest import _reset_postgres
    from tre.core import migrate
    from tre.core.identity import User, UserRole

    _reset_postgres(postgres_database)
    migrate.upgrade(postgres_database)
    engine = make_engine(postgres_database)
    with engine.begin() as conn:
        conn.execute(insert(User.__table__), [{"id": "u1", "email": "ada@nhs.example", "display_name": "Ada"}])
    writer = make_engine(postgres_database)
    real_encode = backup_module.encode_row
    written: list[bool] = []

    def encode_then_write_once(codecs: Any, row: Any) -> str:
        if not written and row.get("email") == "ada@nhs.example":
            with writer.begin() as conn:
                conn.execute(insert(User.__table__), [{"id": "u2", "email": "bea@nhs.example", "display_name": "Bea"}])
                conn.execute(insert(UserRole.__table__), [{"user_id": "u2", "role": "researcher"}])
            written.append(True)
        return real_encode(codecs, row)

    monkeypatch.setattr(backup_module, "encode_row", encode_then_write_once)
    out = tmp_path / "b.tar.gz"
    create_backup(engine, service_metadata, tmp_path, out)
    engine.dispose()
    writer.dispose()

    assert written and read_manifest(out)["tables"]["users"] == 1
    assert read_manifest(out)["tables"]["user_roles"] == 0
    target_url = f"sqlite:///{tmp_path / 'restored.sqlite'}"
    migrate.upgrade(target_url)
    target = make_engine(target_url)
    restore_backup(out, target, service_metadata, tmp_path / "target")
    target.dispose()


def test_a_restore_whose_rows_do_not_fit_leaves_the_database_empty_and_says_so(tmp_path: Path) -> None:
    md = MetaData()
    parent = Table("parent", md, Column("id", Integer, primary_key=True))
    Table("child", md, Column("id", Integer, primary_key=True), Column("note", String(5)))
    source = make_engine(f"sqlite:///{tmp_path / 'a.sqlite'}")
    md.create_all(source)
    with source.begin() as conn:
        conn.execute(insert(parent), [{"id": 1}])
        conn.execute(insert(md.tables["child"]), [{"id": 1, "note": "far longer than five"}])  # SQLite allows it
    out = tmp_path / "b.tar.gz"
    create_backup(source, md, tmp_path, out)
    source.dispose()

    with fresh_postgres_database() as url:  # PostgreSQL enforces the length
        target = make_engine(url)
        md.create_all(target)
        with pytest.raises(BackupError, match=r"restore failed loading table child .*no row was restored"):
            restore_backup(out, target, md, tmp_path / "target")
        with target.connect() as conn:
            assert conn.execute(select(parent)).all() == []
        target.dispose()
