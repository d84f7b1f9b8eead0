"""gunicorn settings for the load benchmark's per-route CPU table (``benchmarks.load --route-cpu``).

The production settings (``infra/production/gunicorn.conf.py``) unchanged, plus hooks that time each
request's CPU in the thread that serves it: ``pre_request`` and ``post_request`` run in that thread,
around the application, the response's writing and the access line, so ``time.thread_time()``
between them is that request's CPU (the garbage collections it triggered included). What a worker
spends outside them (gunicorn's main loop: accepting, keep-alive polling; parsing the request line
and headers, which happens before ``pre_request``; the heartbeat) is its process CPU minus the sum.

Each worker keeps, in memory, one record per request (its end time, route and CPU), the garbage
collector's passes (end time, generation, CPU) and a sample of its process CPU every second, and
writes them to ``$TRE_BENCH_ROUTE_CPU_DIR/<pid>.json`` when it exits; the benchmark keeps the
records of its measured window. Benchmark-only: the production configuration has none of this.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import threading
import time
from pathlib import Path
from typing import Any

_PRODUCTION = Path(__file__).resolve().parent.parent / "infra" / "production" / "gunicorn.conf.py"
_settings = runpy.run_path(str(_PRODUCTION))
globals().update({k: v for k, v in _settings.items() if not k.startswith("_")})
_production_post_worker_init = _settings["post_worker_init"]

_local = threading.local()
_requests: list[tuple[float, str, float]] = []
_collections: list[tuple[float, int, float]] = []
_process: list[tuple[float, float]] = []
_stop = threading.Event()


def _route_started(sender: Any, **extra: Any) -> None:
    """Flask's ``request_started`` signal, in the request's thread, after routing."""
    from flask import request

    rule = request.url_rule
    _local.route = f"{request.method} {rule.rule}" if rule is not None else f"{request.method} (no route)"


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _local.gc_started = time.thread_time()
    else:
        started = getattr(_local, "gc_started", None)
        if started is not None:
            _collections.append((time.time(), int(info.get("generation", -1)), time.thread_time() - started))


def _sample_process() -> None:
    while not _stop.wait(1.0):
        _process.append((time.time(), time.process_time()))


def post_worker_init(worker: Any) -> None:
    _production_post_worker_init(worker)
    _process.append((time.time(), time.process_time()))
    gc.callbacks.append(_on_collection)
    from flask import request_started

    request_started.connect(_route_started, worker.wsgi, weak=False)
    threading.Thread(target=_sample_process, name="route-cpu-sampler", daemon=True).start()


def pre_request(worker: Any, req: Any) -> None:
    _local.started = time.thread_time()
    _local.route = "(not dispatched)"


def post_request(worker: Any, req: Any, environ: dict[str, Any], resp: Any) -> None:
    started = getattr(_local, "started", None)
    if started is not None:
        _requests.append((time.time(), _local.route, time.thread_time() - started))
        _local.started = None


def worker_exit(server: Any, worker: Any) -> None:
    _stop.set()
    _process.append((time.time(), time.process_time()))
    folder = os.environ.get("TRE_BENCH_ROUTE_CPU_DIR")
    if not folder:
        return
    record = {"pid": os.getpid(), "requests": list(_requests), "collections": list(_collections),
              "process": list(_process)}
    path = Path(folder) / f"{os.getpid()}.json"
    path.write_text(json.dumps(record))
