"""What the onboarding job's peak memory is made of (issue 19): one delivery, checked as the job
checks it, with its memory sampled every 10 ms.

Run:  python -m benchmarks.onboarding_memory /tmp/onb-mem/delivery-2500000.csv [--chunk-mb 16]
      (the CSV is one ``benchmarks.onboarding`` made; ``--no-tracemalloc`` for the peak untraced)

Prints one JSON object: the process's resident memory after its imports and at its peak, split into
mapped files (the libraries' code and data, ``RssFile``) and anonymous memory (``RssAnon``); at the
sample of the peak, Arrow's pool (``pyarrow.total_allocated_bytes``) and what Python and numpy hold
(``tracemalloc``, which sees every Python object and numpy array but not Arrow's pool); Arrow's pool
high-water mark; and the largest Python allocations at the peak, by line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

MB = 1 << 20


def _status() -> dict[str, float]:
    found = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                found[name] = int(value.split()[0]) / 1024
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--chunk-mb", type=int, default=16)
    parser.add_argument("--no-tracemalloc", action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    import pyarrow as pa

    from benchmarks.onboarding import TYPES
    from pseudonymisation import delivery_checks as checks
    from pseudonymisation import zone
    from tre.core.keys import InMemoryKeyProvider

    after_imports = _status()
    if not args.no_tracemalloc:
        tracemalloc.start(8)
    peak: dict = {"VmRSS": 0.0}
    top: list = []
    timeline: list[tuple[float, int, int]] = []
    stop = threading.Event()
    pool = pa.default_memory_pool()

    def sample() -> None:
        while not stop.is_set():
            now = _status()
            timeline.append((round(time.perf_counter() - started, 2), round(now["RssAnon"]),
                             round(pa.total_allocated_bytes() / MB)))
            if now["VmRSS"] > peak["VmRSS"]:
                traced = tracemalloc.get_traced_memory()[0] / MB if tracemalloc.is_tracing() else None
                peak.update(now, arrow_pool_mb=pa.total_allocated_bytes() / MB, python_and_numpy_mb=traced,
                            at=round(time.perf_counter() - started, 2))
            time.sleep(0.01)

    def progress(rows: int) -> None:
        # At the largest resident size seen so far, note where Python's memory is (a few times).
        if tracemalloc.is_tracing() and peak["VmRSS"] >= max(peak.get("snap_rss", 0.0) + 16, 0):
            peak["snap_rss"] = peak["VmRSS"]
            stats = tracemalloc.take_snapshot().statistics("lineno")[:8]
            top[:] = [{"where": f"{s.traceback[0].filename.rsplit('/', 2)[-2:]}:{s.traceback[0].lineno}",
                       "mb": round(s.size / MB, 1), "blocks": s.count} for s in stats]

    rules = checks.DeliveryRules(key_columns=("row_id",), nhs_number_column="nhs_number",
                                 code_patterns={"code": r"[A-Z][0-9]{2}(\.[0-9])?"})
    work = Path(tempfile.mkdtemp(prefix="tre-onboarding-memory-"))
    scratch = work / "scratch"
    scratch.mkdir(mode=0o700)
    started = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, _, report = zone.seal_into_zone_reading(
            os.open(args.source, os.O_RDONLY), work / "zone.csv", InMemoryKeyProvider(), max_bytes=1 << 40,
            read=lambda source: checks.check_delivery(
                source, [checks.ExpectedColumn(n, t) for n, t in TYPES.items()], rules, today=dt.date(2026, 12, 6),
                chunk_bytes=args.chunk_mb * MB, scratch_dir=scratch, progress=progress))
    finally:
        stop.set()
        sampler.join()
        (work / "zone.csv").unlink(missing_ok=True)
        scratch.rmdir()
        work.rmdir()
    assert report is not None
    result = {
        "rows": report.rows, "chunk_mb": args.chunk_mb, "tracemalloc": not args.no_tracemalloc,
        "after_imports_mb": {k: round(v, 1) for k, v in after_imports.items()},
        "peak_mb": {k: (round(v, 1) if isinstance(v, float) else v) for k, v in peak.items() if k != "snap_rss"},
        "arrow_pool_max_mb": round(pool.max_memory() / MB, 1), "arrow_pool_backend": pool.backend_name,
        "python_top_at_a_peak": top, "wall": round(time.perf_counter() - started, 2),
        # (seconds, anonymous MB, Arrow's pool MB), every 20th sample (0.2 s)
        "timeline": timeline[::20],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
