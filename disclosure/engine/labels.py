"""Cell addresses that survive JSON: labels of any type become plain JSON values.

A checker must be able to find a flagged cell in the table they see, so cells are addressed by their labels
(not by positions, which change when a table is re-ordered). Labels can be numpy integers or floats, strings,
categoricals, dates or tuples (multi-level), so each is converted to the nearest JSON value.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any, cast

import numpy as np
import pandas as pd

MARGIN = "All"


def jsonable(value: Any) -> Any:
    """Convert one label (or statistic) to a JSON-serialisable value without losing its meaning."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        if math.isnan(f):
            return None
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if isinstance(value, pd.Timestamp | _dt.date | _dt.datetime):
        return value.isoformat()
    if isinstance(value, pd.Interval):
        return str(value)
    if isinstance(value, tuple):
        return [jsonable(v) for v in value]
    return str(value)


def cell_address(dims: tuple[str, ...], categories: tuple[pd.Index, ...], position: tuple[int, ...]) -> dict[str, Any]:
    """Address of a cell of an extended table: labels per dimension, and which dimensions are margins."""
    labels: dict[str, Any] = {}
    margin: list[str] = []
    for dim, cats, i in zip(dims, categories, position, strict=True):
        if i >= len(cats):
            labels[dim] = None
            margin.append(dim)
        else:
            labels[dim] = jsonable(cats[i])
    key = "|".join(f"{d}={MARGIN if d in margin else labels[d]}" for d in dims)
    return {"key": key, "labels": labels, "margin": margin}


def cell_addresses(
    dims: tuple[str, ...], categories: tuple[pd.Index, ...], positions: np.ndarray
) -> list[dict[str, Any]]:
    """``cell_address`` of many cells (rows of ``positions``), converting each label once, not once per cell."""
    dims = tuple(dims)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, len(dims))
    labels = [[jsonable(c) for c in cats] + [None] for cats in categories]
    parts = [
        [f"{d}={lab}" for lab in per_axis[:-1]] + [f"{d}={MARGIN}"] for d, per_axis in zip(dims, labels, strict=True)
    ]
    # Picked by numpy from object arrays of each axis's labels: thousands of cells are common.
    label_cols = [_pick(labels[a], positions[:, a]) for a in range(len(dims))]
    keys = ["|".join(t) for t in zip(*[_pick(parts[a], positions[:, a]) for a in range(len(dims))], strict=True)]
    sizes = np.array([len(c) for c in categories], dtype=np.int64)
    at_margin = positions >= sizes
    any_margin = cast(list[bool], at_margin.any(axis=1).tolist())
    margin_rows = at_margin.tolist()
    return [
        {
            "key": key,
            "labels": dict(zip(dims, labs, strict=True)),
            "margin": [d for d, m in zip(dims, row, strict=True) if m] if has else [],
        }
        for key, labs, has, row in zip(keys, zip(*label_cols, strict=True), any_margin, margin_rows, strict=True)
    ]


def _pick(items: list[Any], at: np.ndarray) -> list[Any]:
    """``[items[i] for i in at]``, the same objects, taken in one numpy step."""
    table = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):  # one at a time: a label may itself be a list (a tuple label)
        table[i] = item
    return cast(list[Any], table[at].tolist())
