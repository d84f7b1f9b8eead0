"""The linkage core as it was before ADR 0040, one record at a time in Python: the reference that
``test_linkage_columnar.py`` holds the columnar core to.

The cleaning, the deterministic stage and the clustering below are the pre-0040 code unchanged; the
Splink stage is the core's own (``linkage._probabilistic_edges``), given the frame this reference
builds, so that the comparison covers what was rewritten and nothing else.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd

from pseudonymisation import linkage, nhs_number
from pseudonymisation.linkage import (
    Candidate,
    Decision,
    Link,
    LinkageResult,
    LinkageSettings,
    Method,
    Record,
    RecordKey,
)

_NOT_LETTERS = re.compile(r"[^A-Z]")
_NOT_ALNUM = re.compile(r"[^A-Z0-9]")


@dataclass(frozen=True)
class _Clean:
    first_name: str | None
    surname: str | None
    date_of_birth: str | None
    sex: str | None
    postcode: str | None
    nhs: str | None


def ordered(records: Sequence[Record]) -> tuple[list[Record], list[_Clean]]:
    keys = [(r.source, r.record_id) for r in records]
    if len(set(keys)) != len(keys):
        raise ValueError("two records share a source and record id")
    in_order = [records[i] for i in sorted(range(len(records)), key=lambda i: keys[i])]
    return in_order, [_clean(r) for r in in_order]


def _letters(value: str | None) -> str | None:
    if value is None:
        return None
    text = _NOT_LETTERS.sub("", value.upper())
    return text or None


def _clean_dob(value: date | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value.isoformat()
    text = value.strip()
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        return None


def _clean_sex(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().upper()[:1]
    return text if text in {"M", "F"} else None


def _clean(record: Record) -> _Clean:
    postcode = _NOT_ALNUM.sub("", (record.postcode or "").upper())
    if len(postcode) > 3:  # the outward code, a space, the three-character inward code
        postcode = f"{postcode[:-3]} {postcode[-3:]}"
    digits = nhs_number.normalise(record.nhs_number)
    return _Clean(
        first_name=_letters(record.first_name),
        surname=_letters(record.surname),
        date_of_birth=_clean_dob(record.date_of_birth),
        sex=_clean_sex(record.sex),
        postcode=postcode or None,
        nhs=digits if digits is not None and nhs_number.is_valid(digits) else None,
    )


def _mode(values: Iterable[str | None]) -> str | None:
    counted = Counter(v for v in values if v is not None)
    if not counted:
        return None
    best = max(counted.values())
    return min(v for v, n in counted.items() if n == best)


def _name_pair(record: _Clean) -> frozenset[str] | None:
    if record.first_name is None or record.surname is None:
        return None
    return frozenset((record.first_name, record.surname))  # unordered: swapped names still agree


def _conflicts(record: _Clean, group: list[_Clean]) -> bool:
    """True when the record's identifiers say it is not the person the rest of its group is.

    A record conflicts when its name (first and surname, in either order) differs from the group's
    most common name and so does its date of birth or its sex. One error in one field (a typo, a
    transposed date) is what real records carry; two fields disagreeing is someone else's number.
    A conflicting record is not thrown away: it goes to the probabilistic stage without its number.
    """
    others = [g for g in group if g is not record]
    if not others:
        return False
    pairs = Counter(p for p in (_name_pair(g) for g in others) if p is not None)
    own = _name_pair(record)
    if own is None or not pairs:
        return False
    best = max(pairs.values())
    if own in {p for p, n in pairs.items() if n == best}:
        return False
    dob = _mode(g.date_of_birth for g in others)
    sex = _mode(g.sex for g in others)
    dob_differs = dob is not None and record.date_of_birth is not None and record.date_of_birth != dob
    sex_differs = sex is not None and record.sex is not None and record.sex != sex
    return dob_differs or sex_differs


def _deterministic_anchors(clean: list[_Clean]) -> list[str | None]:
    """Per record, the valid NHS number it is anchored to, or None (no number, or a conflicting one)."""
    groups: dict[str, list[_Clean]] = defaultdict(list)
    for c in clean:
        if c.nhs is not None:
            groups[c.nhs].append(c)
    anchors: list[str | None] = []
    conflicting = 0
    for c in clean:
        if c.nhs is None:
            anchors.append(None)
        elif _conflicts(c, groups[c.nhs]):
            conflicting += 1
            anchors.append(None)
        else:
            anchors.append(c.nhs)
    return anchors


def _transposed(dob: str | None) -> str | None:
    """The ISO date with day and month swapped, when that is another real date (day 12 or less and
    not equal to the month); else None. Blocks the pairs whose only date error is that swap."""
    if dob is None or dob[8:10] == dob[5:7] or int(dob[8:10]) > 12:
        return None
    return f"{dob[:4]}-{dob[8:10]}-{dob[5:7]}"


def splink_frame(clean: list[_Clean]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "unique_id": range(len(clean)),
            "first_name": [c.first_name for c in clean],
            "surname": [c.surname for c in clean],
            "full_name": [
                f"{c.first_name} {c.surname}" if c.first_name and c.surname else None for c in clean
            ],
            "date_of_birth": [c.date_of_birth for c in clean],
            "date_of_birth_transposed": [_transposed(c.date_of_birth) for c in clean],
            "sex": [c.sex for c in clean],
            "postcode": [c.postcode for c in clean],
        }
    )


def _edges(clean: list[_Clean], settings: LinkageSettings, model: dict[str, Any] | None
           ) -> tuple[list[tuple[float, float, int, int]], dict[str, Any], dict[int, int]]:
    scored, used, histogram = linkage._probabilistic_edges(splink_frame(clean), settings, model)
    return (list(zip(scored.probability.tolist(), scored.weight.tolist(), scored.left.tolist(),
                     scored.right.tolist(), strict=True)), used, histogram)


def link_records(
    records: Sequence[Record],
    settings: LinkageSettings | None = None,
    model: dict[str, Any] | None = None,
    decisions: Mapping[frozenset[RecordKey], Decision] | None = None,
) -> LinkageResult:
    settings = settings or LinkageSettings()
    keys = [(r.source, r.record_id) for r in records]
    in_order, clean = ordered(records)

    anchors = _deterministic_anchors(clean)
    scored, used, histogram = _edges(clean, settings, model) if len(clean) > 1 else ([], model, {})
    index_of = {(r.source, r.record_id): i for i, r in enumerate(in_order)}
    forced: list[tuple[int, int]] = []
    refused: set[frozenset[int]] = set()
    for pair, verdict in sorted((decisions or {}).items(), key=lambda d: sorted(d[0])):
        ends = sorted(index_of[k] for k in pair if k in index_of)
        if len(ends) != 2:
            continue  # a decision about a record no longer in the input
        if verdict == "match":
            forced.append((ends[0], ends[1]))
        else:
            refused.add(frozenset(ends))
    edges = [(p, a, b) for p, w, a, b in scored if p >= settings.threshold and frozenset((a, b)) not in refused]
    links = _cluster(in_order, anchors, edges, settings.threshold, forced,
                     [tuple(sorted(pair)) for pair in refused])  # type: ignore[misc]
    decided = {frozenset(index_of[k] for k in pair) for pair in (decisions or {}) if all(k in index_of for k in pair)}
    person = [lk.person_id for lk in links]
    candidates = sorted(
        (
            Candidate((in_order[a].source, in_order[a].record_id), (in_order[b].source, in_order[b].record_id), p, w)
            for p, w, a, b in ((p, w, min(a, b), max(a, b)) for p, w, a, b in scored)
            if settings.review_floor <= p < settings.threshold
            and frozenset((a, b)) not in decided
            and person[a] != person[b]
        ),
        key=lambda c: (-c.match_probability, c.left, c.right),
    )

    by_key = {(lk.source, lk.record_id): lk for lk in links}
    return LinkageResult([by_key[k] for k in keys], candidates, dict(sorted(histogram.items())), used)


def _cluster(
    records: list[Record],
    anchors: list[str | None],
    edges: list[tuple[float, int, int]],
    threshold: float,
    forced: Sequence[tuple[int, int]] = (),
    apart: Sequence[tuple[int, int]] = (),
) -> list[Link]:
    parent = list(range(len(records)))
    numbers: list[set[str]] = [{a} if a is not None else set() for a in anchors]
    # A linkage officer's "no match": the two records never end up in one person, by any path.
    members: dict[int, list[int]] = {}
    kept_apart: dict[int, set[int]] = {}
    for a, b in apart:
        for i, j in ((a, b), (b, a)):
            members.setdefault(i, [i])
            kept_apart.setdefault(i, set()).add(j)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> bool:
        ra, rb = find(a), find(b)
        if ra == rb:
            return True
        if numbers[ra] and numbers[rb] and numbers[ra] != numbers[rb]:
            return False
        if kept_apart and (
            any(m in kept_apart.get(ra, ()) for m in members.get(rb, ()))
            or any(m in kept_apart.get(rb, ()) for m in members.get(ra, ()))
        ):
            return False
        keep, drop = min(ra, rb), max(ra, rb)
        parent[drop] = keep
        numbers[keep] |= numbers[drop]
        if drop in kept_apart or drop in members or keep in kept_apart or keep in members:
            members[keep] = members.get(keep, [keep]) + members.pop(drop, [drop])
            kept_apart[keep] = kept_apart.get(keep, set()) | kept_apart.pop(drop, set())
        return True

    first_with: dict[str, int] = {}
    for i, number in enumerate(anchors):
        if number is not None:
            if number in first_with:
                union(first_with[number], i)
            else:
                first_with[number] = i

    best: dict[int, float] = {}
    clerical: set[int] = set()
    for left, right in forced:  # a linkage officer's match: as sure as a shared number
        if union(left, right):
            clerical.update((left, right))
    for score, left, right in sorted(edges, key=lambda e: (-e[0], min(e[1], e[2]), max(e[1], e[2]))):
        if score < threshold:
            continue
        if union(left, right):
            for i in (left, right):
                best[i] = max(best.get(i, 0.0), score)

    roots = [find(i) for i in range(len(records))]
    sizes = Counter(roots)
    person_of_root: dict[int, int] = {}
    for root in roots:  # records are sorted, so people are numbered by their first record
        person_of_root.setdefault(root, len(person_of_root) + 1)
    shared = Counter(a for a in anchors if a is not None)

    links = []
    for i, record in enumerate(records):
        method: Method
        probability: float | None
        anchor = anchors[i]
        if anchor is not None and shared[anchor] > 1:
            method, probability = "deterministic", 1.0
        elif i in clerical:
            method, probability = "clerical", 1.0
        elif sizes[roots[i]] > 1:
            method, probability = "probabilistic", best[i]  # only an accepted pair joins a record
        else:
            method, probability = "singleton", None
        links.append(Link(record.source, record.record_id, person_of_root[roots[i]], method, probability,
                          anchor is not None))
    return links
