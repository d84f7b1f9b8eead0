"""Resumable browser uploads of a delivery: a small protocol of our own, shaped like tus.

1. ``create``: the custodian names the dataset (or describes a new one), the file's name and its
   size (and, if the browser computed it, its SHA-256); the answer is the upload's id and the largest
   chunk accepted.
2. ``append``: each chunk is sent with the offset it starts at and its SHA-256. A chunk is taken only
   at the upload's current offset (otherwise the answer is that offset: a client that lost its
   connection asks, then carries on), only if its hash matches and only if it fits the declared size.
3. ``finish``: once every byte has arrived, the file becomes a delivery exactly as one named in the
   landing folder (its check runs as the ``deliveries.check`` job), after registering the dataset
   when the upload described a new one.
4. ``expire_idle`` (a periodic job): an upload left idle past its expiry is closed and its bytes
   removed.

The bytes are written only under ``<identifiable zone>/uploads/<id>/`` (folders 0700, file 0600,
opened without following links), and moved from there to the delivery's place in the same zone:
never into the landing folder, the extracts or a workspace's reach. Only the person who created an
upload may add to it or finish it, and only while they may still manage its dataset; every refusal is
audited. Successful chunks are not audited one by one (a file of gigabytes would write hundreds of
events); its creation, finish and expiry are.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from projects.catalogue import Catalogue
from projects.kernel import NotFound, ProjectError, ProjectsKernel
from projects.models import Dataset
from projects.rules import SENSITIVITY_LEVELS
from pseudonymisation import profiling
from pseudonymisation.dataset_schemas import may_set_schema
from pseudonymisation.deliveries import DEFAULT_MAX_BYTES, Deliveries, parse_dialect
from pseudonymisation.landing import SUFFIXES
from pseudonymisation.models import DatasetDelivery, DatasetUpload
from tre.core.db import transaction, utcnow
from tre.core.permissions import Permission, has_permission

DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
EXPIRE_JOB = "uploads.expire"
_HEX = frozenset("0123456789abcdef")
_REGISTER_FIELDS = ("name", "title", "description", "sensitivity")


class UploadRefused(ProjectError):
    """A refusal the client can act on; ``status`` is the HTTP status the pages answer with."""

    status = 422


class OffsetMismatch(UploadRefused):
    status = 409

    def __init__(self, offset: int) -> None:
        super().__init__(f"The upload is at byte {offset:,}; send the chunk that starts there")
        self.offset = offset


class TooLarge(UploadRefused):
    status = 413


class UploadClosed(UploadRefused):
    status = 410


def check_file_name(name: str) -> str:
    """A plain file name of an accepted kind, or refuse it: no folders, no links, nothing hidden."""
    text = (name or "").strip()
    if (not text or len(text) > 200 or "/" in text or "\\" in text or "\x00" in text or text.startswith(".")
            or any(ord(ch) < 32 for ch in text)):
        raise UploadRefused("Give the file's own name (no folders), such as registry.csv")
    if Path(text).suffix.lower() not in SUFFIXES:
        raise UploadRefused("A delivery must be a .csv, .tsv, .txt or .parquet file")
    return text


def _sha256_hex(value: str | None, what: str) -> str:
    text = (value or "").strip().lower()
    if len(text) != 64 or not set(text) <= _HEX:
        raise UploadRefused(f"Give the {what} as 64 hexadecimal digits of its SHA-256")
    return text


@dataclass
class Uploads(ProjectsKernel):
    identifiable_path: Path | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    expiry: dt.timedelta = field(default_factory=lambda: dt.timedelta(hours=24))
    max_bytes: int = DEFAULT_MAX_BYTES
    deliveries: Deliveries | None = None

    # --- where the bytes live -------------------------------------------------------------------------

    def _zone(self) -> Path:
        if self.identifiable_path is None:
            raise UploadRefused("No identifiable zone is configured")
        top = self.identifiable_path / "uploads"
        for folder in (self.identifiable_path, top):
            folder.mkdir(mode=0o700, exist_ok=True, parents=True)
            folder.chmod(0o700)
        return top

    def part_path(self, upload: DatasetUpload) -> Path:
        return self._zone() / upload.id / upload.file_name

    def _remove_bytes(self, upload: DatasetUpload) -> None:
        if self.identifiable_path is not None:
            shutil.rmtree(self.identifiable_path / "uploads" / upload.id, ignore_errors=True)

    # --- who may ---------------------------------------------------------------------------------------

    def _owned(self, s: Session, actor: Any, upload_id: str, action: str, *, lock: bool) -> DatasetUpload:
        """The actor's own upload, while they may still manage its dataset; anything else refused."""
        self._allow(has_permission(actor, Permission.DATASET_MANAGE), action, actor)
        # Read afresh (populate_existing): another request may have moved the offset since.
        upload = s.get(DatasetUpload, upload_id, with_for_update=lock, populate_existing=True) if upload_id else None
        if upload is None:
            raise NotFound("No such upload")
        self._allow(upload.created_by == getattr(actor, "id", None), action, actor)
        if upload.dataset_id is not None:
            ds = s.get(Dataset, upload.dataset_id)
            self._allow(ds is not None and may_set_schema(actor, ds), action, actor)
        return upload

    def _still_open(self, upload: DatasetUpload) -> None:
        if upload.state == "finished":
            raise UploadRefused("This upload is finished; start a new one to send another file")
        if upload.state != "open" or upload.expires_at <= utcnow():
            raise UploadClosed("This upload has expired or was refused; start it again")

    # --- the protocol -----------------------------------------------------------------------------------

    def create(
        self, actor: Any, *, file_name: str, size: int, dataset_id: str | None = None,
        register: dict[str, str] | None = None, sha256: str | None = None, dialect: dict[str, str] | None = None,
    ) -> DatasetUpload:
        """Start an upload into an existing dataset (its custodian) or of a new one (dataset.manage)."""
        with self._tx() as s:
            if dataset_id:
                ds = s.get(Dataset, dataset_id)
                if ds is None:
                    self._allow(has_permission(actor, Permission.DATASET_MANAGE), "dataset.upload_create", actor)
                    raise NotFound("No such dataset")
                self._allow(may_set_schema(actor, ds), "dataset.upload_create", actor)
                described = None
            else:
                self._allow(has_permission(actor, Permission.DATASET_MANAGE), "dataset.upload_create", actor)
                described = {k: str((register or {}).get(k) or "").strip() for k in _REGISTER_FIELDS}
                described["name"] = described["name"].lower()
                described["sensitivity"] = described["sensitivity"] or "special_category"
                # Checked now as the registration at the finish will check them, so a file of
                # gigabytes is not sent for a description that cannot be registered.
                if not described["title"] or len(described["name"]) > 100 or not described["name"] or not set(
                        described["name"]) <= set("abcdefghijklmnopqrstuvwxyz0123456789_"):
                    raise UploadRefused("Give the new dataset a title and a short name of lower-case letters, "
                                        "digits and underscores")
                if described["sensitivity"] not in SENSITIVITY_LEVELS:
                    raise UploadRefused("Choose a sensitivity level")
                if s.scalar(select(Dataset.id).where(Dataset.name == described["name"])):
                    raise UploadRefused(f"A dataset named {described['name']} is already registered")
            name = check_file_name(file_name)
            if not isinstance(size, int) or size < 1:
                raise UploadRefused("Give the file's size in bytes (it cannot be empty)")
            if size > self.max_bytes:
                raise TooLarge(f"The file is larger than the limit of {self.max_bytes:,} bytes")
            chosen = parse_dialect(dialect)
            upload = DatasetUpload(
                dataset_id=dataset_id or None, register=described, created_by=actor.id, file_name=name, size=size,
                expected_sha256=_sha256_hex(sha256, "file's hash") if sha256 else None,
                dialect=chosen.to_dict() if chosen else None, expires_at=utcnow() + self.expiry,
            )
            s.add(upload)
            s.flush()
            folder = self._zone() / upload.id
            folder.mkdir(mode=0o700)
            os.close(os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            self.audit.record(s, "dataset.upload_create", actor_id=actor.id, target_type="dataset",
                              target_id=dataset_id or None, request_id=self.request_id,
                              detail={"upload": upload.id, "size": size, "new_dataset": described is not None})
        return upload

    def status(self, actor: Any, upload_id: str) -> DatasetUpload:
        """The upload as it stands (its offset is where the next chunk must start)."""
        with self._tx() as s:
            return self._owned(s, actor, upload_id, "dataset.upload_read", lock=False)

    def append(self, actor: Any, upload_id: str, offset: int, chunk: bytes, chunk_sha256: str | None) -> int:
        """Write one chunk at ``offset``; returns the new offset. Refused unless it starts exactly where
        the upload stands, fits the chunk limit and the declared size, and matches its hash."""
        with self._tx() as s:
            upload = self._owned(s, actor, upload_id, "dataset.upload_chunk", lock=True)
            self._still_open(upload)
            if not chunk:
                raise UploadRefused("The chunk is empty")
            if len(chunk) > self.chunk_bytes:
                raise TooLarge(f"A chunk may carry at most {self.chunk_bytes:,} bytes")
            if offset != upload.upload_offset:
                raise OffsetMismatch(upload.upload_offset)
            if offset + len(chunk) > upload.size:
                raise TooLarge("The chunk goes past the size declared for the file")
            given = _sha256_hex(chunk_sha256, "chunk's hash")
            if not hmac.compare_digest(hashlib.sha256(chunk).hexdigest(), given):
                raise UploadRefused("The chunk was damaged on the way (its SHA-256 differs); send it again")
            fd = os.open(self.part_path(upload), os.O_WRONLY | os.O_NOFOLLOW)
            try:
                # Bytes past the offset from a write whose commit was lost are simply written over.
                os.pwrite(fd, chunk, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
            upload.upload_offset = offset + len(chunk)
            upload.expires_at = utcnow() + self.expiry
            return upload.upload_offset

    def finish(self, actor: Any, upload_id: str) -> DatasetDelivery:
        """Every byte has arrived: register the dataset if the upload describes a new one, then make
        the file a delivery (moved, never copied, within the identifiable zone) and queue its check."""
        with self._tx() as s:
            upload = self._owned(s, actor, upload_id, "dataset.upload_finish", lock=True)
            self._still_open(upload)
            if upload.upload_offset != upload.size:
                raise UploadRefused(f"{upload.upload_offset:,} of {upload.size:,} bytes have arrived; send the rest")
            part = self.part_path(upload)
            os.truncate(part, upload.size)
            columns: list[str] = []
            if upload.dataset_id is None:
                try:
                    columns = profiling.source_columns(part)
                except (profiling.ProfilingError, OSError, ValueError) as exc:
                    raise UploadRefused(f"The file cannot be read as {part.suffix[1:]}: {exc}"[:300]) from None
            described = dict(upload.register or {})
        dataset_id = upload.dataset_id
        if dataset_id is None:
            # Registered in its own audited call, as a custodian registering by hand would. Until the
            # custodian confirms the schema every column counts as a direct identifier.
            ds = Catalogue(self.session, self.audit, request_id=self.request_id).register_dataset(
                actor, name=described["name"], title=described["title"], description=described["description"],
                source_kind="parquet" if part.suffix.lower() in (".parquet", ".pq") else "csv",
                source_location=str(part), sensitivity=described["sensitivity"],
                columns=[{"name": c, "role": "direct_identifier"} for c in columns],
            )
            dataset_id = ds.id
        return self._deliver(actor, upload_id, dataset_id)

    def _deliver(self, actor: Any, upload_id: str, dataset_id: str) -> DatasetDelivery:
        deliveries = self.deliveries or Deliveries(self.session, self.audit, request_id=self.request_id,
                                                   identifiable_path=self.identifiable_path)
        with self._tx() as s:
            upload = self._owned(s, actor, upload_id, "dataset.upload_finish", lock=True)
            self._still_open(upload)
            ds = s.get(Dataset, dataset_id)
            assert ds is not None
            delivery = deliveries.new_delivery(s, actor, ds, upload.file_name, "upload", upload.dialect)
            part, target = self.part_path(upload), deliveries.stored_path_for(delivery)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.replace(part, target)
            try:
                delivery.stored_path, delivery.size_bytes = str(target), upload.size
                if upload.register is not None:
                    ds.source_location = str(target)  # registered from the part, which has just moved
                upload.dataset_id, upload.delivery_id = ds.id, delivery.id
                upload.state, upload.closed_at = "finished", utcnow()
                deliveries.queue_check(s, actor, delivery)
                self.audit.record(s, "dataset.upload_finish", actor_id=actor.id, target_type="dataset",
                                  target_id=ds.id, request_id=self.request_id,
                                  detail={"upload": upload.id, "delivery": delivery.id, "size": upload.size})
                s.flush()
            except BaseException:
                os.replace(target, part)
                raise
        self._remove_bytes(upload)
        return delivery

    def expire_idle(self) -> int:
        """Close every open upload idle past its expiry and remove its bytes (audited, one by one)."""
        now = utcnow()
        ids = list(self.session.scalars(select(DatasetUpload.id).where(
            DatasetUpload.state == "open", DatasetUpload.expires_at <= now)))
        self.session.rollback()
        expired = 0
        for upload_id in ids:
            with transaction(self.session) as s:
                upload = s.get(DatasetUpload, upload_id, with_for_update=True, populate_existing=True)
                if upload is None or upload.state != "open" or upload.expires_at > now:
                    continue  # finished or touched since
                upload.state, upload.closed_at, upload.reason = "expired", now, "idle past its expiry"
                self.audit.record(s, "dataset.upload_expire", actor_id=None, target_type="dataset",
                                  target_id=upload.dataset_id, request_id=self.request_id,
                                  detail={"upload": upload.id, "received": upload.upload_offset, "size": upload.size})
            self._remove_bytes(upload)
            expired += 1
        return expired


__all__ = ["EXPIRE_JOB", "OffsetMismatch", "TooLarge", "UploadClosed", "UploadRefused", "Uploads",
           "check_file_name"]
