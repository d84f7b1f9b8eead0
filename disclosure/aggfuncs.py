"""Which statistic a researcher's ``aggfunc`` asks for, in the names the checks know.

A string names the statistic itself; a numpy or builtin function is known by its name. Any other function
cannot be read, so what it reveals cannot be checked from its code. What leaves the session is only the
table of numbers it makes, though: when those numbers are, cell by cell, the numbers of exactly one statistic
the checks cover, releasing them is releasing that statistic's table, and that statistic's checks apply
(scipy's ``mode`` on cells with one modal value is the table of ``"mode"``). A function whose numbers match
none, or more than one, is refused as before (docs/disclosure/acro-differences.md, "Custom aggfuncs").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

_FUNCTION_NAMES = {"amin": "min", "amax": "max", "nanmedian": "median", "nanmean": "mean", "nanmin": "min"}
_FUNCTION_NAMES |= {"nanmax": "max", "nansum": "sum"}
_AMBIGUOUS = {"std", "var", "nanstd", "nanvar"}  # numpy's ddof=0 differs from pandas' ddof=1
# The statistics a function's table is compared with, each as the checks compute it.
CANDIDATES = ("count", "sum", "mean", "median", "std", "var", "min", "max", "mode")
# A function summing in another order differs from ours in the last digits; what is released is ours.
_RTOL = 1e-9


def aggfunc_name(f: Any) -> Any:
    """The statistic an aggfunc names: a string, or a numpy/builtin function by its name (missing values
    skipped, as pandas' string aggfuncs do). numpy's std/var are refused: their ddof=0 is not pandas'. Any
    other callable is returned as it is, for ``matching_statistic`` to identify by its values."""
    if f is None or isinstance(f, str):
        return f
    name = getattr(f, "__name__", None)
    if isinstance(name, str) and name in _AMBIGUOUS:
        raise unsupported(f)
    if isinstance(name, str) and (name in _FUNCTION_NAMES or name in CANDIDATES):
        return _FUNCTION_NAMES.get(name, name)
    if callable(f):
        return f
    raise unsupported(f)


def unsupported(f: Any, why: str = "") -> ValueError:
    return ValueError(
        f"aggfunc {f!r} is not supported by the automated checks{why}; name it as a string (e.g. 'std', "
        "pandas' sample standard deviation) or use custom_output()"
    )


def matching_statistic(
    f: Callable,
    data: pd.DataFrame,
    dims: list[str],
    value: str,
    values_of: Callable[[str], tuple[np.ndarray, tuple[pd.Index, ...]] | None],
) -> str:
    """The one statistic of ``CANDIDATES`` whose cells equal ``f``'s on this table, else ValueError.

    ``values_of(statistic)`` gives that statistic's cell values (interior, extended table's categories) as the
    checks compute them, or None when it does not apply to this column."""
    grouped = data.groupby(dims, observed=True, dropna=True)[value].agg(f)
    matches = []
    for statistic in CANDIDATES:
        computed = values_of(statistic)
        if computed is None:
            continue
        ours, categories = computed
        theirs = np.full(ours.shape, np.nan)
        keys = grouped.index
        where = [
            cats.get_indexer(keys.get_level_values(i) if isinstance(keys, pd.MultiIndex) else keys)
            for i, cats in enumerate(categories)
        ]
        found = np.logical_and.reduce([w >= 0 for w in where])
        try:
            theirs[tuple(w[found] for w in where)] = np.asarray(grouped.to_numpy()[found], dtype=np.float64)
        except (TypeError, ValueError):
            raise unsupported(f) from None  # not numbers: nothing to compare
        observed = np.zeros(ours.shape, dtype=bool)
        observed[tuple(w[found] for w in where)] = True
        if not observed.any():
            continue
        if np.allclose(ours[observed], theirs[observed], rtol=_RTOL, atol=0.0, equal_nan=True):
            matches.append(statistic)
    if not matches:
        raise unsupported(f, ": its values are not those of any statistic the checks cover")
    if len(matches) > 1:
        raise unsupported(f, f": on this table its values are those of several statistics ({', '.join(matches)})")
    return matches[0]
