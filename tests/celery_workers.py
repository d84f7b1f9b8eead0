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
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from tre.core import jobs
from tre.core.queue import RUN_JOB
from tre.core.testpoints import Barrier


def worker_env(
    instance: Path, database_url: str, broker_url: str, barrier: Barrier | None = None, **settings: Any
) -> dict[str, str]:
    """A worker's environment: this instance, database and broker, and a 2 s lease, a 1 s sweep and
    a 4 s re-send, so a killed worker's job comes back within seconds. With a ``barrier``, the
    worker's test points answer to it (tre/core/testpoints.py). ``settings`` are more ``TRE_*``
    settings by their lower-case names (``extract_chunk_rows=...``)."""
    return dict(
        os.environ,
        **(barrier.env if barrier is not None else {}),
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

    def stop_gently(self) -> None:
        """A warm shutdown: the worker finishes the task it is running, hands back what it had
        taken but not started, and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the main process only: its pool must finish
            self.proc.wait(timeout=120)

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
    raise AssertionError(f"timed out waiting for {what}; worker log ends:\n{_tail(log)}")


def kill_at(barrier: Barrier, point: str, worker: Worker, log: Path, timeout: float = 120) -> None:
    """Kill ``worker`` (its whole process group) once one of its processes holds at the test point
    ``point``, which the caller armed: the kill lands there, however fast or slow the machine."""
    try:
        held = barrier.wait_reached(point, timeout)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; worker log ends:\n{_tail(log)}") from None
    assert os.getpgid(held["pid"]) == worker.proc.pid, "the point is held by another worker's process"
    worker.kill()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def drain(workers: list[Worker], broker_url: str, db: Any, job_ids: Collection[str]) -> list[str]:
    """Prove that no stray duplicate of a finished job is still on its way, without waiting for one
    to show itself: stop every live worker gently (each finishes what it runs and hands back what it
    holds), then take every message left in the job queues and run each of ``job_ids`` that one
    names here, as a worker would (messages for other jobs are dropped). Returns those runs'
    outcomes (``not-claimed`` for a duplicate of a finished job).

    A message a killed worker held comes back by itself on RabbitMQ (it is in the queue by now), is
    lost on kombu's SQLAlchemy transport, and on Redis only after its visibility timeout (the task
    time limit plus 5 minutes): the sweeper, not the broker, is what brings such a job back (tre/core/jobs.py)."""
    from kombu import Connection

    for worker in workers:
        worker.stop_gently()
    outcomes = []
    with Connection(broker_url) as connection:
        for name in jobs.QUEUES:
            with connection.SimpleQueue(name, accept=["json"]) as queue:
                while True:
                    try:
                        message = queue.get(block=False)
                    except queue.Empty:
                        break
                    if message.headers.get("task") == RUN_JOB and message.payload[0][0] in job_ids:
                        outcomes.append(jobs.run_job(db, message.payload[0][0], lease_seconds=30))
                    message.ack()
    return outcomes
