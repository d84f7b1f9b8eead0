"""Database tables as deliveries: a custodian names a source the administrator configured and a table
in it; the delivery job reads the table in chunks into a Parquet file in the identifiable zone, which
is then checked like any delivered file.

A custodian never types a URL: only a name from ``TRE_DATABASE_SOURCES`` (a JSON object of name →
SQLAlchemy URL, set by the administrator). So no custodian can point the service at a host of their
choosing (server-side request forgery) or read a database the administrator did not offer, and the
URL, with its credentials, is never stored with the delivery, shown, logged or put in an error: the
delivery records the source's name and the table's. Table names are plain identifiers
(``table`` or ``schema.table``), reflected and quoted by SQLAlchemy, never put into SQL text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from pseudonymisation.landing import LandingError

_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
CHUNK_ROWS = 50_000


class SourceError(ValueError):
    """The source or table cannot be used; the message is safe to show (no URL in it)."""


def parse_sources(text: str) -> dict[str, str]:
    """``TRE_DATABASE_SOURCES``: a JSON object of short names to SQLAlchemy URLs ('' for none)."""
    if not (text or "").strip():
        return {}
    try:
        found = json.loads(text)
    except ValueError:
        raise SourceError("TRE_DATABASE_SOURCES must be a JSON object of names to SQLAlchemy URLs") from None
    if not isinstance(found, dict) or not all(isinstance(v, str) and v for v in found.values()):
        raise SourceError("TRE_DATABASE_SOURCES must be a JSON object of names to SQLAlchemy URLs")
    bad = [k for k in found if not _NAME.fullmatch(k)]
    if bad:
        raise SourceError("Database source names are lower-case letters, digits and underscores")
    return dict(found)


@dataclass(frozen=True)
class TableRef:
    source: str
    schema: str | None
    table: str

    @property
    def name(self) -> str:
        """As recorded on the delivery: ``source:schema.table``."""
        return f"{self.source}:{self.schema + '.' if self.schema else ''}{self.table}"

    @property
    def file_name(self) -> str:
        return f"{self.table}.parquet"


def table_ref(sources: Mapping[str, str], source: str, table: str) -> TableRef:
    """Check a custodian's choice: a configured source and a plain table name."""
    if (source or "") not in sources:
        raise SourceError("No database source of that name; an administrator configures them")
    parts = (table or "").strip().split(".")
    if len(parts) > 2 or not all(_IDENT.fullmatch(p) for p in parts):
        raise SourceError("Name the table as table or schema.table (letters, digits and underscores)")
    return TableRef(source, parts[0] if len(parts) == 2 else None, parts[-1])


def parse_ref(name: str) -> TableRef:
    """The reference recorded on a delivery, read back (``source:schema.table``)."""
    source, _, rest = name.partition(":")
    parts = rest.split(".")
    return TableRef(source, parts[0] if len(parts) == 2 else None, parts[-1])


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, hide_parameters=True, pool_pre_ping=False, poolclass=sa.pool.NullPool)


def table_exists(url: str, ref: TableRef) -> bool:
    engine = _engine(url)
    try:
        return sa.inspect(engine).has_table(ref.table, schema=ref.schema)
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(f"The database source {ref.source} cannot be reached ({type(exc).__name__})") from None
    finally:
        engine.dispose()


def _arrow_type(column_type: Any) -> pa.DataType:
    if isinstance(column_type, sa.Boolean):
        return pa.bool_()
    if isinstance(column_type, sa.Integer):
        return pa.int64()
    if isinstance(column_type, sa.Numeric | sa.Float):
        return pa.float64()
    if isinstance(column_type, sa.DateTime):
        return pa.timestamp("us")
    if isinstance(column_type, sa.Date):
        return pa.date32()
    return pa.string()


def read_table(
    url: str, ref: TableRef, target: Path, *, max_bytes: int, chunk_rows: int = CHUNK_ROWS
) -> tuple[str, int]:
    """Read the table in chunks (a server-side cursor) into a Parquet file at ``target`` (written
    aside, then renamed; mode 0600); returns its sha256 and size. Memory follows ``chunk_rows``."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    engine = _engine(url)
    try:
        table = sa.Table(ref.table, sa.MetaData(), schema=ref.schema, autoload_with=engine)
        schema = pa.schema([(c.name, _arrow_type(c.type)) for c in table.columns])
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with open(fd, "wb") as out, pq.ParquetWriter(out, schema) as writer, engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(sa.select(table))
            for rows in result.partitions(chunk_rows):
                columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
                arrays = [pa.array([_plain(v) for v in values], type=f.type)
                          for values, f in zip(columns, schema, strict=True)]
                writer.write_batch(pa.record_batch(arrays, schema=schema))
                if out.tell() > max_bytes:
                    raise LandingError(f"The table is larger than the limit of {max_bytes:,} bytes")
        digest, size = hashlib.sha256(), 0
        with open(tmp, "rb") as written:
            while block := written.read(1 << 22):
                size += len(block)
                digest.update(block)
        os.replace(tmp, target)
        return digest.hexdigest(), size
    except sa.exc.NoSuchTableError:
        raise LandingError(f"The database source {ref.source} has no table {ref.name.partition(':')[2]}") from None
    except sa.exc.SQLAlchemyError as exc:
        raise LandingError(f"The database source {ref.source} could not be read ({type(exc).__name__})") from None
    finally:
        tmp.unlink(missing_ok=True)
        engine.dispose()


def _plain(value: Any) -> Any:
    """Decimals become floats (the declared type decimal); everything else as the driver gave it."""
    from decimal import Decimal

    return float(value) if isinstance(value, Decimal) else value


__all__ = ["SourceError", "TableRef", "parse_ref", "parse_sources", "read_table", "table_exists", "table_ref"]
