"""Release ledger and differencing audit.

Every aggregate a project releases is recorded: its population (dataset and filters, see ``population``),
dimensions and exactly the cells the released file shows (margins only if the file has them, labelled
``None`` on the margin dimensions) plus which cells were suppressed. A new table is audited against the
ledger (``differencing_audit``): a suppressed cell or small group that two releases determine together is
found, e.g. a table over a filtered sub-population whose total, less an earlier table's released cells,
gives that table's suppressed cell; a total of 12,958 next to a released 12,960; or a table "excluding one
category" next to the full table.

The ledger is a plain data structure; storing it is the caller's job (``to_dict``/``from_dict``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from disclosure.engine import population as pop
from disclosure.engine.labels import jsonable
from disclosure.engine.tables import TableResult

Labels = tuple  # one label per dimension, None for a margin
MAX_JOINT_CELLS = 1500  # the exact audit's joint table; larger pairs are compared by their totals
_TOL = 1e-7


@dataclass
class ReleasedAggregate:
    """One released table: additive statistic (count or sum) by labelled cells."""

    output_id: str
    population: dict[str, Any]
    dims: tuple[str, ...]
    statistic: str
    cells: dict[Labels, float]
    suppressed: set[Labels] = field(default_factory=set)
    rounding_base: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "output_id": self.output_id,
            "population": self.population,
            "dims": list(self.dims),
            "statistic": self.statistic,
            "rounding_base": self.rounding_base,
            "cells": [{"labels": list(k), "value": v} for k, v in self.cells.items()],
            "suppressed": [list(k) for k in sorted(self.suppressed, key=repr)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReleasedAggregate:
        return cls(
            data["output_id"],
            data["population"],
            tuple(data["dims"]),
            data["statistic"],
            {tuple(c["labels"]): c["value"] for c in data["cells"]},
            {tuple(s) for s in data["suppressed"]},
            data.get("rounding_base"),
        )


def aggregate_from_result(
    output_id: str, result: TableResult, population: dict[str, Any], *, margins: bool = False
) -> ReleasedAggregate:
    """Ledger entry for a checked count or sum table, from what was actually released: the released
    interior cells, and the margins only when the released file shows them (``margins=True``)."""
    if result.statistic not in ("count", "sum"):
        raise ValueError(
            "only additive statistics (count, sum) can be differenced; record the counts and "
            "sums behind a mean table instead"
        )
    stats = result.stats
    cats = [list(c) + [None] for c in stats.categories]
    cells, suppressed = {}, set()
    for pos in np.ndindex(result.released.shape):
        labels = tuple(jsonable(cats[a][i]) for a, i in enumerate(pos))
        if not margins and any(label is None for label in labels):
            continue
        value = result.released[pos]
        if np.isnan(value):
            suppressed.add(labels)
        else:
            cells[labels] = float(value)
    base = result.verdict["mitigation"].get("rounding", {}).get("base")
    return ReleasedAggregate(output_id, population, stats.dims, result.statistic, cells, suppressed, base)


@dataclass
class ReleaseLedger:
    """All aggregates released by one project, oldest first."""

    project: str
    entries: list[ReleasedAggregate] = field(default_factory=list)

    def record(self, aggregate: ReleasedAggregate) -> None:
        self.entries.append(aggregate)

    def to_dict(self) -> dict[str, Any]:
        return {"project": self.project, "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReleaseLedger:
        return cls(data["project"], [ReleasedAggregate.from_dict(e) for e in data["entries"]])


def _margins_over(agg: ReleasedAggregate, shared: tuple[str, ...]) -> dict[tuple, float]:
    """Known totals of ``agg`` for each combination of labels of the ``shared`` dims.

    A total is known if it was released as a margin, or if every cell summing to it was released.
    """
    idx = [agg.dims.index(d) for d in shared]
    other = [a for a in range(len(agg.dims)) if a not in idx]
    known: dict[tuple, float] = {}
    sums: dict[tuple, float] = defaultdict(float)
    blocked: set[tuple] = set()
    for labels, value in agg.cells.items():
        key = tuple(labels[a] for a in idx)
        if any(k is None for k in key):
            continue
        if all(labels[a] is None for a in other):
            known[key] = value
        elif all(labels[a] is not None for a in other):
            sums[key] += value
    for labels in agg.suppressed:
        key = tuple(labels[a] for a in idx)
        if all(labels[a] is not None for a in other):
            blocked.add(key)
    for key, value in sums.items():
        if key not in known and key not in blocked:
            known[key] = value
    return known


def relation(a: dict[str, Any], b: dict[str, Any]) -> str:
    """How two populations relate, from their filters (for the finding's text)."""
    fa, fb = a.get("filters", []), b.get("filters", [])
    if fa is None or fb is None:
        return "population unknown (filters not captured)"
    if pop.disjoint(fa, fb):
        return "disjoint populations"
    _, only_a, only_b = pop.split_terms(fa, fb)
    if not only_a and not only_b:
        return "same population"
    if not only_a or not only_b:
        return "nested populations"
    return "overlapping populations (filters differ)"


def differencing_audit(
    ledger: ReleaseLedger, candidate: ReleasedAggregate, threshold: int = 10, max_cells: int = MAX_JOINT_CELLS
) -> list[dict[str, Any]]:
    """Disclosure by differencing between the candidate and each earlier release of the same dataset.

    For each earlier table of the same dataset and additive statistic:

    * populations provably disjoint (``sex == "F"`` against ``sex == "M"``) share no rows: nothing to find;
    * populations whose filters differ only by ``== != in notin`` terms (nested, or overlapping by a filter
      on a dimension) are audited exactly: both tables are written as sums over the cells of one joint
      table (every dimension and filtered column of either, each with an "any other value" label), and a
      joint cell that the two releases determine together, but neither alone, is a finding when it holds
      between 1 and ``threshold - 1`` (for sums: when it lies under a suppressed cell). This finds a
      suppressed cell revealed by a filtered table's total, "all except one category", and linked totals;
    * otherwise (range filters, unknown filters, rounded releases, a joint table larger than ``max_cells``,
      or releases that contradict their recorded populations) shared totals are compared: totals over the
      same labels that differ by 0 < d < threshold reveal the group making up the difference.

    Every finding names the earlier release (``earlier``) and both outputs.
    """
    findings: list[dict[str, Any]] = []
    for entry in ledger.entries:
        if entry.statistic != candidate.statistic:
            continue
        dataset = candidate.population.get("dataset")
        if not dataset or entry.population.get("dataset") != dataset:
            continue
        fa, fc = entry.population.get("filters", []), candidate.population.get("filters", [])
        if fa is not None and fc is not None and pop.disjoint(fa, fc):
            continue
        exact = None
        if fa is not None and fc is not None and not entry.rounding_base and not candidate.rounding_base:
            exact = _joint_audit(entry, candidate, fa, fc, threshold, max_cells)
        if exact is not None:
            findings += exact
            continue
        slack = max(entry.rounding_base or 0, candidate.rounding_base or 0)
        common = tuple(d for d in candidate.dims if d in entry.dims)
        # Every margin over a subset of the shared dims, down to the grand total, can be subtracted.
        for r in range(len(common), -1, -1):
            for shared in combinations(common, r):
                findings += _compare(entry, candidate, shared, slack, threshold)
    return findings


def _compare(
    entry: ReleasedAggregate,
    candidate: ReleasedAggregate,
    shared: tuple[str, ...],
    slack: float,
    threshold: int,
) -> list[dict[str, Any]]:
    findings = []
    old, new = _margins_over(entry, shared), _margins_over(candidate, shared)
    for key in old.keys() & new.keys():
        diff = abs(old[key] - new[key])
        if slack < diff < threshold + slack:
            findings.append(
                {
                    "kind": "differencing",
                    "method": "totals",
                    "earlier": entry.output_id,
                    "outputs": [entry.output_id, candidate.output_id],
                    "cell": dict(zip(shared, key, strict=True)),
                    "released": old[key],
                    "new": new[key],
                    "difference": diff,
                    "relation": relation(entry.population, candidate.population),
                    "reason": f"the two totals differ by {diff:g} (< {threshold}): the group making up the "
                    f"difference is revealed (earlier release {entry.output_id})",
                }
            )
    return findings


# --- the exact audit over a joint table ------------------------------------------------------------------


def _table_labels(agg: ReleasedAggregate) -> dict[str, list]:
    """Per dimension, the labels the table shows (its categories), in first-seen order."""
    out: dict[str, list] = {d: [] for d in agg.dims}
    for labels in list(agg.cells) + list(agg.suppressed):
        for d, label in zip(agg.dims, labels, strict=True):
            if label is not None and label not in out[d]:
                out[d].append(label)
    return out


def _joint_audit(
    a: ReleasedAggregate,
    b: ReleasedAggregate,
    fa: list[dict],
    fb: list[dict],
    threshold: int,
    max_cells: int,
) -> list[dict[str, Any]] | None:
    """Findings of the exact audit, or ``None`` when it does not apply (the caller then compares totals).

    The groups examined are every joint cell, every suppressed cell of either table, every released cell
    of one table less a released cell of the other that it contains (a total less a sub-total), and the
    smallest released cells of one table that cover a released cell of the other, less that cell.
    """
    _, only_a, only_b = pop.split_terms(fa, fb)
    if not (pop.only_listed(only_a) and pop.only_listed(only_b)):
        return None
    # Labels and filter values are compared as text: a CSV's 2010 and an extract's "2010" are one label.
    shown_as: dict[Any, Any] = {}
    a, b = _canonical(a, shown_as), _canonical(b, shown_as)
    only_a, only_b = _canonical_filters(only_a, shown_as), _canonical_filters(only_b, shown_as)
    la, lb = _table_labels(a), _table_labels(b)
    listed = pop.listed_values(only_a + only_b)
    dims: list[str] = []
    for d in [*a.dims, *b.dims, *sorted(pop.columns_of(only_a + only_b))]:
        if d not in dims:
            dims.append(d)
    axes = []
    for d in dims:
        values: list = []
        for v in [*la.get(d, []), *lb.get(d, []), *sorted(listed.get(d, ()), key=repr)]:
            if v not in values:
                values.append(v)
        axes.append([*values, pop.OTHER])
    n = int(np.prod([len(x) for x in axes]))
    if n > max_cells:
        return None
    grid = np.array(list(np.ndindex(*[len(x) for x in axes])), dtype=np.int64).reshape(n, len(dims))
    cells = [dict(zip(dims, (axes[k][i] for k, i in enumerate(row)), strict=True)) for row in grid]
    zero = np.zeros(n, dtype=bool)
    released: dict[str, tuple[list[np.ndarray], list[float]]] = {}
    suppressed: list[np.ndarray] = []
    for name, agg, extra, labels in (("a", a, only_a, la), ("b", b, only_b, lb)):
        holds = [pop.all_hold(extra, c) for c in cells]
        if any(v is None for v in holds):
            return None
        in_pop = np.array(holds, dtype=bool)
        # Position of each joint cell among the table's own labels (-1: a label the table does not show).
        coords = np.full((n, len(agg.dims)), -1, dtype=np.int64)
        for t, d in enumerate(agg.dims):
            k = dims.index(d)
            if labels[d]:
                lookup = np.array([labels[d].index(v) if v in labels[d] else -1 for v in axes[k]], dtype=np.int64)
            else:  # only totals over this dimension are shown: every value is in them
                lookup = np.zeros(len(axes[k]), dtype=np.int64)
            coords[:, t] = lookup[grid[:, k]]
        shown = (coords >= 0).all(axis=1)
        zero |= in_pop & ~shown  # the table lists every value of its dimensions in its population
        usable = in_pop & shown
        released[name] = (
            [_support(usable, coords, agg.dims, labels, k) for k in agg.cells],
            [float(v) for v in agg.cells.values()],
        )
        suppressed += [_support(usable, coords, agg.dims, labels, k) for k in agg.suppressed]
    free = ~zero
    if not free.any():
        return []
    rows_a = np.array(released["a"][0], dtype=float).reshape(-1, n)[:, free]
    rows_b = np.array(released["b"][0], dtype=float).reshape(-1, n)[:, free]
    m = np.vstack([rows_a, rows_b])
    rhs = np.array(released["a"][1] + released["b"][1], dtype=float)
    null, solution, consistent = _null_space(m, rhs)
    if not consistent:
        return None  # the releases contradict their recorded populations: compare totals instead
    groups = _groups(rows_a, rows_b, [g[free] for g in suppressed])
    if not len(groups):
        return []
    known = _fixed(groups, null)
    totals = groups @ solution
    if a.statistic == "sum":
        sup_keys = {g.tobytes() for g in (s_[free].astype(float) for s_ in suppressed)}
        hit = known & np.array([g.tobytes() in sup_keys for g in groups]) & (np.abs(totals) > _TOL)
    else:
        hit = known & (totals >= 0.5) & (totals < threshold - _TOL)
    if not hit.any():
        return []
    null_a, _, _ = _null_space(rows_a, np.array(released["a"][1]))
    null_b, _, _ = _null_space(rows_b, np.array(released["b"][1]))
    alone = _fixed(groups, null_a) | _fixed(groups, null_b)
    rel = relation(a.population, b.population)
    idx_free = np.flatnonzero(free)
    findings = []
    for g in np.flatnonzero(hit & ~alone):
        members = grid[idx_free[groups[g] > 0.5]]
        cell = {
            d: _show(axes[k][members[0][k]], axes[k], shown_as)
            for k, d in enumerate(dims)
            if (members[:, k] == members[0][k]).all()
        }
        v = round(float(totals[g]), 6)
        findings.append(
            {
                "kind": "differencing",
                "method": "joint table",
                "earlier": a.output_id,
                "outputs": [a.output_id, b.output_id],
                "cell": cell,
                "joint_cells": int(len(members)),
                "revealed": v,
                "difference": v,
                "relation": rel,
                "reason": f"together with earlier release {a.output_id} ({rel}) this table determines a group "
                f"of {v:g} (< {threshold}) that neither shows: {cell}"
                if a.statistic != "sum"
                else f"together with earlier release {a.output_id} ({rel}) this table determines the "
                f"suppressed total {v:g} of {cell}",
            }
        )
    return findings


def _canon(value: Any, shown_as: dict[Any, Any]) -> Any:
    if value is None:
        return None
    key = str(pop._hashable(value))
    shown_as.setdefault(key, value)
    return key


def _canonical(agg: ReleasedAggregate, shown_as: dict[Any, Any]) -> ReleasedAggregate:
    def labels(key: Labels) -> Labels:
        return tuple(_canon(v, shown_as) for v in key)

    return ReleasedAggregate(
        agg.output_id,
        agg.population,
        agg.dims,
        agg.statistic,
        {labels(k): v for k, v in agg.cells.items()},
        {labels(k) for k in agg.suppressed},
        agg.rounding_base,
    )


def _canonical_filters(filters: list[dict], shown_as: dict[Any, Any]) -> list[dict]:
    out: list[dict[str, Any]] = []
    for term in filters:
        if "any" in term:
            out.append({"any": [_canonical_filters(b, shown_as) for b in term["any"]]})
        elif "not" in term:
            out.append({"not": _canonical_filters(term["not"], shown_as)})
        elif term["op"] in pop.SET_OPS:
            out.append({**term, "value": [_canon(v, shown_as) for v in term["value"]]})
        elif "value" in term:
            out.append({**term, "value": _canon(term["value"], shown_as)})
        else:
            out.append(term)
    return out


def _groups(rows_a: np.ndarray, rows_b: np.ndarray, suppressed: list[np.ndarray]) -> np.ndarray:
    """Candidate groups (0/1 rows over the free joint cells), without repeats or empty ones."""
    n = rows_a.shape[1]
    parts = [np.eye(n)]
    if suppressed:
        parts.append(np.array(suppressed, dtype=float))
    for big, small in ((rows_a, rows_b), (rows_b, rows_a)):
        if not len(big) or not len(small):
            continue
        inside = (small @ big.T) == small.sum(axis=1, keepdims=True)  # small[j] within big[i]
        js, is_ = np.nonzero(inside)
        for start in range(0, len(js), 5000):
            j, i = js[start : start + 5000], is_[start : start + 5000]
            parts.append(big[i] - small[j])
        # A cell of one table less the smallest cells of the other that cover it (e.g. a region's total
        # over all but one category against that region's cells by sex).
        sizes = big.sum(axis=1)
        within = (big @ big.T) == sizes[None, :]  # within[i, j]: row j lies within row i
        strictly = within & (sizes[:, None] > sizes[None, :])
        minimal = big[~strictly.any(axis=1)]
        touching = (small @ minimal.T) > 0
        for row in range(len(small)):
            union = (minimal[touching[row]].sum(axis=0) > 0).astype(float)
            if (union >= small[row]).all() and union.sum() > small[row].sum():
                parts.append((union - small[row])[None, :])
    stacked = np.vstack(parts)
    stacked = stacked[stacked.sum(axis=1) > 0]
    _, first = np.unique(stacked, axis=0, return_index=True)
    return stacked[np.sort(first)]


def _fixed(groups: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Which groups' totals the system fixes: those orthogonal to its null space."""
    if null.shape[0] == 0:
        return np.ones(len(groups), dtype=bool)
    return np.abs(groups @ null.T).max(axis=1) < 1e-6


def _support(
    usable: np.ndarray, coords: np.ndarray, dims: tuple[str, ...], labels: dict[str, list], cell: Labels
) -> np.ndarray:
    """Joint cells a released table cell sums (``None`` in a label: the margin over that dimension)."""
    hit = usable.copy()
    for t, (d, label) in enumerate(zip(dims, cell, strict=True)):
        if label is not None:
            hit &= coords[:, t] == labels[d].index(label)
    return hit


def _null_space(m: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """A basis of the null space of ``m`` (rows), a solution of ``m x = rhs``, and whether it is consistent."""
    n = m.shape[1]
    if m.shape[0] == 0:
        return np.eye(n), np.zeros(n), True
    _, s, vt = np.linalg.svd(m, full_matrices=True)
    rank = int((s > _TOL * max(1.0, s[0] if len(s) else 1.0)).sum())
    solution, *_ = np.linalg.lstsq(m, rhs, rcond=None)
    consistent = bool(np.abs(m @ solution - rhs).max() <= 1e-6 * (1.0 + np.abs(rhs).max()))
    return vt[rank:], solution, consistent


def _show(label: Any, axis: list, shown_as: dict[Any, Any]) -> Any:
    if label == pop.OTHER:
        return {"not in": [shown_as.get(v, v) for v in axis if v != pop.OTHER]}
    return shown_as.get(label, label)
