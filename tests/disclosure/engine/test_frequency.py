import json

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from disclosure.engine.rules import class_disclosure_mask
from disclosure.engine.tables import check_frequency_table, check_published_counts


def _rows(counts: dict[tuple, int]) -> pd.DataFrame:
    """Microdata with the given number of rows per (a, b) cell."""
    rows = [(a, b) for (a, b), n in counts.items() for _ in range(n)]
    return pd.DataFrame(rows, columns=["a", "b"])


def _cell(verdict, **labels):
    return [c for c in verdict["cells"] if c["labels"] == labels and not c["margin"]]


def test_threshold_flags_cells_below_ten_only():
    data = _rows({("x", "p"): 9, ("x", "q"): 10, ("y", "p"): 30, ("y", "q"): 40})
    result = check_frequency_table(data, ["a", "b"], mitigation="none")
    flagged = _cell(result.verdict, a="x", b="p")
    assert flagged[0]["rules"] == ["threshold"]
    assert not _cell(result.verdict, a="x", b="q")
    assert result.verdict["status"] == "fail"


def test_threshold_counts_distinct_people_not_records():
    data = pd.DataFrame({"a": ["x"] * 12 + ["y"] * 20, "pid": [1, 2, 3] * 4 + list(range(10, 30))})
    by_record = check_frequency_table(data, ["a"], mitigation="none")
    by_person = check_frequency_table(data, ["a"], person="pid", mitigation="none")
    assert by_record.verdict["status"] == "pass"
    assert by_person.verdict["status"] == "fail"
    assert by_person.table(released=False).loc["x", "value"] == 12  # released value is still the count


def test_margin_contributors_count_each_person_once():
    # Person 1 appears in both columns: 9 distinct people in row x's margin, though the cells hold 5 + 5.
    data = pd.DataFrame(
        {
            "a": ["x"] * 10 + ["y"] * 40,
            "b": ["p"] * 5 + ["q"] * 5 + ["p", "q"] * 20,
            "pid": [1, 2, 3, 4, 5, 1, 6, 7, 8, 9] + list(range(100, 140)),
        }
    )
    result = check_frequency_table(data, ["a", "b"], person="pid", mitigation="none")
    assert result.stats.contributors[0, 2] == 9


def test_zeros_are_flagged_when_disclosive(policy):
    data = _rows({("x", "p"): 20, ("y", "q"): 20, ("y", "p"): 20})
    data["b"] = pd.Categorical(data["b"], categories=["p", "q"])
    result = check_frequency_table(data, ["a", "b"], mitigation="none", policy=policy)
    assert "zeros" in _cell(result.verdict, a="x", b="q")[0]["rules"]
    structural = policy.with_overrides({"frequency": {"zeros": "structural"}})
    result = check_frequency_table(data, ["a", "b"], mitigation="none", policy=structural)
    assert not [c for c in result.verdict["cells"] if "zeros" in c["rules"]]


def test_class_disclosure_flags_only_nonzero_cell_of_a_line():
    counts = np.array([[0, 15, 0], [12, 11, 20], [13, 0, 9], [0, 0, 0]])
    ext = np.zeros((5, 4))
    ext[:4, :3] = counts
    mask = class_disclosure_mask(ext)
    assert mask[0, 1]  # everyone in row 0 is in column 1
    assert mask.sum() == 1
    assert not mask[3].any()  # an empty row reveals nothing about a category


def test_suppression_hides_primary_and_partner_in_same_row():
    data = _rows({("x", "p"): 3, ("x", "q"): 50, ("x", "r"): 60, ("y", "p"): 40, ("y", "q"): 45, ("y", "r"): 70})
    result = check_frequency_table(data, ["a", "b"])
    released = result.table()
    assert np.isnan(released.loc["x", "p"])
    assert np.isnan(released.loc["x"]).sum() == 2  # the partner stops recovery from the row total
    assert np.isnan(released["p"]).sum() == 2  # ... and from the column total
    audit = result.verdict["mitigation"]["suppression"]["audit"]
    assert audit["status"] == "protected"
    primary = [i for i in audit["intervals"] if i["primary"]]
    assert primary[0]["labels"] == {"a": "x", "b": "p"}
    assert primary[0]["width"] >= 5


def test_verdict_is_json_serialisable_with_mixed_label_types():
    data = pd.DataFrame(
        {
            "num": np.repeat([1, 2], 30),
            "flt": np.tile([0.5, 1.5, 2.5], 20),
            "cat": pd.Categorical(np.tile(["a", "b"], 30)),
            "ts": pd.to_datetime(np.repeat(["2020-01-01", "2021-01-01"], 30)),
        }
    ).iloc[:-5]
    result = check_frequency_table(data, ["num", "flt", "cat", "ts"])
    text = json.dumps(result.verdict)
    assert "2020-01-01" in text
    labels = [c["labels"] for c in result.verdict["cells"]]
    assert any(isinstance(lab["flt"], float) for lab in labels)


def test_rounding_applies_after_redaction():
    data = _rows(
        {
            ("x", "p"): 3,
            ("x", "q"): 52,
            ("x", "r"): 33,
            ("y", "p"): 41,
            ("y", "q"): 47,
            ("y", "r"): 36,
            ("z", "p"): 12,
            ("z", "q"): 14,
            ("z", "r"): 17,
        }
    )
    result = check_frequency_table(data, ["a", "b"], mitigation="round")
    released = result.table(margins=True)
    true = result.table(released=False, margins=True)
    assert np.isnan(released.loc["x", "p"])
    shown = ~released.isna()
    assert shown.to_numpy().sum() >= 4
    expected = (np.floor(true / 5 + 0.5) * 5)[shown]
    pd.testing.assert_frame_equal(released[shown], expected)
    assert released.loc["All", "All"] == 255  # the true total rounded, not a sum of rounded cells
    assert result.verdict["mitigation"]["rounding"] == {"base": 5, "totals": "round_true_total"}


def test_published_counts_without_microdata_are_at_best_review():
    table = pd.DataFrame({"p": [3, 40], "q": [50, 45]}, index=["x", "y"])
    result = check_published_counts(table)
    assert result.verdict["status"] == "review"
    assert np.isnan(result.table().loc["x", "p"])
    clean = check_published_counts(pd.DataFrame({"p": [30, 40], "q": [50, 45]}, index=["x", "y"]))
    assert clean.verdict["status"] == "review"
    assert clean.verdict["status_before_mitigation"] == "pass"


def test_published_counts_with_inconsistent_margins_fail():
    table = pd.DataFrame({"p": [30, 40, 70], "q": [50, 45, 96], "All": [80, 85, 166]}, index=["x", "y", "All"])
    result = check_published_counts(table, has_margins=True)
    assert result.verdict["status"] == "fail"


def test_policy_without_secondary_suppression_fails_the_recoverable_table(policy):
    data = _rows({("x", "p"): 3, ("x", "q"): 50, ("x", "r"): 60, ("y", "p"): 40, ("y", "q"): 45, ("y", "r"): 70})
    no_secondary = policy.with_overrides({"suppression": {"secondary": False}})
    result = check_frequency_table(data, ["a", "b"], policy=no_secondary, audit="exact")
    assert result.verdict["status"] == "fail"
    assert result.verdict["mitigation"]["suppression"]["audit"]["status"] == "exposed"


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-3, 40), st.integers(0, 5), st.floats(0, 100)), min_size=1, max_size=80),
    st.sampled_from([np.int64, np.int32, np.uint16]),
)
def test_integer_labels_counted_over_their_range_give_the_factorised_table(rows, dtype):
    from disclosure.engine.stats import compute_table_stats

    frame = pd.DataFrame(rows, columns=["a", "b", "v"])
    if dtype is np.uint16:
        frame["a"] = frame["a"] + 3
    ints = frame.astype({"a": dtype, "b": dtype})
    hashed = frame.astype({"a": object, "b": object})  # object labels go through pd.factorize
    for value in (None, "v"):
        fast = compute_table_stats(ints, ["a", "b"], value=value)
        slow = compute_table_stats(hashed, ["a", "b"], value=value)
        assert [list(c) for c in fast.categories] == [list(c) for c in slow.categories]
        np.testing.assert_array_equal(fast.records, slow.records)
        np.testing.assert_array_equal(fast.contributors, slow.contributors)
        if value:
            np.testing.assert_allclose(fast.total, slow.total)
            np.testing.assert_array_equal(fast.top, slow.top)


def test_numbers_of_a_frame_are_its_cells_coerced_column_by_column_whatever_the_column_types():
    from disclosure.engine.tables import numbers

    frames = [
        pd.DataFrame({"f": [1.5, np.nan], "i": np.array([3, 4], dtype=np.int64), "u": np.array([5, 6], np.uint8)}),
        pd.DataFrame({"t": ["7", "x"], "b": [True, False], "n": pd.array([1, None], dtype="Int64")}),
        pd.DataFrame({"o": pd.Series([8, "9"], dtype=object)}),
        pd.DataFrame(index=["a", "b"]),
    ]
    for frame in frames:
        expected = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        np.testing.assert_array_equal(numbers(frame), expected)
