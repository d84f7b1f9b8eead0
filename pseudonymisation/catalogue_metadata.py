"""A dataset's metadata export (``metadata_export.dataset_metadata``) filled from the catalogue: its
columns, its versions and the opt-out lists in force for it. Reads no data and changes nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from projects.models import Dataset
from pseudonymisation.metadata_export import dataset_metadata
from pseudonymisation.models import DatasetVersion, OptOutListVersion


class NoSuchDataset(LookupError):
    """No dataset of that id or name."""


def export_dataset_metadata(session: Session, dataset_id: str, *, base_url: str, publisher: str) -> dict[str, Any]:
    ds = session.get(Dataset, dataset_id) if dataset_id else None
    if ds is None:
        ds = session.scalar(select(Dataset).where(Dataset.name == dataset_id))
    if ds is None:
        raise NoSuchDataset("No such dataset")
    versions = session.scalars(select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)).all()
    newest = (select(OptOutListVersion.name, func.max(OptOutListVersion.version).label("version"))
              .where((OptOutListVersion.dataset_id.is_(None)) | (OptOutListVersion.dataset_id == ds.id))
              .group_by(OptOutListVersion.name))
    lists = []
    for name, version in session.execute(newest).all():
        row = session.scalar(select(OptOutListVersion).where(OptOutListVersion.name == name,
                                                             OptOutListVersion.version == version))
        lists.append({"name": name, "version": version,
                      "scope": "national" if row is None or row.dataset_id is None else "dataset"})
    return dataset_metadata(
        {"id": ds.id, "name": ds.name, "title": ds.title, "description": ds.description,
         "sensitivity": ds.sensitivity, "registered_at": ds.registered_at},
        [{"name": c.name, "role": c.role, "data_type": c.data_type, "description": c.description}
         for c in ds.columns],
        [{"version": v.version, "rows": v.rows, "created_at": v.created_at} for v in versions],
        sorted(lists, key=lambda o: o["name"]),
        base_url=base_url, publisher=publisher,
    )
