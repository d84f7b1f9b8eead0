"""Population predicates: validation, evaluation, query strings, and disjointness."""

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from disclosure.engine import population as pop

FRAME = pd.DataFrame(
    {
        "sex": ["F", "M", "F", "M", None],
        "age": [10, 20, 30, 70, 40],
        "band": ["0-17", "18-64", "18-64", "65+", "18-64"],
    }
)


@pytest.mark.parametrize(
    ("expr", "filters"),
    [
        ("sex == 'F'", [{"column": "sex", "op": "==", "value": "F"}]),
        (
            "age >= 18 and band in ['18-64', '65+']",
            [
                {"column": "age", "op": ">=", "value": 18},
                {"column": "band", "op": "in", "value": ["18-64", "65+"]},
            ],
        ),
        ("18 <= age < 65", [{"column": "age", "op": ">=", "value": 18}, {"column": "age", "op": "<", "value": 65}]),
        (
            "sex == 'F' or age > 60",
            [{"any": [[{"column": "sex", "op": "==", "value": "F"}], [{"column": "age", "op": ">", "value": 60}]]}],
        ),
        ("not (band == '65+')", [{"not": [{"column": "band", "op": "==", "value": "65+"}]}]),
        (
            "(sex == 'M') & (age < 50)",
            [{"column": "sex", "op": "==", "value": "M"}, {"column": "age", "op": "<", "value": 50}],
        ),
        ("band not in ['0-17']", [{"column": "band", "op": "notin", "value": ["0-17"]}]),
    ],
)
def test_plain_query_strings_become_predicates_selecting_the_same_rows(expr, filters):
    parsed = pop.parse_query(expr, FRAME.columns)
    assert parsed == filters
    assert FRAME[pop.mask(FRAME, parsed)].index.equals(FRAME.query(expr).index)


@pytest.mark.parametrize(
    "expr", ["age >= @cutoff", "age + 1 > 18", "sex == band", "sex.str.len() > 1", "`sex` == 'F'", "nope == 1", "age >"]
)
def test_queries_that_are_not_plain_are_refused(expr):
    with pytest.raises(ValueError):
        pop.parse_query(expr, FRAME.columns)


@pytest.mark.parametrize(
    "filters",
    [
        "sex == 'F'",
        [{"column": "sex", "op": "like", "value": "F"}],
        [{"column": "sex", "op": "in", "value": "F"}],
        [{"column": "sex", "op": "==", "value": ["F"]}],
        [{"op": "==", "value": 1}],
        [{"any": []}],
        [{"column": "a", "op": "notna"}] * (pop.MAX_TERMS + 1),
    ],
)
def test_malformed_predicates_are_refused(filters):
    with pytest.raises(ValueError):
        pop.validate(filters)


def test_missing_values_never_meet_a_comparison():
    assert pop.mask(FRAME, [{"column": "sex", "op": "!=", "value": "M"}]).tolist() == [True, False, True, False, True]
    assert pop.mask(FRAME, [{"column": "sex", "op": "notna"}]).sum() == 4


@pytest.mark.parametrize(
    ("a", "b", "disjoint"),
    [
        ({"column": "sex", "op": "==", "value": "F"}, {"column": "sex", "op": "==", "value": "M"}, True),
        ({"column": "sex", "op": "==", "value": "F"}, {"column": "sex", "op": "!=", "value": "F"}, True),
        ({"column": "b", "op": "in", "value": [1, 2]}, {"column": "b", "op": "in", "value": [2, 3]}, False),
        ({"column": "b", "op": "in", "value": [1, 2]}, {"column": "b", "op": "notin", "value": [1, 2]}, True),
        ({"column": "age", "op": "<", "value": 18}, {"column": "age", "op": ">=", "value": 18}, True),
        ({"column": "age", "op": "<=", "value": 18}, {"column": "age", "op": ">=", "value": 18}, False),
        ({"column": "age", "op": "<", "value": 18}, {"column": "other", "op": ">=", "value": 18}, False),
        ({"column": "x", "op": "isna"}, {"column": "x", "op": "notna"}, True),
    ],
)
def test_disjointness_is_proved_term_by_term(a, b, disjoint):
    assert pop.disjoint([a], [b]) is disjoint


@given(
    st.lists(st.sampled_from(["F", "M", "X"]), min_size=1, max_size=3, unique=True),
    st.lists(st.sampled_from(["F", "M", "X"]), min_size=1, max_size=3, unique=True),
)
@settings(max_examples=50, deadline=None)
def test_proved_disjoint_populations_share_no_row(first, second):
    a = [{"column": "sex", "op": "in", "value": first}]
    b = [{"column": "sex", "op": "in", "value": second}]
    if pop.disjoint(a, b):
        assert not (pop.mask(FRAME, a) & pop.mask(FRAME, b)).any()


def test_unknown_filters_make_an_unknown_population():
    assert pop.is_known(pop.population("admissions", []))
    assert not pop.is_known(pop.population("admissions", None))
    assert not pop.is_known(pop.population(None, []))
