"""A synthetic OMOP CDM v5.4 folder for the demo and the tests: person, observation_period,
visit_occurrence, condition_occurrence, drug_exposure and measurement as CSV, every column of the
layout present (most optional ones empty), ids consistent across the tables. No real person."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from pseudonymisation import omop
from tre.core.config import INSTANCE_LANDING
from tre.core.filemodes import ensure_private_folder

# The demo's OMOP folder inside the instance's landing folder, as the OMOP page lists it.
DEMO_OMOP_FOLDER = "demo-omop"

_CONDITIONS = [201826, 320128, 4329847, 255573, 432867]  # concept ids (diabetes, hypertension ...)
_DRUGS = [1503297, 1308216, 1332418, 1112807]
_MEASUREMENTS = [3004410, 3025315, 3012888]
_ARROW_TYPES = {"integer": pa.int64(), "decimal": pa.float64(), "date": pa.date32()}


def _dates(rng: np.random.Generator, n: int, start: dt.date, days: int) -> pa.Array:
    return pa.array(rng.integers(0, days, n).astype("int32") + (start - dt.date(1970, 1, 1)).days).cast(pa.date32())


def write_omop_folder(folder: Path, persons: int = 200, seed: int = 7) -> dict[str, int]:
    """Write the six tables into ``folder``; returns the row count of each."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    person_ids = np.arange(1, persons + 1)
    visits = persons * 3
    visit_person = rng.choice(person_ids, visits)
    per_table = persons * 4
    values: dict[str, dict[str, pa.Array]] = {
        "person": {
            "person_id": pa.array(person_ids), "gender_concept_id": pa.array(rng.choice([8507, 8532], persons)),
            "year_of_birth": pa.array(rng.integers(1930, 2010, persons)),
            "race_concept_id": pa.array(np.zeros(persons, dtype=int)),
            "ethnicity_concept_id": pa.array(np.zeros(persons, dtype=int)),
            "care_site_id": pa.array(rng.integers(1, 5, persons)),
            "person_source_value": pa.array([f"P{i:06d}" for i in person_ids]),
        },
        "observation_period": {
            "observation_period_id": pa.array(person_ids), "person_id": pa.array(person_ids),
            "observation_period_start_date": _dates(rng, persons, dt.date(2015, 1, 1), 365),
            "observation_period_end_date": _dates(rng, persons, dt.date(2024, 1, 1), 365),
            "period_type_concept_id": pa.array(np.full(persons, 32817)),
        },
        "visit_occurrence": {
            "visit_occurrence_id": pa.array(np.arange(1, visits + 1)), "person_id": pa.array(visit_person),
            "visit_concept_id": pa.array(rng.choice([9201, 9202, 9203], visits)),
            "visit_start_date": _dates(rng, visits, dt.date(2018, 1, 1), 2000),
            "visit_end_date": _dates(rng, visits, dt.date(2018, 1, 1), 2000),
            "visit_type_concept_id": pa.array(np.full(visits, 32817)),
        },
    }
    for table, concept, concepts, date_col in (
        ("condition_occurrence", "condition_concept_id", _CONDITIONS, "condition_start_date"),
        ("drug_exposure", "drug_concept_id", _DRUGS, "drug_exposure_start_date"),
        ("measurement", "measurement_concept_id", _MEASUREMENTS, "measurement_date"),
    ):
        which = rng.integers(0, visits, per_table)
        cols = {
            omop.key_column(table): pa.array(np.arange(1, per_table + 1)),
            "person_id": pa.array(visit_person[which]),
            "visit_occurrence_id": pa.array(which + 1),
            concept: pa.array(rng.choice(concepts, per_table)),
            date_col: _dates(rng, per_table, dt.date(2018, 1, 1), 2000),
        }
        if table == "measurement":
            cols["value_as_number"] = pa.array(np.round(rng.normal(6.5, 1.2, per_table), 2))
        if table == "drug_exposure":
            cols["quantity"] = pa.array(rng.integers(7, 90, per_table).astype(float))
        values[table] = cols
    rows = {}
    for table, given in values.items():
        n = len(next(iter(given.values())))
        full = {}
        for c in omop.columns(table):
            if c.name in given:
                full[c.name] = given[c.name]
            else:
                full[c.name] = pa.nulls(n, _ARROW_TYPES.get(c.data_type, pa.string()))
        pacsv.write_csv(pa.table(full), folder / f"{table}.csv")
        rows[table] = n
    return rows


def load_demo_landing(instance: Path, persons: int = 200, seed: int = 7) -> Path:
    """Make the instance's landing folder (0700, the service's alone: no workspace account may enter
    it) and the demo's OMOP folder in it, written as ``tre demo omop`` writes one; a folder that
    already holds the demo's person table is left as it is. Returns the OMOP folder."""
    landing = instance / INSTANCE_LANDING
    if landing.is_symlink():
        raise ValueError(f"{landing} is a link; the instance's landing folder must be a folder of its own")
    ensure_private_folder(landing, "landing folder")
    folder = ensure_private_folder(landing / DEMO_OMOP_FOLDER, "demo OMOP folder")
    if not (folder / "person.csv").exists():
        write_omop_folder(folder, persons=persons, seed=seed)
    return folder
