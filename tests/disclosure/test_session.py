"""Populations captured by the researcher session: dataset and filters, verified or recorded unknown."""

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
        pd.testing.assert_frame_equal(again.table(), shown, check_names=False)


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
    document = acro.finalise(str(tmp_path / "out"))

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
