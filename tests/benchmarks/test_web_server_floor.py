"""The web server floor benchmark's CPU accounting: a server's figure must include its worker processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.load import CLK_TCK
from benchmarks.web_server_floor import servers, tree_ticks

# A parent that starts a child which burns CPU, then waits for it: the parent itself uses almost none.
PARENT = (
    "import subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', "
    "'import time\\nend = time.process_time() + 0.6\\nwhile time.process_time() < end: pass\\n"
    "print(\"done\", flush=True)\\ninput()'], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)\n"
    "print(child.stdout.readline().strip(), flush=True)\n"
    "input()\n"
    "child.stdin.write('\\n'); child.stdin.flush(); child.wait()\n"
)


def test_a_process_tree_counts_the_cpu_its_children_used() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, stdin=subprocess.PIPE,  # noqa: S603
                              text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "done"
        # The child is still alive (it waits for a line), so its 0.6 s of CPU is below the parent.
        assert tree_ticks(parent.pid) / CLK_TCK >= 0.5
    finally:
        parent.communicate("\n", timeout=30)


def test_granian_is_compared_only_when_its_package_is_in_the_given_folder(tmp_path: Path) -> None:
    names = [server.name for server in servers("")]
    assert names[0] == "gunicorn, production" and "granian" not in names
    assert "granian" not in [server.name for server in servers(str(tmp_path))]
    (tmp_path / "granian").mkdir()
    assert "granian" in [server.name for server in servers(str(tmp_path))]
