"""The output queue's check of a DP output: the spec must be sane and the file must not carry less noise
than the spec's epsilon says (re-derived from the file, and from the extract when there is one)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from disclosure.engine.dpcheck import check_dp_output, dp_spec, validate_dp_spec
from disclosure.engine.policy import default_policy
from disclosure.session import Session

REGIONS = ["North", "South", "East", "West"]


def _data() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 2000
    return pd.DataFrame(
        {"region": rng.choice(REGIONS, n), "cost": rng.uniform(0, 500, n), "pid": [f"p{i}" for i in range(n)]}
    )


def _made(method: str, epsilon: float, **kwargs: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A DP output as the researcher's session writes it: (the CSV read back, its spec)."""
    session = Session(person="pid")
    frame = session.use(_data(), "admissions")
    getattr(session, method)(frame, ["region"], {"region": REGIONS}, epsilon=epsilon, **kwargs)
    with tempfile.TemporaryDirectory() as folder:
        document = session.finalise(folder)
        published = pd.read_csv(Path(folder) / "output_0_0.csv", index_col=0)
    return published, document["results"]["output_0"]["table_spec"]


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("dp_count", {}),
        ("dp_sum", {"value": "cost", "bounds": (0, 500)}),
        ("dp_mean", {"value": "cost", "bounds": (0, 500)}),
    ],
)
def test_honest_dp_output_passes_and_charges_its_stated_epsilon(method: str, kwargs: dict[str, Any]) -> None:
    published, spec = _made(method, 0.7, **kwargs)

    result = check_dp_output(spec, published, default_policy(), _data())

    assert result["status"] == "pass", result["reasons"]
    assert result["dp"]["epsilon"] == pytest.approx(0.7)


def test_session_writes_the_dp_spec_and_charges_no_budget_in_the_workspace() -> None:
    _, spec = _made("dp_sum", 0.4, value="cost", bounds=(0, 500))

    assert spec["route"] == "dp" and spec["mechanism"] == "laplace"
    assert (spec["epsilon"], spec["bounds"], spec["dims"]) == (0.4, [0.0, 500.0], ["region"])
    assert spec["dataset"] == "admissions" and spec["filters"] == []


def test_smaller_epsilon_written_in_the_spec_is_caught_from_the_file_alone() -> None:
    published, spec = _made("dp_count", 1.0)

    result = check_dp_output({**spec, "epsilon": 0.1}, published, default_policy(), None)

    assert result["status"] == "fail"
    assert result["dp"]["epsilon"] == pytest.approx(1.0)


def test_forged_spec_and_forged_noise_columns_are_caught_against_the_extract() -> None:
    """40 cells, noise 20 times smaller than claimed: the chance of so little noise is below 1e-20."""
    bands = [f"b{i:02d}" for i in range(40)]
    data = _data().assign(band=[bands[i % 40] for i in range(2000)])
    session = Session(person="pid")
    session.dp_count(session.use(data, "admissions"), ["band"], {"band": bands}, 2.0)
    with tempfile.TemporaryDirectory() as folder:
        spec = session.finalise(folder)["results"]["output_0"]["table_spec"]
        forged = pd.read_csv(Path(folder) / "output_0_0.csv", index_col=0)
    forged["noise_scale"] *= 20  # claims epsilon 0.1: error bars and scale column edited to match
    half = (forged["ci95_upper"] - forged["ci95_lower"]) / 2 * 20
    forged["ci95_lower"], forged["ci95_upper"] = forged["estimate"] - half, forged["estimate"] + half
    spec = {**spec, "epsilon": 0.1}

    without_extract = check_dp_output(spec, forged, default_policy(), None)
    with_extract = check_dp_output(spec, forged, default_policy(), data)

    assert without_extract["status"] == "pass"  # what the file alone cannot show
    assert with_extract["status"] == "fail"
    assert "far smaller than epsilon 0.1 allows" in with_extract["reasons"][0]


def test_categories_read_from_the_data_instead_of_the_public_list_fail() -> None:
    published, spec = _made("dp_count", 1.0)

    result = check_dp_output(spec, published.iloc[:3], default_policy(), None)

    assert result["status"] == "fail"
    assert "public categories give 4" in result["reasons"][0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"epsilon": 0}, "positive"),
        ({"epsilon": float("inf")}, "positive"),
        ({"epsilon": True}, "positive"),
        ({"mechanism": "none"}, "laplace"),
        ({"statistic": "median"}, "count, sum or mean"),
        ({"max_rows_per_person": 0}, "at least 1"),
        ({"categories": {"region": []}}, "public categories"),
        ({"statistic": "sum", "value": "cost", "bounds": [5, 1]}, "lower <= upper"),
        ({"statistic": "mean", "value": "cost", "bounds": [0, float("nan")]}, "finite bounds"),
    ],
)
def test_insane_dp_specs_are_refused_with_the_reason(edit: dict[str, Any], message: str) -> None:
    spec = dp_spec("count", ["region"], {"region": REGIONS}, 1.0)

    with pytest.raises(ValueError, match=message):
        validate_dp_spec({**spec, **edit})


def test_epsilon_over_the_per_release_cap_fails() -> None:
    published, spec = _made("dp_count", 2.5)

    result = check_dp_output(spec, published, default_policy(), None)

    assert result["status"] == "fail"
    assert "at most epsilon 2" in result["reasons"][0]


def test_unreadable_noise_column_fails_rather_than_passes() -> None:
    published, spec = _made("dp_count", 1.0)

    result = check_dp_output(
        spec, published.drop(columns=["noise_scale", "ci95_lower", "ci95_upper"]), default_policy()
    )

    assert result["status"] == "fail"
    assert "cannot be re-derived" in result["reasons"][0]
