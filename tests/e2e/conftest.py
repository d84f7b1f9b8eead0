"""End-to-end fixtures: the whole service really started (``tre run``: gunicorn, a Celery worker
and its sweeper on the embedded default), demo accounts loaded, and Debian's Chromium driven by
Playwright. Run alone with ``pytest -m e2e``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
TRE = str(Path(sys.executable).parent / "tre")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveService:
    def __init__(self, instance: Path, port: int) -> None:
        self.instance = instance
        self.url = f"http://127.0.0.1:{port}"
        hub_port = free_port()
        self.hub_url = f"http://127.0.0.1:{hub_port}"
        # Free ports for JupyterHub too, so a hub already running on this machine is no obstacle.
        self.env = dict(
            os.environ, TRE_INSTANCE_PATH=str(instance), TRE_PORT=str(port), TRE_JUPYTERHUB_URL=self.hub_url,
            TRE_HUB_API_PORT=str(free_port()), TRE_HUB_PROXY_API_PORT=str(free_port()),
        )
        self.accounts: dict[str, dict[str, Any]] = {}
        self._last_step: dict[str, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = instance.parent / "service.log"

    def start(self) -> None:
        subprocess.run([TRE, "init"], env=self.env, check=True, capture_output=True)
        subprocess.run([TRE, "demo", "load", "--patients", "2000"], env=self.env, check=True, capture_output=True)
        self.accounts = json.loads((self.instance / "demo-accounts.json").read_text())
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([TRE, "run"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("the service did not start:\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        from tre.cli.processes import _stop_stragglers

        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)  # `tre run` gives its children 30 s to stop
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        _stop_stragglers(self.instance, [])  # anything still carrying this instance's path

    def password(self, email: str) -> str:
        return str(self.accounts[email]["password"])

    def code(self, email: str) -> str:
        """A TOTP code for a demo account that the service has not seen yet. It accepts a step only
        later than the last it accepted for that person, from one step before now to one after; two
        sign-ins as one person inside one 30 s step (one test after another) take the next step, and
        a third waits on the clock for the step after that to come within reach."""
        totp = pyotp.TOTP(self.accounts[email]["totp_secret"])
        last = self._last_step.get(email)
        while True:
            now = int(time.time()) // totp.interval
            step = now if last is None else max(now, last + 1)
            if step <= now + 1:
                break
            time.sleep((step - 1) * totp.interval - time.time() + 0.05)
        self._last_step[email] = step
        return totp.generate_otp(step)


@pytest.fixture(scope="session")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    base = tmp_path_factory.mktemp("live")
    # Workspace accounts must pass through to the instance's extract folders; pytest makes its
    # temporary folders 0700, so open them to traversal (not listing), as /work or /var/lib are.
    for folder in (base, *base.parents):
        if folder == Path("/tmp") or folder == folder.parent:
            break
        folder.chmod(folder.stat().st_mode | 0o011)
    service = LiveService(base / "instance", free_port())
    service.start()
    yield service
    service.stop()


# Module scope: while Playwright's synchronous API is open it keeps an event loop running in this
# thread, which would break later tests that start their own (asyncio.run).
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("CHROMIUM IS NOT INSTALLED: run `make browser` (Debian's chromium); end-to-end tests skipped")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    pg = context.new_page()
    yield pg
    context.close()


def sign_in(page: Any, service: LiveService, email: str) -> None:
    page.goto(service.url + "/auth/login")
    page.fill("#email", email)
    page.fill("#password", service.password(email))
    page.click("main button[type=submit]")
    page.fill("#code", service.code(email))
    page.click("main button[type=submit]")
