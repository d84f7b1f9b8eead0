"""Tables laid out as pandas (and so ACRO) lays them out.

The engine returns every category of every dimension as floats. ``pandas.crosstab``/``pivot_table`` show
only the row and column combinations that occur in the data, keep counts as integers, give an empty cell of
a sum or mean no value (NaN), keep the value column's dtype, and name the one column of a 1-D pivot table
after the value column. Notebooks (and ACRO's tests) compare with pandas, so the session shows the same.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from disclosure.engine.tables import TableResult, to_frame

_KEEPS_DTYPE = ("sum", "min", "max", "mode", "first", "last")


def pandas_layout(
    frame: pd.DataFrame,
    result: TableResult,
    *,
    margins: bool,
    margins_name: str,
    value_name: str | None,
    value_dtype: np.dtype | None,
    dim_dtypes: dict[str, object] | None = None,
) -> pd.DataFrame:
    """``frame`` (the engine's table, released or not) reshaped and typed as pandas would show it."""
    stat = result.statistic
    records = to_frame(
        result.stats.records, result.stats, result.n_row_dims, margins=margins, margins_name=margins_name
    )
    occupied = records.to_numpy() > 0
    if stat != "count":
        frame = frame.mask(~occupied)  # an empty cell has no sum, mean or extreme
    if frame.shape[1] > 1 or len(result.stats.dims) > 1:
        rows = occupied.any(axis=1)
        cols = occupied.any(axis=0)
        frame = frame.loc[rows, cols]
    else:
        frame = frame.loc[occupied[:, 0]]
        if value_name is not None:
            frame = frame.rename(columns={"value": value_name})
    if margins:
        frame = _grand_margins_only(frame, margins_name)
    else:
        frame = _categorical_labels(frame, dim_dtypes or {})
    return _typed(frame, stat, value_dtype)


def _categorical_labels(frame: pd.DataFrame, dtypes: dict[str, object]) -> pd.DataFrame:
    """A categorical dimension labels the table with a CategoricalIndex, as pandas does (without margins)."""
    for axis in (0, 1):
        labels = frame.axes[axis]
        if not any(isinstance(dtypes.get(n), pd.CategoricalDtype) for n in labels.names):
            continue
        try:
            if isinstance(labels, pd.MultiIndex):
                levels = [
                    pd.Categorical(labels.get_level_values(i), dtype=dtypes[n])
                    if isinstance(dtypes.get(n), pd.CategoricalDtype)
                    else labels.get_level_values(i)
                    for i, n in enumerate(labels.names)
                ]
                new = pd.MultiIndex.from_arrays(levels, names=labels.names)
            else:
                new = pd.CategoricalIndex(labels, dtype=dtypes[labels.name], name=labels.name)
        except (TypeError, ValueError):
            continue
        frame = frame.set_axis(new, axis=axis)
    return frame


def _grand_margins_only(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """pandas shows one margin row/column (``All`` over every level, labelled ``(All, "")``), not subtotals."""
    for axis in (0, 1):
        labels = frame.axes[axis]
        if not isinstance(labels, pd.MultiIndex):
            continue
        in_margin = np.array([[v == name for v in t] for t in labels])
        keep = ~in_margin.any(axis=1) | in_margin.all(axis=1)
        frame = frame.loc[keep] if axis == 0 else frame.loc[:, keep]
        kept = frame.axes[axis]
        relabelled = pd.MultiIndex.from_tuples(
            [(name, *[""] * (len(t) - 1)) if all(v == name for v in t) else t for t in kept], names=kept.names
        )
        frame = frame.set_axis(relabelled, axis=axis)
    return frame


def _typed(frame: pd.DataFrame, stat: str, value_dtype: np.dtype | None) -> pd.DataFrame:
    values = frame.to_numpy()
    has_missing = bool(pd.isna(values).any())
    if stat == "count":
        target: np.dtype | None = np.dtype("int64")
    elif stat == "std":
        target = None  # pandas gives a float column's standard deviation as float64 (its variance keeps float32)
    elif value_dtype is not None and value_dtype.kind == "f":
        target = value_dtype
    elif value_dtype is not None and value_dtype.kind in "iu" and stat in _KEEPS_DTYPE:
        target = np.dtype("int64")
    else:
        target = None
    if target is None or (target.kind in "iu" and has_missing):
        return frame
    try:
        return frame.astype(target)
    except (TypeError, ValueError):
        return frame
