"""Tables of the extract service: wrapped keys, extract runs, and governed re-identification."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from pseudonymisation.reidentification_rules import STATES
from tre.core.db import Base, new_id, utcnow

EXTRACT_STATES = ("queued", "running", "succeeded", "failed")
REID_STATES = STATES  # pseudonymisation/reidentification_rules.py


class WrappedKey(Base):
    """A random key stored only wrapped by the key provider. Deleting the wrapped bytes destroys it
    for good (crypto-shredding): no master key can derive it again."""

    __tablename__ = "wrapped_keys"
    __table_args__ = (
        CheckConstraint("(wrapped IS NULL) = (destroyed_at IS NOT NULL)", name="destroyed_means_gone"),
    )

    name: Mapped[str] = mapped_column(String(100), primary_key=True)  # "linkage" or "project:<id>"
    key_id: Mapped[str] = mapped_column(String(40))  # a fingerprint, safe to show and record
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    destroyed_at: Mapped[dt.datetime | None]


class Extract(Base):
    __tablename__ = "extracts"
    __table_args__ = (
        CheckConstraint(f"state IN {EXTRACT_STATES!r}", name="state_known"),
        CheckConstraint("(state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)", name="finished_when_final"),
        Index("ix_extracts_project", "project_id", "requested_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    plan_hash: Mapped[str] = mapped_column(String(64))  # approved columns + schemas + sources
    job_id: Mapped[str | None] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(20), default="queued")
    requested_by: Mapped[str | None] = mapped_column(String(32))
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    manifest: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text)


class ReidentificationRequest(Base):
    __tablename__ = "reidentification_requests"
    __table_args__ = (CheckConstraint(f"state IN {REID_STATES!r}", name="state_known"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    requested_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    purpose: Mapped[str] = mapped_column(Text)
    tokens: Mapped[list[Any]] = mapped_column(default=list)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    fulfilled_at: Mapped[dt.datetime | None]


class ReidentificationApproval(Base):
    __tablename__ = "reidentification_approvals"
    __table_args__ = (
        UniqueConstraint("request_id", "approver_id"),
        CheckConstraint("decision IN ('approve', 'reject')", name="decision_known"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("reidentification_requests.id", ondelete="CASCADE"))
    approver_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(10))
    rationale: Mapped[str] = mapped_column(Text)
    decided_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class OptOutListVersion(Base):
    """One loaded version of a named opt-out list; the highest version of a name is the one in force.

    The NHS numbers are never in the database: they are in the encrypted file store, in a file that
    begins with a random salt, so ``file_sha256`` (the store's name for it) is no hash of the numbers
    alone, and ``fingerprint`` (what manifests show) is an HMAC keyed by that salt.
    """

    __tablename__ = "optout_list_versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("number_count >= 1", name="not_empty"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int]
    # None: the list applies to every source (a national opt-out); else to this one dataset only.
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    description: Mapped[str] = mapped_column(Text, default="")
    file_sha256: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    number_count: Mapped[int]
    duplicates: Mapped[int] = mapped_column(default=0)
    loaded_by: Mapped[str | None] = mapped_column(String(32))
    loaded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


DELIVERY_STATES = ("received", "checking", "accepted", "quarantined", "failed")
# Where a delivery came from: a file named in the landing folder, a browser upload (already in the
# identifiable zone when the delivery is made), or a table of an administrator's named database.
DELIVERY_ORIGINS = ("landing", "upload", "database")
UPLOAD_STATES = ("open", "finished", "expired", "rejected")


class DatasetDelivery(Base):
    """One refresh of a dataset as the custodian delivered it: checked before anything else, then
    accepted (it becomes a version) or quarantined with the problems found (counts, never values).
    A failed delivery is one the service could not check at all (unreadable, the worker lost)."""

    __tablename__ = "dataset_deliveries"
    __table_args__ = (
        CheckConstraint(f"state IN {DELIVERY_STATES!r}", name="state_known"),
        CheckConstraint(
            "(state IN ('accepted', 'quarantined', 'failed')) = (finished_at IS NOT NULL)", name="finished_when_final"
        ),
        CheckConstraint("(state = 'accepted') = (version IS NOT NULL)", name="version_when_accepted"),
        CheckConstraint(f"origin IN {DELIVERY_ORIGINS!r}", name="origin_known"),
        Index("ix_dataset_deliveries_dataset", "dataset_id", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    state: Mapped[str] = mapped_column(String(20), default="received")
    source_name: Mapped[str] = mapped_column(String(500))  # as named in the landing folder
    origin: Mapped[str] = mapped_column(String(20), default="landing", server_default="landing")
    stored_path: Mapped[str | None] = mapped_column(String(1000))  # its copy in the identifiable zone
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    rows: Mapped[int | None] = mapped_column(BigInteger)
    dialect: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # a CSV dialect the custodian set
    report: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    problems: Mapped[list[Any]] = mapped_column(default=list)
    reason: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int | None]
    job_id: Mapped[str | None] = mapped_column(String(32))
    delivered_by: Mapped[str | None] = mapped_column(String(32))
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]


class DatasetVersion(Base):
    """An accepted delivery: what extracts read. Versions are never changed or removed."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        UniqueConstraint("delivery_id"),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    version: Mapped[int]
    delivery_id: Mapped[str] = mapped_column(ForeignKey("dataset_deliveries.id"))
    source_location: Mapped[str] = mapped_column(String(1000))
    source_sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DatasetDeliveryRules(Base):
    """The thresholds a dataset's custodian set (``delivery_checks.DeliveryRules``); none: defaults."""

    __tablename__ = "dataset_delivery_rules"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    rules: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_by: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DatasetVersionPin(Base):
    """A project held at one version of a dataset; without a row the project follows the latest."""

    __tablename__ = "dataset_version_pins"
    __table_args__ = (CheckConstraint("version >= 1", name="version_positive"),)

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    version: Mapped[int]
    pinned_by: Mapped[str | None] = mapped_column(String(32))
    pinned_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DatasetUpload(Base):
    """A file a custodian is sending from the browser in chunks (``pseudonymisation/uploads.py``).

    Its bytes are assembled only in the identifiable zone; ``offset`` is how many are safely written,
    so a client that lost its connection asks for it and carries on. A finished upload becomes a
    delivery (of ``dataset_id``, or of the dataset ``register`` describes, registered at the finish);
    an upload left idle past ``expires_at`` is expired and its bytes removed."""

    __tablename__ = "dataset_uploads"
    __table_args__ = (
        CheckConstraint(f"state IN {UPLOAD_STATES!r}", name="state_known"),
        CheckConstraint("size > 0 AND upload_offset >= 0 AND upload_offset <= size", name="offset_in_size"),
        CheckConstraint("(state = 'open') = (closed_at IS NULL)", name="closed_when_not_open"),
        CheckConstraint("(state = 'finished') = (delivery_id IS NOT NULL)", name="delivery_when_finished"),
        CheckConstraint("dataset_id IS NOT NULL OR register IS NOT NULL", name="names_its_dataset"),
        Index("ix_dataset_uploads_open", "state", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    register: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # name, title, ... of a new dataset
    created_by: Mapped[str] = mapped_column(String(32))
    file_name: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(BigInteger)
    upload_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    expected_sha256: Mapped[str | None] = mapped_column(String(64))  # the client's, checked at the finish
    sha256: Mapped[str | None] = mapped_column(String(64))
    dialect: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    state: Mapped[str] = mapped_column(String(20), default="open")
    reason: Mapped[str | None] = mapped_column(Text)
    delivery_id: Mapped[str | None] = mapped_column(ForeignKey("dataset_deliveries.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    closed_at: Mapped[dt.datetime | None]
