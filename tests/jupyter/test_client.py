"""The in-workspace client sends files with context and controls to the output queue, or says why not."""

from __future__ import annotations

import json

import pytest

from jupyter.client import SubmitError, extract_version, main, request_status, resubmit, submit
from tests.jupyter.fake_control_plane import FakeControlPlane


def test_submit_posts_files_context_and_controls(fake_cp: FakeControlPlane, tmp_path):
    table = tmp_path / "table1.csv"
    table.write_text("band,n\n40-49,15\n")

    answer = submit(
        [table], "Table 1: ages", "rounded to 5", title="Ages", api=fake_cp.url, token=fake_cp.output_token
    )

    assert answer["state"] == "submitted"
    assert fake_cp.submissions[-1]["fields"] == {
        "title": "Ages",
        "context": "Table 1: ages",
        "controls": "rounded to 5",
    }
    assert fake_cp.submissions[-1]["files"] == {"table1.csv": b"band,n\n40-49,15\n"}


@pytest.mark.parametrize(("context", "controls"), [("", "rounded"), ("Table 1", "  ")])
def test_submit_requires_context_and_controls(fake_cp, tmp_path, context, controls):
    (tmp_path / "t.csv").write_text("x")

    with pytest.raises(SubmitError):
        submit([tmp_path / "t.csv"], context, controls, api=fake_cp.url, token=fake_cp.output_token)

    assert fake_cp.submissions == []


def test_wrong_token_reports_the_refusal(fake_cp, tmp_path):
    (tmp_path / "t.csv").write_text("x")

    with pytest.raises(SubmitError, match="HTTP 401"):
        submit([tmp_path / "t.csv"], "c", "k", api=fake_cp.url, token="wrong")


def test_outside_a_workspace_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("TRE_OUTPUT_API", raising=False)
    monkeypatch.delenv("TRE_OUTPUT_TOKEN", raising=False)
    (tmp_path / "t.csv").write_text("x")

    with pytest.raises(SubmitError, match="inside a TRE workspace"):
        submit([tmp_path / "t.csv"], "c", "k")


def test_cli_prints_the_request_id(fake_cp, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRE_OUTPUT_API", fake_cp.url)
    monkeypatch.setenv("TRE_OUTPUT_TOKEN", fake_cp.output_token)
    (tmp_path / "t.csv").write_text("x")
    (tmp_path / "controls.txt").write_text("suppressed below 10")

    code = main(
        [str(tmp_path / "t.csv"), "--context", "Table 2", "--controls", f"@{tmp_path / 'controls.txt'}"]
    )

    assert code == 0
    assert "Submitted output request req-" in capsys.readouterr().out
    assert fake_cp.submissions[-1]["fields"]["controls"] == "suppressed below 10"


def test_cli_missing_file_exits_non_zero(capsys):
    assert main(["/nonexistent.csv", "--context", "c", "--controls", "k"]) == 1
    assert "is not a file" in capsys.readouterr().err


def test_an_unavailable_queue_is_tried_again_with_the_same_idempotency_key(tmp_path):
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    keys: list[str] = []

    class Queue(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            keys.append(self.headers.get("Idempotency-Key", ""))
            unavailable = len(keys) < 3
            body = json.dumps({"title": "Unavailable"} if unavailable else {"id": "req-1", "state": "submitted"})
            self.send_response(503 if unavailable else 201)
            if unavailable:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Queue)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    (tmp_path / "t.csv").write_text("x")
    try:
        answer = submit([tmp_path / "t.csv"], "c", "k", api=f"http://127.0.0.1:{server.server_port}", token="t")
        first_call = list(keys)
        keys.clear()
        with pytest.raises(SubmitError, match="HTTP 503"):
            submit([tmp_path / "t.csv"], "c", "k", api=f"http://127.0.0.1:{server.server_port}", token="t", retries=0)
    finally:
        server.shutdown()
        server.server_close()

    assert answer["id"] == "req-1"
    assert len(first_call) == 3 and first_call[0] and len(set(first_call)) == 1  # one key for every try
    assert len(keys) == 1 and keys[0] != first_call[0]  # a new call is a new submission: a new key


def _session_table(folder):
    """A crosstab made through the disclosure session over a named dataset, finalised into ``folder``."""
    import pandas as pd

    from disclosure.session import Session

    session = Session(suppress=True)
    patients = session.use(
        pd.DataFrame({"sex": ["F", "M"] * 40, "age_band": ["40-49", "50-59", "60-69", "70-79"] * 20}), "patients"
    )
    women = patients[patients["sex"] == "F"]
    session.crosstab(women["age_band"], women["sex"])
    session.finalise(str(folder))
    return sorted(folder.glob("*.csv"))


def test_a_session_table_is_sent_with_its_population(fake_cp: FakeControlPlane, tmp_path):
    tables = _session_table(tmp_path / "table1")
    notes = tmp_path / "notes.csv"
    notes.write_text("band,n\n40-49,15\n")

    submit([*tables, notes], "Women by age band", "Suppression", api=fake_cp.url, token=fake_cp.output_token)

    specs = json.loads(fake_cp.submissions[-1]["fields"]["table_specs"])
    assert set(specs) == {tables[0].name}  # the hand-made CSV has no specification
    assert specs[tables[0].name]["dataset"] == "patients"
    assert specs[tables[0].name]["filters"] == [{"column": "sex", "op": "==", "value": "F"}]
    assert specs[tables[0].name]["dims"] == ["age_band", "sex"]


def test_files_without_a_session_record_send_no_specifications(fake_cp: FakeControlPlane, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("band,n\n40-49,15\n")
    (tmp_path / "results.json").write_text("{not json")

    submit([table], "c", "k", api=fake_cp.url, token=fake_cp.output_token)

    assert "table_specs" not in fake_cp.submissions[-1]["fields"]


def test_a_resubmitted_session_table_carries_its_population_too(fake_cp: FakeControlPlane, tmp_path):
    tables = _session_table(tmp_path / "again")

    resubmit("req-returned1", tables, api=fake_cp.url, token=fake_cp.output_token)

    sent = fake_cp.submissions[-1]
    assert sent["resubmission_of"] == "req-returned1"
    assert json.loads(sent["fields"]["table_specs"])[tables[0].name]["dataset"] == "patients"


def test_a_dp_table_is_sent_with_its_dp_specification(fake_cp: FakeControlPlane, tmp_path):
    import pandas as pd

    from disclosure.session import Session

    session = Session()
    patients = session.use(pd.DataFrame({"sex": ["F", "M"] * 40}), "patients")
    session.dp_count(patients, ["sex"], {"sex": ["F", "M"]}, epsilon=0.5)
    session.finalise(str(tmp_path / "dp"))
    table = tmp_path / "dp" / "output_0_0.csv"

    submit([table], "Patients by sex (DP)", "Laplace noise, epsilon 0.5", api=fake_cp.url, token=fake_cp.output_token)

    spec = json.loads(fake_cp.submissions[-1]["fields"]["table_specs"])[table.name]
    assert (spec["route"], spec["epsilon"], spec["categories"]) == ("dp", 0.5, {"sex": ["F", "M"]})


def test_request_status_reads_a_request_of_the_project(fake_cp: FakeControlPlane):
    fake_cp.requests["req-1"] = {"id": "req-1", "state": "returned", "files": [{"name": "t.csv", "group": "g"}]}

    assert request_status("req-1", api=fake_cp.url, token=fake_cp.output_token)["state"] == "returned"
    with pytest.raises(SubmitError, match="No such output request"):
        request_status("req-other", api=fake_cp.url, token=fake_cp.output_token)


def _extract_with_manifest(root, dataset: str = "admissions", rows: int = 10):
    folder = root / dataset
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(f'{{"rows": {rows}}}')
    return root


def test_submit_sends_the_notebook_with_its_home_path_and_the_extract_version(fake_cp, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "analysis").mkdir(parents=True)
    notebook = home / "analysis" / "table1.ipynb"
    notebook.write_text('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}')
    table = home / "table1.csv"
    table.write_text("band,n\n40-49,15\n")
    extract = _extract_with_manifest(tmp_path / "extract")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TRE_EXTRACT_DIR", str(extract))

    submit([table], "Table 1", "rounded", code=notebook, api=fake_cp.url, token=fake_cp.output_token)

    sent = fake_cp.submissions[-1]
    assert sent["code"] == {"table1.ipynb": notebook.read_bytes()}
    assert sent["files"] == {"table1.csv": b"band,n\n40-49,15\n"}
    assert sent["fields"]["code_path"] == "analysis/table1.ipynb"
    assert sent["fields"]["extract_version"] == extract_version(extract)


def test_extract_version_changes_when_the_extract_is_rebuilt(tmp_path):
    extract = _extract_with_manifest(tmp_path / "extract")
    before = extract_version(extract)

    (extract / "admissions" / "manifest.json").write_text('{"rows": 11}')

    assert before is not None and len(before) == 64
    assert extract_version(extract) != before
    assert extract_version(tmp_path / "nowhere") is None


@pytest.mark.parametrize("name", ["analysis.do", "data.parquet"])
def test_submit_refuses_code_that_is_not_a_notebook_or_a_python_or_r_script(fake_cp, tmp_path, name):
    (tmp_path / "t.csv").write_text("x")
    (tmp_path / name).write_text("x")

    with pytest.raises(SubmitError, match="notebook"):
        submit([tmp_path / "t.csv"], "c", "k", code=tmp_path / name, api=fake_cp.url, token=fake_cp.output_token)

    assert fake_cp.submissions == []


def test_submit_sends_an_r_script_as_the_code(fake_cp, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "t.csv").write_text("x")
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "by_sex.R").write_text('write.csv(x, "t.csv")\n')

    submit([tmp_path / "t.csv"], "c", "k", code=tmp_path / "tables" / "by_sex.R", api=fake_cp.url,
           token=fake_cp.output_token, extract_version="")

    sent = fake_cp.submissions[-1]
    assert sent["fields"]["code_path"] == "tables/by_sex.R"
    assert sent["code"] == {"by_sex.R": b'write.csv(x, "t.csv")\n'}


def test_cli_sends_the_code_named_by_code(fake_cp, tmp_path, monkeypatch):
    monkeypatch.setenv("TRE_OUTPUT_API", fake_cp.url)
    monkeypatch.setenv("TRE_OUTPUT_TOKEN", fake_cp.output_token)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TRE_EXTRACT_DIR", raising=False)
    (tmp_path / "t.csv").write_text("x")
    (tmp_path / "make_t.py").write_text("open('t.csv', 'w').write('x')\n")

    monkeypatch.chdir(tmp_path)

    assert main(["t.csv", "--code", "make_t.py", "--context", "c", "--controls", "k"]) == 0

    sent = fake_cp.submissions[-1]
    assert sent["code"] == {"make_t.py": b"open('t.csv', 'w').write('x')\n"}
    assert sent["fields"]["code_path"] == "make_t.py"
    assert "extract_version" not in sent["fields"]
