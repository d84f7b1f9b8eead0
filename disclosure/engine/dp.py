"""Differentially private release route (OpenDP): counts, sums and means over public category lists.

Offered where repeated releases make differencing the main risk: noise calibrated to a privacy loss epsilon
protects every release regardless of what else was published, and the losses add up in a per-project
budget ledger instead of being judged table by table.

Conventions:
- Categories must be public (given by the caller, e.g. from a code list), never read from the data: a
  category list taken from the data would itself reveal who is in it.
- ``max_rows_per_person`` bounds how many rows one person can have; sensitivities scale with it. With an
  id column the data is truncated to that many rows per person so the bound really holds.
- Error bars are 95 % intervals of the noise alone (they say nothing about sampling error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from disclosure.engine.labels import jsonable
from disclosure.engine.policy import Policy, default_policy
from disclosure.engine.verdict import criterion, simple_verdict

_CI95 = math.log(20.0)  # P(|Laplace(b)| > b ln 20) = 0.05


class BudgetExceeded(RuntimeError):
    """The release would spend more privacy loss than the project has left."""


@dataclass
class PrivacyBudget:
    """A project's privacy-loss budget: every DP release is charged here before it is computed."""

    project: str
    total_epsilon: float
    spends: list[dict[str, Any]] = field(default_factory=list)

    @property
    def spent(self) -> float:
        return float(sum(s["epsilon"] for s in self.spends))

    @property
    def remaining(self) -> float:
        return self.total_epsilon - self.spent

    def charge(self, epsilon: float, output_id: str, description: str) -> None:
        """Record a spend (sequential composition: losses add up), or refuse it."""
        if epsilon <= 0:
            raise ValueError("epsilon must be positive")
        if epsilon > self.remaining + 1e-12:
            raise BudgetExceeded(
                f"{output_id} needs epsilon={epsilon:g}; only {self.remaining:g} of "
                f"{self.total_epsilon:g} left for project {self.project}"
            )
        self.spends.append({"output_id": output_id, "epsilon": float(epsilon), "description": description})

    def to_dict(self) -> dict[str, Any]:
        return {"project": self.project, "total_epsilon": self.total_epsilon, "spends": list(self.spends)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyBudget:
        return cls(data["project"], float(data["total_epsilon"]), list(data["spends"]))


def _opendp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def _bounded_rows(data: pd.DataFrame, person: str | None, max_rows: int) -> pd.DataFrame:
    if person is None:
        return data
    return data[data.groupby(person, sort=False).cumcount() < max_rows]


def _keys(data: pd.DataFrame, dims: list[str], categories: dict[str, list]) -> tuple[pd.Series, list[str]]:
    """One string key per row over the public category product; rows outside it map to no category."""
    levels = [list(categories[d]) for d in dims]
    index = pd.MultiIndex.from_product(levels, names=dims)
    names = ["\x1f".join(map(str, combo)) for combo in index]
    key = data[dims[0]].astype(str)
    for d in dims[1:]:
        key = key + "\x1f" + data[d].astype(str)
    return key, names


def dp_counts(
    data: pd.DataFrame,
    dims: list[str],
    categories: dict[str, list],
    epsilon: float,
    budget: PrivacyBudget | None,
    output_id: str,
    *,
    person: str | None = None,
    max_rows_per_person: int = 1,
    policy: Policy | None = None,
    _charge: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Noisy counts per cell of the public category product (discrete Laplace via OpenDP)."""
    dp = _opendp()
    policy = policy or default_policy()
    _check_epsilon(epsilon)
    if _charge and budget is not None:
        budget.charge(epsilon, output_id, f"dp counts over {dims}")
    rows = _bounded_rows(data, person, max_rows_per_person)
    key, names = _keys(rows, dims, categories)
    scale = max_rows_per_person / epsilon
    meas = dp.t.make_count_by_categories(
        dp.vector_domain(dp.atom_domain(T=str)),
        dp.symmetric_distance(),
        categories=names,
        null_category=False,
    ) >> dp.m.then_laplace(scale=scale)
    _confirm(meas.map(max_rows_per_person), epsilon)
    noisy = np.asarray(meas(key.tolist()), dtype=float)
    table = _frame(dims, categories, noisy, scale)
    return table, _verdict("dp_counts", policy, budget, epsilon, scale, max_rows_per_person, dims)


def dp_sums(
    data: pd.DataFrame,
    dims: list[str],
    categories: dict[str, list],
    value: str,
    bounds: tuple[float, float],
    epsilon: float,
    budget: PrivacyBudget | None,
    output_id: str,
    *,
    person: str | None = None,
    max_rows_per_person: int = 1,
    policy: Policy | None = None,
    _charge: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Noisy sums of ``value`` clamped to ``bounds`` per cell (Laplace via OpenDP).

    Cells partition the rows, so one person changes at most ``max_rows_per_person`` clamped values: the
    sum vector's L1 sensitivity is that times max(|lower|, |upper|), which sets the scale.
    """
    dp = _opendp()
    policy = policy or default_policy()
    lower, upper = map(float, bounds)
    if lower > upper:
        raise ValueError("bounds must be (lower, upper)")
    _check_epsilon(epsilon)
    if _charge and budget is not None:
        budget.charge(epsilon, output_id, f"dp sums of {value} over {dims}")
    rows = _bounded_rows(data, person, max_rows_per_person)
    key, names = _keys(rows, dims, categories)
    clamped = pd.to_numeric(rows[value], errors="coerce").fillna(0.0).clip(lower, upper)
    sums = clamped.groupby(key, sort=False).sum().reindex(names, fill_value=0.0).to_numpy(dtype=float)
    sensitivity = max_rows_per_person * max(abs(lower), abs(upper))
    scale = sensitivity / epsilon
    meas = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float), scale=scale)
    _confirm(meas.map(sensitivity), epsilon)
    noisy = np.asarray(meas(sums.tolist()), dtype=float)
    table = _frame(dims, categories, noisy, scale)
    verdict = _verdict("dp_sums", policy, budget, epsilon, scale, max_rows_per_person, dims, bounds=[lower, upper])
    return table, verdict


def dp_means(
    data: pd.DataFrame,
    dims: list[str],
    categories: dict[str, list],
    value: str,
    bounds: tuple[float, float],
    epsilon: float,
    budget: PrivacyBudget | None,
    output_id: str,
    *,
    person: str | None = None,
    max_rows_per_person: int = 1,
    policy: Policy | None = None,
    seed: int | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Noisy mean = noisy sum / noisy count, with epsilon split evenly; error bars by simulating the noise."""
    policy = policy or default_policy()
    _check_epsilon(epsilon)
    if budget is not None:
        budget.charge(epsilon, output_id, f"dp means of {value} over {dims}")
    half = epsilon / 2  # sequential composition: count and sum each spend half of the charge above
    counts, _ = dp_counts(
        data,
        dims,
        categories,
        half,
        budget,
        output_id,
        person=person,
        max_rows_per_person=max_rows_per_person,
        policy=policy,
        _charge=False,
    )
    sums, _ = dp_sums(
        data,
        dims,
        categories,
        value,
        bounds,
        half,
        budget,
        output_id,
        person=person,
        max_rows_per_person=max_rows_per_person,
        policy=policy,
        _charge=False,
    )
    n = counts["estimate"].to_numpy()
    s = sums["estimate"].to_numpy()
    safe_n = np.maximum(n, 1.0)
    mean = np.clip(s / safe_n, *bounds)
    # Post-processing only: simulate the two noises around the released values to get a 95 % band.
    rng = np.random.default_rng(seed)
    draws = 2000
    sim_n = np.maximum(safe_n + rng.laplace(0, counts["noise_scale"].to_numpy(), (draws, len(n))), 1.0)
    sim_s = s + rng.laplace(0, sums["noise_scale"].to_numpy(), (draws, len(n)))
    sim = np.clip(sim_s / sim_n, *bounds)
    lo, hi = np.percentile(sim, [2.5, 97.5], axis=0)
    table = counts[[]].copy()
    table["estimate"] = mean
    table["ci95_lower"], table["ci95_upper"] = lo, hi
    table["noisy_count"] = n
    table["count_noise_scale"] = counts["noise_scale"].to_numpy()
    table["sum_noise_scale"] = sums["noise_scale"].to_numpy()
    verdict = _verdict(
        "dp_means",
        policy,
        budget,
        epsilon,
        None,
        max_rows_per_person,
        dims,
        bounds=[float(bounds[0]), float(bounds[1])],
    )
    return table, verdict


def _check_epsilon(epsilon: float) -> None:
    if not isinstance(epsilon, int | float) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError("epsilon must be a positive number")


def _confirm(privacy_loss: float, epsilon: float) -> None:
    """OpenDP's own privacy map must agree with our calibration, or nothing is released."""
    if privacy_loss > epsilon + 1e-9:
        raise RuntimeError(f"calibration error: mechanism spends {privacy_loss} > epsilon {epsilon}")


def _frame(dims: list[str], categories: dict[str, list], noisy: np.ndarray, scale: float) -> pd.DataFrame:
    index = pd.MultiIndex.from_product([list(categories[d]) for d in dims], names=dims)
    if len(dims) == 1:
        index = index.get_level_values(0)
    half = scale * _CI95
    return pd.DataFrame(
        {"estimate": noisy, "noise_scale": scale, "ci95_lower": noisy - half, "ci95_upper": noisy + half},
        index=index,
    )


def _verdict(
    kind: str,
    policy: Policy,
    budget: PrivacyBudget | None,
    epsilon: float,
    scale: float | None,
    max_rows: int,
    dims: list[str],
    **extra: Any,
) -> dict[str, Any]:
    return simple_verdict(
        "dp_table",
        policy,
        [
            criterion(
                "privacy_budget",
                "pass",
                {"total_epsilon": budget.total_epsilon if budget else None},
                "" if budget else "charged by the output queue at release, not here",
                epsilon=epsilon,
                spent=budget.spent if budget else None,
                remaining=budget.remaining if budget else None,
            ),
            criterion("public_categories", "pass", {}, "", convention="categories supplied by the caller"),
        ],
        mechanism="laplace",
        statistic=kind,
        dims=dims,
        epsilon=epsilon,
        noise_scale=jsonable(scale),
        max_rows_per_person=max_rows,
        **extra,
    )
