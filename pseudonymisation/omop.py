"""OMOP CDM v5.4 as a recognised layout: for each clinical table this service knows, its columns
with a declared type, a role and an extract rule, its key, and its links to ``person`` and
``visit_occurrence``. Registering an OMOP folder (``pseudonymisation.omop_folders``) registers one
dataset per table found, with these presets, as its first delivery.

Presets, and why: ``person_id`` and ``visit_occurrence_id`` are local identifiers that every table
shares, so they become per-project tokens (``id_token``, one namespace per id, so a person keeps
one token across the tables of an extract and two projects' tokens never match);
``person_source_value`` and other ``*_source_value`` columns that may hold local codes or names are
dropped; year of birth and concept ids are kept; day and month of birth and datetimes are dropped;
event dates are kept as quasi-identifiers (a per-patient date shift needs an NHS number column, which
OMOP tables other than ``person`` do not carry); free text (``sig``, ``stop_reason``) is dropped.
Custodians may change any of it on the schema page. Pure: no Flask, no SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pseudonymisation.schema import ColumnSpec, DatasetSchema, InvalidNhsPolicy, Role, Transform, TransformKind

CDM_VERSION = "5.4"
SUFFIXES = (".csv", ".parquet")

# name:type:role:rule — roles d (direct identifier), q (quasi-identifier), a (attribute), f (free text);
# rules k (keep), x (drop), p (person token), v (visit token).
_TABLES: dict[str, str] = {
    "person": """person_id:integer:d:p gender_concept_id:integer:q:k year_of_birth:integer:q:k
        month_of_birth:integer:q:x day_of_birth:integer:q:x birth_datetime:string:q:x race_concept_id:integer:a:k
        ethnicity_concept_id:integer:q:k location_id:integer:q:x provider_id:integer:a:x care_site_id:integer:a:k
        person_source_value:string:d:x gender_source_value:string:q:x gender_source_concept_id:integer:a:x
        race_source_value:string:q:x race_source_concept_id:integer:a:x ethnicity_source_value:string:q:x
        ethnicity_source_concept_id:integer:a:x""",
    "observation_period": """observation_period_id:integer:a:k person_id:integer:d:p
        observation_period_start_date:date:q:k observation_period_end_date:date:q:k
        period_type_concept_id:integer:a:k""",
    "visit_occurrence": """visit_occurrence_id:integer:d:v person_id:integer:d:p visit_concept_id:integer:a:k
        visit_start_date:date:q:k visit_start_datetime:string:q:x visit_end_date:date:q:k
        visit_end_datetime:string:q:x visit_type_concept_id:integer:a:k provider_id:integer:a:x
        care_site_id:integer:a:k visit_source_value:string:a:x visit_source_concept_id:integer:a:k
        admitted_from_concept_id:integer:a:k admitted_from_source_value:string:a:x
        discharged_to_concept_id:integer:a:k discharged_to_source_value:string:a:x
        preceding_visit_occurrence_id:integer:d:v""",
    "condition_occurrence": """condition_occurrence_id:integer:a:k person_id:integer:d:p
        condition_concept_id:integer:a:k condition_start_date:date:q:k condition_start_datetime:string:q:x
        condition_end_date:date:q:k condition_end_datetime:string:q:x condition_type_concept_id:integer:a:k
        condition_status_concept_id:integer:a:k stop_reason:string:f:x provider_id:integer:a:x
        visit_occurrence_id:integer:d:v visit_detail_id:integer:a:x condition_source_value:string:a:k
        condition_source_concept_id:integer:a:k condition_status_source_value:string:a:x""",
    "drug_exposure": """drug_exposure_id:integer:a:k person_id:integer:d:p drug_concept_id:integer:a:k
        drug_exposure_start_date:date:q:k drug_exposure_start_datetime:string:q:x drug_exposure_end_date:date:q:k
        drug_exposure_end_datetime:string:q:x verbatim_end_date:date:q:x drug_type_concept_id:integer:a:k
        stop_reason:string:f:x refills:integer:a:k quantity:decimal:a:k days_supply:integer:a:k sig:string:f:x
        route_concept_id:integer:a:k lot_number:string:a:x provider_id:integer:a:x
        visit_occurrence_id:integer:d:v visit_detail_id:integer:a:x drug_source_value:string:a:k
        drug_source_concept_id:integer:a:k route_source_value:string:a:x dose_unit_source_value:string:a:x""",
    "measurement": """measurement_id:integer:a:k person_id:integer:d:p measurement_concept_id:integer:a:k
        measurement_date:date:q:k measurement_datetime:string:q:x measurement_time:string:q:x
        measurement_type_concept_id:integer:a:k operator_concept_id:integer:a:k value_as_number:decimal:a:k
        value_as_concept_id:integer:a:k unit_concept_id:integer:a:k range_low:decimal:a:k range_high:decimal:a:k
        provider_id:integer:a:x visit_occurrence_id:integer:d:v visit_detail_id:integer:a:x
        measurement_source_value:string:a:k measurement_source_concept_id:integer:a:k
        unit_source_value:string:a:x unit_source_concept_id:integer:a:x value_source_value:string:a:x
        measurement_event_id:integer:a:x meas_event_field_concept_id:integer:a:x""",
}
_ROLES = {"d": Role.DIRECT_IDENTIFIER, "q": Role.QUASI_IDENTIFIER, "a": Role.ATTRIBUTE, "f": Role.FREE_TEXT}
TABLES = tuple(_TABLES)


class OmopError(ValueError):
    """A folder that is not an OMOP CDM layout this service knows; the message is safe to show."""


@dataclass(frozen=True)
class OmopColumn:
    name: str
    data_type: str
    role: Role
    rule: TransformKind
    params: tuple[tuple[str, str], ...] = ()


def columns(table: str) -> list[OmopColumn]:
    if table not in _TABLES:
        raise OmopError(f"{table} is not an OMOP CDM table this service knows")
    out = []
    for entry in _TABLES[table].split():
        name, data_type, role, rule = entry.split(":")
        kind = {"k": TransformKind.KEEP, "x": TransformKind.DROP}.get(rule, TransformKind.ID_TOKEN)
        params = (("namespace", "omop_person" if rule == "p" else "omop_visit"),) if rule in "pv" else ()
        out.append(OmopColumn(name, data_type, _ROLES[role], kind, params))
    return out


def key_column(table: str) -> str:
    return columns(table)[0].name


def links(table: str, prefix: str) -> list[dict[str, str]]:
    """Referential rules for the delivery check: person_id and visit_occurrence_id must exist."""
    names = {c.name for c in columns(table)}
    found = []
    if table != "person" and "person_id" in names:
        found.append({"column": "person_id", "table": f"{prefix}_person", "table_column": "person_id"})
    if table not in ("visit_occurrence", "person") and "visit_occurrence_id" in names:
        found.append({"column": "visit_occurrence_id", "table": f"{prefix}_visit_occurrence",
                      "table_column": "visit_occurrence_id"})
    return found


def schema(table: str, dataset_name: str) -> DatasetSchema:
    return DatasetSchema(
        name=dataset_name,
        columns=tuple(ColumnSpec(c.name, c.role, Transform(c.rule, dict(c.params))) for c in columns(table)),
        nhs_number_column=None,
        invalid_nhs_policy=InvalidNhsPolicy.REJECT,
    )


def recognise(files: list[str]) -> dict[str, str]:
    """Which OMOP tables a folder's file names hold (``person.csv``, ``MEASUREMENT.parquet`` ...);
    refuses a folder without ``person`` or with one table twice."""
    found: dict[str, str] = {}
    for name in sorted(files):
        path = Path(name)
        table = path.stem.lower()
        if path.suffix.lower() not in SUFFIXES or table not in _TABLES:
            continue
        if table in found:
            raise OmopError(f"The folder holds the table {table} twice")
        found[table] = name
    if "person" not in found:
        raise OmopError("An OMOP CDM folder needs a person table (person.csv or person.parquet)")
    return {t: found[t] for t in TABLES if t in found}


def catalogue_columns(table: str) -> list[dict[str, Any]]:
    """The columns as the catalogue registers them."""
    return [{"name": c.name, "role": str(c.role), "data_type": c.data_type,
             "description": f"OMOP CDM v{CDM_VERSION} {table}.{c.name}"} for c in columns(table)]


__all__ = ["CDM_VERSION", "TABLES", "OmopError", "catalogue_columns", "columns", "key_column", "links",
           "recognise", "schema"]
