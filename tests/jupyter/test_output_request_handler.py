"""JupyterLab's "Submit for output checking…" posts to the workspace server, which submits files of the home.

A real ``jupyter server`` runs under the workspace runtime's Python with this checkout's
``jupyter.workspace_guard`` (the repository first on its path) and the guarded contents manager, as in a
workspace; the output queue is the fake control plane on real HTTP. The browser's side is proved in
tests/e2e/test_workspace_journey.py.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.jupyter.fake_control_plane import FakeControlPlane
from tests.jupyter.realhub import RUNTIME, RUNTIME_READY, free_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not RUNTIME_READY, reason=f"WORKSPACE RUNTIME NOT BUILT at {RUNTIME}: run make workspace-runtime"
)


@dataclass
class WorkspaceServer:
    url: str
    token: str
    home: Path
    outside: Path
    queue: FakeControlPlane

    def submit(self, body: object, **headers: str) -> requests.Response:
        return requests.post(
            f"{self.url}/tre/output-requests",
            data=json.dumps(body),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json", **headers},
            timeout=60,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkspaceServer]:
    base = tmp_path_factory.mktemp("workspace")
    extract = base / "store" / "extract"
    extract.mkdir(parents=True)
    (extract / "notes.csv").write_text("nhs_number,age\n9434765919,47\n")
    outside = base / "elsewhere.csv"
    outside.write_text("someone else's\n")
    # As the spawner lays it out: outputs/ and extract/ in the home are links to the project's folders.
    outputs = base / "store" / "outputs"
    outputs.mkdir()
    home = base / "home"
    home.mkdir()
    (home / "outputs").symlink_to(outputs)
    (home / "notes.txt").write_text("my own notes\n")
    (home / "analysis.ipynb").write_text('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}')
    (home / "outputs" / "table1.csv").write_text("band,n\n40-49,15\n")
    (home / "outputs" / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (home / "extract").symlink_to(extract)
    (home / "outputs" / "peek.csv").symlink_to(extract / "notes.csv")
    (home / "outputs" / "away.csv").symlink_to(outside)
    config = base / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "ServerApp": {
                    "jpserver_extensions": {"jupyter.workspace_guard": True},
                    "contents_manager_class": "jupyter.workspace_guard.GuardedContentsManager",
                }
            }
        )
    )
    queue = FakeControlPlane(service_secret=secrets.token_hex(16)).start()
    token, port = secrets.token_hex(16), free_port()
    env = {
        "PATH": f"{RUNTIME / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONPATH": str(REPO),
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "TRE_EXTRACT_DIR": str(extract),
        "TRE_OUTPUTS_DIR": str(outputs),
        "TRE_OUTPUT_API": queue.url,
        "TRE_OUTPUT_TOKEN": queue.output_token,
    }
    log = (base / "server.log").open("wb")
    process = subprocess.Popen(
        [
            str(RUNTIME / "bin" / "python"), "-m", "jupyter_server", "--no-browser", "--ip=127.0.0.1",
            f"--port={port}", f"--ServerApp.root_dir={home}", f"--IdentityProvider.token={token}",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(f"{url}/api/status", headers={"Authorization": f"token {token}"}, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (base / "server.log").read_text()[-3000:]
            time.sleep(0.3)
        yield WorkspaceServer(url, token, home, outside, queue)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        queue.stop()


REQUEST = {"title": "Ages", "context": "Table 1: patients by age band", "controls": "Counts under 10 suppressed"}


def test_selected_files_of_the_home_are_submitted_with_title_context_and_controls(server: WorkspaceServer) -> None:
    answer = server.submit({"paths": ["outputs/table1.csv", "/outputs/figure.png", "notes.txt"], **REQUEST})

    assert answer.status_code == 201, answer.text
    sent = server.queue.submissions[-1]
    assert answer.json()["id"] == sent["id"] and answer.json()["state"] == "submitted"
    assert sent["fields"] == {
        "title": "Ages",
        "context": "Table 1: patients by age band",
        "controls": "Counts under 10 suppressed",
    }
    assert sent["files"] == {
        "table1.csv": b"band,n\n40-49,15\n",
        "figure.png": (server.home / "outputs" / "figure.png").read_bytes(),
        "notes.txt": b"my own notes\n",
    }


@pytest.mark.parametrize(
    "path",
    ["../elsewhere.csv", "outputs/../../elsewhere.csv", "outputs/away.csv", "outputs/.."],
    ids=["dotdot", "nested", "link", "store"],
)
def test_files_outside_the_home_are_refused_whatever_path_names_them(server: WorkspaceServer, path: str) -> None:
    before = len(server.queue.submissions)

    answer = server.submit({"paths": ["outputs/table1.csv", path], **REQUEST})

    assert answer.status_code == 403
    assert "outside your workspace home" in answer.json()["message"]
    assert len(server.queue.submissions) == before


@pytest.mark.parametrize("path", ["extract/notes.csv", "outputs/peek.csv", "extract"], ids=["file", "link", "folder"])
def test_the_extract_is_refused_whatever_path_names_it(server: WorkspaceServer, path: str) -> None:
    before = len(server.queue.submissions)

    answer = server.submit({"paths": [path], **REQUEST})

    assert answer.status_code == 403
    assert "is in the extract" in answer.json()["message"]
    assert len(server.queue.submissions) == before


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({**REQUEST, "paths": []}, "at least one file"),
        ({"paths": ["outputs/table1.csv"], "controls": "suppressed"}, "(context)"),
        ({"paths": ["outputs/table1.csv"], "context": "Table 1", "controls": "   "}, "(controls)"),
        ({**REQUEST, "paths": ["outputs"]}, "is not a file"),
        ({**REQUEST, "paths": ["outputs/none.csv"]}, "is not a file"),
        ({**REQUEST, "paths": ["outputs/table1.csv"], "context": 5}, "must be text"),
        (["outputs/table1.csv"], "JSON object"),
    ],
    ids=["no-files", "no-context", "blank-controls", "folder", "missing-file", "not-text", "not-an-object"],
)
def test_incomplete_requests_are_refused_with_what_is_missing(server: WorkspaceServer, body: object, says: str) -> None:
    before = len(server.queue.submissions)

    answer = server.submit(body)

    assert answer.status_code == 400
    assert says in answer.json()["message"]
    assert len(server.queue.submissions) == before


def test_unauthenticated_and_cross_site_posts_are_refused_but_jupyterlabs_own_are_not(server: WorkspaceServer) -> None:
    before = len(server.queue.submissions)
    body = json.dumps({"paths": ["outputs/table1.csv"], **REQUEST})
    anonymous = requests.post(f"{server.url}/tre/output-requests", data=body, timeout=10)
    # Signed in with the browser's cookie, but without the XSRF header JupyterLab sends: a forged form.
    browser = requests.Session()
    browser.get(f"{server.url}/login?next=/lab", timeout=10)
    signed_in = browser.post(
        f"{server.url}/login", data={"password": server.token, "_xsrf": browser.cookies.get("_xsrf", "")}, timeout=10
    )
    forged = browser.post(f"{server.url}/tre/output-requests", data=body, timeout=10)
    # What JupyterLab sends: the same cookie and the XSRF token in a header.
    lab = browser.post(
        f"{server.url}/tre/output-requests", data=body, headers={"X-XSRFToken": browser.cookies["_xsrf"]}, timeout=60
    )

    assert anonymous.status_code == 403
    assert signed_in.ok and any(name.startswith("username-") for name in browser.cookies.keys())
    assert forged.status_code == 403
    assert lab.status_code == 201
    assert len(server.queue.submissions) == before + 1


def test_a_refusal_by_the_output_queue_is_reported(server: WorkspaceServer) -> None:
    server.queue.fail_with = 503
    try:
        answer = server.submit({"paths": ["outputs/table1.csv"], **REQUEST})
    finally:
        server.queue.fail_with = None

    assert answer.status_code == 502
    assert "The output queue refused the request (HTTP 503)" in answer.json()["message"]


def test_a_returned_request_is_resubmitted_with_the_selected_files(server: WorkspaceServer) -> None:
    answer = server.submit({"resubmit": "req-returned1", "paths": ["outputs/table1.csv"], "controls": "Rounded to 5"})

    assert answer.status_code == 201, answer.text
    sent = server.queue.submissions[-1]
    assert sent["resubmission_of"] == "req-returned1" and answer.json()["id"] == "req-returned1"
    assert sent["fields"] == {"controls": "Rounded to 5"}  # context not sent: the request keeps its own
    assert sent["files"] == {"table1.csv": b"band,n\n40-49,15\n"}


def test_the_resubmission_dialog_reads_a_returned_requests_files_and_the_checkers_comments(
    server: WorkspaceServer,
) -> None:
    server.queue.requests["req-back1"] = {
        "id": "req-back1", "title": "Ages", "state": "returned", "round": 1, "project_id": "P1",
        "files": [{"id": "f1", "name": "table1.csv", "group": "tables", "sha256": "ab", "kind": "table",
                   "automated_status": "fail", "reasons": ["cell under 10"], "recompute": {}}],
        "shared_comments": [{"round": 1, "body": "Round the counts to 5", "created_at": "2026-12-06T00:00:00"}],
        "decisions": [],
    }  # fmt: skip

    answer = requests.get(
        f"{server.url}/tre/output-requests/req-back1", headers={"Authorization": f"token {server.token}"}, timeout=60
    )

    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "id": "req-back1", "title": "Ages", "state": "returned", "round": 1,
        "files": [{"name": "table1.csv", "group": "tables", "automated_status": "fail"}],
        "comments": ["Round the counts to 5"],
    }  # fmt: skip
    unknown = requests.get(
        f"{server.url}/tre/output-requests/req-nothere", headers={"Authorization": f"token {server.token}"}, timeout=60
    )
    assert unknown.status_code == 502 and "No such output request" in unknown.json()["message"]
    anonymous = requests.get(f"{server.url}/tre/output-requests/req-back1", timeout=60)
    assert anonymous.status_code == 403


def test_a_file_of_another_name_replaces_the_chosen_file_in_its_group(server: WorkspaceServer) -> None:
    answer = server.submit(
        {"resubmit": "req-back2", "replace": "old_table.csv", "group": "tables", "paths": ["outputs/table1.csv"]}
    )

    assert answer.status_code == 201, answer.text
    sent = server.queue.submissions[-1]
    assert sent["resubmission_of"] == "req-back2"
    assert sent["files"] == {"table1.csv": b"band,n\n40-49,15\n"}
    assert sent["fields"] == {"group": "tables", "remove": '["old_table.csv"]'}


def test_a_file_of_the_same_name_replaces_it_without_a_removal(server: WorkspaceServer) -> None:
    answer = server.submit({"resubmit": "req-back3", "replace": "table1.csv", "paths": ["outputs/table1.csv"]})

    assert answer.status_code == 201, answer.text
    assert server.queue.submissions[-1]["fields"] == {}
    assert server.queue.submissions[-1]["files"] == {"table1.csv": b"band,n\n40-49,15\n"}


def test_one_replacement_file_only_and_never_one_from_the_extract(server: WorkspaceServer) -> None:
    before = len(server.queue.submissions)

    two = server.submit({"resubmit": "req-back4", "replace": "t.csv", "paths": ["notes.txt", "outputs/table1.csv"]})
    extract = server.submit({"resubmit": "req-back4", "replace": "t.csv", "paths": ["extract/notes.csv"]})

    assert two.status_code == 400 and "exactly one file" in two.json()["message"]
    assert extract.status_code == 403
    assert len(server.queue.submissions) == before


def test_the_open_notebook_goes_with_the_files_as_their_code(server: WorkspaceServer) -> None:
    answer = server.submit({"paths": ["outputs/table1.csv"], "code": "analysis.ipynb", **REQUEST})

    assert answer.status_code == 201, answer.text
    sent = server.queue.submissions[-1]
    assert sent["code"] == {"analysis.ipynb": (server.home / "analysis.ipynb").read_bytes()}
    assert sent["fields"]["code_path"] == "analysis.ipynb"
    assert sent["files"] == {"table1.csv": b"band,n\n40-49,15\n"}


def test_code_in_the_extract_is_refused_like_a_file_there(server: WorkspaceServer) -> None:
    before = len(server.queue.submissions)

    answer = server.submit({"paths": ["outputs/table1.csv"], "code": "extract/notes.csv", **REQUEST})

    assert answer.status_code == 403
    assert len(server.queue.submissions) == before
