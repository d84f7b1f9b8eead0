"""The data catalogue: custodians register datasets with a role, description and sensitivity per column."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select

from projects import permissions as perm
from projects.kernel import (
    _NAME_OK,
    NotFound,
    ProjectError,
    ProjectsKernel,
)
from projects.models import (
    Dataset,
    DatasetColumn,
)
from projects.rules import (
    COLUMN_ROLES,
    SENSITIVITY_LEVELS,
    SOURCE_KINDS,
    check_single_line,
)


class Catalogue(ProjectsKernel):
    # --- the catalogue ----------------------------------------------------------------------------

    def register_dataset(
        self,
        actor: Any,
        *,
        name: str,
        title: str,
        description: str,
        source_kind: str,
        source_location: str,
        sensitivity: str,
        columns: Sequence[Mapping[str, Any]],
        row_count: int | None = None,
        schema_spec: dict[str, Any] | None = None,
    ) -> Dataset:
        """Add a dataset with a role, description and sensitivity for every column."""
        name = (name or "").strip().lower()
        if not name or len(name) > 100 or not set(name) <= _NAME_OK:
            raise ProjectError("Give the dataset a short name of lower-case letters, digits and underscores")
        if not (title or "").strip():
            raise ProjectError("Give the dataset a title")
        check_single_line("dataset title", title.strip())
        if source_kind not in SOURCE_KINDS:
            raise ProjectError("The source must be a Parquet file, a CSV file or a database table")
        if not (source_location or "").strip():
            raise ProjectError("Say where the source is")
        if sensitivity not in SENSITIVITY_LEVELS:
            raise ProjectError("Choose a sensitivity level")
        if not columns:
            raise ProjectError("Describe at least one column")
        seen: set[str] = set()
        rows = []
        for i, c in enumerate(columns):
            cname = str(c.get("name") or "").strip()
            if not cname or cname in seen or len(cname) > 100:
                raise ProjectError(f"Column {i + 1} needs a unique name")
            if c.get("role") not in COLUMN_ROLES:
                raise ProjectError(
                    f"Give column {cname} a role: direct identifier, quasi-identifier, attribute or free text"
                )
            sens = c.get("sensitivity") or sensitivity
            if sens not in SENSITIVITY_LEVELS:
                raise ProjectError(f"Column {cname} has an unknown sensitivity level")
            seen.add(cname)
            rows.append(
                DatasetColumn(
                    position=i,
                    name=cname,
                    role=c["role"],
                    data_type=str(c.get("data_type") or "string")[:50],
                    description=str(c.get("description") or ""),
                    sensitivity=sens,
                )
            )
        with self._tx() as s:
            self._allow(perm.can_register_dataset(actor), "dataset.register", actor)
            if s.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
                raise ProjectError("A dataset with that name is already registered")
            ds = Dataset(
                name=name,
                title=title.strip()[:200],
                description=description or "",
                source_kind=source_kind,
                source_location=source_location.strip(),
                sensitivity=sensitivity,
                row_count=row_count,
                schema_spec=dict(schema_spec or {}),
                registered_by=getattr(actor, "id", None),
                columns=rows,
            )
            s.add(ds)
            s.flush()
            self.audit.record(
                s,
                "dataset.register",
                actor_id=getattr(actor, "id", None),
                target_type="dataset",
                target_id=ds.id,
                request_id=self.request_id,
                detail={"columns": len(rows)},
            )
        return ds

    def list_datasets(self) -> list[Dataset]:
        return list(self.session.scalars(select(Dataset).order_by(Dataset.title)))

    def catalogue_cards(self) -> list[Any]:
        """What the catalogue's index shows of each dataset, by title: its id, title, description,
        row count and how many columns it has (``column_count``), in one statement and as rows, not
        objects: ``list_datasets`` loads every dataset whole and then all their columns."""
        column_count = (
            select(func.count(DatasetColumn.id)).where(DatasetColumn.dataset_id == Dataset.id)
            .correlate(Dataset).scalar_subquery()
        )
        return list(self.session.execute(
            select(Dataset.id, Dataset.title, Dataset.description, Dataset.row_count,
                   column_count.label("column_count")).order_by(Dataset.title)
        ))

    def catalogue_entries(self) -> list[dict[str, Any]]:
        """The API's catalogue: every dataset by title with its columns by position, as plain values
        (what ``list_datasets`` objects show through the API's schema) in one statement. Datasets of
        the same title come in the order of their ids (``list_datasets`` leaves them in no order)."""
        rows = self.session.execute(
            select(Dataset.id, Dataset.name, Dataset.title, Dataset.description, Dataset.source_kind,
                   Dataset.sensitivity, Dataset.row_count, DatasetColumn.name.label("column_name"),
                   DatasetColumn.role, DatasetColumn.data_type,
                   DatasetColumn.description.label("column_description"),
                   DatasetColumn.sensitivity.label("column_sensitivity"))
            .outerjoin(DatasetColumn, DatasetColumn.dataset_id == Dataset.id)
            .order_by(Dataset.title, Dataset.id, DatasetColumn.position)
        )
        entries: list[dict[str, Any]] = []
        for r in rows:
            if not entries or entries[-1]["id"] != r.id:
                entries.append({"id": r.id, "name": r.name, "title": r.title, "description": r.description,
                                "source_kind": r.source_kind, "sensitivity": r.sensitivity,
                                "row_count": r.row_count, "columns": []})
            if r.column_name is not None:
                entries[-1]["columns"].append({"name": r.column_name, "role": r.role, "data_type": r.data_type,
                                               "description": r.column_description,
                                               "sensitivity": r.column_sensitivity})
        return entries

    def dataset_entry(self, dataset_id: str) -> tuple[Any, list[Any]]:
        """What the catalogue's page of a dataset shows, found by id or else by name as ``get_dataset``
        finds it: the dataset's columns (``registered_by`` too, for ``may_set_schema``) and its
        columns' rows by position, in one statement (two when found by name), not objects."""
        query = (
            select(Dataset.id, Dataset.name, Dataset.title, Dataset.description, Dataset.sensitivity,
                   Dataset.schema_spec, Dataset.registered_by, DatasetColumn.name.label("column_name"),
                   DatasetColumn.role, DatasetColumn.data_type,
                   DatasetColumn.description.label("column_description"))
            .outerjoin(DatasetColumn, DatasetColumn.dataset_id == Dataset.id).order_by(DatasetColumn.position)
        )
        rows = list(self.session.execute(query.where(Dataset.id == dataset_id))) if dataset_id else []
        if not rows:
            rows = list(self.session.execute(query.where(Dataset.name == dataset_id)))
        if not rows:
            raise NotFound("No such dataset")
        return rows[0], [r for r in rows if r.column_name is not None]

    def get_dataset(self, dataset_id: str) -> Dataset:
        ds = self.session.get(Dataset, dataset_id) if dataset_id else None
        if ds is None:
            ds = self.session.scalar(select(Dataset).where(Dataset.name == dataset_id))
        if ds is None:
            raise NotFound("No such dataset")
        return ds
