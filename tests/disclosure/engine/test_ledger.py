import json
from itertools import combinations, product

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from disclosure.engine import population as pop
from disclosure.engine.ledger import (
    ReleasedAggregate,
    ReleaseLedger,
    aggregate_from_result,
    differencing_audit,
)
from disclosure.engine.tables import check_frequency_table


def _data() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    df = pd.DataFrame(
        {
            "region": rng.choice(["n", "s", "e"], 3000),
            "sex": rng.choice(["f", "m"], 3000),
            "age": rng.integers(0, 90, 3000),
        }
    )
    return df


def test_total_differing_by_two_from_released_total_is_flagged():
    df = _data()
    full = check_frequency_table(df, ["region"])
    ledger = ReleaseLedger("p1")
    ledger.record(aggregate_from_result("out-1", full, {"dataset": "extract", "filters": []}))
    # Drop two people: e.g. a later table "aged under 89" whose total is 2 lower.
    cut = df[df.age < 89] if (df.age >= 89).sum() < 10 else df.iloc[2:]
    new = check_frequency_table(cut, ["sex"])
    candidate = aggregate_from_result(
        "out-2", new, {"dataset": "extract", "filters": [{"column": "age", "op": "<", "value": 89}]}
    )
    findings = differencing_audit(ledger, candidate)
    grand = [f for f in findings if f["cell"] == {}]
    assert grand and grand[0]["difference"] == len(df) - len(cut)
    assert grand[0]["outputs"] == ["out-1", "out-2"]
    assert grand[0]["relation"] == "nested populations"


def test_table_excluding_one_small_category_is_flagged():
    df = pd.concat([_data(), pd.DataFrame({"region": ["w"] * 4, "sex": ["f"] * 4, "age": [50] * 4})])
    ledger = ReleaseLedger("p1")
    ledger.record(aggregate_from_result("full", check_frequency_table(df, ["sex"]), {"dataset": "x"}))
    without_w = check_frequency_table(df[df.region != "w"], ["sex"])
    findings = differencing_audit(ledger, aggregate_from_result("no-w", without_w, {"dataset": "x"}))
    assert any(f["cell"] == {"sex": "f"} and f["difference"] == 4 for f in findings)
    assert any(f["cell"] == {} and f["difference"] == 4 for f in findings)  # the grand totals too


def test_large_differences_and_other_datasets_are_not_flagged():
    df = _data()
    ledger = ReleaseLedger("p1")
    ledger.record(aggregate_from_result("a", check_frequency_table(df, ["sex"]), {"dataset": "x"}))
    half = check_frequency_table(df.iloc[:1500], ["sex"])
    assert differencing_audit(ledger, aggregate_from_result("b", half, {"dataset": "x"})) == []
    near = check_frequency_table(df.iloc[1:], ["sex"])
    assert differencing_audit(ledger, aggregate_from_result("c", near, {"dataset": "other"})) == []


def test_ledger_round_trips_through_json():
    agg = ReleasedAggregate(
        "o", {"dataset": "x", "filters": []}, ("a",), "count", {("p",): 12.0, (None,): 12.0}, {("q",)}
    )
    ledger = ReleaseLedger("p", [agg])
    again = ReleaseLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert again.entries[0].cells == agg.cells
    assert again.entries[0].suppressed == agg.suppressed


# --- populations and the exact audit ---------------------------------------------------------------------
def _agg(output_id, dims, counts, *, filters=(), suppressed=(), margins=False, dataset="admissions"):
    """A released count table from a dict {labels: count} (labels one per dim), as the ledger records it."""
    cells = {k: float(v) for k, v in counts.items() if k not in set(suppressed)}
    if margins:
        for r in range(len(dims)):
            for keep in combinations(range(len(dims)), r):
                sums: dict = {}
                for k, v in counts.items():
                    m = tuple(k[i] if i in keep else None for i in range(len(dims)))
                    sums[m] = sums.get(m, 0) + v
                cells.update({m: float(v) for m, v in sums.items()})
    return ReleasedAggregate(
        output_id,
        {"dataset": dataset, "filters": list(filters)},
        tuple(dims),
        "count",
        cells,
        set(suppressed),
    )


ETH, SEX, AGE = ["asian", "black", "mixed", "white", "other"], ["F", "M"], ["0-17", "18-64", "65+"]


def _three_way(small_at, small=9, seed=1):
    rng = np.random.default_rng(seed)
    counts = {(e, s, a): int(rng.integers(40, 400)) for e in ETH for s in SEX for a in AGE}
    counts[small_at] = small
    return counts


def test_filtered_table_whose_total_reveals_a_suppressed_cell_names_the_earlier_release():
    # The issue's case: a 3-way table released with one cell suppressed, then a one-way table over the
    # sub-population with sex and age group fixed, whose total less the released cells gives the cell.
    counts = _three_way(("mixed", "F", "65+"))
    earlier = _agg("release-1", ["eth", "sex", "age"], counts, suppressed=[("mixed", "F", "65+")])
    ledger = ReleaseLedger("p1", [earlier])
    fixed = {k: v for k, v in counts.items() if k[1] == "F" and k[2] == "65+"}
    total = sum(fixed.values())
    one_way = ReleasedAggregate(
        "release-2",
        {
            "dataset": "admissions",
            "filters": [{"column": "sex", "op": "==", "value": "F"}, {"column": "age", "op": "==", "value": "65+"}],
        },
        ("eth",),
        "count",
        {(None,): float(total)},  # only the total is shown: every ethnicity cell is hidden
        {(e,) for e in ETH},
    )

    findings = differencing_audit(ledger, one_way)

    assert [f["earlier"] for f in findings] == ["release-1"]
    assert findings[0]["revealed"] == 9
    assert findings[0]["cell"] == {"eth": "mixed", "sex": "F", "age": "65+"}
    assert findings[0]["relation"] == "nested populations"


def test_table_of_all_but_one_category_reveals_that_category():
    # The mirror: the full table, then the same table "excluding one category" of a column it does not show.
    rng = np.random.default_rng(4)
    counts = {(r, e): int(rng.integers(50, 300)) for r in ["n", "s", "e"] for e in ETH}
    counts[("s", "other")] = 3
    full = {}
    for (r, _e), v in counts.items():
        full[(r,)] = full.get((r,), 0) + v
    earlier = _agg("all", ["region"], full)
    without = {}
    for (r, e), v in counts.items():
        if e != "other":
            without[(r,)] = without.get((r,), 0) + v
    later = _agg("no-other", ["region"], without, filters=[{"column": "eth", "op": "!=", "value": "other"}])

    findings = differencing_audit(ReleaseLedger("p", [earlier]), later)

    assert {(f["cell"]["region"], f["revealed"]) for f in findings} == {("s", 3)}
    assert findings[0]["cell"]["eth"] == "other"
    assert findings[0]["earlier"] == "all"


def test_linked_tables_sharing_a_dimension_reveal_a_suppressed_cell():
    # Linked totals: a region x sex table without margins and one cell suppressed, then the one-way table of
    # region over the same population: its row total less the released cell gives the suppressed one.
    counts = {("n", "F"): 120, ("n", "M"): 4, ("s", "F"): 90, ("s", "M"): 110}
    earlier = _agg("two-way", ["region", "sex"], counts, suppressed=[("n", "M")])
    later = _agg("one-way", ["region"], {("n",): 124, ("s",): 200})

    findings = differencing_audit(ReleaseLedger("p", [earlier]), later)

    assert [(f["cell"], f["revealed"]) for f in findings] == [({"region": "n", "sex": "M"}, 4)]


def test_disjoint_populations_are_never_compared():
    # Women and men: totals 5 apart are two different groups, not a difference of one.
    women = _agg("f", ["region"], {("n",): 100, ("s",): 200}, filters=[{"column": "sex", "op": "==", "value": "F"}])
    men = _agg("m", ["region"], {("n",): 103, ("s",): 202}, filters=[{"column": "sex", "op": "==", "value": "M"}])
    assert differencing_audit(ReleaseLedger("p", [women]), men) == []
    older = _agg("old", ["region"], {("n",): 50, ("s",): 60}, filters=[{"column": "age", "op": "<", "value": 18}])
    adult = _agg("adult", ["region"], {("n",): 52, ("s",): 60}, filters=[{"column": "age", "op": ">=", "value": 18}])
    assert differencing_audit(ReleaseLedger("p", [older]), adult) == []


def test_overlapping_populations_that_determine_nothing_are_not_flagged():
    # Regions {n, s} and {s, e}: totals 3 apart, but no group's size follows from the two.
    a = _agg("ns", ["sex"], {("F",): 500, ("M",): 480}, filters=[{"column": "region", "op": "in", "value": ["n", "s"]}])
    b = _agg("se", ["sex"], {("F",): 502, ("M",): 481}, filters=[{"column": "region", "op": "in", "value": ["s", "e"]}])
    assert differencing_audit(ReleaseLedger("p", [a]), b) == []


def test_unknown_population_is_compared_by_totals_only_within_its_dataset():
    a = _agg("a", ["sex"], {("F",): 500, ("M",): 480})
    b = ReleasedAggregate("b", {"dataset": "admissions", "filters": None}, ("sex",), "count", {("F",): 497.0})
    findings = differencing_audit(ReleaseLedger("p", [a]), b)
    assert findings and findings[0]["method"] == "totals" and findings[0]["difference"] == 3
    assert findings[0]["relation"].startswith("population unknown")
    nameless = ReleasedAggregate("c", {"dataset": None, "filters": None}, ("sex",), "count", {("F",): 497.0})
    assert differencing_audit(ReleaseLedger("p", [a]), nameless) == []


def test_ledger_records_margins_only_when_the_file_shows_them():
    df = _data()
    result = check_frequency_table(df, ["region", "sex"])
    without = aggregate_from_result("o", result, {"dataset": "x", "filters": []})
    with_margins = aggregate_from_result("o", result, {"dataset": "x", "filters": []}, margins=True)
    assert all(None not in k for k in without.cells)
    assert len(without.cells) == 6
    assert (None, None) in with_margins.cells and with_margins.cells[(None, None)] == len(df)


# --- property-based: generated pairs ---------------------------------------------------------------------
dims3 = st.tuples(st.integers(2, 4), st.integers(2, 3), st.integers(2, 3))


@st.composite
def nested_pair(draw):
    """A 3-way table (no margins) with one small suppressed cell, and a table over a sub-population fixed by
    filters on two of its dimensions whose released values, with the first's, reveal the cell; in either
    order."""
    shape = draw(dims3)
    names = ["a", "b", "c"]
    labels = [[f"{n}{i}" for i in range(k)] for n, k in zip(names, shape, strict=True)]
    values = draw(st.lists(st.integers(10, 500), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    keys = list(product(*labels))
    counts = dict(zip(keys, values, strict=True))
    small_at = draw(st.sampled_from(keys))
    counts[small_at] = draw(st.integers(1, 9))
    earlier = _agg("earlier", names, counts, suppressed=[small_at])  # a file without margins
    # Fix every dimension but one (which) to the small cell's labels; the later table shows that
    # dimension's total over the sub-population, and, optionally, the cells other than the small one.
    free = draw(st.integers(0, 2))
    filters = [{"column": names[ax], "op": "==", "value": small_at[ax]} for ax in range(3) if ax != free]
    if draw(st.booleans()):  # say it as "in [..]" instead of "=="
        filters = [{"column": f["column"], "op": "in", "value": [f["value"]]} for f in filters]
    sub = {k: v for k, v in counts.items() if all(k[ax] == small_at[ax] for ax in range(3) if ax != free)}
    shown = {(None,): float(sum(sub.values()))}
    if draw(st.booleans()):
        # Show the cells too, less the small one and a secondary one, as the table's own check leaves it.
        secondary = draw(st.sampled_from([k for k in sub if k != small_at]))
        shown.update({(k[free],): float(v) for k, v in sub.items() if k not in (small_at, secondary)})
    later = ReleasedAggregate(
        "later",
        {"dataset": "admissions", "filters": filters},
        (names[free],),
        "count",
        shown,
        {(k[free],) for k in sub if (k[free],) not in shown},
    )
    if draw(st.booleans()):
        earlier, later = (
            ReleasedAggregate("earlier", later.population, later.dims, "count", later.cells, later.suppressed),
            ReleasedAggregate("later", earlier.population, earlier.dims, "count", earlier.cells, earlier.suppressed),
        )
    return earlier, later, small_at, counts[small_at]


@given(nested_pair())
@settings(max_examples=60, deadline=None)
def test_generated_nested_pairs_are_detected(pair):
    earlier, later, small_at, small = pair
    findings = differencing_audit(ReleaseLedger("p", [earlier]), later)
    revealed = {tuple(f["cell"][d] for d in ("a", "b", "c")): f["revealed"] for f in findings}
    assert revealed.get(small_at) == small
    assert all(f["earlier"] == "earlier" for f in findings)


@given(
    st.lists(st.integers(0, 300), min_size=6, max_size=6),
    st.lists(st.integers(0, 300), min_size=6, max_size=6),
    st.sampled_from(["==", "in"]),
)
@settings(max_examples=60, deadline=None)
def test_generated_disjoint_pairs_are_never_flagged(first, second, op):
    regions = [(r, s) for r in ["n", "s", "e"] for s in ["F", "M"]]

    def term(value):
        return {"column": "site", "op": op, "value": value if op == "==" else [value]}

    a = _agg("a", ["region", "sex"], dict(zip(regions, first, strict=True)), filters=[term("x")], margins=True)
    b = _agg("b", ["region", "sex"], dict(zip(regions, second, strict=True)), filters=[term("y")], margins=True)
    assert differencing_audit(ReleaseLedger("p", [a]), b) == []


def test_total_of_a_table_by_another_variable_reveals_a_suppressed_cell():
    # The later table splits the sub-population by a variable the earlier one does not show (region):
    # its total, less the earlier table's released cells, still gives the suppressed cell (a group of
    # joint cells, not one).
    counts = _three_way(("mixed", "F", "65+"))
    earlier = _agg("release-1", ["eth", "sex", "age"], counts, suppressed=[("mixed", "F", "65+")])
    total = sum(v for k, v in counts.items() if k[1:] == ("F", "65+"))
    north = total // 2
    later = _agg(
        "release-2",
        ["region"],
        {("north",): north, ("south",): total - north},
        filters=[{"column": "sex", "op": "==", "value": "F"}, {"column": "age", "op": "==", "value": "65+"}],
        margins=True,
    )

    findings = differencing_audit(ReleaseLedger("p1", [earlier]), later)

    assert [(f["cell"], f["revealed"], f["earlier"]) for f in findings] == [
        ({"eth": "mixed", "sex": "F", "age": "65+"}, 9, "release-1")
    ]


def test_all_but_one_category_split_by_another_dimension_is_flagged():
    rng = np.random.default_rng(5)
    counts = {(r, s, e): int(rng.integers(40, 200)) for r in ["n", "s"] for s in SEX for e in ETH}
    counts[("n", "F", "other")], counts[("n", "M", "other")] = 2, 1
    by_region_sex: dict = {}
    without: dict = {}
    for (r, s, e), v in counts.items():
        by_region_sex[(r, s)] = by_region_sex.get((r, s), 0) + v
        if e != "other":
            without[(r,)] = without.get((r,), 0) + v
    earlier = _agg("full", ["region", "sex"], by_region_sex)
    later = _agg("no-other", ["region"], without, filters=[{"column": "eth", "op": "notin", "value": ["other"]}])

    findings = differencing_audit(ReleaseLedger("p", [earlier]), later)

    assert {(f["cell"]["region"], f["revealed"]) for f in findings} == {("n", 3)}


def _swap(draw, earlier, later):
    if draw(st.booleans()):
        return (
            ReleasedAggregate(earlier.output_id, later.population, later.dims, "count", later.cells, later.suppressed),
            ReleasedAggregate(
                later.output_id, earlier.population, earlier.dims, "count", earlier.cells, earlier.suppressed
            ),
        )
    return earlier, later


@st.composite
def all_but_one_pair(draw):
    """Totals by region (and perhaps sex), then the same over everyone but one category of a column the
    tables do not show; that category is small in one region."""
    regions = [f"r{i}" for i in range(draw(st.integers(2, 5)))]
    cats = [f"c{i}" for i in range(draw(st.integers(2, 4)))]
    by_sex = draw(st.booleans())
    sexes = ["F", "M"] if by_sex else [None]
    counts = {(r, s, c): draw(st.integers(10, 300)) for r in regions for s in sexes for c in cats}
    target_r, target_c = draw(st.sampled_from(regions)), draw(st.sampled_from(cats))
    for s in sexes:
        counts[(target_r, s, target_c)] = 0
    counts[(target_r, sexes[0], target_c)] = small = draw(st.integers(1, 9))
    dims = ["region", "sex"] if by_sex else ["region"]

    def table(keep):
        out: dict = {}
        for (r, s, c), v in counts.items():
            if keep(c):
                key = (r, s) if by_sex else (r,)
                out[key] = out.get(key, 0) + v
        return out

    op = draw(st.sampled_from(["!=", "notin"]))
    term = {"column": "eth", "op": op, "value": target_c if op == "!=" else [target_c]}
    earlier = _agg("earlier", dims, table(lambda c: True))
    later = _agg("later", dims, table(lambda c: c != target_c), filters=[term])
    earlier, later = _swap(draw, earlier, later)
    return earlier, later, target_r, small


@given(all_but_one_pair())
@settings(max_examples=60, deadline=None)
def test_generated_all_but_one_category_pairs_are_detected(pair):
    earlier, later, region, small = pair
    findings = differencing_audit(ReleaseLedger("p", [earlier]), later)
    assert any(f["cell"].get("region") == region and f["revealed"] == small for f in findings)
    assert all(f["earlier"] == "earlier" for f in findings)


@st.composite
def linked_pair(draw):
    """A two-way table without margins and one small cell suppressed, then one of its one-way tables."""
    rows = [f"a{i}" for i in range(draw(st.integers(2, 5)))]
    cols = [f"b{i}" for i in range(draw(st.integers(2, 5)))]
    counts = {(r, c): draw(st.integers(10, 300)) for r in rows for c in cols}
    at = (draw(st.sampled_from(rows)), draw(st.sampled_from(cols)))
    counts[at] = small = draw(st.integers(1, 9))
    earlier = _agg("earlier", ["a", "b"], counts, suppressed=[at])
    axis = draw(st.integers(0, 1))
    totals: dict = {}
    for k, v in counts.items():
        totals[(k[axis],)] = totals.get((k[axis],), 0) + v
    later = _agg("later", [["a", "b"][axis]], totals)
    earlier, later = _swap(draw, earlier, later)
    return earlier, later, at, small


@given(linked_pair())
@settings(max_examples=60, deadline=None)
def test_generated_linked_totals_are_detected(pair):
    earlier, later, at, small = pair
    findings = differencing_audit(ReleaseLedger("p", [earlier]), later)
    assert any(f["cell"] == {"a": at[0], "b": at[1]} and f["revealed"] == small for f in findings)


def test_sum_tables_reveal_a_suppressed_total_whatever_its_size():
    costs = {("n", "F"): 12_000.0, ("n", "M"): 4_500.0, ("s", "F"): 9_000.0, ("s", "M"): 11_000.0}
    earlier = ReleasedAggregate(
        "sums",
        {"dataset": "d", "filters": []},
        ("region", "sex"),
        "sum",
        {k: v for k, v in costs.items() if k != ("n", "M")},
        {("n", "M")},
    )
    later = ReleasedAggregate(
        "by-region", {"dataset": "d", "filters": []}, ("region",), "sum", {("n",): 16_500.0, ("s",): 20_000.0}
    )
    findings = differencing_audit(ReleaseLedger("p", [earlier]), later)
    assert [(f["cell"], f["revealed"]) for f in findings] == [({"region": "n", "sex": "M"}, 4_500.0)]


def test_labels_read_from_a_csv_meet_filter_values_of_another_type():
    # The earlier file's year labels were read as numbers; the later table's filter says "2015" as text.
    counts = {(2014, "G"): 120, (2014, "N"): 80, (2015, "G"): 4, (2015, "N"): 95}
    earlier = _agg("by-year", ["year", "grant"], counts, suppressed=[(2015, "G")])
    later = ReleasedAggregate(  # only its total: no grant label is shown
        "2015",
        {"dataset": "admissions", "filters": [{"column": "year", "op": "==", "value": "2015"}]},
        ("grant",),
        "count",
        {(None,): 99.0},
    )
    findings = differencing_audit(ReleaseLedger("p", [earlier]), later)
    assert [(f["cell"], f["revealed"]) for f in findings] == [({"year": 2015, "grant": "G"}, 4)]


# --- soundness: whatever the audit reports is true -------------------------------------------------------
COLUMN_VALUES = {"a": ["a0", "a1", "a2"], "b": ["b0", "b1"], "c": ["c0", "c1", "c2"]}


@st.composite
def term_on(draw, column):
    values = COLUMN_VALUES[column]
    op = draw(st.sampled_from(["==", "!=", "in", "notin"]))
    if op in ("in", "notin"):
        return {"column": column, "op": op, "value": draw(st.lists(st.sampled_from(values), min_size=1, unique=True))}
    return {"column": column, "op": op, "value": draw(st.sampled_from(values))}


@st.composite
def released_from_microdata(draw):
    rows = draw(st.lists(st.tuples(*[st.sampled_from(v) for v in COLUMN_VALUES.values()]), min_size=5, max_size=120))
    frame = pd.DataFrame(rows, columns=list(COLUMN_VALUES))
    tables = []
    for name in ("earlier", "later"):
        dims = draw(st.lists(st.sampled_from(list(COLUMN_VALUES)), min_size=1, max_size=2, unique=True))
        filters = draw(st.lists(st.sampled_from(list(COLUMN_VALUES)).flatmap(term_on), max_size=2))
        sub = frame[pop.mask(frame, filters)] if filters else frame
        counts = sub.groupby(dims).size()
        cells = {(k if isinstance(k, tuple) else (k,)): float(v) for k, v in counts.items()}
        if draw(st.booleans()):
            cells[(None,) * len(dims)] = float(len(sub))
        hidden = {k for k in cells if None not in k and draw(st.booleans()) and cells[k] < 10}
        shown = {k: v for k, v in cells.items() if k not in hidden}
        tables.append(
            ReleasedAggregate(name, {"dataset": "d", "filters": filters}, tuple(dims), "count", shown, hidden)
        )
    return frame, tables[0], tables[1]


def _true_count(frame, shared, cell):
    rows = frame[pop.mask(frame, shared)] if shared else frame
    for column, label in cell.items():
        if isinstance(label, dict):
            rows = rows[~rows[column].isin(label["not in"])]
        else:
            rows = rows[rows[column] == label]
    return len(rows)


@given(released_from_microdata())
@settings(max_examples=150, deadline=None)
def test_every_single_cell_finding_of_the_exact_audit_is_the_true_count(case):
    frame, earlier, later = case
    findings = differencing_audit(ReleaseLedger("p", [earlier]), later)
    shared, _, _ = pop.split_terms(earlier.population["filters"], later.population["filters"])
    for f in findings:
        if f["method"] == "joint table" and f["joint_cells"] == 1:
            assert f["revealed"] == _true_count(frame, shared, f["cell"])
