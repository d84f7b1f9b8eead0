"""What the web server adds to a request: CPU per ``GET /healthz`` served live, against the same call in process.

Run:  python -m benchmarks.web_server_floor [--seconds 6] [--rounds 3] [--users 16] [--granian-path DIR]

Prepares an empty instance (``tre init``), then, in turns (round after round, every configuration once
per round), starts one web process of each configuration on it, sends ``--users`` keep-alive
connections asking ``GET /healthz`` for ``--seconds``, and reads from ``/proc`` the CPU that the
server's processes used per answered request. ``/healthz`` touches no database, so what it costs live
is the web server's work plus Flask's floor; the gap to the same call in process is the server's.

Configurations, each a single process (``WEB_CONCURRENCY=1``) so that the figure is per request, not
per process count:

- ``gunicorn, production``: ``infra/production/gunicorn.conf.py`` as it is (gthread, 8 threads);
- ``gunicorn, 2 threads`` and ``gunicorn, 1 thread``: the same with ``GUNICORN_THREADS`` lowered;
- ``granian``: the granian server's WSGI interface with 8 blocking threads, only when the package is
  importable from ``--granian-path`` (it is not one of the project's dependencies; install it into a
  folder of its own with ``pip install --target DIR granian`` to compare).

Baseline, measured in the same run: the same request through the Flask test client in a fresh
process (no socket, no server). ``ratio`` is the production configuration's CPU per request over it.
Figures on a shared machine move with its other work; the configurations take turns so that each
round sees the same host, and the medians are printed (docs/operations.md, "The web server's floor").
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import load

PATH = "/healthz"
PRODUCTION = "gunicorn, production"

# The same request in process, in a fresh interpreter so this process stays out of the figures.
IN_PROCESS = """
import time
from tre.app import create_app
client = create_app().test_client()
for _ in range(300):
    assert client.get("{path}").status_code == 200
started = time.process_time()
for _ in range({calls}):
    client.get("{path}")
print(1000 * (time.process_time() - started) / {calls})
"""


@dataclass(frozen=True)
class Server:
    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def servers(granian_path: str) -> list[Server]:
    gunicorn = (sys.executable, "-m", "gunicorn", "--config", str(load.GUNICORN_CONF), "tre.wsgi:app")
    chosen = [
        Server(PRODUCTION, gunicorn),
        Server("gunicorn, 2 threads", gunicorn, (("GUNICORN_THREADS", "2"),)),
        Server("gunicorn, 1 thread", gunicorn, (("GUNICORN_THREADS", "1"),)),
    ]
    if granian_path and (Path(granian_path) / "granian").is_dir():
        chosen.append(Server(
            "granian",
            (sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", "1", "--blocking-threads", "8",
             "--host", load.LOOPBACK, "--port", "{port}", "--access-log", "tre.wsgi:app"),
            (("PYTHONPATH", granian_path),),
        ))
    return chosen


def tree_ticks(root: int) -> int:
    """CPU ticks used so far by a process and every process below it (those alive now)."""
    table = load._proc_table()
    return sum(ticks for pid, (_, _, ticks) in table.items() if root in load.ancestry(pid, table))


def drive(port: int, users: int, seconds: float) -> tuple[int, int]:
    """(answered 200, other outcomes) from ``users`` keep-alive connections over ``seconds``."""
    counts = [[0, 0] for _ in range(users)]
    stop_at = time.monotonic() + seconds

    def user(mine: list[int]) -> None:
        conn = http.client.HTTPConnection(load.LOOPBACK, port, timeout=30)
        while time.monotonic() < stop_at:
            try:
                conn.request("GET", PATH)
                answer = conn.getresponse()
                answer.read()
                mine[0 if answer.status == 200 else 1] += 1
            except (OSError, http.client.HTTPException):
                mine[1] += 1
                conn.close()
                conn = http.client.HTTPConnection(load.LOOPBACK, port, timeout=30)
        conn.close()

    threads = [threading.Thread(target=user, args=(mine,)) for mine in counts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def serve_and_measure(server: Server, env: dict[str, str], workdir: Path, users: int, seconds: float) -> float:
    """CPU milliseconds the server's processes used per answered ``GET /healthz``."""
    port = load.free_port()
    run_env = dict(env, TRE_PORT=str(port), WEB_CONCURRENCY="1", **dict(server.env))
    prometheus = workdir / f"prometheus-{port}"
    prometheus.mkdir()  # gunicorn's settings empty it; granian has no such hook, so it must exist
    run_env["PROMETHEUS_MULTIPROC_DIR"] = str(prometheus)
    argv = [part.replace("{port}", str(port)) for part in server.argv]
    log_path = workdir / f"{port}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, env=run_env, cwd=load.REPO, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                                start_new_session=True)
    try:
        deadline = time.monotonic() + load.READY_SECONDS
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
            try:
                if load.request_once(port, "GET", PATH)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not answer in {load.READY_SECONDS} s")
            time.sleep(0.2)
        drive(port, users, 1.0)  # warm: connections, first requests of each thread
        before = tree_ticks(proc.pid)
        answered, failed = drive(port, users, seconds)
        used = tree_ticks(proc.pid) - before
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if failed or not answered:
        raise RuntimeError(f"{server.name}: {failed} requests failed, {answered} answered")
    return 1000 * used / load.CLK_TCK / answered


def in_process_ms(env: dict[str, str], calls: int) -> float:
    code = IN_PROCESS.format(path=PATH, calls=calls)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=load.REPO, capture_output=True,  # noqa: S603
                          text=True, timeout=600, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=16, help="keep-alive connections at once")
    parser.add_argument("--calls", type=int, default=3000, help="in-process calls for the baseline")
    parser.add_argument("--granian-path", default="", help="a folder holding the granian package (optional)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="tre-web-floor-"))
    try:
        env = load.clean_environment({
            "TRE_INSTANCE_PATH": str(workdir / "instance"), "TRE_HOST": load.LOOPBACK,
            "TRE_LOG_FORMAT": "json", "TRE_LOG_LEVEL": "INFO",
        })
        load.run_step([*load.tre_command(), "init"], env, "tre init")
        chosen = servers(args.granian_path)
        figures: dict[str, list[float]] = {server.name: [] for server in chosen}
        baseline: list[float] = []
        for round_no in range(1, args.rounds + 1):
            baseline.append(in_process_ms(env, args.calls))
            for server in chosen:
                figures[server.name].append(serve_and_measure(server, env, workdir, args.users, args.seconds))
            load.log(f"round {round_no}: in process {baseline[-1]:.3f} ms; "
                     + "; ".join(f"{name} {values[-1]:.3f} ms" for name, values in figures.items()))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    medians = {name: round(statistics.median(values), 3) for name, values in figures.items()}
    floor = round(statistics.median(baseline), 3)
    load.log(f"\nCPU ms per GET {PATH}, median of {args.rounds} rounds ({args.users} keep-alive users):")
    load.log(f"  {'in process (Flask test client)':<34} {floor:>7.3f}")
    for name, value in medians.items():
        load.log(f"  {name:<34} {value:>7.3f}   server's share {value - floor:>6.3f}")
    if args.granian_path and "granian" not in medians:
        load.log(f"  granian: not found in {args.granian_path}")
    print(json.dumps({
        "benchmark": "web_server_floor",
        "unit": "CPU ms per request",
        "value": medians[PRODUCTION],
        "baseline": floor,
        "baseline_name": f"GET {PATH} in process (Flask test client)",
        "ratio": round(medians[PRODUCTION] / floor, 2) if floor else None,
        "details": {"medians": medians, "rounds": {**figures, "in process": baseline}, "users": args.users,
                    "seconds": args.seconds},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
