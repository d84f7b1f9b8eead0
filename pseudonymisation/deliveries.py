"""Deliveries and versions of a dataset: a custodian delivers a refresh, the service checks it against
the declared columns and the custodian's thresholds before anything else, and either accepts it as
the dataset's next version or quarantines it with the problems found (counts, never values).

Who may: the dataset's custodian (``dataset_schemas.may_set_schema``: holds dataset.manage and
registered it). Every change is one transaction with its audit event; every refusal is audited.
The check itself runs as a background job (``deliveries.check``) that a killed worker's successor
finishes: its copy into the identifiable zone is written aside and renamed, and its verdict is
written once, under a lock on the delivery, so a repeat does nothing.

A quarantined or failed delivery never becomes a version, so it never replaces the version in use.
Projects read the latest version, or the one a custodian pinned for them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from projects.kernel import NotFound, ProjectError, ProjectsKernel
from projects.models import Dataset, Project
from pseudonymisation import database_sources as sources
from pseudonymisation import delivery_checks as checks
from pseudonymisation import hash_spill, profiling, sealed, zone
from pseudonymisation.dataset_schemas import may_set_schema
from pseudonymisation.landing import LandingError, check_name, open_in_landing
from pseudonymisation.landing_s3 import S3Landing
from pseudonymisation.models import (
    DatasetDelivery,
    DatasetDeliveryRules,
    DatasetUpload,
    DatasetVersion,
    DatasetVersionPin,
)
from pseudonymisation.profiling import CsvDialect
from pseudonymisation.sealed import SealedFileError
from pseudonymisation.sources import SourceFile
from tre.core import testpoints
from tre.core.audit import FAILURE
from tre.core.db import transaction, utcnow
from tre.core.jobs import enqueue
from tre.core.keys import KeyProvider

CHECK_JOB = "deliveries.check"
FINAL = ("accepted", "quarantined", "failed")
DEFAULT_MAX_BYTES = 50 * 1024**3
SPILL_MAX_AGE_SECONDS = 24 * 3600  # a key check's spill older than this was left by a killed worker
CHECKED_POINT = "deliveries.check.checked"  # tre/core/testpoints.py: checked, verdict not yet written
READING_POINT = "deliveries.check.reading"  # rows being checked (and a CSV being sealed): nothing recorded


def version_in_use(session: Session, project_id: str | None, dataset_id: str) -> DatasetVersion | None:
    """The version a project reads: its pin if it has one, else the latest; None before any."""
    if project_id is not None:
        pin = session.get(DatasetVersionPin, (project_id, dataset_id))
        if pin is not None:
            return session.scalar(select(DatasetVersion).where(
                DatasetVersion.dataset_id == dataset_id, DatasetVersion.version == pin.version))
    return session.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == dataset_id)
                          .order_by(DatasetVersion.version.desc()).limit(1))


def _is_csv(path: Path) -> bool:
    try:
        return profiling.source_format(path) == "csv"
    except profiling.ProfilingError:
        return False  # the checks say what is wrong with it, through the seal


@dataclass
class Deliveries(ProjectsKernel):
    landing_dir: Path | None = None
    identifiable_path: Path | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    # Seals the copies in the identifiable zone (ADR 0033); without it nothing can be stored.
    keys: KeyProvider | None = None
    # The landing area as an S3 prefix instead of a folder (TRE_LANDING_S3_BUCKET); it wins when set.
    landing_s3: S3Landing | None = None
    database_sources: Mapping[str, str] = field(default_factory=dict)

    # --- reading ------------------------------------------------------------------------------------

    def _dataset(self, dataset_id: str) -> Dataset:
        ds = self.session.get(Dataset, dataset_id) if dataset_id else None
        if ds is None:
            raise NotFound("No such dataset")
        return ds

    def _custodian(self, actor: Any, ds: Dataset, action: str) -> None:
        self._allow(may_set_schema(actor, ds), action, actor)

    def list_deliveries(self, actor: Any, dataset_id: str) -> list[DatasetDelivery]:
        with self._tx():
            ds = self._dataset(dataset_id)
            self._custodian(actor, ds, "dataset.delivery_read")
            return list(self.session.scalars(select(DatasetDelivery).where(DatasetDelivery.dataset_id == ds.id)
                                             .order_by(DatasetDelivery.received_at.desc())))

    def get_delivery(self, actor: Any, delivery_id: str) -> DatasetDelivery:
        with self._tx():
            delivery = self.session.get(DatasetDelivery, delivery_id) if delivery_id else None
            if delivery is None:
                raise NotFound("No such delivery")
            self._custodian(actor, self._dataset(delivery.dataset_id), "dataset.delivery_read")
            return delivery

    def versions(self, actor: Any, dataset_id: str) -> list[DatasetVersion]:
        with self._tx():
            ds = self._dataset(dataset_id)
            self._custodian(actor, ds, "dataset.delivery_read")
            return list(self.session.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)
                                             .order_by(DatasetVersion.version.desc())))

    def get_rules(self, actor: Any, dataset_id: str) -> checks.DeliveryRules:
        with self._tx():
            ds = self._dataset(dataset_id)
            self._custodian(actor, ds, "dataset.delivery_read")
            return self.rules(ds.id)

    def rules(self, dataset_id: str) -> checks.DeliveryRules:
        row = self.session.get(DatasetDeliveryRules, dataset_id)
        return checks.DeliveryRules.from_dict(row.rules if row else {})

    # --- changing -----------------------------------------------------------------------------------

    def receive(
        self, actor: Any, dataset_id: str, source_name: str, *, dialect: Mapping[str, str] | None = None
    ) -> DatasetDelivery:
        """Take a file named in the landing folder as a delivery and queue its check. The same name
        delivered again while its check is still waiting is the same delivery."""
        with self._tx() as s:
            ds = self._dataset(dataset_id)
            self._custodian(actor, ds, "dataset.delivery_receive")
            try:
                name = self._landed(source_name)
            except LandingError as exc:
                raise ProjectError(str(exc)) from None
            chosen = parse_dialect(dialect)
            waiting = s.scalar(select(DatasetDelivery).where(
                DatasetDelivery.dataset_id == ds.id, DatasetDelivery.source_name == str(name),
                DatasetDelivery.state.in_(("received", "checking"))))
            if waiting is not None:
                return waiting
            delivery = self.new_delivery(s, actor, ds, str(name), "landing", chosen.to_dict() if chosen else None)
            self.queue_check(s, actor, delivery)
        return delivery

    def receive_table(self, actor: Any, dataset_id: str, source: str, table: str) -> DatasetDelivery:
        """Take a table of an administrator's named database source as a delivery; the job reads it
        in chunks into the identifiable zone, then checks it as any delivered file."""
        with self._tx() as s:
            ds = self._dataset(dataset_id)
            self._custodian(actor, ds, "dataset.delivery_receive")
            try:
                ref = sources.table_ref(self.database_sources, source, table)
                if not sources.table_exists(self.database_sources[ref.source], ref):
                    raise sources.SourceError(f"The database source {ref.source} has no table {table.strip()}")
            except sources.SourceError as exc:
                raise ProjectError(str(exc)) from None
            delivery = self.new_delivery(s, actor, ds, ref.name, "database", None)
            self.queue_check(s, actor, delivery)
        return delivery

    def new_delivery(
        self, s: Session, actor: Any, ds: Dataset, source_name: str, origin: str, dialect: dict[str, str] | None
    ) -> DatasetDelivery:
        """A delivery row in the caller's transaction (the caller has checked who may)."""
        delivery = DatasetDelivery(dataset_id=ds.id, source_name=source_name, origin=origin,
                                   delivered_by=getattr(actor, "id", None), dialect=dialect)
        s.add(delivery)
        s.flush()
        return delivery

    def stored_path_for(self, delivery: DatasetDelivery) -> Path:
        """Where the delivery's copy lives in the identifiable zone."""
        if self.identifiable_path is None:
            raise LandingError("No identifiable zone is configured")
        name = (sources.parse_ref(delivery.source_name).file_name if delivery.origin == "database"
                else PurePosixPath(delivery.source_name).name)
        return self.identifiable_path / "deliveries" / delivery.dataset_id / delivery.id / name

    def scratch_dir(self) -> Path:
        """The zone's private scratch directory (0700), where a check spills its keys' hashes, encrypted
        under a key only the check holds (ADR 0043). A spill left by a worker killed mid-check is
        removed here after a day: it cannot be read without that key, which died with the worker."""
        if self.identifiable_path is None:
            raise LandingError("No identifiable zone is configured")
        scratch = self.identifiable_path / "scratch"
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        if scratch.is_symlink() or not scratch.is_dir():
            raise LandingError("The identifiable zone's scratch directory is not a plain directory")
        if scratch.stat().st_mode & 0o077:
            scratch.chmod(0o700)  # made wider by hand: only the workers' user may list it
        stale = time.time() - SPILL_MAX_AGE_SECONDS
        for left in scratch.glob(f"{hash_spill.PREFIX}*"):
            try:
                if left.is_dir() and not left.is_symlink() and left.stat().st_mtime < stale:
                    shutil.rmtree(left, ignore_errors=True)
            except OSError:
                continue
        return scratch

    def queue_check(self, s: Session, actor: Any, delivery: DatasetDelivery) -> None:
        """Queue the delivery's check (sent when the caller's transaction commits) and audit it."""
        job = enqueue(s, CHECK_JOB, {"delivery_id": delivery.id}, idempotency_key=f"{CHECK_JOB}:{delivery.id}")
        delivery.job_id = job.id
        self.audit.record(s, "dataset.delivery_receive", actor_id=getattr(actor, "id", None),
                          target_type="dataset", target_id=delivery.dataset_id, request_id=self.request_id,
                          detail={"delivery": delivery.id, "origin": delivery.origin})

    def set_rules(self, actor: Any, dataset_id: str, rules: Mapping[str, Any]) -> checks.DeliveryRules:
        """Set the thresholds that fail a delivery of this dataset (all of them at once)."""
        with self._tx() as s:
            ds = self._dataset(dataset_id)
            self._custodian(actor, ds, "dataset.delivery_rules")
            try:
                parsed = checks.DeliveryRules.from_dict(rules)
            except checks.DeliveryCheckError as exc:
                raise ProjectError(str(exc)) from None
            unknown = sorted(parsed.named_columns() - set(ds.column_names))
            if unknown:
                raise ProjectError(f"The rules name columns the dataset does not have: {', '.join(unknown)}")
            row = s.get(DatasetDeliveryRules, ds.id)
            if row is None:
                row = DatasetDeliveryRules(dataset_id=ds.id)
                s.add(row)
            row.rules = parsed.to_dict()
            row.updated_by = getattr(actor, "id", None)
            row.updated_at = utcnow()
            self.audit.record(s, "dataset.delivery_rules", actor_id=getattr(actor, "id", None), target_type="dataset",
                              target_id=ds.id, request_id=self.request_id, detail={"rules": sorted(rules)})
        return parsed

    def pin(self, actor: Any, project_id: str, dataset_id: str, version: int | None) -> DatasetVersion | None:
        """Hold a project at one version of the dataset, or (``None``) let it follow the latest."""
        with self._tx() as s:
            ds = self._dataset(dataset_id)
            project = s.get(Project, project_id) if project_id else None
            self._allow(may_set_schema(actor, ds), "dataset.version_pin", actor, project)
            if project is None:
                raise NotFound("No such project")
            row = s.get(DatasetVersionPin, (project.id, ds.id))
            if version is None:
                if row is not None:
                    s.delete(row)
            else:
                found = s.scalar(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id,
                                                              DatasetVersion.version == version))
                if found is None:
                    raise ProjectError(f"The dataset has no version {version}")
                if row is None:
                    row = DatasetVersionPin(project_id=project.id, dataset_id=ds.id, version=version)
                    s.add(row)
                row.version, row.pinned_by, row.pinned_at = version, getattr(actor, "id", None), utcnow()
            self._record(s, "dataset.version_pin", actor, project, dataset=ds.name, version=version)
            s.flush()
            return version_in_use(s, project.id, ds.id)

    # --- the check (the background job) ---------------------------------------------------------------

    def check(self, delivery_id: str, progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
        """Copy the delivery into the identifiable zone, check it, and accept or quarantine it. Safe to
        repeat: a delivery already decided is returned as it is."""
        delivery = self.session.get(DatasetDelivery, delivery_id)
        if delivery is None:
            raise NotFound("No such delivery")
        if delivery.state in FINAL:
            return _verdict(delivery)
        with transaction(self.session):
            delivery.state = "checking"
        ds = self._dataset(delivery.dataset_id)
        rules = self._effective_rules(ds)
        previous = version_in_use(self.session, None, ds.id)
        previous_report = self._report_of(previous)
        expected = [checks.ExpectedColumn(c.name, c.data_type) for c in ds.columns]
        dialect = CsvDialect(**delivery.dialect) if delivery.dialect else None
        references = self._reference_keys(rules)
        scratch = self.scratch_dir() if self.identifiable_path is not None else None
        expected_rows = previous.rows if previous is not None else None
        # End the read before the long check: on SQLite an open transaction holds the write lock
        # the job's progress reports need.
        self.session.commit()

        def counted(rows: int) -> None:
            # A CSV's length is known only at its end: the version in use is the best guess of it.
            if progress is not None:
                fraction = min(rows / expected_rows, 0.99) if expected_rows else 0.0
                progress(fraction, f"{rows:,} rows checked")
            testpoints.reach(READING_POINT)

        def run_check(source: SourceFile) -> checks.DeliveryReport | Exception:
            try:
                return checks.check_delivery(source, expected, rules, previous=previous_report,
                                             today=utcnow().date(), dialect=dialect, reference_keys=references,
                                             progress=counted, scratch_dir=scratch)
            except sealed.ReadOnceError:
                raise  # not the delivery's fault: _store seals it and it is checked through the seal
            except (checks.DeliveryCheckError, SealedFileError) as exc:
                return exc

        try:
            # A CSV is checked as it is sealed, in one read of the landing file (ADR 0034); what was
            # stored by an earlier attempt, and Parquet (read by seeking), through the seal.
            stored, sha, size, outcome = self._store(delivery, check=run_check)
        except (LandingError, SealedFileError) as exc:
            return self._finish(delivery, ds, None, failure=str(exc))
        if outcome is None:
            outcome = run_check(self._source(stored))
        if isinstance(outcome, Exception):
            return self._finish(delivery, ds, None, failure=str(outcome), stored=(stored, sha, size))
        testpoints.reach(CHECKED_POINT)
        return self._finish(delivery, ds, outcome, stored=(stored, sha, size))

    def _landed(self, source_name: str) -> PurePosixPath:
        """The name of a file that is there to take, in the landing bucket or folder."""
        if self.landing_s3 is not None:
            return self.landing_s3.check(source_name)
        fd, name = open_in_landing(self.landing_dir, source_name)
        os.close(fd)
        return name

    def _source(self, path: Path | str) -> SourceFile:
        """A file of the zone as its readers see it: its plaintext, through its seal."""
        if self.keys is None:
            raise LandingError("No key provider is configured to open the identifiable zone's copies")
        return zone.source(path, self.keys)

    def _store(
        self, delivery: DatasetDelivery, check: Callable[[SourceFile], Any] | None = None
    ) -> tuple[Path, str, int, Any]:
        """The delivery's copy in the identifiable zone, sealed, made once: a repeat finds it by name.
        A CSV copied from the landing folder, the landing bucket or an upload is handed to ``check``
        as it is sealed (one read), and what ``check`` returned comes back; otherwise None."""
        target = self.stored_path_for(delivery)
        if self.keys is None:
            raise LandingError("No key provider is configured to seal the identifiable zone's copies")
        if delivery.stored_path and Path(delivery.stored_path).is_file() and delivery.source_sha256:
            return Path(delivery.stored_path), delivery.source_sha256, int(delivery.size_bytes or 0), None
        assert self.identifiable_path is not None
        self.identifiable_path.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = self.keys
        one_pass = check if check is not None and _is_csv(target) else None

        def seal(opened: int | BinaryIO) -> tuple[str, int, Any]:
            if one_pass is None:
                return (*zone.seal_into_zone(opened, target, keys, max_bytes=self.max_bytes), None)
            return zone.seal_into_zone_reading(opened, target, keys, max_bytes=self.max_bytes, read=one_pass)

        outcome = None
        if delivery.origin == "database":
            # Read into a plain Parquet file beside the copy, sealed at once and removed.
            plain = target.with_name(target.name + ".read")
            try:
                self.read_database(delivery, plain)
                sha, size = zone.seal_into_zone(os.open(plain, os.O_RDONLY | os.O_NOFOLLOW), target, keys,
                                                max_bytes=self.max_bytes)
            finally:
                plain.unlink(missing_ok=True)
        elif delivery.origin == "upload":
            # An upload is moved into the zone before its delivery exists: sealed and hashed here, in
            # the job, not in the browser's request, and held to the hash the browser declared, if any.
            if not (delivery.stored_path and Path(delivery.stored_path).is_file()):
                raise LandingError("The uploaded file is no longer in the identifiable zone; upload it again")
            landed = Path(delivery.stored_path)
            if sealed.is_sealed(landed):  # sealed by an attempt stopped before it could record it
                target = landed
                sha, size = zone.plaintext_sha256(self._source(landed))
            else:
                try:
                    sha, size, outcome = seal(os.open(landed, os.O_RDONLY | os.O_NOFOLLOW))
                except sealed.ReadOnceError:
                    one_pass = None
                    sha, size, outcome = seal(os.open(landed, os.O_RDONLY | os.O_NOFOLLOW))
                if landed != target:
                    landed.unlink(missing_ok=True)
            declared = self.session.scalar(select(DatasetUpload.expected_sha256).where(
                DatasetUpload.delivery_id == delivery.id))
            if declared and declared != sha:
                raise LandingError("The file that arrived is not the one the browser sent (its SHA-256 differs); "
                                   "upload it again")
        else:
            check_name(delivery.source_name)

            def opened() -> int | BinaryIO:
                return (self.landing_s3.open(delivery.source_name) if self.landing_s3 is not None
                        else open_in_landing(self.landing_dir, delivery.source_name)[0])

            try:
                sha, size, outcome = seal(opened())
            except sealed.ReadOnceError:
                one_pass = None
                sha, size, outcome = seal(opened())
        with transaction(self.session):
            delivery.stored_path, delivery.source_sha256, delivery.size_bytes = str(target), sha, size
        return target, sha, size, outcome

    def read_database(self, delivery: DatasetDelivery, target: Path) -> tuple[str, int]:
        """The delivery's table, read from its named source into ``target`` in chunks."""
        ref = sources.parse_ref(delivery.source_name)
        url = self.database_sources.get(ref.source)
        if url is None:
            raise LandingError(f"The database source {ref.source} is no longer configured")
        return sources.read_table(url, ref, target, max_bytes=self.max_bytes)

    def _effective_rules(self, ds: Dataset) -> checks.DeliveryRules:
        """The custodian's rules; the NHS number column and code patterns default to the schema's."""
        rules = self.rules(ds.id).to_dict()
        spec = ds.schema_spec or {}
        if not rules.get("nhs_number_column") and spec.get("nhs_number_column"):
            rules["nhs_number_column"] = spec["nhs_number_column"]
        patterns = {c["name"]: c["valid_pattern"] for c in spec.get("columns", []) if c.get("valid_pattern")}
        rules["code_patterns"] = {**patterns, **rules.get("code_patterns", {})}
        return checks.DeliveryRules.from_dict(rules)

    def _report_of(self, version: DatasetVersion | None) -> dict[str, Any] | None:
        if version is None:
            return None
        delivery = self.session.get(DatasetDelivery, version.delivery_id)
        return delivery.report if delivery is not None else None

    def _reference_keys(self, rules: checks.DeliveryRules) -> dict[str, Callable[[], Any]]:
        """For each table a referential rule names: its version in use, read when first asked."""
        found: dict[str, Callable[[], Any]] = {}
        for ref in rules.referential:
            other = self.session.scalar(select(Dataset).where(Dataset.name == ref["table"]))
            version = version_in_use(self.session, None, other.id) if other is not None else None
            if version is not None:
                found[ref["table"]] = (lambda loc=version.source_location, col=ref["table_column"]:
                                       checks.key_hash_chunks(self._source(loc), col))
        return found

    def _finish(
        self, delivery: DatasetDelivery, ds: Dataset, report: checks.DeliveryReport | None, *,
        failure: str | None = None, stored: tuple[Path, str, int] | None = None,
    ) -> dict[str, Any]:
        with transaction(self.session) as s:
            s.refresh(delivery, with_for_update=True)
            if delivery.state in FINAL:
                return _verdict(delivery)  # a twin of this job got here first
            s.refresh(ds, with_for_update=True)  # versions of one dataset are numbered one at a time
            latest = s.scalar(select(func.max(DatasetVersion.version)).where(DatasetVersion.dataset_id == ds.id)) or 0
            delivery.finished_at = utcnow()
            if report is None:
                delivery.state = "quarantined" if stored is not None else "failed"
                delivery.problems = [{"check": "unreadable", "column": None, "count": None, "fraction": None,
                                      "limit": None, "message": failure}]
                delivery.reason = (failure or "")[:2000]
            else:
                delivery.report = report.to_dict()
                delivery.rows = report.rows
                delivery.problems = list(report.problems)
                if report.passed and stored is not None:
                    version = DatasetVersion(dataset_id=ds.id, version=latest + 1, delivery_id=delivery.id,
                                             source_location=str(stored[0]), source_sha256=stored[1],
                                             rows=int(report.rows or 0))
                    s.add(version)
                    delivery.state, delivery.version = "accepted", version.version
                    ds.row_count = version.rows
                else:
                    delivery.state = "quarantined"
                    delivery.reason = "; ".join(p["message"] for p in report.problems)[:2000]
            s.flush()
            self.audit.record(
                s, "dataset.delivery_check", actor_id=None,
                outcome=FAILURE if delivery.state != "accepted" else "success",
                target_type="dataset", target_id=ds.id, request_id=self.request_id,
                detail={"delivery": delivery.id, "state": delivery.state, "version": delivery.version,
                        "problems": sorted({p["check"] for p in delivery.problems})},
            )
            return _verdict(delivery)

    def fail(self, delivery_id: str, reason: str) -> None:
        """The job gave up (its last attempt's worker was lost): the delivery is marked failed."""
        with transaction(self.session) as s:
            delivery = s.get(DatasetDelivery, delivery_id, with_for_update=True)
            if delivery is None or delivery.state in FINAL:
                return
            delivery.state, delivery.finished_at, delivery.reason = "failed", utcnow(), reason[:2000]
            self.audit.record(s, "dataset.delivery_check", actor_id=None, outcome=FAILURE, target_type="dataset",
                              target_id=delivery.dataset_id, request_id=self.request_id,
                              detail={"delivery": delivery.id, "state": "failed"})


def _verdict(delivery: DatasetDelivery) -> dict[str, Any]:
    return {"delivery": delivery.id, "state": delivery.state, "version": delivery.version,
            "problems": len(delivery.problems or [])}


def parse_dialect(given: Mapping[str, str] | None) -> CsvDialect | None:
    """A CSV dialect the custodian set instead of the sniffed one; checked before it is kept."""
    if not given:
        return None
    delimiter, quote = str(given.get("delimiter", ",")), str(given.get("quote_char", '"'))
    encoding = str(given.get("encoding", "utf-8"))
    if len(delimiter) != 1 or len(quote) != 1 or delimiter in "\r\n" or quote in "\r\n":
        raise ProjectError("The delimiter and quote character must each be one character")
    try:
        "".encode(encoding)
    except LookupError:
        raise ProjectError("Unknown text encoding") from None
    return CsvDialect(delimiter=delimiter, encoding=encoding, quote_char=quote)


__all__ = ["CHECK_JOB", "CHECKED_POINT", "READING_POINT", "Deliveries", "parse_dialect", "version_in_use"]
