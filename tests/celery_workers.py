"""Real worker processes for the tests that kill them: started as ``tre worker`` starts them
(``celery -A tre.worker``, with beat, so the sweeper runs), killed with SIGKILL as a whole process
group, and stopped at the end of the test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tre.core import jobs


def worker_env(instance: Path, database_url: str, broker_url: str, **settings: Any) -> dict[str, str]:
    """A worker's environment: this instance, database and broker, and a 2 s lease, a 1 s sweep and
    a 4 s re-send, so a killed worker's job comes back within seconds. ``settings`` are more
    ``TRE_*`` settings by their lower-case names (``extract_chunk_rows=...``)."""
    return dict(
        os.environ,
        TRE_INSTANCE_PATH=str(instance),
        TRE_DATABASE_URL=database_url,
        TRE_BROKER_URL=broker_url,
        TRE_JOB_LEASE_SECONDS="2",
        TRE_JOB_SWEEP_INTERVAL_SECONDS="1",
        TRE_JOB_REQUEUE_AFTER_SECONDS="4",
        **{f"TRE_{k.upper()}": str(v) for k, v in settings.items()},
    )


class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log.open("ab")
        argv = [
            sys.executable, "-m", "celery", "-A", "tre.worker", "worker", "--beat",
            "--schedule", str(Path(env["TRE_INSTANCE_PATH"]) / "beat-schedule"),
            "--concurrency", "1", "-Q", ",".join(jobs.QUEUES), "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


@contextlib.contextmanager
def worker_pool() -> Iterator[list[Worker]]:
    """A list to append started workers to; every one still running is stopped at the end."""
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


def wait_for(condition: Any, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}; worker log ends:\n{tail}")
