import copy
import json
import pickle

import pandas as pd

from disclosure.engine.deferred import DeferredDict
from disclosure.engine.tables import check_frequency_table

ORDER = ("status", "cells", "reasons")


def _deferred(calls: list) -> DeferredDict:
    def build():
        calls.append(1)
        return {"cells": [{"key": "a=x", "labels": {"a": "x"}}]}

    return DeferredDict({"status": "fail", "reasons": ["threshold"]}, build, ORDER)


def _small_cells_table() -> pd.DataFrame:
    counts = {("x", "p"): 3, ("x", "q"): 25, ("y", "p"): 30, ("y", "q"): 40, ("z", "p"): 12, ("z", "q"): 4}
    return pd.DataFrame([k for k, n in counts.items() for _ in range(n)], columns=["a", "b"])


def test_cheap_keys_are_read_without_building_the_records():
    calls: list = []
    verdict = _deferred(calls)

    verdict["spec"] = {"dims": ["a"]}

    assert verdict["status"] == "fail" and verdict.get("spec") == {"dims": ["a"]}
    assert calls == []


def test_records_are_built_once_on_first_read_in_the_eager_key_order():
    calls: list = []
    verdict = _deferred(calls)
    verdict["spec"] = {"dims": ["a"]}

    cells = verdict["cells"]
    again = verdict["cells"]

    assert cells is again and calls == [1]
    assert list(verdict) == ["status", "cells", "reasons", "spec"]


def test_json_copy_pickle_and_dict_see_every_key():
    full = {"status": "fail", "cells": [{"key": "a=x", "labels": {"a": "x"}}], "reasons": ["threshold"]}

    assert json.dumps(_deferred([])) == json.dumps(full)
    assert copy.deepcopy(_deferred([])) == full
    assert type(pickle.loads(pickle.dumps(_deferred([])))) is dict
    assert pickle.loads(pickle.dumps(_deferred([]))) == full
    assert dict(_deferred([])) == full and {**_deferred([])} == full
    assert _deferred([]) == _deferred([]) and len(_deferred([])) == 3 and "cells" in _deferred([])


def test_a_deferred_key_set_before_building_is_not_overwritten():
    verdict = _deferred([])

    verdict["cells"] = []

    assert verdict["cells"] == []


def test_table_verdict_is_the_same_whenever_its_records_are_built():
    early = check_frequency_table(_small_cells_table(), ["a", "b"], mitigation="suppress").verdict
    late = check_frequency_table(_small_cells_table(), ["a", "b"], mitigation="suppress").verdict

    assert early["cells"]  # built at once, before the spec is added
    late["spec"] = early["spec"] = {"dims": ["a", "b"]}

    assert not dict.__contains__(late, "cells")  # nothing has read these records yet
    assert json.dumps(late) == json.dumps(early)
    assert [c["labels"] for c in late["cells"] if c["action"] == "suppressed_primary"] == [
        {"a": "x", "b": "p"},
        {"a": "z", "b": "q"},
    ]
    assert late["mitigation"]["suppression"]["audit"]["intervals"]
