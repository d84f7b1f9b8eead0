"""``tre worker``, ``tre beat`` and ``tre run``: the service's processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from tre.cli.common import load_settings
from tre.core.config import Settings


def _worker_argv(settings: Settings, beat: bool, queues: tuple[str, ...] = (), concurrency: int = 2) -> list[str]:
    from tre.core.jobs import QUEUES

    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tre.worker",
        "worker",
        "--loglevel",
        settings.log_level,
        "--concurrency",
        str(concurrency),
        "-Q",
        ",".join(queues or QUEUES),
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        argv += ["--beat", "--schedule", str(settings.instance_path / "celerybeat-schedule")]
    return argv


@click.command("worker")
@click.option("--beat/--no-beat", default=None, help="Also run the periodic sweeper (default: on one machine).")
@click.option("-Q", "--queues", default="", help="Comma-separated queues to take jobs from (default: all).")
@click.option("--concurrency", default=2, show_default=True, help="Jobs run at once by this worker.")
def worker(beat: bool | None, queues: str, concurrency: int) -> None:
    """Run a Celery worker (all queues, or the named ones)."""
    from tre.core.jobs import QUEUES

    settings = load_settings()
    chosen = tuple(q.strip() for q in queues.split(",") if q.strip())
    unknown = set(chosen) - set(QUEUES)
    if unknown:
        raise click.BadParameter(f"unknown queue(s) {', '.join(sorted(unknown))}; known: {', '.join(QUEUES)}")
    beat = settings.broker_needs_no_server if beat is None else beat
    os.execv(sys.executable, _worker_argv(settings, beat, chosen, concurrency))  # noqa: S606


@click.command("beat")
def beat_command() -> None:
    """Run only the periodic scheduler (exactly one per deployment): the job sweeper and expiry tasks."""
    settings = load_settings()
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tre.worker",
        "beat",
        "--loglevel",
        settings.log_level,
        "--schedule",
        str(settings.instance_path / "celerybeat-schedule"),
    ]
    os.execv(sys.executable, argv)  # noqa: S606


def _web_argv(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{settings.host}:{settings.port}",
        "--workers",
        "2",
        "--threads",
        "4",
        "--access-logfile",
        "-",
        # gunicorn's default control socket is one per unix user (~/.gunicorn): one per instance, so
        # a second instance on this machine neither fails to bind it nor controls the first.
        "--control-socket",
        str(settings.instance_path / "gunicorn.ctl"),
        "tre.wsgi:app",
    ]


@click.command("run")
def run() -> None:
    """Run the whole service on this machine (web server, worker, sweeper) until Ctrl-C."""
    settings = load_settings()
    # Web processes share request metrics through this folder, emptied at each start.
    prom = settings.instance_path / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir(parents=True)
    env = dict(os.environ, TRE_INSTANCE_PATH=str(settings.instance_path), PROMETHEUS_MULTIPROC_DIR=str(prom))
    procs: dict[str, subprocess.Popen[Any]] = {}
    commands = {"web": _web_argv(settings), "worker": _worker_argv(settings, beat=True)}
    hub_note = _hub_command(settings, env, commands)
    for name, argv in commands.items():
        procs[name] = subprocess.Popen(argv, env=env, start_new_session=True)  # noqa: S603
    click.echo(f"\nThe trusted research environment is at {settings.public_url}  (Ctrl-C stops everything)")
    click.echo(hub_note + "\n")
    _print_demo_logins(settings)

    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    try:
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    click.echo(f"{name} exited with status {proc.returncode}; stopping the rest", err=True)
                    exit_code = 1
                    stopping = True
            time.sleep(0.5)
    finally:
        # Children that JupyterHub starts in sessions of their own (its proxy, its services) do
        # not get our signal; note them now, while their parent still lives.
        strays = [child for proc in procs.values() for child in _descendants(proc.pid)]
        # TERM goes to each main process only: Celery's worker, gunicorn's master and JupyterHub
        # stop their own children. Sent to the whole group, it killed the worker's pool processes
        # under it, and the worker's warm shutdown then never finished.
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        # JupyterHub stops its proxy and services on SIGTERM, but only if given the time to.
        deadline = time.monotonic() + 30
        for proc in procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        _stop_stragglers(settings.instance_path, strays)
        click.echo("stopped")
    sys.exit(exit_code)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), found through each process's parent id."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def _running(pid: int) -> bool:
    """Whether the process still runs: a zombie has stopped, whoever is yet to reap it."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split() or ["Z"])[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _stop_stragglers(instance: Path, strays: list[int]) -> None:
    """Stop what our processes started in sessions of their own: the descendants noted before the
    shutdown, and anything else carrying this instance's path in its environment — exactly that
    entry, never a pattern. Hub services lose our environment to JupyterHub's, so the hub's
    configuration gives them the entry back (jupyter/hub_config.py): a culler left behind by a hub
    that was killed is no longer a descendant of anything we started, and is found by it."""
    marker = f"TRE_INSTANCE_PATH={instance}".encode()
    me = os.getpid()
    targets = set(strays)
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        try:
            if pid != me and marker in (entry / "environ").read_bytes().split(b"\0"):
                targets.add(pid)
        except (OSError, ValueError):
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):  # a worker stuck in a task ignores the first
        alive = []
        for pid in targets:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except OSError:
                continue
        if not alive:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_running(pid) for pid in alive):
            time.sleep(0.2)
        targets = {pid for pid in alive if _running(pid)}


def _hub_command(settings: Settings, env: dict[str, str], commands: dict[str, list[str]]) -> str:
    """Add JupyterHub to the processes when its workspace runtime is built; say what happens if not."""
    from urllib.parse import urlsplit

    runtime = Path(os.environ.get("TRE_WORKSPACE_RUNTIME", "/opt/tre-workspace"))
    hub = Path(sys.executable).parent / "jupyterhub"
    if not hub.exists() or not (runtime / "bin" / "jupyter-labhub").exists():
        return "Workspaces: JupyterHub is not started (run `make workspace-runtime` as root to build it)."
    hub_port = urlsplit(settings.jupyterhub_url).port or 8000
    env.update(
        TRE_HUB_STATE_DIR=str(settings.instance_path / "jupyterhub"),
        TRE_HUB_PORT=str(hub_port),
        TRE_CONTROL_PLANE_URL=settings.public_url,
        TRE_HUB_SERVICE_TOKEN_FILE=str(settings.instance_path / "hub-service-token"),
        TRE_HUB_CONTROL_PLANE_API_TOKEN_FILE=str(settings.instance_path / "hub-api-token"),
        TRE_WORKSPACE_RUNTIME=str(runtime),
    )
    config = Path(__file__).resolve().parents[2] / "jupyter" / "jupyterhub_config.py"
    commands["hub"] = [str(hub), "-f", str(config)]
    note = f"Workspaces: JupyterHub at {settings.jupyterhub_url}"
    if os.geteuid() != 0 and not env.get("TRE_HUB_INSECURE_DEV"):
        note += (
            " — NOT running as root, so workspaces cannot get their own unix accounts and network"
            " namespaces and will refuse to start (see docs/workspaces.md)"
        )
    return note


def _print_demo_logins(settings: Settings) -> None:
    logins = settings.instance_path / "demo-logins.txt"
    if logins.exists():
        click.echo(logins.read_text(encoding="utf-8"))
