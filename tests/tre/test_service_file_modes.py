"""Every file and folder the service's own processes write is theirs alone (mode 0600 / 0700): real
``tre init``, ``tre run`` (web server, worker, scheduler) and ``tre jobs selftest`` processes, started
from a test whose own umask is the usual 022, write an instance folder that ``tre doctor`` passes
and in which no path has a permission bit for the group or others."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

TRE = str(Path(sys.executable).parent / "tre")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """The caller's mask lets the group and others read: the service must not rely on it."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def service_env(tmp_path: Path, lax_umask: None) -> dict[str, str]:
    return dict(
        os.environ,
        TRE_INSTANCE_PATH=str(tmp_path / "instance"),
        TRE_PORT=str(_free_port()),
        TRE_JUPYTERHUB_URL=f"http://127.0.0.1:{_free_port()}",
        TRE_HUB_API_PORT=str(_free_port()),
        TRE_HUB_PROXY_API_PORT=str(_free_port()),
        TRE_WORKSPACE_RUNTIME=str(tmp_path / "no-runtime"),  # no hub: its own tests start one
    )


def _tre(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603


def _modes(instance: Path) -> dict[str, int]:
    """Every path at or under the instance folder (links not followed) with its permission bits."""
    found = {".": stat.S_IMODE(instance.lstat().st_mode)}
    for path in instance.rglob("*"):
        info = path.lstat()
        if not stat.S_ISLNK(info.st_mode):
            found[str(path.relative_to(instance))] = stat.S_IMODE(info.st_mode)
    return found


def _open_to_others(modes: dict[str, int]) -> dict[str, str]:
    return {path: f"{mode:o}" for path, mode in modes.items() if mode & 0o077}


def test_tre_init_writes_an_instance_only_the_service_can_read(service_env: dict[str, str]) -> None:
    instance = Path(service_env["TRE_INSTANCE_PATH"])

    assert _tre(service_env, "init").returncode == 0

    modes = _modes(instance)
    assert {"tre.sqlite", "session-secret", "master.key", "audit-chain.key"} <= set(modes)
    assert _open_to_others(modes) == {}
    assert modes["."] == 0o700 and modes["tre.sqlite"] == 0o600


def test_tre_init_takes_a_lax_instance_folder_back_to_700_and_says_so(service_env: dict[str, str]) -> None:
    instance = Path(service_env["TRE_INSTANCE_PATH"])
    instance.mkdir(mode=0o755)
    instance.chmod(0o755)

    result = _tre(service_env, "init")

    assert result.returncode == 0
    assert stat.S_IMODE(instance.stat().st_mode) == 0o700
    assert "had mode 755, open to other accounts; made it 700" in result.stderr + result.stdout


def test_tre_run_and_its_worker_write_only_private_files(service_env: dict[str, str], tmp_path: Path) -> None:
    from tre.cli.processes import _stop_stragglers

    instance = Path(service_env["TRE_INSTANCE_PATH"])
    assert _tre(service_env, "init").returncode == 0
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        run = subprocess.Popen([TRE, "run"], env=service_env, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                               start_new_session=True)
    try:
        # The worker (and its scheduler) has taken a job from the broker and finished it: by then the
        # web server has answered and the worker has written its broker and schedule files.
        selftest = _tre(service_env, "jobs", "selftest", "--timeout", "90", timeout=150)
        assert selftest.returncode == 0, selftest.stderr + log.read_text()[-3000:]
        port = service_env["TRE_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:  # noqa: S310
            assert answer.status == 200

        modes = _modes(instance)
        doctor = _tre(service_env, "doctor")
    finally:
        os.killpg(run.pid, signal.SIGINT)
        try:
            run.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=30)
        _stop_stragglers(instance, [])

    # What the processes wrote: the broker's file, the scheduler's, the web server's metrics.
    assert {"tre.sqlite", "broker.sqlite", "prometheus"} <= set(modes)
    assert any(path.startswith("celerybeat-schedule") for path in modes), sorted(modes)
    assert any(path.startswith("prometheus/") for path in modes), sorted(modes)
    assert _open_to_others(modes) == {}
    assert all(mode == 0o700 for path, mode in modes.items() if (instance / path).is_dir())
    assert "FAIL  private files" not in doctor.stdout and "FAIL  instance folder" not in doctor.stdout, doctor.stdout
