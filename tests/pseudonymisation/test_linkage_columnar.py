"""The columnar linkage core (ADR 0040) gives what the per-record core gave before it.

``linkage_reference.py`` is the pre-0040 code. The properties hold the cleaning, the deterministic stage
and the clustering to it on drawn inputs (fast: no Splink); the last test runs both whole cores, Splink
included, on the demo generator's sources made messier (missing and conflicting numbers, numbers as
integers and with separators, missing names, accents, dates as text in several forms, swapped dates)
and with a linkage officer's decisions.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from functools import cache

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pseudonymisation import linkage, linkage_anchors, linkage_cleaning, linkage_clusters
from pseudonymisation.linkage import Record
from tests.pseudonymisation import linkage_reference as reference
from tre.demo import linkage_sources

# Characters that make the cleaning rules work: letters of both cases, digits, separators, Python's
# ASCII whitespace, accents, a ligature whose upper case is two letters, non-ASCII digits and spaces.
_MESSY = "aZmMfF09 -\t\x0b\x1c'/éßﬀı٣\u00a0"
_text = st.none() | st.text(alphabet=_MESSY, max_size=12)
_dates = st.none() | st.dates(min_value=dt.date(1, 1, 1)) | st.datetimes()
_date_texts = st.sampled_from(["1983-07-06", " 1983-07-06\t", "19830706", "1983-W27-3", "1983-02-30", "0000-01-01",
                               "0999-12-31", "1983-7-6", "٢٠٢٠-01-01", "1983-07-06\u00a0", ""])
_numbers = st.none() | st.sampled_from([
    "9434765919", "943 476 5919", "943-476-5919", "9434765918", 9434765919, True, "٩٤٣٤٧٦٥٩١٩", " 9434765919\x1c",
    "943\u00a04765919", "4010232137", 4010232137, "0000000000", "94347659190", "12345"]) | _text


@st.composite
def _records(draw: st.DrawFn, max_size: int = 40) -> list[Record]:
    count = draw(st.integers(0, max_size))
    out = []
    for i in range(count):
        source, prefix = draw(st.sampled_from(["gp", "hospital", "é"])), draw(st.sampled_from(["", "x", "é"]))
        out.append(Record(
            source, f"{prefix}{i}",
            draw(_numbers), draw(_text), draw(_text), draw(_dates | _date_texts | _text), draw(_text),
            draw(_text | st.sampled_from(["ls6 2ab", "LS62AB", "m1", "SW1A 1AA"])),
        ))
    return out


def _clean_columns(records: list[Record]) -> list[tuple[str | None, ...]]:
    with duckdb.connect() as connection:
        table = linkage_cleaning.prepare(records, connection).table.to_pydict()
    return list(zip(*(table[f] for f in linkage_cleaning.FIELDS), strict=True))


@settings(max_examples=100, deadline=None)
@given(_records())
def test_cleaned_table_matches_the_per_record_rules(records):
    _, clean = reference.ordered(records)
    expected = [(c.first_name, c.surname, c.date_of_birth, c.sex, c.postcode, c.nhs) for c in clean]
    assert _clean_columns(records) == expected


@settings(max_examples=30, deadline=None)
@given(_records())
def test_splink_frame_matches_the_per_record_frame(records):
    if not records:
        return
    expected = reference.splink_frame(reference.ordered(records)[1])
    pd.testing.assert_frame_equal(_values(linkage.splink_frame(records)), _values(expected))


def _values(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame's values, missing ones as None whatever the column's type (an all-missing column is
    ``object`` from a list of Nones, text from Arrow: DuckDB reads both as missing)."""
    return frame.astype(object).where(frame.notna(), None)


def test_cleaning_orders_records_as_python_orders_their_keys():
    keys = ["b", "B", "é", "e", "z", "ﬀ", "", "a b", "ab", "\U0001f600", "a\x00"]
    records = [Record(s, r, None, None, None, None, None, None) for s in keys[:4] for r in keys]
    random.Random(3).shuffle(records)
    with duckdb.connect() as connection:
        order = linkage_cleaning.prepare(records, connection).order.tolist()
    keys = [(r.source, r.record_id) for r in records]
    assert [keys[i] for i in order] == sorted(keys)


# Small pools, so that drawn records share numbers, names and dates often and ties are common.
_pool_numbers = st.sampled_from([None, "9434765919", "4010232137", "6541223455", "1234567881"])
_pool_names = st.sampled_from([None, "Ann", "Lee", "Bob", "ann"])
_pool_dobs = st.sampled_from([None, "1980-01-02", "1980-02-01", "1975-05-05"])
_pool_sex = st.sampled_from([None, "M", "F"])


@st.composite
def _group_records(draw: st.DrawFn) -> list[Record]:
    count = draw(st.integers(1, 30))
    return [Record("s", f"{i:03d}", draw(_pool_numbers), draw(_pool_names), draw(_pool_names), draw(_pool_dobs),
                   draw(_pool_sex), None) for i in range(count)]


@settings(max_examples=150, deadline=None)
@given(_group_records())
def test_anchors_match_the_per_record_conflict_check(records):
    expected = reference._deterministic_anchors(reference.ordered(records)[1])
    with duckdb.connect() as connection:
        prepared = linkage_cleaning.prepare(records, connection)
        codes = linkage_anchors.anchors(prepared.table, connection).codes.tolist()
    numbers = prepared.table.column("nhs_number").to_pylist()
    assert [numbers[i] if code >= 0 else None for i, code in enumerate(codes)] == expected
    assert len({c for c in codes if c >= 0}) == len({a for a in expected if a is not None})


@st.composite
def _cluster_inputs(draw: st.DrawFn) -> tuple[list[str | None], list[tuple[float, int, int]], list, list]:
    count = draw(st.integers(1, 25))
    anchors = draw(st.lists(st.sampled_from([None, None, "A", "B", "C"]), min_size=count, max_size=count))
    ends = st.tuples(st.integers(0, count - 1), st.integers(0, count - 1)).filter(lambda p: p[0] != p[1])
    scores = st.sampled_from([0.2, 0.6, 0.95, 0.97, 0.99, 0.999999999])
    pairs = draw(st.lists(ends, max_size=40, unique_by=lambda p: frozenset(p)))
    edges = [(draw(scores), a, b) for a, b in pairs]
    forced = draw(st.lists(ends, max_size=3))
    apart = draw(st.lists(ends.map(lambda p: tuple(sorted(p))), max_size=3))
    return anchors, edges, forced, apart


@settings(max_examples=300, deadline=None)
@given(_cluster_inputs())
def test_clusters_match_the_per_record_union_find(inputs):
    anchors, edges, forced, apart = inputs
    records = [Record("s", f"{i:03d}", None, None, None, None, None, None) for i in range(len(anchors))]
    expected = reference._cluster(records, anchors, edges, 0.95, forced, apart)
    codes = np.array([-1 if a is None else "ABC".index(a) for a in anchors], dtype=np.int64)
    got = linkage_clusters.cluster(codes, np.array([e[0] for e in edges], dtype=np.float64),
                                   np.array([e[1] for e in edges], dtype=np.int64),
                                   np.array([e[2] for e in edges], dtype=np.int64), 0.95, forced, apart)
    assert got.person.tolist() == [lk.person_id for lk in expected]
    assert [linkage.METHODS[m] for m in got.method.tolist()] == [lk.method for lk in expected]
    assert [None if np.isnan(p) else p for p in got.probability.tolist()] == [lk.match_probability for lk in expected]


def _messier(records: list[Record], seed: int) -> list[Record]:
    """The generator's records with more of the mess real sources carry, each change at a stated rate."""
    rng = random.Random(seed)
    numbers = [r.nhs_number for r in records if r.nhs_number]
    out = []
    for r in records:
        number, first, surname, dob, sex, postcode = (r.nhs_number, r.first_name, r.surname, r.date_of_birth, r.sex,
                                                      r.postcode)
        roll = rng.random()
        if roll < 0.04:
            number = rng.choice(numbers)  # someone else's valid number: a conflict, or a tie in a group
        elif roll < 0.06 and number:
            number = int(number) if rng.random() < 0.5 else f"{number[:3]} {number[3:6]}-{number[6:]}"
        elif roll < 0.08:
            number = None
        elif roll < 0.09 and number:
            number = number[:9] + str((int(number[9]) + 1) % 10)  # a mistyped check digit
        if rng.random() < 0.03:
            first = None
        if rng.random() < 0.03:
            surname = None
        if rng.random() < 0.03 and first:
            first = f" {first.lower()}é "
        if rng.random() < 0.1 and isinstance(dob, dt.date):
            dob = rng.choice([dob.isoformat(), f" {dob.isoformat()} ", dob.strftime("%Y%m%d"), "not a date", None])
        if rng.random() < 0.03:
            sex = rng.choice(["male", " f", "X", None])
        if rng.random() < 0.05 and postcode:
            postcode = rng.choice([postcode.lower().replace(" ", ""), None])
        out.append(Record(r.source, r.record_id, number, first, surname, dob, sex, postcode))
    return out


@cache
def _messy_sources() -> tuple[tuple[Record, ...], str]:
    made = linkage_sources.generate(1500, seed=40)
    records = _messier(linkage_sources.records(made), seed=41)
    return tuple(records), json.dumps(linkage.train(records))


@pytest.mark.slow
def test_link_records_matches_the_per_record_core_on_messy_generator_sources():
    records, model_text = _messy_sources()
    model = json.loads(model_text)
    first = reference.link_records(list(records), model=model)
    assert first.candidates, "no pair fell in the uncertain band, so the decisions below could not be tested"
    by_key = {(lk.source, lk.record_id): lk for lk in first.links}
    shared = {}
    for lk in first.links:  # two records joined by their number, which a "no match" then keeps apart
        if lk.method == "deterministic":
            shared.setdefault(lk.person_id, []).append((lk.source, lk.record_id))
    pair_by_number = next(frozenset(m[:2]) for m in shared.values() if len(m) >= 2)
    band = first.candidates[0]
    decisions: dict[frozenset[tuple[str, str]], linkage.Decision] = {
        frozenset((band.left, band.right)): "match",
        pair_by_number: "no_match",
        frozenset((first.candidates[-1].left, first.candidates[-1].right)): "no_match",
        frozenset((("gone", "1"), band.left)): "match",  # a record no longer in the input
    }
    assert all(k in by_key for pair in list(decisions)[:3] for k in pair)

    for chosen in (None, decisions):
        expected = reference.link_records(list(records), model=model, decisions=chosen)
        got = linkage.link_records(list(records), model=model, decisions=chosen)
        assert got.links == expected.links
        assert got.candidates == expected.candidates
        assert got.weight_histogram == expected.weight_histogram
    methods = {lk.method for lk in got.links}
    assert methods == {"deterministic", "probabilistic", "clerical", "singleton"}, methods
