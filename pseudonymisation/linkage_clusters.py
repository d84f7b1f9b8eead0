"""The linkage core's last step: records and accepted pairs in, one person per record out.

Records anchored to the same valid NHS number are joined first; then a linkage officer's ``match``
decisions; then the scored pairs at or above the threshold, strongest first (ties: by the pair's
record positions). Two groups holding different valid numbers are never joined, and a linkage
officer's ``no_match`` keeps two records apart by any path. People are numbered from 1 in the order
of their first record.

The joining is a union-find whose loop runs once per pair that can join (shared numbers, decisions,
accepted scored pairs), not once per record; the numbering, the method and the probability of each
record are whole-array operations. Pure: no Flask, no SQLAlchemy (import-linter enforces).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The method codes, in the order of linkage.METHODS.
DETERMINISTIC, PROBABILISTIC, CLERICAL, SINGLETON = 0, 1, 2, 3


@dataclass(frozen=True)
class Clusters:
    """Per record (in the cleaned table's order): its person (from 1), its method's code, and its
    probability (1.0 for deterministic and clerical, the strongest accepted pair touching it for
    probabilistic, NaN for a singleton)."""

    person: np.ndarray
    method: np.ndarray
    probability: np.ndarray


class _Joiner:
    """Union-find over record positions. A group's root is its smallest position; each root carries
    its group's anchor code (a group never holds two) and, when decisions keep records apart, its
    members and the records they must stay apart from."""

    def __init__(self, anchor_codes: np.ndarray, apart: Sequence[tuple[int, int]]) -> None:
        self.parent = list(range(len(anchor_codes)))
        self.number: list[int] = anchor_codes.tolist()
        self.members: dict[int, list[int]] = {}
        self.kept_apart: dict[int, set[int]] = {}
        for a, b in apart:
            for i, j in ((a, b), (b, a)):
                self.members.setdefault(i, [i])
                self.kept_apart.setdefault(i, set()).add(j)

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> bool:
        """Join the groups of ``a`` and ``b``; False when they may not be joined."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        number = self.number
        if number[ra] >= 0 and number[rb] >= 0 and number[ra] != number[rb]:
            return False
        members, kept_apart = self.members, self.kept_apart
        if kept_apart and (
            any(m in kept_apart.get(ra, ()) for m in members.get(rb, ()))
            or any(m in kept_apart.get(rb, ()) for m in members.get(ra, ()))
        ):
            return False
        keep, drop = (ra, rb) if ra < rb else (rb, ra)
        self.parent[drop] = keep
        if number[keep] < 0:
            number[keep] = number[drop]
        if drop in kept_apart or drop in members or keep in kept_apart or keep in members:
            members[keep] = members.get(keep, [keep]) + members.pop(drop, [drop])
            kept_apart[keep] = kept_apart.get(keep, set()) | kept_apart.pop(drop, set())
        return True

    def roots(self) -> np.ndarray:
        parent = np.asarray(self.parent, dtype=np.int64)
        while True:  # pointer jumping: every record's root, in whole-array steps
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand


def cluster(
    anchor_codes: np.ndarray,
    scores: np.ndarray,
    lefts: np.ndarray,
    rights: np.ndarray,
    threshold: float,
    forced: Sequence[tuple[int, int]] = (),
    apart: Sequence[tuple[int, int]] = (),
) -> Clusters:
    """People from ``anchor_codes`` (per record, -1 for none), scored pairs (``scores[k]`` for records
    ``lefts[k]`` and ``rights[k]``; those below ``threshold`` are ignored), the officer's ``forced``
    matches and the pairs kept ``apart``."""
    count = len(anchor_codes)
    joiner = _Joiner(anchor_codes, apart)
    anchored = anchor_codes >= 0
    group_size = np.bincount(anchor_codes[anchored]) if anchored.any() else np.zeros(0, dtype=np.int64)
    shared = np.zeros(count, dtype=bool)
    shared[anchored] = group_size[anchor_codes[anchored]] > 1

    first_with: dict[int, int] = {}
    codes = anchor_codes.tolist()
    for i in np.flatnonzero(shared).tolist():
        code = codes[i]
        if code in first_with:
            joiner.union(first_with[code], i)
        else:
            first_with[code] = i

    clerical = np.zeros(count, dtype=bool)
    for left, right in forced:  # a linkage officer's match: as sure as a shared number
        if joiner.union(left, right):
            clerical[[left, right]] = True

    keep = scores >= threshold
    scores, lefts, rights = scores[keep], lefts[keep], rights[keep]
    low, high = np.minimum(lefts, rights), np.maximum(lefts, rights)
    order = np.lexsort((high, low, -scores))
    union = joiner.union
    accepted = np.fromiter((union(a, b) for a, b in zip(lefts[order].tolist(), rights[order].tolist(), strict=True)),
                           dtype=bool, count=len(order))
    taken = order[accepted]
    best = np.full(count, np.nan)
    np.fmax.at(best, lefts[taken], scores[taken])
    np.fmax.at(best, rights[taken], scores[taken])

    roots = joiner.roots()
    # A root is its group's smallest position, so numbering the roots in order numbers people by
    # their first record.
    _, person = np.unique(roots, return_inverse=True)
    sizes = np.bincount(roots, minlength=count)[roots]
    method = np.select([shared, clerical, sizes > 1], [DETERMINISTIC, CLERICAL, PROBABILISTIC], SINGLETON)
    probability = np.where(method == PROBABILISTIC, best, np.where(method == SINGLETON, np.nan, 1.0))
    return Clusters(person.astype(np.int64) + 1, method.astype(np.int8), probability)
