"""Benchmark: opening a workspace with the bubblewrap sandbox (ADR 0005) against without it, in one run.

Run (as root, with the workspace runtime built):  python -m benchmarks.workspace_open [--opens 5]

Two real hubs start side by side with the test suite's fake control plane (tests/jupyter/realhub.py):
one as deployed, one with ``TRE_HUB_FS_SANDBOX=off``. For each, one researcher opens their project's
workspace ``--opens`` times, the two hubs taking turns so load on the machine falls on both alike.
One open is what the browser waits for: the single-use token POSTed to the hub, the spawn page, the
server ready, JupyterLab's page and ``api/status`` answering through the proxy; the server is then
stopped through the hub API (not timed). The first open of each hub also creates the unix account
and is reported apart. The last line printed is one JSON object (benchmark, value, baseline, ratio...).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import ExitStack
from typing import Any

import requests


def open_once(hub: Any, username: str, project: str) -> float:
    server = project.lower()
    with requests.Session() as session:
        started = time.monotonic()
        response = hub.login(session, username, project)
        session.get(hub.url + response.headers["Location"], timeout=120)
        hub.wait_ready(username, server, timeout=120)
        lab = session.get(f"{hub.url}/user/{username}/{server}/lab", timeout=60)
        status = session.get(f"{hub.url}/user/{username}/{server}/api/status", timeout=60)
        seconds = time.monotonic() - started
    if lab.status_code != 200 or status.status_code != 200:
        raise SystemExit(f"workspace did not open: lab {lab.status_code}, status {status.status_code}")
    stop = hub.api("DELETE", f"/users/{username}/servers/{server}")
    if stop.status_code not in (202, 204):
        raise SystemExit(f"could not stop the workspace: {stop.status_code} {stop.text[:200]}")
    hub.wait_stopped(username, server, timeout=120)
    return seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=5, help="timed opens per hub after the first")
    args = parser.parse_args(argv)

    from tests.jupyter.realhub import IS_ROOT, RUNTIME, RUNTIME_READY, running_hub

    if not IS_ROOT or not RUNTIME_READY:
        raise SystemExit(f"needs root and the workspace runtime at {RUNTIME} (make workspace-runtime)")
    variants = {"sandbox": {}, "no_sandbox": {"TRE_HUB_FS_SANDBOX": "off"}}
    first: dict[str, float] = {}
    timed: dict[str, list[float]] = {name: [] for name in variants}
    with ExitStack() as stack:
        hubs = {name: stack.enter_context(running_hub(env)) for name, env in variants.items()}
        people = {name: (hub.grant("b"), hub.project("b")) for name, hub in hubs.items()}
        for name, hub in hubs.items():
            first[name] = open_once(hub, *people[name])
        for _ in range(args.opens):
            for name, hub in hubs.items():
                timed[name].append(open_once(hub, *people[name]))
    value, baseline = statistics.median(timed["sandbox"]), statistics.median(timed["no_sandbox"])
    result = {
        "benchmark": "workspace_open",
        "unit": "seconds (median, token POST to JupyterLab and api/status answering)",
        "value": round(value, 3),
        "baseline": round(baseline, 3),
        "ratio": round(value / baseline, 3),
        "opens": args.opens,
        "sandbox_runs": [round(x, 3) for x in timed["sandbox"]],
        "no_sandbox_runs": [round(x, 3) for x in timed["no_sandbox"]],
        "first_open_with_account_creation": {name: round(x, 3) for name, x in first.items()},
        "load_average": os.getloadavg()[0],
    }
    print(
        f"workspace open, median of {args.opens}: sandbox {value:.2f} s, without {baseline:.2f} s, "
        f"ratio {value / baseline:.2f}",
        file=sys.stderr,
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
