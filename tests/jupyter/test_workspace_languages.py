"""SQL (DuckDB) and R in a real workspace, inside the same bubblewrap sandbox as Python (issue 25).

The session's real hub (as root) starts a workspace whose extract holds a Parquet table; a second
project's extract sits beside it, readable by everyone on the host, so only the sandbox hides it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from tests.jupyter.realhub import RUNTIME, SANDBOXED_HUB_MARKS, Hub
from tests.jupyter.test_workspace_sandbox import _kernel_execute, cookie_header, server_url, xsrf_headers

pytestmark = SANDBOXED_HUB_MARKS

R_READY = (RUNTIME / "share" / "jupyter" / "kernels" / "ir" / "kernel.json").exists()
needs_r = pytest.mark.skipif(not R_READY, reason="R NOT INSTALLED in the runtime (make workspace-runtime as root)")

ROWS = 1234


def write_patients(folder: Path, rows: int) -> Path:
    path = folder / "patients.parquet"
    bands = [f"{40 + i % 5 * 10}-{49 + i % 5 * 10}" for i in range(rows)]
    sexes = ["F" if i % 2 else "M" for i in range(rows)]
    rare = ["x" if i < 3 else "y" for i in range(rows)]  # three people: a table of it must fail
    table = pa.table({"age_band": bands, "sex": sexes, "rare": rare, "n": list(range(rows))})
    pq.write_table(table, path, row_group_size=100)
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def other_extract(hub: Hub) -> Path:
    """Another project's extract, left readable by everyone: only the sandbox stands in the way."""
    folder = hub.base / "extracts" / hub.project("m")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    return write_patients(folder, 7)


@pytest.fixture(scope="module")
def workspace_l(hub: Hub) -> Iterator[dict[str, Any]]:
    username = hub.grant("l")
    write_patients(hub.base / "extracts" / hub.project("l"), ROWS)
    server = hub.project("l").lower()
    session = requests.Session()
    response = hub.login(session, username, hub.project("l"))
    session.get(hub.url + response.headers["Location"], timeout=60)
    hub.wait_ready(username, server)
    assert session.get(f"{hub.url}/user/{username}/{server}/lab", timeout=60).status_code == 200
    with session:
        yield {"username": username, "server": server, "session": session, "account": hub.account("l")}


def run_cell(hub: Hub, workspace: dict[str, Any], kernel_name: str, code: str) -> str:
    """Start a real kernel of the given language in the workspace and run one cell in it."""
    session = workspace["session"]
    base = server_url(hub, workspace)
    kernel = session.post(
        f"{base}/api/kernels", json={"name": kernel_name}, headers=xsrf_headers(workspace), timeout=60
    )
    assert kernel.status_code == 201, kernel.text
    kernel_id = kernel.json()["id"]
    try:
        ws = base.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
        return asyncio.run(_kernel_execute(ws, cookie_header(session), code))
    finally:
        session.delete(f"{base}/api/kernels/{kernel_id}", headers=xsrf_headers(workspace), timeout=30)


def test_sql_cell_counts_the_rows_of_its_own_parquet_extract(hub: Hub, workspace_l):
    code = "%%sql counts\nselect count(*) as n, count(distinct age_band) as bands from patients\n"
    cell = run_cell(hub, workspace_l, "python3", code + "\n")
    check = run_cell(
        hub,
        workspace_l,
        "python3",
        "ip = get_ipython()\n"
        "ip.run_cell_magic('sql', 'counts', 'select count(*) as n from patients')\n"
        "print('ROWS', int(counts['n'][0]))\n"
        "from jupyter.sql import connect\n"
        "print('TABLES', sorted(r[0] for r in connect().sql('show tables').fetchall()))\n",
    )

    assert "Error" not in cell, cell
    assert f"ROWS {ROWS}" in check, check
    assert "TABLES ['data', 'patients']" in check, check


def test_duckdb_in_a_workspace_cannot_read_another_projects_extract(hub: Hub, workspace_l, other_extract):
    code = (
        "import duckdb\n"
        "try:\n"
        f"    print('READ', duckdb.sql(\"select count(*) from read_parquet('{other_extract}')\").fetchall())\n"
        "except duckdb.Error as error:\n"
        "    print('REFUSED', type(error).__name__)\n"
    )

    output = run_cell(hub, workspace_l, "python3", code)

    assert "REFUSED IOException" in output, output
    assert "READ" not in output


@needs_r
def test_an_r_kernel_starts_in_the_sandbox_and_reads_its_extract(hub: Hub, workspace_l):
    code = (
        "suppressPackageStartupMessages({library(data.table); library(survival); library(ggplot2); library(dplyr)})\n"
        "patients <- as.data.table(tre_read('patients'))\n"
        "cat('ROWS', nrow(patients), '\\n')\n"
        "cat('BANDS', tre_sql('select count(distinct age_band) as b from patients')$b, '\\n')\n"
        "cat('TABLES', paste(tre_tables(), collapse=','), '\\n')\n"
        "cat('ROOT', paste(sort(list.files('/')), collapse=','), '\\n')\n"
    )

    output = run_cell(hub, workspace_l, "ir", code)

    assert f"ROWS {ROWS} " in output, output
    assert "BANDS 5 " in output, output
    assert "TABLES data,patients " in output, output
    assert "root" not in output.split("ROOT", 1)[1]  # the same confined root as a Python kernel


@needs_r
def test_r_in_a_workspace_cannot_read_another_projects_extract(hub: Hub, workspace_l, other_extract):
    code = (
        f"cat('EXISTS', file.exists('{other_extract}'), '\\n')\n"
        f"r <- tryCatch(tre_sql(\"select count(*) from read_parquet('{other_extract}')\"), "
        "error = function(e) 'REFUSED')\n"
        "cat('RESULT', if (identical(r, 'REFUSED')) 'REFUSED' else 'READ', '\\n')\n"
    )

    output = run_cell(hub, workspace_l, "ir", code)

    assert "EXISTS FALSE " in output, output
    assert "RESULT REFUSED " in output, output


@needs_r
def test_r_tables_are_checked_and_submitted_with_their_verdicts(hub: Hub, workspace_l):
    code = (
        "safe <- tre_crosstab('patients', 'age_band', 'sex')\n"
        "risky <- tre_crosstab('patients', 'age_band', 'rare')\n"
        "model <- tre_model('patients', 'n ~ C(sex)')\n"
        "cat('MODEL', attr(model, 'status'), grepl('OLS Regression Results', model), '\\n')\n"
        "cat('STATUS', attr(safe, 'status'), attr(risky, 'status'), sum(safe$F, safe$M), '\\n')\n"
        "tre_finalise()\n"
        "answer <- tre_submit('Age band by sex and by a rare flag', 'none yet')\n"
        "cat('SUBMITTED', answer$id, '\\n')\n"
    )

    output = run_cell(hub, workspace_l, "ir", code)

    assert f"STATUS pass fail {ROWS} " in output, output
    assert "MODEL pass TRUE " in output, output
    assert "SUBMITTED " in output, output
    request_id = output.split("SUBMITTED ", 1)[1].split()[0]
    submitted = next(s for s in hub.fake.submissions if s["id"] == request_id)
    results = json.loads(submitted["files"]["results.json"])
    verdicts = {key: value["tre_verdict"]["status"] for key, value in results["results"].items()}
    assert sorted(verdicts.values()) == ["fail", "pass", "pass"]
    assert submitted["fields"]["context"] == "Age band by sex and by a rare flag"
