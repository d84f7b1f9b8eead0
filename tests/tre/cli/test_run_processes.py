"""`tre run` on a machine with two instances: nothing the web server makes is shared between them."""

from __future__ import annotations

import types
from pathlib import Path

from tre.cli.processes import _web_argv


def test_each_instance_gets_its_own_gunicorn_control_socket(tmp_path: Path):
    first = types.SimpleNamespace(host="127.0.0.1", port=5000, instance_path=tmp_path / "a")
    second = types.SimpleNamespace(host="127.0.0.1", port=5001, instance_path=tmp_path / "b")

    sockets = [argv[argv.index("--control-socket") + 1] for argv in (_web_argv(first), _web_argv(second))]

    assert sockets == [str(tmp_path / "a" / "gunicorn.ctl"), str(tmp_path / "b" / "gunicorn.ctl")]
