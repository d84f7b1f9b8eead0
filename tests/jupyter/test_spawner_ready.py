"""The local spawner's start returns once the workspace server listens, so JupyterHub's first check finds it up."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import types

from jupyterhub.objects import Hub

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
