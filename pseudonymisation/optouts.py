"""Opt-out lists: patients whose records must not be used for research are removed before tokenising.

A custodian loads each list (the national data opt-out, or a restriction of one source); the
pipeline drops matching rows before any token exists for them and counts what each list removed.
A project whose legal basis the DAC marked as exempt from a list still sees that list in its
manifest, with the number of rows it would have removed.
"""

from __future__ import annotations

import hashlib
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

    @classmethod
    def from_numbers(cls, name: str, values: Iterable[object]) -> OptOutList:
        """Normalise the numbers; ones that are not ten digits can match no row and are left out."""
        normalised = {n for n in (nhs_number.normalise(v) for v in values) if n is not None}
        return cls(name=name, numbers=pa.array(sorted(normalised), pa.string()))

    def __len__(self) -> int:
        return len(self.numbers)

    def fingerprint(self) -> str:
        """A hash of the list's contents, so a manifest says which version of the list was applied."""
        digest = hashlib.sha256()
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
