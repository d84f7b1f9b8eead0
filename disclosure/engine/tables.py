"""Checked tables: statistic, primary rules, mitigation and verdict in one call.

These are the entry points the researcher session and the output queue use for tables:

- ``check_frequency_table(data, dims, ...)`` and ``check_magnitude_table(data, dims, value, ...)`` start from
  the microdata, so every rule (including contributor counts and dominance) can be applied;
- ``check_published_counts(table, ...)`` starts from a released count table only (e.g. a CSV from a
  workspace); only count-based rules can be applied, so the verdict says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd

from disclosure.engine.deferred import DeferredDict
from disclosure.engine.labels import MARGIN, cell_addresses
from disclosure.engine.policy import Policy, default_policy
from disclosure.engine.rounding import round_to_base
from disclosure.engine.rules import RuleResult, frequency_rules, magnitude_rules, primary_mask
from disclosure.engine.stats import TableStats, compute_table_stats
from disclosure.engine.suppression import SuppressionResult, interval_audit, protect
from disclosure.engine.verdict import SCHEMA, combine_status

MITIGATIONS = ("none", "suppress", "round")
# Up to this many primary cells every suppressed cell gets its exact LP interval; above it the fast audit
# (box certificates, LP only where they fail) keeps large tables within seconds.
AUDIT_CELL_LIMIT = 750


@dataclass
class TableResult:
    """A checked table: true values, released values and the verdict, all in extended (margins) shape."""

    stats: TableStats
    statistic: str
    values: np.ndarray
    released: np.ndarray
    verdict: dict[str, Any]
    n_row_dims: int
    rules: list[RuleResult] = field(repr=False, default_factory=list)
    suppression: SuppressionResult | None = field(repr=False, default=None)

    def table(self, *, released: bool = True, margins: bool = False, margins_name: str = MARGIN) -> pd.DataFrame:
        """The table as a DataFrame (rows: all but the last dimension; columns: the last one)."""
        arr = self.released if released else self.values
        return to_frame(arr, self.stats, self.n_row_dims, margins=margins, margins_name=margins_name)

    def outcome(self, margins: bool = False, names: dict[str, str] | None = None) -> pd.DataFrame:
        """Per-cell outcome strings in the table's layout ("ok" or the flagged rules), as ACRO shows them;
        ``names`` renames rules (e.g. to ACRO's check names)."""
        names = names or {}
        text = np.full(self.values.shape, "", dtype=object)
        for r in self.rules:
            if r.flagged:
                text[r.mask] = text[r.mask] + names.get(r.rule, r.rule) + "; "
        text[text == ""] = "ok"
        return to_frame(text, self.stats, self.n_row_dims, margins=margins)


def to_frame(
    arr: np.ndarray, stats: TableStats, n_row_dims: int, *, margins: bool = False, margins_name: str = MARGIN
) -> pd.DataFrame:
    """Lay out an extended array as a DataFrame, with or without the margin rows and columns."""
    dims, cats = stats.dims, stats.categories
    if margins:
        cats = tuple(pd.Index(list(c) + [margins_name]) for c in cats)
        body = arr
    else:
        body = arr[stats.interior]
    if len(dims) == 1:
        return pd.DataFrame({"value": body}, index=pd.Index(cats[0], name=dims[0]))
    n_row_dims = max(1, min(n_row_dims, len(dims) - 1))
    row_dims, col_dims = dims[:n_row_dims], dims[n_row_dims:]
    row_cats, col_cats = cats[:n_row_dims], cats[n_row_dims:]
    nrows = int(np.prod([len(c) for c in row_cats]))
    ncols = int(np.prod([len(c) for c in col_cats]))

    def make_index(levels, names):
        if len(levels) == 1:
            return pd.Index(levels[0], name=names[0])
        return pd.MultiIndex.from_product(levels, names=list(names))

    # A session lays out the same table several times (shown, before mitigation, records, outcome); the
    # labels are the same each time, and pandas indexes are immutable, so they are built once per layout.
    key = ("axes", n_row_dims, margins, margins_name if margins else None)
    axes = stats.extra.get(key)
    if axes is None:
        axes = stats.extra[key] = (make_index(row_cats, row_dims), make_index(col_cats, col_dims))
    return pd.DataFrame(body.reshape(nrows, ncols), index=axes[0], columns=axes[1])


def check_frequency_table(
    data: pd.DataFrame,
    dims: list[str],
    *,
    person: str | None = None,
    policy: Policy | None = None,
    mitigation: str = "suppress",
    audit: bool | str = "auto",
    structural_zeros: np.ndarray | None = None,
    n_row_dims: int | None = None,
    output_type: str = "frequency_table",
) -> TableResult:
    """Count table over ``dims`` with the frequency rules, suppression (primary + secondary) and rounding."""
    policy = policy or default_policy()
    stats = compute_table_stats(data, dims, person=person)
    return _finish(
        stats,
        "count",
        stats.records.astype(np.float64),
        frequency_rules(stats, policy, structural_zeros),
        policy,
        mitigation,
        audit,
        n_row_dims,
        output_type,
        nonnegative=True,
    )


def check_magnitude_table(
    data: pd.DataFrame,
    dims: list[str],
    value: str,
    *,
    statistic: str = "mean",
    person: str | None = None,
    policy: Policy | None = None,
    mitigation: str = "suppress",
    audit: bool | str = "auto",
    n_row_dims: int | None = None,
) -> TableResult:
    """Sum or mean table of ``value`` over ``dims`` with the magnitude rules and suppression.

    Secondary suppression protects the additive totals behind the statistic: a mean can be turned back into
    a sum whenever counts are known, so protecting sums protects means too.
    """
    if statistic not in ("mean", "sum"):
        raise ValueError("statistic must be 'mean' or 'sum'")
    policy = policy or default_policy()
    n = max(2, int(policy.get("magnitude", "nk_n")))
    stats = compute_table_stats(data, dims, value=value, person=person, n_top=n)
    shown = stats.mean() if statistic == "mean" else stats.total
    assert stats.negatives is not None  # set whenever the table has a value column
    return _finish(
        stats,
        statistic,
        shown,
        magnitude_rules(stats, policy),
        policy,
        mitigation,
        audit,
        n_row_dims,
        "magnitude_table",
        nonnegative=not bool(stats.negatives.any()),
        additive=stats.total,
    )


def _finish(
    stats,
    statistic,
    values,
    rules,
    policy,
    mitigation,
    audit,
    n_row_dims,
    output_type,
    nonnegative,
    additive=None,
) -> TableResult:
    if mitigation not in MITIGATIONS:
        raise ValueError(f"mitigation must be one of {MITIGATIONS}")
    n_row_dims = len(stats.dims) - 1 if n_row_dims is None else n_row_dims
    primary = primary_mask(rules)
    assert primary is not None  # both rule sets start with the threshold rule, which fails and is suppressible
    released = values.astype(np.float64, copy=True)
    suppression = None
    if mitigation != "none" and primary.any():
        additive = values if additive is None else additive
        required = _required_width(policy, statistic, additive)
        eligible = np.ones(values.shape, dtype=bool)
        run_audit = _audit_mode(audit, primary)
        if policy.get("suppression", "secondary"):
            suppression = protect(
                additive,
                primary,
                required,
                eligible=eligible,
                nonnegative=nonnegative,
                audit=run_audit,
                max_rounds=policy.get("suppression", "max_audit_rounds"),
            )
        else:
            # A policy without secondary suppression still gets audited, so the verdict shows what leaks.
            report = interval_audit(additive, primary, primary, required, nonnegative) if run_audit else None
            suppression = SuppressionResult(primary, primary.copy(), report, 0)
        released[suppression.suppressed] = np.nan
    rounding = None
    if mitigation == "round":  # every released value, as ACRO rounds them; the rules protect means, not this
        base = policy.get("rounding", "base")
        redacted = np.isnan(released)
        released = round_to_base(np.where(redacted, 0, released), base, redacted)
        rounding = {"base": base, "totals": policy.get("rounding", "totals")}
    verdict = table_verdict(stats, statistic, output_type, rules, policy, mitigation, suppression, rounding)
    return TableResult(stats, statistic, values, released, verdict, n_row_dims, rules, suppression)


def _audit_mode(audit: bool | str, primary: np.ndarray) -> bool | str:
    """ "auto" picks the exact LP audit for small tables and the fast certificate audit for large ones."""
    if audit == "auto":
        return "exact" if int(primary.sum()) <= AUDIT_CELL_LIMIT else "fast"
    if audit not in (True, False, "exact", "fast"):
        raise ValueError("audit must be 'auto', 'exact', 'fast', True or False")
    return audit


def _required_width(policy: Policy, statistic: str, additive: np.ndarray) -> np.ndarray:
    """Protection level per cell: a fixed width for counts, a share of the value for magnitudes."""
    if statistic == "count":
        return np.full(additive.shape, float(policy.get("suppression", "count_protection")))
    share = float(policy.get("suppression", "magnitude_protection"))
    return np.maximum(share * np.abs(additive), 1e-9)


def table_verdict(
    stats: TableStats,
    statistic: str,
    output_type: str,
    rules: list[RuleResult],
    policy: Policy,
    mitigation: str,
    suppression: SuppressionResult | None,
    rounding: dict | None,
) -> dict[str, Any]:
    """Build the JSON verdict: per output, per rule (criterion) and per flagged or mitigated cell."""
    criteria: list[dict[str, Any]] = []
    reasons = []
    for r in rules:
        status = r.severity if r.flagged else "pass"
        criteria.append(
            {
                "rule": r.rule,
                "parameters": r.parameters,
                "severity": r.severity,
                "cells_flagged": r.flagged,
                "status": status,
            }
        )
        if r.flagged:
            reasons.append(f"{r.rule}: {r.flagged} cell(s) {r.reason}")
    before = combine_status(c["status"] for c in criteria)
    suppressed = suppression.suppressed if suppression is not None else np.zeros(stats.records.shape, bool)
    primary = suppression.primary if suppression is not None else np.zeros(stats.records.shape, bool)
    after = before
    mitigation_record: dict[str, Any] = {"applied": [], "mitigation": mitigation}
    if suppression is not None:
        mitigation_record["applied"].append("suppression")
        audit = suppression.audit
        exposed = audit.exposed if audit is not None else []  # worked out once: it checks every interval
        audit_record: dict[str, Any]
        if audit is None:
            audit_record = {"status": "not_run", "reason": "the caller turned the interval audit off"}
        else:
            audit_record = {
                "status": "exposed" if exposed else ("unproven" if audit.unproven else "protected"),
                "method": audit.method,
                "scope": audit.scope,
                "lp_solved": audit.lp_solved,
                "intervals": [],  # filled with the cell records (below), when first read
                "unproven": [],
            }
        mitigation_record["suppression"] = {
            "primary": int(primary.sum()),
            "secondary": int((suppressed & ~primary).sum()),
            "audit": audit_record,
        }
        if suppression.fallback:
            mitigation_record["suppression"]["fallback"] = {
                "step": suppression.fallback,
                "cells_added": suppression.fallback_cells,
            }
            reasons.append(
                f"partner suppression alone left cells recoverable; {suppression.fallback_cells} more cell(s) "
                f"suppressed ({_FALLBACK_WORDS[suppression.fallback]})"
            )
        remaining = [r.severity for r in rules if r.flagged and not r.suppressible]
        after = combine_status(remaining + ["review"])
        if audit is not None and exposed:
            after = "fail"
            reasons.append(f"interval audit: {len(exposed)} suppressed cell(s) recoverable too closely")
        elif audit is None:
            reasons.append("secondary suppression applied; interval audit not run")
        elif audit.unproven:
            reasons.append(f"interval audit: {len(audit.unproven)} primary cell(s) not yet proven protected")
        else:
            reasons.append(
                f"suppression: {int(primary.sum())} primary and "
                f"{int((suppressed & ~primary).sum())} secondary cell(s); interval audit proved "
                "every primary cell protected"
            )
    if rounding is not None:
        mitigation_record["applied"].append("rounding")
        mitigation_record["rounding"] = rounding
    ready = {
        "schema": SCHEMA,
        "output_type": output_type,
        "statistic": statistic,
        "status": after,
        "status_before_mitigation": before,
        "policy": policy.identity(),
        "dims": list(stats.dims),
        "shape": list(stats.shape),
        "contributors": "distinct people" if stats.person_level else "records",
        "criteria": criteria,
        "reasons": reasons,
    }

    audit = suppression.audit if suppression is not None else None
    # Kept as a few lists of numbers, not thousands of interval objects, until the records are read.
    interval_columns = _interval_columns(audit.intervals) if audit is not None else None
    unproven = list(audit.unproven) if audit is not None else []

    def build() -> dict[str, Any]:
        cells, labelled = _cell_records(stats, rules, suppressed, primary)
        if interval_columns is not None:
            audit_record = mitigation_record["suppression"]["audit"]
            audit_record["intervals"] = _interval_records(stats, interval_columns, labelled)
            audit_record["unproven"] = _addresses(stats, unproven)
        return {"cells": cells, "mitigation": mitigation_record}

    return DeferredDict(ready, build, _VERDICT_ORDER)


_VERDICT_ORDER = (
    "schema",
    "output_type",
    "statistic",
    "status",
    "status_before_mitigation",
    "policy",
    "dims",
    "shape",
    "contributors",
    "criteria",
    "cells",
    "mitigation",
    "reasons",
)


def _cell_records(
    stats: TableStats, rules: list[RuleResult], suppressed: np.ndarray, primary: np.ndarray
) -> tuple[list[dict[str, Any]], dict[int, tuple[str, dict[str, Any], list[str]]]]:
    """One record per flagged or suppressed cell (address, status, rules, action), and the addresses by
    flat index for the audit's intervals."""
    interesting = suppressed.copy()
    for r in rules:
        interesting |= r.mask
    cells = []
    where = np.argwhere(interesting)
    flat = (
        cast(np.ndarray, np.ravel_multi_index(where.T, interesting.shape))
        if len(where)
        else np.zeros(0, dtype=np.int64)
    )
    hits = np.stack([r.mask.ravel()[flat] for r in rules], axis=1) if rules else np.zeros((len(flat), 0), bool)
    sup_at = suppressed.ravel()[flat]
    prim_at = primary.ravel()[flat]
    addresses = cell_addresses(stats.dims, stats.categories, where)
    # Every suppressed cell is listed here, so the audit's intervals below reuse these labels.
    labelled = {cell: (a["key"], a["labels"], a["margin"]) for cell, a in zip(flat.tolist(), addresses, strict=True)}
    # Cells differ only in which rules hit them and what was done: each combination (its "kind") is worked
    # out once, and the kinds of thousands of cells are told apart by numpy, not a Python loop.
    flags = np.concatenate([hits, sup_at[:, None], prim_at[:, None]], axis=1)
    width = flags.shape[1]
    if width <= 62:  # a kind's flags as the bits of one integer: np.unique of rows sorts far more slowly
        bits = np.arange(width, dtype=np.int64)
        kind_codes, kind_of = np.unique(flags.astype(np.int64) @ (np.int64(1) << bits), return_inverse=True)
        kind_rows = ((kind_codes[:, None] >> bits) & 1).astype(bool)
    else:
        kind_rows, kind_of = np.unique(flags, axis=0, return_inverse=True)
    kinds: list[tuple[str, list[str], list[str], str]] = []
    for row in kind_rows.tolist():
        hit_row, is_sup, is_prim = row[: len(rules)], row[-2], row[-1]
        hit = [r for r, h in zip(rules, hit_row, strict=True) if h]
        if is_sup:
            action = "suppressed_primary" if is_prim else "suppressed_secondary"
        else:
            action = "released"
        statuses = [r.severity for r in hit if not (is_sup and r.suppressible)]
        cell_status = combine_status(statuses) if statuses else ("review" if is_sup else "pass")
        kinds.append((cell_status, [r.rule for r in hit], [r.reason for r in hit], action))
    for address, kind in zip(addresses, kind_of.reshape(-1).tolist(), strict=True):
        cell_status, names, reasons_hit, action = kinds[kind]
        address.update(status=cell_status, rules=names.copy(), reasons=reasons_hit.copy(), action=action)
        cells.append(address)
    return cells, labelled


_FALLBACK_WORDS = {
    "lines": "whole rows or columns through the exposed cells",
    "planes": "whole planes through the exposed cells",
    "table": "every cell of the table",
}


_INTERVAL_FIELDS = ("index", "lower", "upper", "required", "primary", "protected", "method")


def _interval_columns(intervals: list) -> dict[str, list]:
    """The audit's intervals as one list per field (the same numbers, without an object per cell)."""
    return {
        "index": [c.index for c in intervals],
        "lower": [c.lower for c in intervals],
        "upper": [c.upper for c in intervals],
        "required": [c.required for c in intervals],
        "primary": [c.primary for c in intervals],
        "protected": [c.protected for c in intervals],
        "method": [c.method for c in intervals],
    }


def _interval_records(
    stats: TableStats, columns: dict[str, list], labelled: dict[int, tuple[str, dict[str, Any], list[str]]]
) -> list[dict[str, Any]]:
    """The audit's interval of each cell with the cell's address, copied from the addresses already made
    for the verdict's cell list (thousands of cells: each record is built once, in one step)."""
    indices = columns["index"]
    if all(i in labelled for i in indices):
        addresses = [labelled[i] for i in indices]
    else:
        addresses = [(a["key"], a["labels"], a["margin"]) for a in _addresses(stats, indices)]
    out = []
    for (key, labels, margin), lower, upper, required, primary, protected, method in zip(
        addresses, *(columns[f] for f in _INTERVAL_FIELDS[1:]), strict=True
    ):
        out.append(
            {
                "key": key,
                "labels": dict(labels),
                "margin": list(margin),
                "lower": lower,
                "upper": upper,
                "width": upper - lower,
                "required": required,
                "primary": primary,
                "protected": protected,
                "method": method,
            }
        )
    return out


def _addresses(stats: TableStats, flat_indices: list[int]) -> list[dict[str, Any]]:
    """Label addresses of cells given by flat index into the extended table."""
    where = np.stack(np.unravel_index(np.asarray(flat_indices, dtype=np.int64), stats.records.shape), axis=1)
    return cell_addresses(stats.dims, stats.categories, where)


def numbers(table: pd.DataFrame) -> np.ndarray:
    """The frame's cells as floats, what is not a number as NaN (``pd.to_numeric`` with ``errors="coerce"``
    on each column). Columns that are numbers already (NumPy integers or floats, as a published table is
    read) are taken as they are: applying the conversion to them per column changes nothing and cost more
    than the rest of a small table's check."""
    if table.shape[1] and all(isinstance(dt, np.dtype) and dt.kind in "iuf" for dt in table.dtypes):
        return table.to_numpy(dtype=np.float64)
    return table.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)


def check_published_counts(
    table: pd.DataFrame,
    *,
    has_margins: bool = False,
    policy: Policy | None = None,
    mitigation: str = "suppress",
    audit: bool | str = "auto",
) -> TableResult:
    """Check a count table given without its microdata (e.g. a CSV): rows x columns of counts.

    Contributors cannot be told from records here, so the threshold applies to the counts and the verdict
    is at best "review" with that reason. ``has_margins`` says the last row and column are totals (they are
    then checked for consistency, and a mismatch fails the table: the numbers cannot be trusted).
    """
    policy = policy or default_policy()
    body = numbers(table)
    withheld_cells = np.isnan(body[:-1, :-1] if has_margins else body)
    if has_margins:
        inner = body[:-1, :-1]
        consistent = (
            np.allclose(inner.sum(axis=0), body[-1, :-1])
            and np.allclose(inner.sum(axis=1), body[:-1, -1])
            and np.isclose(inner.sum(), body[-1, -1])
        )
        body = inner
    else:
        consistent = True
    index = table.index[:-1] if has_margins else table.index
    columns = table.columns[:-1] if has_margins else table.columns
    ext = np.zeros((body.shape[0] + 1, body.shape[1] + 1))
    ext[:-1, :-1] = np.nan_to_num(body)
    ext[-1, :-1] = ext[:-1, :-1].sum(axis=0)
    ext[:-1, -1] = ext[:-1, :-1].sum(axis=1)
    ext[-1, -1] = ext[:-1, :-1].sum()
    counts = ext.astype(np.int64)
    row_name = index.name if index.name is not None else "row"
    col_name = columns.name if columns.name is not None else "column"
    stats = TableStats(
        dims=(str(row_name), str(col_name)),
        categories=(pd.Index(index), pd.Index(columns)),
        records=counts,
        contributors=counts,
        has_values=False,
    )
    rules = frequency_rules(stats, policy)
    if withheld_cells.any():
        # A blank or marked cell was withheld in the file: it is not a count (not a zero), and the totals
        # it belongs to are unknown, so no rule judges them.
        unknown = np.zeros(ext.shape, dtype=bool)
        unknown[:-1, :-1] = withheld_cells
        unknown[-1, :-1] = withheld_cells.any(axis=0)
        unknown[:-1, -1] = withheld_cells.any(axis=1)
        unknown[-1, -1] = True
        for rule in rules:
            rule.mask = rule.mask & ~unknown
    result = _finish(
        stats, "count", ext, rules, policy, mitigation, audit, 1, "published_count_table", nonnegative=True
    )
    if withheld_cells.any():
        result.released[:-1, :-1][withheld_cells] = np.nan
        result.verdict["withheld_cells"] = int(withheld_cells.sum())
        result.verdict["reasons"].append(
            f"{int(withheld_cells.sum())} cell(s) blank or marked as suppressed in the file: read as withheld, "
            "not as counts"
        )
    result.verdict["contributors"] = "unknown (no microdata): counts treated as contributors"
    result.verdict["status"] = combine_status([result.verdict["status"], "review"])
    result.verdict["reasons"].append("checked without microdata: contributors and dominance not verifiable")
    if not consistent:
        result.verdict["status"] = "fail"
        result.verdict["reasons"].append("the table's margins do not equal the sums of its cells")
    return result
