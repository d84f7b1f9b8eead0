"""Benchmark: the overhead of re-running a submitted notebook in the re-run sandbox (ADR 0018), in one run.

Run (bubblewrap and the workspace runtime needed; root for the tmpfs home):
    python -m benchmarks.rerun [--rows 200000] [--runs 3] [--r]

``--r``: the same notebook written in R (the R kernel, the ``tre_*`` functions: two tables, a model, a
ggplot figure), re-run the same way (ADR 0029).

A typical notebook: load the project's extract (Parquet, ``--rows`` admissions), three tables through the
disclosure session (one on a filtered cohort), one model (OLS) and one figure, then ``finalise``.

* baseline: the same notebook executed by the workspace runtime's kernel (nbclient) with no sandbox, in
  one home kept from run to run, as a workspace runs it (caches warm after a first, untimed run): the
  code's own run time;
* value: ``jupyter.rerun.rerun`` on it, from the call (sandbox start) until the outputs are collected
  (the run, the image decoding sandbox and the copy out), each time in a fresh home with cold caches, as
  every re-run is.

The two take turns ``--runs`` times. Printed: median seconds of each, the overhead (value - baseline,
target <= 5 s) and the ratio value / baseline; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RUNTIME = Path(os.environ.get("TRE_WORKSPACE_RUNTIME", "/opt/tre-workspace"))
TARGET_OVERHEAD_SECONDS = 5.0

CELLS = [
    "import os\nimport matplotlib.pyplot as plt\nfrom disclosure.session import Session\n"
    "session = Session(suppress=True)\n"
    "admissions = session.read(os.path.join(os.environ['TRE_EXTRACT_DIR'], 'admissions', 'data'), "
    "dataset='admissions')",
    "by_region = session.crosstab(admissions.region, admissions.sex)\n"
    "adults = admissions[admissions.age >= 18]\n"
    "stay = session.pivot_table(adults, index='age_band', values='los', aggfunc='mean')\n"
    "smokers = admissions[admissions.smoker == 'yes']\n"
    "outcome = session.crosstab(smokers.age_band, smokers.outcome)",
    "model = session.olsr('los ~ age + C(sex) + C(smoker)', data=adults)",
    "ax = adults.groupby('age_band').size().plot.bar()\nplt.tight_layout()\nplt.savefig('outputs/by_age.png')",
    "session.finalise('outputs')",
]


R_CELLS = [
    'by_region <- tre_crosstab("admissions", "region", "sex", suppress = TRUE)\n'
    'outcome <- tre_crosstab("admissions", "age_band", "outcome", suppress = TRUE)',
    'model <- tre_model("admissions", "los ~ age + C(sex) + C(smoker)")',
    "library(ggplot2)\n"
    'counts <- tre_sql("select age_band, count(*) as n from admissions group by 1 order by 1")\n'
    'ggsave("outputs/by_age.png", ggplot(counts, aes(age_band, n)) + geom_col(), width = 5, height = 4, dpi = 72)',
    'tre_finalise("outputs")',
]
PYTHON3 = {"name": "python3", "display_name": "Python 3", "language": "python"}
IR = {"name": "ir", "display_name": "R", "language": "R"}


def notebook(sources: list[str] = CELLS, kernelspec: dict[str, str] = PYTHON3) -> str:
    cells = [
        {"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None, "outputs": [], "source": source}
        for i, source in enumerate(sources)
    ]
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": kernelspec}, "cells": cells})


def write_extract(root: Path, rows: int) -> Path:
    rng = np.random.default_rng(2026)
    age = rng.integers(0, 100, rows)
    frame = pd.DataFrame(
        {
            "region": rng.choice(["north", "south", "east", "west", "midlands"], rows),
            "sex": rng.choice(["F", "M"], rows),
            "age": age,
            "age_band": pd.cut(
                age, [-1, 17, 44, 64, 79, 200], labels=["0-17", "18-44", "45-64", "65-79", "80+"]
            ).astype(str),
            "smoker": rng.choice(["yes", "no"], rows, p=[0.2, 0.8]),
            "outcome": rng.choice(["home", "transfer", "died"], rows, p=[0.85, 0.12, 0.03]),
            "los": rng.gamma(2.0, 2.5, rows).round(1),
        }
    )
    data = root / "admissions" / "data"
    data.mkdir(parents=True)
    frame.to_parquet(data / "part-00000.parquet")
    (root / "admissions" / "manifest.json").write_text(json.dumps({"rows": rows}))
    return root


def direct(home: Path, code: Path, extract: Path) -> float:
    """The notebook as a workspace's kernel runs it: the runtime, nbclient, no sandbox, in one home kept
    from run to run (its caches warm, as a workspace's are after the first run)."""
    shutil.rmtree(home / "outputs", ignore_errors=True)
    (home / "outputs").mkdir(parents=True)
    shutil.copyfile(code, home / "analysis.ipynb")
    env = {
        "PATH": f"{RUNTIME}/bin:/usr/bin:/bin",
        "HOME": str(home),
        "TRE_EXTRACT_DIR": str(extract),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    driver = REPO / "jupyter" / "rerun_driver.py"
    status_file = home.parent / "direct-status.json"
    started = time.monotonic()
    subprocess.run(
        [
            str(RUNTIME / "bin" / "python"),
            str(driver),
            "run",
            "notebook",
            str(home / "analysis.ipynb"),
            str(status_file),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    seconds = time.monotonic() - started
    status = json.loads(status_file.read_text())
    if status.get("status") != "ok":
        raise SystemExit(f"the notebook failed when run directly: {status}")
    return seconds


def sandboxed(base: Path, code: Path, extract: Path) -> tuple[float, dict[str, Any]]:
    from jupyter.client import extract_version
    from jupyter.rerun import rerun

    work = base / "work"
    work.mkdir(parents=True)
    plan = {
        "runtime": str(RUNTIME),
        "work": str(work),
        "code_file": str(code),
        "code_path": "analysis.ipynb",
        "kind": "notebook",
        "extract": str(extract),
        "extract_version": extract_version(extract),
        "limits": {"memory_bytes": 4 * 1024**3, "wall_seconds": 600},
    }
    started = time.monotonic()
    answer = rerun(plan)
    seconds = time.monotonic() - started
    if answer["status"] != "done":
        raise SystemExit(f"the re-run failed: {answer['reason']}")
    return seconds, answer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the extract")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each, taking turns")
    parser.add_argument("--r", action="store_true", help="the notebook in R (the R kernel) instead of Python")
    args = parser.parse_args(argv)
    cells, kernel = (R_CELLS, IR) if args.r else (CELLS, PYTHON3)
    if not (RUNTIME / "bin" / "python").exists() or shutil.which("bwrap") is None:
        raise SystemExit(f"needs bubblewrap and the workspace runtime at {RUNTIME} (make workspace-runtime)")
    baseline_runs: list[float] = []
    value_runs: list[float] = []
    outputs: list[str] = []
    code_seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="tre-bench-rerun-") as tmp:
        root = Path(tmp)
        extract = write_extract(root / "extract", args.rows)
        code = root / "analysis.ipynb"
        code.write_text(notebook(cells, kernel))
        home = root / "workspace-home"
        direct(home, code, extract)  # the workspace's first run: its caches, and the page cache, warm
        for i in range(args.runs):
            baseline_runs.append(direct(home, code, extract))
            seconds, answer = sandboxed(root / f"rerun-{i}", code, extract)
            value_runs.append(seconds)
            code_seconds.append(answer["timings"]["code_seconds"])
            outputs = sorted(answer["files"])
        # The fixed cost alone: a notebook of one cell that does nothing, the same two ways.
        empty = root / "empty.ipynb"
        empty.write_text(notebook(["1"], kernel))
        empty_direct, empty_rerun = [], []
        for i in range(args.runs):
            empty_direct.append(direct(home, empty, extract))
            empty_rerun.append(sandboxed(root / f"empty-{i}", empty, extract)[0])
    value, baseline = statistics.median(value_runs), statistics.median(baseline_runs)
    result = {
        "benchmark": "rerun",
        "unit": "seconds (median; re-run: sandbox start to outputs collected; baseline: the notebook run directly)",
        "value": round(value, 3),
        "baseline": round(baseline, 3),
        "ratio": round(value / baseline, 3),
        "overhead_seconds": round(value - baseline, 3),
        "target_overhead_seconds": TARGET_OVERHEAD_SECONDS,
        "within_target": value - baseline <= TARGET_OVERHEAD_SECONDS,
        "language": "r" if args.r else "python",
        "rows": args.rows,
        "runs": args.runs,
        "rerun_runs": [round(x, 3) for x in value_runs],
        "rerun_code_seconds": [round(x, 3) for x in code_seconds],
        "direct_runs": [round(x, 3) for x in baseline_runs],
        "outputs": outputs,
        "empty_notebook": {
            "rerun_median": round(statistics.median(empty_rerun), 3),
            "direct_median": round(statistics.median(empty_direct), 3),
            "overhead_seconds": round(statistics.median(empty_rerun) - statistics.median(empty_direct), 3),
        },
        "load_average": os.getloadavg()[0],
    }
    print(
        f"re-run, median of {args.runs}: {value:.2f} s sandboxed, {baseline:.2f} s directly; overhead "
        f"{value - baseline:.2f} s (target <= {TARGET_OVERHEAD_SECONDS:.0f} s), ratio {value / baseline:.2f}",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
