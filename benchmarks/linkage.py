"""Benchmark: the person index core against a plain Splink run of the same model, in one process.

Run:  python -m benchmarks.linkage [--people 50000] [--seed 20] [--threads 2]

Makes linkable hospital, GP and social care sources with the demo generator's errors at its stated
rates (``tre/demo/linkage_sources.py``: typos, nicknames, swapped names, transposed day and month,
moved house, missing and wrong NHS numbers), then times, on the same records and in the same process:

- **baseline**: plain Splink on DuckDB with exactly the core's model (``linkage.splink_settings``:
  same comparisons, blocking rules and prior; same training: u by sampling, m by EM twice), predict
  at the threshold and Splink's own connected components at the threshold;
- **value**: ``linkage.link_records`` (cleaning, the deterministic NHS number stage, the same Splink
  model, the uncertain band and match weight counts, clustering that never joins two valid numbers).

Pairwise precision and recall of both are measured against the generator's truth. The last line
printed is one JSON object (benchmark, value, baseline, ratio, target, precision, recall, ...).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections import defaultdict
from collections.abc import Iterable
from itertools import combinations
from typing import Any

import duckdb
from splink import DuckDBAPI, Linker

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
    """Splink alone, same model and training, clustered by Splink at the same threshold."""
    ordered = sorted(records, key=lambda r: (r.source, r.record_id))
    frame = linkage.splink_frame(linkage.clean_records(records))
    connection = duckdb.connect(":memory:")
    if settings.threads is not None:
        connection.execute(f"SET threads = {int(settings.threads)}")
    try:
        api = DuckDBAPI(connection)
        linker = Linker(api.register(frame), linkage.splink_settings(frame, settings), log_level=None)
        linkage.train_linker(linker, settings, len(frame))
        predictions = linker.inference.predict(threshold_match_probability=settings.threshold)
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
            predictions, threshold_match_probability=settings.threshold
        ).as_pandas_dataframe()
    finally:
        connection.close()
    cluster_of = dict(zip(clusters["unique_id"], clusters["cluster_id"], strict=True))
    return {(r.source, r.record_id): cluster_of[i] for i, r in enumerate(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: DuckDB's choice)")
    args = parser.parse_args()

    import logging

    logging.getLogger("splink").setLevel(logging.ERROR)
    made = linkage_sources.generate(args.people, seed=args.seed)
    records = linkage_sources.records(made)
    settings = linkage.LinkageSettings(threads=args.threads)
    print(f"{len(records):,} records of {args.people:,} people: "
          + ", ".join(f"{n} {t.num_rows:,}" for n, t in made.tables.items()), flush=True)

    started = time.perf_counter()
    baseline = plain_splink(records, settings)
    baseline_s = time.perf_counter() - started
    print(f"plain Splink (same model, its own clustering): {baseline_s:.1f} s", flush=True)

    started = time.perf_counter()
    result = linkage.link_records(records, settings)
    value_s = time.perf_counter() - started
    print(f"person index core: {value_s:.1f} s", flush=True)

    precision, recall = quality({(lk.source, lk.record_id): lk.person_id for lk in result.links}, made.truth)
    base_precision, base_recall = quality(baseline, made.truth)
    print(f"core: precision {precision:.4f}, recall {recall:.4f}; "
          f"plain Splink: precision {base_precision:.4f}, recall {base_recall:.4f}", flush=True)
    print(json.dumps({
        "benchmark": "linkage",
        "people": args.people,
        "records": len(records),
        "value": round(value_s, 2),
        "baseline": round(baseline_s, 2),
        "baseline_name": "plain Splink on DuckDB, same model and training, Splink's clustering",
        "ratio": round(value_s / baseline_s, 3),
        "target": TARGET_RATIO,
        "precision": round(precision, 5),
        "recall": round(recall, 5),
        "precision_floor": PRECISION_FLOOR,
        "recall_floor": RECALL_FLOOR,
        "baseline_precision": round(base_precision, 5),
        "baseline_recall": round(base_recall, 5),
        "review_band_pairs": len(result.candidates),
        "generator": made.describe(),
        "spark_backend": "not run: pyspark is not installed" if importlib.util.find_spec("pyspark") is None
        else "installed, not run by this benchmark",
    }))


if __name__ == "__main__":
    main()
