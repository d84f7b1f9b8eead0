"""Benchmark: the person index core against a plain Splink run of the same model, in one process.

Run:  python -m benchmarks.linkage [--people 50000] [--sources three|two] [--seed 20] [--threads 2]
           [--backend duckdb|spark] [--memory-limit 12GB]

The issue's size is ``--sources two --people 1000000``: a hospital and a social care source of one
million records each (every person in both; numbers on 97% and 20% of them).

Makes linkable hospital, GP and social care sources with the demo generator's errors at its stated
rates (``tre/demo/linkage_sources.py``: typos, nicknames, swapped names, transposed day and month,
moved house, missing and wrong NHS numbers), then times, on the same records and in the same process:

- **baseline**: plain Splink on DuckDB with exactly the core's model (``linkage.splink_settings``:
  same comparisons, blocking rules and prior; same training: u by sampling, m by EM twice) on the
  core's cleaned table (``linkage.splink_frame``), predict at the threshold and Splink's own connected
  components at the threshold;
- **value**: ``linkage.link_records`` (cleaning, the deterministic NHS number stage, the same Splink
  model, the uncertain band and match weight counts, clustering that never joins two valid numbers).

Pairwise precision and recall of both are measured against the generator's truth. Each arm's wall
time and process CPU time (DuckDB's threads included) are printed with the load averages after it: on a
shared machine the wall ratio follows the other work's load, the CPU ratio much less. The last line
printed is one JSON object (benchmark, value, baseline, ratio, cpu_ratio, target, precision, recall,
...). At 1M x 1M plain Splink alone took 23 minutes of a loaded 2-core machine and the process peaked
at 13.5 GiB with ``--memory-limit 12GB`` (docs/operations.md, "Record linkage at scale").
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from itertools import combinations
from typing import Any

from splink import Linker

from pseudonymisation import linkage
from tre.demo import linkage_sources

TARGET_RATIO = 1.2
PRECISION_FLOOR = 0.99
RECALL_FLOOR = 0.97


def pairs(groups: Iterable[list[tuple[str, str]]]) -> set[tuple[tuple[str, str], tuple[str, str]]]:
    out: set[tuple[tuple[str, str], tuple[str, str]]] = set()
    for members in groups:
        out.update(combinations(sorted(members), 2))
    return out


def quality(found: dict[tuple[str, str], Any], truth: dict[tuple[str, str], int]) -> tuple[float, float]:
    predicted_groups: dict[Any, list[tuple[str, str]]] = defaultdict(list)
    for key, cluster in found.items():
        predicted_groups[cluster].append(key)
    true_groups: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for key, person in truth.items():
        true_groups[person].append(key)
    predicted, actual = pairs(predicted_groups.values()), pairs(true_groups.values())
    both = len(predicted & actual)
    return both / max(len(predicted), 1), both / max(len(actual), 1)


def plain_splink(records: list[linkage.Record], settings: linkage.LinkageSettings) -> dict[tuple[str, str], Any]:
    """Splink alone, same model, training and backend, clustered by Splink at the same threshold."""
    ordered = sorted(records, key=lambda r: (r.source, r.record_id))
    frame = linkage.splink_frame(records, settings)
    with linkage.splink_backend(settings) as api:
        linker = Linker(linkage.register_frame(api, frame, settings), linkage.splink_settings(frame, settings),
                        log_level=None)
        linkage.train_linker(linker, settings, len(frame))
        predictions = linker.inference.predict(threshold_match_probability=settings.threshold)
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
            predictions, threshold_match_probability=settings.threshold
        ).as_pandas_dataframe()
    cluster_of = dict(zip(clusters["unique_id"], clusters["cluster_id"], strict=True))
    return {(r.source, r.record_id): cluster_of[i] for i, r in enumerate(ordered)}


def load() -> str:
    """The machine's 1, 5 and 15 minute load averages, to read the wall times by."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024  # Linux: kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--sources", choices=("three", "two"), default="three",
                        help="three: hospital, GP, social care (the demo's); two: every person in both of "
                             "a hospital and a social care source (the issue's 1M x 1M shape)")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: DuckDB's choice)")
    parser.add_argument("--backend", choices=linkage.BACKENDS, default="duckdb")
    parser.add_argument("--memory-limit", default=None,
                        help="DuckDB's memory ceiling, e.g. 12GB; scored pairs beyond it spill to a temporary folder")
    args = parser.parse_args()

    import logging

    logging.getLogger("splink").setLevel(logging.ERROR)
    specs = linkage_sources.TWO_SOURCES if args.sources == "two" else linkage_sources.DEFAULT_SOURCES
    made = linkage_sources.generate(args.people, seed=args.seed, sources=specs)
    records = linkage_sources.records(made)
    spill = tempfile.TemporaryDirectory(prefix="tre-linkage-bench-")
    settings = linkage.LinkageSettings(threads=args.threads, backend=args.backend,
                                       duckdb_memory_limit=args.memory_limit,
                                       duckdb_temp_directory=spill.name if args.memory_limit else None)
    print(f"{len(records):,} records of {args.people:,} people: "
          + ", ".join(f"{n} {t.num_rows:,}" for n, t in made.tables.items()), flush=True)

    started, cpu_started = time.perf_counter(), time.process_time()
    baseline = plain_splink(records, settings)
    baseline_s, baseline_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"plain Splink (same model, its own clustering): {baseline_s:.1f} s ({baseline_cpu:.1f} s of CPU); "
          f"peak RSS {peak_rss_gib():.1f} GiB; load {load()}", flush=True)
    load_after_baseline = load()
    gc.collect()

    started, cpu_started = time.perf_counter(), time.process_time()
    result = linkage.link_records(records, settings)
    value_s, value_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"person index core: {value_s:.1f} s ({value_cpu:.1f} s of CPU); peak RSS {peak_rss_gib():.1f} GiB; "
          f"load {load()}", flush=True)
    load_after_value = load()

    precision, recall = quality({(lk.source, lk.record_id): lk.person_id for lk in result.links}, made.truth)
    base_precision, base_recall = quality(baseline, made.truth)
    print(f"core: precision {precision:.4f}, recall {recall:.4f}; "
          f"plain Splink: precision {base_precision:.4f}, recall {base_recall:.4f}", flush=True)
    print(json.dumps({
        "benchmark": "linkage",
        "people": args.people,
        "sources": args.sources,
        "backend": args.backend,
        "records": len(records),
        "value": round(value_s, 2),
        "baseline": round(baseline_s, 2),
        "baseline_name": f"plain Splink on {args.backend}, same model and training, Splink's clustering",
        "ratio": round(value_s / baseline_s, 3),
        "target": TARGET_RATIO,
        # CPU seconds of the whole process (DuckDB's threads included): on a machine shared with
        # other work the wall times follow its load, the CPU times much less.
        "value_cpu": round(value_cpu, 2),
        "baseline_cpu": round(baseline_cpu, 2),
        "cpu_ratio": round(value_cpu / baseline_cpu, 3),
        "load_after_baseline": load_after_baseline,
        "load_after_value": load_after_value,
        "precision": round(precision, 5),
        "recall": round(recall, 5),
        "precision_floor": PRECISION_FLOOR,
        "recall_floor": RECALL_FLOOR,
        "baseline_precision": round(base_precision, 5),
        "baseline_recall": round(base_recall, 5),
        "review_band_pairs": len(result.candidates),
        "generator": made.describe(),
        "peak_rss_gib": round(peak_rss_gib(), 2),
    }))
    spill.cleanup()


if __name__ == "__main__":
    main()
