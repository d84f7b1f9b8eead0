"""The linkage core's first step: records in, the cleaned table it compares, in (source, record id) order.

The cleaning rules are the scalar functions below; they are the definition. ``prepare`` applies them to
whole columns in one DuckDB query (multi-threaded, no Python per record) for the values where the SQL
does exactly what the function does: text that is plain ASCII, and dates of birth written
``YYYY-MM-DD``. Every other value (text with accents or other scripts, a ``date`` object, another ISO
date form, an NHS number given as an integer) goes through the function itself. Rows are ordered by
``(source, record_id)`` as Python orders those strings (UTF-8 byte order is code point order), and the
row's ``unique_id`` is its position in that order: the Splink stage, the clustering and the person
numbers all follow it.

Pure: no Flask, no SQLAlchemy (import-linter enforces); it logs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pseudonymisation import nhs_number

if TYPE_CHECKING:
    import duckdb

    from pseudonymisation.linkage import Record

_NOT_LETTERS = re.compile(r"[^A-Z]")
_NOT_ALNUM = re.compile(r"[^A-Z0-9]")

# The identifier fields of a Record, in the order the cleaned table holds them.
FIELDS = ("first_name", "surname", "date_of_birth", "sex", "postcode", "nhs_number")
# The columns Splink is given (the Spark backend's schema follows this order).
SPLINK_COLUMNS = ("unique_id", "first_name", "surname", "full_name", "date_of_birth", "date_of_birth_transposed",
                  "sex", "postcode")


# --- the rules, one value at a time -------------------------------------------------------------

def letters(value: str | None) -> str | None:
    """A name: upper case, letters A-Z only; None when nothing is left."""
    if value is None:
        return None
    text = _NOT_LETTERS.sub("", value.upper())
    return text or None


def date_of_birth(value: date | str | None) -> str | None:
    """An ISO date (``YYYY-MM-DD``), from a date or from text in an ISO form; None otherwise."""
    if value is None:
        return None
    if isinstance(value, date):
        return value.isoformat()
    try:
        return date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        return None


def sex(value: str | None) -> str | None:
    """``M`` or ``F`` from the first letter, else None."""
    if value is None:
        return None
    text = value.strip().upper()[:1]
    return text if text in {"M", "F"} else None


def postcode(value: str | None) -> str | None:
    """Upper case letters and digits, the inward code (last three) set apart by one space."""
    text = _NOT_ALNUM.sub("", (value or "").upper())
    if len(text) > 3:  # the outward code, a space, the three-character inward code
        text = f"{text[:-3]} {text[-3:]}"
    return text or None


def valid_nhs_number(value: object) -> str | None:
    """The ten digits of a valid NHS number (modulus-11 check), else None."""
    digits = nhs_number.normalise(value)
    return digits if digits is not None and nhs_number.is_valid(digits) else None


_RULES: dict[str, Callable[[Any], str | None]] = {
    "first_name": letters, "surname": letters, "date_of_birth": date_of_birth, "sex": sex,
    "postcode": postcode, "nhs_number": valid_nhs_number,
}


def transposed(dob: str | None) -> str | None:
    """The ISO date with day and month swapped, when that is another real date (day 12 or less and
    not equal to the month); else None. Blocks the pairs whose only date error is that swap."""
    if dob is None or dob[8:10] == dob[5:7] or int(dob[8:10]) > 12:
        return None
    return f"{dob[:4]}-{dob[8:10]}-{dob[5:7]}"


# --- the same rules on whole columns --------------------------------------------------------------

# What str.strip() removes from ASCII text (Python's whitespace among the first 128 code points).
_STRIP = " \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"
_STRIP_SQL = " || ".join(f"chr({ord(c)})" for c in _STRIP)
# RE2 class for nhs_number.normalise's separators (\s and "-") within ASCII.
_SEPARATORS_RE2 = r"[ \t\n\x0b\x0c\r\x1c-\x1f\-]"

# Each field's SQL, in two steps: ``STAGE`` over the raw text ``{v}`` (computed once), then the
# cleaned value over that stage ``{t}``, used when ``FAST_WHEN`` holds (the text is ASCII: its bytes
# are its characters; and for a date, the one form DuckDB and Python read alike, years 0001 on). The
# value's own function handles every other value.
_STAGE = {
    "first_name": "upper({v})",
    "surname": "upper({v})",
    "sex": f"upper(left(ltrim({{v}}, {_STRIP_SQL}), 1))",
    "postcode": "regexp_replace(upper({v}), '[^A-Z0-9]', '', 'g')",
    "date_of_birth": f"trim({{v}}, {_STRIP_SQL})",
    "nhs_number": f"regexp_replace({{v}}, '{_SEPARATORS_RE2}', '', 'g')",
}
_CLEANED = {
    "first_name": "nullif(regexp_replace({t}, '[^A-Z]', '', 'g'), '')",
    "surname": "nullif(regexp_replace({t}, '[^A-Z]', '', 'g'), '')",
    "sex": "CASE WHEN {t} IN ('M', 'F') THEN {t} END",
    "postcode": "CASE WHEN length({t}) > 3 THEN left({t}, length({t}) - 3) || ' ' || right({t}, 3) "
                "ELSE nullif({t}, '') END",
    "date_of_birth": "CASE WHEN try_cast({t} AS DATE) IS NOT NULL THEN {t} END",
    "nhs_number": "CASE WHEN regexp_full_match({t}, '[0-9]{{10}}') AND nhs_check({t}) THEN {t} END",
}
_FAST_WHEN = {
    "date_of_birth": "strlen({v}) = length({v}) AND regexp_full_match({t}, '[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}') "
                     "AND NOT starts_with({t}, '0000')",
}
# The modulus-11 check on ten ASCII digits (nhs_number.check_digit): weights 10..2 on the first nine.
_NHS_CHECK = (
    "CREATE OR REPLACE TEMP MACRO nhs_check(d) AS ("
    "  (11 - (" + " + ".join(f"({11 - k} * CAST(d[{k}] AS INTEGER))" for k in range(1, 10)) + ") % 11) % 11"
    "  = CAST(d[10] AS INTEGER) AND (11 - (" + " + ".join(f"({11 - k} * CAST(d[{k}] AS INTEGER))" for k in range(1, 10))
    + ") % 11) <> 10)"
)


@dataclass(frozen=True)
class Prepared:
    """The cleaned records: ``table`` (Arrow, one row per record in key order, with ``unique_id``, the
    Splink columns and ``nhs_number``, the valid number or null) and ``order`` (the input position of
    each row)."""

    table: pa.Table
    order: np.ndarray

    def __len__(self) -> int:
        return self.table.num_rows

    def splink_frame(self) -> pd.DataFrame:
        """The table Splink links: one row per cleaned record, ``unique_id`` its position."""
        return self.table.select(list(SPLINK_COLUMNS)).to_pandas()


def _text(values: list[Any]) -> tuple[pa.Array, list[int]]:
    """The values that are strings as an Arrow column (others null), and the positions of the others."""
    odd = [i for i, v in enumerate(values) if v is not None and type(v) is not str]
    if odd:
        values = [v if type(v) is str else None for v in values]
    return pa.array(values, pa.string()), odd


def _key(values: list[Any], what: str) -> pa.Array:
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowException, UnicodeEncodeError) as error:
        raise ValueError(f"every record's {what} must be text") from error


def prepare(records: Sequence[Record], connection: duckdb.DuckDBPyConnection) -> Prepared:
    """Clean ``records`` on ``connection`` (a DuckDB connection the caller owns and closes)."""
    count = len(records)
    raw = {field: list(map(attrgetter(field), records)) for field in FIELDS}
    columns: dict[str, pa.Array] = {
        "i": pa.array(np.arange(count, dtype=np.int64)),
        "source": _key(list(map(attrgetter("source"), records)), "source"),
        "record_id": _key(list(map(attrgetter("record_id"), records)), "record id"),
    }
    by_python: dict[str, list[int]] = {}
    for field in FIELDS:
        columns[field], by_python[field] = _text(raw[field])
    born = [v if type(v) is date else None for v in raw["date_of_birth"]]
    columns["born"] = pa.array(born, pa.date32())
    if by_python["date_of_birth"]:
        by_python["date_of_birth"] = [
            i for i in by_python["date_of_birth"] if (day := born[i]) is None or day.year < 1000
        ]
    source_table = pa.table(columns)  # noqa: F841  # read by name in the SQL below
    connection.execute(_NHS_CHECK)
    staged, selects = [], []
    for field in FIELDS:
        v, t = f'"{field}"', f'"{field}_staged"'
        staged.append(f"{v}, {_STAGE[field].format(v=v)} AS {t}")
        when = _FAST_WHEN.get(field, "strlen({v}) = length({v})").format(v=v, t=t)
        selects.append(f"CASE WHEN {when} THEN {_CLEANED[field].format(t=t)} END AS {v}")
        selects.append(f'{v} IS NOT NULL AND NOT ({when}) AS "{field}_by_python"')
    # Dates of birth given as dates (not datetimes) are written by DuckDB when four-digit years.
    selects[FIELDS.index("date_of_birth") * 2] = (
        "CASE WHEN born IS NOT NULL AND year(born) >= 1000 THEN strftime(born, '%Y-%m-%d') ELSE "
        + selects[FIELDS.index("date_of_birth") * 2].removesuffix(' AS "date_of_birth"') + ' END AS "date_of_birth"'
    )
    cleaned = connection.sql(
        f"SELECT i, {', '.join(selects)} FROM (SELECT i, source, record_id, born, {', '.join(staged)} "  # noqa: S608  # nosec B608 - names are constants
        "FROM source_table) ORDER BY source, record_id"
    ).to_arrow_table()
    order = cleaned.column("i").to_numpy()
    if count > 1:
        shared = connection.sql(
            "SELECT count(*) FROM (SELECT 1 FROM source_table GROUP BY source, record_id HAVING count(*) > 1)"
        ).fetchall()
        if shared[0][0]:
            raise ValueError("two records share a source and record id")

    position = np.empty(count, dtype=np.int64)
    position[order] = np.arange(count, dtype=np.int64)
    out: dict[str, pa.Array] = {"unique_id": pa.array(np.arange(count, dtype=np.int64))}
    for field in FIELDS:
        column = cleaned.column(field)
        rows = np.flatnonzero(cleaned.column(f"{field}_by_python").to_numpy(zero_copy_only=False))
        rows = np.union1d(rows, position[by_python[field]]) if by_python[field] else rows
        if len(rows):
            values = column.to_pylist()
            rule = _RULES[field]
            for row in rows.tolist():
                values[row] = rule(raw[field][order[row]])
            column = pa.array(values, pa.string())
        out[field] = column
    cleaned_table = pa.table(out)  # noqa: F841  # read by name in the SQL below
    derived = connection.sql(
        "SELECT unique_id, first_name, surname, "
        "CASE WHEN first_name IS NOT NULL AND surname IS NOT NULL THEN first_name || ' ' || surname END AS full_name, "
        "date_of_birth, "
        "CASE WHEN date_of_birth IS NULL OR substr(date_of_birth, 9, 2) = substr(date_of_birth, 6, 2) "
        "  OR CAST(substr(date_of_birth, 9, 2) AS INTEGER) > 12 THEN NULL "
        "  ELSE substr(date_of_birth, 1, 4) || '-' || substr(date_of_birth, 9, 2) || '-' "
        "  || substr(date_of_birth, 6, 2) END "
        "  AS date_of_birth_transposed, "
        "sex, postcode, nhs_number FROM cleaned_table ORDER BY unique_id"
    ).to_arrow_table()
    return Prepared(derived, order)


def numbered_positions(prepared: Prepared) -> np.ndarray:
    """Input positions (ascending) of the records holding a valid NHS number."""
    valid = pc.is_valid(prepared.table.column("nhs_number")).to_numpy(zero_copy_only=False)
    return np.sort(prepared.order[valid])
