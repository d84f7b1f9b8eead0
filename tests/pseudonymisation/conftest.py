"""Factories for the pseudonymisation tests: valid NHS numbers, small sources, schemas and keys."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pseudonymisation import nhs_number, tokens
from pseudonymisation.pipeline import ExtractKeys
from pseudonymisation.schema import (
    ColumnSpec,
    DatasetSchema,
    InvalidNhsPolicy,
    Role,
    Transform,
    TransformKind,
)


def valid_nhs_numbers(count: int, seed: int = 0) -> list[str]:
    """Distinct valid NHS numbers (random nine digits plus their check digit)."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < count:
        nine = f"{int(rng.integers(100_000_000, 999_999_999)):09d}"
        check = nhs_number.check_digit(nine)
        if check is not None:
            out[nine + str(check)] = None
    return list(out)


def make_table(rows: int, patients: int = 50, seed: int = 1) -> pa.Table:
    """A small event table: several rows per patient, dates, postcodes, codes and a note."""
    rng = np.random.default_rng(seed)
    numbers = valid_nhs_numbers(patients, seed)
    who = rng.integers(0, patients, rows)
    births = [dt.date(1930, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 30_000, patients)]
    postcodes = ["LS1 4AP", "M1 1AE", "SW1A 1AA", "B33 8TH", "CR2 6XH"]
    return pa.table(
        {
            "nhs_number": pa.array([numbers[i] for i in who]),
            "date_of_birth": pa.array([births[i] for i in who], pa.date32()),
            "postcode": pa.array([postcodes[i % len(postcodes)] for i in who]),
            "sex": pa.array(["F" if i % 2 else "M" for i in who]),
            "event_date": pa.array(
                [dt.date(2020, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 700, rows)],
                pa.date32(),
            ),
            "code": pa.array([["I10", "E11.9", "J45", "bad code"][int(c)] for c in rng.integers(0, 4, rows)]),
            "value": pa.array(rng.normal(size=rows)),
            "note": pa.array([f"seen, call 07700 900{i % 1000:03d}" for i in range(rows)]),
        }
    )


def write_parquet(table: pa.Table, path: Path, row_group_rows: int = 1000) -> Path:
    pq.write_table(table, path, row_group_size=row_group_rows)
    return path


def event_schema(policy: InvalidNhsPolicy = InvalidNhsPolicy.REJECT, name: str = "events") -> DatasetSchema:
    return DatasetSchema(
        name=name,
        nhs_number_column="nhs_number",
        invalid_nhs_policy=policy,
        columns=(
            ColumnSpec("nhs_number", Role.DIRECT_IDENTIFIER, Transform(TransformKind.NHS_TOKEN)),
            ColumnSpec(
                "date_of_birth",
                Role.QUASI_IDENTIFIER,
                Transform(TransformKind.DOB_AGE_BAND, {"reference_date": "2024-01-01", "width": 10}),
                output_name="age_band",
            ),
            ColumnSpec("postcode", Role.QUASI_IDENTIFIER, Transform(TransformKind.POSTCODE_DISTRICT)),
            ColumnSpec("sex", Role.QUASI_IDENTIFIER),
            ColumnSpec("event_date", Role.QUASI_IDENTIFIER, Transform(TransformKind.DATE_SHIFT, {"max_days": 30})),
            ColumnSpec("code", Role.ATTRIBUTE, valid_pattern=r"[A-Z][0-9]{2}(\.[0-9])?"),
            ColumnSpec("value", Role.ATTRIBUTE),
            ColumnSpec("note", Role.FREE_TEXT),
        ),
    )


ALL_COLUMNS = ["nhs_number", "date_of_birth", "postcode", "sex", "event_date", "code", "value", "note"]


@pytest.fixture
def linkage_key() -> bytes:
    return bytes(range(32))


@pytest.fixture
def project_key() -> bytes:
    return bytes(range(100, 132))


@pytest.fixture
def keys(linkage_key: bytes, project_key: bytes) -> ExtractKeys:
    return ExtractKeys(linkage_key=linkage_key, project_key=project_key, key_id="project-42/v1")


@pytest.fixture
def other_project_keys(linkage_key: bytes) -> ExtractKeys:
    return ExtractKeys(linkage_key=linkage_key, project_key=tokens.generate_key(), key_id="project-43/v1")


@pytest.fixture
def onboarding_app(tmp_path: Path, database_url: str) -> Iterator[Any]:
    """An app (SQLite and PostgreSQL) whose landing folder is ``tmp_path / "landing"``."""
    from tests.conftest import make_test_app
    from tre.models import metadata

    (tmp_path / "landing").mkdir()
    application = make_test_app(tmp_path / "instance", database_url, landing_dir=tmp_path / "landing")
    db = application.extensions["tre.db"]
    metadata.create_all(db.engine)
    yield application
    db.session.remove()
    db.dispose()
