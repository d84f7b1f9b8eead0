"""The catalogue's reads of columns (ADR 0059) answer what its objects did."""

from __future__ import annotations

from typing import Any

import pytest

from projects.kernel import NotFound
from projects.models import Dataset
from tests.projects.factories import COLUMNS, World, build_world
from tests.statements import count_statements
from tre.api.projects import CatalogueDatasetSchema
from tre.core.db import transaction

ONE_READ = {"sqlite": 2, "postgresql": 1}  # SQLite's count has the transaction's BEGIN too


def _more_datasets(w: World) -> None:
    w.svc.register_dataset(w.custodian, name="prescribing", title="Prescribing", description="Items dispensed",
                           source_kind="csv", source_location="/data/p.csv", sensitivity="high", columns=COLUMNS[:2],
                           row_count=1234567)
    w.svc.register_dataset(w.custodian, name="births", title="Births", description="", source_kind="parquet",
                           source_location="/data/b.parquet", sensitivity="low", columns=[
                               {"name": "baby", "role": "attribute", "sensitivity": "low", "data_type": "integer"}])


def test_catalogue_cards_are_the_datasets_titles_descriptions_and_column_counts_in_one_statement(app: Any) -> None:
    w = build_world(app)
    _more_datasets(w)
    with app.app_context():
        count, cards = count_statements(app, w.svc.catalogue_cards)
        expected = [(d.id, d.title, d.description, d.row_count, len(d.columns)) for d in w.svc.list_datasets()]

    assert [(c.id, c.title, c.description, c.row_count, c.column_count) for c in cards] == expected
    assert [c.title for c in cards] == ["Births", "Hospital admissions", "Prescribing"]
    assert count == ONE_READ[app.extensions["tre.db"].engine.dialect.name]


def test_catalogue_entries_dump_as_the_datasets_objects_did_in_one_statement(app: Any) -> None:
    w = build_world(app)
    _more_datasets(w)
    with app.app_context():
        with transaction(w.session) as s:  # no service registers one without columns; a dataset may lose them
            s.add(Dataset(name="empty", title="Empty", description="Nothing yet", source_kind="csv",
                          source_location="/data/e.csv", sensitivity="low"))
        count, entries = count_statements(app, w.svc.catalogue_entries)
        expected = CatalogueDatasetSchema(many=True).dump(w.svc.list_datasets())

    assert CatalogueDatasetSchema(many=True).dump(entries) == expected
    assert [len(e["columns"]) for e in entries] == [1, 0, 4, 2]
    assert count == ONE_READ[app.extensions["tre.db"].engine.dialect.name]


def test_dataset_entry_finds_a_dataset_by_id_or_name_with_its_columns_as_get_dataset_does(app: Any) -> None:
    w = build_world(app)
    _more_datasets(w)
    with app.app_context():
        with transaction(w.session) as s:
            s.add(Dataset(name="empty", title="Empty", description="", source_kind="csv", source_location="/e",
                          sensitivity="low", schema_spec={"columns": []}))
        for key in (w.dataset_id, "admissions", "prescribing", "births", "empty"):
            ds = w.svc.get_dataset(key)
            expected = ((ds.id, ds.name, ds.title, ds.description, ds.sensitivity, ds.schema_spec, ds.registered_by),
                        [(c.name, c.role, c.data_type, c.description) for c in ds.columns])
            w.session.expunge_all()
            entry, columns = w.svc.dataset_entry(key)
            got = ((entry.id, entry.name, entry.title, entry.description, entry.sensitivity, entry.schema_spec,
                    entry.registered_by), [(c.column_name, c.role, c.data_type, c.column_description) for c in columns])
            assert got == expected, key
        for missing in ("", "no-such-dataset"):
            with pytest.raises(NotFound):
                w.svc.dataset_entry(missing)
