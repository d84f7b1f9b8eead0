"""Backups that restore into a fresh instance, on either database, with the audit chain intact.

A backup is one ``.tar.gz``: every table as JSON lines (in dependency order, the audit log in
chain order), the stored files as they are held (sealed, from the folder or the S3 bucket), and the instance's
wrapped keys (the audit chain key, the sealed signing keys, and the master keyring when a KMS or
HSM wraps it). A clear master key is *not* in it unless asked for, and then only wrapped with a key
derived from a passphrase (scrypt + AES-GCM): whoever holds a backup without the master key, or
without the right to use the key service's key, holds ciphertext.

Each column's value is written and read by a codec chosen from the model's column type (SQLAlchemy
metadata), never from the values met so far: a table whose type has no codec stops the backup
before anything is written, so a new kind of column cannot pass the tests and fail on real data.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import io
import json
import os
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy import MetaData, Table, func, insert, select, text, types
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

FORMAT = "tre-backup/2"
READABLE_FORMATS = ("tre-backup/1", FORMAT)
# The wrapped master keyring (a key service's, tre.core.keyservices) travels too: it opens only
# through that service's key, so a backup holding it still holds nothing usable on its own.
INSTANCE_FILES = ("audit-chain.key", "jwt-signing-keys.json", "session-secret", "master-keyring.wrapped")
MASTER_KEY_MEMBER = "keys/master.key.wrapped"
_BATCH = 500


class BackupError(Exception):
    pass


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    tables: dict[str, int]
    files: int
    includes_master_key: bool


# --- column codecs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """How one column type becomes JSON and back. ``decode`` also accepts an already-typed value
    (archives of format 1 tagged datetimes and bytes themselves)."""

    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


def _decode_datetime(value: Any) -> dt.datetime:
    parsed = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    # Every timestamp column stores UTC; a naive value here can only be UTC written without its zone.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _decode_date(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)


def _decode_time(value: Any) -> dt.time:
    return value if isinstance(value, dt.time) else dt.time.fromisoformat(value)


def _decode_bytes(value: Any) -> bytes:
    return bytes(value) if isinstance(value, bytes | memoryview) else base64.b64decode(value)


def _encode_float(value: Any) -> Any:
    # JSON has no NaN or infinity; repr round-trips every other float exactly.
    return value if value == value and value not in (float("inf"), float("-inf")) else repr(float(value))


_DATETIME = Codec("datetime", lambda v: v.isoformat(), _decode_datetime)
_NAIVE_DATETIME = Codec("datetime", lambda v: v.isoformat(),
                        lambda v: v if isinstance(v, dt.datetime) else dt.datetime.fromisoformat(v))
_DATE = Codec("date", lambda v: v.isoformat(), _decode_date)
_TIME = Codec("time", lambda v: v.isoformat(), _decode_time)
_INTERVAL = Codec("interval", lambda v: v.total_seconds(),
                  lambda v: v if isinstance(v, dt.timedelta) else dt.timedelta(seconds=v))
_BYTES = Codec("bytes", lambda v: base64.b64encode(bytes(v)).decode("ascii"), _decode_bytes)
_DECIMAL = Codec("decimal", str, lambda v: decimal.Decimal(str(v)))
_FLOAT = Codec("float", _encode_float, float)
_INTEGER = Codec("integer", int, int)
_BOOLEAN = Codec("boolean", bool, bool)
_UUID = Codec("uuid", str, lambda v: v if isinstance(v, uuid.UUID) else uuid.UUID(v))
_TEXT = Codec("text", _same, _same)
# An Enum column with a Python enum class stores, and accepts, the member's name.
_ENUM = Codec("enum", lambda v: v.name if isinstance(v, enum.Enum) else v, _same)
_JSON = Codec("json", _same, _same)  # already JSON: dicts, lists, numbers, strings, booleans


def codec_for(column_type: types.TypeEngine[Any]) -> Codec:
    """The codec for a column type; a TypeDecorator is stored as the type it decorates, but its
    Python side is what a select returns and an insert takes, so the codec follows that."""
    impl = column_type.impl_instance if isinstance(column_type, types.TypeDecorator) else column_type
    # Order matters: more specific types first (Enum is a String, Float a Numeric, DateTime not a Date).
    if isinstance(impl, types.JSON):
        return _JSON
    if isinstance(impl, types.DateTime):
        return _DATETIME if isinstance(column_type, types.TypeDecorator) or impl.timezone else _NAIVE_DATETIME
    if isinstance(impl, types.Date):
        return _DATE
    if isinstance(impl, types.Time):
        return _TIME
    if isinstance(impl, types.Interval):
        return _INTERVAL
    if isinstance(impl, types.LargeBinary | types.BINARY | types.VARBINARY):
        return _BYTES
    if isinstance(impl, types.Boolean):
        return _BOOLEAN
    if isinstance(impl, types.Float):
        return _FLOAT
    if isinstance(impl, types.Integer):
        return _INTEGER
    if isinstance(impl, types.Numeric):
        return _DECIMAL
    if isinstance(impl, types.Uuid):
        return _UUID
    if isinstance(impl, types.Enum):
        return _ENUM
    if isinstance(impl, types.String):
        return _TEXT
    raise BackupError(f"no backup codec for column type {column_type!r}")


def table_codecs(table: Table) -> dict[str, Codec]:
    codecs = {}
    for column in table.columns:
        try:
            codecs[column.name] = codec_for(column.type)
        except BackupError:
            raise BackupError(
                f"column {table.name}.{column.name} has type {column.type!r}, which backups cannot yet "
                "write; add a codec for it in tre/core/backup.py"
            ) from None
    return codecs


def encode_row(codecs: dict[str, Codec], row: Any) -> str:
    return json.dumps(
        {k: None if v is None else codecs[k].encode(v) for k, v in row.items()}, sort_keys=True, allow_nan=False
    )


def decode_row(table: Table, codecs: dict[str, Codec], line: str, legacy: bool = False) -> dict[str, Any]:
    raw = json.loads(line)
    unknown = set(raw) - set(codecs)
    if unknown:
        raise BackupError(f"the backup's table {table.name} has columns this version does not: {sorted(unknown)}")
    row = {}
    for name, value in raw.items():
        if legacy:
            value = _legacy_untag(value)
        row[name] = None if value is None else codecs[name].decode(value)
    return row


def _legacy_untag(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        if "$dt" in value:
            return dt.datetime.fromisoformat(value["$dt"])
        if "$b64" in value:
            return base64.b64decode(value["$b64"])
    return value


# --- writing ---------------------------------------------------------------------------------------


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    _add_stream(tar, name, io.BytesIO(data), len(data))


def _add_stream(tar: tarfile.TarFile, name: str, stream: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    tar.addfile(info, stream)


def _wrap_with_passphrase(secret: bytes, passphrase: str) -> bytes:
    salt = os.urandom(16)
    key = Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())
    nonce = os.urandom(12)
    return b"TREBK1" + salt + nonce + AESGCM(key).encrypt(nonce, secret, b"tre-backup-master-key")


def _unwrap_with_passphrase(blob: bytes, passphrase: str) -> bytes:
    if not blob.startswith(b"TREBK1"):
        raise BackupError("the wrapped master key in this backup is not in a known format")
    salt, nonce, body = blob[6:22], blob[22:34], blob[34:]
    key = Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())
    try:
        return AESGCM(key).decrypt(nonce, body, b"tre-backup-master-key")
    except Exception:
        raise BackupError("wrong passphrase for the master key in this backup") from None


def partial_path(out: Path) -> Path:
    """Where a backup is written until it is whole; its name says it is incomplete."""
    return out.with_name(out.name + ".incomplete")


def create_backup(
    engine: Engine,
    metadata: MetaData,
    instance: Path,
    out: Path,
    *,
    master_key_file: Path | None = None,
    passphrase: str | None = None,
    revision: str | None = None,
    files: Any = None,
) -> BackupSummary:
    """Write the archive. ``files`` is the deployment's file store (its sealed objects are copied
    as they are, from a folder or a bucket); without it, ``instance/files`` is read directly.

    The archive is written beside ``out`` under a name ending ``.incomplete`` and renamed when whole.
    On any failure that file is removed and :class:`BackupError` says so, and what went wrong; ``out``
    is untouched (an older backup of that name survives)."""
    if master_key_file is not None and not passphrase:
        raise BackupError("a passphrase is needed to include the master key; nothing was written")
    codecs = {table.name: table_codecs(table) for table in metadata.sorted_tables}  # fails before writing
    tmp = partial_path(out)
    try:
        summary = _write_archive(engine, metadata, codecs, instance, tmp, out, master_key_file=master_key_file,
                                 passphrase=passphrase, revision=revision, files=files)
        os.replace(tmp, out)
    except BaseException as exc:
        left = _remove_quietly(tmp)
        what = "nothing was left behind" if left is None else f"an incomplete file was left at {left}"
        if isinstance(exc, Exception):
            raise BackupError(f"backup failed ({_describe(exc)}); {what}") from exc
        raise
    out.chmod(0o600)
    return summary


def _describe(exc: Exception) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if not isinstance(exc, BackupError) else message


def _remove_quietly(path: Path) -> Path | None:
    """Remove ``path``; return it if it is still there afterwards."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        return path
    return None


def _write_archive(
    engine: Engine,
    metadata: MetaData,
    codecs: dict[str, dict[str, Codec]],
    instance: Path,
    tmp: Path,
    out: Path,
    *,
    master_key_file: Path | None,
    passphrase: str | None,
    revision: str | None,
    files: Any,
) -> BackupSummary:
    counts: dict[str, int] = {}
    stored = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        # One read transaction for every table, so the backup is a consistent snapshot: on PostgreSQL a
        # repeatable-read one (read committed would let a row written meanwhile reach a later table
        # without its parent in an earlier one); on SQLite the transaction holds the write lock.
        with _snapshot(engine) as conn, conn.begin():
            for table in metadata.sorted_tables:
                with tempfile.TemporaryFile() as spool:
                    count = 0
                    result = conn.execution_options(yield_per=_BATCH).execute(
                        select(table).order_by(*table.primary_key.columns)
                    )
                    for row in result:
                        spool.write(encode_row(codecs[table.name], row._mapping).encode() + b"\n")
                        count += 1
                    counts[table.name] = count
                    size = spool.tell()
                    spool.seek(0)
                    _add_stream(tar, f"db/{table.name}.jsonl", spool, size)
        for name in INSTANCE_FILES:
            path = instance / name
            if path.exists():
                _add_bytes(tar, f"instance/{name}", path.read_bytes())
        if files is not None:
            for sha256, sealed in files.sealed_objects():
                _add_bytes(tar, f"files/{sha256[:2]}/{sha256[2:4]}/{sha256}", sealed)
                stored += 1
        else:
            store = instance / "files"
            if store.exists():
                for path in sorted(p for p in store.rglob("*") if p.is_file() and not p.name.startswith(".tmp")):
                    _add_bytes(tar, f"files/{path.relative_to(store).as_posix()}", path.read_bytes())
                    stored += 1
        if master_key_file is not None and passphrase:
            _add_bytes(tar, MASTER_KEY_MEMBER, _wrap_with_passphrase(master_key_file.read_bytes(), passphrase))
        manifest = {
            "format": FORMAT,
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "schema_revision": revision,
            "source_dialect": engine.dialect.name,
            "tables": counts,
            "columns": {name: {c: codec.name for c, codec in cs.items()} for name, cs in codecs.items()},
            "files": stored,
            "includes_master_key": master_key_file is not None,
        }
        _add_bytes(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
        raw.flush()
        os.fsync(raw.fileno())
    return BackupSummary(out, counts, stored, master_key_file is not None)


def _snapshot(engine: Engine) -> Any:
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return conn


# --- reading ---------------------------------------------------------------------------------------


def _safe_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    members = {}
    for m in tar.getmembers():
        name = m.name
        if not m.isfile() or name.startswith("/") or ".." in Path(name).parts:
            raise BackupError(f"refusing a backup member with an unsafe name: {name!r}")
        members[name] = m
    return members


def read_manifest(archive: Path) -> dict[str, Any]:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _safe_members(tar)
            if "manifest.json" not in members:
                raise BackupError("not a backup: manifest.json is missing")
            manifest = json.loads(tar.extractfile(members["manifest.json"]).read())  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError(f"{archive} is not a readable backup ({_describe(exc)})") from None
    if manifest.get("format") not in READABLE_FORMATS:
        raise BackupError(f"unknown backup format {manifest.get('format')!r}")
    return manifest


def restore_backup(
    archive: Path,
    engine: Engine,
    metadata: MetaData,
    instance: Path,
    *,
    passphrase: str | None = None,
    files: Any = None,
    revision: str | None = None,
) -> dict[str, Any]:
    """Load a backup into an empty, migrated database and an instance folder without data; stored
    files go into ``files`` (the deployment's store, a folder or a bucket) or else ``instance/files``.
    With ``revision`` (this code's schema head), a backup taken at another schema revision is refused:
    its rows would not fit these tables."""
    manifest = read_manifest(archive)
    taken_at = manifest.get("schema_revision")
    if revision and taken_at and taken_at != revision:
        raise BackupError(
            f"this backup was taken at schema revision {taken_at} and this version of the service is at "
            f"{revision}: restore it with the version that made it, then upgrade"
        )
    codecs = {table.name: table_codecs(table) for table in metadata.sorted_tables}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            if conn.execute(select(func.count()).select_from(table)).scalar():
                raise BackupError(f"the target database is not empty (table {table.name}); restore into a fresh one")
    instance.mkdir(parents=True, exist_ok=True, mode=0o700)
    legacy = manifest.get("format") == "tre-backup/1"
    with tarfile.open(archive, "r:gz") as tar:
        members = _safe_members(tar)
        unknown = sorted(
            name[3:-6] for name in members if name.startswith("db/") and name[3:-6] not in codecs
        )
        if unknown:
            raise BackupError(f"the backup holds tables this version does not know: {', '.join(unknown)}")

        def read(name: str) -> bytes:
            return tar.extractfile(members[name]).read()  # type: ignore[union-attr]

        if MASTER_KEY_MEMBER in members:
            target = instance / "master.key"
            if not target.exists():
                if not passphrase:
                    raise BackupError("this backup carries the master key: give its passphrase")
                _write_new(target, _unwrap_with_passphrase(read(MASTER_KEY_MEMBER), passphrase))
        for name in INSTANCE_FILES:
            member = f"instance/{name}"
            if member in members:
                target = instance / name
                if target.exists():
                    target.unlink()
                _write_new(target, read(member))
        for name in members:
            if name.startswith("files/"):
                if files is not None:
                    files.put_sealed(name.rsplit("/", 1)[-1], read(name))
                    continue
                target = instance / "files" / name[len("files/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                _write_new(target, read(name))

        # Every row in one transaction: a restore that fails part-way leaves the database empty.
        loading = ""
        try:
            with engine.begin() as conn:
                for table in metadata.sorted_tables:
                    member = f"db/{table.name}.jsonl"
                    if member not in members:
                        continue
                    loading = table.name
                    stream = tar.extractfile(members[member])
                    if stream is None:
                        raise BackupError(f"the backup's member {member} is not a file")
                    any_rows = False
                    for batch in _batches(stream, table, codecs[table.name], legacy):
                        conn.execute(insert(table), batch)
                        any_rows = True
                    if any_rows and conn.dialect.name == "postgresql":
                        _reset_sequences(conn, table)
        except (SQLAlchemyError, ValueError, TypeError, tarfile.TarError, OSError) as exc:
            raise BackupError(
                f"restore failed loading table {loading or '?'} ({_describe(exc)}); no row was restored (the "
                f"database is still empty), but the backup's keys and files were written to {instance}"
            ) from exc
    return manifest


def _batches(stream: IO[bytes], table: Table, codecs: dict[str, Codec], legacy: bool) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for line in io.TextIOWrapper(stream, encoding="utf-8"):
        if line.strip():
            batch.append(decode_row(table, codecs, line, legacy))
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _reset_sequences(conn: Any, table: Table) -> None:
    for column in table.primary_key.columns:
        try:
            integer = column.type.python_type is int
        except NotImplementedError:
            integer = False
        if integer and column.autoincrement in (True, "auto"):
            conn.execute(
                text(
                    # Bandit B608: table and column names come from our own models, never from input
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "  # noqa: S608  # nosec B608
                    f"(SELECT COALESCE(MAX({column.name}), 1) FROM {table.name}))"
                )
            )


def _write_new(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".restore-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
