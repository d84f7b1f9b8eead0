"""A published summary table without its microdata: counts beside medians, means, spreads, percentages.

The most common research output is a "Table 1" written by plain pandas (``groupby(...).agg(["count",
"median", "std"]).to_csv()``): one row per group, a column of the number of people and columns of
statistics. Without a table specification the file's headers are all there is to tell a count from a
statistic, so ``column_roles`` reads them by whole tokens (a header is split on ``_``, spaces, ``.``, ``-``
and other punctuation, and a two-row pandas header gives the tokens of both levels): ``los_median`` and
``median_los`` are medians of ``los``, ``standard`` is not ``sd``. A column whose name says nothing known
stays a count (deny by default: it is judged as strictly as a count).

``check_published_summary`` then checks the count columns exactly as ``check_published_counts`` does and
each statistic cell with the rules of ``engine.summary`` that need no microdata, its contributors being
its row's count (docs/disclosure/rules.md, "Summary tables without microdata"). A statistic is not
additive, so it gets no secondary suppression and its column has no total worked out from its cells.
Without microdata the verdict is at best ``review``; a statistic with no count in its row sends the file
to a checker with that reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from disclosure.engine.labels import cell_addresses
from disclosure.engine.policy import Policy, default_policy
from disclosure.engine.published import PublishedTable
from disclosure.engine.tables import MITIGATIONS, check_published_counts
from disclosure.engine.verdict import SCHEMA, combine_status

# Whole tokens naming the number of people (or records) in a row.
COUNT_WORDS = frozenset(
    {
        "n",
        "count",
        "counts",
        "freq",
        "frequency",
        "frequencies",
        "number",
        "num",
        "patients",
        "people",
        "persons",
        "participants",
        "subjects",
        "individuals",
        "cases",
        "records",
    }
)
# A count of these is not the number of people behind a statistic (``n_missing`` counts the others).
NOT_CONTRIBUTORS = frozenset({"missing", "miss", "nmiss", "excluded", "unknown", "na"})
# Whole tokens naming a statistic, and the statistic they name.
STATISTIC_WORDS = {
    "median": "median",
    "mean": "mean",
    "avg": "mean",
    "average": "mean",
    "sd": "sd",
    "std": "sd",
    "stdev": "sd",
    "stddev": "sd",
    "sem": "sd",
    "var": "var",
    "variance": "var",
    "iqr": "iqr",
    "lq": "quantile",
    "uq": "quantile",
    "quartile": "quantile",
    "quantile": "quantile",
    "percentile": "quantile",
    "centile": "quantile",
    "min": "min",
    "minimum": "min",
    "max": "max",
    "maximum": "max",
    "mode": "mode",
    "%": "percent",
    "pct": "percent",
    "percent": "percent",
    "percentage": "percent",
    "proportion": "percent",
    "prop": "percent",
}
# Two tokens that together name a statistic (neither alone does: "standard" is not "sd").
STATISTIC_PAIRS = {
    ("standard", "deviation"): "sd",
    ("standard", "error"): "sd",
    ("std", "err"): "sd",
    ("std", "error"): "sd",
}
_QUANTILE = re.compile(r"^([qp])(\d{1,2})$")  # q1, q3, q25, p50; p975 is not one (three digits)
# A numbered token is also a quarter (Q1..Q4) or a period (P1..P13) of a count table. It is read as a
# quantile only beside a column that names a statistic in words, and only when its table numbers no
# quarter or period a quantile is never written as (Q2, Q4; P3, P4, P6...): else it stays a count.
_QUANTILE_NUMBERS = {
    "q": frozenset({1, 3, 5, 10, 25, 50, 75, 90, 95, 99}),
    "p": frozenset({1, 5, 10, 25, 50, 75, 90, 95, 99}),
}
_TOKEN = re.compile(r"%|[^\W_]+")
# An extreme is one person's value: a column naming one among others is judged as the extreme.
_PRECEDENCE = ("min", "max")

# Which policy section's threshold applies to each statistic (as engine.summary applies them), and what
# cannot be checked without the values behind the cell.
_THRESHOLD = {
    "median": "quantile",
    "quantile": "quantile",
    "iqr": "quantile",
    "mean": "magnitude",
    "sd": "dispersion",
    "var": "dispersion",
    "min": "magnitude",
    "max": "magnitude",
    "mode": "mode",
    "percent": "frequency",
}
_NOT_CHECKABLE = {
    "median": ("quantile_either_side",),
    "quantile": ("quantile_either_side",),
    "iqr": ("quantile_either_side",),
    "mean": ("nk_dominance", "p_percent", "identical_values"),
    "mode": ("identical_values", "mode_either_side"),
}


@dataclass(frozen=True)
class ColumnRole:
    """What a value column holds: ``count`` or a statistic, of which variable, and whether its name said so."""

    kind: str  # "count", or median, quantile, iqr, mean, sd, var, min, max, mode, percent
    variable: tuple[str, ...] = ()  # the header's other tokens ("los" of "los_median")
    named: bool = False  # a count the header names (n, count...), not a column of unknown meaning

    @property
    def is_count(self) -> bool:
        return self.kind == "count"


def header_tokens(label: Any) -> list[str]:
    """The lower-case whole tokens of a column header (every level of a multi-row header)."""
    levels = label if isinstance(label, tuple) else (label,)
    return [t for level in levels for t in _TOKEN.findall(str(level).lower())]


def column_role(label: Any, *, numbered: bool = True) -> ColumnRole:
    """The role a column's header gives it; unknown names are counts (deny by default). ``numbered``
    False: ``q25``, ``p50`` are not read as quantiles (``column_roles`` decides it for a whole table)."""
    tokens = header_tokens(label)
    kinds: list[str] = []
    used: set[int] = set()
    for i in range(len(tokens) - 1):
        pair = STATISTIC_PAIRS.get((tokens[i], tokens[i + 1]))
        if pair is not None:
            kinds.append(pair)
            used |= {i, i + 1}
    for i, token in enumerate(tokens):
        if i in used:
            continue
        kind = STATISTIC_WORDS.get(token) or ("quantile" if numbered and _QUANTILE.match(token) else None)
        if kind is not None:
            kinds.append(kind)
            used.add(i)
    counted = [i for i, t in enumerate(tokens) if i not in used and t in COUNT_WORDS]
    variable = tuple(t for i, t in enumerate(tokens) if i not in used and i not in counted)
    if kinds:
        kind = next((k for k in _PRECEDENCE if k in kinds), kinds[0])
        return ColumnRole(kind, variable)
    named = bool(counted) and not any(t in NOT_CONTRIBUTORS for t in tokens)
    return ColumnRole("count", variable, named=named)


def column_roles(columns: pd.Index) -> list[ColumnRole]:
    """The role of each column of one table (numbered tokens are judged over the whole table)."""
    worded = [column_role(label, numbered=False) for label in columns]
    found = [_QUANTILE.match(t) for label in columns for t in header_tokens(label)]
    numbers = [(m.group(1), int(m.group(2))) for m in found if m is not None]
    if not numbers or all(r.is_count for r in worded):
        return worded
    if any(n not in _QUANTILE_NUMBERS[letter] for letter, n in numbers):
        return worded  # quarters or periods: counts
    return [column_role(label) for label in columns]


def is_summary_table(table: PublishedTable) -> bool:
    """A table with at least one statistic column and no total column (a total of statistics is not a
    layout this reads: such a file keeps the count check, the stricter one)."""
    return table.row_margin is None and any(not r.is_count for r in column_roles(table.values.columns))


def count_column_of(roles: list[ColumnRole], j: int) -> int | None:
    """The column holding the number of people behind statistic column ``j``: the named count of the same
    variable, else the table's one named count without a variable, else the table's one named count."""
    named = [k for k, r in enumerate(roles) if r.is_count and r.named]
    for candidates in (
        [k for k in named if roles[k].variable == roles[j].variable],
        [k for k in named if not roles[k].variable],
        named,
    ):
        if len(candidates) == 1:
            return candidates[0]
    return None


@dataclass
class SummaryCheck:
    """A checked summary table: the verdict, the released values (interior, then the file's total row and
    a total column, as ``TableResult.released`` lays them out), consistency notes of its count columns, and
    the count table a release ledger may record (``None`` unless the table has exactly one count column)."""

    verdict: dict[str, Any]
    released: np.ndarray
    roles: list[ColumnRole]
    notes: list[str] = field(default_factory=list)
    counts: PublishedTable | None = None


def _stat_rules(kind: str, policy: Policy, mitigation: str) -> list[tuple[str, dict, str, str]]:
    """(rule, parameters, severity, reason) of a statistic, as engine.summary words them."""
    t = policy.get(_THRESHOLD[kind], "threshold")
    rules = [("threshold", {"threshold": t}, "fail", f"fewer than {t} contributors")]
    if kind in ("sd", "var"):
        dof = policy.get("dispersion", "min_dof")
        rules.append(
            ("degrees_of_freedom", {"min_dof": dof}, "fail", f"fewer than {dof} degrees of freedom (contributors - 1)")
        )
        rules.append(
            ("identical_values", {}, "fail", "every contributor has the same value, so a spread of 0 reveals each one")
        )
    if kind in ("min", "max"):
        word = "minimum" if kind == "min" else "maximum"
        severity = "fail" if mitigation != "none" else policy.get("extremes", "table_status")
        rules.append(("exact_extreme", {"statistic": kind}, severity, f"the {word} is one individual's exact value"))
    return rules


# The count check's own per-rule reasons are replaced by ones that tell printed cells from worked-out totals,
# and its "without microdata" line by this check's.
_COUNT_RULE_PREFIXES = ("threshold:", "zeros:", "class_disclosure:", "checked without microdata")
_SUPPRESSION_FIGURES = re.compile(r"^suppression: \d+ primary and \d+ secondary cell\(s\)")
_UNKNOWN = "unknown_contributors"
_UNKNOWN_REASON = "statistics without the number of people behind them: no count in the row"


def check_published_summary(
    table: PublishedTable,
    *,
    policy: Policy | None = None,
    mitigation: str = "suppress",
    audit: bool | str = "auto",
) -> SummaryCheck:
    """Check a published summary table (see the module docstring); ``is_summary_table`` must hold."""
    if mitigation not in MITIGATIONS:
        raise ValueError(f"mitigation must be one of {MITIGATIONS}")
    if not is_summary_table(table):
        raise ValueError("not a summary table: no statistic column, or a total column")
    policy = policy or default_policy()
    frame = table.values
    roles = column_roles(frame.columns)
    n_r, n_c = frame.shape
    has_total = table.col_margin is not None
    # The file's rows as the statistics see them: its total row is one more row of people.
    body = frame.to_numpy(dtype=np.float64)
    if has_total:
        body = np.vstack([body, table.col_margin.to_numpy(dtype=np.float64)])  # type: ignore[union-attr]
    count_cols = [j for j, r in enumerate(roles) if r.is_count]
    stat_cols = [j for j, r in enumerate(roles) if not r.is_count]

    released = np.full((n_r + 1, n_c + 1), np.nan)
    released[: body.shape[0], :n_c] = body
    index = frame.index
    row_dim = str(index.name) if index.name is not None else "row"
    col_dim = str(frame.columns.name) if frame.columns.name is not None else "column"
    dims = (row_dim, col_dim)
    categories = (pd.Index(index), pd.Index(frame.columns))

    cells: list[dict[str, Any]] = []
    criteria: list[dict[str, Any]] = []
    reasons: list[str] = []
    before: list[str] = []
    after: list[str] = ["review"]
    mitigation_record: dict[str, Any] = {"applied": [], "mitigation": mitigation}
    withheld = 0
    printed_rows = n_r + int(has_total)

    # Counts: exactly as a published count table (its margins are totals anyone can add up).
    count_verdict: dict[str, Any] | None = None
    count_cells: list[dict[str, Any]] = []
    one_column = len(count_cols) == 1
    if count_cols:
        result = check_published_counts(frame.iloc[:, count_cols], policy=policy, mitigation=mitigation, audit=audit)
        count_verdict = result.verdict
        count_released = np.asarray(result.released, dtype=np.float64)
        released[:n_r, count_cols] = count_released[:n_r, : len(count_cols)]
        released[n_r, count_cols] = count_released[-1, : len(count_cols)]
        # A total row the file prints is matched by label; the row totals of one count column are that
        # column's own cells again, so they are not listed twice.
        count_cells = [c for c in count_verdict["cells"] if not (one_column and col_dim in c.get("margin", []))]
        cells += count_cells
        criteria += [{**k, "columns": "counts"} for k in count_verdict["criteria"]]
        before.append(count_verdict["status_before_mitigation"])
        after.append(count_verdict["status"])
        withheld += int(count_verdict.get("withheld_cells", 0))
        if "suppression" in count_verdict["mitigation"]:
            mitigation_record["applied"].append("suppression")
            mitigation_record["suppression"] = count_verdict["mitigation"]["suppression"]

    # Statistics: each cell judged by its row's count; flagged cells suppressed alone (not additive).
    flagged: dict[tuple[str, str], int] = {}
    primary = 0
    unknown_columns: list[str] = []
    not_checked: dict[str, list[str]] = {}
    positions: list[tuple[int, int]] = []
    stat_cells: list[dict[str, Any]] = []
    as_count = policy.get("frequency", "threshold")
    as_count_reason = f"fewer than {as_count}, judged as a count: the row gives no count to judge it by"
    for j in stat_cols:
        role = roles[j]
        label = _label_text(frame.columns[j])
        k = count_column_of(roles, j)
        rules = _stat_rules(role.kind, policy, mitigation)
        for rule in _NOT_CHECKABLE.get(role.kind, ()):
            not_checked.setdefault(rule, [])
            if role.kind not in not_checked[rule]:
                not_checked[rule].append(role.kind)
        column_flags = {name: 0 for name, *_ in rules}
        for i in range(printed_rows):
            value = body[i, j]
            if np.isnan(value):
                withheld += 1
                continue
            n = body[i, k] if k is not None else np.nan
            hit: list[tuple[str, str, str]] = []  # (rule, severity, reason)
            if np.isnan(n):
                hit.append((_UNKNOWN, "review", _UNKNOWN_REASON if k is None else "the row's count is withheld"))
                if label not in unknown_columns:
                    unknown_columns.append(label)
                # Deny by default: with no count to judge it by, the cell is judged as strictly as a count
                # (a heading that reads like a statistic may head counts: "Maximum security" in a crosstab).
                if value < as_count:
                    hit.append(("threshold", "fail", as_count_reason))
                    column_flags["threshold"] += 1
            else:
                for name, params, severity, reason in rules:
                    fails = {
                        "threshold": n < params.get("threshold", 0),
                        "degrees_of_freedom": n - 1 < params.get("min_dof", 0),
                        "identical_values": n >= 2 and value == 0,
                        "exact_extreme": True,
                    }[name]
                    if fails:
                        hit.append((name, severity, reason))
                        column_flags[name] += 1
            if not hit:
                continue
            suppress = mitigation != "none" and any(name != _UNKNOWN for name, *_ in hit)
            statuses = [s for name, s, _ in hit if not (suppress and name != _UNKNOWN)]
            if suppress:
                primary += 1
                released[i, j] = np.nan  # row n_r is the file's total row, as in ``released``
            positions.append((i, j))
            stat_cells.append(
                {
                    "status": combine_status(statuses) if statuses else "review",
                    "rules": [name for name, *_ in hit],
                    "reasons": [why for *_, why in hit],
                    "action": "suppressed_primary" if suppress else "released",
                }
            )
            for name, severity, why in hit:
                flagged[(name, why)] = flagged.get((name, why), 0) + 1
                before.append(severity)
                if not (suppress and name != _UNKNOWN):
                    after.append(severity)
        for name, params, severity, _ in rules:
            criteria.append(
                {
                    "rule": name,
                    "parameters": {**params, "statistic": role.kind},
                    "severity": severity,
                    "cells_flagged": column_flags[name],
                    "status": severity if column_flags[name] else "pass",
                    "columns": label,
                    "counted_by": _counted_by(frame, roles, j),
                }
            )

    # Addressed by label in one call (each label converted once, not once per cell).
    for address, found in zip(
        cell_addresses(dims, categories, np.array(positions, dtype=np.int64).reshape(-1, 2)), stat_cells, strict=True
    ):
        address.update(found)
        cells.append(address)

    # Reasons: what each rule found in the count cells the file prints, then in totals worked out from them
    # (a total the file does not print is still released: anyone can add the column up).
    if count_verdict is not None:
        shown: dict[tuple[str, str], int] = {}
        worked_out: dict[tuple[str, str], int] = {}
        for c in count_cells:
            margin = c.get("margin", [])
            target = shown if not margin or (margin == [row_dim] and has_total) else worked_out
            for rule, why in zip(c.get("rules", []), c.get("reasons", []), strict=False):
                target[(rule, why)] = target.get((rule, why), 0) + 1
        for (rule, why), n in shown.items():
            extra = worked_out.pop((rule, why), 0)
            tail = f", and {extra} total(s) worked out from them that the file does not print" if extra else ""
            reasons.append(f"{rule}: {n} count cell(s) {why}{tail}")
        for (rule, why), n in worked_out.items():
            reasons.append(f"{rule}: {n} total(s) worked out from the counts (not printed in the file) {why}")
        kept = [r for r in count_verdict["reasons"] if not r.startswith(_COUNT_RULE_PREFIXES)]
        if one_column:  # the suppression's figures without the row totals that repeat the cells
            actions = [c.get("action") for c in count_cells]
            figures = (
                f"suppression: {actions.count('suppressed_primary')} primary and "
                f"{actions.count('suppressed_secondary')} secondary cell(s)"
            )
            kept = [_SUPPRESSION_FIGURES.sub(figures, r) for r in kept]
        reasons += kept
    for (rule, why), n in flagged.items():
        if rule == _UNKNOWN:
            continue
        reasons.append(f"{rule}: {n} statistic cell(s) {why}")
    if unknown_columns:
        reasons.append(
            f"statistics without the number of people behind them: {', '.join(unknown_columns)} (no count column "
            "of the same row to judge them by, or its cell withheld): a checker decides"
        )
    if primary:
        mitigation_record["applied"] = sorted(set(mitigation_record["applied"]) | {"suppression"})
        mitigation_record["statistics"] = {
            "primary": primary,
            "secondary": 0,
            "reason": "not needed: a statistic is not additive, so no suppressed cell can be recovered from totals",
        }
        reasons.append(f"suppression: {primary} statistic cell(s), no secondary cell (statistics do not add up)")
    if not_checked:
        words = "; ".join(f"{rule} ({', '.join(kinds)})" for rule, kinds in sorted(not_checked.items()))
        reasons.append(f"not checkable without microdata: {words}")
    reasons.append(
        "checked without microdata: each statistic's contributors are its row's count, counts are treated as "
        "contributors, and dominance is not verifiable"
    )
    status_before = combine_status(before + ["review"])
    verdict: dict[str, Any] = {
        "schema": SCHEMA,
        "output_type": "published_summary_table",
        "statistic": "summary",
        "status": combine_status(after),
        "status_before_mitigation": status_before,
        "policy": policy.identity(),
        "dims": list(dims),
        "shape": [n_r, n_c],
        "contributors": "unknown (no microdata): a statistic's contributors are its row's count",
        "columns": [
            {"column": _label_text(frame.columns[j]), "role": roles[j].kind, "counted_by": _counted_by(frame, roles, j)}
            for j in range(n_c)
        ],
        "criteria": criteria,
        "cells": cells,
        "mitigation": mitigation_record,
        "reasons": reasons,
    }
    if withheld:
        verdict["withheld_cells"] = withheld
    return SummaryCheck(verdict, released, roles, _count_notes(table, count_cols), _ledger_table(table, count_cols))


def _counted_by(frame: pd.DataFrame, roles: list[ColumnRole], j: int) -> str | None:
    k = None if roles[j].is_count else count_column_of(roles, j)
    return None if k is None else _label_text(frame.columns[k])


def _label_text(label: Any) -> str:
    return " / ".join(str(v) for v in label) if isinstance(label, tuple) else str(label)


def _count_notes(table: PublishedTable, count_cols: list[int]) -> list[str]:
    """The reader's consistency note, over the count columns only: a total row of medians is no sum."""
    if table.col_margin is None or not count_cols:
        return []
    inner = table.values.iloc[:, count_cols].to_numpy(dtype=np.float64)
    given = table.col_margin.to_numpy(dtype=np.float64)[count_cols]
    complete = ~np.isnan(inner).any(axis=0)
    sums = np.nansum(inner, axis=0)
    if np.any(complete & ~np.isnan(given) & ~np.isclose(sums, given)):
        return ["the total row does not equal the sum of its cells"]
    return []


def _ledger_table(table: PublishedTable, count_cols: list[int]) -> PublishedTable | None:
    """The counts a release ledger may record: the table's one count column, a one-way count table by the
    row labels (with the file's total). Several count columns (``los_n``, ``age_n``) count the same people
    over the same rows: they are no cross-table, and none of them is recorded."""
    if len(count_cols) != 1:
        return None
    j = count_cols[0]
    margin = None if table.col_margin is None else table.col_margin.iloc[[j]]
    return PublishedTable(list(table.row_dims), list(table.col_dims), table.values.iloc[:, [j]], col_margin=margin)
