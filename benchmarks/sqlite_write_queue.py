"""The embedded database's write queue against SQLite's own busy handler (ADR 0047).

Run:  python -m benchmarks.sqlite_write_queue [--processes 4] [--threads 4] [--seconds 8] [--hold-ms 1]

Several processes, each with several threads (as gunicorn's workers and threads are), run short
write transactions on one SQLite file in WAL mode: ``BEGIN IMMEDIATE``, an insert, about ``--hold-ms``
of CPU with the lock held (a request's work), ``COMMIT``, then a 2 ms pause. The baseline arm opens
plain ``sqlite3`` connections with a 30 s busy timeout, which is how every transaction waited before
the queue: SQLite's busy handler sleeps between tries. The other arm opens its connections through
``tre.core.db.make_engine``, whose ``BEGIN IMMEDIATE`` first waits on the write queue's kernel lock.
Both arms run in the same run, one after the other, on fresh files. Printed per arm: transactions
committed, and the wait for the write lock (from asking to holding) at p50, p99 and max. The last
line is one JSON object: value is the queue's p99 wait, baseline the busy handler's, ratio
value / baseline (lower is better); throughput of both arms is in details.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _process(arm: str, path: str, threads: int, seconds: float, hold: float, out: Any) -> None:
    waits: list[float] = []
    lock = threading.Lock()

    def plain() -> Any:
        import sqlite3

        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def queued() -> Any:
        from tre.core.db import make_engine

        return make_engine(f"sqlite:///{path}").raw_connection()

    def run() -> None:
        conn = plain() if arm == "busy_handler" else queued()
        cursor = conn.cursor()
        mine: list[float] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            asked = time.perf_counter()
            cursor.execute("BEGIN IMMEDIATE")
            mine.append(time.perf_counter() - asked)
            cursor.execute("INSERT INTO work VALUES (1)")
            _spin(hold)
            conn.commit() if arm != "busy_handler" else cursor.execute("COMMIT")
            time.sleep(0.002)
        conn.close()
        with lock:
            waits.extend(mine)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(waits)


def _arm(arm: str, workdir: Path, processes: int, threads: int, seconds: float, hold: float) -> dict[str, Any]:
    import sqlite3

    path = str(workdir / f"{arm}.db")
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE work (n INTEGER)")
    setup.commit()
    setup.close()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_process, args=(arm, path, threads, seconds, hold, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    waits: list[float] = []
    for _ in procs:
        waits.extend(out.get())
    for p in procs:
        p.join()
    waits.sort()
    n = len(waits)

    def at(q: float) -> float:
        return round(waits[min(int(n * q), n - 1)] * 1000, 2) if n else 0.0

    return {
        "transactions": n,
        "per_second": round(n / seconds, 1),
        "wait_p50_ms": at(0.5),
        "wait_p99_ms": at(0.99),
        "wait_max_ms": round(waits[-1] * 1000, 2) if n else 0.0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--hold-ms", type=float, default=1.0)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tre-writequeue-") as tmp:
        for arm in ("busy_handler", "write_queue"):
            results[arm] = _arm(arm, Path(tmp), args.processes, args.threads, args.seconds, args.hold_ms / 1000)
            r = results[arm]
            print(
                f"{arm:13s} {r['transactions']:6d} transactions ({r['per_second']}/s)  wait p50 "
                f"{r['wait_p50_ms']} ms  p99 {r['wait_p99_ms']} ms  max {r['wait_max_ms']} ms",
                flush=True,
            )
    base, value = results["busy_handler"]["wait_p99_ms"], results["write_queue"]["wait_p99_ms"]
    summary = {
        "benchmark": "sqlite_write_queue",
        "unit": "ms (p99 wait for the write lock)",
        "value": value,
        "baseline": base,
        "baseline_name": "SQLite's busy handler",
        "ratio": round(value / base, 3) if base else None,
        "details": {**results, "processes": args.processes, "threads": args.threads, "hold_ms": args.hold_ms},
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
