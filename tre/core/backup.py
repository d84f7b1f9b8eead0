"""Backups that restore into a fresh instance, on either database, with the audit chain intact.

A backup is one ``.tar.gz``: every table as JSON lines (in dependency order, the audit log in
chain order), the stored files as they are held (sealed, from the folder or the S3 bucket), and the instance's
wrapped keys (the audit chain key, the sealed signing keys, and the master keyring when a KMS or
HSM wraps it). A clear master key is *not* in it unless asked for, and then only wrapped with a key
derived from a passphrase (scrypt + AES-GCM): whoever holds a backup without the master key, or
without the right to use the key service's key, holds ciphertext.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy import LargeBinary, MetaData, Table, func, insert, select, text
from sqlalchemy.engine import Engine

from tre.core.db import UTCDateTime

FORMAT = "tre-backup/1"
# The wrapped master keyring (a key service's, tre.core.keyservices) travels too: it opens only
# through that service's key, so a backup holding it still holds nothing usable on its own.
INSTANCE_FILES = ("audit-chain.key", "jwt-signing-keys.json", "session-secret", "master-keyring.wrapped")
MASTER_KEY_MEMBER = "keys/master.key.wrapped"


class BackupError(Exception):
    pass


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    tables: dict[str, int]
    files: int
    includes_master_key: bool


def _encode(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, bytes | memoryview):
        return {"$b64": base64.b64encode(bytes(value)).decode()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        if "$dt" in value:
            return dt.datetime.fromisoformat(value["$dt"])
        if "$b64" in value:
            return base64.b64decode(value["$b64"])
    return value


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


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
    as they are, from a folder or a bucket); without it, ``instance/files`` is read directly."""
    counts: dict[str, int] = {}
    stored = 0
    tmp = out.with_suffix(out.suffix + ".partial")
    with tarfile.open(tmp, "w:gz") as tar:
        # One read transaction for every table, so the backup is a consistent snapshot.
        with engine.connect() as conn, conn.begin():
            for table in metadata.sorted_tables:
                order = [c for c in table.primary_key.columns]
                lines = []
                for row in conn.execute(select(table).order_by(*order)):
                    lines.append(json.dumps({k: _encode(v) for k, v in row._mapping.items()}, sort_keys=True))
                counts[table.name] = len(lines)
                _add_bytes(tar, f"db/{table.name}.jsonl", ("\n".join(lines) + "\n" if lines else "").encode())
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
        includes_master = master_key_file is not None
        if master_key_file is not None:
            if not passphrase:
                raise BackupError("a passphrase is needed to include the master key")
            _add_bytes(tar, MASTER_KEY_MEMBER, _wrap_with_passphrase(master_key_file.read_bytes(), passphrase))
        manifest = {
            "format": FORMAT,
            "created_at": dt.datetime.now(dt.UTC).isoformat(),
            "schema_revision": revision,
            "source_dialect": engine.dialect.name,
            "tables": counts,
            "files": stored,
            "includes_master_key": includes_master,
        }
        _add_bytes(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
    os.replace(tmp, out)
    out.chmod(0o600)
    return BackupSummary(out, counts, stored, includes_master)


def _safe_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    members = {}
    for m in tar.getmembers():
        name = m.name
        if not m.isfile() or name.startswith("/") or ".." in Path(name).parts:
            raise BackupError(f"refusing a backup member with an unsafe name: {name!r}")
        members[name] = m
    return members


def read_manifest(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive, "r:gz") as tar:
        members = _safe_members(tar)
        if "manifest.json" not in members:
            raise BackupError("not a backup: manifest.json is missing")
        manifest = json.loads(tar.extractfile(members["manifest.json"]).read())  # type: ignore[union-attr]
    if manifest.get("format") != FORMAT:
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
) -> dict[str, Any]:
    """Load a backup into an empty, migrated database and an instance folder without data; stored
    files go into ``files`` (the deployment's store, a folder or a bucket) or else ``instance/files``."""
    manifest = read_manifest(archive)
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            if conn.execute(select(func.count()).select_from(table)).scalar():
                raise BackupError(f"the target database is not empty (table {table.name}); restore into a fresh one")
    instance.mkdir(parents=True, exist_ok=True, mode=0o711)
    with tarfile.open(archive, "r:gz") as tar:
        members = _safe_members(tar)

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
        for name, _ in members.items():
            if name.startswith("files/"):
                if files is not None:
                    files.put_sealed(name.rsplit("/", 1)[-1], read(name))
                    continue
                target = instance / "files" / name[len("files/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                _write_new(target, read(name))

        with engine.begin() as conn:
            for table in metadata.sorted_tables:
                member = f"db/{table.name}.jsonl"
                if member not in members:
                    continue
                rows = [
                    _typed(table, {k: _decode(v) for k, v in json.loads(line).items()})
                    for line in read(member).decode().splitlines()
                    if line.strip()
                ]
                for start in range(0, len(rows), 500):
                    conn.execute(insert(table), rows[start : start + 500])
                if rows and conn.dialect.name == "postgresql":
                    _reset_sequences(conn, table)
    return manifest


def _typed(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    for column in table.columns:
        value = row.get(column.name)
        if value is None:
            continue
        if isinstance(column.type, UTCDateTime) and isinstance(value, dt.datetime) and value.tzinfo is None:
            row[column.name] = value.replace(tzinfo=dt.UTC)
        if isinstance(column.type, LargeBinary) and isinstance(value, str):
            row[column.name] = base64.b64decode(value)
    return row


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
