import json

import numpy as np
import pandas as pd

from disclosure.engine.ledger import (
    ReleasedAggregate,
    ReleaseLedger,
    aggregate_from_result,
    differencing_audit,
)
from disclosure.engine.tables import check_frequency_table


def _data() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    df = pd.DataFrame(
        {
            "region": rng.choice(["n", "s", "e"], 3000),
            "sex": rng.choice(["f", "m"], 3000),
            "age": rng.integers(0, 90, 3000),
        }
    )
    return df


def test_total_differing_by_two_from_released_total_is_flagged():
    df = _data()
    full = check_frequency_table(df, ["region"])
    ledger = ReleaseLedger("p1")
    ledger.record(aggregate_from_result("out-1", full, {"dataset": "extract", "filters": []}))
    # Drop two people: e.g. a later table "aged under 89" whose total is 2 lower.
    cut = df[df.age < 89] if (df.age >= 89).sum() < 10 else df.iloc[2:]
    new = check_frequency_table(cut, ["sex"])
    candidate = aggregate_from_result(
        "out-2", new, {"dataset": "extract", "filters": [{"column": "age", "op": "<", "value": 89}]}
    )
    findings = differencing_audit(ledger, candidate)
    grand = [f for f in findings if f["cell"] == {}]
    assert grand and grand[0]["difference"] == len(df) - len(cut)
    assert grand[0]["outputs"] == ["out-1", "out-2"]
    assert grand[0]["relation"] == "nested populations"


def test_table_excluding_one_small_category_is_flagged():
    df = pd.concat([_data(), pd.DataFrame({"region": ["w"] * 4, "sex": ["f"] * 4, "age": [50] * 4})])
    ledger = ReleaseLedger("p1")
    ledger.record(aggregate_from_result("full", check_frequency_table(df, ["sex"]), {"dataset": "x"}))
    without_w = check_frequency_table(df[df.region != "w"], ["sex"])
    findings = differencing_audit(ledger, aggregate_from_result("no-w", without_w, {"dataset": "x"}))
    assert any(f["cell"] == {"sex": "f"} and f["difference"] == 4 for f in findings)
    assert any(f["cell"] == {} and f["difference"] == 4 for f in findings)  # the grand totals too


def test_large_differences_and_other_datasets_are_not_flagged():
    df = _data()
    ledger = ReleaseLedger("p1")
    ledger.record(aggregate_from_result("a", check_frequency_table(df, ["sex"]), {"dataset": "x"}))
    half = check_frequency_table(df.iloc[:1500], ["sex"])
    assert differencing_audit(ledger, aggregate_from_result("b", half, {"dataset": "x"})) == []
    near = check_frequency_table(df.iloc[1:], ["sex"])
    assert differencing_audit(ledger, aggregate_from_result("c", near, {"dataset": "other"})) == []


def test_ledger_round_trips_through_json():
    agg = ReleasedAggregate(
        "o", {"dataset": "x", "filters": []}, ("a",), "count", {("p",): 12.0, (None,): 12.0}, {("q",)}
    )
    ledger = ReleaseLedger("p", [agg])
    again = ReleaseLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert again.entries[0].cells == agg.cells
    assert again.entries[0].suppressed == agg.suppressed
