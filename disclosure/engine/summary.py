"""Checked tables of order statistics and dispersion: median, quantiles, IQR, std, var, min, max, mode.

The statistics a "Table 1" reports beside counts and means. None of them is additive (a median of cells is
not the cell of medians), so a suppressed cell cannot be recovered from its row and column: only the cells a
rule fails are suppressed (primary suppression), with no secondary pattern and no interval audit.

Per statistic (docs/disclosure/rules.md, "Tables of medians, spreads, extremes and modes"):

- median, ``qNN`` (the NN-th centile) and ``iqr``: at least ``[quantile] threshold`` contributors, and at
  least ``[quantile] min_either_side`` contributors strictly below and strictly above each quantile
  reported (for ``iqr`` both the 25th and the 75th centile);
- std and var: at least ``[dispersion] threshold`` contributors, ``n - 1 >= [dispersion] min_dof``, and not
  every contributor having the same value (a spread of 0 reveals each one);
- min and max: an individual's exact value, so every cell is flagged: ``review`` without mitigation
  (``[extremes] table_status``), suppressed when the session suppresses;
- mode: the middle of tied values (deterministic); at least ``[mode] threshold`` contributors; not every
  contributor holding the modal value (class disclosure); and a modal value fewer than ``[mode] frequent``
  contributors hold needs ``[mode] min_either_side`` contributors strictly below and above it, as a
  quantile does (a modal category few hold is not released).

Contributors are distinct people when ``person`` names an id column, else records; the statistic itself is
computed over records, as pandas computes it.
"""

from __future__ import annotations

import re
from itertools import combinations

import numpy as np
import pandas as pd

from disclosure.engine.policy import Policy, default_policy
from disclosure.engine.rounding import round_to_base
from disclosure.engine.rules import RuleResult, primary_mask
from disclosure.engine.stats import TableStats, compute_table_stats
from disclosure.engine.suppression import SuppressionResult

QUANTILE_NAME = re.compile(r"^q(\d{1,2})$")
SUMMARY_STATISTICS = ("median", "iqr", "std", "var", "min", "max", "mode")


def is_summary_statistic(name: str) -> bool:
    """Whether ``name`` is a statistic this module checks (``q5``, ``q25``, ``q75``... included)."""
    return name in SUMMARY_STATISTICS or QUANTILE_NAME.match(name) is not None


def _quantiles_of(statistic: str) -> list[float]:
    if statistic == "median":
        return [0.5]
    if statistic == "iqr":
        return [0.25, 0.75]
    m = QUANTILE_NAME.match(statistic)
    if m is None:
        return []
    q = int(m.group(1))
    if not 0 < q < 100:
        raise ValueError("quantiles are q1 .. q99")
    return [q / 100]


def _distinct(cell: np.ndarray, pcodes: np.ndarray | None, ncells: int) -> np.ndarray:
    """Distinct contributors per cell among these rows (records when there is no person column)."""
    if pcodes is None:
        return np.bincount(cell, minlength=ncells).astype(np.int64)
    npersons = int(pcodes.max(initial=-1)) + 1
    units = np.unique(cell.astype(np.int64) * max(npersons, 1) + pcodes)
    return np.bincount(units // max(npersons, 1), minlength=ncells).astype(np.int64)


def _group_quantile(cell: np.ndarray, x: np.ndarray, ncells: int, q: float) -> np.ndarray:
    """Linear-interpolation quantile per cell (pandas' and numpy's default), NaN for empty cells.

    ``x`` arrives sorted (``_extended`` sorts the rows once), so a stable sort by cell leaves each cell's
    values in order: a radix sort of small integers instead of a lexsort per margin.
    """
    small = np.uint16 if ncells <= np.iinfo(np.uint16).max else np.uint32
    order = np.argsort(cell.astype(small), kind="stable")  # numpy radix-sorts 16-bit integers
    sx = x[order]
    n = np.bincount(cell, minlength=ncells)
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    out = np.full(ncells, np.nan)
    has = n > 0
    h = (n[has] - 1) * q
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, n[has] - 1)
    xlo, xhi = sx[starts[has] + lo], sx[starts[has] + hi]
    out[has] = xlo + (h - lo) * (xhi - xlo)
    return out


def _cell_summary(
    statistic: str, cell: np.ndarray, x: np.ndarray, pcodes: np.ndarray | None, ncells: int
) -> dict[str, np.ndarray]:
    """The statistic and the numbers its rule needs, per cell, over rows with a value."""
    out: dict[str, np.ndarray] = {"contributors": _distinct(cell, pcodes, ncells)}
    quantiles = _quantiles_of(statistic)
    if quantiles:
        values = [_group_quantile(cell, x, ncells, q) for q in quantiles]
        sides = []
        for v in values:
            below, above = x < v[cell], x > v[cell]
            sides.append(
                np.minimum(
                    _distinct(cell[below], None if pcodes is None else pcodes[below], ncells),
                    _distinct(cell[above], None if pcodes is None else pcodes[above], ncells),
                )
            )
        out["value"] = values[0] if len(values) == 1 else values[1] - values[0]
        out["either_side"] = np.minimum.reduce(sides)
    elif statistic in ("std", "var"):
        n = np.bincount(cell, minlength=ncells)
        mean = np.bincount(cell, weights=x, minlength=ncells) / np.maximum(n, 1)
        ss = np.bincount(cell, weights=(x - mean[cell]) ** 2, minlength=ncells)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(n > 1, ss / np.maximum(n - 1, 1), np.nan)
        out["value"] = var if statistic == "var" else np.sqrt(var)
        low, high = np.full(ncells, np.inf), np.full(ncells, -np.inf)
        np.minimum.at(low, cell, x)
        np.maximum.at(high, cell, x)
        out["identical"] = (n >= 2) & (low == high)
    elif statistic in ("min", "max"):
        ext = np.full(ncells, np.inf if statistic == "min" else -np.inf)
        (np.minimum if statistic == "min" else np.maximum).at(ext, cell, x)
        ext[~np.isfinite(ext)] = np.nan
        out["value"] = ext
    elif statistic == "mode":
        # Distinct contributors per observed (cell, value) pair; the mode is the value most hold. Among tied
        # values the middle one (the lower of two middles) is reported: deterministic, and never the cell's
        # minimum or maximum when more than two values tie (the smallest of all-distinct values would be the
        # cell's minimum, one person's exact value).
        distinct, vcodes = np.unique(x, return_inverse=True)
        width = max(len(distinct), 1)
        pair = cell.astype(np.int64) * width + vcodes
        if pcodes is None:
            pairs, holders = np.unique(pair, return_counts=True)
        else:
            npersons = int(pcodes.max(initial=-1)) + 1
            units = np.unique(pair * max(npersons, 1) + pcodes)
            pairs, holders = np.unique(units // max(npersons, 1), return_counts=True)
        pair_cell, pair_value = pairs // width, pairs % width
        most = np.zeros(ncells, np.int64)
        np.maximum.at(most, pair_cell, holders)
        tied = np.flatnonzero(holders == most[pair_cell])  # sorted by (cell, value)
        ties = np.bincount(pair_cell[tied], minlength=ncells)
        starts = np.concatenate([[0], np.cumsum(ties)[:-1]])
        has = ties > 0
        best = tied[starts[has] + (ties[has] - 1) // 2]
        out["value"] = np.full(ncells, np.nan)
        out["modal_count"] = np.zeros(ncells, np.int64)
        out["value"][pair_cell[best]] = distinct[pair_value[best]]
        out["modal_count"][pair_cell[best]] = holders[best]
        with np.errstate(invalid="ignore"):
            below, above = x < out["value"][cell], x > out["value"][cell]
        out["either_side"] = np.minimum(
            _distinct(cell[below], None if pcodes is None else pcodes[below], ncells),
            _distinct(cell[above], None if pcodes is None else pcodes[above], ncells),
        )
    else:
        raise ValueError(f"unknown summary statistic {statistic!r}")
    return out


def _extended(
    statistic: str, codes: list[np.ndarray], shape: tuple[int, ...], x: np.ndarray, pcodes: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Per-cell results with margins, each margin recomputed from its rows (medians do not add up)."""
    ndim = len(shape)
    ext_shape = tuple(n + 1 for n in shape)
    if _quantiles_of(statistic):
        by_value = np.argsort(x, kind="stable")  # once, for every margin's quantiles
        codes, x = [c[by_value] for c in codes], x[by_value]
        pcodes = None if pcodes is None else pcodes[by_value]
    result: dict[str, np.ndarray] = {}
    for r in range(ndim, -1, -1):
        for kept in combinations(range(ndim), r):
            sub = tuple(shape[a] for a in kept)
            code = np.ravel_multi_index([codes[a] for a in kept], sub) if kept else np.zeros(len(x), np.int64)
            part = _cell_summary(statistic, code, x, pcodes, int(np.prod(sub)) if kept else 1)
            index = tuple(slice(0, shape[a]) if a in kept else shape[a] for a in range(ndim))
            for key, arr in part.items():
                if key not in result:
                    result[key] = np.zeros(ext_shape, dtype=arr.dtype)
                result[key][index] = arr.reshape(sub)
    return result


def summary_rules(
    statistic: str, stats: TableStats, cells: dict[str, np.ndarray], policy: Policy, mitigation: str
) -> list[RuleResult]:
    """The primary rules of one summary statistic (see the module docstring)."""
    n = cells["contributors"]
    present = n > 0
    if _quantiles_of(statistic):
        t, side = policy.get("quantile", "threshold"), policy.get("quantile", "min_either_side")
        return [
            RuleResult("threshold", {"threshold": t}, "fail", present & (n < t), f"fewer than {t} contributors"),
            RuleResult(
                "quantile_either_side",
                {"min_either_side": side},
                "fail",
                present & (cells["either_side"] < side),
                f"fewer than {side} contributors strictly below or above the quantile, so it is close to one "
                "person's value",
            ),
        ]
    if statistic in ("std", "var"):
        t, dof = policy.get("dispersion", "threshold"), policy.get("dispersion", "min_dof")
        return [
            RuleResult("threshold", {"threshold": t}, "fail", present & (n < t), f"fewer than {t} contributors"),
            RuleResult(
                "degrees_of_freedom",
                {"min_dof": dof},
                "fail",
                present & (n - 1 < dof),
                f"fewer than {dof} degrees of freedom (contributors - 1)",
            ),
            RuleResult(
                "identical_values",
                {},
                "fail",
                cells["identical"],
                "every contributor has the same value, so a spread of 0 reveals each one",
            ),
        ]
    if statistic in ("min", "max"):
        t = policy.get("magnitude", "threshold")
        word = "minimum" if statistic == "min" else "maximum"
        severity = "fail" if mitigation != "none" else policy.get("extremes", "table_status")
        return [
            RuleResult("threshold", {"threshold": t}, "fail", present & (n < t), f"fewer than {t} contributors"),
            RuleResult(
                "exact_extreme",
                {"statistic": statistic},
                severity,
                present,
                f"the {word} is one individual's exact value",
            ),
        ]
    t, frequent = policy.get("mode", "threshold"), policy.get("mode", "frequent")
    side = policy.get("mode", "min_either_side")
    rare = present & (cells["modal_count"] < frequent)
    rules = [
        RuleResult("threshold", {"threshold": t}, "fail", present & (n < t), f"fewer than {t} contributors"),
        RuleResult(
            "identical_values",
            {},
            "fail",
            present & (cells["modal_count"] == n),
            "every contributor holds the modal value, so it reveals each one's value",
        ),
    ]
    if cells["nominal"]:
        # A category has no "below" or "above": a modal category few people hold is not released.
        rules.append(
            RuleResult(
                "mode_threshold",
                {"frequent": frequent},
                "fail",
                rare,
                f"fewer than {frequent} contributors hold the modal category",
            )
        )
    else:
        rules.append(
            RuleResult(
                "mode_either_side",
                {"frequent": frequent, "min_either_side": side},
                "fail",
                rare & (cells["either_side"] < side),
                f"fewer than {frequent} contributors hold the modal value and fewer than {side} lie strictly below "
                "or above it, so it is close to one person's value",
            )
        )
    return rules


def check_summary_table(
    data: pd.DataFrame,
    dims: list[str],
    value: str,
    *,
    statistic: str,
    person: str | None = None,
    policy: Policy | None = None,
    mitigation: str = "suppress",
    n_row_dims: int | None = None,
):
    """A table of ``statistic`` of ``value`` over ``dims`` with its rules and primary suppression."""
    from disclosure.engine.tables import MITIGATIONS, TableResult, table_verdict

    if not is_summary_statistic(statistic):
        raise ValueError(f"statistic must be one of {SUMMARY_STATISTICS} or qNN")
    if mitigation not in MITIGATIONS:
        raise ValueError(f"mitigation must be one of {MITIGATIONS}")
    policy = policy or default_policy()
    labels = None
    column = data[value]
    if statistic == "mode" and not pd.api.types.is_numeric_dtype(column):
        # The modal category of a categorical column: count over label codes, report the label.
        stats = compute_table_stats(data, dims, person=person)
        codes_of_value, labels = pd.factorize(column, sort=True, use_na_sentinel=True)
        x = np.where(codes_of_value >= 0, codes_of_value, np.nan).astype(np.float64)
    else:
        stats = compute_table_stats(data, dims, value=value, person=person)
        x = pd.to_numeric(column).to_numpy(dtype=np.float64, na_value=np.nan)
    codes = [cats.get_indexer(data[d]) for d, cats in zip(stats.dims, stats.categories, strict=True)]
    keep = ~np.isnan(x)
    for c in codes:
        keep &= c >= 0
    pcodes = None
    if person is not None:
        pcodes = pd.factorize(data[person], use_na_sentinel=True)[0]
        unknown = pcodes < 0  # an unknown person counts as their own contributor, as in the other tables
        if unknown.any():
            pcodes[unknown] = pcodes.max(initial=-1) + 1 + np.arange(int(unknown.sum()))
        pcodes = pcodes[keep]
    cells = _extended(statistic, [c[keep] for c in codes], stats.shape, x[keep], pcodes)
    cells["nominal"] = np.asarray(labels is not None)
    rules = summary_rules(statistic, stats, cells, policy, mitigation)
    values = cells["value"].astype(np.float64)
    if labels is not None:
        found = ~np.isnan(values)
        shown = np.full(values.shape, np.nan, dtype=object)
        shown[found] = np.asarray(labels, dtype=object)[values[found].astype(np.int64)]
        values = shown
    released = values.copy()
    primary = primary_mask(rules)
    suppression = None
    if mitigation != "none" and primary is not None and primary.any():
        suppression = SuppressionResult(primary, primary.copy(), None, 0)
        released[primary] = np.nan
    rounding = None
    if mitigation == "round" and labels is None:
        base = policy.get("rounding", "base")
        redacted = np.isnan(released)
        released = round_to_base(np.where(redacted, 0, released), base, redacted)
        rounding = {"base": base, "totals": policy.get("rounding", "totals")}
    n_row_dims = len(stats.dims) - 1 if n_row_dims is None else n_row_dims
    verdict = table_verdict(stats, statistic, "summary_table", rules, policy, mitigation, suppression, rounding)
    if suppression is not None:
        note = "not needed: the statistic is not additive, so no suppressed cell can be recovered from margins"
        verdict["mitigation"]["suppression"]["audit"] = {"status": "not_needed", "reason": note}
        verdict["reasons"] = [
            f"suppression: {int(suppression.primary.sum())} cell(s); secondary suppression {note}"
            if r == "secondary suppression applied; interval audit not run"
            else r
            for r in verdict["reasons"]
        ]
    return TableResult(stats, statistic, values, released, verdict, n_row_dims, rules, suppression)
