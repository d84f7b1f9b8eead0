"""Reading a published count table (a CSV written by ACRO, pandas ``to_csv`` or R's ``write.csv``).

What a reader must never do is guess: label columns are never counts, and blank cells and suppression
markers are withheld cells, never zeros. The layouts read:

* one header row, then rows of labels and numbers (pandas with one column dimension, R's ``write.csv``
  whose first header cell is blank ``""``);
* pandas' multi-level header: one header row per column dimension (each starting with the dimension's
  name), then a row naming the row dimensions with the rest blank.

Label columns are the leading columns the caller says (``n_row_dims``, from the table's specification), or
else the first column (every writer above puts the row labels first) and every column up to the last one
holding text. A value cell holding text
that is not a known suppression marker, ragged rows, an empty table, or a header that does not match the
specification make the file unreadable *with confidence*: ``UnreadableTable`` says why, and the caller sends
the file to review. A last row or column labelled as a total (``All``, ``Total``) is a margin.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Cells that say "withheld" (ACRO and pandas leave them blank; R writes NA; statistical offices use these).
SUPPRESSION_MARKERS = frozenset(
    {
        "",
        "na",
        "nan",
        "n/a",
        "null",
        "none",
        "*",
        "**",
        "c",
        "x",
        "[c]",
        "[x]",
        "..",
        "...",
        "-",
        "~",
        "suppressed",
        "redacted",
        "s",
        "[s]",
    }
)
_BELOW = re.compile(r"^<\s*\d+$")  # "<10": a withheld small count
MARGIN_NAMES = frozenset({"all", "total", "totals", "grand total", "overall"})
_NUMBER = re.compile(r"^[+-]?(\d+(,\d{3})*|\d*)(\.\d+)?([eE][+-]?\d+)?$")


class UnreadableTable(ValueError):
    """The file cannot be read as a count table with confidence (the reason is the message)."""


@dataclass
class PublishedTable:
    """A published table: numbers by labels, withheld cells NaN, margins split off."""

    row_dims: list[str]
    col_dims: list[str]
    values: pd.DataFrame  # interior cells only; NaN = withheld in the file
    row_margin: pd.Series | None = None  # the file's total column, by row (NaN where withheld)
    col_margin: pd.Series | None = None  # the file's total row, by column
    grand_total: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def withheld(self) -> int:
        return int(self.values.isna().to_numpy().sum())

    @property
    def has_margins(self) -> bool:
        return self.row_margin is not None or self.col_margin is not None


def is_marker(text: str) -> bool:
    t = text.strip().lower()
    return t in SUPPRESSION_MARKERS or bool(_BELOW.match(t))


def _number(text: str) -> float | None:
    t = text.strip()
    if not _NUMBER.match(t) or t in ("", "+", "-", "."):
        return None
    try:
        return float(t.replace(",", ""))
    except ValueError:
        return None


def read_published_table(
    content: bytes,
    *,
    n_row_dims: int | None = None,
    n_col_dims: int | None = None,
    dims: list[str] | None = None,
) -> PublishedTable:
    """Read a CSV count table; ``UnreadableTable`` when it cannot be read with confidence."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnreadableTable("the file is not UTF-8 text") from None
    try:
        rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    except csv.Error as exc:
        raise UnreadableTable(f"not a CSV file: {exc}") from None
    if len(rows) < 2:
        raise UnreadableTable("the CSV holds no table of numbers (fewer than two rows)")
    width = max(len(r) for r in rows)
    if any(len(r) != width for r in rows):
        raise UnreadableTable("rows have different numbers of cells")
    if width < 2:
        raise UnreadableTable("the CSV holds no table of numbers (one column)")

    n_header, index_names, skip = _header_rows(rows, n_col_dims)
    body = rows[n_header:]
    if not body:
        raise UnreadableTable("the CSV has a header but no rows")
    n_labels = _label_columns(rows[0], body, n_row_dims, width)
    if n_labels >= width:
        raise UnreadableTable("no column of numbers: every column holds labels")

    row_dims = index_names[:n_labels] if index_names else [h.strip() for h in rows[0][:n_labels]]
    row_dims = [d or f"row_{i}" for i, d in enumerate(row_dims)]
    # The names row is not a level of column labels, nor is a first row naming the value column.
    level_rows = list(range(skip, n_header - 1)) if index_names else [0]
    levels = len(level_rows)
    col_dims = [rows[h][0].strip() for h in level_rows] if index_names else [""]
    if dims is not None:
        row_dims, col_dims = _names_from_spec(dims, n_labels, levels)
    col_dims = [d or f"column_{i}" for i, d in enumerate(col_dims)]

    headers = [tuple(rows[h][j].strip() for h in level_rows) for j in range(n_labels, width)]
    labels = [tuple(r[j].strip() for j in range(n_labels)) for r in body]
    numbers = np.full((len(body), width - n_labels), np.nan)
    for i, r in enumerate(body):
        for j, cell in enumerate(r[n_labels:]):
            if is_marker(cell):
                continue
            value = _number(cell)
            if value is None:
                raise UnreadableTable(
                    f"row {i + n_header + 1}, column {j + n_labels + 1} holds text that is neither a number "
                    "nor a suppression marker"
                )
            numbers[i, j] = value
    index = _index(labels, row_dims)
    columns = _index(headers, col_dims)
    frame = pd.DataFrame(numbers, index=index, columns=columns)
    return _split_margins(frame, row_dims, col_dims)


def _header_rows(rows: list[list[str]], n_col_dims: int | None) -> tuple[int, list[str], int]:
    """(rows the header takes, the row dimensions' names when pandas wrote a names row, how many leading
    header rows name the value column rather than a dimension).

    pandas writes a names row ("name1,name2,,,," blank where the numbers go) only under a header of two or
    more levels; a data row whose cells were all withheld looks the same. So a names row is believed only
    when the rows above it are header rows: they hold text where the numbers go, or the first header row
    repeats its labels (an outer level) or names the value column (pandas' pivot_table: a blank first cell
    and one repeated text). Otherwise the header is one row.
    """
    first_values = [c.strip() for c in rows[0][1:]]
    value_level = (
        rows[0][0].strip() == ""
        and len(set(first_values)) == 1
        and first_values[0] != ""
        and _number(first_values[0]) is None
        and len(rows) > 3
    )
    header_signal = value_level or len(set(first_values)) < len(first_values)
    for k in range(1, min(len(rows) - 1, 8)):
        candidate = rows[k]
        blanks = [c.strip() == "" for c in candidate]
        lead = 0
        while lead < len(candidate) and not blanks[lead]:
            lead += 1
        if (
            k >= 2
            and 0 < lead < len(candidate)
            and all(blanks[lead:])
            and all(c.strip() == "" for r in rows[:k] for c in r[1:lead])
            and all(c.strip() != "" for r in rows[1:k] for c in r[lead:])
        ):
            skip = 1 if value_level else 0
            if n_col_dims is not None and n_col_dims != k - skip:
                raise UnreadableTable(
                    f"the header has {k - skip} row(s) of column labels but the specification has {n_col_dims}"
                )
            return k + 1, [c.strip() for c in candidate[:lead]], skip
        if not header_signal and not any(not is_marker(c) and _number(c) is None for c in candidate[1:]):
            break  # a row of numbers under a plain header: the header ended before it
    if n_col_dims is not None and n_col_dims > 1:
        raise UnreadableTable(f"no header of {n_col_dims} row(s) of column labels as the specification says")
    return 1, [], 0


def _label_columns(header: list[str], body: list[list[str]], n_row_dims: int | None, width: int) -> int:
    if n_row_dims is not None:
        for j in range(n_row_dims, width):
            column = [r[j] for r in body]
            if any(not is_marker(c) and _number(c) is None for c in column):
                raise UnreadableTable(
                    f"column {j + 1} holds text but the specification says the table has {n_row_dims} label column(s)"
                )
        return n_row_dims
    # pandas, ACRO and R all write the row labels first, so the first column is labels; so is every column
    # up to the last one holding text (labels come before numbers). A second label column of numbers only
    # (codes, years) cannot be told from counts without the specification.
    n = 1
    for j in range(1, width):
        cells = [r[j] for r in body if not is_marker(r[j])]
        if cells and sum(_number(c) is None for c in cells) * 2 > len(cells):
            n = j + 1  # mostly text: labels (a value column with a stray word is refused later)
    return n


def _names_from_spec(dims: list[str], n_labels: int, n_col: int) -> tuple[list[str], list[str]]:
    if n_labels + n_col != len(dims):
        raise UnreadableTable(
            f"the file has {n_labels} label column(s) and {n_col} header row(s) but the specification has "
            f"{len(dims)} dimension(s)"
        )
    return list(dims[:n_labels]), list(dims[n_labels:])


def _index(labels: list[tuple], names: list[str]) -> pd.Index:
    if not labels or not labels[0]:
        return pd.RangeIndex(len(labels))
    if len(labels[0]) == 1:
        return pd.Index([_label(t[0]) for t in labels], name=names[0] if names else None)
    return pd.MultiIndex.from_tuples([tuple(_label(v) for v in t) for t in labels], names=names)


def _label(text: str) -> object:
    """Labels keep the type a reader would give them: integers stay integers (years, codes)."""
    value = _number(text)
    if value is not None and value.is_integer() and "," not in text and "." not in text:
        return int(value)
    return text


def _is_margin(label: object) -> bool:
    parts = label if isinstance(label, tuple) else (label,)
    named = [p for p in parts if str(p).strip()]
    return bool(named) and all(str(p).strip().lower() in MARGIN_NAMES for p in named)


def _split_margins(frame: pd.DataFrame, row_dims: list[str], col_dims: list[str]) -> PublishedTable:
    table = PublishedTable(row_dims, col_dims, frame)
    row_total = len(frame.index) > 1 and _is_margin(frame.index[-1])
    col_total = len(frame.columns) > 1 and _is_margin(frame.columns[-1])
    if any(_is_margin(x) for x in list(frame.index[:-1]) + list(frame.columns[:-1])):
        raise UnreadableTable("a total row or column that is not last: the layout is not one this can read")
    # Without margins the frame is the table's cells (a slice of all of it was a copy of the frame for nothing).
    inner = frame.iloc[: -1 if row_total else None, : -1 if col_total else None] if row_total or col_total else frame
    if col_total:
        table.row_margin = frame.iloc[: -1 if row_total else None, -1]
    if row_total:
        table.col_margin = frame.iloc[-1, : -1 if col_total else None]
    if row_total and col_total:
        table.grand_total = float(frame.iloc[-1, -1])
    table.values = inner
    for name, margin, axis in (("column", table.row_margin, 1), ("row", table.col_margin, 0)):
        if margin is None:
            continue
        sums = inner.sum(axis=axis, min_count=1).to_numpy()
        complete = ~inner.isna().any(axis=axis).to_numpy()
        given = margin.to_numpy()
        if np.any(complete & ~np.isnan(given) & ~np.isclose(sums, given)):
            table.notes.append(f"the total {name} does not equal the sum of its cells")
    return table
