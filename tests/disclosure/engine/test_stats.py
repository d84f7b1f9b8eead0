"""Distinct (cell, person) keys found by marking a table of the keys' range give exactly what a sort gives."""

from __future__ import annotations

import numpy as np
import pytest

from disclosure.engine.stats import DENSE_KEYS_MAX, distinct_with_inverse


@pytest.mark.parametrize(
    ("rows", "key_range"),
    [
        (200_000, 1_000_000),  # a 10-cell table of 100,000 people: marked
        (50_000, 1_000),  # many repeats of few keys: marked
        (1, 1),
        (0, 5),  # no rows at all
        (1_000, DENSE_KEYS_MAX * 4),  # a range far larger than the rows: sorted
    ],
)
def test_distinct_keys_and_each_rows_position_equal_numpys_unique(rows: int, key_range: int) -> None:
    keys = np.random.default_rng(rows + key_range).integers(0, key_range, rows)

    distinct, position = distinct_with_inverse(keys, key_range)

    expected, inverse = np.unique(keys, return_inverse=True)
    assert np.array_equal(distinct, expected)
    assert np.array_equal(position, inverse.reshape(-1))
    assert np.array_equal(distinct[position], keys)  # every row finds its own key


def test_the_largest_and_smallest_keys_of_the_range_are_kept() -> None:
    keys = np.array([9, 0, 9, 0, 4])

    distinct, position = distinct_with_inverse(keys, 10)

    assert distinct.tolist() == [0, 4, 9]
    assert position.tolist() == [2, 0, 2, 0, 1]
