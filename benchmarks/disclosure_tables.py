"""Benchmark: checked 3-way count and mean tables against plain pandas and against ACRO.

Run:  python -m benchmarks.disclosure_tables [--rows 5000000] [--no-acro] [--person]

Builds synthetic microdata (skewed category frequencies, so some cells are small and suppression has work
to do), then times, in the same process and on the same data:

- baseline: ``pandas.crosstab`` (count) + ``pandas.pivot_table`` (mean) for the same ~18,000-cell table;
- ours: ``check_frequency_table`` + ``check_magnitude_table`` with every rule, primary and secondary
  suppression, and the interval audit in its "auto" mode (exact LP up to ``AUDIT_CELL_LIMIT`` primary
  cells, else certificates: plane boxes, prisms, summed moves, and a time-boxed LP for any cell they
  miss); also timed without audit;
- ACRO 1.0.2's checked crosstab (if ``.venv-acro`` exists, see benchmarks/acro_env.sh), in a subprocess
  because ACRO needs pandas < 3; it reads the same columns from .npy files;
- the researcher's path, ``disclosure.compat.ACRO(suppress=True).crosstab`` for the count and the mean,
  each against the same ``pandas.crosstab`` call (``compat_count_ratio``, ``compat_mean_ratio``; target
  <= 1.5) and against the same call of ACRO's crosstab (``compat_acro_speedup`` for the count,
  ``compat_acro_mean_speedup`` for the mean; target >= 30); ACRO's mean crosstab is slow (minutes on a busy
  machine), so it runs once, not best of ``--repeat``;
- with ``--dp``, the session's differentially private counts and means (``dp_count``, ``dp_mean``) against
  the same ``pandas.crosstab`` calls.

Before the JSON it prints the researcher's path as a few lines of text: each time, its ratio to pandas and
ACRO's speed-up, with the targets. The last line printed is one JSON object (benchmark, value, baseline,
ratio, target, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from disclosure.compat import ACRO
from disclosure.engine.tables import check_frequency_table, check_magnitude_table

ROOT = Path(__file__).resolve().parent.parent
ACRO_PYTHON = Path(os.environ.get("ACRO_VENV", ROOT / ".venv-acro")) / "bin" / "python"
SHAPE = (30, 30, 20)  # 18,000 cells


def synthetic(rows: int, seed: int = 20261123) -> pd.DataFrame:
    """Skewed categorical data: Zipf-like weights give a long tail of small cells, as real data does."""
    rng = np.random.default_rng(seed)
    cols = {}
    for name, n in zip(("region", "age_band", "condition"), SHAPE, strict=True):
        weights = 1.0 / np.arange(1, n + 1) ** 1.1
        cols[name] = rng.choice(n, size=rows, p=weights / weights.sum()).astype(np.int64)
    cols["cost"] = rng.lognormal(mean=5.0, sigma=1.0, size=rows)
    cols["person"] = rng.integers(0, max(rows // 3, 1), size=rows)
    return pd.DataFrame(cols)


def _audit_summary(result) -> dict:
    audit = result.verdict["mitigation"].get("suppression", {}).get("audit", {})
    methods = [i["method"] for i in audit.get("intervals", [])]
    return {
        "status": audit.get("status"),
        "box": methods.count("box"),
        "lp": methods.count("lp"),
        "unproven": len(audit.get("unproven", [])),
        "lp_solved": audit.get("lp_solved"),
    }


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


_ACRO_SCRIPT = textwrap.dedent("""
    import json, sys, time, logging
    import numpy as np, pandas as pd
    logging.disable(logging.CRITICAL)
    from acro import ACRO
    folder, mean, repeat, crosstab_mean = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4] == "1"
    df = pd.DataFrame({k: np.load(f"{folder}/{k}.npy") for k in ("region", "age_band", "condition", "cost")})
    acro = ACRO(suppress=False)
    out = {}
    out["crosstab"] = out["crosstab_cpu"] = float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        acro.crosstab([df.region, df.age_band], df.condition)
        out["crosstab"] = min(out["crosstab"], time.perf_counter() - t)
        out["crosstab_cpu"] = min(out["crosstab_cpu"], time.process_time() - c)
    if crosstab_mean:
        t, c = time.perf_counter(), time.process_time()
        acro.crosstab([df.region, df.age_band], df.condition, values=df.cost, aggfunc="mean")
        out["crosstab_mean"] = time.perf_counter() - t
        out["crosstab_mean_cpu"] = time.process_time() - c
    if mean:
        t = time.perf_counter()
        acro.pivot_table(df, values="cost", index=["region", "age_band"], columns="condition", aggfunc="mean")
        out["mean"] = time.perf_counter() - t
    print(json.dumps(out))
""")


def time_acro(df: pd.DataFrame, with_mean: bool, repeat: int = 1, crosstab_mean: bool = True) -> dict | None:
    """ACRO's own timings (its count crosstab best of ``repeat``, like ours; its mean crosstab once), or None
    when its venv is absent."""
    if not ACRO_PYTHON.exists():
        return None
    with tempfile.TemporaryDirectory() as folder:
        for k in ("region", "age_band", "condition", "cost"):
            np.save(f"{folder}/{k}.npy", df[k].to_numpy())
        proc = subprocess.run(
            [
                str(ACRO_PYTHON),
                "-c",
                _ACRO_SCRIPT,
                folder,
                "1" if with_mean else "0",
                str(repeat),
                "1" if crosstab_mean else "0",
            ],
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
            cwd=folder,
        )
    if proc.returncode != 0:
        print("ACRO run failed:", proc.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def interleaved_best(calls: dict, repeat: int) -> dict[str, tuple[float, float]]:
    """Best wall-clock and best CPU seconds of each call, the calls taking turns within each repetition, so
    that a burst of load on a shared machine falls on all of them rather than on one."""
    best = {name: (float("inf"), float("inf")) for name in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def time_compat(df: pd.DataFrame, repeat: int) -> dict:
    """The researcher's path (compat crosstab with suppression) against the same pandas.crosstab call.

    Ratios are of wall-clock time (the target); ``*_cpu_ratio`` are of CPU time, steadier on a busy machine
    (both are single-threaded)."""
    rows, col = [df.region, df.age_band], df.condition
    session = ACRO(suppress=True)
    best = interleaved_best(
        {
            "pandas_count": lambda: pd.crosstab(rows, col),
            "compat_count": lambda: session.crosstab(rows, col),
            "pandas_mean": lambda: pd.crosstab(rows, col, values=df.cost, aggfunc="mean"),
            "compat_mean": lambda: session.crosstab(rows, col, values=df.cost, aggfunc="mean"),
        },
        max(repeat, 3),  # cheap next to the rest of the run, and a single time is at the mercy of the load
    )
    out: dict = {}
    for stat in ("count", "mean"):
        (ours, ours_cpu), (base, base_cpu) = best[f"compat_{stat}"], best[f"pandas_{stat}"]
        out[f"pandas_crosstab_{stat}_seconds"] = round(base, 3)
        out[f"compat_{stat}_seconds"] = round(ours, 3)
        out[f"compat_{stat}_ratio"] = round(ours / base, 3)
        out[f"pandas_crosstab_{stat}_cpu_seconds"] = round(base_cpu, 3)
        out[f"compat_{stat}_cpu_seconds"] = round(ours_cpu, 3)
        out[f"compat_{stat}_cpu_ratio"] = round(ours_cpu / base_cpu, 3)
    out["compat_target"] = "ratios <= 1.5 (vs pandas.crosstab); compat_acro_speedup, compat_acro_mean_speedup >= 30"
    return out


def time_dp(df: pd.DataFrame, repeat: int, pandas_seconds: dict[str, float]) -> dict:
    """The session's DP counts and means over the public category lists, against the same pandas calls."""
    session = ACRO(suppress=True)
    dims = ["region", "age_band", "condition"]
    categories = {d: list(range(n)) for d, n in zip(dims, SHAPE, strict=True)}
    bounds = (0.0, float(df.cost.quantile(0.99)))
    t_count, _ = best_of(lambda: session.dp_count(df, dims, categories, epsilon=1.0), repeat)
    t_mean, _ = best_of(lambda: session.dp_mean(df, dims, categories, "cost", bounds, epsilon=1.0), repeat)
    return {
        "dp_count_seconds": round(t_count, 3),
        "dp_mean_seconds": round(t_mean, 3),
        "dp_count_ratio": round(t_count / pandas_seconds["count"], 3),
        "dp_mean_ratio": round(t_mean / pandas_seconds["mean"], 3),
    }


def describe(result: dict) -> str:
    """The researcher's path in words: each time, its ratio to pandas and ACRO's speed-up, with the targets
    (wall clock; CPU time in brackets, steadier on a shared machine)."""
    lines = [
        f"researcher's path, ACRO(suppress=True).crosstab, {result['rows']:,} rows, {result['cells']:,} cells "
        "(wall clock; CPU in brackets):"
    ]
    for stat in ("count", "mean"):
        ours, base = result[f"compat_{stat}_seconds"], result[f"pandas_crosstab_{stat}_seconds"]
        line = (
            f"  {stat:5s} {ours:7.3f} s = {result[f'compat_{stat}_ratio']:.2f}x "
            f"[{result[f'compat_{stat}_cpu_ratio']:.2f}x] pandas.crosstab ({base:.3f} s; target <= 1.5x)"
        )
        acro_key = "acro_crosstab_seconds" if stat == "count" else "acro_crosstab_mean_seconds"
        speed_key = "compat_acro_speedup" if stat == "count" else "compat_acro_mean_speedup"
        cpu_key = "compat_acro_cpu_speedup" if stat == "count" else "compat_acro_mean_cpu_speedup"
        if speed_key in result:
            line += (
                f"; {result[speed_key]:.1f}x [{result[cpu_key]:.1f}x] faster than ACRO's crosstab "
                f"({result[acro_key]:.2f} s; target >= 30x)"
            )
        else:
            line += "; ACRO not run"
        lines.append(line)
    for stat in ("count", "mean"):
        if f"dp_{stat}_seconds" in result:
            lines.append(
                f"  dp {stat:5s} {result[f'dp_{stat}_seconds']:7.3f} s = {result[f'dp_{stat}_ratio']:.2f}x "
                f"pandas.crosstab (session.dp_{stat}, epsilon 1)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="best of N, for ours, pandas and ACRO's crosstab")
    parser.add_argument("--no-acro", action="store_true", help="skip ACRO even if its venv exists")
    parser.add_argument("--acro-mean", action="store_true", help="also time ACRO's mean table (slow)")
    parser.add_argument("--person", action="store_true", help="also time contributors as distinct people")
    parser.add_argument("--no-acro-crosstab-mean", action="store_true", help="skip ACRO's mean crosstab (minutes)")
    parser.add_argument("--dp", action="store_true", help="also time the session's DP counts and means")
    args = parser.parse_args(argv)

    df = synthetic(args.rows)
    dims = ["region", "age_band", "condition"]

    def pandas_tables():
        counts = pd.crosstab([df.region, df.age_band], df.condition)
        means = pd.pivot_table(
            df,
            values="cost",
            index=["region", "age_band"],
            columns="condition",
            aggfunc="mean",
            observed=True,
        )
        return counts, means

    def our_tables():
        counts = check_frequency_table(df, dims, mitigation="suppress")
        means = check_magnitude_table(df, dims, "cost", statistic="mean", mitigation="suppress")
        return counts, means

    t_pandas, (p_counts, _) = best_of(pandas_tables, args.repeat)
    t_ours, (counts, means) = best_of(our_tables, args.repeat)
    # Same numbers as pandas, or the comparison is meaningless.
    ours_counts = counts.table(released=False)
    np.testing.assert_array_equal(
        ours_counts.to_numpy()[: p_counts.shape[0], : p_counts.shape[1]].sum(), p_counts.to_numpy().sum()
    )

    result = {
        "benchmark": "disclosure_tables_3way_count_and_mean",
        "rows": args.rows,
        "cells": int(np.prod(counts.stats.shape)),
        "value": round(t_ours, 3),
        "baseline": round(t_pandas, 3),
        "ratio": round(t_ours / t_pandas, 3),
        "target": "ratio <= 2.0 (vs pandas); acro_speedup >= 20",
        "unit": "seconds",
        "count_suppressed": {
            k: counts.verdict["mitigation"].get("suppression", {}).get(k) for k in ("primary", "secondary")
        },
        "mean_suppressed": {
            k: means.verdict["mitigation"].get("suppression", {}).get(k) for k in ("primary", "secondary")
        },
        "audit": [_audit_summary(counts), _audit_summary(means)],
    }
    t_no_audit, _ = best_of(
        lambda: (
            check_frequency_table(df, dims, audit=False),
            check_magnitude_table(df, dims, "cost", audit=False),
        ),
        1,
    )
    result["value_without_audit"] = round(t_no_audit, 3)
    result["ratio_without_audit"] = round(t_no_audit / t_pandas, 3)
    if args.person:
        t_person, _ = best_of(
            lambda: (
                check_frequency_table(df, dims, person="person"),
                check_magnitude_table(df, dims, "cost", person="person"),
            ),
            1,
        )
        result["value_with_person_ids"] = round(t_person, 3)
    result.update(time_compat(df, args.repeat))
    if args.dp:
        pandas_seconds = {
            "count": result["pandas_crosstab_count_seconds"],
            "mean": result["pandas_crosstab_mean_seconds"],
        }
        result.update(time_dp(df, args.repeat, pandas_seconds))
    acro = None if args.no_acro else time_acro(df, args.acro_mean, args.repeat, not args.no_acro_crosstab_mean)
    if acro is None:
        result["acro"] = "not run (no .venv-acro; run benchmarks/acro_env.sh)" if not args.no_acro else "skipped"
    else:
        result["acro_crosstab_seconds"] = round(acro["crosstab"], 3)
        t_count, _ = best_of(lambda: check_frequency_table(df, dims, mitigation="suppress"), args.repeat)
        result["ours_crosstab_seconds"] = round(t_count, 3)
        result["acro_speedup"] = round(acro["crosstab"] / t_count, 1)
        result["compat_acro_speedup"] = round(acro["crosstab"] / result["compat_count_seconds"], 1)
        result["acro_crosstab_cpu_seconds"] = round(acro["crosstab_cpu"], 3)
        result["compat_acro_cpu_speedup"] = round(acro["crosstab_cpu"] / result["compat_count_cpu_seconds"], 1)
        if "crosstab_mean" in acro:
            result["acro_crosstab_mean_seconds"] = round(acro["crosstab_mean"], 3)
            result["compat_acro_mean_speedup"] = round(acro["crosstab_mean"] / result["compat_mean_seconds"], 1)
            result["acro_crosstab_mean_cpu_seconds"] = round(acro["crosstab_mean_cpu"], 3)
            result["compat_acro_mean_cpu_speedup"] = round(
                acro["crosstab_mean_cpu"] / result["compat_mean_cpu_seconds"], 1
            )
        if "mean" in acro:
            t_mean, _ = best_of(lambda: check_magnitude_table(df, dims, "cost", mitigation="suppress"), 1)
            result["acro_mean_seconds"] = round(acro["mean"], 3)
            result["acro_mean_speedup"] = round(acro["mean"] / t_mean, 1)
    print(describe(result))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
