"""The data-quality report of an extract: missingness, invalid codes and NHS numbers, linkage rate.

Counts are gathered chunk by chunk (``QualityAccumulator``) and are only counts: no value from the
data ever appears in the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def missing_count(values: pa.Array) -> int:
    """Nulls, plus blank strings for text columns (a blank is as missing as a null to an analyst)."""
    nulls = values.null_count
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        blank = pc.or_(pc.equal(pc.binary_length(values), 0), pc.utf8_is_space(values))
        nulls += int(pc.sum(blank).as_py() or 0)
    return nulls


def invalid_code_count(values: pa.Array, pattern: str) -> int:
    """Present values that do not match ``pattern`` in full (checked once per distinct value)."""
    text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    counted = pc.value_counts(text.drop_null())
    matched = pc.match_substring_regex(counted.field("values"), f"^(?:{pattern})$")
    return int(pc.sum(pc.if_else(matched, 0, counted.field("counts"))).as_py() or 0)


class QualityAccumulator:
    """Adds up missingness and invalid values over the chunks of one source."""

    def __init__(self, columns: Sequence[str], code_patterns: Mapping[str, str] | None = None) -> None:
        self.columns = list(columns)
        self.code_patterns = dict(code_patterns or {})
        self.rows = 0
        self.missing: Counter[str] = Counter()
        self.invalid_codes: Counter[str] = Counter()
        self.invalid_nhs_numbers: Counter[str] = Counter()

    def add(self, chunk: pa.Table | pa.RecordBatch, nhs_reasons: Mapping[str, int] | None = None) -> None:
        self.rows += chunk.num_rows
        for name in self.columns:
            column = chunk.column(name)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            self.missing[name] += missing_count(column)
            if name in self.code_patterns:
                self.invalid_codes[name] += invalid_code_count(column, self.code_patterns[name])
        self.invalid_nhs_numbers.update(nhs_reasons or {})

    def state(self) -> dict[str, Any]:
        """Plain counts, so a checkpoint can store them and a resumed run can add to them."""
        return {
            "rows": self.rows,
            "missing": dict(self.missing),
            "invalid_codes": dict(self.invalid_codes),
            "invalid_nhs_numbers": dict(self.invalid_nhs_numbers),
        }

    def merge(self, state: Mapping[str, Any]) -> None:
        self.rows += state["rows"]
        self.missing.update(state["missing"])
        self.invalid_codes.update(state["invalid_codes"])
        self.invalid_nhs_numbers.update(state["invalid_nhs_numbers"])

    def report(self) -> dict[str, Any]:
        rows = self.rows
        return {
            "rows": rows,
            "missing": {
                c: {"count": self.missing[c], "fraction": round(self.missing[c] / rows, 6) if rows else None}
                for c in self.columns
            },
            "invalid_codes": {c: self.invalid_codes[c] for c in self.code_patterns if c in self.columns},
            "invalid_nhs_numbers": dict(sorted(self.invalid_nhs_numbers.items())),
        }


def linkage_rate(left: pa.Array, right: pa.Array) -> dict[str, Any]:
    """How many distinct patients of each table appear in the other (ids are tokens or pseudonyms)."""
    a = pc.unique(left.drop_null())
    b = pc.unique(right.drop_null())
    matched = int(pc.sum(pc.is_in(a, value_set=b)).as_py() or 0)
    return {
        "left_patients": len(a),
        "right_patients": len(b),
        "matched_patients": matched,
        "left_linked_fraction": round(matched / len(a), 6) if len(a) else None,
        "right_linked_fraction": round(matched / len(b), 6) if len(b) else None,
    }
