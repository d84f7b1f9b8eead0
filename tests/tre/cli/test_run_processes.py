"""`tre run` on a machine with two instances: nothing the web server makes is shared between them, and
the sweep at its end stops what this instance left running (a hub's culler too), nothing of the other's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

from traitlets.config import Config

from jupyter.hub_config import HubSettings, configure
from tre.cli.processes import _stop_stragglers, _web_argv


def test_each_instance_gets_its_own_gunicorn_control_socket(tmp_path: Path):
    first = types.SimpleNamespace(host="127.0.0.1", port=5000, instance_path=tmp_path / "a")
    second = types.SimpleNamespace(host="127.0.0.1", port=5001, instance_path=tmp_path / "b")

    sockets = [argv[argv.index("--control-socket") + 1] for argv in (_web_argv(first), _web_argv(second))]

    assert sockets == [str(tmp_path / "a" / "gunicorn.ctl"), str(tmp_path / "b" / "gunicorn.ctl")]


def _as_the_hub_starts_a_service(entry: dict[str, Any]) -> dict[str, str]:
    """The environment JupyterHub gives a managed service: not the hub's own, only PATH and the like,
    the service's ``environment`` and the hub's own variables (jupyterhub.services.service)."""
    return {"PATH": os.environ.get("PATH", ""), **entry.get("environment", {}),
            "JUPYTERHUB_SERVICE_NAME": entry["name"]}


def _culler(tmp_path: Path, instance: Path) -> dict[str, Any]:
    c = Config()
    configure(c, HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path / instance.name / "hub"),
                                       "TRE_INSTANCE_PATH": str(instance)}))
    return next(s for s in c.JupyterHub.services if s["name"] == "idle-culler")


def test_the_sweep_stops_a_culler_left_by_its_hub_and_not_another_instances(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "instance", tmp_path / "instance-2"  # one's path begins the other's
    idle = [sys.executable, "-c", "import time; time.sleep(600)"]  # the culler's wait, without a hub
    orphan = subprocess.Popen(idle, env=_as_the_hub_starts_a_service(_culler(tmp_path, mine)),  # noqa: S603
                              start_new_session=True)
    other = subprocess.Popen(idle, env=_as_the_hub_starts_a_service(_culler(tmp_path, theirs)),  # noqa: S603
                             start_new_session=True)
    try:
        command_line = Path(f"/proc/{orphan.pid}/cmdline").read_bytes()

        _stop_stragglers(mine, strays=[])

        assert str(mine).encode() not in command_line
        assert orphan.wait(timeout=30) == -signal.SIGTERM
        assert other.poll() is None
    finally:
        for proc in (orphan, other):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
