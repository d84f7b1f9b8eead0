"""Generalisers for quasi-identifiers and free text, each a function over a whole pyarrow column.

Dates of birth become a year or an age band (everyone 90 or over in one band, as the ONS does),
event dates are shifted by a per-patient amount (so intervals within a patient survive) or become
days from an index date, postcodes shrink to their district or sector, and free text is scrubbed of
the patient's own identifiers plus patterns that look like identifiers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pseudonymisation import tokens

REDACTED = "[REDACTED]"
DATE_SHIFT_PURPOSE = "date-shift"

# A full UK postcode with the space removed: outward code (2-4 characters) then inward code (3).
_POSTCODE = r"^[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2}$"

# Identifier-like patterns removed from every scrubbed note (RE2 syntax, applied to whole columns).
SCRUB_PATTERNS: tuple[tuple[str, str], ...] = (
    ("nhs_number", r"\b\d{3}[ -]?\d{3}[ -]?\d{4}\b"),
    ("email", r"(?i)\b[A-Z0-9._%+-]+@[A-Z0-9.-]+\.[A-Z]{2,}\b"),
    ("phone", r"(?:\+44\s?|\b0)\d{2,4}[ ]?\d{3}[ ]?\d{3,4}\b"),
    ("postcode", r"(?i)\b[A-Z]{1,2}[0-9][A-Z0-9]? ?[0-9][A-Z]{2}\b"),
    ("date", r"\b\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b|\b\d{4}-\d{2}-\d{2}\b"),
)


# Dates written as text, as exports write them (ADR 0062): ISO, a four-digit year first (a time after
# it, with or without a zone, is ignored: the date is the one written), or day first with a four-digit
# year last (d/m/yyyy, dd/mm/yyyy, dd-mm-yyyy, dd.mm.yyyy, one separator throughout), never month
# first. Anything else, and a day the calendar lacks, is no date. RE2 has no back-references: a
# day-first date's two separators are compared after the match.
ISO_DATE = r"^(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})(?:[ T][0-9:.]+(?:Z|[+-]\d{2}(?::?\d{2})?)?)?$"
DAY_FIRST_DATE = r"^(?P<day>\d{1,2})(?P<sep>[/.-])(?P<month>\d{1,2})(?P<sep2>[/.-])(?P<year>\d{4})$"


def read_date_text(text: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Each text value as a date32, read as ISO or day/month/year (surrounding spaces ignored), null for
    anything else (31/02/2020, 12/31/2020, "unknown"); and which values are written in each form (two
    boolean arrays, ISO then day-first, whether or not the date exists).

    Vectorised: two patterns pick the parts, the parts are joined as ``Y-M-D`` and parsed, and a date
    whose day, month or year differs from the parts written (``strptime`` rolls 31 February over into
    March) is refused.
    """
    text = pc.utf8_trim_whitespace(text)
    iso = pc.extract_regex(text, ISO_DATE)  # null where the pattern does not match
    dmy = pc.extract_regex(text, DAY_FIRST_DATE)
    dmy_form = pc.fill_null(pc.equal(pc.struct_field(dmy, "sep"), pc.struct_field(dmy, "sep2")), False)
    iso_form = iso.is_valid()
    # A row the pattern misses is null in each part (struct_field carries the row's nulls).
    parts = {n: pc.coalesce(pc.struct_field(iso, n),
                            pc.if_else(dmy_form, pc.struct_field(dmy, n), pa.scalar(None, pa.string())))
             for n in ("year", "month", "day")}
    written = pc.binary_join_element_wise(parts["year"], parts["month"], parts["day"], "-")
    parsed = pc.strptime(written, format="%Y-%m-%d", unit="s", error_is_null=True)
    same = pc.and_(
        pc.and_(pc.equal(pc.year(parsed), pc.cast(parts["year"], pa.int64())),
                pc.equal(pc.month(parsed), pc.cast(parts["month"], pa.int64()))),
        pc.equal(pc.day(parsed), pc.cast(parts["day"], pa.int64())),
    )
    return pc.if_else(same, pc.cast(parsed, pa.date32()), pa.scalar(None, pa.date32())), iso_form, dmy_form


def dates_from_text(text: pa.Array) -> pa.Array:
    """Each text value as a date32 (``read_date_text``); null where it is not a date in either form."""
    return read_date_text(text)[0]


def as_dates(values: pa.Array) -> pa.Array:
    """Coerce dates, timestamps or date text to date32. Text is read by ``dates_from_text`` (ISO or
    day/month/year; anything else becomes null, not an error), once per distinct value; a column of
    plain ``YYYY-MM-DD`` dates by one cast."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_date32(values.type):
        return values
    if pa.types.is_date64(values.type) or pa.types.is_timestamp(values.type):
        return pc.cast(values, pa.date32())
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        try:
            return pc.cast(values, pa.date32())  # the usual column: every value a valid ISO date
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        if pa.types.is_large_string(values.type):
            values = pc.cast(values, pa.string())
        return on_distinct(values, dates_from_text)
    raise TypeError("expected a date, timestamp or date text column")


def dob_to_year(dob: pa.Array) -> pa.Array:
    """Year of birth only."""
    return pc.cast(pc.year(as_dates(dob)), pa.int16())


def age_in_years(dob: pa.Array, reference: dt.date) -> pa.Array:
    """Whole years of age on ``reference``; null for a birth after it."""
    dob = as_dates(dob)
    years = pc.subtract(pa.scalar(reference.year, pa.int64()), pc.year(dob))
    birthday_later = pc.greater(
        pc.add(pc.multiply(pc.month(dob), 100), pc.day(dob)), reference.month * 100 + reference.day
    )
    age = pc.subtract(years, pc.cast(birthday_later, pa.int64()))
    return pc.if_else(pc.less(age, 0), pa.scalar(None, pa.int64()), age)


def dob_to_age_band(dob: pa.Array, reference: dt.date, width: int = 5, top: int = 90) -> pa.Array:
    """Age bands like ``0-4`` … ``85-89`` and ``90+`` on ``reference`` (90 + is one band: few people
    are that old, so exact ages there single people out)."""
    if width < 1 or top < width or top % width:
        raise ValueError("age bands need a positive width that divides the top age")
    labels = pa.array([f"{lo}-{lo + width - 1}" for lo in range(0, top, width)] + [f"{top}+"])

    age = age_in_years(dob, reference)
    # Date arithmetic per row is cheaper than hashing the dates to band each distinct one once.
    return labels.take(pc.divide(pc.min_element_wise(age, top, skip_nulls=False), width))


def shift_dates(dates: pa.Array, pseudonyms: tokens.Pseudonyms, project_key: bytes, max_days: int = 180) -> pa.Array:
    """Move every date of a patient by the same number of days in [-max_days, max_days].

    The shift is keyed by a subkey of the project key and the patient's internal pseudonym, so it is
    the same in every table of one project, different in another project, and gone with the key.
    Rows without a patient have no shift and lose their date rather than keep the true one.
    """
    if max_days < 1:
        raise ValueError("max_days must be at least 1")
    dates = as_dates(dates)
    key = tokens.derive_subkey(project_key, DATE_SHIFT_PURPOSE)
    stream = tokens.keyed_uint32(pseudonyms.blocks, key)
    span = 2 * max_days + 1
    shift = (stream % np.uint32(span)).astype(np.int32) - np.int32(max_days)
    days = pc.add(pc.cast(dates, pa.int32()), pa.array(shift))
    shifted = pc.cast(days, pa.date32())
    return pc.if_else(pa.array(pseudonyms.present), shifted, pa.scalar(None, pa.date32()))


def days_from_index(dates: pa.Array, index_dates: pa.Array) -> pa.Array:
    """Days from each row's index date (e.g. diagnosis) to the event; negative before it."""
    start = pc.cast(as_dates(index_dates), pa.int32())
    return pc.subtract(pc.cast(as_dates(dates), pa.int32()), start)


def _postcode_parts(postcodes: pa.Array) -> tuple[pa.Array, pa.Array]:
    text = pc.utf8_upper(pc.replace_substring_regex(postcodes, r"\s+", ""))
    valid = pc.match_substring_regex(text, _POSTCODE)
    text = pc.if_else(valid, text, pa.scalar(None, pa.string()))
    return pc.utf8_slice_codeunits(text, 0, -3), pc.utf8_slice_codeunits(text, -3, -2)


def on_distinct(values: pa.Array, transform) -> pa.Array:
    """Apply a string transform once per distinct value: postcodes and codes repeat so much that a
    hash pass plus a take is far cheaper than running regexes over every row."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(values)
    return transform(encoded.dictionary).take(encoded.indices)


def local_id_tokens(values: pa.Array, key: bytes) -> pa.Array:
    """A per-project token of a local identifier (an OMOP ``person_id``, a hospital number): an
    HMAC-SHA256 of its text under ``key`` (derive it from the project key and a namespace, so the
    same id in two tables of one extract gets one token and two projects' tokens never match).
    Computed once per distinct value; missing values stay missing."""
    text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())

    def spell(distinct: pa.Array) -> pa.Array:
        return pa.array([None if v is None else "L" + hmac.new(key, v.encode(), hashlib.sha256).hexdigest()[:31]
                         for v in distinct.to_pylist()], pa.string())

    return on_distinct(text, spell)


def _district(postcodes: pa.Array) -> pa.Array:
    district, _ = _postcode_parts(postcodes)
    return district


def _sector(postcodes: pa.Array) -> pa.Array:
    district, sector_digit = _postcode_parts(postcodes)
    return pc.binary_join_element_wise(district, sector_digit, " ")


def postcode_district(postcodes: pa.Array) -> pa.Array:
    """The outward code (``LS1 4AP`` → ``LS1``); anything that is not a postcode becomes null."""
    return on_distinct(postcodes, _district)


def postcode_sector(postcodes: pa.Array) -> pa.Array:
    """The outward code and the first inward digit (``LS1 4AP`` → ``LS1 4``)."""
    return on_distinct(postcodes, _sector)


def scrub_patterns(notes: pa.Array, replacement: str = REDACTED) -> pa.Array:
    """Replace identifier-like patterns in a whole column (vectorised, RE2)."""
    for _name, pattern in SCRUB_PATTERNS:
        notes = pc.replace_substring_regex(notes, pattern, replacement)
    return notes


# A measurement as exports write it (ADR 0066): a number, a number after a censoring marker (a lab's
# "<5", ">120", "<= 0.1"; ≤ and ≥ are written <= and >=), or a pair of numbers ("120/80", a blood
# pressure). The words that say "not recorded" are missing; so is any other text, which may be anything
# a clerk typed (deny by default).
MARKED_NUMBER = r"^(?P<marker><=|>=|<|>|≤|≥)? *(?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)$"
MARKERS = ("<=", ">=", "<", ">", "≤", "≥")
NUMBER_PAIR = r"^(?P<first>\d+(?:\.\d+)?) */ *(?P<second>\d+(?:\.\d+)?)$"
MISSING_WORDS = ("nr", "n/r", "na", "n/a", "n.a.", "nk", "n/k", "not recorded", "not known", "unknown", "not available",
                 "not done", "null", "none", "nan", "-", "--", "?", "")
_MARKER_SPELLING = {"≤": "<=", "≥": ">="}


def _measurements(text: pa.Array) -> pa.Array:
    text = pc.utf8_trim_whitespace(text)
    number = pc.extract_regex(text, MARKED_NUMBER)
    marker = pc.fill_null(pc.struct_field(number, "marker"), "")
    for written, spelled in _MARKER_SPELLING.items():
        marker = pc.replace_substring(marker, written, spelled)
    single = pc.binary_join_element_wise(marker, pc.struct_field(number, "number"), "")
    pair = pc.extract_regex(text, NUMBER_PAIR)
    both = pc.binary_join_element_wise(pc.struct_field(pair, "first"), pc.struct_field(pair, "second"), "/")
    return pc.coalesce(single, both)  # a missing word, or any other text, matches neither: null


def measurements(values: pa.Array) -> pa.Array:
    """A column of measurements as text (``MARKED_NUMBER``, ``NUMBER_PAIR``), one spelling each:
    ``< 5`` → ``<5``, ``≥120`` → ``>=120``, `` 120 / 80`` → ``120/80``; a number is kept as written
    (``5.0`` stays ``5.0``). Missing words (NR, not recorded, unknown) and any other text become null.
    A column the source already types as numbers is written as text. Computed once per distinct value."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_large_string(values.type) or not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    return on_distinct(values, _measurements)


def _identifier_terms(values: Sequence[object]) -> list[str]:
    """The strings to remove for one patient: each identifier whole and its words of 2+ characters."""
    terms: set[str] = set()
    for value in values:
        if value is None:
            continue
        text = value.isoformat() if isinstance(value, dt.date) else str(value).strip()
        if len(text) >= 2:
            terms.add(text)
        terms.update(w for w in re.split(r"[\s,]+", text) if len(w) >= 2)
    return sorted(terms, key=len, reverse=True)  # longest first, so a full name goes before its parts


def scrub_text(notes: pa.Array, identifiers: Sequence[pa.Array] = (), replacement: str = REDACTED) -> pa.Array:
    """Remove the patient's own identifiers (from the same row) and then identifier-like patterns.

    The per-patient part loops over rows in Python: each row has its own search terms and no column
    kernel takes a pattern per row. Free text is rare and approved case by case, so this is acceptable.
    """
    if identifiers:
        rows = [col.to_pylist() for col in identifiers]
        scrubbed: list[str | None] = []
        for i, note in enumerate(notes.to_pylist()):
            if note is None:
                scrubbed.append(None)
                continue
            terms = _identifier_terms([col[i] for col in rows])
            if terms:
                # Whole words only: "12" from an address must not eat digits out of a phone number.
                alternatives = "|".join(re.escape(t) for t in terms)
                pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
                note = pattern.sub(replacement, note)
            scrubbed.append(note)
        notes = pa.array(scrubbed, pa.string())
    return scrub_patterns(notes, replacement)
