"""`tre run` stopped the way a terminal or a supervisor stops it leaves no process behind.

A supervisor (or a check script) sends TERM to `tre run`'s process group and, a few seconds later,
KILL. `tre run` starts its children in sessions of their own, so only it gets those signals: it must
pass TERM on in a way each child can finish by itself after `tre run` is gone. Sent to each child's
whole process group, the TERM also reached the Celery worker's pool processes, and the worker's warm
shutdown then hung for ever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRE = str(Path(sys.executable).parent / "tre")


def _processes_of(instance: Path) -> list[str]:
    """Every process on the machine carrying this instance's path in its environment."""
    marker = f"TRE_INSTANCE_PATH={instance}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) != os.getpid() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except (OSError, ValueError):
            continue
    return found


def _wait_for(predicate, what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.2)


def test_tre_run_killed_after_term_leaves_no_process_behind(tmp_path: Path):
    instance = tmp_path / "instance"
    env = dict(
        os.environ,
        TRE_INSTANCE_PATH=str(instance),
        TRE_PORT=str(free_port()),
        TRE_WORKSPACE_RUNTIME=str(tmp_path / "no-runtime"),  # no hub: the web server and the worker
    )
    for inherited in ("TRE_DATABASE_URL", "TRE_BROKER_URL", "TRE_JUPYTERHUB_URL"):
        env.pop(inherited, None)
    subprocess.run([TRE, "init"], env=env, check=True, capture_output=True, timeout=300)
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        run = subprocess.Popen([TRE, "run"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{env['TRE_PORT']}/healthz", timeout=5):
                    return True
            except OSError:
                return False

        _wait_for(healthy, "the web server")
        # The worker has its pool when it says it is ready: the state in which TERM to the group hung it.
        _wait_for(lambda: b"ready." in log_path.read_bytes(), "the worker to be ready")
        assert len(_processes_of(instance)) >= 3

        os.killpg(run.pid, signal.SIGTERM)
        # KILL once `tre run` has passed TERM on (the worker says so), as a supervisor's timeout would.
        _wait_for(lambda: b"Warm shutdown" in log_path.read_bytes(), "the worker to be told to stop")
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)

        _wait_for(lambda: not _processes_of(instance), "every process of the instance to stop")
    finally:
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if f"TRE_INSTANCE_PATH={instance}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue
