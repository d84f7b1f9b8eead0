"""Cell statistics: distinct keys as a sort finds them, and every statistic as a row-by-row count finds it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from disclosure.engine import stats as stats_module
from disclosure.engine.stats import DENSE_KEYS_MAX, compute_table_stats, distinct_with_inverse


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


_VALUES = {
    "positive": st.floats(0.0, 50.0, allow_subnormal=False),
    "signed": st.floats(-50.0, 50.0, allow_subnormal=False),
    "with gaps": st.one_of(st.floats(0.0, 50.0, allow_subnormal=False), st.just(np.nan)),
    "few distinct (ties)": st.sampled_from([0.0, 1.0, 5.0, 5.0, 7.5]),
}


@settings(max_examples=120, deadline=None)
@given(st.data(), st.sampled_from(sorted(_VALUES)), st.integers(1, 60))
def test_cell_statistics_equal_a_row_by_row_count(data, kind: str, rows: int) -> None:
    # Passes are skipped when the data makes them redundant (no missing values, no negatives): each kind of
    # column must still give exactly the statistics a plain group-by gives.
    frame = pd.DataFrame(
        {
            "a": data.draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows)),
            "b": data.draw(st.lists(st.integers(5, 7), min_size=rows, max_size=rows)),
            "x": data.draw(st.lists(_VALUES[kind], min_size=rows, max_size=rows)),
        }
    )

    stats = compute_table_stats(frame, ["a", "b"], value="x")

    for i, a in enumerate(stats.categories[0]):
        for j, b in enumerate(stats.categories[1]):
            x = frame.loc[(frame.a == a) & (frame.b == b), "x"].to_numpy()
            present = x[~np.isnan(x)]
            top = np.sort(np.abs(present))[::-1][:2]
            assert stats.records[i, j] == len(x)
            assert stats.contributors[i, j] == len(present)
            assert stats.missing[i, j] == len(x) - len(present)
            assert stats.negatives[i, j] == int((present < 0).sum())
            assert stats.total[i, j] == pytest.approx(present.sum(), abs=1e-9)
            assert stats.abs_total[i, j] == pytest.approx(np.abs(present).sum(), abs=1e-9)
            assert stats.top[i, j].tolist() == np.pad(top, (0, 2 - len(top))).tolist()
            if len(present):
                assert (stats.minimum[i, j], stats.maximum[i, j]) == (present.min(), present.max())
            else:
                assert np.isnan(stats.minimum[i, j]) and np.isnan(stats.maximum[i, j])


@pytest.mark.parametrize("late_labels", [False, True])
@pytest.mark.parametrize(
    ("dtype", "ranges"),
    [
        ("int64", [(-2, 2), (10, 14), (0, 4)]),
        ("int32", [(-40, -37), (3, 7)]),
        ("int16", [(100, 220)]),
        ("uint8", [(0, 3), (250, 255), (7, 9)]),
        ("uint16", [(1000, 1010), (0, 9)]),
        ("int16", [(20_000, 20_003), (0, 9)]),  # label x stride overflows int16: the cell is formed in int64
        ("int8", [(100, 103), (-5, 5)]),
    ],
)
def test_count_table_counted_a_block_at_a_time_equals_a_group_by(dtype, ranges, late_labels) -> None:
    # Blocks of 256 rows, so the count table grows whenever a later block holds a label outside the ranges seen so
    # far (``late_labels`` keeps the first half of the rows on a middle label of each dimension, so the range
    # grows on both sides and the counts so far move to their place in the wider table).
    rng = np.random.default_rng(len(ranges) * 10 + late_labels)
    rows = 1_500
    frame = pd.DataFrame({f"d{i}": rng.integers(lo, hi + 1, rows) for i, (lo, hi) in enumerate(ranges)}).astype(dtype)
    if late_labels:
        for i, (lo, hi) in enumerate(ranges):
            frame.iloc[: rows // 2, i] = (lo + hi) // 2
    dims = list(frame.columns)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stats_module, "_BLOCK_ROWS", 256)
        assert stats_module._integer_span_counts(frame, tuple(dims)) is not None  # the block-wise path ran
        stats = compute_table_stats(frame, dims)

    assert [list(c) for c in stats.categories] == [sorted(frame[d].unique().tolist()) for d in dims]
    interior = stats.records[stats.interior]
    assert int(interior.sum()) == rows == int(stats.records[(-1,) * len(dims)])
    for labels, count in frame.groupby(dims).size().items():
        key = labels if isinstance(labels, tuple) else (labels,)
        at = tuple(int(np.searchsorted(c, v)) for c, v in zip(stats.categories, key, strict=True))
        assert interior[at] == count
    assert stats.contributors.tolist() == stats.records.tolist()


def test_count_table_over_labels_near_the_int64_limit_counts_exactly() -> None:
    # The cell number is computed from the raw labels and the range's start subtracted once; on the way it
    # overflows int64, which wraps, and the final number is exact.
    base = 2**61 + 12345
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"a": base + rng.integers(0, 5, 600), "b": rng.integers(-3, 4, 600)})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stats_module, "_BLOCK_ROWS", 64)
        stats = compute_table_stats(frame, ["a", "b"])

    expected = frame.groupby(["a", "b"]).size()
    assert list(stats.categories[0]) == sorted(frame.a.unique().tolist())
    for (a, b), count in expected.items():
        i = list(stats.categories[0]).index(a)
        j = list(stats.categories[1]).index(b)
        assert stats.records[i, j] == count


def test_count_table_of_text_and_categorical_labels_counted_in_blocks_equals_a_group_by() -> None:
    # Labels that are not integers are factorised first; their codes are then counted a block at a time.
    # Missing labels drop their rows, and a declared category no row has is still a (zero) cell.
    rng = np.random.default_rng(3)
    rows = 1_500
    frame = pd.DataFrame(
        {
            "region": rng.choice(["north", "south", "east", None], rows),
            "band": pd.Categorical(
                rng.choice(["0-17", "18-64", "65+"], rows), categories=["0-17", "18-64", "65+", "none"]
            ),
        }
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stats_module, "_BLOCK_ROWS", 256)
        stats = compute_table_stats(frame, ["region", "band"])

    assert list(stats.categories[0]) == ["east", "north", "south"]
    assert list(stats.categories[1]) == ["0-17", "18-64", "65+", "none"]
    expected = frame.dropna().groupby(["region", "band"], observed=False).size()
    for (region, band), count in expected.items():
        i, j = list(stats.categories[0]).index(region), list(stats.categories[1]).index(band)
        assert stats.records[i, j] == count
    assert int(stats.records[-1, -1]) == int(frame.region.notna().sum())
