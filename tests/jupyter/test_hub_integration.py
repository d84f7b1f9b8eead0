"""A real JupyterHub with our config, a fake control plane, and real workspaces.

One hub serves the whole module (starting it costs seconds). As root, each workspace runs under its
own unix account in its own network namespace; the reachability checks run inside the workspace
process's own namespace (``nsenter -t <pid> -n``) as its own account.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.jupyter.realhub import IS_ROOT, RUNTIME, RUNTIME_READY, Hub

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not RUNTIME_READY,
        reason=f"WORKSPACE RUNTIME NOT BUILT at {RUNTIME}: run infra/jupyterhub/build-workspace-runtime.sh",
    ),
    pytest.mark.skipif(not IS_ROOT, reason="the real-hub test runs the secure (root) spawner"),
]


@pytest.fixture(scope="module")
def workspace_a(hub: Hub) -> dict[str, Any]:
    """Researcher A logs in with a token and lands in their project's server (timed)."""
    username = hub.grant("a")
    session = requests.Session()
    started = time.monotonic()
    response = hub.login(session, username, hub.project("a"))
    server = hub.project("a").lower()
    assert response.status_code == 302, response.text
    assert response.headers["Location"] == f"/hub/spawn/{username}/{server}"
    session.get(hub.url + response.headers["Location"], timeout=60)
    hub.wait_ready(username, server)
    # The browser's first page of the workspace runs the OAuth dance that gives it the server's cookie.
    lab = session.get(f"{hub.url}/user/{username}/{server}/lab", timeout=60)
    assert lab.status_code == 200, lab.text[-500:]
    status = session.get(f"{hub.url}/user/{username}/{server}/api/status", timeout=30)
    spawn_seconds = time.monotonic() - started
    assert status.status_code == 200, status.text
    print(f"\nSPAWN TIME (token POST to server answering through the proxy): {spawn_seconds:.1f} s")
    return {"username": username, "server": server, "session": session, "spawn_seconds": spawn_seconds}


def workspace_pid(account: str) -> int:
    out = subprocess.run(
        ["pgrep", "-u", account, "-f", "jupyterhub-singleuser"], capture_output=True, text=True
    )
    pids = [int(pid) for pid in out.stdout.split()]
    assert pids, f"no workspace process runs as {account}"
    return min(pids)


def in_workspace(
    pid: int, account: str, code: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run Python in the workspace's network namespace as its account (what a notebook cell could do)."""
    return subprocess.run(
        [
            "nsenter",
            "-t",
            str(pid),
            "-n",
            "/usr/sbin/runuser",
            "-u",
            account,
            "--",
            str(RUNTIME / "bin" / "python"),
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})},
        cwd="/",
    )


def connect_code(host: str, port: int) -> str:
    return (
        "import socket,sys\n"
        f"s=socket.socket(); s.settimeout(2)\n"
        f"try:\n s.connect(({host!r},{port})); print('OPEN')\n"
        "except OSError as e:\n print('BLOCKED', e)\n"
    )


def test_token_login_spawns_the_named_project_server(hub: Hub, workspace_a):
    assert workspace_a["spawn_seconds"] < 60
    contents = workspace_a["session"].get(
        f"{hub.url}/user/{workspace_a['username']}/{workspace_a['server']}/api/contents/extract", timeout=30
    )
    assert [item["name"] for item in contents.json()["content"]] == ["data.csv"]
    assert hub.fake.gate_calls()[-1] == {
        "username": workspace_a["username"],
        "server_name": workspace_a["server"],
    }


def test_a_running_workspace_keeps_no_larger_cpu_share_than_any_other_session(hub: Hub, workspace_a):
    # Its start had one (ADR 0028); by the time the researcher can reach it, every process is back at 0.
    account = hub.account("a")
    pids = subprocess.run(["pgrep", "-u", account], capture_output=True, text=True).stdout.split()
    sessions = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3]) for pid in pids}
    nices = {Path(f"/proc/{pid}/autogroup").read_text().split("nice")[1].strip() for pid in pids}

    assert len(sessions) >= 2  # bwrap outside the sandbox, and the sandbox's own session
    assert nices == {"0"}
    assert {os.getpriority(os.PRIO_PROCESS, int(pid)) for pid in pids} == {0}


def test_workspace_runs_as_its_own_account_with_a_read_only_extract(hub: Hub, workspace_a):
    account = hub.account("a")
    pid = workspace_pid(account)
    extract = hub.base / "extracts" / hub.project("a")
    write = in_workspace(pid, account, f"open({str(extract / 'x.csv')!r}, 'w')")
    read = in_workspace(pid, account, f"print(open({str(extract / 'data.csv')!r}).read())")
    outputs = in_workspace(
        pid, account, "import os; open(os.path.expanduser('~/outputs/t.csv'), 'w').write('ok')"
    )

    assert "PermissionError" in write.stderr
    assert "40-49" in read.stdout
    assert outputs.returncode == 0, outputs.stderr


def test_workspace_cannot_read_another_projects_extract(hub: Hub, workspace_a):
    other = hub.grant("z")
    subprocess.run(["groupadd", "--system", "tre-p-" + hub.project("z").lower()], capture_output=True)
    from jupyter import sandbox

    sandbox.share_extract_read_only(
        str(hub.base / "extracts" / hub.project("z")), "tre-p-" + hub.project("z").lower()
    )
    account = hub.account("a")
    read = in_workspace(
        workspace_pid(account),
        account,
        f"open({str(hub.base / 'extracts' / hub.project('z') / 'data.csv')!r})",
    )

    assert other
    assert "PermissionError" in read.stderr


def test_refused_gate_shows_the_reason(hub: Hub):
    username, project = f"u-{hub.tag}r", hub.project("r")
    hub.fake.refuse(username, project.lower(), "the project is suspended")
    session = requests.Session()

    response = hub.login(session, username, project)
    page = session.get(hub.url + response.headers["Location"], timeout=60)
    if "spawn-pending" in page.url:
        # The hub's progress stream ends when the spawn has failed: reading it whole is the wait.
        page = session.get(f"{hub.url}/hub/api/users/{username}/server/progress", timeout=30)

    assert "the project is suspended" in page.text
    assert hub.api("GET", f"/users/{username}").json()["servers"] == {}


def test_stale_cookie_of_another_user_does_not_reach_their_workspace(hub: Hub, workspace_a):
    session = workspace_a["session"]
    a_server = f"{hub.url}/user/{workspace_a['username']}/{workspace_a['server']}/api/status"
    assert session.get(a_server, timeout=30).status_code == 200
    b_user = f"u-{hub.tag}b"
    hub.fake.refuse(b_user, hub.project("b").lower(), "not needed for this test")

    response = hub.login(session, b_user, hub.project("b"))

    assert response.headers["Location"] == f"/hub/spawn/{b_user}/{hub.project('b').lower()}"
    home = session.get(f"{hub.url}/hub/home", timeout=30)
    assert b_user in home.text and workspace_a["username"] not in home.text
    after = session.get(a_server, timeout=30, allow_redirects=True)
    assert after.status_code in (403, 404) or "/hub/login" in after.url or "api_version" not in after.text


def test_same_researcher_opening_again_in_the_same_browser_reaches_the_workspace(hub: Hub, workspace_a):
    # A second "Open workspace" press while the browser still holds this researcher's hub cookie.
    session = requests.Session()
    username, server = workspace_a["username"], workspace_a["server"]
    for _ in range(2):
        response = hub.login(session, username, hub.project("a"))
        assert response.headers["Location"] == f"/hub/spawn/{username}/{server}"
        spawn = session.get(hub.url + response.headers["Location"], allow_redirects=False, timeout=60)
        # Not sent back to the login form ("open your workspace from the project page"): to the server.
        assert spawn.status_code == 302
        assert spawn.headers["Location"].startswith(f"/user/{username}/{server}"), spawn.headers["Location"]


def test_login_form_from_another_origin_is_refused(hub: Hub):
    token = hub.fake.issue_token(f"u-{hub.tag}a", hub.project("a"))
    response = requests.post(
        f"{hub.url}/hub/tre-login",
        data={"token": token},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
        timeout=30,
    )

    assert response.status_code == 403
    assert token in hub.fake.tokens  # not even redeemed


def test_researchers_cannot_mint_api_tokens_or_share(hub: Hub, workspace_a):
    session, username = workspace_a["session"], workspace_a["username"]
    xsrf = session.cookies.get("_xsrf", path="/hub/")
    headers = {"X-XSRFToken": xsrf} if xsrf else {}

    tokens = session.post(f"{hub.url}/hub/api/users/{username}/tokens", json={}, headers=headers, timeout=30)
    share = session.post(
        f"{hub.url}/hub/api/shares/{username}/{workspace_a['server']}",
        json={"user": "someone"},
        headers=headers,
        timeout=30,
    )

    assert tokens.status_code == 403, tokens.text
    assert share.status_code in (403, 404)


def test_hub_api_start_also_asks_the_gate(hub: Hub):
    username = f"u-{hub.tag}c"
    hub.fake.refuse(username, hub.project("c").lower(), "agreement not signed")
    hub.login(requests.Session(), username, hub.project("c"))  # the hub now knows the user
    before = len(hub.fake.gate_calls())

    response = hub.api("POST", f"/users/{username}/servers/{hub.project('c').lower()}")

    assert response.status_code >= 400
    assert "agreement not signed" in response.text
    assert len(hub.fake.gate_calls()) == before + 1


def test_egress_only_to_hub_and_output_api(hub: Hub, workspace_a, tmp_path):
    account = hub.account("a")
    pid = workspace_pid(account)
    env = dict(
        line.split("=", 1)
        for line in Path(f"/proc/{pid}/environ").read_text().split("\0")
        if line.startswith(("TRE_", "JUPYTERHUB_API_URL"))
    )
    gateway = env["TRE_OUTPUT_API"].split("//")[1].split(":")[0]
    cp_port = int(hub.fake.url.rsplit(":", 1)[1])
    # A stand-in for the public internet: a host in a namespace of this test's own, reachable from
    # the host itself, so "blocked" below means blocked by the workspace's isolation.
    public = f"tp{hub.tag}"
    subprocess.run(["ip", "netns", "add", public], check=True)
    try:
        subprocess.run(
            ["ip", "link", "add", f"tp{hub.tag}h", "type", "veth", "peer", "name", "eth0", "netns", public],
            check=True,
        )
        subprocess.run(["ip", "addr", "add", "198.51.100.1/30", "dev", f"tp{hub.tag}h"], check=True)
        subprocess.run(["ip", "link", "set", f"tp{hub.tag}h", "up"], check=True)
        subprocess.run(["ip", "-n", public, "addr", "add", "198.51.100.2/30", "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", public, "link", "set", "eth0", "up"], check=True)
        listener = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                public,
                sys.executable,
                "-m",
                "http.server",
                "8080",
                "--bind",
                "198.51.100.2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while subprocess.run(
                ["curl", "-s", "-m", "1", "http://198.51.100.2:8080/"], capture_output=True
            ).returncode:
                assert time.monotonic() < deadline, "test host did not come up"
                time.sleep(0.2)
            checks = {
                "hub api": (gateway, hub.hub_port),
                "output api": (gateway, cp_port),
                "public host": ("198.51.100.2", 8080),
                "proxy admin api": (gateway, hub.proxy_api_port),
                "proxy admin api on loopback": ("127.0.0.1", hub.proxy_api_port),
                "hub public port": (gateway, hub.port),
            }
            results = {
                name: in_workspace(pid, account, connect_code(*target)).stdout.strip()
                for name, target in checks.items()
            }
        finally:
            listener.terminate()
            listener.wait()
    finally:
        subprocess.run(["ip", "netns", "delete", public], capture_output=True)

    assert results["hub api"] == "OPEN"
    assert results["output api"] == "OPEN"
    for name in ("public host", "proxy admin api", "proxy admin api on loopback", "hub public port"):
        assert results[name].startswith("BLOCKED"), (name, results[name])


def test_tre_submit_from_inside_the_workspace_reaches_the_queue(hub: Hub, workspace_a):
    account = hub.account("a")
    pid = workspace_pid(account)
    env = dict(
        line.split("=", 1)
        for line in Path(f"/proc/{pid}/environ").read_text().split("\0")
        if line.startswith("TRE_")
    )
    home = hub.base / "homes" / account
    code = (
        "import os,subprocess;"
        "open(os.path.join(os.environ['TRE_OUTPUTS_DIR'],'table.csv'),'w').write('band,n\\n40-49,15\\n');"
        f"r=subprocess.run([{str(RUNTIME / 'bin' / 'tre-submit')!r},"
        "os.environ['TRE_OUTPUTS_DIR']+'/table.csv',"
        "'--context','Table 1','--controls','rounded to 5'],capture_output=True,text=True);"
        "print(r.stdout, r.stderr)"
    )

    result = in_workspace(pid, account, code, env={**env, "HOME": str(home)})

    assert "Submitted output request" in result.stdout, result.stdout + result.stderr
    submission = hub.fake.submissions[-1]
    assert submission["fields"] == {"context": "Table 1", "controls": "rounded to 5"}
    assert submission["files"] == {"table.csv": b"band,n\n40-49,15\n"}


def logged_in_again(hub: Hub, workspace: dict[str, Any]) -> requests.Session:
    """A fresh browser for researcher A (an earlier test logged another user in over A's session)."""
    session = requests.Session()
    response = hub.login(session, workspace["username"], workspace["server"].upper())
    session.get(hub.url + response.headers["Location"], timeout=60)
    return session


def test_browser_cannot_download_files_from_the_workspace(hub: Hub, workspace_a):
    session = logged_in_again(hub, workspace_a)
    server = f"{hub.url}/user/{workspace_a['username']}/{workspace_a['server']}"
    outputs = hub.base / "outputs" / f"{workspace_a['username']}-{workspace_a['server']}"
    (outputs / "small.csv").write_text("band,n\n")
    xsrf = {
        "X-XSRFToken": session.cookies.get(
            "_xsrf", path=f"/user/{workspace_a['username']}/{workspace_a['server']}/"
        )
        or ""
    }

    raw_file = session.get(f"{server}/files/extract/data.csv", timeout=30)
    download = session.get(f"{server}/files/outputs/small.csv?download=1", timeout=30)
    export = session.get(f"{server}/nbconvert/html/outputs/x.ipynb", timeout=30)
    extract_via_api = session.get(f"{server}/api/contents/extract/data.csv", timeout=30)
    listing = session.get(f"{server}/api/contents/extract", timeout=30)
    small_output = session.get(f"{server}/api/contents/outputs/small.csv", headers=xsrf, timeout=30)

    statuses = [r.status_code for r in (raw_file, download, export, extract_via_api, listing, small_output)]
    assert statuses == [403, 403, 403, 403, 200, 200], extract_via_api.text[:300]
    assert "tre-submit" in raw_file.text


def test_default_server_cannot_be_spawned(hub: Hub, workspace_a):
    session = logged_in_again(hub, workspace_a)

    page = session.get(f"{hub.url}/hub/spawn/{workspace_a['username']}", timeout=60)

    assert "open yours from the project page" in page.text


def test_control_plane_stops_a_workspace_and_renames_are_refused(hub: Hub, workspace_a):
    """What the control plane does when the gate closes: DELETE through the hub API with its service token."""
    username, server = workspace_a["username"], workspace_a["server"]
    account = hub.account("a")
    netns_before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"t{hub.tag}-{account}" in netns_before

    started = time.monotonic()
    stop = hub.api("DELETE", f"/users/{username}/servers/{server}")
    hub.wait_stopped(username, server)
    rename = hub.api("PATCH", f"/users/{username}/servers/{server}", json={"name": "p-other"})

    assert stop.status_code in (202, 204)
    assert subprocess.run(["pgrep", "-u", account], capture_output=True).returncode == 1
    assert (
        f"t{hub.tag}-{account}"
        not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
    assert rename.status_code == 403 and "cannot be renamed" in rename.text, rename.text
    print(f"\nSTOP TIME (DELETE to process gone): {time.monotonic() - started:.1f} s")


def test_anonymous_visitor_is_told_where_workspaces_open(hub: Hub):
    page = requests.get(f"{hub.url}/hub/", timeout=30)

    assert "/hub/tre-login" in page.url
    assert "Open your workspace from the project page" in page.text
