import numpy as np
import pandas as pd

from disclosure.engine.policy import default_policy
from disclosure.engine.tables import check_magnitude_table


def _cell_rules(result, **labels):
    for c in result.verdict["cells"]:
        if c["labels"] == labels and not c["margin"]:
            return c["rules"]
    return []


def _table(groups: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([(g, v) for g, vs in groups.items() for v in vs], columns=["g", "v"])


def test_nk_dominance_two_largest_over_ninety_percent():
    # 11 contributors: two of 100 and nine of 2 -> 200 / 218 = 0.917 > 0.9
    data = _table({"dominated": [100, 100] + [2] * 9, "spread": [10] * 11 + [11]})
    result = check_magnitude_table(data, ["g"], "v", mitigation="none")
    assert "nk_dominance" in _cell_rules(result, g="dominated")
    assert "nk_dominance" not in _cell_rules(result, g="spread")


def test_nk_dominance_just_below_k_passes():
    # 180 / 200 = 0.9 exactly is not "more than" k
    data = _table({"edge": [90, 90] + [2] * 10})
    result = check_magnitude_table(data, ["g"], "v", mitigation="none")
    assert "nk_dominance" not in _cell_rules(result, g="edge")


def test_p_percent_rule_flags_when_remainder_below_p_of_largest():
    # largest 1000, second 10, remaining ten of 9 -> 90 < 0.1 * 1000
    data = _table({"exposed": [1000, 10] + [9] * 10, "safe": [1000, 10] + [11] * 10})
    result = check_magnitude_table(data, ["g"], "v", mitigation="none")
    assert "p_percent" in _cell_rules(result, g="exposed")
    assert "p_percent" not in _cell_rules(result, g="safe")


def test_magnitude_threshold_ignores_missing_values():
    data = _table({"g1": [1.0] * 8 + [np.nan] * 5 + [2.0]})  # 9 contributors, 14 records
    result = check_magnitude_table(data, ["g"], "v", mitigation="none")
    assert "threshold" in _cell_rules(result, g="g1")


def test_missing_values_are_flagged_only_where_the_policy_asks():
    """Missing values are never contributors, so by default a cell of 12 values and 3 missing passes; a TRE
    (or a researcher tightening ACRO's check_missing_values) may send such cells to review."""
    data = _table({"g1": [float(v) for v in range(1, 13)] + [np.nan] * 3})
    default = check_magnitude_table(data, ["g"], "v", mitigation="none")
    strict = check_magnitude_table(
        data,
        ["g"],
        "v",
        mitigation="none",
        policy=default_policy().with_overrides({"magnitude": {"missing": "review"}}),
    )
    assert _cell_rules(default, g="g1") == [] and default.verdict["status"] == "pass"
    assert "missing" in _cell_rules(strict, g="g1") and strict.verdict["status"] == "review"


def test_negative_values_use_absolute_contributions_and_need_review():
    data = _table({"neg": [-1000, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]})
    result = check_magnitude_table(data, ["g"], "v", mitigation="none")
    rules = _cell_rules(result, g="neg")
    assert "negatives" in rules and "nk_dominance" in rules


def test_identical_values_reveal_each_contributor():
    data = _table({"same": [7.0] * 12, "varied": list(range(12))})
    result = check_magnitude_table(data, ["g"], "v", mitigation="none")
    assert "identical_values" in _cell_rules(result, g="same")
    assert "identical_values" not in _cell_rules(result, g="varied")


def test_dominance_uses_person_totals_when_id_given():
    # one person has 10 rows of 50 -> dominates once their rows are summed
    data = pd.DataFrame({"g": ["a"] * 20, "v": [50.0] * 10 + [5.0] * 10, "pid": [1] * 10 + list(range(2, 12))})
    by_record = check_magnitude_table(data, ["g"], "v", mitigation="none")
    by_person = check_magnitude_table(data, ["g"], "v", person="pid", mitigation="none")
    assert "nk_dominance" not in _cell_rules(by_record, g="a")
    assert "nk_dominance" in _cell_rules(by_person, g="a")


def test_mean_table_suppresses_small_cells_and_proves_protection():
    rng = np.random.default_rng(1)
    rows = []
    for a in "xyz":
        for b in "pqr":
            n = 4 if (a, b) == ("x", "p") else 30
            rows += [(a, b, v) for v in rng.uniform(10, 20, n)]
    data = pd.DataFrame(rows, columns=["a", "b", "v"])
    result = check_magnitude_table(data, ["a", "b"], "v", statistic="mean")
    released = result.table()
    assert np.isnan(released.loc["x", "p"])
    assert result.verdict["mitigation"]["suppression"]["audit"]["status"] == "protected"
    shown = result.table(released=False)
    assert abs(shown.loc["y", "q"] - data.query("a == 'y' and b == 'q'")["v"].mean()) < 1e-9
