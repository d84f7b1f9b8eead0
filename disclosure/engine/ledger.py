"""Release ledger and differencing audit.

Every aggregate a project releases is recorded: its population (dataset and filters), dimensions and the
released cells (margins included, labelled ``None`` on the margin dimensions) plus which cells were
suppressed. A new table is audited against the ledger: two tables over the same data whose totals (over the
dimensions they share) differ by a small non-zero amount reveal that small group by subtraction, e.g. a
total of 12,958 next to a released 12,960, or a table "excluding one category" next to the full table.

The ledger is a plain data structure; storing it is the caller's job (``to_dict``/``from_dict``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from disclosure.engine.labels import jsonable
from disclosure.engine.tables import TableResult

Labels = tuple  # one label per dimension, None for a margin


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


def aggregate_from_result(output_id: str, result: TableResult, population: dict[str, Any]) -> ReleasedAggregate:
    """Ledger entry for a checked count or sum table, from what was actually released."""
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


def _nested(a: dict[str, Any], b: dict[str, Any]) -> str:
    fa = {repr(sorted(f.items())) for f in a.get("filters", [])}
    fb = {repr(sorted(f.items())) for f in b.get("filters", [])}
    if fa == fb:
        return "same population"
    if fa <= fb or fb <= fa:
        return "nested populations"
    return "overlapping populations (filters differ)"


def differencing_audit(
    ledger: ReleaseLedger, candidate: ReleasedAggregate, threshold: int = 10
) -> list[dict[str, Any]]:
    """Findings where the candidate and a released table differ on a shared total by 0 < d < threshold.

    Only tables over the same dataset and the same additive statistic are compared (other pairs share no
    arithmetic). Rounded releases are compared with their rounding base as slack, because differences
    within rounding error reveal nothing.
    """
    findings = []
    for entry in ledger.entries:
        if entry.statistic != candidate.statistic:
            continue
        if entry.population.get("dataset") != candidate.population.get("dataset"):
            continue
        common = tuple(d for d in candidate.dims if d in entry.dims)
        slack = max(entry.rounding_base or 0, candidate.rounding_base or 0)
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
                    "outputs": [entry.output_id, candidate.output_id],
                    "cell": dict(zip(shared, key, strict=True)),
                    "released": old[key],
                    "new": new[key],
                    "difference": diff,
                    "relation": _nested(entry.population, candidate.population),
                    "reason": f"the two totals differ by {diff:g} (< {threshold}): the group making up the "
                    "difference is revealed",
                }
            )
    return findings
