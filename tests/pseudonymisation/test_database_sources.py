"""A table of an administrator's named database source, delivered like a file: read in chunks into the
identifiable zone and checked. Against the real PostgreSQL (``TRE_TEST_POSTGRES_URL``), with a table
made here. A custodian never gives a URL: names only, and no URL or credential in anything stored."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from projects.kernel import ProjectError, ProjectPermissionDenied
from pseudonymisation import database_sources as sources
from pseudonymisation.delivery_tasks import deliveries_service
from pseudonymisation.models import DatasetDelivery
from pseudonymisation.sealed import is_sealed
from pseudonymisation.zone import source as source_in_zone
from tests.conftest import make_test_app
from tests.projects.factories import build_world, make_user
from tre.core.audit import AuditEvent

from .conftest import valid_nhs_numbers
from .test_deliveries import HEADER, register, versions

PG = os.environ.get("TRE_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.skipif(not PG, reason="TRE_TEST_POSTGRES_URL is not set")


@pytest.fixture
def source_table() -> Iterator[tuple[str, str]]:
    """A schema of its own in the test PostgreSQL holding ``registry`` (130 rows); dropped after."""
    schema = f"h19src_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(PG)
    numbers = valid_nhs_numbers(130, seed=8)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(sa.text(f'CREATE TABLE "{schema}".registry (record_id integer, nhs_number text, '
                             'date_of_birth date, postcode text, diagnosis text, score numeric(6,1))'))
        conn.execute(sa.text(f'INSERT INTO "{schema}".registry VALUES (:i, :n, :d, :p, :g, :s)'), [
            {"i": i, "n": numbers[i], "d": f"{1950 + i % 50}-0{1 + i % 9}-15", "p": ["LS1 4AP", "BD7 1DP"][i % 2],
             "g": ["E11", "I10", "J45"][i % 3], "s": i % 17} for i in range(130)])
    yield PG, schema
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture
def app(tmp_path: Path, source_table: tuple[str, str]) -> Iterator[Any]:
    from tre.models import metadata

    (tmp_path / "landing").mkdir()
    application = make_test_app(tmp_path / "instance", f"sqlite:///{tmp_path / 'tre.sqlite'}",
                                landing_dir=tmp_path / "landing",
                                database_sources=json.dumps({"warehouse": source_table[0]}))
    metadata.create_all(application.extensions["tre.db"].engine)
    yield application
    application.extensions["tre.db"].session.remove()
    application.extensions["tre.db"].dispose()


def test_a_database_table_is_read_in_chunks_and_becomes_the_next_version(
    app: Any, source_table: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = build_world(app)
    ds = register(app, w)
    svc = deliveries_service(app.extensions["tre.platform"])
    svc.receive(w.custodian, ds.id, "v1/registry.csv")
    monkeypatch.setattr(sources, "CHUNK_ROWS", 7)  # many chunks of a small table
    chunks: list[int] = []
    real = sources.read_table
    monkeypatch.setattr(sources, "read_table", lambda *a, **k: chunks.append(1) or real(*a, **k, chunk_rows=7))

    made = svc.receive_table(w.custodian, ds.id, "warehouse", f"{source_table[1]}.registry")
    with app.extensions["tre.db"].session_factory() as s:
        delivery = s.get(DatasetDelivery, made.id)
        assert delivery is not None
        s.expunge(delivery)
    stored = Path(delivery.stored_path or "")
    assert is_sealed(stored)  # sealed at rest (ADR 0033); the plain Parquet read is gone
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]
    sealed_copy = source_in_zone(stored, app.extensions["tre.platform"].keys).open()
    written = pq.ParquetFile(sealed_copy)

    assert (delivery.state, delivery.origin, delivery.version, delivery.rows) == ("accepted", "database", 2, 130)
    assert delivery.source_name == f"warehouse:{source_table[1]}.registry"
    assert written.schema_arrow.names == HEADER and written.metadata.num_row_groups == 19  # 130 rows / 7
    assert stored.is_relative_to(Path(app.extensions["tre.settings"].identifiable_path))
    assert oct(stored.stat().st_mode & 0o777) == oct(0o600)
    assert versions(app, ds) == [1, 2] and chunks == [1]
    written.close()
    sealed_copy.close()


@pytest.mark.parametrize(("source", "table", "says"), [
    ("postgresql://postgres@127.0.0.1/test", "registry", "No database source"),  # a URL typed for a name
    ("elsewhere", "registry", "No database source"),
    ("warehouse", "registry; DROP TABLE users", "letters, digits"),
    ("warehouse", "a.b.c", "letters, digits"),
    ("warehouse", '"quoted"', "letters, digits"),
    ("warehouse", "pg_catalog.nothing_here", "has no table"),
])
def test_a_source_not_configured_or_a_table_name_trick_is_refused_and_audited(
    app: Any, source: str, table: str, says: str
) -> None:
    w = build_world(app)
    ds = register(app, w)
    svc = deliveries_service(app.extensions["tre.platform"])

    with pytest.raises(ProjectError, match=says) as refused:
        svc.receive_table(w.custodian, ds.id, source, table)

    with app.extensions["tre.db"].session_factory() as s:
        events = s.scalars(sa.select(AuditEvent).where(AuditEvent.action == "dataset.delivery_receive")).all()
        stored = [json.dumps(e.detail) for e in events]
    assert [e.outcome for e in events] == ["denied"]
    assert PG not in str(refused.value) and not any(PG in text for text in stored)


def test_only_the_datasets_custodian_may_deliver_a_table(app: Any, source_table: tuple[str, str]) -> None:
    w = build_world(app)
    ds = register(app, w)
    svc = deliveries_service(app.extensions["tre.platform"])
    other = make_user(app, "otto.custodian", ["data_custodian"])

    for intruder in (other, w.pi):
        with pytest.raises(ProjectPermissionDenied):
            svc.receive_table(intruder, ds.id, "warehouse", f"{source_table[1]}.registry")


def test_the_page_offers_source_names_never_their_urls(app: Any, source_table: tuple[str, str]) -> None:
    from tests.tre.web.test_dataset_schema_pages import login

    w = build_world(app)
    ds = register(app, w)
    client = login(app.test_client(), w.custodian)

    page = client.get(f"/catalogue/datasets/{ds.id}/deliveries").get_data(as_text=True)

    assert '<option value="warehouse">warehouse</option>' in page
    assert PG not in page and "postgres" not in page
    assert PG not in repr(app.extensions["tre.settings"])
