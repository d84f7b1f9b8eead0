"""A real JupyterHub started with our config beside a fake control plane, for the integration and e2e tests.

As root, each workspace runs under its own unix account in its own network namespace; everything the
hub creates (accounts, groups, namespaces, nftables tables, folders) carries a random tag and is
removed when the hub stops.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.jupyter.fake_control_plane import FakeControlPlane

REPO = Path(__file__).resolve().parents[2]
RUNTIME = Path(os.environ.get("TRE_WORKSPACE_RUNTIME", "/opt/tre-workspace"))
IS_ROOT = os.geteuid() == 0
RUNTIME_READY = (RUNTIME / "bin" / "jupyterhub-singleuser").exists()

# What a test of a sandboxed workspace on the real hub needs, as its module's pytestmark.
SANDBOXED_HUB_MARKS = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not RUNTIME_READY,
        reason=f"WORKSPACE RUNTIME NOT BUILT at {RUNTIME}: run infra/jupyterhub/build-workspace-runtime.sh",
    ),
    pytest.mark.skipif(not IS_ROOT, reason="the real-hub test runs the secure (root) spawner"),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="BUBBLEWRAP NOT INSTALLED (make workspace-runtime)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Hub:
    """Handles on the running hub, its fake control plane and the test's own names."""

    def __init__(self, base: Path, fake: FakeControlPlane, tag: str) -> None:
        self.base = base
        self.fake = fake
        self.tag = tag
        self.port, self.hub_port, self.proxy_api_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cp_api_token_file = base / "state" / "hub_api_token_for_control_plane"
        self.process: subprocess.Popen[bytes] | None = None

    def account(self, who: str) -> str:
        return f"tre-{self.tag}-{who}"

    def project(self, who: str) -> str:
        return f"P{self.tag.upper()}{who.upper()}"

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        token = self.cp_api_token_file.read_text().strip()
        return requests.request(
            method,
            f"{self.url}/hub/api{path}",
            headers={"Authorization": f"token {token}"},
            timeout=30,
            **kwargs,
        )

    def grant(self, who: str, extract_root: Path | None = None, **extra_env: str) -> str:
        """Make an extract for this person's project and let the gate allow it; return the username."""
        username, project = f"u-{self.tag}{who}", self.project(who)
        extract = (extract_root or self.base / "extracts") / project
        extract.mkdir(parents=True, exist_ok=True)
        (extract / "data.csv").write_text("age_band,count\n40-49,12\n")
        self.fake.allow(
            username,
            project,
            extract_path=str(extract),
            outputs_path=str(self.base / "outputs" / f"{username}-{project.lower()}"),
            unix_user=self.account(who),
            env={
                "TRE_PROJECT_ID": project,
                "TRE_OUTPUT_TOKEN": self.fake.output_token,
                "TRE_OUTPUT_API": self.fake.url,
                **extra_env,
            },
        )
        return username

    def login(self, session: requests.Session, username: str, project: str) -> requests.Response:
        token = self.fake.issue_token(username, project)
        return session.post(
            f"{self.url}/hub/tre-login",
            data={"token": token},
            headers={"Origin": self.fake.url},
            allow_redirects=False,
            timeout=30,
        )

    def wait_ready(self, username: str, server: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{username}").json()
            state = model.get("servers", {}).get(server)
            if state and state.get("ready"):
                return state
            if state is None and time.monotonic() > deadline - timeout + 5:
                pass
            time.sleep(0.25)
        raise AssertionError(f"{username}/{server} did not become ready: {self.log_tail()}")

    def wait_stopped(self, username: str, server: str, timeout: float = 90) -> None:
        """Until the hub says the server is neither running nor stopping (its spawner's stop returned)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.api("GET", f"/users/{username}").json().get("servers", {}).get(server)
            if not state or (not state.get("ready") and not state.get("pending") and not state.get("started")):
                return
            time.sleep(0.25)
        raise AssertionError(f"{username}/{server} did not stop: {self.log_tail()}")

    def wait_removed(self, username: str, server: str, timeout: float = 90) -> None:
        """Until the hub no longer lists the server even among stopped ones (its delete_forever ran)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{username}", params={"include_stopped_servers": "1"}).json()
            if server not in model.get("servers", {}):
                return
            time.sleep(0.25)
        raise AssertionError(f"{username}/{server} was not removed: {self.log_tail()}")

    def log_tail(self) -> str:
        return (self.base / "hub.log").read_text()[-4000:]


@contextmanager
def running_hub(extra_env: dict[str, str] | None = None) -> Iterator[Hub]:
    tag = secrets.token_hex(2)
    base = Path(tempfile.mkdtemp(prefix="tre-hub-test-", dir="/var/tmp"))
    base.chmod(0o711)
    for folder in ("extracts", "outputs"):
        (base / folder).mkdir(mode=0o711)
    secret_file = base / "service-secret"
    secret_file.write_text(secrets.token_hex(16))
    secret_file.chmod(0o600)
    fake = FakeControlPlane(service_secret=secret_file.read_text()).start()
    handle = Hub(base, fake, tag)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        # This checkout's hub code, not whichever checkout the venv was installed from (editable install).
        "PYTHONPATH": str(REPO),
        "TRE_HUB_STATE_DIR": str(base / "state"),
        "TRE_HUB_PORT": str(handle.port),
        "TRE_HUB_API_PORT": str(handle.hub_port),
        "TRE_HUB_PROXY_API_PORT": str(handle.proxy_api_port),
        "TRE_CONTROL_PLANE_URL": fake.url,
        "TRE_HUB_SERVICE_TOKEN_FILE": str(secret_file),
        "TRE_WORKSPACE_RUNTIME": str(RUNTIME),
        "TRE_WORKSPACE_HOME_ROOT": str(base / "homes"),
        "TRE_HUB_EGRESS_PREFIX": f"t{tag}",
        "TRE_HUB_EGRESS_POOL": "10.238.0.0/24",
        **(extra_env or {}),
    }
    log = (base / "hub.log").open("wb")
    handle.process = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(REPO / "jupyter" / "jupyterhub_config.py")],
        cwd=base,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{handle.url}/hub/api", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if handle.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("hub did not start: " + handle.log_tail())
            time.sleep(0.25)
        yield handle
    finally:
        handle.process.send_signal(signal.SIGTERM)
        try:
            handle.process.wait(timeout=60)  # it stops every running workspace server first
        except subprocess.TimeoutExpired:
            handle.process.kill()
            handle.process.wait(timeout=30)  # reap it: an unreaped child is a ResourceWarning, an error here
        log.close()
        fake.stop()
        subprocess.run(["nft", "delete", "table", "inet", f"t{tag}_workspaces"], capture_output=True)
        # A hub killed before it stopped its workspaces leaves their namespaces (and veths) behind.
        for netns in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
            if netns.startswith(f"t{tag}-"):
                subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
        for line in Path("/etc/passwd").read_text().splitlines():
            if line.startswith(f"tre-{tag}-"):
                subprocess.run(["userdel", line.split(":")[0]], capture_output=True)
        for line in Path("/etc/group").read_text().splitlines():
            if line.startswith(f"tre-p-p{tag}"):
                subprocess.run(["groupdel", line.split(":")[0]], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
