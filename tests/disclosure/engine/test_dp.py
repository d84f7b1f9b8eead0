import math

import numpy as np
import pandas as pd
import pytest

from disclosure.engine.dp import BudgetExceeded, PrivacyBudget, dp_counts, dp_means, dp_sums


def _data():
    rng = np.random.default_rng(5)
    return pd.DataFrame(
        {
            "region": rng.choice(["n", "s"], 4000),
            "sex": rng.choice(["f", "m"], 4000),
            "cost": rng.uniform(0, 100, 4000),
            "pid": np.arange(4000) // 2,
        }
    )


CATS = {"region": ["n", "s", "w"], "sex": ["f", "m"]}


def test_dp_counts_cover_public_categories_with_error_bars():
    budget = PrivacyBudget("p", 5.0)
    table, verdict = dp_counts(_data(), ["region", "sex"], CATS, 1.0, budget, "o1")
    assert len(table) == 6  # "w" never occurs in the data but is a public category, so it is released
    assert (table["noise_scale"] == 1.0).all()
    assert table["ci95_upper"].iloc[0] - table["ci95_lower"].iloc[0] == pytest.approx(2 * math.log(20))
    true = _data().groupby(["region", "sex"]).size()
    assert abs(table.loc[("n", "f"), "estimate"] - true[("n", "f")]) < 40  # scale 1: 40 is ~ e^-40 unlikely
    assert verdict["criteria"][0]["remaining"] == 4.0


def test_dp_budget_refuses_overspend():
    budget = PrivacyBudget("p", 1.0)
    dp_counts(_data(), ["sex"], CATS, 0.8, budget, "o1")
    with pytest.raises(BudgetExceeded):
        dp_counts(_data(), ["sex"], CATS, 0.5, budget, "o2")
    assert [s["output_id"] for s in budget.spends] == ["o1"]
    assert PrivacyBudget.from_dict(budget.to_dict()).spent == pytest.approx(0.8)


def test_dp_sums_scale_with_bounds_and_rows_per_person():
    budget = PrivacyBudget("p", 10.0)
    table, _ = dp_sums(_data(), ["sex"], CATS, "cost", (0, 100), 1.0, budget, "o1", person="pid", max_rows_per_person=2)
    assert (table["noise_scale"] == 200.0).all()


def test_dp_means_spend_once_and_stay_within_bounds():
    budget = PrivacyBudget("p", 2.0)
    table, verdict = dp_means(_data(), ["sex"], CATS, "cost", (0, 100), 1.0, budget, "o1", seed=1)
    assert budget.spent == pytest.approx(1.0)
    assert ((table["estimate"] >= 0) & (table["estimate"] <= 100)).all()
    assert (table["ci95_lower"] <= table["estimate"]).all() and (table["estimate"] <= table["ci95_upper"]).all()
    assert abs(table.loc["f", "estimate"] - 50) < 5
