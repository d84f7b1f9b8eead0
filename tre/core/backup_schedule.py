"""Scheduled, encrypted backups kept beside the stored files, and the drill that proves the latest restores.

Off by default; ``TRE_BACKUP_EVERY_HOURS`` (hours between backups) turns the periodic job on and
``TRE_BACKUP_KEEP`` says how many to keep. Each backup is the archive ``tre backup`` writes
(tre.core.backup), sealed whole by the key provider (the master key, or the KMS/HSM-wrapped keyring)
and stored where the deployment keeps its files: ``<instance>/backups`` for the folder store, or the
same S3 bucket under ``<prefix>backups/``. A stored backup is ciphertext; opening it needs the master
key, which is never in it (keep that key apart, as docs/operations.md says).

The drill (``tre backup drill``) opens the newest backup, restores it into a scratch SQLite database
in a temporary folder, and checks that every table has the rows the manifest promised and that the
audit chain verifies with the chain key the backup carries.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, func, select
from sqlalchemy.orm import Session

from tre.core import migrate
from tre.core.audit import CHAIN_KEY_PURPOSE, iter_events, verify_chain
from tre.core.backup import BackupError, create_backup, read_manifest, restore_backup
from tre.core.db import make_engine
from tre.core.jobs import JobContext, job_handler, periodic

log = logging.getLogger(__name__)

BACKUP_JOB = "kernel.backup"
SEAL_PURPOSE = "scheduled-backup"
_NAME = re.compile(r"^tre-backup-(\d{8}T\d{6}Z)\.tar\.gz\.sealed$")


@dataclass(frozen=True)
class StoredBackup:
    name: str
    taken_at: dt.datetime
    size: int


def backup_name(at: dt.datetime) -> str:
    return f"tre-backup-{at.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}.tar.gz.sealed"


def _taken_at(name: str) -> dt.datetime | None:
    match = _NAME.match(name)
    return dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC) if match else None


class LocalVault:
    """Sealed backups in a folder private to the service's account."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"folder {self.root}"

    def put(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incomplete-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def list(self) -> list[StoredBackup]:
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            taken = _taken_at(path.name)
            if taken is not None and path.is_file():
                found.append(StoredBackup(path.name, taken, path.stat().st_size))
        return sorted(found, key=lambda b: b.taken_at)


class S3Vault:
    """Sealed backups in the file store's S3 bucket, under ``<prefix>backups/`` (never mistaken for
    stored files: those are named by their SHA-256)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = f"{prefix}backups/"

    def describe(self) -> str:
        return f"S3 bucket {self.bucket!r} under {self.prefix}"

    def put(self, name: str, data: bytes) -> None:
        # One put_object is visible whole or not at all.
        self._client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data,
                                ContentType="application/octet-stream")

    def get(self, name: str) -> bytes:
        body = self._client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def delete(self, name: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self.prefix + name)

    def list(self) -> list[StoredBackup]:
        found, token = [], None
        while True:
            page = self._client.list_objects_v2(
                Bucket=self.bucket, Prefix=self.prefix, **({"ContinuationToken": token} if token else {})
            )
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix):]
                taken = _taken_at(name)
                if taken is not None:
                    found.append(StoredBackup(name, taken, int(item.get("Size", 0))))
            if not page.get("IsTruncated"):
                return sorted(found, key=lambda b: b.taken_at)
            token = page["NextContinuationToken"]


Vault = LocalVault | S3Vault


def vault_for(settings: Any, files: Any = None) -> Vault:
    """Where this deployment keeps its scheduled backups: beside its stored files."""
    if not settings.files_s3_bucket:
        return LocalVault(settings.instance_path / "backups")
    if files is None:
        from tre.core.filestore import file_store_for

        files = file_store_for(settings, keys=None)  # type: ignore[arg-type] - only its client is used
    return S3Vault(files._client, files.bucket, files.prefix)


# --- taking one -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledBackup:
    name: str
    rows: int
    files: int
    size: int
    removed: list[str]
    where: str


def take_backup(
    engine: Any, metadata: MetaData, settings: Any, keys: Any, files: Any, *, vault: Vault | None = None,
    keep: int | None = None, now: dt.datetime | None = None,
) -> ScheduledBackup:
    """Write a backup, seal it, store it, then drop all but the newest ``keep``. A backup that fails
    stores nothing and removes nothing (BackupError says what went wrong)."""
    vault = vault or vault_for(settings, files)
    keep = settings.backup_keep if keep is None else keep
    name = backup_name(now or dt.datetime.now(dt.UTC))
    settings.instance_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=settings.instance_path, prefix=".backup-") as scratch:
        archive = Path(scratch) / "backup.tar.gz"
        summary = create_backup(engine, metadata, settings.instance_path, archive,
                                revision=_head_revision(), files=files)
        sealed = keys.seal(archive.read_bytes(), f"{SEAL_PURPOSE}:{name}")
    try:
        vault.put(name, sealed)
    except Exception as exc:
        raise BackupError(f"the backup could not be stored in {vault.describe()} ({type(exc).__name__}: {exc}); "
                          "nothing was stored") from exc
    removed = prune(vault, keep)
    log.info("scheduled backup %s stored in %s (%d bytes); removed %d older", name, vault.describe(),
             len(sealed), len(removed))
    return ScheduledBackup(name, sum(summary.tables.values()), summary.files, len(sealed), removed,
                           vault.describe())


def _head_revision() -> str | None:
    from tre.core.doctor import head_of  # doctor reports on backups: imported here, not at the top

    return head_of(migrate.MIGRATIONS)


def prune(vault: Vault, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` backups; returns the names removed."""
    backups = vault.list()
    old = backups[: max(len(backups) - max(keep, 1), 0)]
    for b in old:
        vault.delete(b.name)
    return [b.name for b in old]


def last_backup_age(settings: Any, now: dt.datetime | None = None) -> str:
    """For ``tre doctor``: the age of the newest stored backup; raises when a schedule is on and
    the newest is missing or older than two intervals."""
    if not settings.backup_every_hours:
        newest = _newest(settings)
        if newest is None:
            return "scheduled backups are off (set TRE_BACKUP_EVERY_HOURS to turn them on)"
        return f"scheduled backups are off; the newest stored is {_age(newest, now)} old ({newest.name})"
    newest = _newest(settings)
    vault = vault_for(settings)
    if newest is None:
        raise RuntimeError(f"no backup in {vault.describe()} yet, though TRE_BACKUP_EVERY_HOURS is "
                           f"{settings.backup_every_hours}: is a worker with the scheduler (tre beat) running?")
    age = (now or dt.datetime.now(dt.UTC)) - newest.taken_at
    if age > dt.timedelta(hours=2 * settings.backup_every_hours):
        raise RuntimeError(f"the newest backup is {_age(newest, now)} old ({newest.name}), more than twice "
                           f"TRE_BACKUP_EVERY_HOURS ({settings.backup_every_hours}): check the worker's log")
    return f"newest backup {_age(newest, now)} old, in {vault.describe()}"


def _newest(settings: Any) -> StoredBackup | None:
    backups = vault_for(settings).list()
    return backups[-1] if backups else None


def _age(b: StoredBackup, now: dt.datetime | None) -> str:
    seconds = int(((now or dt.datetime.now(dt.UTC)) - b.taken_at).total_seconds())
    hours, rest = divmod(max(seconds, 0), 3600)
    return f"{hours} h {rest // 60} min"


# --- the drill ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrillReport:
    name: str
    ok: bool
    tables: int
    rows: int
    audit_events: int
    problems: list[str]
    seconds: float


def drill(settings: Any, keys: Any, metadata: MetaData, *, vault: Vault | None = None,
          name: str | None = None) -> DrillReport:
    """Restore the newest (or the named) stored backup into a scratch instance and check it."""
    vault = vault or vault_for(settings)
    if name is None:
        backups = vault.list()
        if not backups:
            raise BackupError(f"no stored backup in {vault.describe()} to drill")
        name = backups[-1].name
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tre-drill-") as scratch_dir:
        scratch = Path(scratch_dir)
        archive = scratch / "backup.tar.gz"
        try:
            archive.write_bytes(keys.unseal(vault.get(name), f"{SEAL_PURPOSE}:{name}"))
        except Exception as exc:
            raise BackupError(f"backup {name} cannot be opened with this deployment's key "
                              f"({type(exc).__name__})") from None
        manifest = read_manifest(archive)
        url = f"sqlite:///{scratch / 'drill.sqlite'}"
        engine = make_engine(url)
        try:
            metadata.create_all(engine)
            restore_backup(archive, engine, metadata, scratch / "instance")
            problems = []
            with Session(engine) as s:
                counts = {t.name: s.execute(select(func.count()).select_from(t)).scalar_one()
                          for t in metadata.sorted_tables}
                for table, expected in sorted(manifest["tables"].items()):
                    if counts.get(table) != expected:
                        problems.append(f"table {table}: {counts.get(table)} rows restored, {expected} backed up")
                chain_file = scratch / "instance" / "audit-chain.key"
                if not chain_file.exists():
                    problems.append("the backup carries no audit chain key")
                    checked = 0
                else:
                    chain_key = keys.unwrap_key(chain_file.read_bytes(), CHAIN_KEY_PURPOSE)
                    report = verify_chain(chain_key, iter_events(s))
                    checked = report.checked
                    if not report.ok:
                        problems.append(f"audit chain broken at event {report.first_broken_seq}: {report.problem}")
        finally:
            engine.dispose()
            shutil.rmtree(scratch / "instance", ignore_errors=True)
    return DrillReport(name, not problems, len(manifest["tables"]), sum(manifest["tables"].values()), checked,
                       problems, time.monotonic() - started)


# --- the periodic job -----------------------------------------------------------------------------------


@job_handler(BACKUP_JOB)
def _scheduled_backup_job(ctx: JobContext) -> dict[str, Any]:
    from flask import current_app  # the worker runs jobs inside the app (tre.core.queue)

    from tre.core.db import Base

    p = current_app.extensions["tre.platform"]
    ctx.session.rollback()  # hold no transaction while the backup reads (SQLite's lock)
    result = take_backup(p.db.engine, Base.metadata, p.settings, p.keys, p.files)
    return {"name": result.name, "rows": result.rows, "files": result.files, "size": result.size,
            "removed": result.removed}


def schedule(settings: Any) -> bool:
    """Turn the periodic backup on when the settings ask for it (the worker and the scheduler call
    this when they start); True if it is on."""
    if not settings.backup_every_hours:
        return False
    periodic(BACKUP_JOB, int(settings.backup_every_hours * 3600))
    return True

