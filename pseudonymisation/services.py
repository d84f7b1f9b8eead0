"""The extract service: keys behind the key provider, extracts as restartable background jobs, the
closure hook that shreds a project's key, and governed re-identification.

Keys: the linkage key (one per deployment) and each project's key are random, stored only wrapped
by the key provider (``WrappedKey``). The pipeline gets the unwrapped bytes for the length of one
job and never writes them anywhere; manifests and audit events carry only key fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from projects.models import Dataset, Project
from projects.rules import ACTIVE
from projects.services import approved_columns
from pseudonymisation import reidentification_rules as reid
from pseudonymisation import tokens, zone
from pseudonymisation.deliveries import version_in_use
from pseudonymisation.extract_options import (
    DEFAULT_CHUNK_ROWS,
    ExtractError,
    ExtractKeys,
    ExtractOptions,
    PersonLinks,
)
from pseudonymisation.linkage import Record
from pseudonymisation.models import (
    DatasetDelivery,
    Extract,
    ReidentificationApproval,
    ReidentificationRequest,
    WrappedKey,
)
from pseudonymisation.optout_lists import OptOutError, OptOutLists, OptOutPlan
from pseudonymisation.partitions import Partition, finish_extract, plan_partitions, prepare_partitioned, run_partition
from pseudonymisation.person_index import PersonIndex, extract_linkage_summary
from pseudonymisation.person_index_models import LinkageRun
from pseudonymisation.pipeline import Progress, run_linked_extract
from pseudonymisation.schema import DatasetSchema
from tre.core.audit import DENIED, FAILURE, AuditLog
from tre.core.db import transaction, utcnow
from tre.core.identity import User
from tre.core.jobs import SUCCEEDED, Job, PermanentJobError, enqueue
from tre.core.keys import KeyProvider
from tre.core.permissions import Permission, has_permission

BUILD_JOB = "extracts.build"
PARTITION_JOB = "extracts.partition"
MERGE_JOB = "extracts.merge"
LINKAGE = "linkage"
REQUIRED_APPROVALS = reid.REQUIRED_APPROVALS
MAX_REID_TOKENS = 100


class ExtractServiceError(Exception):
    """A request the extract service refuses; the message is safe to show."""


def _project_key_name(project_id: str) -> str:
    return f"project:{project_id}"


def _key(session: Session, keys: KeyProvider, name: str, *, create: bool) -> bytes:
    """Unwrap a named key, creating it (random, stored wrapped) the first time when allowed."""
    row = session.get(WrappedKey, name)
    if row is None:
        if not create:
            raise ExtractServiceError("No key exists for this project")
        key = tokens.generate_key()
        session.add(WrappedKey(name=name, key_id=tokens.key_fingerprint(key), wrapped=keys.wrap_key(key, name)))
        session.flush()
        return key
    if row.wrapped is None:
        raise ExtractServiceError("This project's key was destroyed at closure; its tokens can no longer be linked")
    return keys.unwrap_key(row.wrapped, name)


def _reidentified(
    found: tokens.Reidentified, person: tuple[LinkageRun | None, list[Record]] | None
) -> dict[str, Any]:
    """One token's answer: its NHS number when it had one, else its person's records in the index
    (``person_records`` empty when the token is nobody's here)."""
    out: dict[str, Any] = {"token": found.token, "nhs_number": found.nhs_number,
                           "check_digit_valid": found.check_digit_valid}
    if person is not None:
        run, records = person
        out["person_index_run"] = run.id if run is not None else None
        out["person_records"] = [
            {"dataset": r.source, "record_id": r.record_id, "nhs_number": r.nhs_number, "first_name": r.first_name,
             "surname": r.surname, "date_of_birth": None if r.date_of_birth is None else str(r.date_of_birth),
             "sex": r.sex, "postcode": r.postcode}
            for r in records
        ]
    return out


def _linkage_columns(dataset: Dataset) -> dict[str, str] | None:
    columns = (dataset.schema_spec or {}).get("linkage_columns")
    return dict(columns) if columns else None


def _claim_folder(out: Path, extract_id: str) -> None:
    """A project's folder holds one extract: what an earlier extract left there is removed before a
    new one is built, while a resumed run of the same extract keeps the chunks it has done."""
    marker = out / ".extract-id"
    if out.exists() and (not marker.is_file() or marker.read_text() != extract_id):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(extract_id)


def _remove_folder_of(out: Path, extract_id: str) -> None:
    """What a failed extract wrote goes: it will never be finished (a new request starts afresh),
    and a refused one may hold parts of a column it was refused for (ADR 0068)."""
    marker = out / ".extract-id"
    if marker.is_file() and marker.read_text() == extract_id:
        shutil.rmtree(out, ignore_errors=True)


def _dialect_options(version: dict[str, Any] | None) -> dict[str, str]:
    """The CSV dialect a version was checked with, as extract options (none for Parquet)."""
    dialect = (version or {}).get("dialect")
    if not dialect:
        return {}
    return {"csv_delimiter": dialect["delimiter"], "csv_quote_char": dialect["quote_char"],
            "csv_encoding": dialect["encoding"]}


STAGING = ".staging"  # beside the project folders, never inside one: workspaces mount a project's folder


@dataclass
class _Inputs:
    """What one extract is built from: its plan, opt-outs, one ``ExtractOptions`` per dataset (built
    once here, the same for the single job, every partition and the merge) and its folder."""

    plan: list[tuple[Dataset, list[str]]]
    optouts: OptOutPlan
    versions: dict[str, dict[str, Any] | None]
    datasets: list[ExtractOptions]
    out: Path


def _reporter(progress: Any) -> Any:
    def report(p: Progress) -> None:
        if progress is not None:
            fraction = (p.rows_read / p.total_rows) if p.total_rows else 0.0
            progress(min(fraction, 0.99), f"{p.dataset}: {p.rows_read:,} rows read")

    return report


@dataclass
class Extracts:
    session: Session
    audit: AuditLog
    keys: KeyProvider
    extracts_root: Path
    request_id: str | None = None
    files: Any = None  # the file store, where opt-out lists are kept encrypted
    # Rows per chunk, and per partition: a longer source is fanned out (0: never).
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    partition_rows: int = 0

    # --- requesting and building --------------------------------------------------------------------

    def plan(self, project_id: str) -> list[tuple[Dataset, list[str]]]:
        columns = approved_columns(self.session, project_id)
        if not columns:
            raise ExtractServiceError("The project has no approved datasets and columns")
        plan = []
        for name, cols in sorted(columns.items()):
            dataset = self.session.scalar(select(Dataset).where(Dataset.name == name))
            if dataset is None:
                raise ExtractServiceError(f"The approved dataset {name} is no longer in the catalogue")
            if not dataset.schema_spec:
                raise ExtractServiceError(f"The dataset {name} has no extract schema; a custodian must add one")
            problem = DatasetSchema.problem_of(dataset.schema_spec)
            if problem is not None:  # confirmed before a rule it breaks was added (ADR 0068)
                raise ExtractServiceError(
                    f"The extract schema of the dataset {name} must be corrected by its custodian: {problem}"
                )
            plan.append((dataset, sorted(cols)))
        return plan

    def versions(self, project_id: str, plan: list[tuple[Dataset, list[str]]]) -> dict[str, dict[str, Any] | None]:
        """The dataset version each dataset of the plan is read from (the project's pin, else the
        latest); None for a dataset that has had no delivery (its registered source is read)."""
        found: dict[str, dict[str, Any] | None] = {}
        for dataset, _ in plan:
            v = version_in_use(self.session, project_id, dataset.id)
            delivery = self.session.get(DatasetDelivery, v.delivery_id) if v is not None else None
            dialect = ((delivery.report or {}).get("source") or {}).get("dialect") if delivery else None
            found[dataset.name] = None if v is None else {
                "version": v.version, "id": v.id, "source_sha256": v.source_sha256, "rows": v.rows,
                "source_location": v.source_location, "dialect": dialect,
            }
        return found

    def _plan_hash(
        self, plan: list[tuple[Dataset, list[str]]], optouts: OptOutPlan | None = None,
        versions: dict[str, dict[str, Any] | None] | None = None,
    ) -> str:
        body: list[Any] = [[d.name, d.source_location, d.schema_spec, cols] for d, cols in plan]
        if versions and any(versions.values()):
            body.append(["versions", {n: v and [v["id"], v["source_sha256"]] for n, v in sorted(versions.items())}])
        if optouts is not None and optouts.by_dataset and any(optouts.by_dataset.values()):
            body.append(["optouts", optouts.state()])  # a new list version or exemption is a new extract
        index = self._person_index_run(plan)
        if index is not None:
            body.append(["person_index", index.id])  # a new index is a new extract
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    def _person_index_run(self, plan: list[tuple[Dataset, list[str]]]) -> LinkageRun | None:
        """The person index in force, when a dataset of the plan is linked through it."""
        if not any(_linkage_columns(d) for d, _ in plan):
            return None
        return PersonIndex(self.session, self.audit, self.keys, self.request_id).current_run()

    def _person_links(self, dataset: Dataset, run: LinkageRun | None) -> PersonLinks | None:
        columns = _linkage_columns(dataset)
        if run is None or not columns:
            return None
        records = PersonIndex(self.session, self.audit, self.keys, self.request_id).entries(run.id, dataset.name)
        return PersonLinks(columns["record_id"], run.id, records)

    def _optouts(self, project_id: str, plan: list[tuple[Dataset, list[str]]]) -> OptOutPlan:
        """The opt-out list versions in force for each dataset of the plan, and the project's exemptions."""
        datasets = [(d, DatasetSchema.from_dict(d.schema_spec).nhs_number_column is not None) for d, _ in plan]
        return OptOutLists(self.session, self.audit, self.files).plan(project_id, datasets)

    def request(self, actor: User, project_id: str) -> Extract:
        """A custodian asks for a project's extract; the same approved plan asked twice is one job."""
        if not has_permission(actor, Permission.EXTRACT_MANAGE):
            self._deny(actor, project_id, "missing permission")
            raise ExtractServiceError("You do not have permission to build extracts")
        project = self.session.get(Project, project_id)
        if project is None:
            raise ExtractServiceError("No such project")
        today = utcnow().date()
        if project.state != ACTIVE or (project.end_date and project.end_date < today) or (
            project.start_date and project.start_date > today
        ):
            self._deny(actor, project_id, f"project is {project.state}")
            raise ExtractServiceError("Only an active project within its dates may have an extract")
        plan = self.plan(project_id)
        plan_hash = self._plan_hash(plan, self._optouts(project_id, plan), self.versions(project_id, plan))
        with transaction(self.session) as s:
            # The same plan asked twice is one extract, but only while it is the project's latest:
            # the folder holds one extract, so going back to an earlier plan (a pinned earlier
            # version) builds it again, byte for byte as before.
            latest = s.scalar(
                select(Extract).where(Extract.project_id == project_id, Extract.state != "failed")
                .order_by(Extract.requested_at.desc()).limit(1)
            )
            if latest is not None and latest.plan_hash == plan_hash:
                return latest
            extract = Extract(project_id=project_id, plan_hash=plan_hash, requested_by=actor.id)
            s.add(extract)
            s.flush()
            job = enqueue(s, BUILD_JOB, {"extract_id": extract.id}, idempotency_key=f"{BUILD_JOB}:{extract.id}")
            extract.job_id = job.id
            self.audit.record(s, "extract.request", actor_id=actor.id, target_type="extract", target_id=extract.id,
                              project_id=project_id, request_id=self.request_id, detail={"plan": plan_hash[:16]})
        return extract

    def build(self, extract_id: str, progress: Any = None) -> dict[str, Any] | None:
        """Run (or resume) the extract; called by the background job. Idempotent.

        Returns the manifest; or None when a source is long enough to be split into partitions: the
        partition jobs then build it on any number of workers and the merge job finishes it.
        """
        extract = self._extract(extract_id)
        if extract.state == "succeeded" and extract.manifest:
            return extract.manifest
        inputs = self._inputs(extract, claim_folder=True)
        if self._fan_out(extract, inputs):
            return None
        result = run_linked_extract(inputs.datasets, inputs.out, runner=finish_extract, progress=_reporter(progress))
        return self._succeed(extract, inputs, result)

    def build_partition(
        self, extract_id: str, dataset: str, partition: dict[str, Any], *, job_id: str, progress: Any = None
    ) -> dict[str, int]:
        """Build one partition of one dataset (called by a partition job; safe to repeat).

        Leaves its last database writes uncommitted on purpose: the job commits them together with
        its own success, so exactly one partition job (the last) sees every other one finished.
        """
        extract = self._extract(extract_id)
        if extract.state == "succeeded":
            return {"chunks_made": 0, "chunks_resumed": 0}
        inputs = self._inputs(extract, claim_folder=False)
        options = next((d for d in inputs.datasets if d.schema.name == dataset), None)
        if options is None:
            raise ExtractServiceError("The partition names a dataset that is not in the extract's plan")
        done = run_partition(options, Partition.from_dict(partition), progress=_reporter(progress))
        # Serialise the partitions' ends on the extract's row (SQLite's write lock does it there).
        self.session.scalar(select(Extract.id).where(Extract.id == extract.id).with_for_update())
        unfinished = self.session.scalar(
            select(func.count()).select_from(Job).where(
                Job.kind == PARTITION_JOB,
                Job.idempotency_key.like(f"{PARTITION_JOB}:{extract.id}:%"),
                Job.state != SUCCEEDED,
                Job.id != job_id,
            )
        )
        if not unfinished:
            enqueue(self.session, MERGE_JOB, {"extract_id": extract.id}, idempotency_key=f"{MERGE_JOB}:{extract.id}")
        return done

    def merge(self, extract_id: str, progress: Any = None) -> dict[str, Any]:
        """Assemble a partitioned extract (the merge job): whole-extract statistics, then the manifest."""
        extract = self._extract(extract_id)
        if extract.state == "succeeded" and extract.manifest:
            return extract.manifest
        inputs = self._inputs(extract, claim_folder=False)
        result = run_linked_extract(inputs.datasets, inputs.out, runner=finish_extract, progress=_reporter(progress))
        return self._succeed(extract, inputs, result)

    def fail(self, extract_id: str, exc: BaseException) -> None:
        """Mark an extract failed for good (refused, or its job's last attempt failed), so it can be
        requested again. The reason shown is the service's or the pipeline's own message, which names
        columns and chunks, never values; anything else is shown by its type only."""
        safe = isinstance(exc, (ExtractServiceError, ExtractError, PermanentJobError))
        reason = (str(exc) if safe else f"{type(exc).__name__} (see the job's error)")[:1000]
        with transaction(self.session) as s:
            extract = s.get(Extract, extract_id)
            if extract is None or extract.state in ("succeeded", "failed"):
                return
            extract.state = "failed"
            extract.finished_at = utcnow()
            extract.error = reason
            shutil.rmtree(self._staging(extract.project_id) / extract.id, ignore_errors=True)
            _remove_folder_of(self.extracts_root / extract.project_id, extract.id)
            self.audit.record(s, "extract.build", actor_id=None, outcome=FAILURE, target_type="extract",
                              target_id=extract.id, project_id=extract.project_id, request_id=self.request_id,
                              detail={"reason": reason[:200]})

    def _extract(self, extract_id: str) -> Extract:
        extract = self.session.get(Extract, extract_id)
        if extract is None:
            raise ExtractServiceError("No such extract")
        return extract

    def _inputs(self, extract: Extract, *, claim_folder: bool) -> _Inputs:
        """Everything an extract is built from, the same for one job, its partitions and its merge."""
        if extract.state == "failed":
            raise ExtractServiceError("This extract failed; request it again")
        plan = self.plan(extract.project_id)
        optouts = self._optouts(extract.project_id, plan)
        versions = self.versions(extract.project_id, plan)
        if self._plan_hash(plan, optouts, versions) != extract.plan_hash:
            raise ExtractServiceError(
                "The approved plan or the opt-out lists changed since this extract was requested; request it again"
            )
        lists = self._read_optout_lists(optouts)
        with transaction(self.session) as s:
            extract.state = "running"
            linkage = _key(s, self.keys, LINKAGE, create=True)
            project_key = _key(s, self.keys, _project_key_name(extract.project_id), create=True)
            # Read inside the transaction: an open read would hold SQLite's lock through the build.
            index = self._person_index_run(plan)
            links = {dataset.name: self._person_links(dataset, index) for dataset, _ in plan}
        keys = ExtractKeys(linkage, project_key)
        out = self.extracts_root / extract.project_id
        staging = self._staging(extract.project_id)
        datasets = [
            ExtractOptions(
                Path((versions[dataset.name] or {}).get("source_location") or dataset.source_location),
                DatasetSchema.from_dict(dataset.schema_spec), cols,
                out / dataset.name, keys,
                chunk_rows=self.chunk_rows,
                optout_lists=[lists[a.version.id] for a in optouts.by_dataset.get(dataset.name, [])],
                exempt_optout_lists=optouts.exempt_names(dataset.name),
                project_id=extract.project_id,
                staging_dir=staging / extract.id / dataset.name,
                **_dialect_options(versions[dataset.name]),
                person_links=links[dataset.name],
                source_opener=zone.opener(self.keys),
            )
            for dataset, cols in plan
        ]
        if claim_folder:
            _claim_folder(out, extract.id)
            # Copies of CSV sources left by an earlier extract of the project are of no more use.
            for old in staging.glob("*"):
                if old.name != extract.id:
                    shutil.rmtree(old, ignore_errors=True)
        return _Inputs(plan, optouts, versions, datasets, out)

    def _staging(self, project_id: str) -> Path:
        """Where a project's long CSV sources are copied (Arrow IPC) while an extract is split: a
        folder only the extract workers' account may enter (the copies hold identifiers)."""
        root = self.extracts_root / STAGING
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        root.chmod(0o700)
        return root / project_id

    def _fan_out(self, extract: Extract, inputs: _Inputs) -> int:
        """Split the long sources into partitions and enqueue a job for each; 0 if none is long."""
        if self.partition_rows <= 0:
            return 0
        split: dict[str, list[Partition]] = {}
        for options in inputs.datasets:
            parts = plan_partitions(options, partition_rows=self.partition_rows)
            if parts and prepare_partitioned(options, parts):
                split[options.schema.name] = parts
        if not split:
            return 0
        with transaction(self.session) as s:
            for name, parts in split.items():
                for p in parts:
                    enqueue(s, PARTITION_JOB, {"extract_id": extract.id, "dataset": name, "partition": p.to_dict()},
                            idempotency_key=f"{PARTITION_JOB}:{extract.id}:{name}:{p.index}")
            self.audit.record(s, "extract.fan_out", actor_id=None, target_type="extract", target_id=extract.id,
                              project_id=extract.project_id, request_id=self.request_id,
                              detail={"partitions": {name: len(parts) for name, parts in split.items()}})
        return sum(len(parts) for parts in split.values())

    def _succeed(self, extract: Extract, inputs: _Inputs, result: dict[str, Any]) -> dict[str, Any]:
        manifest = json.loads(json.dumps(result, default=str))
        made = manifest.get("manifests", {})
        pairs = zip(inputs.plan, inputs.datasets, strict=True)
        by_dataset = {d.name: made.get(src.schema.name) for (d, _), src in pairs}
        manifest["optouts"] = inputs.optouts.summary(by_dataset)
        # Which version of each dataset was read (None: its registered source, before any delivery).
        manifest["dataset_versions"] = {
            name: v and {k: v[k] for k in ("version", "source_sha256", "rows")} for name, v in inputs.versions.items()
        }
        index = self._person_index_run(inputs.plan)
        if index is not None:
            manifest["linkage"] = extract_linkage_summary(index, [d.name for d, _ in inputs.plan])
        with transaction(self.session) as s:
            extract.state = "succeeded"
            extract.finished_at = utcnow()
            extract.manifest = manifest
            self.audit.record(s, "extract.build", actor_id=None, target_type="extract", target_id=extract.id,
                              project_id=extract.project_id, request_id=self.request_id,
                              detail={"datasets": sorted(result.get("manifests", {}))})
        shutil.rmtree(self._staging(extract.project_id) / extract.id, ignore_errors=True)
        return manifest

    def _read_optout_lists(self, optouts: OptOutPlan) -> dict[str, Any]:
        """Each list version the extract applies, read from the encrypted store once (by version id)."""
        wanted = {a.version.id: a.version for applied in optouts.by_dataset.values() for a in applied}
        if wanted and self.files is None:
            raise ExtractServiceError("Opt-out lists apply but the file store holding them is not available")
        reader = OptOutLists(self.session, self.audit, self.files)
        try:
            return {vid: reader.read(version) for vid, version in wanted.items()}
        except OptOutError as exc:
            raise ExtractServiceError(str(exc)) from None

    def latest(self, project_id: str) -> Extract | None:
        return self.session.scalar(
            select(Extract).where(Extract.project_id == project_id).order_by(Extract.requested_at.desc()).limit(1)
        )

    def _deny(self, actor: User | None, project_id: str, reason: str) -> None:
        with transaction(self.session) as s:
            self.audit.record(s, "extract.request", actor_id=actor.id if actor else None, outcome=DENIED,
                              project_id=project_id, request_id=self.request_id, detail={"reason": reason})

    # --- closure --------------------------------------------------------------------------------------

    def destroy_for_project(self, session: Session, project_id: str) -> dict[str, Any]:
        """Closure hook: delete the extract files and shred the project key (idempotent)."""
        folder = self.extracts_root / project_id
        removed = folder.exists()
        if removed:
            shutil.rmtree(folder)
        shutil.rmtree(self._staging(project_id), ignore_errors=True)
        row = session.get(WrappedKey, _project_key_name(project_id))
        shredded = False
        if row is not None and row.wrapped is not None:
            row.wrapped = None
            row.destroyed_at = utcnow()
            shredded = True
        return {"extract_deleted": removed, "key_destroyed": shredded}

    # --- governed re-identification -------------------------------------------------------------------

    def _refuse_reidentification(
        self, action: str, actor: User, project_id: str | None, request_id: str | None, reason: str
    ) -> NoReturn:
        """Every refusal is one audit event, written on its own after the attempt rolled back."""
        self.session.rollback()
        with transaction(self.session) as s:
            self.audit.record(s, action, actor_id=actor.id, outcome=DENIED, target_type="reidentification",
                              target_id=request_id, project_id=project_id, request_id=self.request_id,
                              detail={"reason": reason})
        raise ExtractServiceError(reason)

    def request_reidentification(
        self, actor: User, project_id: str, token_list: list[str], purpose: str
    ) -> ReidentificationRequest:
        action = "reidentify.request"
        if not has_permission(actor, Permission.REIDENTIFY_REQUEST):
            self._refuse_reidentification(action, actor, None, None,
                                          "You do not have permission to request re-identification")
        purpose = (purpose or "").strip()
        if len(purpose) < 20:
            raise ExtractServiceError("Describe the approved purpose (at least 20 characters)")
        cleaned = sorted({t.strip() for t in token_list if t and t.strip()})
        if not cleaned or len(cleaned) > MAX_REID_TOKENS:
            raise ExtractServiceError(f"Name between 1 and {MAX_REID_TOKENS} tokens")
        with transaction(self.session) as s:
            project = s.get(Project, project_id)
            try:
                reid.check_project_active(project.state if project else None)
            except reid.ReidentificationRefused as refused:
                self._refuse_reidentification(action, actor, project.id if project else None, None, str(refused))
            req = ReidentificationRequest(project_id=project_id, requested_by=actor.id, purpose=purpose,
                                          tokens=cleaned, state=reid.PENDING)
            s.add(req)
            s.flush()
            self.audit.record(s, action, actor_id=actor.id, target_type="reidentification",
                              target_id=req.id, project_id=project_id, request_id=self.request_id,
                              detail={"tokens": len(cleaned)})
        return req

    def decide_reidentification(
        self, actor: User, request_id: str, decision: str, rationale: str
    ) -> ReidentificationRequest:
        action = "reidentify.decide"
        if not has_permission(actor, Permission.REIDENTIFY_APPROVE):
            self._refuse_reidentification(action, actor, None, None,
                                          "You do not have permission to approve re-identification")
        if decision not in ("approve", "reject"):
            raise ExtractServiceError("Choose approve or reject")
        if len((rationale or "").strip()) < 5:
            raise ExtractServiceError("Give a rationale")
        with transaction(self.session) as s:
            req = s.get(ReidentificationRequest, request_id, with_for_update=True)
            if req is None:
                self._refuse_reidentification(action, actor, None, None, "No such request")
            project = s.get(Project, req.project_id)
            try:
                if req.requested_by == actor.id:
                    raise reid.ReidentificationRefused("The person who asked cannot approve their own request")
                if req.state != reid.PENDING:
                    raise reid.ReidentificationRefused("This request has already been decided")
                reid.check_project_active(project.state if project else None)
                if s.scalar(select(ReidentificationApproval).where(
                    ReidentificationApproval.request_id == req.id, ReidentificationApproval.approver_id == actor.id
                )) is not None:
                    raise reid.ReidentificationRefused("You have already decided on this request")
            except reid.ReidentificationRefused as refused:
                self._refuse_reidentification(action, actor, req.project_id, req.id, str(refused))
            s.add(ReidentificationApproval(request_id=req.id, approver_id=actor.id, decision=decision,
                                           rationale=rationale.strip()))
            s.flush()
            decisions = [a.decision for a in s.scalars(
                select(ReidentificationApproval).where(ReidentificationApproval.request_id == req.id))]
            target = reid.state_after_decisions(decisions)
            if target != req.state:
                reid.check_transition(req.state, target)
                req.state = target
            self.audit.record(s, action, actor_id=actor.id, target_type="reidentification",
                              target_id=req.id, project_id=req.project_id, request_id=self.request_id,
                              detail={"decision": decision, "state": req.state})
        return req

    def fulfil_reidentification(self, actor: User, request_id: str) -> list[dict[str, Any]]:
        """Give the approved identifiers to the requester, once. The only way a token is reversed.

        The request's row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions
        begin IMMEDIATE) before its state is read, so of two fulfilments at once only one finds it
        approved; the other waits, then finds it fulfilled and is refused.
        """
        action = "reidentify.fulfil"
        with transaction(self.session) as s:
            req = s.get(ReidentificationRequest, request_id, with_for_update=True)
            if req is None or req.requested_by != actor.id:
                self._refuse_reidentification(action, actor, None, None, "No such request of yours")
            project = s.get(Project, req.project_id)
            try:
                if req.state != reid.APPROVED:
                    raise reid.ReidentificationRefused(
                        "This request is not approved by two people (or was already fulfilled)"
                    )
                reid.check_project_active(project.state if project else None)
                reid.check_transition(req.state, reid.FULFILLED)
            except reid.ReidentificationRefused as refused:
                self._refuse_reidentification(action, actor, req.project_id, req.id, str(refused))
            linkage = _key(s, self.keys, LINKAGE, create=False)
            project_key = _key(s, self.keys, _project_key_name(req.project_id), create=False)
            found = tokens.reidentify(list(req.tokens), project_key, linkage)
            # A token with no number may be a person of the person index without one: the index
            # answers with their records' identifiers, read from the sources now. A token of another
            # project or of another purpose decrypts here to a block that no person has: nothing.
            index = PersonIndex(s, self.audit, self.keys, self.request_id)
            people = {r.token: index.person_records(bytes.fromhex(r.pseudonym)) for r in found if r.nhs_number is None}
            req.state = reid.FULFILLED
            req.fulfilled_at = utcnow()
            self.audit.record(s, action, actor_id=actor.id, target_type="reidentification",
                              target_id=req.id, project_id=req.project_id, request_id=self.request_id,
                              detail={"tokens": len(req.tokens),
                                      "by_nhs_number": sum(r.nhs_number is not None for r in found),
                                      "by_person_index": sum(bool(records) for _, records in people.values()),
                                      "not_found": sum(not records for _, records in people.values())})
        return [_reidentified(r, people.get(r.token)) for r in found]
