"""Rounding of released counts, applied after small-count redaction.

Order matters: redaction decides on true values, rounding then blurs what is released. Rounding first
would let a true 3 round to 5 and pass a threshold it fails. Redacted cells stay redacted (NaN), whatever
their rounded value would have been, so rounding can never reveal them.

Totals policy ("round_true_total"): every released total is the rounded *true* total, never the sum of
rounded cells; the two may disagree by up to base/2 per cell, which is stated in the verdict.
"""

from __future__ import annotations

import numpy as np


def round_to_base(values: np.ndarray, base: int = 5, redacted: np.ndarray | None = None) -> np.ndarray:
    """Round to the nearest multiple of ``base`` (halves away from zero); redacted cells become NaN."""
    if base < 1:
        raise ValueError("base must be a positive integer")
    v = np.asarray(values, dtype=np.float64)
    rounded = np.sign(v) * np.floor(np.abs(v) / base + 0.5) * base
    if redacted is not None:
        rounded = np.where(redacted, np.nan, rounded)
    return rounded


def midpoint6(values: np.ndarray, redacted: np.ndarray | None = None) -> np.ndarray:
    """Midpoint-6 rounding: each count becomes the middle of its block of six (1-6 -> 3, 7-12 -> 9).

    Used for counts that feed rates, where a rate built from a count rounded to a multiple of 5 can still
    be inverted; 0 stays 0 (a zero is handled by the zeros rule, not by rounding).
    """
    v = np.asarray(values, dtype=np.float64)
    rounded = np.where(v == 0, 0.0, np.ceil(np.abs(v) / 6.0) * 6.0 - 3.0) * np.sign(np.where(v == 0, 1, v))
    if redacted is not None:
        rounded = np.where(redacted, np.nan, rounded)
    return rounded
