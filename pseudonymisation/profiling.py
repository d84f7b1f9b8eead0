"""Read a source and propose its schema: each column's type, a role from its content, and an extract rule.

The custodian confirms or changes the proposal; nothing here writes anything. A source is a CSV file
(any delimiter, encoding and quoting, found by sniffing its first bytes) or a Parquet file, read in
bounded chunks with pyarrow so memory follows the chunk size, not the file size. Every CSV column is
read as text, so a messy value late in the file never breaks type inference.

NHS numbers that pass the modulus-11 check digit (at least ``MATCH_SHARE`` of the present values, of
which ``VALID_NHS_SHARE`` valid) → direct identifier, rule ``nhs_token`` (only one column, the one with
most valid numbers; any other → direct identifier, ``drop``). UK phone numbers (``MATCH_SHARE`` of
the present values other than missing words) → direct identifier, ``drop``, whatever the heading.

Then the heading, compared word by word (``heading_words``), whatever the values (deny by default,
ADR 0062): a person's name (Surname, Forename, First/Last/Given/Family/Middle/Full/Patient name, Name)
→ direct identifier, ``drop``; a date of birth (DOB, D.O.B, Date of birth, Birth date) →
quasi-identifier, ``dob_age_band``; an address, email or phone number (a phone word followed only by
words that say which number: "Tel no", not "Telephone consultation", ADR 0066) → direct identifier,
``drop``; a
hospital number, MRN or local patient id → direct identifier, ``id_token``; an NHS number heading
whose numbers fail the check → direct identifier, ``drop``.

Then ten-digit numbers (``943 476 5919`` or ``9434765919``, at least ``TEN_DIGIT_SHARE`` of the present
values) that are not the NHS number: mistyped NHS numbers or a local id → direct identifier,
``id_token``, under any heading that names no identifier ("ref"); never whole numbers kept (ADR 0068).

Otherwise what a column's content says (shares of its non-missing values, at least ``MATCH_SHARE``):

- dates (ISO or day/month/year, read as the extract reads them: ``generalise.read_date_text``) → a
  date of birth when every one is in the past and the name says so (``dob``, ``birth``) or the years
  span a lifetime → quasi-identifier, ``dob_age_band``; other dates → quasi-identifier,
  ``date_shift`` (``dob_year`` when there is no NHS number to shift by);
- UK postcodes → quasi-identifier, ``postcode_district``;
- person names (words of letters in any script, mostly distinct, or a name-like heading) → direct
  identifier, ``drop``;
- numbers with censoring markers (<5, >=120), pairs (120/80) or missing words (NR, not recorded,
  unknown), never with a value shaped like an NHS or phone number → attribute, ``measurement`` (ADR 0066);
- free text (long values of many words) → free text, ``drop``;
- anything else (numbers, codes) → attribute, ``keep``.

The rules are the extract pipeline's own (``pseudonymisation.schema.TransformKind``). The proposal
carries counts only, never a value from the source. Why these thresholds and rules: ADR 0013. The
preview leaves out the rows an extract leaves out for their NHS number, and counts them.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pseudonymisation import generalise, paced_read, tokens
from pseudonymisation.schema import (
    ColumnSpec,
    DatasetSchema,
    InvalidNhsPolicy,
    Role,
    SchemaError,
    Transform,
    TransformKind,
)
from pseudonymisation.sources import SourceFile, as_source, readable

MATCH_SHARE = 0.9  # a column is of a kind when this share of its present values is of that kind
VALID_NHS_SHARE = 0.8  # ... and an NHS number column when this share of those also pass the check digit
TEN_DIGIT_SHARE = 0.5  # ten-digit numbers (NHS-shaped) in at least this share of the values: an identifier
SNIFF_BYTES = 64 * 1024
DEFAULT_CHUNK_BYTES = 16 << 20
DISTINCT_SAMPLE = 50_000
NULL_VALUES = ["", "NA", "N/A", "n/a", "NULL", "null", "None", "NaN", "-"]
# The version of the rules below: a proposal is kept per source and day (``proposal_cache``, ADR 0069),
# so bump this whenever a threshold, a heading word, a pattern or a rule changes what ``propose`` says.
PROFILER_VERSION = 1

# The rules a custodian may choose; each is a transform the extract pipeline already applies.
RULES: tuple[TransformKind, ...] = (
    TransformKind.NHS_TOKEN,
    TransformKind.ID_TOKEN,
    TransformKind.DOB_AGE_BAND,
    TransformKind.DOB_YEAR,
    TransformKind.DATE_SHIFT,
    TransformKind.POSTCODE_DISTRICT,
    TransformKind.POSTCODE_SECTOR,
    TransformKind.MEASUREMENT,
    TransformKind.KEEP,
    TransformKind.DROP,
)
RULE_LABELS = {
    TransformKind.NHS_TOKEN: "token (per project)",
    TransformKind.ID_TOKEN: "token of a local id (per project)",
    TransformKind.DOB_AGE_BAND: "age band",
    TransformKind.DOB_YEAR: "year",
    TransformKind.DATE_SHIFT: "date shift (per patient)",
    TransformKind.POSTCODE_DISTRICT: "postcode district",
    TransformKind.POSTCODE_SECTOR: "postcode sector",
    TransformKind.MEASUREMENT: "measurement (<5 kept with its marker; NR empty)",
    TransformKind.KEEP: "kept",
    TransformKind.DROP: "dropped",
}

_DATE_START = r"^\d{1,4}[/.-]\d{1,2}[/.-]\d"  # what every date generalise.read_date_text reads starts with
_POSTCODE = r"^[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}$"
_NHS_SHAPE = r"^\d{3}[ -]?\d{3}[ -]?\d{4}$"
# A UK phone number once spaces, dots, dashes and brackets are gone: 0 or +44/0044, then 9 or 10 digits.
_PHONE = r"^(?:\+44|0044|0)[1-9]\d{8,9}$"
_PHONE_PUNCTUATION = r"[\s().-]"
_INTEGER = r"^[-+]?\d+$"
_DECIMAL = r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$"
# Up to three words of letters in any script (Brontë, Nguyen); messy exports pad them with spaces and
# write "Family, Given" or "Nguyen, Jr".
_NAME = r"^ *\p{L}[\p{L}'’.\-]*([,;]? +\p{L}[\p{L}'’.\-]*){0,2} *$"
_DOB_HEADING = re.compile(r"(dob|birth)", re.I)

# Headings that name an identifier, compared word by word (``heading_words``): such a column is proposed
# by its heading whatever its values look like (deny by default, ADR 0062).
_DATE_RULES = frozenset({TransformKind.DOB_AGE_BAND, TransformKind.DOB_YEAR, TransformKind.DATE_SHIFT})
_NAME_WORDS = frozenset({"surname", "surnames", "forename", "forenames", "firstname", "lastname", "givenname",
                         "givennames", "familyname", "fullname", "middlename", "middlenames", "patientname",
                         "maidenname"})
_NAME_QUALIFIERS = frozenset({"patient", "patients", "person", "first", "last", "given", "family", "middle", "full",
                              "maiden", "christian", "preferred", "known", "legal", "sur", "fore", "of", "the", "s"})
_DOB_PHRASES = (("dob",), ("dobs",), ("d", "o", "b"), ("date", "of", "birth"), ("date", "birth"), ("birth", "date"),
                ("birthdate",), ("dateofbirth",), ("birthday",))
_ADDRESS_PHRASES = (("address",), ("addresses",), ("addr",), ("street",))
_EMAIL_PHRASES = (("email",), ("emailaddress",), ("e", "mail"))
# A phone word names a phone number only when nothing but these follows it: "Telephone", "Tel no",
# "Mobile phone", "Phone (home)", "Next of kin phone 2"; not "Telephone consultation", "Phone triage",
# "Mobile unit", where it qualifies something else (ADR 0066; values that look like phone numbers are
# dropped whatever the heading).
_PHONE_WORDS = frozenset({"phone", "phones", "telephone", "telephones", "tel", "tele", "mobile", "mobiles", "cell",
                          "fax", "phonenumber", "phoneno", "telno", "telephonenumber", "telephoneno", "mobileno",
                          "mobilenumber", "faxno", "faxnumber"})
_PHONE_AFTER = frozenset({"number", "numbers", "no", "nos", "num", "home", "work", "day", "daytime", "evening",
                          "night", "main", "primary", "secondary", "alt", "alternative", "other", "preferred",
                          "personal", "private", "landline", "contact", "patient", "uk", "ext", "extension"}
                         | _PHONE_WORDS)
_CONTACT_PHRASES = (("contact", "number"), ("contact", "numbers"), ("contact", "no"), ("contact", "tel"))
_ID_ENDINGS = ("number", "no", "num", "id", "identifier")
_LOCAL_ID_PHRASES = (("mrn",), ("case", "note", "number"), ("casenote", "number")) + tuple(
    (kind, ending) for kind in ("hospital", "patient", "local", "pas", "person") for ending in _ID_ENDINGS)
_NHS_PHRASES = (("nhsno",), ("nhsnumber",)) + tuple(("nhs", ending) for ending in _ID_ENDINGS)


class ProfilingError(ValueError):
    """A source that cannot be read; the message names no value."""


@dataclass(frozen=True)
class CsvDialect:
    delimiter: str = ","
    encoding: str = "utf-8"
    quote_char: str = '"'

    def to_dict(self) -> dict[str, str]:
        return {"delimiter": self.delimiter, "encoding": self.encoding, "quote_char": self.quote_char}


@dataclass
class _Counts:
    """Running counts for one column (numbers only)."""

    rows: int = 0
    present: int = 0
    nhs_shaped: int = 0
    nhs_valid: int = 0
    dates_iso: int = 0
    dates_dmy: int = 0
    dates_unparsed: int = 0
    dates_future: int = 0
    min_year: int | None = None
    max_year: int | None = None
    postcodes: int = 0
    integers: int = 0
    decimals: int = 0
    names: int = 0
    phones: int = 0
    measures: int = 0  # numbers as a measurement reads them, with or without a marker
    marked: int = 0  # ... of which with a censoring marker
    pairs: int = 0
    missing_words: int = 0  # "NR", "not recorded", "unknown": present, but saying nothing is there
    long_text: int = 0
    text_chars: int = 0
    sample: list[pa.Array] = field(default_factory=list)  # distinct values of the first chunks, to count
    sampled: int = 0
    native_type: str | None = None  # a Parquet column's own type


@dataclass(frozen=True)
class ColumnProposal:
    name: str
    data_type: str
    role: Role
    rule: TransformKind
    reason: str
    counts: Mapping[str, int]

    def __post_init__(self) -> None:
        # Read-only, like the rest: one proposal may be handed to many requests (ADR 0069).
        object.__setattr__(self, "counts", MappingProxyType(dict(self.counts)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data_type": self.data_type,
            "role": str(self.role),
            "rule": str(self.rule),
            "reason": self.reason,
            "counts": dict(self.counts),
        }


@dataclass(frozen=True)
class SourceProposal:
    format: str
    row_count: int
    columns: tuple[ColumnProposal, ...]
    nhs_number_column: str | None
    dialect: CsvDialect | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "row_count": self.row_count,
            "nhs_number_column": self.nhs_number_column,
            "dialect": self.dialect.to_dict() if self.dialect else None,
            "columns": [c.to_dict() for c in self.columns],
            "warnings": list(self.warnings),
        }

    def to_schema(self, name: str, *, reference_date: dt.date) -> DatasetSchema:
        """The proposal as an extract schema (what the custodian starts from)."""
        return build_schema(
            name,
            {c.name: (c.role, c.rule) for c in self.columns},
            order=[c.name for c in self.columns],
            nhs_number_column=self.nhs_number_column,
            reference_date=reference_date,
        )


def build_schema(
    name: str,
    choices: dict[str, tuple[Role, TransformKind]],
    *,
    order: list[str],
    nhs_number_column: str | None,
    reference_date: dt.date,
) -> DatasetSchema:
    """An extract schema from a role and a rule per column; refuses (SchemaError) what the pipeline would.

    An age band is counted at ``reference_date``; a rule outside ``RULES`` is refused.
    """
    specs = []
    for column in order:
        role, rule = choices[column]
        if rule not in RULES:
            raise SchemaError(f"column {column!r}: {rule} is not a rule this page offers")
        params: dict[str, Any] = {}
        if rule is TransformKind.DOB_AGE_BAND:
            params = {"reference_date": reference_date.isoformat()}
        specs.append(ColumnSpec(name=column, role=role, transform=Transform(rule, params)))
    return DatasetSchema(name=name, columns=tuple(specs), nhs_number_column=nhs_number_column)


# --------------------------------------------------------------------------------------------------
# Reading


def source_format(path: Path | SourceFile) -> str:
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    if suffix in {".csv", ".txt", ".tsv"}:
        return "csv"
    raise ProfilingError("A source must be a .parquet or .csv file")


def sniff_csv(path: Path | SourceFile) -> CsvDialect:
    """The delimiter, encoding and quote character, from the first bytes of the file."""
    with as_source(path).open() as handle:
        head = handle.read(SNIFF_BYTES)
    if not head:
        raise ProfilingError("The source file is empty")
    encoding = "utf-8"
    if head.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    cut = head.rfind(b"\n")
    whole = head if cut < 0 else head[:cut]  # a multi-byte character may be cut at the sample's end
    try:
        whole.decode("utf-8-sig")
    except UnicodeDecodeError:
        encoding = "cp1252"  # the usual single-byte Windows export
        try:
            whole.decode(encoding)
        except UnicodeDecodeError:
            encoding = "latin-1"  # decodes any byte
    text = whole.decode(encoding)
    try:
        sniffed = csv.Sniffer().sniff(text, delimiters=",;\t|")
        delimiter, quote = sniffed.delimiter, sniffed.quotechar or '"'
    except csv.Error:
        first = text.split("\n", 1)[0]
        delimiter = max(",;\t|", key=first.count)
        quote = '"'
    return CsvDialect(delimiter=delimiter, encoding=encoding, quote_char=quote)


def _csv_reader(handle: Any, dialect: CsvDialect, chunk_bytes: int, names: list[str] | None) -> Any:
    """A streaming reader over an open Python file: given a path, Arrow read the whole file ahead
    (its memory grew with the file: 130 MB held for a 124 MB file, 17 MB through a Python file)."""
    encoding = "utf8" if dialect.encoding == "utf-8" else dialect.encoding
    return pacsv.open_csv(
        handle,
        read_options=pacsv.ReadOptions(block_size=chunk_bytes, encoding=encoding, use_threads=False),
        parse_options=pacsv.ParseOptions(
            delimiter=dialect.delimiter, quote_char=dialect.quote_char, newlines_in_values=True
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names or []},
            null_values=NULL_VALUES,
            strings_can_be_null=True,
        ),
    )


def _batches(
    source: Path | SourceFile, fmt: str, dialect: CsvDialect | None, chunk_bytes: int
) -> Iterator[pa.RecordBatch]:
    path = as_source(source)
    if fmt == "parquet":
        with readable(path) as raw, pq.ParquetFile(raw) as handle:
            for group in range(handle.num_row_groups):
                yield from handle.read_row_group(group).to_batches()
        return
    assert dialect is not None
    try:
        names = _column_names(path, fmt, dialect)
        with path.open() as handle:
            # Arrow reads ahead on its own thread; held to a few chunks of the batches taken.
            yield from paced_read.paced_batches(
                handle, chunk_bytes, lambda paced: _csv_reader(paced, dialect, chunk_bytes, names)
            )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        # Arrow's message may quote a row; say only what kind of fault it is.
        kind = "an encoding" if isinstance(exc, UnicodeDecodeError) else "a parsing"
        raise ProfilingError(
            f"The CSV file could not be read ({kind} error); check its delimiter and quoting"
        ) from None


def read_batches(
    path: Path | str | SourceFile, *, chunk_bytes: int = 1 << 24, dialect: CsvDialect | None = None
) -> tuple[str, CsvDialect | None, list[str], Iterator[pa.RecordBatch]]:
    """A source's format, CSV dialect (sniffed unless given), column names and its batches: CSV
    columns as text (nothing guessed), Parquet columns in their own types. Memory follows
    ``chunk_bytes`` (CSV) or one row group (Parquet), never the file."""
    path = as_source(path)
    if not path.is_file():
        raise ProfilingError("The source file does not exist")
    fmt = source_format(path)
    if fmt == "csv" and dialect is None:
        dialect = sniff_csv(path)
    names = _column_names(path, fmt, dialect)
    return fmt, dialect, names, _batches(path, fmt, dialect, chunk_bytes)


def source_columns(path: Path | str | SourceFile) -> list[str]:
    """The names of a source's columns, from its header or Parquet schema alone."""
    path = as_source(path)
    if not path.is_file():
        raise ProfilingError("The source file does not exist")
    fmt = source_format(path)
    return _column_names(path, fmt, sniff_csv(path) if fmt == "csv" else None)


def _column_names(path: SourceFile, fmt: str, dialect: CsvDialect | None) -> list[str]:
    """The source's columns, so a header with no rows still proposes every column."""
    if fmt == "parquet":
        with readable(path) as raw, pq.ParquetFile(raw) as handle:
            return list(handle.schema_arrow.names)
    assert dialect is not None
    try:
        with path.open() as handle:
            paced = paced_read.PacedFile(handle, 1 << 20)
            reader = None
            try:
                with paced.opening():
                    reader = _csv_reader(paced, dialect, 1 << 20, None)
                return list(reader.schema.names)
            finally:
                paced.finish()  # before the reader goes: Arrow's end waits for its reads under way
                del reader
    except (pa.ArrowInvalid, UnicodeDecodeError):
        raise ProfilingError("The CSV file could not be read; check its delimiter and quoting") from None


# --------------------------------------------------------------------------------------------------
# Counting


def _count(values: pa.Array, mask: pa.Array | None) -> int:
    if mask is None:
        return 0
    return int(pc.sum(pc.cast(pc.fill_null(mask, False), pa.int64())).as_py() or 0)


def _observe(counts: _Counts, column: pa.Array, today: dt.date) -> None:
    counts.rows += len(column)
    if counts.native_type is None:
        counts.native_type = str(column.type)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_date(column.type) or pa.types.is_timestamp(column.type):
        present = column.drop_null()
        counts.present += len(present)
        counts.dates_iso += len(present)
        _observe_years(counts, pc.cast(present, pa.date32()), today)
        return
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        present = column.drop_null()
        counts.present += len(present)
        if pa.types.is_integer(column.type):
            counts.integers += len(present)
            ten = pc.and_(pc.greater_equal(present, 100_000_000), pc.less_equal(present, 9_999_999_999))
            shaped = present.filter(ten)
            counts.nhs_shaped += len(shaped)
            if len(shaped):
                counts.nhs_valid += int((tokens.parse_numbers(shaped).status == tokens.Status.VALID).sum())
        elif pa.types.is_floating(column.type) or pa.types.is_decimal(column.type):
            counts.decimals += len(present)
        return
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_large_string(column.type):
        column = pc.cast(column, pa.string())
    # Each test runs once per distinct value, weighted by how often the value occurs: codes, postcodes
    # and dates repeat, so one hash pass replaces a dozen regex passes over every row. Counts are sums
    # of weights, so two raw values that trim to the same text are simply counted twice.
    distinct = pc.value_counts(column)
    values = pc.utf8_trim_whitespace(distinct.field("values"))
    keep = pc.fill_null(pc.not_equal(values, ""), False)  # missing: null, empty or blank
    values, weight = values.filter(keep), distinct.field("counts").filter(keep)
    present = int(pc.sum(weight).as_py() or 0)
    counts.present += present
    if not present:
        return
    if counts.sampled < DISTINCT_SAMPLE:
        counts.sample.append(values)
        counts.sampled += present

    def weighted(mask: pa.Array) -> int:
        return int(pc.sum(pc.if_else(pc.fill_null(mask, False), weight, pa.scalar(0, pa.int64()))).as_py() or 0)

    nhs_shape = pc.match_substring_regex(values, _NHS_SHAPE)
    counts.nhs_shaped += weighted(nhs_shape)
    shaped = values.filter(nhs_shape)
    if len(shaped):
        valid = tokens.parse_numbers(shaped).status == tokens.Status.VALID
        counts.nhs_valid += int(weight.filter(nhs_shape).to_numpy()[valid].sum())
    # Dates as the extract reads them (generalise.read_date_text), on the values that start like one.
    dated = pc.match_substring_regex(values, _DATE_START)
    if pc.any(dated).as_py():
        parsed, iso, dmy = generalise.read_date_text(values.filter(dated))
        times = weight.filter(dated)

        def among_dates(mask: pa.Array) -> int:
            return int(pc.sum(times.filter(mask)).as_py() or 0)

        counts.dates_iso += among_dates(iso)
        counts.dates_dmy += among_dates(dmy)
        counts.dates_unparsed += among_dates(pc.and_(pc.or_(iso, dmy), parsed.is_null()))
        ok = parsed.is_valid()
        _observe_years(counts, parsed.filter(ok), today, times.filter(ok))
    counts.postcodes += weighted(pc.match_substring_regex(pc.utf8_upper(values), _POSTCODE))
    counts.integers += weighted(pc.match_substring_regex(values, _INTEGER))
    plain_numbers = weighted(pc.match_substring_regex(values, _DECIMAL))
    counts.decimals += plain_numbers
    counts.names += weighted(pc.match_substring_regex(values, _NAME))
    _observe_measures_and_phones(counts, values, weight, plain_numbers)
    lengths = pc.utf8_length(values)
    counts.text_chars += int(pc.sum(pc.multiply(pc.cast(lengths, pa.int64()), weight)).as_py() or 0)
    words = pc.list_value_length(pc.utf8_split_whitespace(values))
    counts.long_text += weighted(pc.and_(pc.greater_equal(lengths, 40), pc.greater_equal(words, 6)))


def _observe_measures_and_phones(counts: _Counts, values: pa.Array, weight: pa.Array, plain_numbers: int) -> None:
    """Phone numbers, numbers with a censoring marker, pairs and missing words. Each test runs only on
    the values that can pass it (a cheap anchored test first): an NHS number column has as many
    distinct values as rows, and these would otherwise cost a third of the profile."""
    def among(mask: pa.Array, test: Any) -> int:
        some = values.filter(mask)
        if not len(some):
            return 0
        return int(pc.sum(weight.filter(mask).filter(pc.fill_null(test(some), False))).as_py() or 0)

    counts.phones += among(pc.match_substring_regex(values, r"^[+(]|^0"), lambda v: pc.match_substring_regex(
        pc.replace_substring_regex(v, _PHONE_PUNCTUATION, ""), _PHONE))
    marked = among(pc.starts_with(values, "<"), lambda v: pc.match_substring_regex(v, generalise.MARKED_NUMBER))
    marked += among(pc.starts_with(values, ">"), lambda v: pc.match_substring_regex(v, generalise.MARKED_NUMBER))
    marked += among(pc.match_substring_regex(values, "^[≤≥]"),
                    lambda v: pc.match_substring_regex(v, generalise.MARKED_NUMBER))
    counts.marked += marked
    counts.measures += marked + plain_numbers  # _DECIMAL reads the numbers MARKED_NUMBER reads
    counts.pairs += among(pc.match_substring_regex(values, r"^\d+(\.\d+)? */"),
                          lambda v: pc.match_substring_regex(v, generalise.NUMBER_PAIR))
    short = pc.and_(pc.less_equal(pc.utf8_length(values), max(len(w) for w in generalise.MISSING_WORDS)),
                    pc.invert(pc.match_substring_regex(values, r"^\d")))
    counts.missing_words += among(short, lambda v: pc.is_in(pc.utf8_lower(v), pa.array(generalise.MISSING_WORDS)))


def _observe_years(counts: _Counts, dates: pa.Array, today: dt.date, weight: pa.Array | None = None) -> None:
    """Years seen and dates in the future; ``weight`` says how many rows each date stands for."""
    if not len(dates):
        return
    future = pc.greater(dates, pa.scalar(today, pa.date32()))
    if weight is None:
        counts.dates_future += _count(dates, future)
    else:
        counts.dates_future += int(pc.sum(weight.filter(future)).as_py() or 0)
    years = pc.min_max(pc.year(dates)).as_py()
    lo, hi = years["min"], years["max"]
    counts.min_year = lo if counts.min_year is None else min(counts.min_year, lo)
    counts.max_year = hi if counts.max_year is None else max(counts.max_year, hi)


def _distinct_share(counts: _Counts) -> float:
    """Distinct values per present value, over the first chunks (up to about ``DISTINCT_SAMPLE`` rows)."""
    if not counts.sampled:
        return 0.0
    sample = pa.concat_arrays(counts.sample) if len(counts.sample) > 1 else counts.sample[0]
    return int(pc.count_distinct(sample).as_py()) / counts.sampled


# --------------------------------------------------------------------------------------------------
# Deciding


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def heading_words(name: str) -> tuple[str, ...]:
    """A heading's words, in lower case: split at anything but a letter or digit (space, underscore,
    dot, hyphen, slash, brackets), where camelCase changes case, and between letters and digits."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])", " ",
                    name)
    return tuple(w for w in re.split(r"[\W_]+", spaced.casefold()) if w)


def _has(words: tuple[str, ...], phrases: tuple[tuple[str, ...], ...]) -> bool:
    """Whether the words hold one of the phrases, its words next to each other."""
    return any(words[i:i + len(p)] == p for p in phrases for i in range(len(words) - len(p) + 1))


def _names_a_person(words: tuple[str, ...]) -> bool:
    """Surname, Forename, First name, Family_name, PatientName, Name, "Name of patient": a "name"
    qualified only by words that make it a person's (not "Drug name", "Practice name")."""
    if any(w in _NAME_WORDS for w in words):
        return True
    named = [w for w in words if w in ("name", "names")]
    return bool(named) and all(w in _NAME_QUALIFIERS or w.isdigit() for w in words if w not in ("name", "names"))


def _names_a_phone(words: tuple[str, ...]) -> bool:
    """A heading naming a phone number: a phone word followed only by what says which number, or a
    contact number. "Telephone consultation" names a consultation."""
    if _has(words, _CONTACT_PHRASES):
        return True
    first = next((i for i, w in enumerate(words) if w in _PHONE_WORDS), None)
    return first is not None and all(w in _PHONE_AFTER or w.isdigit() for w in words[first + 1:])


def _by_heading(name: str) -> tuple[str, Role, TransformKind, str] | None:
    """The proposal a heading that names an identifier forces, whatever the values; None for any other."""
    words = heading_words(name)
    if _names_a_person(words):
        return "string", Role.DIRECT_IDENTIFIER, TransformKind.DROP, "person names (by the heading)"
    if _has(words, _DOB_PHRASES):
        return "date", Role.QUASI_IDENTIFIER, TransformKind.DOB_AGE_BAND, "dates of birth (by the heading)"
    if _has(words, _EMAIL_PHRASES):
        return "string", Role.DIRECT_IDENTIFIER, TransformKind.DROP, "email addresses (by the heading)"
    if _has(words, _ADDRESS_PHRASES):
        return "string", Role.DIRECT_IDENTIFIER, TransformKind.DROP, "addresses (by the heading)"
    if _names_a_phone(words):
        return "string", Role.DIRECT_IDENTIFIER, TransformKind.DROP, "phone numbers (by the heading)"
    if _has(words, _LOCAL_ID_PHRASES):
        return "string", Role.DIRECT_IDENTIFIER, TransformKind.ID_TOKEN, "local patient ids (by the heading)"
    if _has(words, _NHS_PHRASES):
        return ("string", Role.DIRECT_IDENTIFIER, TransformKind.DROP,
                "NHS numbers (by the heading; too few pass the check digit to token)")
    return None


def _propose(name: str, c: _Counts, distinct: float) -> tuple[str, Role, TransformKind, str]:
    """(data type, role, rule, reason) for one column, from its counts and its heading.

    Valid NHS numbers come first (a token); then a heading that names an identifier decides, whatever
    share of the values look like one (a postcode column headed "Address" still gets its district);
    then the values.
    """
    if _share(c.nhs_shaped, c.present) >= MATCH_SHARE and _share(c.nhs_valid, c.nhs_shaped) >= VALID_NHS_SHARE:
        return "string", Role.DIRECT_IDENTIFIER, TransformKind.NHS_TOKEN, "NHS numbers that pass the check digit"
    if c.phones and _share(c.phones, c.present - c.missing_words) >= MATCH_SHARE:
        # Before the heading: "Telephone consultation", "Contact" or "Notes 2" holding phone numbers.
        return "string", Role.DIRECT_IDENTIFIER, TransformKind.DROP, "phone numbers (by the values)"
    heading = _by_heading(name)
    if not c.present:  # nothing to keep; the heading still says what the column may become
        role = Role.ATTRIBUTE if heading is None else heading[1]
        return "string", role, TransformKind.DROP, "every value is missing"
    dates = c.dates_iso + c.dates_dmy
    if heading is None and _share(c.nhs_shaped, c.present) >= TEN_DIGIT_SHARE:
        # Mistyped NHS numbers or a local id: an identifier, never "whole numbers, kept" (ADR 0068).
        return ("string", Role.DIRECT_IDENTIFIER, TransformKind.ID_TOKEN,
                "ten-digit numbers: identifiers (too few pass the NHS number check digit to be the NHS number)")
    if heading is not None:
        if heading[3].startswith("addresses") and _share(c.postcodes, c.present) >= MATCH_SHARE:
            return "string", Role.QUASI_IDENTIFIER, TransformKind.POSTCODE_DISTRICT, "UK postcodes"
        if heading[0] == "date" and _share(dates, c.present) < MATCH_SHARE:
            # Declared a date, every delivery's "unknown" would be a wrong type; the band is the same.
            return ("string", *heading[1:])
        return heading
    if _share(dates, c.present) >= MATCH_SHARE:
        lifetime = c.min_year is not None and c.max_year is not None and c.max_year - c.min_year >= 30
        if not c.dates_future and (_DOB_HEADING.search(name) or (lifetime and not _looks_event(name))):
            return "date", Role.QUASI_IDENTIFIER, TransformKind.DOB_AGE_BAND, "dates of birth"
        return "date", Role.QUASI_IDENTIFIER, TransformKind.DATE_SHIFT, "dates"
    if _share(c.postcodes, c.present) >= MATCH_SHARE:
        return "string", Role.QUASI_IDENTIFIER, TransformKind.POSTCODE_DISTRICT, "UK postcodes"
    measurement = _measurement(c)
    if measurement is not None:
        return "string", Role.ATTRIBUTE, TransformKind.MEASUREMENT, measurement
    if _share(c.integers, c.present) >= MATCH_SHARE:
        return "integer", Role.ATTRIBUTE, TransformKind.KEEP, "whole numbers"
    if _share(c.decimals, c.present) >= MATCH_SHARE:
        return "decimal", Role.ATTRIBUTE, TransformKind.KEEP, "numbers"
    if _share(c.long_text, c.present) >= 0.5 or (c.text_chars / c.present) >= 60:
        return "string", Role.FREE_TEXT, TransformKind.DROP, "free text"
    named = bool({"name", "names", "given", "family"} & set(heading_words(name)))  # "Drug name": values decide
    if _share(c.names, c.present) >= MATCH_SHARE and (named or distinct >= 0.5):
        return "string", Role.DIRECT_IDENTIFIER, TransformKind.DROP, "person names"
    return "string", Role.ATTRIBUTE, TransformKind.KEEP, "codes or categories"


def _measurement(c: _Counts) -> str | None:
    """The reason a column is proposed as a measurement, or None: mostly numbers, with censoring markers
    (<5, >120), pairs (120/80) or missing words (NR, not recorded, unknown), and together with those at
    least ``MATCH_SHARE`` of its values. Never a column with a value shaped like an NHS or phone number:
    an identifier is not a measurement, whatever else is in the column."""
    numbers = c.measures + c.pairs
    if not (c.marked + c.pairs + c.missing_words) or c.nhs_shaped or c.phones:
        return None
    # Numbers with only an odd missing word stay numbers, as before (the word is read as missing there):
    # only a marker, a pair, or more missing words than a number column tolerates make a measurement.
    if not (c.marked + c.pairs) and _share(c.measures, c.present) >= MATCH_SHARE:
        return None
    if _share(numbers, c.present) < 0.5 or _share(numbers + c.missing_words, c.present) < MATCH_SHARE:
        return None
    what = "pairs of numbers (120/80)" if c.pairs > c.measures else "numbers"
    kept = []
    if c.marked:
        kept.append("censored values kept with their marker (<5, >=120)")
    if c.pairs and c.pairs <= c.measures:
        kept.append("pairs kept as 120/80")
    kept.append("NR, not recorded, unknown and any other text become missing")
    return f"{what} with markers or missing words: kept as text, " + "; ".join(kept)


def _looks_event(name: str) -> bool:
    return bool(re.search(r"(admi|disch|event|visit|death|date_of_(?!birth)|_date$|_at$|_on$)", name, re.I))


def _public_counts(c: _Counts) -> dict[str, int]:
    out = {
        "rows": c.rows,
        "missing": c.rows - c.present,
        "nhs_number_valid": c.nhs_valid,
        "nhs_number_bad_check_digit": c.nhs_shaped - c.nhs_valid,
        "dates_iso": c.dates_iso,
        "dates_day_month_year": c.dates_dmy,
        "dates_unparsed": c.dates_unparsed,
        "dates_in_future": c.dates_future,
        "postcodes": c.postcodes,
        "phone_numbers": c.phones,
        "numbers_with_marker": c.marked,
        "number_pairs": c.pairs,
        "missing_words": c.missing_words,
    }
    return {k: v for k, v in out.items() if v or k in ("rows", "missing")}


def propose(
    path: Path | str | SourceFile, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES, today: dt.date | None = None
) -> SourceProposal:
    """Read the whole source once, in chunks, and propose a schema (counts only, never values)."""
    path = as_source(path)
    if not path.is_file():
        raise ProfilingError("The source file does not exist")
    fmt = source_format(path)
    dialect = sniff_csv(path) if fmt == "csv" else None
    today = today or dt.date.today()
    counts: dict[str, _Counts] = {name: _Counts() for name in _column_names(path, fmt, dialect)}
    rows = 0
    for batch in _batches(path, fmt, dialect, chunk_bytes):
        rows += batch.num_rows
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            _observe(counts.setdefault(name, _Counts()), column, today)
    proposals = []
    for name, c in counts.items():
        data_type, role, rule, reason = _propose(name, c, _distinct_share(c))
        c.sample.clear()
        proposals.append(ColumnProposal(name, data_type, role, rule, reason, _public_counts(c)))
    nhs = _pick_nhs_column(proposals, counts)
    warnings = _warnings(proposals, counts, dialect, nhs)
    if nhs is None:
        # A date shift is per patient: with no NHS number to key it, offer the year instead.
        proposals = [
            _with(p, rule=TransformKind.DOB_YEAR) if p.rule is TransformKind.DATE_SHIFT else p for p in proposals
        ]
    return SourceProposal(fmt, rows, tuple(proposals), nhs, dialect, tuple(warnings))


def _with(p: ColumnProposal, **changes: Any) -> ColumnProposal:
    values = p.to_dict() | {"role": p.role, "rule": p.rule} | changes
    return ColumnProposal(values["name"], values["data_type"], values["role"], values["rule"], values["reason"],
                          values["counts"])


def _pick_nhs_column(proposals: list[ColumnProposal], counts: dict[str, _Counts]) -> str | None:
    """One column is the NHS number (the most valid numbers); any other such column is dropped."""
    candidates = [p for p in proposals if p.rule is TransformKind.NHS_TOKEN]
    if not candidates:
        return None
    best = max(candidates, key=lambda p: counts[p.name].nhs_valid)
    for i, p in enumerate(proposals):
        if p.rule is TransformKind.NHS_TOKEN and p is not best:
            proposals[i] = _with(p, rule=TransformKind.DROP, reason="NHS numbers (a second column)")
    return best.name


def _warnings(
    proposals: list[ColumnProposal], counts: dict[str, _Counts], dialect: CsvDialect | None, nhs: str | None
) -> list[str]:
    out = []
    if dialect is not None and (dialect.delimiter != "," or dialect.encoding not in ("utf-8", "utf-8-sig")):
        out.append(
            "The extract pipeline reads comma-separated UTF-8: convert this file "
            f"(delimiter {dialect.delimiter!r}, encoding {dialect.encoding}) before building an extract"
        )
    for p in proposals:
        c = counts[p.name]
        dated = p.data_type == "date" or p.rule in _DATE_RULES
        if dated and c.dates_dmy:
            out.append(f"Column {p.name}: {c.dates_dmy} dates are written day/month/year; the extract reads "
                       "them day first (03/04/2020 is 3 April 2020)")
        unread = c.present - (c.dates_iso + c.dates_dmy - c.dates_unparsed)
        if dated and unread:
            out.append(f"Column {p.name}: {unread} values could not be read as dates (neither YYYY-MM-DD nor "
                       "day/month/year); the extract leaves them empty")
        if p.rule is TransformKind.MEASUREMENT:
            other = c.present - c.measures - c.pairs - c.missing_words
            if other:
                out.append(f"Column {p.name}: {other} values are neither numbers, markers nor missing words; "
                           "the extract leaves them empty")
        if p.name == nhs and c.present - c.nhs_valid:
            out.append(f"Column {p.name}: {c.rows - c.nhs_valid} rows have no valid NHS number")
    return out


# --------------------------------------------------------------------------------------------------
# Preview


HIDDEN = "(kept; not shown)"


LEFT_OUT_REASONS = {
    "nhs_number_missing": "NHS number missing",
    "nhs_number_invalid_format": "NHS number invalid (not ten digits)",
    "nhs_number_bad_check_digit": "NHS number invalid (check digit)",
}


def preview(path: Path | str | SourceFile, schema: DatasetSchema, *, rows: int = 5) -> dict[str, Any]:
    """The first few rows the extract would hold, as it would make them, under throwaway keys.

    Only what is safe on a custodian's screen: tokens (of keys made for this preview and forgotten),
    bands, years, shifted dates, districts and kept attributes. A kept quasi-identifier, and the NHS
    number column under any rule but its token, is shown as ``HIDDEN``; a dropped column is not shown
    at all. A row the extract leaves out for its NHS number (the ``reject`` policy: missing, not ten
    digits, a wrong check digit) is left out here too, and counted by reason in ``left_out`` among the
    ``read`` rows looked at (ADR 0066); under ``separate_namespace`` it is shown with its ``INVALID-``
    token, as the extract keeps it.
    """
    path = as_source(path)
    fmt = source_format(path)
    dialect = sniff_csv(path) if fmt == "csv" else None
    first = next(_batches(path, fmt, dialect, 1 << 20), None)
    if first is None:
        return {"columns": [], "rows": [], "read": 0, "left_out": {}}
    table = pa.Table.from_batches([first])
    linkage_key, project_key = tokens.generate_key(), tokens.generate_key()
    pseudonyms = None
    left_out: dict[str, int] = {}
    if schema.nhs_number_column is not None:
        parsed = tokens.parse_numbers(_text(table.column(schema.nhs_number_column)))
        kept = np.ones(len(parsed), dtype=bool)
        if schema.invalid_nhs_policy is InvalidNhsPolicy.REJECT:
            kept = parsed.status == tokens.Status.VALID
        # The rows read: up to the last of the first ``rows`` the extract keeps (or the whole chunk).
        shown_rows = np.flatnonzero(kept)[:rows]
        read = int(shown_rows[-1]) + 1 if len(shown_rows) == rows else len(parsed)
        left_out = tokens.reason_counts(parsed.status[:read][~kept[:read]])
        table = table.take(pa.array(shown_rows))
        pseudonyms = tokens.internal_pseudonyms(parsed.filter(np.isin(np.arange(len(parsed)), shown_rows)),
                                                linkage_key)
    else:
        table = table.slice(0, rows)
        read = table.num_rows
    names: list[str] = []
    columns: list[list[Any]] = []
    for spec in schema.columns:
        kind = spec.effective_transform.kind
        if kind is TransformKind.DROP or spec.name not in table.column_names:
            continue
        values = table.column(spec.name).combine_chunks()
        if spec.name == schema.nhs_number_column and kind is not TransformKind.NHS_TOKEN:
            shown = [HIDDEN] * len(values)  # a number itself, valid or not, never reaches the screen
        else:
            shown = _apply(spec, kind, values, pseudonyms, linkage_key, project_key)
        names.append(spec.effective_output_name)
        columns.append(shown)
    return {"columns": names, "rows": [list(r) for r in zip(*columns, strict=True)], "read": read,
            "left_out": {LEFT_OUT_REASONS[k]: v for k, v in left_out.items()}}


def _text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_string(values.type) or pa.types.is_integer(values.type):
        return values
    return pc.cast(values, pa.string())


def _apply(
    spec: ColumnSpec,
    kind: TransformKind,
    values: pa.Array,
    pseudonyms: tokens.Pseudonyms | None,
    linkage_key: bytes,
    project_key: bytes,
) -> list[Any]:
    params = spec.effective_transform.params
    match kind:
        case TransformKind.NHS_TOKEN:
            out = tokens.tokenise(_text(values), linkage_key, project_key)
        case TransformKind.DOB_AGE_BAND:
            reference = dt.date.fromisoformat(params["reference_date"])
            out = generalise.dob_to_age_band(values, reference)
        case TransformKind.DOB_YEAR:
            out = generalise.dob_to_year(values)
        case TransformKind.DATE_SHIFT if pseudonyms is not None:
            out = generalise.shift_dates(values, pseudonyms, project_key, int(params.get("max_days", 180)))
        case TransformKind.ID_TOKEN:
            namespace = str(params.get("namespace", spec.name))
            out = generalise.local_id_tokens(_text(values), tokens.derive_subkey(project_key, f"local-id:{namespace}"))
        case TransformKind.POSTCODE_DISTRICT:
            out = generalise.postcode_district(_text(values))
        case TransformKind.POSTCODE_SECTOR:
            out = generalise.postcode_sector(_text(values))
        case TransformKind.MEASUREMENT:
            out = generalise.measurements(values)
        case TransformKind.KEEP if spec.role is Role.ATTRIBUTE:
            out = values
        case _:
            return [HIDDEN] * len(values)
    return [None if v is None else str(v) for v in out.to_pylist()]
