"""Table specifications: what an output is, precisely enough to re-compute it from the extract.

The output queue should not trust the researcher's process: given the spec and the project's extract it
re-computes the table with the engine and compares. A spec is plain JSON:

    {"dataset": "extract.parquet", "filters": [{"column": "age", "op": ">=", "value": 18}] | null,
     "dims": ["region", "sex"], "n_row_dims": 1, "statistic": "count" | "sum" | "mean" | "median" | "qNN"
     | "iqr" | "std" | "var" | "min" | "max" | "mode",
     "value": "cost" | null, "person": "pid" | null}
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from disclosure.engine.policy import Policy
from disclosure.engine.population import mask, validate
from disclosure.engine.summary import check_summary_table, is_summary_statistic
from disclosure.engine.tables import TableResult, check_frequency_table, check_magnitude_table


def table_spec(
    dims: list[str],
    statistic: str,
    *,
    value: str | None = None,
    person: str | None = None,
    dataset: str | None = None,
    filters: list[dict] | None = None,
    n_row_dims: int | None = None,
) -> dict[str, Any]:
    """Build a spec dict (validated: unknown filter operators are rejected now, not at re-compute time).

    ``filters=None`` records that the filters are unknown (not captured): such a spec cannot be re-computed.
    """
    if filters is not None:
        validate(filters)
    return {
        "dataset": dataset,
        "filters": None if filters is None else list(filters),
        "dims": list(dims),
        "n_row_dims": len(dims) - 1 if n_row_dims is None else n_row_dims,
        "statistic": statistic,
        "value": value,
        "person": person,
    }


def apply_filters(data: pd.DataFrame, filters: list[dict]) -> pd.DataFrame:
    """Rows of ``data`` meeting every filter (the population the table describes)."""
    if filters is None:
        raise ValueError("the table's filters are unknown (not captured): it cannot be re-computed")
    validate(filters)
    return data[mask(data, filters)]


def recompute(
    spec: dict[str, Any], data: pd.DataFrame, *, policy: Policy | None = None, mitigation: str = "suppress"
) -> TableResult:
    """Re-compute and re-check a table from its spec and the extract it names."""
    rows = apply_filters(data, spec.get("filters", []))  # None (unknown) raises ValueError
    if spec["statistic"] == "count":
        return check_frequency_table(
            rows,
            spec["dims"],
            person=spec.get("person"),
            policy=policy,
            mitigation=mitigation,
            n_row_dims=spec.get("n_row_dims"),
        )
    if is_summary_statistic(spec["statistic"]):
        return check_summary_table(
            rows,
            spec["dims"],
            spec["value"],
            statistic=spec["statistic"],
            person=spec.get("person"),
            policy=policy,
            mitigation=mitigation,
            n_row_dims=spec.get("n_row_dims"),
        )
    return check_magnitude_table(
        rows,
        spec["dims"],
        spec["value"],
        statistic=spec["statistic"],
        person=spec.get("person"),
        policy=policy,
        mitigation=mitigation,
        n_row_dims=spec.get("n_row_dims"),
    )
