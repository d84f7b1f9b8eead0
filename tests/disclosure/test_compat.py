import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from disclosure.compat import ACRO
from disclosure.engine.specs import recompute


def test_acro_notebook_calls_run_and_write_results_json(charity_data, tmp_path):
    df = charity_data
    acro = ACRO(suppress=True)
    table = acro.crosstab(df.year, df.grant_type)
    assert np.isnan(table.loc[2010, "R/G"])  # 8 grants: suppressed
    acro.crosstab(df.year, df.grant_type, values=df.inc_grants, aggfunc="mean")
    acro.pivot_table(df, index=["grant_type"], values=["inc_grants"], aggfunc=["mean", "std"][:1])
    data = df[["inc_activity", "inc_grants", "inc_donations"]].dropna()
    acro.ols(data.inc_activity, sm.add_constant(data[["inc_grants", "inc_donations"]]))
    acro.olsr("inc_activity ~ inc_grants + inc_donations", data=data)
    acro.hist(df, "inc_grants")
    acro.surv_func(df.year - 2009, (df.inc_activity > 1e5).astype(int), output="table")
    acro.add_comments("output_0", "grants by year")
    acro.add_exception("output_5", "bins are wide")
    acro.remove_output("output_2")
    acro.finalise(str(tmp_path / "out"))

    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(doc) >= {"version", "results"}
    assert list(doc["results"]) == ["output_0", "output_1", "output_3", "output_4", "output_5", "output_6"]
    first = doc["results"]["output_0"]
    for key in (
        "uid",
        "status",
        "type",
        "properties",
        "files",
        "outcome",
        "command",
        "summary",
        "timestamp",
        "comments",
        "exception",
    ):
        assert key in first
    assert first["comments"] == ["grants by year"]
    assert first["type"] == "table" and first["status"] == "review"
    sdc = first["files"][0]["sdc"]
    assert sdc["summary"]["MinimumThresholdCheck"] == 6
    assert [5, 3] in sdc["cells"]["MinimumThresholdCheck"]  # row 2015, column R/G
    assert first["outcome"]["R/G"]["2015"] == "MinimumThresholdCheck; "
    checksum = (tmp_path / "out" / "checksums" / "results.json.txt").read_text()
    assert checksum == hashlib.sha256((tmp_path / "out" / "results.json").read_bytes()).hexdigest()
    assert (tmp_path / "out" / first["files"][0]["name"]).exists()
    assert doc["results"]["output_5"]["exception"] == "bins are wide"
    assert doc["results"]["output_3"]["type"] == "regression"
    assert doc["results"]["output_3"]["tre_verdict"]["policy"]["sha256"]


def test_unsupported_aggfunc_is_refused_not_silently_passed(charity_data):
    with pytest.raises(ValueError, match="not supported"):
        ACRO().crosstab(charity_data.year, charity_data.grant_type, values=charity_data.inc_grants, aggfunc="prod")
    with pytest.raises(ValueError, match="not supported"):
        ACRO().crosstab(
            charity_data.year, charity_data.grant_type, values=charity_data.inc_grants, aggfunc=lambda s: s.iloc[0]
        )


def _eleven_per_cell(shift_eight_to_nine: bool) -> pd.DataFrame:
    """Two by three cells of eleven people valued 0..10 (8 made 9, so 9 is the one mode, when asked)."""
    rows = [(a, b, 9 if shift_eight_to_nine and v == 8 else v) for a in "AB" for b in "ABC" for v in range(11)]
    return pd.DataFrame(rows, columns=["group", "site", "score"])


def test_function_aggfunc_whose_values_are_one_statistic_gets_that_statistics_table_and_checks():
    df = _eleven_per_cell(shift_eight_to_nine=True)

    def first_mode(s: pd.Series) -> float:
        return s.mode().iloc[0]

    named, function = ACRO(), ACRO()
    expected = named.pivot_table(df, index="group", columns="site", values="score", aggfunc="mode")
    shown = function.pivot_table(df, index="group", columns="site", values="score", aggfunc=first_mode)
    highest = function.pivot_table(df, index="group", columns="site", values="score", aggfunc=lambda s: s.max())

    assert shown.equals(expected)
    assert function.results.get_index(0).verdict["statistic"] == "mode"
    assert function.results.get_index(0).status == named.results.get_index(0).status == "pass"
    assert function.results.get_index(1).verdict["statistic"] == "max"
    assert function.results.get_index(1).status == "review"  # an extreme is one person's value
    assert highest.to_numpy().max() == 10


def test_function_aggfunc_matching_several_statistics_is_refused():
    df = _eleven_per_cell(shift_eight_to_nine=False)  # 0..10: mean and median are both 5 in every cell

    with pytest.raises(ValueError, match="several statistics"):
        ACRO().pivot_table(df, index="group", columns="site", values="score", aggfunc=lambda s: s.sum() / len(s))


@pytest.mark.parametrize("aggfunc", ["median", "std", "var", "min", "max", "mode"])
def test_every_acro_aggfunc_gives_pandas_values_and_a_verdict(charity_data, aggfunc):
    acro = ACRO()
    shown = acro.crosstab(charity_data.year, charity_data.grant_type, values=charity_data.inc_grants, aggfunc=aggfunc)
    output = list(acro.results.values())[-1]
    assert output.status in ("pass", "review", "fail")
    if aggfunc != "mode":
        expected = pd.crosstab(
            charity_data.year, charity_data.grant_type, values=charity_data.inc_grants, aggfunc=aggfunc
        )
        np.testing.assert_allclose(shown.to_numpy(), expected.to_numpy(), rtol=1e-6)  # pandas sums in float32
    if aggfunc in ("min", "max"):
        assert output.status != "pass" and "exact value" in output.viewer_summary


def test_numpy_aggfuncs_mean_their_named_statistic_and_numpy_std_is_refused(charity_data):
    acro = ACRO()
    args = (charity_data.year, charity_data.grant_type)
    by_function = acro.crosstab(*args, values=charity_data.inc_grants, aggfunc=np.median)
    by_name = acro.crosstab(*args, values=charity_data.inc_grants, aggfunc="median")
    pd.testing.assert_frame_equal(by_function, by_name)
    with pytest.raises(ValueError, match="as a string"):
        acro.crosstab(*args, values=charity_data.inc_grants, aggfunc=np.std)


def test_pivot_table_with_several_values_is_refused(charity_data):
    with pytest.raises(ValueError, match="multiple values columns"):
        ACRO().pivot_table(charity_data, values=["inc_grants", "inc_donations"], index="grant_type")


def test_pivot_table_without_values_needs_them_for_a_mean(charity_data):
    with pytest.raises(ValueError, match="needs a values column"):
        ACRO().pivot_table(charity_data, index="grant_type", columns="year")


def test_table_spec_recomputes_the_same_table(charity_data):
    acro = ACRO(suppress=True)
    data = acro.use(charity_data, "charity")
    shown = acro.crosstab(data.year, data.grant_type)
    spec = acro.results["output_0"].spec
    assert spec["dataset"] == "charity" and spec["filters"] == []
    again = recompute(spec, charity_data)
    pd.testing.assert_frame_equal(again.table(), shown, check_names=False)


def test_acro_notebook_without_a_named_dataset_records_an_unknown_population(charity_data):
    acro = ACRO(suppress=True)
    acro.crosstab(charity_data.year, charity_data.grant_type)
    spec = acro.results["output_0"].spec
    assert spec["dataset"] is None and spec["filters"] is None
    with pytest.raises(ValueError, match="unknown"):
        recompute(spec, charity_data)


def test_acro_filtered_frame_of_the_test_data_is_captured(charity_data):
    acro = ACRO(suppress=True)
    data = acro.use(charity_data, "charity")
    recent = data[data.year >= 2013]
    shown = acro.crosstab(recent.year, recent.grant_type)
    spec = acro.results["output_0"].spec
    assert spec["filters"] == [{"column": "year", "op": ">=", "value": 2013}]
    pd.testing.assert_frame_equal(recompute(spec, charity_data).table(), shown, check_names=False)


def test_regression_with_few_residual_dof_fails():
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"const": 1.0, "x": rng.normal(size=8)})
    acro = ACRO()
    acro.ols(rng.normal(size=8), x)
    out = acro.results["output_0"]
    assert out.status == "fail"
    assert out.verdict["criteria"][0]["value"] == 6


def test_numeric_labels_are_suppressed_like_string_labels():
    # ACRO has been seen to skip suppression for numeric labels; ours must not.
    df = pd.DataFrame(
        {
            "a": [1] * 3 + [1] * 30 + [2] * 40 + [2] * 35 + [3] * 25 + [3] * 20,
            "b": [0.5] * 3 + [1.5] * 30 + [0.5] * 40 + [1.5] * 35 + [0.5] * 25 + [1.5] * 20,
        }
    )
    table = ACRO(suppress=True).crosstab(df.a, df.b)
    assert np.isnan(table.loc[1, 0.5])
