"""A dataset's metadata export (``metadata_export.dataset_metadata``) filled from the catalogue: its
columns, its versions and the opt-out lists in force for it. Reads no data and changes nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from projects.models import Dataset, DatasetColumn
from pseudonymisation.metadata_export import dataset_metadata
from pseudonymisation.models import DatasetVersion, OptOutListVersion


class NoSuchDataset(LookupError):
    """No dataset of that id or name."""


def export_dataset_metadata(session: Session, dataset_id: str, *, base_url: str, publisher: str) -> dict[str, Any]:
    """Four statements whatever the number of opt-out lists, and the columns read, not objects."""
    shown = (Dataset.id, Dataset.name, Dataset.title, Dataset.description, Dataset.sensitivity, Dataset.registered_at)
    ds = session.execute(select(*shown).where(Dataset.id == dataset_id)).first() if dataset_id else None
    if ds is None:
        ds = session.execute(select(*shown).where(Dataset.name == dataset_id)).first()
    if ds is None:
        raise NoSuchDataset("No such dataset")
    columns = session.execute(
        select(DatasetColumn.name, DatasetColumn.role, DatasetColumn.data_type, DatasetColumn.description)
        .where(DatasetColumn.dataset_id == ds.id).order_by(DatasetColumn.position)
    )
    versions = session.execute(select(DatasetVersion.version, DatasetVersion.rows, DatasetVersion.created_at)
                               .where(DatasetVersion.dataset_id == ds.id))
    # The newest version of every list in force for this dataset (national or its own), and whose
    # that version is: (name, version) is unique, so the join finds exactly that version's row.
    newest = (select(OptOutListVersion.name, func.max(OptOutListVersion.version).label("version"))
              .where((OptOutListVersion.dataset_id.is_(None)) | (OptOutListVersion.dataset_id == ds.id))
              .group_by(OptOutListVersion.name).subquery())
    in_force = session.execute(
        select(newest.c.name, newest.c.version, OptOutListVersion.dataset_id)
        .join(OptOutListVersion, (OptOutListVersion.name == newest.c.name)
              & (OptOutListVersion.version == newest.c.version))
    )
    lists = [{"name": name, "version": version, "scope": "national" if owner is None else "dataset"}
             for name, version, owner in in_force]
    return dataset_metadata(
        {"id": ds.id, "name": ds.name, "title": ds.title, "description": ds.description,
         "sensitivity": ds.sensitivity, "registered_at": ds.registered_at},
        [{"name": c.name, "role": c.role, "data_type": c.data_type, "description": c.description}
         for c in columns],
        [{"version": v.version, "rows": v.rows, "created_at": v.created_at} for v in versions],
        sorted(lists, key=lambda o: o["name"]),
        base_url=base_url, publisher=publisher,
    )
