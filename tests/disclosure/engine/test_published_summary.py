"""A published summary table without microdata (disclosure/engine/published_summary.py): counts beside
medians, means and spreads, told apart by whole tokens of their headers, each statistic judged by its
row's count."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from disclosure.engine import default_policy
from disclosure.engine.published import read_published_table
from disclosure.engine.published_summary import (
    check_published_summary,
    column_role,
    column_roles,
    count_column_of,
    is_summary_table,
)

# The lead's Table 1: plain pandas, no session, so no specification travels with it.
TABLE_1 = b"sex,n,los_median,los_sd\nF,3396,3.0,7.840118\nM,3044,3.0,8.465525\n"
TABLE_1_SMALL_ROW = TABLE_1 + b"U,4,2.0,1.5\n"


def _check(content: bytes, mitigation: str = "none") -> dict:
    return check_published_summary(read_published_table(content), policy=default_policy(), mitigation=mitigation)


def _flags(verdict: dict) -> dict[tuple, list[str]]:
    col = verdict["dims"][1]
    row = verdict["dims"][0]
    return {(c["labels"][row], c["labels"][col]): c["rules"] for c in verdict["cells"] if not c["margin"]}


@pytest.mark.parametrize(
    ("header", "kind", "variable"),
    [
        ("los_median", "median", ("los",)),
        ("median_los", "median", ("los",)),
        ("mean_los", "mean", ("los",)),
        ("los_mean", "mean", ("los",)),
        ("avg", "mean", ()),
        ("los_sd", "sd", ("los",)),
        ("std", "sd", ()),
        ("Age (SD)", "sd", ("age",)),
        ("standard_deviation", "sd", ()),
        ("standard_error", "sd", ()),
        ("los.var", "var", ("los",)),
        ("q25", "quantile", ()),
        ("los-p75", "quantile", ("los",)),
        ("lq", "quantile", ()),
        ("iqr", "iqr", ()),
        ("min", "min", ()),
        ("age_max", "max", ("age",)),
        ("mode", "mode", ()),
        ("%", "percent", ()),
        ("pct_female", "percent", ("female",)),
        ("proportion", "percent", ()),
        (("los", "median"), "median", ("los",)),
    ],
)
def test_statistics_are_named_by_whole_tokens_of_the_header(header, kind, variable) -> None:
    role = column_role(header)

    assert (role.kind, role.variable) == (kind, variable)


@pytest.mark.parametrize("header", ["standard", "mediana", "meaning", "sdx", "minority", "maxwell", "p975", "error"])
def test_a_statistic_word_inside_another_word_is_no_statistic(header) -> None:
    # Substrings never count: "standard" holds "sd" in no token, "meaning" is not "mean".
    assert column_role(header).kind == "count"


@pytest.mark.parametrize("header", ["n", "N", "count", "freq", "frequency", "number", "patients", "los_n", "n_los"])
def test_counts_are_named_by_whole_tokens(header) -> None:
    role = column_role(header)

    assert role.is_count and role.named


def test_an_unknown_column_is_a_count_that_does_not_say_how_many_people_a_row_holds() -> None:
    role = column_role("deaths")

    assert role.is_count and not role.named  # judged as strictly as a count, but no row's n
    assert not column_role("n_missing").named  # counts the others, not the people behind a statistic


@pytest.mark.parametrize(
    ("headers", "kinds"),
    [
        (["n", "los_q1", "los_median", "los_q3"], ["count", "quantile", "median", "quantile"]),
        (["n", "median", "p25", "p75"], ["count", "median", "quantile", "quantile"]),
        (["Q1", "Q2", "Q3", "Q4"], ["count"] * 4),  # quarters of a year
        (["n", "median_wait", "Q1", "Q2", "Q3", "Q4"], ["count", "median"] + ["count"] * 4),
        (["n", "mean", "P1", "P2", "P3"], ["count", "mean"] + ["count"] * 3),  # periods
        (["n", "q25", "q75"], ["count"] * 3),  # no statistic named in words: not enough to judge by n
    ],
)
def test_numbered_tokens_are_quantiles_only_beside_a_worded_statistic_and_never_quarters(headers, kinds) -> None:
    assert [r.kind for r in column_roles(pd.Index(headers))] == kinds


def test_a_statistic_is_counted_by_its_own_variable_else_by_the_tables_one_count() -> None:
    roles = column_roles(pd.Index(["los_n", "los_median", "age_n", "age_mean"]))
    assert count_column_of(roles, 1) == 0 and count_column_of(roles, 3) == 2

    roles = column_roles(pd.Index(["n", "los_median", "age_mean"]))
    assert count_column_of(roles, 1) == 0 and count_column_of(roles, 2) == 0

    roles = column_roles(pd.Index(["los_n", "age_n", "bmi_mean"]))
    assert count_column_of(roles, 2) is None  # two counts, neither of bmi: no guess


def test_the_leads_table_1_goes_to_review_with_no_flag_on_its_statistics() -> None:
    verdict = _check(TABLE_1).verdict

    assert verdict["status"] == "review"
    assert verdict["cells"] == []
    assert not any(r.startswith("threshold") for r in verdict["reasons"])
    assert any("quantile_either_side (median)" in r for r in verdict["reasons"])  # what it cannot check
    roles = {c["column"]: (c["role"], c["counted_by"]) for c in verdict["columns"]}
    assert roles == {"n": ("count", None), "los_median": ("median", "n"), "los_sd": ("sd", "n")}


def test_a_row_of_four_people_fails_its_count_and_every_statistic_of_the_row() -> None:
    verdict = _check(TABLE_1_SMALL_ROW).verdict

    assert verdict["status"] == "fail"
    flags = _flags(verdict)
    assert flags == {
        ("U", "n"): ["threshold"],
        ("U", "los_median"): ["threshold"],
        ("U", "los_sd"): ["threshold", "degrees_of_freedom"],
    }
    assert "threshold: 1 count cell(s) fewer than 10 contributors" in verdict["reasons"]
    assert "threshold: 2 statistic cell(s) fewer than 10 contributors" in verdict["reasons"]


def test_suppression_takes_the_small_rows_statistics_alone_and_protects_its_count() -> None:
    result = _check(TABLE_1_SMALL_ROW, mitigation="suppress")
    actions = {(c["labels"]["sex"], c["labels"]["column_0"]): c["action"] for c in result.verdict["cells"]}

    assert actions[("U", "los_median")] == actions[("U", "los_sd")] == "suppressed_primary"
    assert actions[("U", "n")] == "suppressed_primary"
    secondary = {k for k, a in actions.items() if a == "suppressed_secondary"}
    assert secondary and all(col == "n" for _, col in secondary)  # a count protects a count, never a median
    assert np.isnan(result.released[2, 1]) and result.released[0, 1] == 3.0
    assert result.verdict["mitigation"]["statistics"]["secondary"] == 0
    # The figures name the file's cells, not also the row totals of its one count column (the same numbers).
    assert any(r.startswith("suppression: 1 primary and 1 secondary cell(s)") for r in result.verdict["reasons"])
    assert result.verdict["status"] == "review"


def test_pandas_groupby_count_median_std_is_read_as_a_count_and_its_statistics() -> None:
    frame = pd.DataFrame({"sex": ["F"] * 30 + ["M"] * 4, "los": list(range(30)) + [1, 2, 3, 4]})
    csv = frame.groupby("sex")["los"].agg(["count", "median", "std"]).to_csv().encode()

    verdict = _check(csv).verdict

    assert csv.startswith(b"sex,count,median,std")
    assert verdict["status"] == "fail"
    assert _flags(verdict) == {
        ("M", "count"): ["threshold"],
        ("M", "median"): ["threshold"],
        ("M", "std"): ["threshold", "degrees_of_freedom"],
    }


def test_pandas_two_row_header_of_agg_is_read_by_both_levels() -> None:
    frame = pd.DataFrame({"sex": ["F"] * 30 + ["M"] * 30, "los": range(60), "age": range(60)})
    csv = frame.groupby("sex").agg({"los": ["count", "median", "std"], "age": ["mean"]}).to_csv().encode()
    table = read_published_table(csv)

    verdict = _check(csv).verdict

    assert table.col_dims == ["column_0", "column_1"]
    assert verdict["status"] == "review" and verdict["cells"] == []
    counted = {c["column"]: c["counted_by"] for c in verdict["columns"]}
    assert counted == {
        "los / count": None,
        "los / median": "los / count",
        "los / std": "los / count",
        "age / mean": "los / count",
    }


def test_statistics_with_no_count_go_to_a_checker_with_the_reason() -> None:
    csv = b"sex,los_median,los_sd\nF,13.0,17.84\nM,13.0,18.47\n"

    verdict = _check(csv).verdict

    assert verdict["status"] == "review"
    assert any(r.startswith("statistics without the number of people behind them") for r in verdict["reasons"])
    assert all(c["rules"] == ["unknown_contributors"] for c in verdict["cells"]) and len(verdict["cells"]) == 4


def test_statistics_with_no_count_are_judged_as_strictly_as_counts() -> None:
    """Deny by default: with no count to judge them by, small values fail as small counts would, so a
    table whose headings only read like statistics loses nothing of the count check."""
    table_one = _check(b"sex,los_median,los_sd\nF,3.0,7.84\nM,13.0,18.47\n").verdict
    crosstab = _check(b"region,Minimum security,Medium security,Maximum security\nNorth,120,45,3\nSouth,200,60,4\n")

    assert table_one["status"] == "fail"
    assert _flags(table_one)[("F", "los_median")] == ["unknown_contributors", "threshold"]
    assert _flags(table_one)[("M", "los_median")] == ["unknown_contributors"]
    assert any("judged as a count" in r for r in table_one["reasons"])
    assert crosstab.verdict["status"] == "fail"
    flags = _flags(crosstab.verdict)
    assert flags[("North", "Maximum security")] == ["unknown_contributors", "threshold"]
    assert flags[("South", "Maximum security")] == ["unknown_contributors", "threshold"]


def test_extremes_are_always_flagged_and_a_spread_of_zero_reveals_each_value() -> None:
    csv = b"ward,n,los_max,los_sd\nA,50,90,0\nB,60,30,2.5\n"

    verdict = _check(csv).verdict

    flags = _flags(verdict)
    assert flags[("A", "los_max")] == ["exact_extreme"] and flags[("B", "los_max")] == ["exact_extreme"]
    assert flags[("A", "los_sd")] == ["identical_values"] and ("B", "los_sd") not in flags
    assert verdict["status"] == "fail"  # identical values fail; the extremes alone would be review


def test_a_percentage_of_a_small_row_is_flagged() -> None:
    csv = b"sex,n,pct\nF,96,96.0\nM,4,4.0\n"

    assert _flags(_check(csv).verdict) == {("M", "n"): ["threshold"], ("M", "pct"): ["threshold"]}


def test_a_total_row_of_medians_is_no_sum_and_is_judged_by_its_own_count() -> None:
    csv = TABLE_1 + b"Overall,6440,3.0,8.1\n"
    result = _check(csv)

    assert read_published_table(csv).notes == ["the total row does not equal the sum of its cells"]
    assert result.notes == [] and result.verdict["status"] == "review"
    wrong = _check(TABLE_1 + b"Overall,6441,3.0,8.1\n")
    assert wrong.notes == ["the total row does not equal the sum of its cells"]


def test_a_plain_count_table_is_not_a_summary_table() -> None:
    assert not is_summary_table(read_published_table(b"region,female,male\nNorth,25,3\nSouth,40,52\n"))
    with pytest.raises(ValueError):
        _check(b"region,female,male\nNorth,25,3\nSouth,40,52\n")
