"""The person index service: build it as a background job, keep it, and hand it to extracts.

A custodian asks for a run; the job reads the linkage columns of every catalogued dataset whose
schema names them (``DatasetSchema.linkage_columns``), links them with the pure core
(``pseudonymisation/linkage.py``) applying every linkage officer's earlier decision, estimates the
linkage quality, and writes one ``PersonIndexEntry`` per record, the uncertain band and the quality
figures — all in the job's one transaction, so a worker killed half way leaves nothing and the next
attempt starts again from the same inputs (the core gives the same index for the same inputs).

Each person gets a 16-byte *person pseudonym*, the block a project's tokens are made from: the
internal pseudonym of the person's trusted NHS number when they have one (so a new record carrying
that number gets the same token even before the next run), otherwise a block in its own domain made
from a key derived from the person's first record (``tokens.person_pseudonyms``). Either way the
block is encrypted under the linkage key, which stays behind the key provider.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from projects.models import Dataset
from pseudonymisation import linkage, tokens, zone
from pseudonymisation.deliveries import version_in_use
from pseudonymisation.extract_options import IndexedRecord
from pseudonymisation.person_index_models import LinkageCandidate, LinkageDecision, LinkageRun, PersonIndexEntry
from pseudonymisation.schema import DatasetSchema, SchemaError
from pseudonymisation.sources import Opener, SourceFile, plain_open, readable
from tre.core import testpoints
from tre.core.audit import DENIED, FAILURE, AuditLog
from tre.core.db import transaction, utcnow
from tre.core.identity import User
from tre.core.jobs import PermanentJobError, enqueue
from tre.core.keys import KeyProvider
from tre.core.permissions import Permission, has_permission

RUN_JOB = "linkage.build"


class LinkageServiceError(Exception):
    """A request the person index service refuses; the message is safe to show."""


class LinkagePermissionDenied(LinkageServiceError):
    pass


@dataclass(frozen=True)
class _Source:
    dataset: Dataset
    schema: DatasetSchema
    # How the source's plaintext is opened: through its seal when it lies sealed in the zone (ADR 0033).
    opener: Opener = plain_open
    # The dataset's latest version when it has had deliveries, else its registered source.
    location: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.location or self.dataset.source_location)

    @property
    def file(self) -> SourceFile:
        return SourceFile(self.path, self.opener)


def _read_identifiers(source: _Source) -> pa.Table:
    """The linkage columns (and the NHS number) of one source, as text."""
    columns = dict(source.schema.linkage_columns or {})
    wanted = list(dict.fromkeys([*columns.values(), *([source.schema.nhs_number_column] or [])]))
    wanted = [c for c in wanted if c]
    if source.dataset.source_kind == "csv" or source.path.suffix.lower() == ".csv":
        options = pacsv.ConvertOptions(include_columns=wanted, column_types={c: pa.string() for c in wanted})
        with readable(source.file) as raw:
            return pacsv.read_csv(raw, convert_options=options)
    with readable(source.file) as raw:
        return pq.read_table(raw, columns=wanted)


def _text(column: pa.ChunkedArray | None, rows: int) -> list[str | None]:
    if column is None:
        return [None] * rows
    if pa.types.is_date(column.type) or pa.types.is_timestamp(column.type):
        return [None if v is None else v.isoformat()[:10] for v in column.to_pylist()]
    return [None if v is None else str(v) for v in column.to_pylist()]


def records_of(source: _Source) -> list[linkage.Record]:
    """One core ``Record`` per row of a linked source (its source name is the dataset's name)."""
    table = _read_identifiers(source)
    columns = dict(source.schema.linkage_columns or {})
    n = table.num_rows

    def field(name: str) -> list[str | None]:
        column = columns.get(name)
        return _text(table.column(column) if column else None, n)

    nhs = _text(table.column(source.schema.nhs_number_column) if source.schema.nhs_number_column else None, n)
    ids, first, surname, dob, sex, postcode = (
        field(f) for f in ("record_id", "first_name", "surname", "date_of_birth", "sex", "postcode")
    )
    if any(i is None for i in ids):
        raise LinkageServiceError(f"The dataset {source.dataset.name} has records without a record id")
    name = source.dataset.name
    return [
        linkage.Record(name, str(ids[i]), nhs[i], first[i], surname[i], dob[i], sex[i], postcode[i]) for i in range(n)
    ]


def person_key(first_record: tuple[str, str]) -> bytes:
    """A number-less person's ten-byte key, from their first record: stable while that record stays
    theirs, and secret only through the linkage key that encrypts it."""
    return hashlib.sha256(f"{first_record[0]}\x00{first_record[1]}".encode()).digest()[: tokens.PERSON_KEY_BYTES]


def person_pseudonyms(
    records: Sequence[linkage.Record], links: Sequence[linkage.Link], linkage_key: bytes
) -> dict[int, bytes]:
    """Each person's 16-byte pseudonym (see the module's docstring)."""
    number_of: dict[int, str] = {}
    first_of: dict[int, tuple[str, str]] = {}
    for record, lk in zip(records, links, strict=True):
        key = (record.source, record.record_id)
        if lk.person_id not in first_of or key < first_of[lk.person_id]:
            first_of[lk.person_id] = key
        if lk.anchored and lk.person_id not in number_of:
            from pseudonymisation.nhs_number import normalise

            digits = normalise(record.nhs_number)
            assert digits is not None  # anchored means valid
            number_of[lk.person_id] = digits
    people = sorted(first_of)
    with_number = [p for p in people if p in number_of]
    without = [p for p in people if p not in number_of]
    out: dict[int, bytes] = {}
    if with_number:
        blocks = tokens.internal_pseudonyms(pa.array([number_of[p] for p in with_number]), linkage_key).blocks
        out.update({p: blocks[i].tobytes() for i, p in enumerate(with_number)})
    if without:
        blocks = tokens.person_pseudonyms([person_key(first_of[p]) for p in without], linkage_key)
        out.update({p: blocks[i].tobytes() for i, p in enumerate(without)})
    return out


def quality_report(
    records: Sequence[linkage.Record],
    result: linkage.LinkageResult,
    estimate: dict[str, Any],
    decisions_applied: int,
) -> dict[str, Any]:
    """The run's linkage quality: counts and ratios only, for the custodian page and the manifests."""
    sources_of: dict[int, set[str]] = defaultdict(set)
    for lk in result.links:
        sources_of[lk.person_id].add(lk.source)
    per_source: dict[str, dict[str, Any]] = {}
    for name in sorted({r.source for r in records}):
        mine = [lk for lk in result.links if lk.source == name]
        methods = Counter(lk.method for lk in mine)
        elsewhere = sum(len(sources_of[lk.person_id]) > 1 for lk in mine)
        per_source[name] = {
            "records": len(mine),
            "with_valid_nhs_number": sum(lk.anchored for lk in mine),
            "linked_to_another_source": elsewhere,
            "match_rate": round(elsewhere / len(mine), 6) if mine else None,
            "by_method": {m: methods.get(m, 0) for m in linkage.METHODS},
        }
    return {
        "records": len(result.links),
        "people": len({lk.person_id for lk in result.links}),
        "sources": per_source,
        "estimated": {"method": "hide the valid NHS numbers, link, compare pairs", **estimate},
        "match_weight_histogram": [{"weight": w, "pairs": n} for w, n in sorted(result.weight_histogram.items())],
        "review_band": {"pairs": len(result.candidates)},
        "decisions_applied": decisions_applied,
    }


@dataclass
class PersonIndex:
    session: Session
    audit: AuditLog
    keys: KeyProvider
    request_id: str | None = None
    settings: linkage.LinkageSettings = linkage.LinkageSettings()

    # --- asking for a run and building it ------------------------------------------------------------

    def sources(self) -> list[_Source]:
        found = []
        for dataset in self.session.scalars(select(Dataset).order_by(Dataset.name)):
            if not dataset.schema_spec or not dataset.schema_spec.get("linkage_columns"):
                continue
            try:
                latest = version_in_use(self.session, None, dataset.id)
                found.append(_Source(dataset, DatasetSchema.from_dict(dataset.schema_spec), zone.opener(self.keys),
                                     latest.source_location if latest is not None else None))
            except SchemaError as exc:
                raise LinkageServiceError(f"The dataset {dataset.name} has a bad schema: {exc}") from None
        return found

    def _decisions(self) -> dict[frozenset[tuple[str, str]], linkage.Decision]:
        rows = self.session.scalars(select(LinkageDecision).order_by(LinkageDecision.decided_at))
        return {
            frozenset({(d.left_source, d.left_record_id), (d.right_source, d.right_record_id)}): d.decision  # type: ignore[misc]
            for d in rows
        }

    def _inputs_sha256(self, sources: list[_Source]) -> str:
        decisions = sorted(
            [sorted(pair), verdict] for pair, verdict in self._decisions().items()
        )
        body = {
            "sources": [[s.dataset.name, s.schema.fingerprint(), zone.plaintext_sha256(s.file)[0]] for s in sources],
            "settings": asdict(self.settings),
            "model_version": linkage.MODEL_VERSION,  # a changed model links the same sources again
            "decisions": decisions,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    def request_run(self, actor: User) -> LinkageRun:
        """A custodian asks for the person index to be built; the same inputs asked twice are one run."""
        if not has_permission(actor, Permission.LINKAGE_RUN):
            self._deny(actor, "linkage.request", "missing permission")
            raise LinkagePermissionDenied("You do not have permission to run linkage")
        sources = self.sources()
        if not sources:
            raise LinkageServiceError("No catalogued dataset names linkage columns in its schema")
        missing = [s.dataset.name for s in sources if not s.path.is_file()]
        if missing:
            raise LinkageServiceError(f"The source of {', '.join(missing)} cannot be found")
        inputs = self._inputs_sha256(sources)
        with transaction(self.session) as s:
            existing = s.scalar(
                select(LinkageRun).where(LinkageRun.inputs_sha256 == inputs, LinkageRun.state != "failed")
            )
            if existing is not None:
                return existing
            run = LinkageRun(inputs_sha256=inputs, settings=asdict(self.settings), requested_by=actor.id)
            s.add(run)
            s.flush()
            job = enqueue(s, RUN_JOB, {"run_id": run.id}, idempotency_key=f"{RUN_JOB}:{run.id}")
            run.job_id = job.id
            self.audit.record(s, "linkage.request", actor_id=actor.id, target_type="linkage_run", target_id=run.id,
                              request_id=self.request_id,
                              detail={"sources": [x.dataset.name for x in sources], "inputs": inputs[:16]})
        return run

    def build(self, run_id: str, progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
        """Build the index of one run (the job calls this; safe to repeat). Writes everything in the
        session's one transaction and leaves the commit to the caller (the job commits it with its
        own success), so an attempt that dies writes nothing."""
        report = progress or (lambda fraction, message: None)
        run = self.session.get(LinkageRun, run_id)
        if run is None:
            raise LinkageServiceError("No such linkage run")
        if run.state == "succeeded" and run.quality is not None:
            return run.quality
        settings = linkage.LinkageSettings(**run.settings)
        sources = self.sources()
        records = [r for source in sources for r in records_of(source)]
        decisions = self._decisions()
        # End the read before the long work: SQLite's BEGIN IMMEDIATE would hold the write lock
        # through the linking, and the progress reports below write from their own connection.
        self.session.commit()
        report(0.1, f"read {len(records):,} records from {len(sources)} sources")
        try:
            result = linkage.link_records(records, settings, decisions=decisions)
            report(0.5, f"linked {len(records):,} records")
            estimate = linkage.estimate_quality(records, settings, model=result.model)
        except linkage.TooFewToTrain as exc:
            raise LinkageServiceError(str(exc)) from None
        except ValueError as exc:  # two records share a key: the core's message names no value
            raise LinkageServiceError(str(exc)) from None
        report(0.9, "estimated linkage quality")
        testpoints.reach("linkage.build.before_write")  # a test may kill the worker here (ADR 0004)
        from pseudonymisation.services import LINKAGE, _key  # the extract service owns the named keys

        run = self.session.get(LinkageRun, run_id)
        assert run is not None
        pseudonyms = person_pseudonyms(records, result.links, _key(self.session, self.keys, LINKAGE, create=True))
        keys = {(r.source, r.record_id) for r in records}
        applied = sum(all(key in keys for key in pair) for pair in decisions)
        quality = quality_report(records, result, estimate, applied)
        s = self.session
        s.execute(delete(PersonIndexEntry).where(PersonIndexEntry.run_id == run.id))
        s.execute(delete(LinkageCandidate).where(LinkageCandidate.run_id == run.id))
        if result.links:
            s.execute(insert(PersonIndexEntry), [
                {"run_id": run.id, "source": lk.source, "record_id": lk.record_id, "person_id": lk.person_id,
                 "person_pseudonym": pseudonyms[lk.person_id], "method": lk.method,
                 "match_probability": lk.match_probability}
                for lk in result.links
            ])
        if result.candidates:
            s.execute(insert(LinkageCandidate), [
                {"id": _candidate_id(run.id, c), "run_id": run.id, "left_source": c.left[0],
                 "left_record_id": c.left[1], "right_source": c.right[0], "right_record_id": c.right[1],
                 "match_probability": c.match_probability, "match_weight": c.match_weight}
                for c in result.candidates
            ])
        run.state = "succeeded"
        run.finished_at = utcnow()
        run.quality = quality
        run.error = None
        self.audit.record(s, "linkage.build", actor_id=None, target_type="linkage_run", target_id=run.id,
                          request_id=self.request_id,
                          detail={"records": quality["records"], "people": quality["people"],
                                  "review_band": len(result.candidates)})
        return quality

    def fail(self, run_id: str, exc: BaseException) -> None:
        """Mark a run failed for good, with a reason safe to show, so it can be asked for again."""
        safe = isinstance(exc, (LinkageServiceError, PermanentJobError))
        reason = (str(exc) if safe else f"{type(exc).__name__} (see the job's error)")[:1000]
        with transaction(self.session) as s:
            run = s.get(LinkageRun, run_id)
            if run is None or run.state in ("succeeded", "failed"):
                return
            run.state, run.finished_at, run.error = "failed", utcnow(), reason
            self.audit.record(s, "linkage.build", actor_id=None, outcome=FAILURE, target_type="linkage_run",
                              target_id=run.id, request_id=self.request_id, detail={"reason": reason[:200]})

    # --- reading the index -----------------------------------------------------------------------------

    def current_run(self) -> LinkageRun | None:
        """The index in force: the newest succeeded run."""
        return self.session.scalar(
            select(LinkageRun).where(LinkageRun.state == "succeeded")
            .order_by(LinkageRun.finished_at.desc(), LinkageRun.id.desc()).limit(1)
        )

    def runs(self, actor: User) -> list[LinkageRun]:
        self._require(actor, Permission.LINKAGE_RUN, "linkage.view")
        return list(self.session.scalars(select(LinkageRun).order_by(LinkageRun.requested_at.desc()).limit(50)))

    def run_quality(self, actor: User, run_id: str) -> LinkageRun:
        """A run and its quality figures (counts only), for a custodian."""
        self._require(actor, Permission.LINKAGE_RUN, "linkage.view")
        run = self.session.get(LinkageRun, run_id)
        if run is None:
            raise LinkageServiceError("No such linkage run")
        return run

    def entries(self, run_id: str, source: str) -> dict[str, IndexedRecord]:
        """One source's records in a run, by record id (for the extract pipeline: the service itself
        decides who may build an extract)."""
        rows = self.session.execute(
            select(PersonIndexEntry.record_id, PersonIndexEntry.person_pseudonym, PersonIndexEntry.method,
                   PersonIndexEntry.match_probability)
            .where(PersonIndexEntry.run_id == run_id, PersonIndexEntry.source == source)
        )
        return {r: IndexedRecord(bytes(p), m, prob) for r, p, m, prob in rows}

    def person_records(self, pseudonym: bytes) -> tuple[LinkageRun | None, list[linkage.Record]]:
        """The records of the person whose pseudonym this is, identifiers read from the sources now.

        For governed re-identification of a person without an NHS number only (the service has
        checked the approvals and audits the answer). The newest succeeded run that holds the
        pseudonym answers: a person's pseudonym is stable across runs while their first record stays
        theirs, so a token from an extract of an older index still finds them. Nothing found (a
        token of another project or purpose decrypts to a block no person has) is (None, [])."""
        found = self.session.execute(
            select(PersonIndexEntry.run_id, PersonIndexEntry.person_id)
            .join(LinkageRun, LinkageRun.id == PersonIndexEntry.run_id)
            .where(PersonIndexEntry.person_pseudonym == pseudonym, LinkageRun.state == "succeeded")
            .order_by(LinkageRun.finished_at.desc(), LinkageRun.id.desc()).limit(1)
        ).first()
        if found is None:
            return None, []
        run_id, person_id = found
        keys = sorted(self.session.execute(
            select(PersonIndexEntry.source, PersonIndexEntry.record_id)
            .where(PersonIndexEntry.run_id == run_id, PersonIndexEntry.person_id == person_id)
        ))
        wanted: dict[str, set[str]] = defaultdict(set)
        for source, record_id in keys:
            wanted[source].add(record_id)
        records = [
            record for source in self.sources() if source.dataset.name in wanted
            for record in records_of(source) if record.record_id in wanted[source.dataset.name]
        ]
        return self.session.get(LinkageRun, run_id), sorted(records, key=lambda r: (r.source, r.record_id))

    # --- plumbing --------------------------------------------------------------------------------------

    def _require(self, actor: User, permission: Permission, action: str) -> None:
        if not has_permission(actor, permission):
            self._deny(actor, action, "missing permission")
            raise LinkagePermissionDenied("You do not have permission to do that")

    def _deny(self, actor: User | None, action: str, reason: str) -> None:
        with transaction(self.session) as s:
            self.audit.record(s, action, actor_id=actor.id if actor else None, outcome=DENIED,
                              request_id=self.request_id, detail={"reason": reason})


def extract_linkage_summary(run: LinkageRun, datasets: Sequence[str]) -> dict[str, Any]:
    """What an extract's manifest says of the person index its tokens came from: the run, the match
    rates of the extract's own datasets, the estimated precision and recall and the match weight
    distribution (counts only), and the two columns each linked row carries."""
    quality = run.quality or {}
    return {
        "run_id": run.id,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "threshold": run.settings.get("threshold"),
        "columns": {"link_method": list(linkage.METHODS), "match_probability": "0..1, null for a singleton"},
        "sources": {n: v for n, v in quality.get("sources", {}).items() if n in set(datasets)},
        "estimated": quality.get("estimated"),
        "match_weight_histogram": quality.get("match_weight_histogram"),
    }


def _candidate_id(run_id: str, candidate: linkage.Candidate) -> str:
    """A candidate's id is derived, so a repeated build writes the same rows (and the same links)."""
    text = f"{run_id}\x00{candidate.left[0]}\x00{candidate.left[1]}\x00{candidate.right[0]}\x00{candidate.right[1]}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]
