"""Check one delivery of a dataset against its declared columns, count its quality, and compare it
with the version in use: the pure engine behind ``pseudonymisation.deliveries``.

A delivery is read once, in chunks (memory follows the chunk, not the file), and every figure is a
count or a fraction: the report never holds a value from the data, so a custodian can read it and
it can be stored beside the version. Two numbers per numeric column (mean and standard deviation)
are kept in ``profile`` for the next delivery's drift check; they are summaries, never shown.

``check_delivery`` returns a report whose ``problems`` list says why a delivery fails, each problem
with its check, column and count, so the custodian knows what to correct; an empty list passes.
No Flask, no SQLAlchemy: usable from a notebook or a batch job.
"""

from __future__ import annotations

import datetime as dt
import math
import queue
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pseudonymisation import generalise, hash_spill, profiling, quality, tokens
from pseudonymisation.profiling import CsvDialect, ProfilingError
from pseudonymisation.sources import SourceFile, as_source

REPORT_FORMAT = "tre-delivery-report/1"
TYPES = ("string", "integer", "decimal", "date")
_INTEGER = r"^\s*[+-]?[0-9]+\s*$"
_DECIMAL = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"
_KEY_SEPARATOR = "\x1f"


class DeliveryCheckError(ValueError):
    """The delivery or the rules cannot be checked as given; the message names no value."""


@dataclass(frozen=True)
class ExpectedColumn:
    name: str
    data_type: str = "string"  # one of TYPES; anything else is checked as text


@dataclass(frozen=True)
class DeliveryRules:
    """The thresholds a custodian sets; a delivery beyond any of them fails.

    Fractions are of the delivery's rows. ``None`` means the check is counted but never fails.
    """

    max_type_failure_fraction: float = 0.01
    min_rows_fraction_of_previous: float | None = 0.9
    key_columns: tuple[str, ...] = ()
    max_missing_fraction: Mapping[str, float] = field(default_factory=dict)
    max_invalid_nhs_fraction: float | None = None
    max_invalid_code_fraction: float | None = None
    max_future_date_fraction: float | None = None
    max_missing_increase: float | None = None  # drift: rise in a column's missing fraction
    max_mean_shift_sd: float | None = None  # drift: a numeric mean moving this many SDs
    earliest_date: str = "1900-01-01"
    code_patterns: Mapping[str, str] = field(default_factory=dict)
    nhs_number_column: str | None = None
    referential: Sequence[Mapping[str, str]] = ()  # [{"column": ..., "table": ..., "table_column": ...}]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeliveryRules:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise DeliveryCheckError(f"Unknown delivery rules: {', '.join(unknown)}")
        values = dict(data)
        for name in ("max_type_failure_fraction", "min_rows_fraction_of_previous", "max_invalid_nhs_fraction",
                     "max_invalid_code_fraction", "max_future_date_fraction", "max_missing_increase"):
            if values.get(name) is not None:
                values[name] = _fraction(name, values[name])
        if values.get("max_type_failure_fraction", 0.0) is None:
            raise DeliveryCheckError("max_type_failure_fraction must be a fraction between 0 and 1")
        if values.get("max_mean_shift_sd") is not None:
            shift = values["max_mean_shift_sd"]
            if isinstance(shift, bool) or not isinstance(shift, int | float) or not 0 < shift < 1000:
                raise DeliveryCheckError("max_mean_shift_sd must be a positive number of standard deviations")
        values["key_columns"] = tuple(str(c) for c in values.get("key_columns") or ())
        values["max_missing_fraction"] = {
            str(k): _fraction(f"max_missing_fraction of {k}", v)
            for k, v in dict(values.get("max_missing_fraction") or {}).items()
        }
        patterns = {str(k): str(v) for k, v in dict(values.get("code_patterns") or {}).items()}
        for column, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error:
                raise DeliveryCheckError(f"The code pattern of {column} is not a valid regular expression") from None
        values["code_patterns"] = patterns
        try:
            dt.date.fromisoformat(str(values.get("earliest_date", "1900-01-01")))
        except ValueError:
            raise DeliveryCheckError("earliest_date must be a date written YYYY-MM-DD") from None
        refs = []
        for ref in values.get("referential") or ():
            if not isinstance(ref, Mapping) or not {"column", "table", "table_column"} <= set(ref):
                raise DeliveryCheckError("Each referential rule names column, table and table_column")
            refs.append({k: str(ref[k]) for k in ("column", "table", "table_column")})
        values["referential"] = tuple(refs)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_type_failure_fraction": self.max_type_failure_fraction,
            "min_rows_fraction_of_previous": self.min_rows_fraction_of_previous,
            "key_columns": list(self.key_columns),
            "max_missing_fraction": dict(self.max_missing_fraction),
            "max_invalid_nhs_fraction": self.max_invalid_nhs_fraction,
            "max_invalid_code_fraction": self.max_invalid_code_fraction,
            "max_future_date_fraction": self.max_future_date_fraction,
            "max_missing_increase": self.max_missing_increase,
            "max_mean_shift_sd": self.max_mean_shift_sd,
            "earliest_date": self.earliest_date,
            "code_patterns": dict(self.code_patterns),
            "nhs_number_column": self.nhs_number_column,
            "referential": [dict(r) for r in self.referential],
        }

    def named_columns(self) -> set[str]:
        named = set(self.key_columns) | set(self.max_missing_fraction) | set(self.code_patterns)
        named |= {r["column"] for r in self.referential}
        return named | ({self.nhs_number_column} if self.nhs_number_column else set())


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise DeliveryCheckError(f"{name} must be a fraction between 0 and 1")
    return float(value)


@dataclass
class _ColumnCounts:
    data_type: str
    missing: int = 0
    type_failures: int = 0
    invalid_codes: int = 0
    dates_future: int = 0
    dates_too_early: int = 0
    nhs_invalid: dict[str, int] = field(default_factory=dict)
    total: float = 0.0  # numeric sum and sum of squares, for mean and SD
    squares: float = 0.0
    numbers: int = 0

    def to_dict(self, rows: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "data_type": self.data_type,
            "missing": self.missing,
            "completeness": round(1 - self.missing / rows, 6) if rows else None,
            "type_failures": self.type_failures,
        }
        if self.data_type == "date":
            out["dates_in_future"] = self.dates_future
            out["dates_too_early"] = self.dates_too_early
        if self.nhs_invalid:
            out["nhs_numbers_invalid"] = dict(sorted(self.nhs_invalid.items()))
        return out


def _text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values
    if pa.types.is_date(values.type) or pa.types.is_timestamp(values.type):
        return pc.strftime(values, format="%Y-%m-%d")
    return pc.cast(values, pa.string())


def _present(values: pa.Array) -> pa.Array:
    """The values that count as present (not null, not blank)."""
    kept = values.drop_null()
    return kept.filter(pc.invert(pc.utf8_is_space(kept))).filter(pc.greater(pc.binary_length(kept), 0)) \
        if len(kept) else kept


def _blanks(values: pa.Array) -> np.ndarray | None:
    """Which values of a text array are blank (empty, or whitespace alone); None if none is. Only a
    value that is empty or starts with a control, space or non-ASCII byte can be blank, so Arrow's
    whitespace test runs on those alone (usually none), found from the offsets and the first bytes."""
    n = len(values)
    if not n:
        return None
    _, offsets_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32, count=n + 1, offset=values.offset * 4)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    if len(data):
        first = data[np.minimum(starts, len(data) - 1)]
        maybe = np.flatnonzero((lengths == 0) | (first <= 0x20) | (first >= 0x80))
    else:
        maybe = np.arange(n)
    if not len(maybe):
        return None
    some = values.take(pa.array(maybe))
    found = pc.fill_null(pc.or_(pc.equal(pc.binary_length(some), 0), pc.utf8_is_space(some)), False)
    hits = maybe[np.asarray(found.to_numpy(zero_copy_only=False), dtype=bool)]
    if not len(hits):
        return None
    blank = np.zeros(n, dtype=bool)
    blank[hits] = True
    return blank


def _observe_text(counts: _ColumnCounts, raw: pa.Array) -> pa.Array:
    """Count a text column's missing values (nulls and blanks); its present values."""
    blank = _blanks(raw)
    counts.missing += raw.null_count + (int(blank.sum()) if blank is not None else 0)
    if blank is None:
        return raw.drop_null() if raw.null_count else raw
    kept = raw.filter(pa.array(~blank))
    return kept.drop_null() if kept.null_count else kept


def _count_true(mask: pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0) if len(mask) else 0  # Arrow sums a boolean as its trues


def _observe(counts: _ColumnCounts, raw: pa.Array, rules: DeliveryRules, name: str, today: dt.date,
             integers: dict[str, pa.Array] | None = None) -> None:
    """Count one chunk of one column. An integer column's values as int64 (when the fast path made
    them) are left in ``integers`` under its name, so the key check does not convert them again."""
    checked = counts.data_type != "string" or name in rules.code_patterns or name == rules.nhs_number_column
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks()
    if pa.types.is_string(raw.type) and counts.data_type != "string" and name not in rules.code_patterns \
            and name != rules.nhs_number_column and _observe_typed_text(counts, raw, rules, today, name, integers):
        return
    if pa.types.is_string(raw.type):  # every CSV column: nulls and blanks counted in one pass
        present = _observe_text(counts, raw)
        text = raw
    else:
        counts.missing += quality.missing_count(raw)
        text = _text(raw) if checked else raw
        present = _present(text) if checked else raw
    if not checked:
        return  # a text column with no rule: its completeness is all there is to count
    if counts.data_type in ("integer", "decimal"):
        _observe_numbers(counts, raw, present)
    elif counts.data_type == "date":
        days = _fast_cast(present, pa.date32())
        if days is None:  # some value is not a plain ISO date: read each as the extract does (ADR 0062)
            parsed = generalise.on_distinct(present, generalise.dates_from_text)
            counts.type_failures += parsed.null_count  # present has no nulls: these are no date
            days = parsed.drop_null()
        _count_dates(counts, days, rules, today)
    if name in rules.code_patterns:
        counts.invalid_codes += quality.invalid_code_count(present, rules.code_patterns[name])
    if name == rules.nhs_number_column:
        parsed_numbers = tokens.parse_numbers(text)
        for reason, count in parsed_numbers.reasons().items():
            if not reason.endswith("missing"):  # missing is counted as completeness
                counts.nhs_invalid[reason] = counts.nhs_invalid.get(reason, 0) + count


def _fast_cast(values: pa.Array, to: pa.DataType) -> pa.Array | None:
    """Arrow's own cast when every value converts (the usual case, and fast); None if any fails."""
    try:
        return pc.cast(values, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _count_dates(counts: _ColumnCounts, days: pa.Array, rules: DeliveryRules, today: dt.date) -> None:
    """Count the dates after today and before the earliest allowed (nulls are neither)."""
    counts.dates_future += _count_true(pc.greater(days, pa.scalar(today, pa.date32())))
    earliest = dt.date.fromisoformat(rules.earliest_date)
    counts.dates_too_early += _count_true(pc.less(days, pa.scalar(earliest, pa.date32())))


def _integer_cast(values: pa.Array) -> pa.Array | None:
    """Text as int64 when Arrow converts every value and none is written in hex: Arrow's cast reads
    "0x1F", which the integer pattern does not, and a value's verdict must not depend on its chunk.
    Any "x" in the column's bytes sends the chunk the slow way (a false alarm only costs time)."""
    data = values.buffers()[2]
    if data is not None and len(data):
        raw = np.frombuffer(data, dtype=np.uint8)
        if np.count_nonzero((raw | 0x20) == ord("x")):
            return None
    return _fast_cast(values, pa.int64())


def _observe_typed_text(counts: _ColumnCounts, raw: pa.Array, rules: DeliveryRules, today: dt.date,
                        name: str, integers: dict[str, pa.Array] | None) -> bool:
    """The usual chunk of a numeric or date column read as text: every value present converts, so
    one cast of the raw column gives every count (a blank or whitespace-only value never converts,
    so the missing values are the nulls alone). False, having counted nothing, when any value does
    not convert cleanly (or a number is not finite, which the patterns refuse): the slow way then
    finds which. The counts are those the slow way gives for the same chunk."""
    if counts.data_type == "date":
        days = _fast_cast(raw, pa.date32())
        if days is None:
            return False
        counts.missing += raw.null_count
        _count_dates(counts, days, rules, today)
        return True
    if counts.data_type == "integer":
        converted = _integer_cast(raw)
        if converted is None:
            return False
        if integers is not None:
            integers[name] = converted
    else:
        converted = _fast_cast(raw, pa.float64())
        if converted is None:
            return False
    numbers = pc.cast(converted, pa.float64(), safe=False)  # past 2**53: rounded, as a mean may be
    if numbers.null_count:
        numbers = numbers.drop_null()
    total = float(pc.sum(numbers).as_py() or 0.0)
    squares = float(pc.sum(pc.multiply(numbers, numbers)).as_py() or 0.0)
    if not (math.isfinite(total) and math.isfinite(squares)):
        return False  # "nan", "inf" (or sums past float range): the slow way decides each value
    counts.missing += raw.null_count
    counts.numbers += len(numbers)
    counts.total += total
    counts.squares += squares
    return True


def _observe_numbers(counts: _ColumnCounts, raw: pa.Array, present: pa.Array) -> None:
    native = pa.types.is_integer(raw.type) or (pa.types.is_floating(raw.type) and counts.data_type == "decimal")
    if native:
        numbers = pc.cast(raw.drop_null(), pa.float64(), safe=False)
    else:
        if counts.data_type == "integer":
            converted = _integer_cast(present)
        else:
            converted = _fast_cast(present, pa.float64())
            if converted is not None and len(converted) and not pc.all(pc.is_finite(converted)).as_py():
                converted = None  # Arrow reads "nan" and "inf"; the pattern, which decides, does not
        if converted is None:
            ok = pc.match_substring_regex(present, _INTEGER if counts.data_type == "integer" else _DECIMAL)
            counts.type_failures += len(present) - _count_true(ok)
            converted = pc.cast(pc.utf8_trim_whitespace(present.filter(ok)), pa.float64())
        numbers = pc.cast(converted, pa.float64(), safe=False)
    finite = numbers.filter(pc.is_finite(numbers)) if len(numbers) else numbers
    counts.numbers += len(finite)
    counts.total += float(pc.sum(finite).as_py() or 0.0)
    counts.squares += float(pc.sum(pc.multiply(finite, finite)).as_py() or 0.0)


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted: a sort and a compare, several times faster on 64-bit hashes
    than ``np.unique``'s hash table."""
    if not len(values):
        return values
    ordered = np.sort(values)
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _epoch_days(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


def _key_hashes(table: pa.Table | pa.RecordBatch, key_columns: Sequence[str],
                integers: Mapping[str, pa.Array] | None = None) -> tuple[np.ndarray, int]:
    """A 64-bit hash of each row's key, and how many rows have part of the key missing. ``integers``
    may hold a text column's values already cast to int64 (by ``_observe``)."""
    missing = np.zeros(table.num_rows, dtype=bool)
    for c in key_columns:
        missing |= np.asarray(pc.is_null(table.column(c)).to_numpy(zero_copy_only=False), dtype=bool)
    if len(key_columns) == 1:
        column = table.column(key_columns[0])
        cast = (integers or {}).get(key_columns[0])
        if cast is not None and column.null_count:
            cast = cast.drop_null()
        values = _text(column)
        return _text_hashes(values.drop_null() if values.null_count else values, cast), int(missing.sum())
    parts = [pc.fill_null(_text(table.column(c)), "") for c in key_columns]
    joined = pc.binary_join_element_wise(*parts, _KEY_SEPARATOR)
    return _text_hashes(joined)[~missing], int(missing.sum())


# Text that is an integer written plainly (no sign but a leading minus, no leading zero, at most 18
# digits) hashes by its value, mixed, without making a Python string of it: most keys are such
# numbers, and hashing them as text was most of the check's time. The set is defined by the pattern,
# so a value hashes the same in a chunk of plain integers (fast) as in a mixed chunk.
_PLAIN_INTEGER = r"^(0|-?[1-9][0-9]{0,17})$"
_INTEGER_LIMIT = 10**18
_POWERS_OF_TEN = np.array([10**k for k in range(1, 19)], dtype=np.int64)  # 10 .. 10**18
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mix_integers(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over int64 values: equal values, equal hashes; a bijection."""
    x = values.astype(np.int64).view(np.uint64) + _MIX[0]
    x = (x ^ (x >> np.uint64(30))) * _MIX[1]
    x = (x ^ (x >> np.uint64(27))) * _MIX[2]
    return x ^ (x >> np.uint64(31))


def _hash_strings(values: pa.Array) -> np.ndarray:
    return pd.util.hash_array(np.asarray(values.to_numpy(zero_copy_only=False), dtype=object), categorize=False)


def _text_hashes(values: pa.Array, numbers: pa.Array | None = None) -> np.ndarray:
    """A 64-bit hash of each (non-null) text value; equal text, equal hash, in any chunk.
    ``numbers``, if given, is ``_integer_cast(values)``, already made."""
    if not len(values):
        return np.zeros(0, dtype=np.uint64)
    if numbers is None and pa.types.is_string(values.type):
        numbers = _integer_cast(values)
    if numbers is not None and not numbers.null_count:
        # Arrow's cast takes [-]digits only, so a value is written plainly when its length is its
        # digits' count (and its sign's): no leading zero, and not "-0".
        ints = numbers.to_numpy()
        if len(ints) and -_INTEGER_LIMIT < ints.min() and ints.max() < _INTEGER_LIMIT:
            size = np.diff(np.frombuffer(values.buffers()[1], dtype=np.int32, count=len(values) + 1,
                                         offset=values.offset * 4))
            digits = np.searchsorted(_POWERS_OF_TEN, np.abs(ints), side="right") + 1 + (ints < 0)
            if np.array_equal(size, digits):
                return _mix_integers(ints)
    shaped = np.asarray(pc.match_substring_regex(values, _PLAIN_INTEGER).to_numpy(zero_copy_only=False), dtype=bool)
    out = np.empty(len(values), dtype=np.uint64)
    if shaped.any():
        out[shaped] = _mix_integers(pc.cast(values.filter(pa.array(shaped)), pa.int64()).to_numpy())
    if not shaped.all():
        out[~shaped] = _hash_strings(values.filter(pa.array(~shaped)))
    return out


@dataclass(frozen=True)
class DeliveryReport:
    """What ``check_delivery`` found. ``to_dict`` is what is stored and shown."""

    passed: bool
    rows: int | None
    problems: tuple[dict[str, Any], ...]
    body: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self.body, "passed": self.passed, "rows": self.rows, "problems": list(self.problems)}


def _problem(check: str, message: str, *, column: str | None = None, count: int | None = None,
             fraction: float | None = None, limit: float | None = None) -> dict[str, Any]:
    return {"check": check, "column": column, "count": count,
            "fraction": None if fraction is None else round(fraction, 6), "limit": limit, "message": message}


def check_delivery(
    path: Path | str | SourceFile,
    expected: Sequence[ExpectedColumn],
    rules: DeliveryRules,
    *,
    previous: Mapping[str, Any] | None = None,
    today: dt.date,
    chunk_bytes: int = 1 << 24,
    dialect: CsvDialect | None = None,
    reference_keys: Mapping[str, Callable[[], np.ndarray | Iterable[np.ndarray]]] | None = None,
    progress: Callable[[int], None] | None = None,
    scratch_dir: Path | str | None = None,
) -> DeliveryReport:
    """Validate and profile one delivery. ``previous`` is the report of the version in use (for the
    row count and drift checks); ``reference_keys`` gives, for each other table a referential rule
    names, a function returning the hashed key values of that table's version in use (an array, or
    arrays a chunk at a time: ``key_hash_chunks``).

    The key and referential checks spill their hashes, encrypted under a key of this call's own, to
    a private directory made in ``scratch_dir`` (the system's temporary directory if None) and
    removed before this returns or raises (``hash_spill``, ADR 0043): their memory follows the
    chunk, not the file. The delivery job passes a directory in the identifiable zone."""
    names = [c.name for c in expected]
    if len(set(names)) != len(names) or not names:
        raise DeliveryCheckError("The declared columns must be distinct and at least one")
    try:
        fmt, dialect, present_columns, batches = profiling.read_batches(path, chunk_bytes=chunk_bytes,
                                                                        dialect=dialect)
    except ProfilingError as exc:
        raise DeliveryCheckError(str(exc)) from None
    except (pa.ArrowInvalid, OSError):
        raise DeliveryCheckError("The delivery could not be read as CSV or Parquet") from None
    body: dict[str, Any] = {
        "format": REPORT_FORMAT,
        # The size is taken after the rows are read: a source being sealed as it is read
        # (sources.OnePassSource) knows it only at its end.
        "source": {"format": fmt, "dialect": dialect.to_dict() if dialect else None, "bytes": None},
        "columns": {},
        "uniqueness": None,
        "referential": [],
        "drift": None,
        "profile": {},
    }
    problems: list[dict[str, Any]] = []
    missing_columns = [n for n in names if n not in present_columns]
    extra_columns = [n for n in present_columns if n not in set(names)]
    body["extra_columns"] = extra_columns
    if missing_columns:
        hint = (f"; the delivery has columns not declared ({', '.join(extra_columns)}): were they renamed?"
                if extra_columns else "")
        problems.append(_problem("missing_columns", f"Declared columns are not in the delivery: "
                                 f"{', '.join(missing_columns)}{hint}", count=len(missing_columns)))
        body["source"]["bytes"] = as_source(path).size()
        return DeliveryReport(False, None, tuple(problems), body)
    unknown_named = sorted(rules.named_columns() - set(names))
    if unknown_named:
        raise DeliveryCheckError(f"The delivery rules name columns the dataset does not have: "
                                 f"{', '.join(unknown_named)}")

    scratch = Path(scratch_dir) if scratch_dir is not None else Path(tempfile.gettempdir())
    with ExitStack() as spills:
        # One bucket read at a time holds at most a chunk's bytes of blocks; the blocks waiting to be
        # written, at most a quarter of a chunk (and 4 MiB).
        read_limit, buffer = max(chunk_bytes, 1 << 16), min(1 << 22, max(1 << 16, chunk_bytes // 4))

        def spill(shared: hash_spill.HashSpill | None = None) -> hash_spill.HashSpill:
            return hash_spill.HashSpill(scratch, read_limit_bytes=read_limit, buffer_bytes=buffer, shared=shared)

        key_spill = spills.enter_context(spill()) if rules.key_columns else None
        ref_spills = {r["column"]: spills.enter_context(spill()) for r in rules.referential}
        counts = {c.name: _ColumnCounts(c.data_type if c.data_type in TYPES else "string") for c in expected}
        rows, key_missing = _check_rows(batches, names, counts, rules, today, key_spill, ref_spills,
                                        progress)
        body["source"]["bytes"] = as_source(path).size()

        for name in names:
            c = counts[name]
            body["columns"][name] = c.to_dict(rows)
            if name in rules.code_patterns:
                body["columns"][name]["invalid_codes"] = c.invalid_codes
            if c.numbers:
                mean = c.total / c.numbers
                sd = math.sqrt(max(c.squares / c.numbers - mean * mean, 0.0))
                body["profile"][name] = {"mean": mean, "sd": sd, "n": c.numbers}

        if rows == 0:
            problems.append(_problem("empty", "The delivery has no rows", count=0))
        problems += _threshold_problems(counts, rows, rules)
        if key_spill is not None:
            # Equal keys share a bucket: each bucket is sorted on its own and its repeats are the equal
            # neighbours (ADR 0043), the same count as sorting every row's hash at once.
            duplicates = hash_spill.duplicates(key_spill)
            key_spill.close()
            body["uniqueness"] = {"key_columns": list(rules.key_columns), "duplicate_rows": duplicates,
                                  "rows_missing_key": key_missing}
            if duplicates:
                problems.append(_problem("duplicate_keys", f"{duplicates} rows repeat the key "
                                         f"({', '.join(rules.key_columns)}) of an earlier row", count=duplicates))
            if key_missing:
                problems.append(_problem("missing_keys", f"{key_missing} rows lack part of the key "
                                         f"({', '.join(rules.key_columns)})", count=key_missing))
        for ref in rules.referential:
            found = ref_spills[ref["column"]]
            source = (reference_keys or {}).get(ref["table"])
            if source is None:
                # Nothing to check against yet (tables of one folder may be checked in any order): said,
                # not failed; the next delivery of this table is checked against it.
                distinct = hash_spill.distinct_count(found)
                body["referential"].append({**ref, "distinct_values": distinct, "orphans": None, "checked": False})
                continue
            with spill(shared=found) as theirs:
                keys = source()
                for part in ([keys] if isinstance(keys, np.ndarray) else keys):
                    theirs.add(part)
                distinct, orphans = hash_spill.distinct_and_missing(found, theirs)
            body["referential"].append({**ref, "distinct_values": distinct, "orphans": orphans, "checked": True})
            if orphans:
                problems.append(_problem("referential", f"{orphans} distinct values of {ref['column']} are not "
                                         f"in {ref['table']}.{ref['table_column']}", column=ref["column"],
                                         count=orphans))
    if previous is not None and previous.get("rows") is not None:
        body["drift"], drift_problems = _drift(body, rows, previous, rules)
        problems += drift_problems
    return DeliveryReport(not problems, rows, tuple(problems), body)


def _check_rows(batches: Iterator[pa.RecordBatch], names: Sequence[str], counts: Mapping[str, _ColumnCounts],
                rules: DeliveryRules, today: dt.date, key_spill: hash_spill.HashSpill | None,
                ref_spills: Mapping[str, hash_spill.HashSpill], progress: Callable[[int], None] | None,
                ) -> tuple[int, int]:
    """Read every chunk once: count each column, spill the key's and the linked columns' hashes.
    Returns the rows read and the rows missing part of the key."""
    rows = key_missing = 0
    try:
        for batch in _iterate(batches):
            rows += batch.num_rows
            integers: dict[str, pa.Array] = {}
            for name in names:
                _observe(counts[name], batch.column(batch.schema.get_field_index(name)), rules, name, today,
                         integers)
            if key_spill is not None:
                h, m = _key_hashes(batch, rules.key_columns, integers)
                key_spill.add(h)
                key_missing += m
            for column, spill in ref_spills.items():
                h, _ = _key_hashes(batch, [column])
                spill.add(_distinct(h))
            if progress is not None:
                progress(rows)
    except ProfilingError as exc:
        raise DeliveryCheckError(str(exc)) from None
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise DeliveryCheckError("The delivery could not be read as its declared columns") from None
    return rows, key_missing


_AHEAD = 1  # chunks parsed ahead of the one being checked


def _iterate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The batches, the next parsed by a thread while this one is checked: Arrow's CSV parser and
    its compute functions release the GIL, so on two cores the two overlap. Memory grows by the
    chunks parsed ahead, never with the file. A fault in the parser is raised here, in order."""
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=_AHEAD)
    stop = threading.Event()

    def hand(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def parse() -> None:
        try:
            for batch in batches:
                if not hand(("batch", batch)):
                    return
            hand(("end", None))
        except BaseException as exc:  # noqa: BLE001 - raised again in the checking thread
            hand(("error", exc))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    parser = threading.Thread(target=parse, name="delivery-parse", daemon=True)
    parser.start()
    try:
        while True:
            kind, item = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        parser.join()


def _threshold_problems(
    counts: Mapping[str, _ColumnCounts], rows: int, rules: DeliveryRules
) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    if not rows:
        return problems
    for name, c in counts.items():
        share = c.type_failures / rows
        if c.type_failures and share > rules.max_type_failure_fraction:
            problems.append(_problem("wrong_type", f"{c.type_failures} values of {name} are not {c.data_type}",
                                     column=name, count=c.type_failures, fraction=share,
                                     limit=rules.max_type_failure_fraction))
        limit = rules.max_missing_fraction.get(name)
        if limit is not None and c.missing / rows > limit:
            problems.append(_problem("too_many_missing", f"{c.missing} values of {name} are missing",
                                     column=name, count=c.missing, fraction=c.missing / rows, limit=limit))
        invalid = sum(c.nhs_invalid.values())
        if rules.max_invalid_nhs_fraction is not None and invalid / rows > rules.max_invalid_nhs_fraction:
            problems.append(_problem("invalid_nhs_numbers", f"{invalid} NHS numbers in {name} fail their format "
                                     "or check digit", column=name, count=invalid, fraction=invalid / rows,
                                     limit=rules.max_invalid_nhs_fraction))
        if rules.max_invalid_code_fraction is not None and c.invalid_codes / rows > rules.max_invalid_code_fraction:
            problems.append(_problem("invalid_codes", f"{c.invalid_codes} values of {name} do not match its code "
                                     "pattern", column=name, count=c.invalid_codes, fraction=c.invalid_codes / rows,
                                     limit=rules.max_invalid_code_fraction))
        if rules.max_future_date_fraction is not None and c.dates_future / rows > rules.max_future_date_fraction:
            problems.append(_problem("future_dates", f"{c.dates_future} dates in {name} are in the future",
                                     column=name, count=c.dates_future, fraction=c.dates_future / rows,
                                     limit=rules.max_future_date_fraction))
    return problems


def _drift(
    body: Mapping[str, Any], rows: int, previous: Mapping[str, Any], rules: DeliveryRules
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    problems = []
    before = int(previous["rows"])
    drift: dict[str, Any] = {"previous_rows": before, "rows": rows,
                             "row_change": round((rows - before) / before, 6) if before else None, "columns": {}}
    floor = rules.min_rows_fraction_of_previous
    if floor is not None and before and rows < floor * before:
        problems.append(_problem("too_few_rows", f"The delivery has {rows} rows, fewer than "
                                 f"{floor:.0%} of the {before} rows of the version in use",
                                 count=rows, fraction=rows / before, limit=floor))
    for name, now in body["columns"].items():
        was = previous.get("columns", {}).get(name)
        if was is None or not rows or not previous["rows"]:
            continue
        change = now["missing"] / rows - was["missing"] / before
        entry: dict[str, Any] = {"missing_fraction_change": round(change, 6)}
        limit = rules.max_missing_increase
        if limit is not None and change > limit:
            problems.append(_problem("missingness_drift", f"{name} is missing in {change:.1%} more rows than in "
                                     "the version in use", column=name, count=now["missing"], fraction=change,
                                     limit=limit))
        a, b = previous.get("profile", {}).get(name), body["profile"].get(name)
        if a and b:
            spread = a["sd"] or b["sd"]
            shift = abs(b["mean"] - a["mean"]) / spread if spread else 0.0
            entry["mean_shift_sd"] = round(shift, 4)
            if rules.max_mean_shift_sd is not None and shift > rules.max_mean_shift_sd:
                problems.append(_problem("distribution_drift", f"The mean of {name} moved {shift:.2f} standard "
                                         "deviations from the version in use", column=name,
                                         limit=rules.max_mean_shift_sd))
        drift["columns"][name] = entry
    return drift, problems


def key_hash_chunks(path: Path | str | SourceFile, column: str, *, chunk_bytes: int = 1 << 24) -> Iterator[np.ndarray]:
    """The hashed values of one column of a source, distinct within each chunk, a chunk at a time
    (for referential checks against it: ``check_delivery`` spills them as they come)."""
    _, _, names, batches = profiling.read_batches(path, chunk_bytes=chunk_bytes)
    if column not in names:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        raise DeliveryCheckError(f"The referenced table has no column {column}")
    for batch in batches:
        yield _distinct(_key_hashes(batch, [column])[0])


def key_hashes_of(path: Path | str | SourceFile, column: str, *, chunk_bytes: int = 1 << 24) -> np.ndarray:
    """The distinct hashed values of one column of a source, all in memory (a small table's)."""
    found = list(key_hash_chunks(path, column, chunk_bytes=chunk_bytes))
    return _distinct(np.concatenate(found)) if found else np.zeros(0, dtype=np.uint64)


def public_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report as shown to a custodian: everything but the numeric summaries kept for drift."""
    return {k: v for k, v in report.items() if k != "profile"}


__all__ = [
    "REPORT_FORMAT",
    "DeliveryCheckError",
    "DeliveryReport",
    "DeliveryRules",
    "ExpectedColumn",
    "check_delivery",
    "key_hash_chunks",
    "key_hashes_of",
    "public_report",
]
