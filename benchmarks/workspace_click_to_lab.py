"""Benchmark: "Open workspace" pressed on the project page to JupyterLab usable, through the real service.

Run (as root, with the workspace runtime built):  python -m benchmarks.workspace_click_to_lab [--opens 5]

The service starts as ``tre run`` starts it (gunicorn, worker, sweeper and the real JupyterHub with the
secure spawner) on a fresh instance with the demo loaded. Rita signs in with her password and TOTP code,
once. One open is what her browser waits for after the press: the control plane's POST (gate, single-use
token, handoff page), the token POSTed to the hub, the spawn and its progress stream until ready, the
hub's OAuth round trip to her server, JupyterLab's page, ``api/status``, the workspace settings JupyterLab
reads at start, and the file browser's listing of her home showing ``extract`` (what the e2e journey
waits for in Chromium). The browser's own loading of JupyterLab's JavaScript is not in it.

Two kinds of open, alternating so the machine's load falls on both alike:

* **cold**: the first open of the project for this person. Before it, her server is removed through the
  hub's API (``{"remove": true}``: the hub deletes her unix account and home) and the project's unix
  group is deleted, so the open creates group, account, home, namespace and sandbox.
* **warm**: the server was stopped (not removed) after an earlier open: account and home exist.

Baseline, with ``--baseline-runtime PREFIX`` (a runtime built before the opening-fast changes, or the same
runtime to see the hub's part alone): a second service, started the same way, whose hub leaves the
readiness checks to JupyterHub (``TRE_HUB_READY_POLL_SECONDS=0``) and gives a starting server no larger
CPU share (``TRE_HUB_START_NICE=0``, ADR 0028), and whose workspaces run that runtime; the two services
take turns, open by open. Without it the baseline is the warm p50 of the one service. The first open of
each service (the runtime's files first read from disk) is not counted. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

RITA = "rita.researcher@demo.tre.example"
PROJECT_TITLE = "Heart failure readmissions"


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (p95 of 5 runs is the slowest run)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * share // 1))
    return ordered[int(rank) - 1]


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    if not found:
        raise SystemExit("no CSRF field on the page")
    return found.group(1)


class Researcher:
    """Rita's browser, as far as HTTP goes: one session for the control plane and the hub."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.http = requests.Session()
        self.project_id = ""

    def sign_in(self) -> None:
        url = self.service.url
        page = self.http.get(f"{url}/auth/login", timeout=30)
        form = {"csrf_token": _csrf(page.text), "next": "", "email": RITA, "password": self.service.password(RITA)}
        mfa = self.http.post(f"{url}/auth/login", data=form, timeout=30)
        done = self.http.post(
            mfa.url, data={"csrf_token": _csrf(mfa.text), "code": self.service.code(RITA)}, timeout=30
        )
        projects = self.http.get(f"{url}/projects/", timeout=30)
        found = re.search(r'href="/projects/([0-9a-f]{32})"[^>]*>\s*' + re.escape(PROJECT_TITLE), projects.text)
        if done.status_code != 200 or not found:
            raise SystemExit(f"could not sign in as {RITA} and find the project ({done.status_code})")
        self.project_id = found.group(1)

    def _follow(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Follow redirects one hop at a time, each with the session's cookies as they are now (as a browser
        does; requests' own redirect handling can resend a cookie the hub has just replaced)."""
        for _ in range(20):
            answer = self.http.request(method, url, allow_redirects=False, **kwargs)
            if answer.status_code not in (301, 302, 303, 307, 308):
                return answer
            url = urljoin(url, answer.headers["Location"])
            if answer.status_code in (301, 302, 303):
                method, kwargs = "GET", {key: v for key, v in kwargs.items() if key not in ("data", "headers")}
        raise SystemExit(f"too many redirects at {url}")

    def open_workspace(self) -> dict[str, float]:
        """Press "Open workspace" and wait until JupyterLab is usable; the time of each step, cumulative."""
        from projects.workspaces import server_name

        url, hub = self.service.url, self.service.hub_url
        page = self.http.get(f"{url}/projects/{self.project_id}", timeout=30)
        csrf = _csrf(page.text)
        marks: dict[str, float] = {}
        started = time.monotonic()
        handoff = self.http.post(f"{url}/projects/{self.project_id}/workspace", data={"csrf_token": csrf},
                                 timeout=60)
        token = re.search(r'name="token" value="([^"]+)"', handoff.text)
        if not token:
            raise SystemExit(f"the control plane gave no workspace token: {handoff.status_code}")
        marks["control_plane"] = time.monotonic() - started
        spawn = self._follow("POST", f"{hub}/hub/tre-login", data={"token": token.group(1)},
                             headers={"Origin": url}, timeout=120)
        marks["hub_login_and_spawn_page"] = time.monotonic() - started
        username = urlsplit(spawn.url).path.rstrip("/").split("/")[-2] if "/spawn-pending/" in spawn.url else ""
        server = server_name(self.project_id)
        if "/spawn-pending/" in spawn.url:
            self._wait_for_progress(hub, username, server)
        marks["server_ready"] = time.monotonic() - started
        lab = self._follow("GET", f"{hub}/hub/spawn-pending/{username}/{server}" if username else spawn.url,
                           timeout=120)
        if not lab.url.split("?")[0].endswith("/lab") or lab.status_code != 200:
            raise SystemExit(f"JupyterLab did not answer: {lab.status_code} at {lab.url}")
        base = lab.url.split("/lab", 1)[0] + "/"
        marks["lab_page"] = time.monotonic() - started
        xsrf = self.http.cookies.get("_xsrf", path=urlsplit(base).path) or ""
        headers = {"X-XSRFToken": xsrf}
        for path in ("api/status", "lab/api/settings", "api/kernelspecs", "api/contents?content=1"):
            answer = self.http.get(urljoin(base, path), headers=headers, timeout=60)
            if answer.status_code != 200:
                raise SystemExit(f"{path}: {answer.status_code}")
        names = {item["name"] for item in answer.json()["content"]}
        if "extract" not in names:
            raise SystemExit(f"the file browser does not show extract/: {sorted(names)}")
        marks["usable"] = time.monotonic() - started
        return marks

    def _wait_for_progress(self, hub: str, username: str, server: str) -> None:
        xsrf = self.http.cookies.get("_xsrf", path="/hub/") or ""
        progress = f"{hub}/hub/api/users/{username}/servers/{server}/progress"
        with self.http.get(progress, params={"_xsrf": xsrf}, stream=True, timeout=180) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line and line.startswith("data:") and json.loads(line[5:]).get("ready"):
                    return
        raise SystemExit("the spawn's progress stream ended without the server being ready")


class HubAdmin:
    """The control plane's token for the hub API (stop and remove servers)."""

    def __init__(self, service: Any) -> None:
        self.hub = service.hub_url
        self.token = (service.instance / "hub-api-token").read_text().strip()

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.hub}/hub/api{path}", headers={"Authorization": f"token {self.token}"},
                                timeout=60, **kwargs)

    def wait_gone(self, username: str, server: str, removed: bool) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            model = self.call("GET", f"/users/{username}", params={"include_stopped_servers": "1"}).json()
            state = model.get("servers", {}).get(server)
            if (state is None) if removed else (not state or not (state["ready"] or state["pending"])):
                return
            time.sleep(0.2)
        raise SystemExit(f"{username}/{server} did not {'go' if removed else 'stop'}")

    def stop(self, username: str, server: str, remove: bool) -> None:
        answer = self.call("DELETE", f"/users/{username}/servers/{server}", json={"remove": remove})
        if answer.status_code not in (202, 204):
            raise SystemExit(f"could not stop {username}/{server}: {answer.status_code} {answer.text[:200]}")
        self.wait_gone(username, server, removed=remove)


def _forget_project_group(project_id: str) -> None:
    from tre.core.filemodes import project_group_name

    subprocess.run(["groupdel", project_group_name(project_id)], capture_output=True, check=False)


def start_service(base: Path, runtime: str, ready_poll: str) -> Any:
    from tests.e2e.conftest import LiveService, free_port

    service = LiveService(base / "instance", free_port())
    # The baseline leaves the readiness checks to JupyterHub and gives a start no larger CPU share.
    start_nice = "-10" if float(ready_poll) > 0 else "0"
    service.env.update(TRE_WORKSPACE_RUNTIME=runtime, TRE_HUB_READY_POLL_SECONDS=ready_poll,
                       TRE_HUB_START_NICE=start_nice)
    service.start()
    return service


class Variant:
    """One service (tre run + hub) and Rita signed in to it."""

    def __init__(self, name: str, service: Any) -> None:
        from projects.workspaces import hub_username, server_name

        self.name, self.service = name, service
        self.rita = Researcher(service)
        self.rita.sign_in()
        self.admin = HubAdmin(service)
        self.username, self.server = hub_username(rita_user_id(service)), server_name(self.rita.project_id)
        self.runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}

    def open(self, kind: str) -> None:
        if kind == "cold":
            self.admin.stop(self.username, self.server, remove=True)  # the hub deletes account and home
            _forget_project_group(self.rita.project_id)
        self.runs[kind].append(self.rita.open_workspace())
        self.admin.stop(self.username, self.server, remove=False)

    def remove(self) -> None:
        self.admin.stop(self.username, self.server, remove=True)
        _forget_project_group(self.rita.project_id)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=5, help="cold and warm opens each, per service")
    parser.add_argument("--runtime", default=os.environ.get("TRE_WORKSPACE_RUNTIME", "/opt/tre-workspace"),
                        help="the runtime as built from this checkout")
    parser.add_argument("--baseline-runtime", default="",
                        help="a runtime built before the opening-fast changes; with it a second service runs "
                        "side by side (JupyterHub's own readiness checks, that runtime) as the baseline")
    parser.add_argument("--keep-logs", default="", help="copy each service's log (tre run, the hub) into this folder")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root: the hub's secure spawner makes a unix account per workspace")

    plans = {"as_built": (args.runtime, "0.05")}
    if args.baseline_runtime:
        plans["baseline"] = (args.baseline_runtime, "0")
    variants: dict[str, Variant] = {}
    services: list[Any] = []
    folders: list[Path] = []
    try:
        for name, (runtime, poll) in plans.items():
            base = Path(tempfile.mkdtemp(prefix=f"tre-bench-open-{name}-", dir="/var/tmp"))
            base.chmod(0o711)
            folders.append(base)
            print(f"starting the {name} service (tre init, demo load, tre run)...", file=sys.stderr)
            services.append(start_service(base, runtime, poll))
            variants[name] = Variant(name, services[-1])
        for variant in variants.values():
            variant.open("warm")  # the hub's and the runtime's first start on this machine: not counted
            variant.runs["warm"].clear()
        for _ in range(args.opens):
            for kind in ("cold", "warm"):
                for variant in variants.values():  # taking turns, so load falls on both alike
                    variant.open(kind)
        for variant in variants.values():
            variant.remove()
    finally:
        for service in services:
            service.stop()
        if args.keep_logs:
            Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
            for name, service in zip(plans, services, strict=False):
                shutil.copy(service.log, Path(args.keep_logs) / f"{name}-service.log")
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    return report({name: v.runs for name, v in variants.items()}, args)


def rita_user_id(service: Any) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{service.instance / 'tre.sqlite'}")
    with engine.connect() as conn:
        found = conn.execute(text("SELECT id FROM users WHERE email = :e"), {"e": RITA}).scalar_one()
    engine.dispose()
    return str(found)


def _summary(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, rs in runs.items():
        seconds = [r["usable"] for r in rs]
        out[kind] = {
            "p50": round(statistics.median(seconds), 3),
            "p95": round(percentile(seconds, 0.95), 3),
            "runs": [round(x, 3) for x in seconds],
            "median_steps_cumulative": {step: round(statistics.median(r[step] for r in rs), 3) for step in rs[0]},
        }
    return out


def report(variants: dict[str, dict[str, list[dict[str, float]]]], args: argparse.Namespace) -> dict[str, Any]:
    summary = {name: _summary(runs) for name, runs in variants.items()}
    built = summary["as_built"]
    if "baseline" in summary:
        baseline = summary["baseline"]["cold"]["p95"]
        named = "cold p95 of the baseline service (the runtime before, JupyterHub's own readiness checks)"
    else:
        baseline, named = built["warm"]["p50"], "warm p50 of the same service"
    value = built["cold"]["p95"]
    result = {
        "benchmark": "workspace_click_to_lab",
        "unit": "seconds, Open workspace pressed to JupyterLab usable",
        "value": value,
        "value_is": "cold p95 as built",
        "baseline": baseline,
        "baseline_is": named,
        "ratio": round(value / baseline, 3),
        "opens": args.opens,
        **summary,
        "load_average": os.getloadavg()[0],
    }
    for name, kinds in summary.items():
        print(f"{name}: cold p50 {kinds['cold']['p50']:.2f} s p95 {kinds['cold']['p95']:.2f} s; "
              f"warm p50 {kinds['warm']['p50']:.2f} s p95 {kinds['warm']['p95']:.2f} s", file=sys.stderr)
    print(f"cold p95 {value:.2f} s against {named} {baseline:.2f} s: ratio {result['ratio']:.2f}", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
