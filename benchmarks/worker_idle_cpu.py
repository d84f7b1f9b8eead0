"""Benchmark: CPU an idle worker burns on the embedded broker, with wake-ups and with polling only.

Run:  python -m benchmarks.worker_idle_cpu [--seconds 30]

For each setting it builds a fresh embedded instance (SQLite + the SQLAlchemy broker), starts a
real worker as the output-check benchmark does (two pool processes, beat with the sweeper), waits
until it has run one job, then sends nothing for ``--seconds`` and sums the CPU time (user +
system, from /proc) of every process in the worker's process group over that window.

Baseline: the same worker with ``TRE_BROKER_WAKEUPS=0`` and kombu's own one-second polling interval
(the transport as it comes, and as this service shipped before ADR 0017), measured in the same run;
``ratio`` is the idle CPU with wake-ups (and ``--poll-ms``, by default the setting's default) over
the baseline's. Linux only (reads /proc). The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.output_check_latency import group_cpu_seconds, start_worker, wait
from tre.core.config import Settings

KOMBU_POLL_MS = 1000  # kombu's virtual transports' polling interval


def idle_cpu(wakeups: bool, seconds: float, poll_ms: int) -> dict[str, Any]:
    import signal

    from tre.app import create_app
    from tre.core import jobs, migrate
    from tre.core.db import transaction

    with tempfile.TemporaryDirectory(prefix="tre-bench-idle-") as tmp:
        instance = Path(tmp) / "instance"
        instance.mkdir()
        database_url = f"sqlite:///{tmp}/tre.sqlite"
        broker_url = f"sqla+sqlite:///{tmp}/broker.sqlite"
        migrate.upgrade(database_url)
        settings = {"instance_path": instance, "database_url": database_url, "broker_url": broker_url,
                    "broker_wakeups": wakeups, "broker_poll_ms": poll_ms}
        app = create_app({"TRE_SETTINGS": settings})
        db = app.extensions["tre.db"]
        env = dict(
            os.environ,
            TRE_INSTANCE_PATH=str(instance),
            TRE_DATABASE_URL=database_url,
            TRE_BROKER_URL=broker_url,
            TRE_LOG_LEVEL="WARNING",
            TRE_BROKER_WAKEUPS="1" if wakeups else "0",
            TRE_BROKER_POLL_MS=str(poll_ms),
        )
        worker = start_worker(env, Path(tmp) / "worker.log")
        try:
            with transaction(db.session) as s:
                job_id = jobs.enqueue(s, "kernel.selftest", {}).id

            def done() -> bool:
                with db.session_factory() as s2:
                    return s2.get(jobs.Job, job_id).state == jobs.SUCCEEDED

            if not wait(done, 120):
                raise RuntimeError("the worker did not start")
            time.sleep(2)  # let start-up work (imports, first beat tick) finish before the window
            before, started = group_cpu_seconds(worker.pid), time.monotonic()
            time.sleep(seconds)
            used, elapsed = group_cpu_seconds(worker.pid) - before, time.monotonic() - started
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:  # a pool process killed holding its queue's lock
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=20)
            db.dispose()
    return {"cpu_seconds": round(used, 3), "window_seconds": round(elapsed, 1),
            "cpu_per_minute_s": round(used / elapsed * 60, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--poll-ms", type=int, default=Settings.broker_poll_ms,
                        help="TRE_BROKER_POLL_MS of the run with wake-ups (0, the default: automatic)")
    args = parser.parse_args()
    baseline = idle_cpu(False, args.seconds, KOMBU_POLL_MS)
    print(f"idle worker, wake-ups off (polling only): {json.dumps(baseline)}")
    poll_ms = Settings(broker_wakeups=True, broker_poll_ms=args.poll_ms).resolved().broker_poll_ms
    value = idle_cpu(True, args.seconds, poll_ms)
    print(f"idle worker, wake-ups on: {json.dumps(value)}")
    print(json.dumps({
        "benchmark": "worker_idle_cpu",
        "value": value["cpu_per_minute_s"],
        "unit": "CPU seconds per minute, idle embedded worker (all its processes), wake-ups on",
        "baseline": baseline["cpu_per_minute_s"],
        "baseline_is": "the same worker with TRE_BROKER_WAKEUPS=0 and a 1 s poll (kombu's polling only)",
        "ratio": round(value["cpu_per_minute_s"] / baseline["cpu_per_minute_s"], 2)
        if baseline["cpu_per_minute_s"] else None,
        "poll_ms": poll_ms,
        "seconds": args.seconds,
    }))


if __name__ == "__main__":
    main()
