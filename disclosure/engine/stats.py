"""Per-cell statistics of an N-way table, computed in one vectorised pass.

Every disclosure rule for frequency and magnitude tables needs only a few numbers per cell: how many records
and distinct contributors, the total, the largest contributions, the extremes, and how many contributions are
negative or missing. They are computed with numpy ``bincount`` and ``ufunc.at`` over factorised cell codes, so
cost grows with the number of rows, not with rows x cells, and nothing loops over cells in Python.

Arrays are held in *extended* shape: each axis has one extra trailing position holding the margin ("All")
along that axis, so row, column and grand totals are cells like any other and the same rules apply to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import cast

import numpy as np
import pandas as pd

ADDITIVE = ("records", "contributors", "total", "abs_total", "negatives", "missing")


@dataclass
class TableStats:
    """Statistics per cell of a table over ``dims``; arrays have the extended (with margins) shape."""

    dims: tuple[str, ...]
    categories: tuple[pd.Index, ...]
    records: np.ndarray
    contributors: np.ndarray
    has_values: bool
    total: np.ndarray | None = None
    abs_total: np.ndarray | None = None
    negatives: np.ndarray | None = None
    missing: np.ndarray | None = None
    minimum: np.ndarray | None = None
    maximum: np.ndarray | None = None
    top: np.ndarray | None = None  # extended shape + (n_top,), largest |contribution| first
    person_level: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape without margins."""
        return tuple(len(c) for c in self.categories)

    @property
    def interior(self) -> tuple[slice, ...]:
        """Index selecting the cells proper (no margins) from an extended array."""
        return tuple(slice(0, n) for n in self.shape)

    def mean(self) -> np.ndarray:
        """Mean over non-missing contributions (NaN where a cell has none)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.contributors > 0, self.total / np.maximum(self.contributors, 1), np.nan)


def factorise_dimension(series: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Codes and sorted categories of one grouping column (-1 for missing).

    Categorical columns keep all declared categories, observed or not: an empty category is still a cell
    the reader sees, and it may be disclosive (a zero).
    """
    if isinstance(series.dtype, pd.CategoricalDtype):
        return np.asarray(series.cat.codes, dtype=np.int64), pd.Index(series.cat.categories)
    codes, uniques = pd.factorize(series, sort=True, use_na_sentinel=True)
    return codes.astype(np.int64, copy=False), pd.Index(uniques)


def compute_table_stats(
    data: pd.DataFrame,
    dims: list[str] | tuple[str, ...],
    value: str | None = None,
    person: str | None = None,
    n_top: int = 2,
) -> TableStats:
    """Compute the statistics of the table ``data`` grouped by ``dims`` (rows with a missing label dropped).

    ``value`` makes it a magnitude table; ``person`` names an id column so that the threshold counts
    distinct people and dominance uses each person's total contribution to a cell.
    """
    dims = tuple(dims)
    if value is None and person is None and dims:
        fused = _integer_span_counts(data, dims)
        if fused is not None:
            # A plain count table over integer labels: label ranges and counts in one read of each column.
            spans_found, records = fused
            cats = [
                pd.Index(np.arange(low, high + 1, dtype=data[d].dtype))
                for d, (low, high) in zip(dims, spans_found, strict=True)
            ]
            arrays = {"records": records, "contributors": records.copy()}
            shape = tuple(len(c) for c in cats)
            return _finish_stats(dims, cats, arrays, shape, True, has_values=False, person_level=False)
    spans = _integer_spans(data, dims) if person is None else None
    codes_list, cats = [], []
    offsets = [0] * len(dims)
    if spans is not None:
        # Integer labels in narrow ranges: count over the whole label range (the label minus the smallest
        # is the code) and drop the labels that never occur afterwards, instead of hashing every row.
        for d, (low, high) in zip(dims, spans, strict=True):
            column = data[d].to_numpy()
            codes_list.append(column.astype(np.int64, copy=False))
            cats.append(pd.Index(np.arange(low, high + 1, dtype=column.dtype)))
        offsets = [low for low, _ in spans]
        keep = None
        all_kept = True
    else:
        for d in dims:
            codes, uniques = factorise_dimension(data[d])
            codes_list.append(codes)
            cats.append(uniques)
        keep = np.ones(len(data), dtype=bool)
        for codes in codes_list:
            keep &= codes >= 0
        all_kept = bool(keep.all())
        if not all_kept:
            codes_list = [c[keep] for c in codes_list]
    shape = tuple(len(c) for c in cats)
    ncells = int(np.prod(shape)) if shape else 1
    if value is None and person is None and dims:
        # A plain count table needs only the number of rows per cell: counted a block of rows at a time, so
        # the cell numbers of millions of rows are never written out and read back (ADR 0036).
        records = _cell_counts(codes_list, offsets, shape)
        arrays = {"records": records, "contributors": records.copy()}
        return _finish_stats(dims, cats, arrays, shape, spans is not None, has_values=False, person_level=False)
    if any(offsets):
        codes_list = [codes - low if low else codes for codes, low in zip(codes_list, offsets, strict=True)]
    # No dims means no spans, so ``keep`` was built above.
    cell = _flat_codes(codes_list, shape) if dims else np.zeros(int(cast(np.ndarray, keep).sum()), dtype=np.int64)
    x = None
    if value is not None:
        column = data[value]
        if isinstance(column.dtype, np.dtype) and column.dtype.kind in "fiub":
            x = column.to_numpy(dtype=np.float64)  # already numeric: no parsing pass, no copy for float64
        else:
            x = pd.to_numeric(column).to_numpy(dtype=np.float64, na_value=np.nan)
        if not all_kept:
            x = x[keep]
    pcodes = None
    if person is not None:
        pcodes, _ = pd.factorize(data[person], use_na_sentinel=True)
        pcodes = pcodes[keep] if not all_kept else pcodes
    n_top = max(int(n_top), 2)

    if pcodes is None:
        return _finish_stats(
            dims, cats, _group_stats(cell, ncells, x, None, n_top), shape, spans is not None, x is not None, False
        )
    arrays = _extend_by_regrouping(codes_list, shape, x, pcodes, n_top)
    return _as_table_stats(dims, cats, arrays, x is not None, True)


def _finish_stats(
    dims: tuple[str, ...],
    cats: list[pd.Index],
    interior: dict[str, np.ndarray],
    shape: tuple[int, ...],
    from_spans: bool,
    has_values: bool,
    person_level: bool,
) -> TableStats:
    """Per-cell arrays of the interior, shaped, with absent integer labels dropped and margins appended."""
    arrays = {k: v.reshape(shape + v.shape[1:]) for k, v in interior.items()}
    if from_spans:
        arrays, cats = _drop_absent_labels(arrays, cats)
    return _as_table_stats(dims, cats, _extend_by_reduction(arrays, len(shape)), has_values, person_level)


def _as_table_stats(
    dims: tuple[str, ...], cats: list[pd.Index], arrays: dict[str, np.ndarray], has_values: bool, person_level: bool
) -> TableStats:
    return TableStats(
        dims=dims,
        categories=tuple(cats),
        records=arrays["records"],
        contributors=arrays["contributors"],
        has_values=has_values,
        total=arrays.get("total"),
        abs_total=arrays.get("abs_total"),
        negatives=arrays.get("negatives"),
        missing=arrays.get("missing"),
        minimum=arrays.get("minimum"),
        maximum=arrays.get("maximum"),
        top=arrays.get("top"),
        person_level=person_level,
    )


_SPAN_CELLS = 1 << 20  # counting over label ranges only while the range table stays this small


def _integer_spans(data: pd.DataFrame, dims: tuple[str, ...]) -> list[tuple[int, int]] | None:
    """(smallest, largest) label of each dimension when all are integers spanning a small table, else None."""
    if not dims or len(data) == 0:
        return None
    spans = []
    cells = 1
    for d in dims:
        column = data[d]
        # Plain numpy integers only: nullable (extension) integers may hold missing labels.
        if not isinstance(column.dtype, np.dtype) or column.dtype.kind not in "iu":
            return None
        low, high = _min_max(column.to_numpy())
        if low < -(2**62) or high >= 2**62:
            return None
        cells *= high - low + 1
        if cells > _SPAN_CELLS:
            return None
        spans.append((low, high))
    return spans


def _integer_span_counts(data: pd.DataFrame, dims: tuple[str, ...]) -> tuple[list[tuple[int, int]], np.ndarray] | None:
    """Label range of each dimension and rows per cell of that range, reading each column once; None where
    the labels are not plain integers, there are few rows, or the ranges make too many cells for counting a
    block at a time (the caller then takes the general path).

    The same result as ``_integer_spans`` then ``_cell_counts``, which read every column twice: here a
    block's smallest and largest labels are found while the block is in the cache, and the count table
    grows to a wider range whenever a block holds a label outside the ranges seen so far.
    """
    columns = []
    for d in dims:
        column = data[d]
        # uint64 labels do not mix with int64 arithmetic (numpy promotes them to float): general path.
        if not isinstance(column.dtype, np.dtype) or column.dtype.kind not in "iu" or column.dtype == np.uint64:
            return None
        columns.append(column.to_numpy())
    rows = len(columns[0])
    if rows < 4 * _BLOCK_ROWS:
        return None
    lows: list[int] = []
    highs: list[int] = []
    counts = np.zeros(0, dtype=np.int64)
    shape: tuple[int, ...] = ()
    base = 0
    block = np.empty(_BLOCK_ROWS, dtype=np.int64)
    for start in range(0, rows, _BLOCK_ROWS):
        parts = [c[start : start + _BLOCK_ROWS] for c in columns]
        low = [int(p.min()) for p in parts]
        high = [int(p.max()) for p in parts]
        if lows:
            low = [min(a, b) for a, b in zip(lows, low, strict=True)]
            high = [max(a, b) for a, b in zip(highs, high, strict=True)]
        if low != lows or high != highs:
            if min(low) < -(2**62) or max(high) >= 2**62:
                return None
            grown_shape = tuple(h - lo + 1 for lo, h in zip(low, high, strict=True))
            if int(np.prod(grown_shape)) > _BLOCK_ROWS // 2:
                return None  # each block's count table would cost more than its rows
            grown = np.zeros(grown_shape, dtype=np.int64)
            if lows:  # the counts so far, placed at their labels in the wider range
                grown[tuple(slice(a - b, a - b + n) for a, b, n in zip(lows, low, shape, strict=True))] = (
                    counts.reshape(shape)
                )
            counts, lows, highs, shape = grown.reshape(-1), low, high, grown_shape
            base = 0
            for lo, n in zip(lows, shape, strict=True):
                base = base * n + lo
            base = (base + 2**63) % 2**64 - 2**63  # as in ``_cell_counts``: exact modulo 2**64
        cell = block[: len(parts[0])]
        if len(parts) == 1:
            np.copyto(cell, parts[0], casting="unsafe")
        else:
            # dtype: narrow labels (int8, int16, ...) times the stride would otherwise wrap in their own type
            np.multiply(parts[0], shape[1], out=cell, dtype=np.int64)
            cell += parts[1]
            for part, n in zip(parts[2:], shape[2:], strict=True):
                cell *= n
                cell += part
        if base:
            cell -= np.int64(base)
        counts += np.bincount(cell, minlength=len(counts))
    return list(zip(lows, highs, strict=True)), counts


def _min_max(values: np.ndarray) -> tuple[int, int]:
    """Smallest and largest of an integer array, a block at a time: the maximum reads each block from the
    cache the minimum has just filled, not a second time from memory."""
    if len(values) <= _BLOCK_ROWS:
        return int(values.min()), int(values.max())
    lows, highs = [], []
    for start in range(0, len(values), _BLOCK_ROWS):
        block = values[start : start + _BLOCK_ROWS]
        lows.append(block.min())
        highs.append(block.max())
    return int(min(lows)), int(max(highs))


def _flat_codes(codes_list: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Row-major cell number of every row (``np.ravel_multi_index`` without its bounds checks and copies)."""
    if len(codes_list) == 1:
        return codes_list[0].astype(np.int64, copy=False)
    cell = codes_list[0].astype(np.int64, copy=False) * shape[1]
    cell += codes_list[1]
    for codes, n in zip(codes_list[2:], shape[2:], strict=True):
        cell *= n
        cell += codes
    return cell


_BLOCK_ROWS = 1 << 16  # rows per block of ``_cell_counts``: a block's cell numbers stay in the CPU's cache


def _cell_counts(codes_list: list[np.ndarray], offsets: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """Rows per cell (row-major over ``shape``) of codes ``codes_list[i] - offsets[i]``, all in range.

    The same numbers as ``np.bincount(_flat_codes(...))``, worked out a block of rows at a time: each
    column is read once from memory and a block's cell numbers never leave the cache, where the whole-array
    version writes and re-reads an array of cell numbers as large as the data several times over.
    """
    ncells = int(np.prod(shape))
    rows = len(codes_list[0])
    if ncells > _BLOCK_ROWS // 2 or rows < 4 * _BLOCK_ROWS:
        # Many cells (each block's count array would cost more than its rows) or few rows: one pass.
        if any(offsets):
            codes_list = [codes - low if low else codes for codes, low in zip(codes_list, offsets, strict=True)]
        return np.bincount(_flat_codes(codes_list, shape), minlength=ncells).astype(np.int64)
    # Subtracting every offset from the cell number once does the work of subtracting each from its column.
    # Labels far from zero can overflow int64 on the way; integers wrap, and the result is in [0, ncells), so
    # the arithmetic modulo 2**64 gives it exactly.
    base = 0
    for low, n in zip(offsets, shape, strict=True):
        base = base * n + low
    base = (base + 2**63) % 2**64 - 2**63
    counts = np.zeros(ncells, dtype=np.int64)
    block = np.empty(min(_BLOCK_ROWS, rows), dtype=np.int64)
    for start in range(0, rows, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, rows)
        cell = block[: stop - start]
        if len(codes_list) == 1:
            np.copyto(cell, codes_list[0][start:stop], casting="unsafe")
        else:
            np.multiply(codes_list[0][start:stop], shape[1], out=cell, dtype=np.int64)
            cell += codes_list[1][start:stop]
            for codes, n in zip(codes_list[2:], shape[2:], strict=True):
                cell *= n
                cell += codes[start:stop]
        if base:
            cell -= np.int64(base)
        counts += np.bincount(cell, minlength=ncells)
    return counts


def _drop_absent_labels(
    arrays: dict[str, np.ndarray], cats: list[pd.Index]
) -> tuple[dict[str, np.ndarray], list[pd.Index]]:
    """Keep only labels some row has, as factorising would have found them (integers are never missing)."""
    records = arrays["records"]
    for axis in range(len(cats)):
        others = tuple(a for a in range(records.ndim) if a != axis)
        present = records.sum(axis=others) > 0 if others else records > 0
        if present.all():
            continue
        arrays = {k: np.compress(present, v, axis=axis) for k, v in arrays.items()}
        records = arrays["records"]
        cats[axis] = cats[axis][present]
    return arrays, cats


def _group_stats(
    cell: np.ndarray, ncells: int, x: np.ndarray | None, pcodes: np.ndarray | None, n_top: int
) -> dict[str, np.ndarray]:
    """Statistics per group code; ``pcodes`` first folds rows into one contribution per (cell, person)."""
    records = np.bincount(cell, minlength=ncells).astype(np.int64)
    if pcodes is not None:
        # Rows with an unknown person cannot be deduplicated; treat each as its own contributor (cautious:
        # more contributors only when they really are different rows, never fewer).
        unknown = pcodes < 0
        if unknown.any():
            pcodes = pcodes.copy()
            pcodes[unknown] = pcodes.max(initial=-1) + 1 + np.arange(int(unknown.sum()))
        npersons = int(pcodes.max(initial=-1)) + 1
        unit, first = distinct_with_inverse(cell.astype(np.int64) * npersons + pcodes, ncells * npersons)
        unit_cell = unit // npersons
        if x is not None:
            valid = ~np.isnan(x)
            sums = np.bincount(first, weights=np.where(valid, x, 0.0), minlength=len(unit))
            nvalid = np.bincount(first, weights=valid, minlength=len(unit))
            x = np.where(nvalid > 0, sums, np.nan)
        cell = unit_cell
    out = {"records": records}
    if x is None:
        # Without person ids every record is its own contributor: no second pass over the rows.
        out["contributors"] = records.copy() if pcodes is None else np.bincount(cell, minlength=ncells).astype(np.int64)
        return out
    # One reduction answers both questions in the usual case: the minimum is NaN if any value is missing,
    # and below zero if any is negative; no mask of millions of rows is made unless one is needed.
    smallest = float(x.min()) if len(x) else 0.0
    any_missing = bool(np.isnan(smallest))
    if any_missing:
        missing = np.isnan(x)
        vcell, xv = cell[~missing], x[~missing]
        out["missing"] = np.bincount(cell[missing], minlength=ncells).astype(np.int64)
        smallest = float(xv.min()) if len(xv) else 0.0
    else:  # the usual case: no copy of millions of rows
        vcell, xv = cell, x
        out["missing"] = np.zeros(ncells, dtype=np.int64)
    any_negative = smallest < 0
    negative = xv < 0 if any_negative else None
    av = np.abs(xv) if any_negative else xv
    # Each pass over millions of rows costs about as much as pandas' whole mean, so none is made twice:
    # without person ids or missing values every record is a contributor (counted already), and without
    # negatives the absolute total is the total, no cell has a negative and the maximum is the largest
    # contribution (found for the dominance rules anyway).
    if pcodes is None and not any_missing:
        out["contributors"] = records.copy()
    else:
        out["contributors"] = np.bincount(vcell, minlength=ncells).astype(np.int64)
    out["total"] = np.bincount(vcell, weights=xv, minlength=ncells)
    out["abs_total"] = np.bincount(vcell, weights=av, minlength=ncells) if any_negative else out["total"].copy()
    out["negatives"] = (
        np.bincount(vcell[negative], minlength=ncells).astype(np.int64)
        if negative is not None
        else np.zeros(ncells, dtype=np.int64)
    )
    out["top"] = _top_contributions(vcell, av, ncells, n_top)
    minimum = np.full(ncells, np.inf)
    np.minimum.at(minimum, vcell, xv)
    if any_negative:
        maximum = np.full(ncells, -np.inf)
        np.maximum.at(maximum, vcell, xv)
    else:
        maximum = out["top"][:, 0].copy()
    empty = out["contributors"] == 0
    minimum[empty] = np.nan
    maximum[empty] = np.nan
    out["minimum"], out["maximum"] = minimum, maximum
    return out


# Up to this many possible keys, distinct keys are found by marking a table of them (time and memory
# linear in the keys' range) rather than by sorting the rows (n log n).
DENSE_KEYS_MAX = 1 << 22


def distinct_with_inverse(keys: np.ndarray, key_range: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)`` for integer keys in ``[0, key_range)``, the same answer.

    When the range is small next to the rows (a table's cells times its people, usually), marking each
    key present in a table of the whole range and numbering the marks in order beats a sort of the rows
    several times over; otherwise it is exactly ``np.unique``.
    """
    if key_range <= min(DENSE_KEYS_MAX, 16 * len(keys) + 1024):
        present = np.zeros(key_range, dtype=bool)
        present[keys] = True
        unit = np.flatnonzero(present)
        position = np.empty(key_range, dtype=np.int64)  # read only where a key is present
        position[unit] = np.arange(len(unit))
        return unit, position[keys]
    unit, inverse = np.unique(keys, return_inverse=True)
    return unit, inverse.reshape(-1)


def _top_contributions(cell: np.ndarray, a: np.ndarray, ncells: int, n_top: int) -> np.ndarray:
    """The ``n_top`` largest non-negative contributions per cell, largest first (0 where fewer)."""
    top = np.zeros((ncells, n_top))
    if len(a) == 0:
        return top
    if n_top == 2:
        # Two passes of maximum.at beat a full sort of millions of rows by a wide margin.
        first = np.zeros(ncells)
        np.maximum.at(first, cell, a)
        at_max = a == first[cell]
        ties = np.bincount(cell[at_max], minlength=ncells)  # few rows tie at the top: count those only
        second = np.zeros(ncells)
        # Contributions are >= 0, so a 0 in place of each cell's maximum leaves the rest's maximum unchanged.
        np.maximum.at(second, cell, np.where(at_max, 0.0, a))
        top[:, 0] = first
        top[:, 1] = np.where(ties >= 2, first, second)
        return top
    order = np.lexsort((-a, cell))
    sc, sa = cell[order], a[order]
    starts = np.searchsorted(sc, np.arange(ncells))
    rank = np.arange(len(sc)) - starts[sc]
    take = rank < n_top
    top[sc[take], rank[take]] = sa[take]
    return top


def _merge_top(top: np.ndarray, axis: int) -> np.ndarray:
    """Top-n over ``axis`` from per-cell top-n lists (exact when each contribution lies in one cell)."""
    n_top = top.shape[-1]
    moved = np.moveaxis(top, axis, -2)  # (..., m, n)
    flat = moved.reshape(moved.shape[:-2] + (-1,))
    merged = -np.sort(-flat, axis=-1)[..., :n_top]
    if merged.shape[-1] < n_top:
        pad = np.zeros(merged.shape[:-1] + (n_top - merged.shape[-1],))
        merged = np.concatenate([merged, pad], axis=-1)
    return np.expand_dims(merged, axis)


def _extend_by_reduction(arrays: dict[str, np.ndarray], ndim: int) -> dict[str, np.ndarray]:
    """Append margins along each axis in turn; later axes then also total the earlier margins."""
    for axis in range(ndim):
        for key, arr in arrays.items():
            if key in ADDITIVE:
                red = arr.sum(axis=axis, keepdims=True)
            elif key == "minimum":
                red = np.fmin.reduce(arr, axis=axis, keepdims=True)
            elif key == "maximum":
                red = np.fmax.reduce(arr, axis=axis, keepdims=True)
            elif key == "top":
                red = _merge_top(arr, axis)
            else:  # pragma: no cover - every key is listed above
                raise KeyError(key)
            arrays[key] = np.concatenate([arr, red], axis=axis)
    return arrays


def _extend_by_regrouping(
    codes_list: list[np.ndarray], shape: tuple[int, ...], x: np.ndarray | None, pcodes: np.ndarray, n_top: int
) -> dict[str, np.ndarray]:
    """Margins recomputed from rows: a person in two cells is one contributor to their margin, not two."""
    ndim = len(shape)
    ext_shape = tuple(n + 1 for n in shape)
    result: dict[str, np.ndarray] = {}
    for r in range(ndim, -1, -1):
        for kept in combinations(range(ndim), r):
            sub_shape = tuple(shape[a] for a in kept)
            code = (
                np.ravel_multi_index([codes_list[a] for a in kept], sub_shape)
                if kept
                else np.zeros(len(pcodes), dtype=np.int64)
            )
            stats = _group_stats(code, int(np.prod(sub_shape)) if kept else 1, x, pcodes, n_top)
            index = tuple(slice(0, shape[a]) if a in kept else shape[a] for a in range(ndim))
            for key, arr in stats.items():
                if key not in result:
                    tail = arr.shape[1:]
                    fill = np.nan if key in ("minimum", "maximum") else 0
                    dtype = arr.dtype
                    result[key] = np.full(ext_shape + tail, fill, dtype=dtype)
                result[key][index] = arr.reshape(sub_shape + arr.shape[1:])
    return result
