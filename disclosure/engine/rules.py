"""Primary disclosure rules for frequency and magnitude tables, each a vectorised mask over cells.

A rule returns a boolean mask in the extended (with margins) shape of ``TableStats`` and a severity:
``fail`` cells must be suppressed before release, ``review`` cells go to a human checker with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from disclosure.engine.policy import Policy
from disclosure.engine.stats import TableStats


@dataclass
class RuleResult:
    """The outcome of one rule over one table."""

    rule: str
    parameters: dict
    severity: str  # "fail" or "review"
    mask: np.ndarray
    reason: str  # read by a human checker; names the rule and its parameter
    suppressible: bool = True  # suppressing the cell removes this risk

    @property
    def flagged(self) -> int:
        return int(self.mask.sum())


def _interior_mask(stats: TableStats) -> np.ndarray:
    mask = np.zeros(stats.records.shape, dtype=bool)
    mask[stats.interior] = True
    return mask


def frequency_rules(stats: TableStats, policy: Policy, structural_zeros: np.ndarray | None = None) -> list[RuleResult]:
    """Threshold, zeros and class disclosure for a count table.

    The threshold counts distinct contributors (people when an id column was given), but the released value
    remains the record count.
    """
    t = policy.get("frequency", "threshold")
    n = stats.contributors
    results = [
        RuleResult(
            "threshold",
            {"threshold": t},
            "fail",
            (n > 0) & (n < t),
            f"fewer than {t} contributors",
        )
    ]
    zeros_mode = policy.get("frequency", "zeros")
    zero = stats.records == 0
    if structural_zeros is not None:
        zero &= ~structural_zeros
    if zeros_mode != "structural":
        results.append(
            RuleResult(
                "zeros",
                {"zeros": zeros_mode},
                "fail" if zeros_mode == "disclosive" else "review",
                zero,
                "zero count: may reveal that no one in the group has the attribute",
                suppressible=zeros_mode == "disclosive",
            )
        )
    mode = policy.get("frequency", "class_disclosure")
    if mode != "ignore":
        results.append(
            RuleResult(
                "class_disclosure",
                {"class_disclosure": mode},
                mode,
                class_disclosure_mask(stats.records),
                "all members of a row/column group fall in one category",
                suppressible=False,
            )
        )
    return results


def class_disclosure_mask(counts: np.ndarray) -> np.ndarray:
    """Cells that are the only non-zero cell of a line (>= 2 cells) along some axis.

    Such a cell equals its margin, so everyone in that group is known to have that category: group
    attribute disclosure, which suppression of the one cell does not cure (the zeros still tell).
    """
    mask = np.zeros(counts.shape, dtype=bool)
    inner = tuple(slice(0, n - 1) for n in counts.shape)
    body = counts[inner]
    for axis in range(body.ndim):
        if body.shape[axis] < 2:
            continue
        nonzero = body != 0
        only_one = nonzero.sum(axis=axis, keepdims=True) == 1
        mask[inner] |= nonzero & only_one
    return mask


def magnitude_rules(stats: TableStats, policy: Policy) -> list[RuleResult]:
    """Contributor threshold, (n,k)-dominance, p%, identical values, negatives and missing values.

    Conventions (documented in docs/disclosure): dominance uses absolute contributions, so a large negative
    contributor still dominates; cells with negatives are flagged for review because the rules were
    designed for non-negative data; missing values are not contributors.
    """
    mag = policy.section("magnitude")
    t, n, k, p = mag["threshold"], mag["nk_n"], mag["nk_k"], mag["p_percent"]
    contributors = stats.contributors
    present = contributors > 0
    # A table built with a value column carries these arrays (only counts tables leave them None).
    top = cast(np.ndarray, stats.top)
    abs_total = cast(np.ndarray, stats.abs_total)
    with np.errstate(invalid="ignore"):
        top_n = top[..., :n].sum(axis=-1)
        dominance = present & (abs_total > 0) & (top_n > k * abs_total)
        remainder = abs_total - top[..., 0] - top[..., 1]
        p_rule = present & (top[..., 0] > 0) & (remainder < p * top[..., 0])
    results = [
        RuleResult(
            "threshold",
            {"threshold": t},
            "fail",
            present & (contributors < t),
            f"fewer than {t} contributors",
        ),
        RuleResult(
            "nk_dominance",
            {"n": n, "k": k},
            "fail",
            dominance,
            f"the {n} largest contributors exceed {k:.0%} of the cell total",
        ),
        RuleResult(
            "p_percent",
            {"p": p},
            "fail",
            p_rule,
            f"the second-largest contributor could estimate the largest to within {p:.0%}",
        ),
    ]
    if mag["identical_values"] != "ignore":
        same = present & (contributors >= 2) & (stats.minimum == stats.maximum)
        results.append(
            RuleResult(
                "identical_values",
                {},
                mag["identical_values"],
                same,
                "every contributor has the same value, so the statistic reveals each one",
                suppressible=mag["identical_values"] == "fail",
            )
        )
    if mag["negatives"] != "ignore":
        results.append(
            RuleResult(
                "negatives",
                {"convention": "dominance on absolute values"},
                mag["negatives"],
                cast(np.ndarray, stats.negatives) > 0,
                "negative contributions: dominance rules computed on absolute values",
                suppressible=False,
            )
        )
    if mag["missing"] != "ignore":
        results.append(
            RuleResult(
                "missing",
                {"convention": "missing values are not contributors"},
                mag["missing"],
                cast(np.ndarray, stats.missing) > 0,
                "missing values in the cell were excluded",
                suppressible=False,
            )
        )
    return results


def primary_mask(results: list[RuleResult]) -> np.ndarray | None:
    """Cells that fail a rule that suppression cures (None when no such rule was run)."""
    mask: np.ndarray | None = None
    for r in results:
        if r.severity == "fail" and r.suppressible:
            mask = r.mask.copy() if mask is None else mask | r.mask
    return mask


def count_rule_on_values(values: np.ndarray, threshold: int) -> np.ndarray:
    """Threshold rule on a published table of counts alone (no microdata): 0 < value < threshold."""
    return (values > 0) & (values < threshold)
