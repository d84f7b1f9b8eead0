"""The local spawner's start returns once the workspace server listens, so JupyterHub's first check finds it up."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
from jupyterhub.objects import Hub

from jupyter import sandbox
from jupyter.spawner import TreLocalSpawner

# A stand-in for the single-user server: it listens only when the test writes a line to it, then
# reports each connection it accepts.
LATE_SERVER = """
import socket, sys
sys.stdin.readline()
server = socket.socket()
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
connection, _ = server.accept()
print("accepted", flush=True)
connection.close()
sys.stdin.readline()
"""


def make_spawner(proc: subprocess.Popen[str] | None, poll: float = 0.01) -> TreLocalSpawner:
    spawner = TreLocalSpawner(
        user=types.SimpleNamespace(name="u-1", url="/user/u-1/"),
        orm_spawner=types.SimpleNamespace(name="proj1", server=None),
        hub=Hub(base_url="/hub/", ip="127.0.0.1", port=18081),
        ready_poll_seconds=poll,
        start_timeout=300,
    )
    spawner.proc = proc
    return spawner


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_late_server(port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LATE_SERVER, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def test_start_waits_until_the_server_listens_and_then_returns():
    port = free_port()
    server = start_late_server(port)
    spawner = make_spawner(server)

    async def scenario() -> bool:
        waiting = asyncio.ensure_future(spawner._until_listening("127.0.0.1", port))
        await asyncio.sleep(0)  # the wait has begun: nothing listens yet, the process runs
        assert not waiting.done()
        server.stdin.write("listen\n")
        server.stdin.flush()
        await asyncio.wait_for(waiting, timeout=120)
        return waiting.done()

    try:
        assert asyncio.run(scenario())
        assert server.stdout.readline().strip() == "accepted"  # it returned because it connected
    finally:
        server.stdin.write("stop\n")
        server.stdin.close()
        server.wait(timeout=30)
        server.stdout.close()


def test_start_stops_waiting_when_the_server_process_has_exited():
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait(timeout=30)
    spawner = make_spawner(exited)

    # Nothing will ever listen on this port; the start_timeout of 300 s is not waited out.
    asyncio.run(asyncio.wait_for(spawner._until_listening("127.0.0.1", free_port()), timeout=60))


def test_start_leaves_the_wait_to_jupyterhub_when_polling_is_off():
    port = free_port()
    server = start_late_server(port)
    try:
        # Running and never listening: with polling off, start does not wait for it at all.
        asyncio.run(asyncio.wait_for(make_spawner(server, poll=0)._until_listening("127.0.0.1", port), timeout=60))
        assert server.poll() is None
    finally:
        server.kill()
        server.wait(timeout=30)
        server.stdin.close()
        server.stdout.close()


# --- a larger CPU share while the server starts (ADR 0028) ---------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root may raise a session's CPU share")


# Any account may run the system's Python; the test's own may live under /root.
PLAIN_PYTHON = "/usr/bin/python3"


def autogroup_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/autogroup").read_text().split("nice")[1])


def unused_uid() -> int:
    """A uid no account and no process has, as a workspace account's is its own."""
    while True:
        uid = secrets.randbelow(1_000_000) + 3_000_000
        if not sandbox.processes_of(uid):
            return uid


@needs_root
def test_a_starting_server_has_the_larger_share_until_it_listens_and_then_an_equal_one():
    uid, port = unused_uid(), free_port()
    # As the sandbox runs it: the workspace account's process, leading a session of its own.
    server = subprocess.Popen(
        [PLAIN_PYTHON, "-c", LATE_SERVER, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        user=uid, group=uid, extra_groups=[], start_new_session=True,
    )
    os.setpriority(os.PRIO_PROCESS, server.pid, -7)  # as the spawner starts it (raise_own_priority)
    spawner = make_spawner(server)
    session = sandbox.StartingSession(uid, outer_session=os.getsid(0))
    spawner.start_nice = -7

    async def scenario() -> int:
        waiting = asyncio.ensure_future(spawner._until_listening("127.0.0.1", port, session))
        while session.nice == 0:  # the wait finds the session and raises its share
            await asyncio.sleep(0.01)
        during = autogroup_nice(server.pid)
        server.stdin.write("listen\n")
        server.stdin.flush()
        await asyncio.wait_for(waiting, timeout=120)
        session.release()  # as start() does once the wait is over
        return during

    try:
        assert asyncio.run(asyncio.wait_for(scenario(), timeout=120)) == -7
        assert server.stdout.readline().strip() == "accepted"
        assert autogroup_nice(server.pid) == 0  # before the hub lets anyone reach the server
        assert os.getpriority(os.PRIO_PROCESS, server.pid) == 0
    finally:
        server.stdin.write("stop\n")
        server.stdin.close()
        server.wait(timeout=30)
        server.stdout.close()


@needs_root
def test_the_share_is_given_back_after_start_boost_seconds_even_if_the_server_never_listens():
    uid, port = unused_uid(), free_port()
    server = subprocess.Popen(
        [PLAIN_PYTHON, "-c", LATE_SERVER, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        user=uid, group=uid, extra_groups=[], start_new_session=True,
    )
    spawner = make_spawner(server)
    spawner.start_boost_seconds = 0.5
    session = sandbox.StartingSession(uid, outer_session=os.getsid(0))

    async def scenario() -> list[int]:
        waiting = asyncio.ensure_future(spawner._until_listening("127.0.0.1", port, session))
        seen = []
        while not seen or seen[-1] != 0 or len(seen) < 2:  # raised, then put back while still waiting
            await asyncio.sleep(0.02)
            if session.nice != 0 or seen:
                seen.append(autogroup_nice(server.pid))
        assert not waiting.done()
        waiting.cancel()
        return seen

    try:
        seen = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
        assert seen[0] == -10 and seen[-1] == 0
    finally:
        server.kill()
        server.wait(timeout=30)
        server.stdin.close()
        server.stdout.close()


@needs_root
def test_only_a_session_the_account_leads_apart_from_the_spawners_child_is_raised_and_both_put_back():
    uid = unused_uid()
    # The account's process, but in the session the spawner's child leads (bwrap outside its sandbox).
    outer = subprocess.Popen(["sleep", "60"], user=uid, group=uid, extra_groups=[], start_new_session=True)
    try:
        session = sandbox.StartingSession(uid, outer_session=outer.pid)
        assert not session.find()
        assert not session.set(-10)
        assert autogroup_nice(outer.pid) == 0
        assert sandbox.StartingSession(uid + 1, outer_session=0).find() is False  # nobody's processes
        # The child raised its own session and nice before it dropped root; release puts both back.
        Path(f"/proc/{outer.pid}/autogroup").write_text("-5")
        os.setpriority(os.PRIO_PROCESS, outer.pid, -5)
        session.release()
        assert autogroup_nice(outer.pid) == 0
        assert os.getpriority(os.PRIO_PROCESS, outer.pid) == 0
    finally:
        outer.kill()
        outer.wait(timeout=30)


def test_roots_sessions_are_never_raised():
    with pytest.raises(sandbox.SandboxError):
        sandbox.StartingSession(0, outer_session=1)
