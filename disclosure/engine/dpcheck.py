"""What a differentially private output claims (its DP specification) and the output queue's check of it.

The session writes each DP table with a specification beside it in results.json:

    {"route": "dp", "statistic": "count" | "sum" | "mean", "mechanism": "laplace", "epsilon": 0.5,
     "bounds": [0, 100] | null, "value": "cost" | null, "dims": ["region"],
     "categories": {"region": ["North", "South"]}, "max_rows_per_person": 1, "person": "pid" | null,
     "dataset": "admissions", "filters": [...] | null, "n_row_dims": 1}

The queue does not trust it. ``check_dp_output`` re-derives what the file itself shows: its rows must be
exactly the public category product, and the noise scales written in it (the ``noise_scale`` column, the
error bars) fix the epsilon actually spent; an output whose file implies more privacy loss than its
specification states fails. With the extract the true statistic is re-computed and the noise in the
file is tested against the stated scale: noise far smaller than the stated epsilon allows fails too.
The epsilon to charge is the larger of the stated and the re-derived one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from disclosure.engine.policy import Policy

DP_STATISTICS = ("count", "sum", "mean")
MECHANISMS = ("laplace",)
_CI95 = math.log(20.0)
# The chance, under the stated noise, of noise as small as the file's; below it the spec is not believed.
FORGERY_P = 1e-9


def is_dp_spec(spec: Any) -> bool:
    return isinstance(spec, dict) and spec.get("route") == "dp"


def dp_spec(
    statistic: str,
    dims: list[str],
    categories: dict[str, list],
    epsilon: float,
    *,
    value: str | None = None,
    bounds: tuple[float, float] | None = None,
    max_rows_per_person: int = 1,
    person: str | None = None,
    dataset: str | None = None,
    filters: list[dict] | None = None,
) -> dict[str, Any]:
    spec = {
        "route": "dp",
        "statistic": statistic,
        "mechanism": "laplace",
        "epsilon": float(epsilon),
        "bounds": None if bounds is None else [float(bounds[0]), float(bounds[1])],
        "value": value,
        "dims": list(dims),
        "categories": {d: [_plain(v) for v in categories[d]] for d in dims},
        "max_rows_per_person": int(max_rows_per_person),
        "person": person,
        "dataset": dataset,
        "filters": None if filters is None else list(filters),
        "n_row_dims": len(dims),
    }
    validate_dp_spec(spec)
    return spec


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def validate_dp_spec(spec: dict[str, Any], cap: float | None = None) -> None:
    """Raise ValueError with the reason when the specification is not a sane DP release."""
    if spec.get("statistic") not in DP_STATISTICS:
        raise ValueError("a DP output's statistic must be count, sum or mean")
    if spec.get("mechanism") not in MECHANISMS:
        raise ValueError("a DP output's mechanism must be laplace")
    eps = spec.get("epsilon")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) or eps <= 0:
        raise ValueError("a DP output's epsilon must be a positive number")
    if cap is not None and eps > cap:
        raise ValueError(f"a DP output may spend at most epsilon {cap:g}; this one states {eps:g}")
    k = spec.get("max_rows_per_person")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError("a DP output's max_rows_per_person must be a whole number of at least 1")
    dims, cats = spec.get("dims"), spec.get("categories")
    if not isinstance(dims, list) or not dims or not isinstance(cats, dict):
        raise ValueError("a DP output must list its dims and each dimension's public categories")
    for d in dims:
        if not isinstance(cats.get(d), list) or not cats[d]:
            raise ValueError(f"a DP output must list the public categories of {d!r}")
    if spec["statistic"] != "count":
        bounds = spec.get("bounds")
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
            or bounds[0] > bounds[1]
        ):
            raise ValueError("a DP sum or mean must state finite bounds [lower, upper] with lower <= upper")
        if not isinstance(spec.get("value"), str):
            raise ValueError("a DP sum or mean must name its value column")


def sensitivity(spec: dict[str, Any], part: str) -> float:
    """L1 sensitivity of the count or the (clamped) sum vector under the spec's rows-per-person bound."""
    k = spec["max_rows_per_person"]
    if part == "count":
        return float(k)
    lower, upper = spec["bounds"]
    return float(k * max(abs(lower), abs(upper)))


def _scales(frame: pd.DataFrame, column: str, with_error_bars: bool) -> np.ndarray:
    """The noise scales a file shows for one part: its scale column and, for counts and sums, its
    error bars (half width = scale x ln 20). Either may be edited; the smallest one is believed."""
    scales = [pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)] if column in frame else []
    if with_error_bars and {"ci95_lower", "ci95_upper"} <= set(frame.columns):
        lo = pd.to_numeric(frame["ci95_lower"], errors="coerce").to_numpy(dtype=float)
        hi = pd.to_numeric(frame["ci95_upper"], errors="coerce").to_numpy(dtype=float)
        scales.append((hi - lo) / (2 * _CI95))
    if not scales:
        raise ValueError(f"the file shows no {column} column: the noise it carries cannot be re-derived")
    return np.concatenate(scales)


def check_dp_output(
    spec: dict[str, Any], published: pd.DataFrame, policy: Policy, data: pd.DataFrame | None = None
) -> dict[str, Any]:
    """The queue's verdict on one DP file: ``status`` pass/fail, ``reasons``, ``epsilon`` to charge."""
    cap = float(policy.get("dp", "release_cap"))
    reasons: list[str] = []
    try:
        validate_dp_spec(spec, cap)
    except ValueError as exc:
        return _result("fail", [str(exc)], None, spec, {})
    expected_rows = math.prod(len(spec["categories"][d]) for d in spec["dims"])
    if len(published) != expected_rows:
        reasons.append(
            f"the file has {len(published)} rows but the public categories give {expected_rows}: "
            "categories read from the data reveal who is in it"
        )
    stated = float(spec["epsilon"])
    parts = {"count": [("noise_scale", "count")], "sum": [("noise_scale", "sum")]}.get(
        spec["statistic"], [("count_noise_scale", "count"), ("sum_noise_scale", "sum")]
    )
    implied = 0.0
    rederived: dict[str, Any] = {}
    try:
        for column, part in parts:
            scales = _scales(published, column, spec["statistic"] != "mean")
            smallest = float(np.nanmin(scales)) if np.isfinite(scales).any() else float("nan")
            if not math.isfinite(smallest) or smallest <= 0:
                raise ValueError(f"the file's {column} is missing or not positive")
            implied += sensitivity(spec, part) / smallest
            rederived[f"{part}_scale"] = smallest
    except ValueError as exc:
        return _result("fail", [*reasons, str(exc)], None, spec, rederived)
    rederived["implied_epsilon"] = implied
    if implied > stated * (1 + 1e-6):
        reasons.append(
            f"the noise in the file implies epsilon {implied:.4g}, more than the {stated:g} its specification states"
        )
    charge = stated if implied <= stated * (1 + 1e-6) else implied
    if charge > cap * (1 + 1e-9):
        reasons.append(f"one DP output may spend at most epsilon {cap:g}; this one spends {charge:.4g}")
    if data is not None:
        reasons.extend(_noise_test(spec, published, data, rederived))
    else:
        rederived["noise_test"] = "not done: no extract to re-compute the true values from"
    return _result("fail" if reasons else "pass", reasons, charge, spec, rederived)


def _noise_test(spec: dict[str, Any], published: pd.DataFrame, data: pd.DataFrame, out: dict[str, Any]) -> list[str]:
    """Is the file's noise as large as the stated scale says? Under Laplace(b) the sum of n absolute
    noises is Gamma(n, b); a sum far in its lower tail means the file carries less noise than stated."""
    from scipy.special import gammainc

    from disclosure.engine.dp import _bounded_rows, _keys
    from disclosure.engine.specs import apply_filters

    try:
        rows = apply_filters(data, spec.get("filters", []))
        rows = _bounded_rows(rows, spec.get("person"), spec["max_rows_per_person"])
        key, names = _keys(rows, spec["dims"], spec["categories"])
    except (KeyError, ValueError, TypeError) as exc:
        out["noise_test"] = f"not done: {type(exc).__name__}: {exc}"[:300]
        return []
    checks: list[tuple[str, np.ndarray, np.ndarray, float]] = []
    counts = key.value_counts().reindex(names, fill_value=0).to_numpy(dtype=float)
    if spec["statistic"] == "count":
        checks.append(
            ("estimate", counts, _column(published, "estimate"), sensitivity(spec, "count") / spec["epsilon"])
        )
    else:
        lower, upper = spec["bounds"]
        clamped = pd.to_numeric(rows[spec["value"]], errors="coerce").fillna(0.0).clip(lower, upper)
        sums = clamped.groupby(key, sort=False).sum().reindex(names, fill_value=0.0).to_numpy(dtype=float)
        if spec["statistic"] == "sum":
            checks.append(
                ("estimate", sums, _column(published, "estimate"), sensitivity(spec, "sum") / spec["epsilon"])
            )
        else:
            half = spec["epsilon"] / 2
            checks.append(("noisy_count", counts, _column(published, "noisy_count"), sensitivity(spec, "count") / half))
    reasons: list[str] = []
    for column, true, shown, scale in checks:
        if len(shown) != len(true) or not np.isfinite(shown).all():
            out["noise_test"] = f"not done: the file's {column} column does not match the categories"
            return reasons
        total = float(np.abs(shown - true).sum())
        p = float(gammainc(len(true), total / scale)) if scale > 0 else 0.0
        out["noise_test"] = {"column": column, "cells": len(true), "stated_scale": scale, "p_as_small": p}
        if p < FORGERY_P:
            reasons.append(
                f"the noise in {column} is far smaller than epsilon {spec['epsilon']:g} allows (chance {p:.1e} "
                "under the stated noise): the specification understates the privacy loss"
            )
    return reasons


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame:
        return np.array([np.nan])
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


def _result(
    status: str, reasons: list[str], epsilon: float | None, spec: dict[str, Any], rederived: dict[str, Any]
) -> dict[str, Any]:
    return {
        "rule": "dp_release",
        "status": status,
        "reasons": reasons,
        "dp": {
            "epsilon": epsilon,
            "stated_epsilon": spec.get("epsilon"),
            "statistic": spec.get("statistic"),
            "mechanism": spec.get("mechanism"),
            "rederived": rederived,
        },
    }
