"""A dataset's DCAT export reads columns, not objects, and the lists in force at once (ADR 0059): it
answers exactly what the read it replaced did, kept here as the reference."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from projects.models import Dataset
from pseudonymisation.catalogue_metadata import NoSuchDataset, export_dataset_metadata
from pseudonymisation.metadata_export import dataset_metadata
from pseudonymisation.models import DatasetDelivery, DatasetVersion, OptOutListVersion
from tests.projects.factories import COLUMNS, build_world
from tests.statements import count_statements
from tre.core.db import transaction


def _reference(session: Session, dataset_id: str, *, base_url: str, publisher: str) -> dict[str, Any]:
    """The export as it was read before ADR 0059: objects, and each list's newest version read again."""
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


def _list(s: Session, name: str, version: int, dataset_id: str | None) -> None:
    s.add(OptOutListVersion(name=name, version=version, dataset_id=dataset_id, file_sha256="0" * 64,
                            fingerprint="f" * 64, number_count=2))


def test_export_answers_as_the_object_read_did_for_every_dataset_and_name(app: Any) -> None:
    w = build_world(app)
    other = w.svc.register_dataset(w.custodian, name="births", title="Births", description="", source_kind="csv",
                                   source_location="/data/b.csv", sensitivity="low", columns=COLUMNS[1:3])
    with app.app_context(), transaction(w.session) as s:
        for version, rows in ((1, 10), (2, 25)):
            delivery = DatasetDelivery(dataset_id=w.dataset_id, source_name=f"d{version}.csv", state="received")
            s.add(delivery)
            s.flush()
            s.add(DatasetVersion(dataset_id=w.dataset_id, version=version, delivery_id=delivery.id,
                                 source_location="/x", source_sha256="a" * 64, rows=rows))
        _list(s, "national", 1, None)
        _list(s, "national", 2, None)
        _list(s, "local", 1, w.dataset_id)
        _list(s, "local", 2, w.dataset_id)
        _list(s, "theirs", 1, other.id)
        _list(s, "a shared name", 1, None)
        _list(s, "a shared name", 2, other.id)  # its newest in force for admissions is still version 1

    with app.app_context():
        for key in (w.dataset_id, "admissions", other.id, "births"):
            w.session.expunge_all()
            expected = _reference(w.session, key, base_url="https://tre.example", publisher="The TRE")
            w.session.expunge_all()
            got = export_dataset_metadata(w.session, key, base_url="https://tre.example", publisher="The TRE")
            assert got == expected, key
        for missing in ("", "no-such-dataset"):
            with pytest.raises(NoSuchDataset):
                export_dataset_metadata(w.session, missing, base_url="https://tre.example", publisher="The TRE")
        w.session.rollback()
        w.session.expunge_all()
        count, _ = count_statements(app, lambda: export_dataset_metadata(
            w.session, w.dataset_id, base_url="https://tre.example", publisher="The TRE"))

    assert count == {"sqlite": 5, "postgresql": 4}[app.extensions["tre.db"].engine.dialect.name]  # SQLite's BEGIN
