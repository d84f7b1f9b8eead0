"""Rules for outputs other than frequency and magnitude tables.

Each function takes the statistic's inputs (never a plot) and returns a JSON verdict built from
``verdict.criterion`` records, so every criterion applied is written down with its parameters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from disclosure.engine.labels import jsonable
from disclosure.engine.policy import Policy, default_policy
from disclosure.engine.verdict import criterion, simple_verdict


def check_regression(
    model_results: Any,
    *,
    categorical_counts: dict[str, pd.Series] | None = None,
    policy: Policy | None = None,
    method: str = "ols",
) -> dict[str, Any]:
    """Residual degrees of freedom, and small levels of categorical regressors.

    Only coefficient tables may be released: residuals and predictions are individual-level values, so the
    session never writes them, and the verdict records that convention.
    """
    policy = policy or default_policy()
    min_dof = policy.get("regression", "min_dof")
    dof = float(model_results.df_resid)
    criteria = [
        criterion(
            "residual_dof",
            "pass" if dof >= min_dof else "fail",
            {"min_dof": min_dof},
            f"residual degrees of freedom {dof:g} below {min_dof}" if dof < min_dof else "",
            value=dof,
        )
    ]
    t = policy.get("regression", "categorical_threshold")
    small = {}
    for name, counts in (categorical_counts or {}).items():
        low = counts[(counts > 0) & (counts < t)]
        if len(low):
            small[name] = {str(jsonable(k)): int(v) for k, v in low.items()}
    criteria.append(
        criterion(
            "categorical_levels",
            "review" if small else "pass",
            {"threshold": t},
            f"levels with fewer than {t} rows: {small}" if small else "",
            levels=small,
        )
    )
    criteria.append(criterion("no_residuals", "pass", {}, "", convention="only coefficient tables released"))
    return simple_verdict("regression", policy, criteria, method=method)


def check_regression_numbers(
    residual_dof: float | None,
    *,
    residuals_printed: str | None = None,
    unread: list[str] | None = None,
    policy: Policy | None = None,
) -> dict[str, Any]:
    """``check_regression``'s rules applied to numbers read from a printed model summary, not a fit.

    The same criteria with the same policy parameters, with what text cannot show said so: the levels of
    categorical regressors are never visible, so that criterion is *review*; residuals printed by the
    summary (R's "Residuals:" block: Min and Max, or every residual) break the convention that only
    coefficient tables are released; a residual dof that could not be read is *review* with the reason.
    """
    policy = policy or default_policy()
    min_dof = policy.get("regression", "min_dof")
    if residual_dof is None:
        dof_rule = criterion(
            "residual_dof",
            "review",
            {"min_dof": min_dof},
            "; ".join(unread or ["the residual degrees of freedom could not be read"]) + ": check it by hand",
            value=None,
        )
    else:
        low = residual_dof < min_dof
        dof_rule = criterion(
            "residual_dof",
            "fail" if low else "pass",
            {"min_dof": min_dof},
            f"residual degrees of freedom {residual_dof:g} below {min_dof}" if low else "",
            value=residual_dof,
        )
    t = policy.get("regression", "categorical_threshold")
    levels = criterion(
        "categorical_levels",
        "review",
        {"threshold": t},
        f"the rows in each level of a categorical regressor cannot be seen in a printed summary: check by hand "
        f"that every level has at least {t} rows",
        levels=None,
    )
    if residuals_printed is None:
        shown = criterion("no_residuals", "pass", {}, "", convention="only coefficient tables released")
    else:
        reason = (
            "every residual is printed: one person's value each"
            if residuals_printed == "all"
            else "the residuals' minimum and maximum are printed: one person's values each"
        )
        if residuals_printed != "all" and dof_rule["status"] == "fail":
            reason += "; with so few residual degrees of freedom their quartiles are nearly individual values too"
        shown = criterion(
            "no_residuals",
            "fail" if dof_rule["status"] == "fail" else "review",
            {},
            reason,
            convention="only coefficient tables released",
            printed=residuals_printed,
        )
    return simple_verdict("regression", policy, [dof_rule, levels, shown], method="text")


def dummy_counts(exog: pd.DataFrame) -> dict[str, pd.Series]:
    """Counts of 0 and 1 in each 0/1 column of a design matrix: a dummy with few 1s is a small cell."""
    out = {}
    for col in exog.columns:
        values = pd.Series(exog[col]).dropna()
        if len(values) and values.isin([0, 1]).all() and values.nunique() == 2:
            out[str(col)] = values.value_counts()
    return out


def padded_edges(values: pd.Series, bins: Any) -> Any:
    """Bin edges for a histogram whose bins were given as a number: numpy would put the outer edges at the
    data's minimum and maximum (one person's values each), so the same number of equal bins is laid over a
    range widened to round values strictly beyond the data. Explicit edges are returned unchanged."""
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        return bins
    x = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=np.float64)
    if x.size == 0:
        return bins
    low, high = float(x.min()), float(x.max())
    span = (high - low) / int(bins) or abs(high) or 1.0
    step = 10.0 ** np.floor(np.log10(span))
    start, stop = np.floor(low / step) * step, np.ceil(high / step) * step
    start = start - step if start >= low else start
    stop = stop + step if stop <= high else stop
    return np.linspace(start, stop, int(bins) + 1)


def check_histogram(
    values: pd.Series, bins: int | np.ndarray = 10, *, policy: Policy | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Counts per bin must meet the threshold (empty bins allowed); outer edges must not be the data's
    own minimum and maximum, which is what numpy's automatic edges are."""
    policy = policy or default_policy()
    x = pd.to_numeric(values, errors="coerce").dropna().to_numpy()
    counts, edges = np.histogram(x, bins=bins)
    t = policy.get("histogram", "threshold")
    small = (counts > 0) & (counts < t)
    table = pd.DataFrame({"left": edges[:-1], "right": edges[1:], "count": counts})
    criteria = [
        criterion(
            "threshold",
            "fail" if small.any() else "pass",
            {"threshold": t},
            f"{int(small.sum())} bin(s) with fewer than {t} values" if small.any() else "",
            bins=[int(i) for i in np.flatnonzero(small)],
        )
    ]
    exposes = len(x) > 0 and (np.isclose(edges[0], x.min()) or np.isclose(edges[-1], x.max()))
    mode = policy.get("histogram", "extreme_edges")
    criteria.append(
        criterion(
            "extreme_edges",
            mode if exposes else "pass",
            {},
            "outer bin edges equal the minimum/maximum value" if exposes else "",
        )
    )
    return table, simple_verdict("histogram", policy, criteria)


def check_category_counts(
    values: pd.Series, *, policy: Policy | None = None, output_type: str = "pie chart"
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Bar and pie charts are frequency tables drawn differently: every category needs enough people."""
    policy = policy or default_policy()
    counts = values.value_counts(dropna=True, sort=False).sort_index()
    t = policy.get("frequency", "threshold")
    small = counts[(counts > 0) & (counts < t)]
    crit = criterion(
        "threshold",
        "fail" if len(small) else "pass",
        {"threshold": t},
        f"categories with fewer than {t}: {[jsonable(k) for k in small.index]}" if len(small) else "",
        cells=[jsonable(k) for k in small.index],
    )
    return counts.rename("count").to_frame(), simple_verdict(output_type, policy, [crit])


def survival_table(time: pd.Series, status: pd.Series) -> pd.DataFrame:
    """Kaplan-Meier life table: at risk, events and survival at each distinct event/censoring time."""
    df = pd.DataFrame({"t": pd.to_numeric(time), "e": pd.to_numeric(status)}).dropna()
    grouped = df.groupby("t", sort=True)["e"].agg(events="sum", exits="count")
    grouped["at_risk"] = grouped["exits"][::-1].cumsum()[::-1]
    grouped["survival"] = (1 - grouped["events"] / grouped["at_risk"]).cumprod()
    return grouped[["at_risk", "events", "survival"]]


def check_survival(
    time: pd.Series, status: pd.Series, *, policy: Policy | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Events and numbers at risk per reported time must meet the threshold.

    A step of a KM curve with one event reveals a person's event time; mitigation (coarsening time
    intervals) is for the researcher, so the engine fails the table and says which times.
    """
    policy = policy or default_policy()
    t = policy.get("survival", "threshold")
    table = survival_table(time, status)
    small_events = (table["events"] > 0) & (table["events"] < t)
    small_risk = table["at_risk"] < t
    crit = [
        criterion(
            "events_threshold",
            "fail" if small_events.any() else "pass",
            {"threshold": t},
            f"{int(small_events.sum())} time(s) with 1..{t - 1} events" if small_events.any() else "",
            times=[jsonable(v) for v in table.index[small_events]],
        ),
        criterion(
            "at_risk_threshold",
            "fail" if small_risk.any() else "pass",
            {"threshold": t},
            f"{int(small_risk.sum())} time(s) with fewer than {t} at risk" if small_risk.any() else "",
            times=[jsonable(v) for v in table.index[small_risk]],
        ),
    ]
    return table, simple_verdict("survival table", policy, crit)


def check_quantile(values: pd.Series, q: float, *, policy: Policy | None = None) -> tuple[float, dict]:
    """A quantile is safe only with enough contributors on each side of it (else it is nearly a value)."""
    policy = policy or default_policy()
    x = pd.to_numeric(values, errors="coerce").dropna().to_numpy()
    t = policy.get("quantile", "threshold")
    side = policy.get("quantile", "min_either_side")
    value = float(np.quantile(x, q)) if len(x) else float("nan")
    below, above = int((x < value).sum()), int((x > value).sum())
    crit = [
        criterion(
            "threshold",
            "fail" if len(x) < t else "pass",
            {"threshold": t},
            f"{len(x)} contributors" if len(x) < t else "",
        ),
        criterion(
            "either_side",
            "fail" if min(below, above) < side else "pass",
            {"min_either_side": side},
            f"{below} below and {above} above the quantile" if min(below, above) < side else "",
            below=below,
            above=above,
        ),
    ]
    return value, simple_verdict("quantile", policy, crit, q=q)


def check_extreme(kind: str, *, policy: Policy | None = None) -> dict[str, Any]:
    """Minima and maxima are one person's value: never released as exact values without review."""
    policy = policy or default_policy()
    status = policy.get("extremes", "status")
    return simple_verdict(
        "extreme",
        policy,
        [criterion("exact_extreme", status, {}, f"the {kind} is an individual's exact value")],
        kind=kind,
    )


def check_mode(values: pd.Series, *, policy: Policy | None = None) -> tuple[Any, dict[str, Any]]:
    """Mode chosen deterministically (smallest of tied values, never at random) with a threshold."""
    policy = policy or default_policy()
    t = policy.get("mode", "threshold")
    counts = values.dropna().value_counts()
    if counts.empty:
        return None, simple_verdict("mode", policy, [criterion("threshold", "fail", {"threshold": t}, "no data")])
    top = counts[counts == counts.max()]
    mode = sorted(top.index)[0]
    n = int(counts.max())
    return mode, simple_verdict(
        "mode",
        policy,
        [
            criterion(
                "threshold",
                "fail" if n < t else "pass",
                {"threshold": t},
                f"only {n} contributors have the modal value" if n < t else "",
                ties=len(top),
            )
        ],
    )
