"""The re-run sandbox (jupyter/rerun.py) runs a notebook with no network, only its home and the extract,
and limits; code that reaches further fails with the reason, and no data comes back in the log.

Real bubblewrap, the real workspace runtime and real notebooks executed by nbclient; nothing mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jupyter.client import extract_version
from jupyter.rerun import HOME, Limits, bwrap_argv
from tests.jupyter.realhub import RUNTIME

REPO = Path(__file__).resolve().parents[2]
RUNTIME_PYTHON = RUNTIME / "bin" / "python"

needs_sandbox = [
    pytest.mark.skipif(
        not RUNTIME_PYTHON.exists(), reason=f"WORKSPACE RUNTIME NOT BUILT at {RUNTIME}: run make workspace-runtime"
    ),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="BUBBLEWRAP NOT INSTALLED (make workspace-runtime)"),
]


def notebook(*cells: str) -> str:
    return json.dumps(
        {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "cells": [
                {
                    "cell_type": "code",
                    "id": f"c{i}",
                    "metadata": {},
                    "execution_count": None,
                    "outputs": [],
                    "source": c,
                }
                for i, c in enumerate(cells)
            ],
        }
    )


def run(tmp_path: Path, code: str, *, kind: str = "notebook", extract: Path | None = None, **limits: Any) -> dict:
    name = {"notebook": "analysis.ipynb", "script": "analysis.py", "r": "analysis.R"}[kind]
    kind = "script" if kind == "r" else kind
    code_file = tmp_path / "code"
    code_file.write_text(code)
    work = tmp_path / "work"
    work.mkdir()
    plan = {
        "runtime": str(RUNTIME),
        "work": str(work),
        "code_file": str(code_file),
        "code_path": name,
        "kind": kind,
        "extract": str(extract or ""),
        "extract_version": extract_version(extract) if extract else None,
        "limits": {"memory_bytes": 3 * 1024**3, "wall_seconds": 120, **limits},
    }
    done = subprocess.run(
        [sys.executable, "-m", "jupyter.rerun"],
        input=json.dumps(plan).encode(),
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    return json.loads(done.stdout)


def test_bwrap_line_unshares_the_network_and_drops_every_capability() -> None:
    argv = bwrap_argv(
        runtime="/opt/rt", home="/w/home", extract="/x/p1", driver="/d.py", binds=[], files={}, tmp_bytes=1
    )

    assert "--unshare-net" in argv and "--unshare-user" in argv and "--disable-userns" in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("/x/p1") - 1] == "--ro-bind"  # the extract, read-only
    assert argv[argv.index(HOME) - 2] == "--bind"  # only the home takes writes
    assert "/root" not in argv and not any(a.startswith("/var") for a in argv)


def test_limits_refuse_a_limit_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Limits.from_dict({"memory_bytes": 0})


@pytest.mark.integration
class TestSandbox:
    pytestmark = needs_sandbox

    def test_a_notebook_reading_the_extract_writes_outputs_that_come_back(self, tmp_path: Path) -> None:
        extract = tmp_path / "extract" / "p1"
        (extract / "cohort").mkdir(parents=True)
        (extract / "cohort" / "manifest.json").write_text('{"rows": 3}')
        (extract / "cohort" / "rows.csv").write_text("age\n40\n50\n60\n")
        code = notebook(
            "import os, pandas as pd\n"
            "frame = pd.read_csv(os.path.join(os.environ['TRE_EXTRACT_DIR'], 'cohort', 'rows.csv'))\n"
            "frame[frame.age > 45].describe().to_csv('outputs/summary.csv')"
        )

        answer = run(tmp_path, code, extract=extract)

        assert answer["status"] == "done", answer
        assert set(answer["files"]) == {"outputs/summary.csv"}
        made = (tmp_path / "work" / "made" / "outputs" / "summary.csv").read_text()
        assert "count,2.0" in made

    def test_a_notebook_that_tries_the_network_fails_saying_so(self, tmp_path: Path) -> None:
        # A port that answers on the host: the sandbox must not reach even that.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        try:
            code = notebook(
                "import socket\n"
                f"socket.create_connection(('127.0.0.1', {port}), timeout=5)\n"
                "socket.create_connection(('192.0.2.1', 443), timeout=5)"
            )

            answer = run(tmp_path, code)
        finally:
            listener.close()

        assert answer["status"] == "failed"
        assert "network" in answer["reason"] and "cell 1" in answer["reason"]

    def test_a_notebook_that_reads_the_host_file_system_fails_saying_so(self, tmp_path: Path) -> None:
        secret = tmp_path / "instance-secret.txt"
        secret.write_text("the master key")
        code = notebook(f"print(open({str(secret)!r}).read())")

        answer = run(tmp_path, code)

        assert answer["status"] == "failed"
        assert "reached for a file the re-run does not have" in answer["reason"]
        assert "master key" not in json.dumps(answer)

    def test_a_notebook_that_cannot_write_the_extract(self, tmp_path: Path) -> None:
        extract = tmp_path / "extract" / "p1"
        (extract / "cohort").mkdir(parents=True)
        (extract / "cohort" / "rows.csv").write_text("age\n40\n")
        code = notebook(f"open({str(extract / 'cohort' / 'rows.csv')!r}, 'w').write('age\\n1\\n')")

        answer = run(tmp_path, code, extract=extract)

        assert answer["status"] == "failed" and "EROFS" in answer["reason"]
        assert (extract / "cohort" / "rows.csv").read_text() == "age\n40\n"

    def test_a_notebook_that_needs_more_memory_than_allowed_fails_saying_so(self, tmp_path: Path) -> None:
        code = notebook("block = bytearray(2 * 1024 ** 3)")

        answer = run(tmp_path, code, memory_bytes=1024**3)

        assert answer["status"] == "failed"
        assert "more memory than the re-run allows (1024 MB)" in answer["reason"]

    def test_a_script_that_raises_reports_the_type_and_line_never_the_value(self, tmp_path: Path) -> None:
        code = "import pandas as pd\nrow = {'nhs_number': '9434765919'}\nraise KeyError(row['nhs_number'])\n"

        answer = run(tmp_path, code, kind="script")

        assert answer["status"] == "failed"
        assert "KeyError" in answer["reason"] and "raise KeyError(row['nhs_number'])" in answer["reason"]
        assert "9434765919" not in json.dumps({k: v for k, v in answer.items() if k != "reason"})

    def test_code_using_more_cpu_than_allowed_is_stopped_saying_so(self, tmp_path: Path) -> None:
        code = "while True:\n    pass\n"

        answer = run(tmp_path, code, kind="script", cpu_seconds=2)

        assert answer["status"] == "failed" and "CPU (2 s)" in answer["reason"]

    def test_code_writing_more_than_the_disk_limit_fails_saying_so(self, tmp_path: Path) -> None:
        code = "open('outputs/big.bin', 'wb').write(b'0' * (3 * 1024 * 1024))\n"

        answer = run(tmp_path, code, kind="script", disk_bytes=1024 * 1024)

        assert answer["status"] == "failed" and "disk limit (1048576 bytes" in answer["reason"]

    def test_code_running_longer_than_the_wall_time_is_killed(self, tmp_path: Path) -> None:
        code = "import threading\nthreading.Event().wait()\n"  # waits for ever, using no CPU

        answer = run(tmp_path, code, kind="script", wall_seconds=3)

        assert answer["status"] == "failed" and "wall-time limit (3 s)" in answer["reason"]

    def test_a_rebuilt_extract_is_not_re_run_against(self, tmp_path: Path) -> None:
        extract = tmp_path / "extract" / "p1"
        (extract / "cohort").mkdir(parents=True)
        (extract / "cohort" / "manifest.json").write_text('{"rows": 3}')
        code_file = tmp_path / "code"
        code_file.write_text(notebook("1"))
        work = tmp_path / "work"
        work.mkdir()
        plan = {
            "runtime": str(RUNTIME),
            "work": str(work),
            "code_file": str(code_file),
            "code_path": "a.ipynb",
            "kind": "notebook",
            "extract": str(extract),
            "extract_version": "0" * 64,
            "limits": {},
        }
        done = subprocess.run(
            [sys.executable, "-m", "jupyter.rerun"], input=json.dumps(plan).encode(), capture_output=True, check=True
        )

        answer = json.loads(done.stdout)
        assert answer["status"] == "failed" and "extract has changed" in answer["reason"]


@pytest.mark.integration
class TestRSandbox:
    pytestmark = [
        *needs_sandbox,
        pytest.mark.skipif(
            not (RUNTIME / "share" / "jupyter" / "kernels" / "ir" / "kernel.json").exists(),
            reason="R NOT INSTALLED in the workspace runtime (make workspace-runtime as root)",
        ),
    ]

    def test_an_r_script_reading_the_host_file_system_fails_saying_so_without_the_message(self, tmp_path: Path) -> None:
        secret = tmp_path / "instance-secret.csv"
        secret.write_text("key\nthe master key\n")
        code = f'ok <- 1\nrows <- read.csv("{secret}")\nprint(rows)\n'

        answer = run(tmp_path, code, kind="r")

        assert answer["status"] == "failed"
        assert "reached for a file the re-run does not have" in answer["reason"] and "ENOENT" in answer["reason"]
        assert f'read.csv("{secret}")' in answer["reason"]  # the line of code, not R's message
        assert "master key" not in json.dumps(answer) and "cannot open" not in json.dumps(answer)

    def test_an_r_script_that_tries_the_network_fails_saying_so(self, tmp_path: Path) -> None:
        code = 'lines <- readLines(url("http://192.0.2.1/data.csv"))\n'

        answer = run(tmp_path, code, kind="r")

        assert answer["status"] == "failed" and "network" in answer["reason"], answer

    def test_an_r_script_writing_outputs_comes_back(self, tmp_path: Path) -> None:
        code = 'write.csv(data.frame(n = c(10, 20)), "outputs/counts.csv", row.names = FALSE)\n'

        answer = run(tmp_path, code, kind="r")

        assert answer["status"] == "done", answer
        assert (tmp_path / "work" / "made" / "outputs" / "counts.csv").read_text() == '"n"\n10\n20\n'
