"""A compromised workspace, from inside a real kernel and a real terminal, walks the machine and finds nothing.

The session's real hub (as root) starts a workspace in its bubblewrap sandbox. A fake deployment
sits beside it with the files issue 16 found readable, left deliberately readable by everyone so
that only the sandbox stands between them and the workspace: the control plane's database, the
broker's, the keys, the raw demo sources, another project's extract, another workspace's home. The
same probe run as the workspace's account *outside* the sandbox reads them all, so a pass here is
the sandbox's doing and not the file modes'.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from jupyter import fs_sandbox
from tests.jupyter.realhub import RUNTIME, SANDBOXED_HUB_MARKS, Hub

pytestmark = SANDBOXED_HUB_MARKS

# What the probe tries; each answer is "READ", "WROTE", "LISTED:<names>" or the exception's name.
PROBE = r"""
import json, os, sys
targets = globals().get("TARGETS") or json.loads(sys.argv[1])
out = {}
for name, (action, path) in targets.items():
    try:
        if action == "read":
            with open(path, "rb") as handle:
                handle.read(16)
            out[name] = "READ"
        elif action == "list":
            out[name] = "LISTED:" + ",".join(sorted(os.listdir(path)))
        elif action == "write":
            with open(path, "w") as handle:
                handle.write("x")
            os.unlink(path)
            out[name] = "WROTE"
    except Exception as error:
        out[name] = type(error).__name__
out["/"] = sorted(os.listdir("/"))
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print("PROBE" + json.dumps(out) + "EBORP")
"""


@pytest.fixture(scope="module")
def deployment(hub: Hub) -> dict[str, Path]:
    """A TRE instance folder beside the hub, as carelessly readable as the one issue 16 found."""
    instance = hub.base / "instance"
    files = {
        "database": instance / "tre.sqlite",
        "broker": instance / "broker.sqlite",
        "keys": instance / "keys" / "master.key",
        "demo source": instance / "demo-data" / "patients.parquet",
        "hub state": hub.base / "state" / "jupyterhub.sqlite",
        "other extract": hub.base / "extracts" / hub.project("y") / "data.csv",
        "other home": hub.base / "homes" / f"tre-{hub.tag}-y" / "notes.txt",
    }
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text("secret\n")
    for path in files.values():
        for node in (path, *path.parents):
            if node == Path("/var/tmp"):
                break
            if node.is_dir() and node != hub.base / "state":
                node.chmod(0o755)
            elif node.is_file():
                node.chmod(0o644)
    # The hub's state folder stays 0700 (the hub insists), so the hub's database is readable only
    # through root's eyes; it is listed to show it is absent, not merely unreadable.
    return files


@pytest.fixture(scope="module")
def workspace_s(hub: Hub) -> Iterator[dict[str, Any]]:
    username = hub.grant("s")
    server = hub.project("s").lower()
    session = requests.Session()
    response = hub.login(session, username, hub.project("s"))
    session.get(hub.url + response.headers["Location"], timeout=60)
    hub.wait_ready(username, server)
    assert session.get(f"{hub.url}/user/{username}/{server}/lab", timeout=60).status_code == 200
    with session:
        yield {"username": username, "server": server, "session": session, "account": hub.account("s")}


def targets(hub: Hub, deployment: dict[str, Path], workspace: dict[str, Any]) -> dict[str, list[str]]:
    home = hub.base / "homes" / workspace["account"]
    extract = hub.base / "extracts" / hub.project("s")
    outputs = hub.base / "outputs" / f"{workspace['username']}-{workspace['server']}"
    found = {name: ["read", str(path)] for name, path in deployment.items()}
    found.update(
        {
            "instance folder": ["list", str(hub.base / "instance")],
            "homes": ["list", str(hub.base / "homes")],
            "root's home": ["list", "/root"],
            "hub environ": ["read", f"/proc/{hub.process.pid}/environ"],
            "source tree": ["list", str(Path(__file__).resolve().parents[2])],
            "write runtime": ["write", str(RUNTIME / "probe")],
            "write /usr": ["write", "/usr/probe"],
            "write /etc": ["write", "/etc/probe"],
            "write /": ["write", "/probe"],
            "write extract": ["write", str(extract / "probe")],
            "write beside home": ["write", str(hub.base / "homes" / "probe")],
            "write /var/tmp": ["write", "/var/tmp/probe"],
            # what must work
            "own extract": ["read", str(extract / "data.csv")],
            "write home": ["write", str(home / "probe")],
            "write tmp": ["write", "/tmp/probe"],
            "write outputs": ["write", str(outputs / "probe")],
        }
    )
    return found


def allowed(workspace: dict[str, Any]) -> dict[str, str]:
    """What must work; the folder of homes is a mount point's parent holding this home alone."""
    return {
        "own extract": "READ",
        "write home": "WROTE",
        "write tmp": "WROTE",
        "write outputs": "WROTE",
        "homes": f"LISTED:{workspace['account']}",
    }


def parse(text: str) -> dict[str, Any]:
    start, end = text.index("PROBE{") + len("PROBE"), text.index("}EBORP") + 1
    return json.loads(text[start:end])


def cookie_header(session: requests.Session) -> str:
    return "; ".join(f"{cookie.name}={cookie.value}" for cookie in session.cookies)


def server_url(hub: Hub, workspace: dict[str, Any]) -> str:
    return f"{hub.url}/user/{workspace['username']}/{workspace['server']}"


def xsrf_headers(workspace: dict[str, Any]) -> dict[str, str]:
    path = f"/user/{workspace['username']}/{workspace['server']}/"
    return {"X-XSRFToken": workspace["session"].cookies.get("_xsrf", path=path) or ""}


async def closed(connection: Any) -> None:
    """Close a websocket and wait for the server's close, so no socket outlives the event loop."""
    connection.close()
    while await asyncio.wait_for(connection.read_message(), timeout=30) is not None:
        pass


async def _kernel_execute(url: str, cookies: str, code: str) -> str:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    connection = await websocket_connect(HTTPRequest(url, headers={"Cookie": cookies}))
    msg_id = uuid.uuid4().hex
    connection.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "username": "test",
                    "session": uuid.uuid4().hex,
                    "msg_type": "execute_request",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "store_history": False, "allow_stdin": False},
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    out = []
    try:
        while True:
            raw = await asyncio.wait_for(connection.read_message(), timeout=60)
            assert raw is not None, "kernel websocket closed: " + "".join(out)
            message = json.loads(raw)
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message["header"]["msg_type"]
            if kind == "stream":
                out.append(message["content"]["text"])
            elif kind == "error":
                out.append("\n".join(message["content"]["traceback"]))
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                return "".join(out)
    finally:
        await closed(connection)


def run_in_kernel(hub: Hub, workspace: dict[str, Any], code: str) -> str:
    """Start a real kernel in the workspace and run a cell in it, as JupyterLab would."""
    session = workspace["session"]
    base = server_url(hub, workspace)
    kernel = session.post(f"{base}/api/kernels", json={"name": "python3"}, headers=xsrf_headers(workspace), timeout=60)
    assert kernel.status_code == 201, kernel.text
    kernel_id = kernel.json()["id"]
    try:
        ws = base.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
        return asyncio.run(_kernel_execute(ws, cookie_header(session), code))
    finally:
        session.delete(f"{base}/api/kernels/{kernel_id}", headers=xsrf_headers(workspace), timeout=30)


async def _terminal_run(url: str, cookies: str, command: str, marker: str) -> str:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    connection = await websocket_connect(HTTPRequest(url, headers={"Cookie": cookies}))
    connection.write_message(json.dumps(["stdin", command + "\r"]))
    out = []
    try:
        while True:
            raw = await asyncio.wait_for(connection.read_message(), timeout=60)
            assert raw is not None, "terminal websocket closed: " + "".join(out)
            message = json.loads(raw)
            if message[0] == "stdout":
                out.append(message[1])
                if marker in "".join(out):
                    return "".join(out)
    finally:
        await closed(connection)


def run_in_terminal(hub: Hub, workspace: dict[str, Any], command: str) -> str:
    """Open a real JupyterLab terminal in the workspace, type a command line, return what it printed."""
    session = workspace["session"]
    base = server_url(hub, workspace)
    terminal = session.post(f"{base}/api/terminals", headers=xsrf_headers(workspace), timeout=60)
    assert terminal.status_code == 200, terminal.text
    name = terminal.json()["name"]
    try:
        ws = base.replace("http://", "ws://") + f"/terminals/websocket/{name}"
        # The shell echoes what is typed; only the command's own output holds the evaluated sum.
        line = f"{command}; echo DONE-$((40+2))"
        return asyncio.run(_terminal_run(ws, cookie_header(session), line, "DONE-42"))
    finally:
        session.delete(f"{base}/api/terminals/{name}", headers=xsrf_headers(workspace), timeout=30)


def expected_root(hub: Hub) -> set[str]:
    """``/`` inside: the system's links, /usr, /etc, /dev, /proc, /tmp and the tops of the bound paths."""
    links = {name for name in fs_sandbox.ROOT_LINKS if os.path.lexists(f"/{name}")}
    bound = {Path(str(RUNTIME)).parts[1], hub.base.parts[1]}
    return {"dev", "etc", "proc", "tmp", "usr"} | links | bound


def assert_confined(hub: Hub, workspace: dict[str, Any], result: dict[str, Any], found: dict[str, Any]) -> None:
    must_work = allowed(workspace)
    leaks = {
        name: result[name]
        for name in found
        if name not in must_work and (result[name] in {"READ", "WROTE"} or result[name].startswith("LISTED"))
    }
    assert leaks == {}, leaks
    assert {name: result[name] for name in must_work} == must_work
    assert set(result["/"]) == expected_root(hub)
    assert hub.process.pid not in result["pids"]
    assert len(result["pids"]) < 20  # bwrap's init, the server, the kernel or shell: not the machine's


def test_a_kernel_sees_only_its_runtime_home_outputs_and_own_extract(hub: Hub, deployment, workspace_s):
    found = targets(hub, deployment, workspace_s)

    output = run_in_kernel(hub, workspace_s, f"TARGETS = {json.dumps(found)}\n{PROBE}")

    assert_confined(hub, workspace_s, parse(output), found)


def test_a_terminal_sees_only_its_runtime_home_outputs_and_own_extract(hub: Hub, deployment, workspace_s):
    found = targets(hub, deployment, workspace_s)
    encoded = base64.b64encode(PROBE.encode()).decode()
    argument = base64.b64encode(json.dumps(found).encode()).decode()
    command = (
        f"{RUNTIME}/bin/python -c \"import base64,sys; sys.argv[1:]=[base64.b64decode('{argument}').decode()];"
        f" exec(base64.b64decode('{encoded}'))\"; cat /proc/{hub.process.pid}/environ; ls /root"
    )

    output = run_in_terminal(hub, workspace_s, command)

    assert_confined(hub, workspace_s, parse(output), found)
    assert "No such file or directory" in output  # the hub's environ and /root, from the shell too


@pytest.mark.skipif(shutil.which("node") is None, reason="this host has no node to hide")
def test_a_terminal_cannot_run_the_hosts_javascript_runtime(hub: Hub, workspace_s):
    outside = subprocess.run(["node", "-e", "console.log('NODE-' + (20 + 3))"], capture_output=True, text=True)
    assert outside.stdout.strip() == "NODE-23"  # the host has one

    output = run_in_terminal(hub, workspace_s, "node -e \"console.log('NODE-' + (20 + 3))\"")

    assert "NODE-23" not in output


def test_the_same_probe_outside_the_sandbox_reads_everything(hub: Hub, deployment, workspace_s):
    """The control: the file modes alone would have let the workspace's account read all of it."""
    found = targets(hub, deployment, workspace_s)
    found = {name: found[name] for name in ("database", "broker", "keys", "demo source", "other extract", "other home")}
    account = workspace_s["account"]
    code = f"TARGETS = {json.dumps(found)}\n{PROBE}"

    result = subprocess.run(
        ["/usr/sbin/runuser", "-u", account, "--", str(RUNTIME / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )

    probe = parse(result.stdout)
    assert {name: probe[name] for name in found} == dict.fromkeys(found, "READ")


def test_workspace_processes_live_in_their_own_pid_namespace(hub: Hub, workspace_s):
    account = workspace_s["account"]
    pids = subprocess.run(["pgrep", "-u", account], capture_output=True, text=True).stdout.split()
    namespaces = {os.readlink(f"/proc/{pid}/ns/pid") for pid in pids}
    mounts = {os.readlink(f"/proc/{pid}/ns/mnt") for pid in pids}

    # bwrap's outer process stays in the host's PID namespace, everything it starts is in a new one;
    # both are out of the host's mount namespace (the spawner's private binds, then bwrap's own root).
    assert os.readlink("/proc/self/ns/pid") in namespaces and len(namespaces) == 2
    assert os.readlink("/proc/self/ns/mnt") not in mounts and len(mounts) == 2


def test_stopping_the_workspace_leaves_no_process_or_namespace(hub: Hub, workspace_s):
    username, server, account = workspace_s["username"], workspace_s["server"], workspace_s["account"]
    run_in_kernel(hub, workspace_s, "print('a kernel that was running')")

    stop = hub.api("DELETE", f"/users/{username}/servers/{server}")
    assert stop.status_code in (202, 204)
    hub.wait_stopped(username, server)

    assert subprocess.run(["pgrep", "-u", account], capture_output=True).returncode == 1
    assert f"t{hub.tag}-{account}" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def host_table_exists(hub: Hub) -> bool:
    listed = subprocess.run(["nft", "list", "table", "inet", f"t{hub.tag}_workspaces"], capture_output=True)
    return listed.returncode == 0


def test_removing_a_workspace_removes_its_account_and_home_and_the_last_stop_its_host_rules(hub: Hub):
    from jupyter import sandbox

    username, server, account = hub.grant("d"), hub.project("d").lower(), hub.account("d")
    with requests.Session() as session:
        response = hub.login(session, username, hub.project("d"))
        session.get(hub.url + response.headers["Location"], timeout=60)
        hub.wait_ready(username, server)
    home = hub.base / "homes" / account
    outputs = hub.base / "outputs" / f"{username}-{server}"
    (home / "notebook.ipynb").write_text("{}")
    assert host_table_exists(hub)

    removed = hub.api("DELETE", f"/users/{username}/servers/{server}", json={"remove": True})
    assert removed.status_code in (202, 204), removed.text
    hub.wait_removed(username, server)

    with pytest.raises(KeyError):
        pwd.getpwnam(account)
    assert not home.exists()
    assert outputs.stat().st_uid == 0  # a later account given the same uid does not inherit it
    assert subprocess.run(["pgrep", "-f", f"{hub.base}/homes/{account}"], capture_output=True).returncode == 1
    # The hub's host table lives exactly as long as one of its workspaces has a network.
    plan = sandbox.EgressPlan(prefix=f"t{hub.tag}", pool="10.238.0.0/24", ports=(1,))
    assert host_table_exists(hub) == bool(sandbox.host_interfaces(plan))


def test_an_extract_inside_a_private_instance_folder_is_read_through_the_sandbox_only(hub: Hub):
    """As deployed: the instance folder is 0700, so the account reaches its extract only through the
    sandbox, where the spawner bound it as root in the workspace's own mount namespace."""
    instance = hub.base / "private-instance"
    (instance / "extracts").mkdir(parents=True, exist_ok=True)
    instance.chmod(0o700)
    (instance / "tre.sqlite").write_text("secret\n")
    username = hub.grant("p", extract_root=instance / "extracts")
    server = hub.project("p").lower()
    with requests.Session() as session:
        response = hub.login(session, username, hub.project("p"))
        session.get(hub.url + response.headers["Location"], timeout=60)
        hub.wait_ready(username, server)
        session.get(f"{hub.url}/user/{username}/{server}/lab", timeout=60)
        workspace = {"username": username, "server": server, "session": session, "account": hub.account("p")}
        extract = instance / "extracts" / hub.project("p")
        code = (
            "import os\n"
            f"print('DATA', open({str(extract / 'data.csv')!r}).read().splitlines()[1])\n"
            f"print('INSTANCE', sorted(os.listdir({str(instance)!r})))\n"
        )

        output = run_in_kernel(hub, workspace, code)
    outside = subprocess.run(
        ["/usr/sbin/runuser", "-u", hub.account("p"), "--", "cat", str(extract / "data.csv")],
        capture_output=True,
        text=True,
    )
    hub.api("DELETE", f"/users/{username}/servers/{server}")
    hub.wait_stopped(username, server)

    assert "DATA 40-49,12" in output, output
    assert "INSTANCE ['extracts']" in output  # the database beside it is not there
    assert "Permission denied" in outside.stderr  # the same account outside its sandbox
    mount_point = hub.base / "homes" / ".mounts" / hub.account("p") / "extract"
    assert list(mount_point.iterdir()) == []  # nothing of the bind is seen on the host

