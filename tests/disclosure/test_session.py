"""Populations captured by the researcher session: dataset and filters, verified or recorded unknown."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from disclosure.compat import ACRO
from disclosure.engine import recompute
from disclosure.session import Session


def _extract() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 3000
    return pd.DataFrame(
        {
            "region": rng.choice(["north", "south", "east"], n),
            "sex": rng.choice(["F", "M"], n),
            "age": rng.integers(0, 95, n),
            "band": rng.choice(["0-17", "18-64", "65+"], n),
            "cost": rng.gamma(2.0, 300.0, n),
        }
    )


@pytest.fixture
def extract_path(tmp_path: Path) -> Path:
    folder = tmp_path / "extracts" / "admissions" / "data"
    folder.mkdir(parents=True)
    _extract().to_parquet(folder / "part-00000.parquet")
    return folder


def _spec(session: Session) -> dict:
    return session.results[f"output_{session._next - 1}"].spec


@pytest.mark.parametrize(
    ("build", "filters"),
    [
        (lambda df: df[df.sex == "F"], [{"column": "sex", "op": "==", "value": "F"}]),
        (
            lambda df: df[(df["sex"] == "F") & df.band.isin(["18-64", "65+"])],
            [{"column": "sex", "op": "==", "value": "F"}, {"column": "band", "op": "in", "value": ["18-64", "65+"]}],
        ),
        (
            lambda df: df.query("sex == 'F' and age >= 18"),
            [{"column": "sex", "op": "==", "value": "F"}, {"column": "age", "op": ">=", "value": 18}],
        ),
        (
            lambda df: df[df.age.between(18, 64)][lambda d: d.region != "east"],
            None,  # a callable key is not captured
        ),
        (lambda df: df[~(df.sex == "M")], [{"not": [{"column": "sex", "op": "==", "value": "M"}]}]),
        (lambda df: df[df.age >= 18][df[df.age >= 18].region != "east"], "captured twice"),
    ],
)
def test_filters_applied_to_the_frame_read_are_recorded_and_re_compute_the_table(extract_path, build, filters):
    session = Session(suppress=True)
    df = session.read(str(extract_path))
    subset = build(df)

    shown = session.crosstab(subset.region, subset.sex)

    spec = _spec(session)
    assert spec["dataset"] == "admissions"
    if filters == "captured twice":
        assert spec["filters"] == [
            {"column": "age", "op": ">=", "value": 18},
            {"column": "region", "op": "!=", "value": "east"},
        ]
    else:
        assert spec["filters"] == filters
    if spec["filters"] is not None:
        again = recompute(spec, _extract(), policy=session.policy)
        pd.testing.assert_frame_equal(again.table(), shown, check_names=False, check_dtype=False)


@pytest.mark.parametrize(
    "build",
    [
        lambda df: df.head(500),  # rows chosen without a filter
        lambda df: df.dropna(subset=["cost"]).iloc[:-3],
        lambda df: df.loc[df.sex == "F"],  # .loc is not captured
        lambda df: df[(df.age + 1) > 18],  # a mask from a derived column
        lambda df: df[np.asarray(df.sex == "F")],  # a numpy mask
        lambda df: df[df.sex == "F"].reset_index(drop=True),
    ],
)
def test_rows_chosen_in_ways_not_captured_make_the_population_unknown(extract_path, build):
    session = Session(suppress=True)
    subset = build(session.read(str(extract_path)))

    session.crosstab(subset.region, subset.sex)

    assert _spec(session)["dataset"] == "admissions"
    assert _spec(session)["filters"] is None


def test_a_changed_or_derived_column_makes_the_population_unknown(extract_path):
    session = Session(suppress=True)
    df = session.read(str(extract_path))
    df = df.assign(region=df.region.str.upper())
    session.crosstab(df.region, df.sex)
    assert _spec(session)["filters"] is None


def test_pivot_table_records_the_population_of_its_frame(extract_path):
    session = Session(suppress=True)
    df = session.read(str(extract_path))
    women = df[df.sex == "F"]

    session.pivot_table(women, values="cost", index="region", columns="band", aggfunc="sum")

    spec = _spec(session)
    assert spec["filters"] == [{"column": "sex", "op": "==", "value": "F"}]
    assert spec["statistic"] == "sum" and spec["value"] == "cost"


def test_dataset_handed_over_once_covers_plain_frames_that_match_it():
    session = Session(suppress=True)
    frame = _extract()
    session.use(frame, "admissions")

    session.crosstab(frame.region, frame.sex)
    assert _spec(session)["filters"] == []  # the whole dataset, verified
    filtered = frame[frame.sex == "F"]  # a plain frame: its filter cannot be captured
    session.crosstab(filtered.region, filtered.band)
    assert _spec(session)["filters"] is None


def test_dataset_named_without_its_data_is_unknown_population():
    session = Session(suppress=True, dataset="admissions")
    frame = _extract()
    session.crosstab(frame.region, frame.sex)
    assert _spec(session)["dataset"] == "admissions"
    assert _spec(session)["filters"] is None


def test_acro_style_session_records_dataset_and_filters(extract_path, tmp_path):
    acro = ACRO(suppress=True)
    df = acro.read(str(extract_path))
    adults = df.query("age >= 18")

    acro.crosstab(adults.region, adults.sex)
    acro.finalise(str(tmp_path / "out"))

    document = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    spec = document["results"]["output_0"]["table_spec"]
    assert spec["dataset"] == "admissions"
    assert spec["filters"] == [{"column": "age", "op": ">=", "value": 18}]


def test_query_with_local_variables_is_not_captured(extract_path):
    session = Session(suppress=True)
    df = session.read(str(extract_path))
    cutoff = 18  # noqa: F841 (read by the query string)
    adults = df.query("age >= @cutoff")
    session.crosstab(adults.region, adults.sex)
    assert _spec(session)["filters"] is None


def _cohort() -> pd.DataFrame:
    """Synthetic cohort: 2 arms of ~300 people (3 visits each) and a rare subgroup of 6 people."""
    rng = np.random.default_rng(21)
    people = pd.DataFrame(
        {
            "pid": [f"p{i}" for i in range(606)],
            "arm": ["control"] * 300 + ["treated"] * 300 + ["rare"] * 6,
            "age": np.concatenate([rng.normal(62, 11, 600).round(), [35.0, 41.0, 47.0, 55.0, 68.0, 80.0]]),
        }
    )
    visits = people.loc[people.index.repeat(3)].reset_index(drop=True)
    visits["sex"] = rng.choice(["F", "M"], len(visits))
    return visits


def test_table_one_median_iqr_mean_sd_by_group_passes_big_cells_and_fails_the_small_group() -> None:
    session = Session(suppress=True, person="pid")
    cohort = session.use(_cohort(), "cohort")

    table = session.pivot_table(cohort, values="age", index="arm", aggfunc=["median", "q25", "q75", "mean", "std"])

    order_stats = ["median", "q25", "q75", "std"]
    assert table.loc[["control", "treated"], order_stats].notna().all().all()
    assert table.loc["rare"].isna().all()
    # A mean can be turned back into a sum, so its table needs a secondary cell; medians and spreads do not.
    parts = session.results["output_0"].verdict["parts"]
    rare_reasons = {
        part["statistic"]: [r for c in part["cells"] if c["labels"] == {"arm": "rare"} for r in c["rules"]]
        for part in parts
    }
    assert "quantile_either_side" in rare_reasons["median"]
    assert "degrees_of_freedom" in rare_reasons["std"]
    secondary = {p["statistic"]: p["mitigation"]["suppression"]["secondary"] for p in parts}
    assert secondary == {"median": 0, "q25": 0, "q75": 0, "mean": 1, "std": 0}
    assert all(part["contributors"] == "distinct people" for part in parts)
    flagged_big = [c for part in parts for c in part["cells"] if c["labels"] == {"arm": "control"} and c["rules"]]
    assert flagged_big == []  # no rule flagged the big arm in any statistic


def test_crosstab_counts_people_when_the_session_has_a_person_column() -> None:
    session = Session(person="pid")
    cohort = session.use(_cohort(), "cohort")

    session.crosstab(cohort.arm, cohort.sex)

    verdict = session.results["output_0"].verdict
    assert verdict["contributors"] == "distinct people"
    assert verdict["spec"]["person"] == "pid"
    rare = [c for c in verdict["cells"] if c["labels"] == {"arm": "rare", "sex": "F"}]
    assert rare and "threshold" in rare[0]["rules"]  # 18 visits by 6 people: fewer than 10 contributors


def test_crosstab_refuses_to_count_records_when_people_cannot_be_found() -> None:
    session = Session(person="pid")
    plain = _cohort()
    with pytest.raises(ValueError, match="counts people by 'pid'"):
        session.crosstab(plain.arm, plain.sex)


def test_list_of_aggfuncs_in_crosstab_records_each_statistic() -> None:
    session = Session()
    cohort = _cohort()
    table = session.crosstab(cohort.arm, cohort.sex, values=cohort.age, aggfunc=["mean", "std"])
    assert list(table.columns.get_level_values(0).unique()) == ["mean", "std"]
    assert [p["statistic"] for p in session.results["output_0"].verdict["parts"]] == ["mean", "std"]
