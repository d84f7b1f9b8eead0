"""Tables of medians, quantiles, spreads, extremes and modes: values as pandas computes them, and their rules."""

import numpy as np
import pandas as pd
import pytest

from disclosure.engine.specs import recompute, table_spec
from disclosure.engine.summary import check_summary_table


def cohort(seed: int = 7, n: int = 600) -> pd.DataFrame:
    """A synthetic cohort with two large groups and one group of four people."""
    rng = np.random.default_rng(seed)
    big = pd.DataFrame(
        {
            "group": rng.choice(["control", "treated"], n),
            "sex": rng.choice(["F", "M"], n),
            "age": rng.normal(60, 10, n).round(),
        }
    )
    small = pd.DataFrame({"group": ["rare"] * 4, "sex": ["F", "F", "M", "M"], "age": [41.0, 52.0, 63.0, 74.0]})
    return pd.concat([big, small], ignore_index=True)


def cell(result, group, sex=None):
    table = result.table(released=False)
    return table.loc[group] if sex is None else table.loc[group, sex]


@pytest.mark.parametrize(
    "stat,pandas_name", [("median", "median"), ("std", "std"), ("var", "var"), ("min", "min"), ("max", "max")]
)
def test_summary_values_match_pandas(stat, pandas_name):
    df = cohort()
    result = check_summary_table(df, ["group", "sex"], "age", statistic=stat, mitigation="none")
    expected = pd.crosstab(df.group, df.sex, values=df.age, aggfunc=pandas_name)
    np.testing.assert_allclose(result.table(released=False).to_numpy(), expected.to_numpy())


def test_quantile_and_iqr_match_numpy_including_margins():
    df = cohort()
    q25 = check_summary_table(df, ["group", "sex"], "age", statistic="q25", mitigation="none")
    iqr = check_summary_table(df, ["group", "sex"], "age", statistic="iqr", mitigation="none")
    control = df[df.group == "control"].age
    assert q25.table(released=False, margins=True).loc["control", "All"] == pytest.approx(np.quantile(control, 0.25))
    assert iqr.table(released=False, margins=True).loc["All", "All"] == pytest.approx(
        np.quantile(df.age, 0.75) - np.quantile(df.age, 0.25)
    )


def test_median_of_small_group_fails_with_either_side_reason():
    result = check_summary_table(cohort(), ["group"], "age", statistic="median", mitigation="suppress")
    released = result.table()
    assert np.isnan(released.loc["rare", "value"])
    assert not np.isnan(released.loc["control", "value"])
    rare = [c for c in result.verdict["cells"] if c["labels"].get("group") == "rare"][0]
    assert "quantile_either_side" in rare["rules"] and rare["action"] == "suppressed_primary"
    assert result.verdict["mitigation"]["suppression"]["secondary"] == 0


def test_median_with_too_few_either_side_fails_even_above_threshold():
    # 12 people, 8 of them share the median value: only 2 strictly below it.
    df = pd.DataFrame({"g": ["a"] * 12, "x": [1.0, 2.0] + [5.0] * 8 + [9.0, 10.0]})
    result = check_summary_table(df, ["g"], "x", statistic="median", mitigation="none")
    either = [r for r in result.rules if r.rule == "quantile_either_side"][0]
    assert either.flagged == 2  # the cell and its margin
    assert result.verdict["status"] == "fail"


def test_std_needs_degrees_of_freedom_and_distinct_values():
    df = pd.DataFrame({"g": ["a"] * 10 + ["b"] * 12, "x": list(range(10)) + [3.0] * 12})
    result = check_summary_table(df, ["g"], "x", statistic="std", mitigation="none")
    flagged = {r.rule: r.mask[:2].tolist() for r in result.rules}
    assert flagged["degrees_of_freedom"] == [False, False]  # 10 contributors: 9 dof meets the minimum
    assert flagged["identical_values"] == [False, True]


def test_extremes_are_reviewed_without_suppression_and_suppressed_with_it():
    df = cohort()
    plain = check_summary_table(df, ["group"], "age", statistic="max", mitigation="none")
    assert plain.verdict["status_before_mitigation"] in ("review", "fail")
    assert plain.verdict["status"] != "pass"
    big = [c for c in plain.verdict["cells"] if c["labels"].get("group") == "control"][0]
    assert big["status"] == "review" and "one individual's exact value" in big["reasons"][-1]
    suppressed = check_summary_table(df, ["group"], "age", statistic="max", mitigation="suppress")
    assert suppressed.table().isna().all().all()


def test_mode_is_the_middle_of_ties_and_a_value_one_person_holds_must_lie_inside():
    df = pd.DataFrame({"g": ["a"] * 24, "x": [2.0] * 11 + [1.0] * 11 + [3.0, 4.0]})
    result = check_summary_table(df, ["g"], "x", statistic="mode", mitigation="none")
    assert result.table(released=False).iloc[0, 0] == 1.0  # two tied: the lower middle
    assert result.verdict["status"] == "pass"
    distinct = pd.DataFrame({"g": ["a"] * 11 + ["b"] * 11, "x": list(range(11)) + list(range(10)) + [100]})
    spread = check_summary_table(distinct, ["g"], "x", statistic="mode", mitigation="suppress")
    assert spread.table(released=False).loc["a", "value"] == 5  # not the minimum, 0
    assert spread.verdict["status"] == "pass"  # 5 people below and 5 above, as a median needs
    edge = distinct.assign(x=[0] * 5 + list(range(1, 7)) + [0] * 5 + list(range(1, 7)))
    shared = check_summary_table(edge, ["g"], "x", statistic="mode", mitigation="suppress")
    assert shared.table().loc["a", "value"] == 0  # five people share it: no one person's value


def test_mode_everyone_holds_is_class_disclosure_and_a_lone_value_near_the_edge_is_suppressed():
    # "same": 12 people all hold 7. "few": 10 distinct values, so the reported mode (the 5th) has 4 below.
    df = pd.DataFrame({"g": ["same"] * 12 + ["few"] * 10, "x": [7.0] * 12 + [float(v) for v in range(10)]})
    result = check_summary_table(df, ["g"], "x", statistic="mode", mitigation="suppress")
    table = result.table()
    flagged = {c["labels"]["g"]: c["rules"] for c in result.verdict["cells"] if not c["margin"]}
    assert np.isnan(table.loc["same", "value"]) and "identical_values" in flagged["same"]
    assert np.isnan(table.loc["few", "value"]) and flagged["few"] == ["mode_either_side"]


def test_person_level_contributors_count_people_not_records():
    # 12 records from 3 people: a median of three people's values, not of twelve contributors.
    df = pd.DataFrame({"g": ["a"] * 12, "pid": [1, 2, 3] * 4, "x": np.arange(12.0)})
    by_record = check_summary_table(df, ["g"], "x", statistic="median", mitigation="none")
    by_person = check_summary_table(df, ["g"], "x", statistic="median", person="pid", mitigation="none")
    assert by_record.verdict["criteria"][0]["status"] == "pass"
    assert by_person.verdict["criteria"][0]["status"] == "fail"


def test_summary_spec_recomputes_to_the_same_table():
    df = cohort()
    spec = table_spec(["group", "sex"], "median", value="age", filters=[])
    first = check_summary_table(df, ["group", "sex"], "age", statistic="median")
    again = recompute(spec, df)
    pd.testing.assert_frame_equal(first.table(), again.table())


def test_mode_of_a_category_reports_the_label_and_suppresses_a_rare_mode():
    df = pd.DataFrame(
        {
            "ward": ["A"] * 30 + ["B"] * 8,
            "diagnosis": ["flu"] * 12 + ["asthma"] * 12 + ["gout"] * 6 + ["flu"] * 5 + ["gout"] * 3,
        }
    )
    result = check_summary_table(df, ["ward"], "diagnosis", statistic="mode", mitigation="suppress")
    table = result.table()
    assert table.loc["A", "value"] == "asthma"  # 12 asthma and 12 flu: the first in sort order
    assert pd.isna(table.loc["B", "value"])  # only 5 hold flu
