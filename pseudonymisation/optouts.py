"""Opt-out lists: patients whose records must not be used for research are removed before tokenising.

A custodian loads each list (the national data opt-out, or a restriction of one source); the
pipeline drops matching rows before any token exists for them and counts what each list removed.
A project whose legal basis the DAC marked as exempt from a list still sees that list in its
manifest, with the number of rows it would have removed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pseudonymisation import nhs_number, tokens


@dataclass(frozen=True)
class OptOutList:
    """A named set of NHS numbers (normalised ten-digit strings). Its repr never shows the numbers."""

    name: str
    numbers: pa.Array = field(repr=False)
    # A label the caller gives this version of the list (the control plane's version number);
    # recorded in the manifest beside the fingerprint when set.
    version: str = ""
    # A secret random value kept with the stored list. With it the fingerprint is a keyed hash, so a
    # manifest showing the fingerprint of a short list cannot be brute-forced back to its numbers.
    salt: bytes = field(default=b"", repr=False)

    @classmethod
    def from_numbers(
        cls, name: str, values: Iterable[object], *, version: str = "", salt: bytes = b""
    ) -> OptOutList:
        """Normalise the numbers; ones that are not ten digits can match no row and are left out."""
        normalised = {n for n in (nhs_number.normalise(v) for v in values) if n is not None}
        return cls(name=name, numbers=pa.array(sorted(normalised), pa.string()), version=version, salt=salt)

    def __len__(self) -> int:
        return len(self.numbers)

    def fingerprint(self) -> str:
        """A hash of the list's contents, so a manifest says which version of the list was applied.

        Without a salt it is a plain sha256 of the sorted numbers, which anyone holding a candidate
        list can recompute; with a salt it is an HMAC keyed by it."""
        digest = hmac.new(self.salt, digestmod=hashlib.sha256) if self.salt else hashlib.sha256()
        for chunk in pc.binary_join_element_wise(self.numbers, "\n", "").to_pylist():
            digest.update(chunk.encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class OptOutResult:
    keep: np.ndarray  # (n,) bool: rows to keep
    removed_by_list: dict[str, int]  # a row on two lists counts in both
    would_remove_by_exempt_list: dict[str, int]

    @property
    def removed(self) -> int:
        return int((~self.keep).sum())


def _ten_digit_strings(parsed: tokens.ParsedNumbers) -> pa.Array:
    return pa.Array.from_buffers(
        pa.string(),
        len(parsed),
        [
            None,
            pa.py_buffer(np.arange(0, 10 * len(parsed) + 1, 10, dtype=np.int32)),
            pa.py_buffer(parsed.digits),
        ],
    )


def apply_optouts(
    parsed: tokens.ParsedNumbers, lists: Sequence[OptOutList], exempt: Collection[str] = ()
) -> OptOutResult:
    """Which rows survive the opt-out lists. Only rows with a valid number can match a list."""
    keep = np.ones(len(parsed), dtype=bool)
    removed: dict[str, int] = {}
    would: dict[str, int] = {}
    if not lists or not len(parsed):
        return OptOutResult(keep, {o.name: 0 for o in lists if o.name not in exempt}, {})
    numbers = _ten_digit_strings(parsed)
    valid = parsed.status == tokens.Status.VALID
    for optout in lists:
        hit = pc.is_in(numbers, value_set=optout.numbers).to_numpy(zero_copy_only=False) & valid
        if optout.name in exempt:
            would[optout.name] = int(hit.sum())
        else:
            removed[optout.name] = int(hit.sum())
            keep &= ~hit
    return OptOutResult(keep, removed, would)


# --------------------------------------------------------------------------------------------------
# Reading a list a custodian uploads


@dataclass(frozen=True)
class UploadProblem:
    """One line of an upload that is not a valid NHS number. Holds the line number, never the value."""

    line: int
    reason: str


@dataclass(frozen=True)
class ParsedUpload:
    numbers: list[str] = field(repr=False)  # normalised, distinct, sorted
    lines_read: int  # lines that held a number (valid or not)
    duplicates: int
    problems: list[UploadProblem]

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.numbers)


def _looks_like_header(cell: str) -> bool:
    return any(ch.isalpha() for ch in cell)


def parse_upload(text: str) -> ParsedUpload:
    """Read an uploaded opt-out list: one NHS number a line, or the first column of a CSV file.

    Blank lines and lines starting with ``#`` are skipped; a first line holding letters (a CSV
    header such as ``nhs_number``) is skipped. Spaces and dashes inside a number are allowed.
    Every other line must be a valid NHS number (ten digits, modulus-11 check digit); each line
    that is not is reported by its number and a reason, so the caller can refuse the whole upload
    without ever echoing what the line held.
    """
    found: set[str] = set()
    problems: list[UploadProblem] = []
    lines_read = duplicates = 0
    first = True
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip().lstrip("\ufeff")
        if not line or line.startswith("#"):
            continue
        cell = line.split(",", 1)[0].strip().strip('"').strip()
        if first and _looks_like_header(cell):
            first = False
            continue
        first = False
        lines_read += 1
        digits = nhs_number.normalise(cell)
        if digits is None:
            problems.append(UploadProblem(number, "not ten digits"))
        elif not nhs_number.is_valid(digits):
            problems.append(UploadProblem(number, "the check digit is wrong"))
        elif digits in found:
            duplicates += 1
        else:
            found.add(digits)
    return ParsedUpload(sorted(found), lines_read, duplicates, problems)
