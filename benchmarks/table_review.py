"""Benchmark: building the checker's view of a table (tre/web/table_review.py) while the page waits.

Run:  python -m benchmarks.table_review [--rows 50] [--cols 50] [--repeat 3]

A count table of ``rows`` x ``cols`` cells (default 2,500, the largest for which the page works out the
suppression preview) with skewed counts, so that some cells are small and suppression has work to do,
written as a CSV with a total row and column as pandas writes it. Timed in the same process:

- baseline: the automated check of the same file as the worker runs it (``read_published_table`` and
  ``check_published_counts`` with no mitigation), i.e. the work the service already does per file;
- ours: ``build_review`` from the file and that stored verdict: reading the file, matching every flagged
  cell by its labels, and the suppression preview (primary and secondary suppression with its interval
  audit in "auto" mode).

The last line printed is one JSON object (benchmark, value, baseline, ratio, ...).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from disclosure.engine import check_published_counts, default_policy
from disclosure.engine.published import read_published_table
from tre.web.table_review import build_review


def table_csv(rows: int, cols: int, seed: int = 20261206) -> bytes:
    rng = np.random.default_rng(seed)
    weights = np.outer(1.0 / np.arange(1, rows + 1) ** 0.9, 1.0 / np.arange(1, cols + 1) ** 0.9)
    counts = rng.poisson(weights / weights.sum() * rows * cols * 120)
    frame = pd.DataFrame(counts, index=[f"area {i}" for i in range(rows)], columns=[f"group {j}" for j in range(cols)])
    frame.index.name = "area"
    frame["Total"] = frame.sum(axis=1)
    frame.loc["Total"] = frame.sum(axis=0)
    return frame.to_csv().encode()


def best_of(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--cols", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    policy = default_policy()
    content = table_csv(args.rows, args.cols)

    def check() -> dict:
        table = read_published_table(content)
        return check_published_counts(table.values, policy=policy, mitigation="none").verdict

    baseline, verdict = best_of(check, args.repeat)
    ours, review = best_of(lambda: build_review(content, None, verdict, [], policy=policy), args.repeat)
    flagged = review.before.flagged if review.before else 0
    suppressed = review.after.suppressed if review.after else 0
    print(
        f"table {args.rows} x {args.cols} = {args.rows * args.cols:,} cells; {flagged} flagged, "
        f"{suppressed} suppressed in the preview"
    )
    print(f"baseline (the automated check of the file): {baseline * 1000:.1f} ms")
    print(f"ours (the checker's view with the suppression preview): {ours * 1000:.1f} ms")
    print(f"preview note: {review.after_note}")
    print(
        json.dumps(
            {
                "benchmark": "table_review",
                "cells": args.rows * args.cols,
                "value": round(ours, 4),
                "baseline": round(baseline, 4),
                "baseline_name": "automated check of the same file (mitigation none)",
                "ratio": round(ours / baseline, 2) if baseline else None,
                "unit": "seconds",
                "flagged": flagged,
                "suppressed": suppressed,
            }
        )
    )


if __name__ == "__main__":
    main()
