"""Table specifications: what an output is, precisely enough to re-compute it from the extract.

The output queue should not trust the researcher's process: given the spec and the project's extract it
re-computes the table with the engine and compares. A spec is plain JSON:

    {"dataset": "extract.parquet", "filters": [{"column": "age", "op": ">=", "value": 18}],
     "dims": ["region", "sex"], "n_row_dims": 1, "statistic": "count" | "sum" | "mean",
     "value": "cost" | null, "person": "pid" | null}
"""

from __future__ import annotations

import operator
from typing import Any

import pandas as pd

from disclosure.engine.policy import Policy
from disclosure.engine.tables import TableResult, check_frequency_table, check_magnitude_table

_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


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
    """Build a spec dict (validated: unknown filter operators are rejected now, not at re-compute time)."""
    for f in filters or []:
        if f.get("op") not in _OPS and f.get("op") not in ("in", "notna"):
            raise ValueError(f"unsupported filter operator {f.get('op')!r}")
    return {
        "dataset": dataset,
        "filters": list(filters or []),
        "dims": list(dims),
        "n_row_dims": len(dims) - 1 if n_row_dims is None else n_row_dims,
        "statistic": statistic,
        "value": value,
        "person": person,
    }


def apply_filters(data: pd.DataFrame, filters: list[dict]) -> pd.DataFrame:
    """Rows of ``data`` meeting every filter (the population the table describes)."""
    mask = pd.Series(True, index=data.index)
    for f in filters:
        col = data[f["column"]]
        if f["op"] == "in":
            mask &= col.isin(f["value"])
        elif f["op"] == "notna":
            mask &= col.notna()
        else:
            mask &= _OPS[f["op"]](col, f["value"])
    return data[mask]


def recompute(
    spec: dict[str, Any], data: pd.DataFrame, *, policy: Policy | None = None, mitigation: str = "suppress"
) -> TableResult:
    """Re-compute and re-check a table from its spec and the extract it names."""
    rows = apply_filters(data, spec.get("filters", []))
    if spec["statistic"] == "count":
        return check_frequency_table(
            rows,
            spec["dims"],
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
