"""A dataset's custodian reads the proposal for its source, confirms or changes each column's role and
extract rule, and so sets the dataset's extract schema (what ``Extracts`` builds from).

Who may: a holder of the dataset-management permission who registered the dataset; a dataset with
no registrant (loaded by the command line) may be confirmed by any such holder. Every call that reads
the identifiable source is audited, every refusal too, and a refused confirmation changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projects.kernel import NotFound, ProjectError, ProjectsKernel
from projects.models import Dataset
from pseudonymisation import profiling, zone
from pseudonymisation.profiling import ProfilingError, SourceProposal
from pseudonymisation.proposal_cache import PROPOSALS, ProposalCache
from pseudonymisation.schema import DatasetSchema, Role, SchemaError, TransformKind
from pseudonymisation.sources import SourceFile
from tre.core.db import utcnow
from tre.core.keys import KeyProvider
from tre.core.permissions import Permission, has_permission


class SourceUnreadable(ProjectError):
    """The dataset's source cannot be read as it is (missing, not CSV or Parquet, malformed)."""


def may_set_schema(actor: Any, dataset: Any) -> bool:
    """A custodian of this dataset: holds dataset.manage and registered it (or nobody did). ``dataset``
    is a ``Dataset`` or a row with its ``registered_by`` (the catalogue's page reads columns)."""
    if not has_permission(actor, Permission.DATASET_MANAGE):
        return False
    return dataset.registered_by is None or dataset.registered_by == getattr(actor, "id", None)


@dataclass
class DatasetSchemas(ProjectsKernel):
    # Opens a source sealed in the identifiable zone (a dataset registered from an upload, ADR 0033).
    keys: KeyProvider | None = None
    # Proposals already read, per source file and day (ADR 0069); the process's own unless given one.
    proposals: ProposalCache = field(default_factory=lambda: PROPOSALS)

    def _readable(self, ds: Dataset) -> Path | SourceFile:
        return zone.source(ds.source_location, self.keys) if self.keys is not None else Path(ds.source_location)

    def _dataset(self, dataset_id: str) -> Dataset:
        ds = self.session.get(Dataset, dataset_id) if dataset_id else None
        if ds is None:
            raise NotFound("No such dataset")
        return ds

    def _record_dataset(self, s: Any, action: str, actor: Any, ds: Dataset, **detail: Any) -> None:
        self.audit.record(s, action, actor_id=getattr(actor, "id", None), target_type="dataset", target_id=ds.id,
                          request_id=self.request_id, detail=detail)

    def propose(self, actor: Any, dataset_id: str) -> SourceProposal:
        """Read the dataset's source and propose a type, role and rule per column (counts only).

        The proposal is read once per source file and day and then kept (ADR 0069); the permission
        check and the audit event happen on every call, kept or not. The proposal is immutable."""
        with self._tx() as s:
            ds = self._dataset(dataset_id)
            self._allow(may_set_schema(actor, ds), "dataset.profile", actor)
            today = _today()
            proposal, cached = _read(lambda: self.proposals.proposal(
                ds.source_location, sealed=self.keys is not None, today=today,
                compute=lambda: profiling.propose(self._readable(ds), today=today),
            ))
            self._record_dataset(s, "dataset.profile", actor, ds, rows=proposal.row_count,
                                 columns=len(proposal.columns), cached=cached)
        return proposal

    def preview(
        self, actor: Any, dataset_id: str, choices: Mapping[str, Mapping[str, str]], nhs_number_column: str | None,
        *, rows: int = 5,
    ) -> dict[str, Any]:
        """A few rows as the chosen schema would extract them (tokens and bands, never identifiers)."""
        with self._tx() as s:
            ds = self._dataset(dataset_id)
            self._allow(may_set_schema(actor, ds), "dataset.schema_preview", actor)
            schema = self._schema(ds, choices, nhs_number_column)
            shown = _read(lambda: profiling.preview(self._readable(ds), schema, rows=min(max(rows, 1), 20)))
            self._record_dataset(s, "dataset.schema_preview", actor, ds, rows=len(shown["rows"]))
        return shown

    def confirm(
        self,
        actor: Any,
        dataset_id: str,
        choices: Mapping[str, Mapping[str, str]],
        nhs_number_column: str | None,
        *,
        row_count: int | None = None,
        data_types: Mapping[str, str] | None = None,
    ) -> Dataset:
        """Set every column's role and the extract schema in one change, or refuse and change nothing.

        ``choices`` maps each of the dataset's columns to ``{"role": ..., "rule": ...}``.
        """
        with self._tx() as s:
            ds = self._dataset(dataset_id)
            self._allow(may_set_schema(actor, ds), "dataset.schema_confirm", actor)
            schema = self._schema(ds, choices, nhs_number_column)
            in_source = set(_read(lambda: profiling.source_columns(self._readable(ds))))
            absent = [c.name for c in schema.plan(schema.column_names) if c.name not in in_source]
            if absent:
                raise ProjectError(f"Not in the source, so drop them or correct the source: {', '.join(absent)}")
            changed = 0
            for column in ds.columns:
                role = str(schema.column(column.name).role)
                changed += column.role != role
                column.role = role
                if data_types and data_types.get(column.name):
                    column.data_type = str(data_types[column.name])[:50]
            ds.schema_spec = schema.to_dict()
            if row_count is not None:
                ds.row_count = int(row_count)
            s.flush()
            self._record_dataset(s, "dataset.schema_confirm", actor, ds, columns=len(schema.columns),
                                 roles_changed=changed, schema=schema.fingerprint()[:16])
        return ds

    def _schema(
        self, ds: Dataset, choices: Mapping[str, Mapping[str, str]], nhs_number_column: str | None
    ) -> DatasetSchema:
        known = ds.column_names
        unknown = sorted(set(choices) - set(known))
        if unknown:
            raise ProjectError(f"These columns are not in the dataset: {', '.join(unknown)}")
        missing = [c for c in known if c not in choices]
        if missing:
            raise ProjectError(f"Give every column a role and a rule; missing: {', '.join(missing)}")
        nhs = (nhs_number_column or "").strip() or None
        if nhs is not None and nhs not in known:
            raise ProjectError(f"The NHS number column {nhs} is not in the dataset")
        parsed: dict[str, tuple[Role, TransformKind]] = {}
        for name in known:
            choice = choices[name]
            try:
                role = Role(str(choice.get("role", "")))
            except ValueError:
                raise ProjectError(f"Column {name}: choose a role ({', '.join(r.value for r in Role)})") from None
            try:
                rule = TransformKind(str(choice.get("rule", "")))
            except ValueError:
                rule = None
            if rule not in profiling.RULES:
                raise ProjectError(
                    f"Column {name}: choose a rule ({', '.join(r.value for r in profiling.RULES)})"
                )
            parsed[name] = (role, rule)
        try:
            return profiling.build_schema(ds.name, parsed, order=known, nhs_number_column=nhs,
                                          reference_date=_today())
        except SchemaError as exc:
            raise ProjectError(f"The extract schema is refused: {exc}") from None


def _today() -> dt.date:
    return utcnow().date()


def _read(fn: Any) -> Any:
    try:
        return fn()
    except ProfilingError as exc:
        raise SourceUnreadable(str(exc)) from None
    except OSError:
        raise SourceUnreadable("The source file could not be read") from None
