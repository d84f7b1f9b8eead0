"""The checker's view of a table: the submitted CSV as a grid, each cell carrying what the automated
check found there, beside the same table after the policy's suppression.

Pure: bytes and the stored verdict in, plain data out (no Flask, no database), so the page template
only lays it out. Cells are matched to the verdict by their labels (the verdict addresses cells by
label, never by position), a margin by the label ``All`` of each dimension it sums over.

The "after mitigation" grid is the disclosure engine's suppression of the submitted numbers under the
current policy (primary cells, then secondary cells chosen so that none can be recovered from the
totals, checked by the engine's fast interval audit); in a table of statistics without a specification
(``engine.published_summary``) a statistic cell is suppressed alone, by its row's count, never as a
count. It is what the checker can ask the researcher to release instead; it is worked out on the page,
for tables up to ``MAX_PREVIEW_CELLS`` cells, and never stored. A table made through the session whose
cells are not counts (means, medians, sums...: its specification says) or a differentially private one
gets no preview: the file's numbers alone cannot say how many people are behind a mean, and noise needs no
suppression.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from disclosure.engine import check_published_counts
from disclosure.engine.dpcheck import is_dp_spec
from disclosure.engine.labels import MARGIN, jsonable
from disclosure.engine.published import PublishedTable, UnreadableTable, read_published_table
from disclosure.engine.published_summary import check_published_summary, is_summary_table

# The suppression preview is worked out while the page waits, with the engine's fast (certificate)
# interval audit: the exact LP audit took 2.8 s on a 2,500-cell table, the fast one 0.06 s
# (benchmarks/table_review.py); cells it cannot prove protected are reported as unproven, not hidden.
MAX_PREVIEW_CELLS = 10_000
MAX_ROWS_SHOWN = 500

# A short mark per rule, printed in the cell, so that a flag is never told by colour alone.
RULE_MARKS: dict[str, tuple[str, str]] = {
    "threshold": ("T", "Threshold"),
    "zeros": ("Z", "Zero count"),
    "class_disclosure": ("C", "Class disclosure"),
    "nk_dominance": ("D", "Dominance (n, k)"),
    "p_percent": ("P", "p% rule"),
    "identical_values": ("I", "Identical values"),
    "negatives": ("N", "Negative values"),
    "missing": ("M", "Missing values"),
    "degrees_of_freedom": ("F", "Degrees of freedom"),
    "exact_extreme": ("E", "Exact extreme value"),
    "quantile_either_side": ("Q", "Too few either side of the quantile"),
    "unknown_contributors": ("U", "Number of people not given"),
}

ACTION_WORDS = {
    "suppressed_primary": "suppressed (primary: the cell breaks a rule)",
    "suppressed_secondary": "suppressed (secondary: protects a primary cell from the totals)",
    "withheld": "withheld in the submitted file",
}


@dataclass(frozen=True)
class Cell:
    text: str
    status: str = "pass"  # pass, review, fail: the worst rule that holds in this cell
    rules: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    action: str = ""  # "", suppressed_primary, suppressed_secondary, withheld
    total: bool = False

    @property
    def marks(self) -> str:
        return "".join(RULE_MARKS.get(r, ("?", r))[0] for r in self.rules)

    @property
    def described(self) -> str:
        """What a screen reader says after the value: every flag and mark in words."""
        words = [f"{RULE_MARKS.get(r, ('', r))[1]}: {why}" for r, why in zip(self.rules, self.reasons, strict=False)]
        if self.action:
            words.append(ACTION_WORDS.get(self.action, self.action))
        return "; ".join(words)


@dataclass(frozen=True)
class Grid:
    row_dims: list[str]
    col_dims: list[str]
    columns: list[str]  # column headings (multi-level labels joined with " / ")
    rows: list[tuple[list[str], list[Cell]]]
    truncated: bool = False

    @property
    def flagged(self) -> int:
        return sum(1 for _, cells in self.rows for c in cells if c.rules)

    @property
    def suppressed(self) -> int:
        return sum(1 for _, cells in self.rows for c in cells if c.action)


@dataclass(frozen=True)
class LegendEntry:
    rule: str
    mark: str
    name: str
    reason: str
    severity: str
    cells: int


@dataclass
class TableReview:
    before: Grid | None = None
    after: Grid | None = None
    after_note: str = ""
    legend: list[LegendEntry] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    unreadable: str = ""
    status: str = ""
    reasons: list[str] = field(default_factory=list)


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " / ".join(_text(v) for v in value)
    if value is None:
        return MARGIN
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _flat(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [s for v in value for s in _flat(v)]
    return [_text(jsonable(value))]


def _verdict_key(cell: dict[str, Any], dims: list[str]) -> tuple[str, ...]:
    labels = cell.get("labels") or {}
    margin = set(cell.get("margin") or [])
    parts: list[str] = []
    for d in dims or list(labels):
        parts += [MARGIN] if d in margin else _flat(labels.get(d))
    return tuple(parts)


def _number_text(value: float) -> str:
    if np.isnan(value):
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _cells_by_key(verdict: dict[str, Any]) -> dict[tuple[str, ...], dict[str, Any]]:
    dims = list(verdict.get("dims") or [])
    return {_verdict_key(c, dims): c for c in verdict.get("cells") or [] if isinstance(c, dict)}


def _grid(
    table: PublishedTable,
    values: np.ndarray,
    flags: dict[tuple[str, ...], dict[str, Any]],
    withheld_in_file: np.ndarray | None,
) -> Grid:
    """``values`` in the extended shape (interior, then a total row and column when there are any)."""
    frame = table.values
    n_rows, n_cols = frame.shape
    one_way = n_cols == 1

    def find(row_key: list[str], col_key: list[str]) -> dict[str, Any] | None:
        return flags.get(tuple(row_key + col_key)) or (flags.get(tuple(row_key)) if one_way else None)

    def cell(r: int, c: int, row_key: list[str], col_key: list[str], total: bool) -> Cell:
        value = values[r, c]
        hit = find(row_key, col_key) or {}
        action = hit.get("action", "")
        action = action if action.startswith("suppressed") else ""
        if not action and np.isnan(value) and withheld_in_file is not None and withheld_in_file[r, c]:
            action = "withheld"
        status = hit.get("status", "pass") if hit.get("rules") else "pass"
        return Cell(
            text=_number_text(value),
            status=status,
            rules=tuple(hit.get("rules") or ()),
            reasons=tuple(hit.get("reasons") or ()),
            action=action,
            total=total,
        )

    has_total_col = values.shape[1] > n_cols
    has_total_row = values.shape[0] > n_rows
    col_keys = [_flat(label) for label in frame.columns]
    columns = [" / ".join(k) for k in col_keys] + (["Total"] if has_total_col else [])
    rows: list[tuple[list[str], list[Cell]]] = []
    shown = min(n_rows, MAX_ROWS_SHOWN)
    for r in range(shown):
        row_key = _flat(frame.index[r])
        line = [cell(r, c, row_key, col_keys[c], False) for c in range(n_cols)]
        if has_total_col:
            line.append(cell(r, n_cols, row_key, [MARGIN] * len(col_keys[0]), True))
        rows.append((row_key, line))
    if has_total_row:
        row_key = [MARGIN] * max(1, len(table.row_dims))
        line = [cell(n_rows, c, row_key, col_keys[c], True) for c in range(n_cols)]
        if has_total_col:
            line.append(cell(n_rows, n_cols, row_key, [MARGIN] * len(col_keys[0]), True))
        rows.append((["Total"] + [""] * (len(row_key) - 1), line))
    return Grid(list(table.row_dims), list(table.col_dims), columns, rows, truncated=n_rows > shown)


def _submitted_values(table: PublishedTable) -> np.ndarray:
    """The file's numbers in the extended shape: its own totals where it has them, else none."""
    body = table.values.to_numpy(dtype=float)
    n_rows, n_cols = body.shape
    extra_col = table.row_margin is not None
    extra_row = table.col_margin is not None
    out = np.full((n_rows + extra_row, n_cols + extra_col), np.nan)
    out[:n_rows, :n_cols] = body
    if extra_col:
        out[:n_rows, n_cols] = table.row_margin.to_numpy(dtype=float)  # type: ignore[union-attr]
    if extra_row:
        out[n_rows, :n_cols] = table.col_margin.to_numpy(dtype=float)  # type: ignore[union-attr]
    if extra_col and extra_row and table.grand_total is not None:
        out[n_rows, n_cols] = table.grand_total
    return out


def _legend(verdicts: list[dict[str, Any]], grids: list[Grid]) -> list[LegendEntry]:
    seen: dict[str, LegendEntry] = {}
    counts: dict[str, int] = {}
    for grid in grids:
        for _, cells in grid.rows:
            for c in cells:
                for rule in c.rules:
                    counts[rule] = counts.get(rule, 0) + 1
    for verdict in verdicts:
        for c in verdict.get("cells") or []:
            for rule, reason in zip(c.get("rules") or [], c.get("reasons") or [], strict=False):
                if rule not in seen:
                    mark, name = RULE_MARKS.get(rule, ("?", rule))
                    severity = next(
                        (
                            k.get("severity", k.get("status", ""))
                            for k in verdict.get("criteria") or []
                            if k.get("rule") == rule
                        ),
                        c.get("status", ""),
                    )
                    seen[rule] = LegendEntry(rule, mark, name, reason, severity, 0)
    return [LegendEntry(e.rule, e.mark, e.name, e.reason, e.severity, counts.get(e.rule, 0)) for e in seen.values()]


def build_review(
    content: bytes,
    spec: dict[str, Any] | None,
    verdict: dict[str, Any] | None,
    differencing: list[dict[str, Any]] | None,
    *,
    policy: Any,
) -> TableReview:
    """The checker's view of one CSV file and its stored verdict (``verdict`` None: not checked yet)."""
    review = TableReview(
        findings=list(differencing or []),
        status=(verdict or {}).get("status", ""),
        reasons=list((verdict or {}).get("reasons") or []),
    )
    hints: dict[str, Any] = {}
    if spec and isinstance(spec.get("n_row_dims"), int) and spec.get("dims"):
        dims = list(spec["dims"])
        n_row = spec["n_row_dims"]
        if 1 <= n_row < len(dims):
            hints = {"n_row_dims": n_row, "n_col_dims": len(dims) - n_row}
            if len(dims) - n_row == 1:
                hints["dims"] = dims
    try:
        table = read_published_table(content, **hints)
    except UnreadableTable as exc:
        review.unreadable = str(exc)
        return review
    submitted = _submitted_values(table)
    withheld = np.isnan(submitted)
    review.before = _grid(table, submitted, _cells_by_key(verdict or {}), withheld)

    n_cells = int(table.values.size)
    verdicts = [verdict or {}]
    statistic = str((spec or {}).get("statistic") or "count")
    if n_cells > MAX_PREVIEW_CELLS:
        review.after_note = (
            f"The table has {n_cells:,} cells: the suppression preview is worked out only for tables of up "
            f"to {MAX_PREVIEW_CELLS:,} cells. Ask the researcher to apply the policy in the workspace."
        )
    elif is_dp_spec(spec):
        review.after_note = (
            "No suppression preview: the table is differentially private, so its noise protects it and "
            "nothing is suppressed."
        )
    elif spec and statistic != "count":
        # Its cells are not counts of people: read as counts they would be flagged and suppressed wrongly.
        # The people behind each cell are known only from the extract, which the stored verdict re-computed.
        review.after_note = (
            f"No suppression preview: this table's cells are {statistic} values, not counts, so the file's "
            "numbers alone cannot say how many people are behind each one. The flags shown come from "
            "re-computing the table from the extract."
        )
    else:
        try:
            if not spec and is_summary_table(table):
                # Statistics beside counts: suppressed alone by their row's count, never as counts (ADR 0060).
                result: Any = check_published_summary(table, policy=policy, mitigation="suppress", audit="fast")
            else:
                result = check_published_counts(table.values, policy=policy, mitigation="suppress", audit="fast")
        except (ValueError, TypeError) as exc:
            review.after_note = f"The suppression preview could not be worked out: {exc}"[:300]
        else:
            released = np.asarray(result.released, dtype=float)
            # The engine's extended shape always has totals; show them only where the file had them.
            rows = submitted.shape[0]
            cols = submitted.shape[1]
            after = np.full(submitted.shape, np.nan)
            n_r, n_c = table.values.shape
            after[:n_r, :n_c] = released[:n_r, :n_c]
            if cols > n_c:
                after[:n_r, n_c] = released[:n_r, -1]
            if rows > n_r:
                after[n_r, :n_c] = released[-1, :n_c]
                if cols > n_c:
                    after[n_r, n_c] = released[-1, -1]
            review.after = _grid(table, after, _cells_by_key(result.verdict), withheld)
            verdicts.append(result.verdict)
            status = result.verdict.get("status", "")
            review.after_note = (
                f"After suppression under policy {result.verdict.get('policy', {}).get('version', '')}: "
                f"{status}. "
                + " ".join(
                    r
                    for r in result.verdict.get("reasons", [])
                    if r.startswith("suppression") or r.startswith("interval")
                )
            ).strip()
    review.legend = _legend(verdicts, [review.before])
    return review
