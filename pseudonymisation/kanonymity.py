"""k-anonymity of an extract's quasi-identifiers: group sizes, and suppression of small groups.

Counting is done per chunk (a hash group-by on the columns themselves) and merged, so memory grows
with the number of distinct quasi-identifier combinations, never with the number of rows. Null is
a value like any other: a row with a missing postcode is in the group of rows missing it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

ROWS = "__rows"
_NULL = "\x00"  # cannot occur in a cast value, so in a key a null never equals any real value
_SEPARATOR = "\x1f"


def group_counts(table: pa.Table | pa.RecordBatch, quasi_columns: Sequence[str]) -> pa.Table:
    """Rows per quasi-identifier combination in one table or chunk."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not quasi_columns:
        return pa.table({ROWS: pa.array([table.num_rows], pa.int64())})
    counted = table.select(list(quasi_columns)).group_by(list(quasi_columns)).aggregate([([], "count_all")])
    return counted.select(list(quasi_columns)).append_column(ROWS, pc.cast(counted["count_all"], pa.int64()))


def merge_counts(partials: Iterable[pa.Table], quasi_columns: Sequence[str]) -> pa.Table:
    """Add per-chunk counts into counts for the whole extract."""
    tables = [p for p in partials if p.num_rows]
    if not tables:
        return pa.table({ROWS: pa.array([], pa.int64())})
    combined = pa.concat_tables(tables, promote_options="permissive")
    if not quasi_columns:
        return pa.table({ROWS: pa.array([pc.sum(combined[ROWS]).as_py()], pa.int64())})
    merged = combined.group_by(list(quasi_columns)).aggregate([(ROWS, "sum")])
    return merged.select(list(quasi_columns)).append_column(ROWS, merged[f"{ROWS}_sum"])


def report(counts: pa.Table, k: int) -> dict[str, int | None]:
    """Smallest group, and how many groups and rows fall below k."""
    rows = counts[ROWS] if counts.num_rows else pa.array([], pa.int64())
    small = pc.less(rows, k)
    return {
        "k": k,
        "rows": int(pc.sum(rows).as_py() or 0),
        "groups": counts.num_rows,
        "smallest_group": pc.min(rows).as_py(),
        "groups_below_k": int(pc.sum(small).as_py() or 0),
        "rows_in_groups_below_k": int(pc.sum(pc.if_else(small, rows, 0)).as_py() or 0),
    }


def group_keys(table: pa.Table, quasi_columns: Sequence[str]) -> pa.Array:
    """One string per row naming its combination (used only to find rows to suppress)."""
    if not quasi_columns:
        return pa.array([""] * table.num_rows, pa.string())
    parts = [pc.fill_null(pc.cast(table[c], pa.string()), _NULL) for c in quasi_columns]
    if len(parts) == 1:
        return parts[0]
    return pc.binary_join_element_wise(*parts, _SEPARATOR)


def small_group_keys(counts: pa.Table, quasi_columns: Sequence[str], k: int) -> pa.Array:
    small = counts.filter(pc.less(counts[ROWS], k))
    keys = group_keys(small, quasi_columns)
    return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys


def suppress(table: pa.Table, quasi_columns: Sequence[str], small_keys: pa.Array) -> tuple[pa.Table, int]:
    """Drop the rows whose combination is in ``small_keys``; returns the rest and how many went."""
    if not len(small_keys) or not table.num_rows:
        return table, 0
    hit = pc.is_in(group_keys(table, quasi_columns), value_set=small_keys)
    kept = table.filter(pc.invert(hit))
    return kept, table.num_rows - kept.num_rows


def suppressed_counts(counts: pa.Table, k: int) -> pa.Table:
    """The counts once the groups below k are gone (for the report after suppression)."""
    return counts.filter(pc.greater_equal(counts[ROWS], k))
