"""Gunicorn settings for the control plane in production.

Run ``gunicorn --config infra/production/gunicorn.conf.py tre.wsgi:app``.

Where it listens comes from the same variables as the rest of the service (``TRE_HOST``,
``TRE_PORT``). How many processes it runs follows the CPUs this process may really use (the
affinity mask and, in a container, the cgroup CPU quota), unless ``WEB_CONCURRENCY`` says
otherwise. Access lines carry the method, the path *without its query string*, the status, the
size, the time taken and the request id: never a query string (reset and sign-in links put tokens
there), a cookie, an address or a user agent. With ``TRE_LOG_FORMAT=json`` each line is one JSON
object, like the application's own log lines.

Request metrics are shared by the web processes through ``PROMETHEUS_MULTIPROC_DIR``: the folder is
emptied when the arbiter starts and a worker's files are marked dead when it exits.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

from tre.core.config import Settings


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, lowered by a cgroup (v2 or v1) CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(cpus, 1)


def _cgroup_quota() -> float | None:
    v2 = Path("/sys/fs/cgroup/cpu.max")
    try:
        if v2.exists():
            limit, period = v2.read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        v1_quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        v1_period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if v1_quota.exists() and v1_period.exists():
            limit_us = int(v1_quota.read_text())
            return None if limit_us <= 0 else limit_us / int(v1_period.read_text())
    except (OSError, ValueError):
        return None
    return None


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise SystemExit(f"{name} must be at least 1, got {value}")
    return value


_settings = Settings.from_env()

# --- where and how many ---------------------------------------------------------------------------

bind = [f"{_settings.host}:{_settings.port}"]
# One process per CPU, each with eight threads so a request waiting on the database does not hold
# a core. The app is CPU-bound Python: more processes than cores only add memory, cold caches and
# start-up time (under the load benchmark on 2 cores, five processes answered half the requests per
# CPU-second that two did, and took over 90 s to start; ADR 0027). WEB_CONCURRENCY and
# GUNICORN_THREADS are the conventional overrides.
workers = _positive_int("WEB_CONCURRENCY", available_cpus())
worker_class = "gthread"
threads = _positive_int("GUNICORN_THREADS", 8)
# Heartbeat files on a memory file system: the root file system may be read-only (Kubernetes).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None  # noqa: S108
timeout = 60
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so a slow leak cannot grow forever; jitter avoids all at once.
# "Now and then" is minutes, not seconds: a process answers 50-100 requests a second here, and each
# recycle costs a fresh import, app build and template compilation (1-2 s of CPU) while its peer
# takes every request. At 2,000 the load benchmark recycled each worker every 20-40 s: a profile
# of the live workers found 8 % of their samples in starting new ones, and back-to-back runs
# answered about 4 % more requests per CPU-second at this setting (docs/operations.md).
max_requests = 100_000
max_requests_jitter = 10_000
# Refuse oversized request lines and headers early (uploads are limited by the app itself).
limit_request_line = 8190
limit_request_fields = 100
# The app is built in each worker, never in the arbiter: keys, database pools and broker
# connections must not be shared across fork.
preload_app = False
proc_name = "tre-web"
# No run-time control socket (gunicorn 25+): restarts and scaling go through systemd or Kubernetes,
# and two servers of one user would otherwise share $HOME/.gunicorn/gunicorn.ctl.
control_socket_disable = True


def post_worker_init(worker: Any) -> None:
    """The app is built: keep its long-lived objects out of the garbage collector's full passes.

    A worker holds about 280,000 objects once the app, its templates and the disclosure engine
    (pandas, SciPy) are loaded, and almost none of them is freed later. Every full collection walked them
    all: about 0.2 s of CPU each, several a minute under load (docs/operations.md, "The live
    workers, profiled"). Frozen, they are skipped; what requests allocate is collected as before.
    """
    gc.collect()
    gc.freeze()


# --- logs -----------------------------------------------------------------------------------------

loglevel = _settings.log_level.lower()
errorlog = "-"
accesslog = "-"


class AccessLogger(Logger):
    """Access lines without query strings, as JSON when the service logs JSON."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: dt.timedelta) -> None:
        if not self.access_log_enabled:
            return
        request_id = "-"
        for name, value in getattr(resp, "headers", None) or ():
            if name.lower() == "x-request-id":
                request_id = value
                break
        status = getattr(resp, "status_code", None)
        if status is None:
            status = str(getattr(resp, "status", "-")).split(" ", 1)[0]
        fields = {
            "method": environ.get("REQUEST_METHOD", "-"),
            "path": environ.get("PATH_INFO", "-") or "/",
            "status": int(status) if str(status).isdigit() else status,
            "bytes": getattr(resp, "sent", 0) or 0,
            "duration_ms": round(request_time.total_seconds() * 1000, 2),
            "request_id": request_id,
        }
        try:
            if _settings.log_format == "json":
                line = json.dumps(
                    {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), "level": "INFO",
                     "logger": "gunicorn.access", **fields},
                    ensure_ascii=True,
                )
            else:
                line = "{method} {path} {status} {bytes}B {duration_ms}ms request={request_id}".format(**fields)
            self.access_log.info(line)
        except Exception:  # noqa: BLE001 - a log line must never fail a request
            self.error_log.exception("could not write an access log line")


logger_class = AccessLogger
if _settings.log_format == "json":
    # The arbiter's own lines as JSON too, so a collector reads one format from this process.
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            },
            "plain": {"format": "%(message)s"},
        },
        "handlers": {
            "error_console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
            "console": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "gunicorn.error": {"level": loglevel.upper(), "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }

# --- Prometheus across processes ------------------------------------------------------------------

# Must be in the environment before any worker imports prometheus_client. A private temporary
# folder is the safe default: two servers must never share one (process ids would collide).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tre-prometheus-")


def on_starting(server: Any) -> None:
    """Empty the metrics folder: files left by an earlier run would be counted again."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    logging.getLogger("gunicorn.error").info(
        "web: %d workers x %d threads on %s", workers, threads, ", ".join(bind)
    )


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone (recycled, killed or crashed): stop counting its live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
