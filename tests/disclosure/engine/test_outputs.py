import numpy as np
import pandas as pd

from disclosure.engine.outputs import (
    check_category_counts,
    check_extreme,
    check_histogram,
    check_mode,
    check_quantile,
    check_survival,
    padded_edges,
)


def test_histogram_small_bin_fails_and_data_edges_need_review():
    values = pd.Series(np.r_[np.full(50, 1.0), np.full(3, 9.0)])
    table, verdict = check_histogram(values, bins=[0, 5, 10])
    assert table["count"].tolist() == [50, 3]
    assert verdict["status"] == "fail"
    _, auto_edges = check_histogram(pd.Series(np.linspace(0, 1, 200)), bins=4)
    assert [c["status"] for c in auto_edges["criteria"]] == ["pass", "review"]


def test_quantile_needs_contributors_on_both_sides():
    value, verdict = check_quantile(pd.Series(np.arange(100.0)), 0.5)
    assert verdict["status"] == "pass" and value == 49.5
    _, verdict = check_quantile(pd.Series(np.arange(100.0)), 0.99)
    assert verdict["status"] == "fail"


def test_extremes_never_pass_and_mode_is_deterministic():
    assert check_extreme("maximum")["status"] == "fail"
    mode, verdict = check_mode(pd.Series(["b"] * 12 + ["a"] * 12))
    assert mode == "a" and verdict["status"] == "pass"
    _, small = check_mode(pd.Series(["x"] * 3 + ["y"]))
    assert small["status"] == "fail"


def test_survival_small_event_counts_fail():
    time = pd.Series(np.r_[np.full(30, 1), np.full(30, 2), [3]])
    status = pd.Series(np.r_[np.ones(15), np.zeros(15), np.ones(20), np.zeros(10), [1]])
    table, verdict = check_survival(time, status)
    assert table.loc[1, "at_risk"] == 61 and table.loc[1, "events"] == 15
    assert verdict["criteria"][0]["times"] == [3]


def test_pie_categories_below_threshold_fail():
    _, verdict = check_category_counts(pd.Series(["a"] * 20 + ["b"] * 2))
    assert verdict["status"] == "fail" and verdict["criteria"][0]["cells"] == ["b"]


def test_a_number_of_bins_is_laid_over_a_range_beyond_the_data():
    values = pd.Series(np.random.default_rng(42).normal(size=2000))
    edges = padded_edges(values, 5)
    assert len(edges) == 6 and edges[0] < values.min() and edges[-1] > values.max()
    _, verdict = check_histogram(values, edges)
    assert verdict["status"] == "pass"  # neither extreme is drawn as an edge
    _, automatic = check_histogram(values, 5)
    assert automatic["status"] == "review"  # numpy's own edges are the minimum and the maximum
    assert list(padded_edges(values, [0.0, 1.0])) == [0.0, 1.0]  # the researcher's edges are kept
    whole = padded_edges(pd.Series([3, 4, 5, 6] * 5), 3)
    assert whole[0] < 3 and whole[-1] > 6  # round data: the edge is moved past an extreme it would equal
