"""The wake-up signal between processes: a poke wakes every listener in the folder, carries nothing,
never raises, and cleans up after listeners that died."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tre.core import wakeup

# A poke that should wake a listener at once is waited for this long: a lost poke fails the test by
# waiting it out, a delivered one returns as soon as it lands.
NEVER = 60.0


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "broker.sqlite.wake"


def test_a_poke_sent_before_the_wait_is_not_lost(folder: Path) -> None:
    listener = wakeup.Listener(folder)
    try:
        assert wakeup.poke(folder) == 1
        assert listener.wait(NEVER) is True
    finally:
        listener.close()


def test_a_wait_nobody_pokes_ends_at_its_timeout_unwoken(folder: Path) -> None:
    listener = wakeup.Listener(folder)
    try:
        assert listener.wait(0) is False
    finally:
        listener.close()


def test_pokes_that_arrived_together_wake_a_listener_once(folder: Path) -> None:
    listener = wakeup.Listener(folder)
    try:
        for _ in range(5):
            wakeup.poke(folder)
        assert listener.wait(NEVER) is True
        assert listener.wait(0) is False
    finally:
        listener.close()


def test_one_poke_wakes_every_listener_in_the_folder(folder: Path) -> None:
    listeners = [wakeup.Listener(folder) for _ in range(3)]
    try:
        assert wakeup.poke(folder) == 3
        assert [listener.wait(NEVER) for listener in listeners] == [True, True, True]
    finally:
        for listener in listeners:
            listener.close()


def test_a_poke_from_another_process_wakes_the_listener(folder: Path) -> None:
    listener = wakeup.Listener(folder)
    try:
        subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; from tre.core import wakeup; "
             "sys.exit(0 if wakeup.poke(Path(sys.argv[1])) == 1 else 1)", str(folder)],
            check=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        )
        assert listener.wait(NEVER) is True
    finally:
        listener.close()


def test_a_nudge_from_another_thread_wakes_only_its_own_listener(folder: Path) -> None:
    import threading

    mine, other = wakeup.Listener(folder), wakeup.Listener(folder)
    try:
        threading.Thread(target=mine.nudge).start()
        assert mine.wait(NEVER) is True
        assert other.wait(0) is False
    finally:
        mine.close()
        other.close()


def test_poking_a_folder_nobody_listens_in_does_nothing_and_creates_nothing(folder: Path) -> None:
    assert wakeup.poke(folder) == 0
    assert not folder.exists()


def test_the_socket_of_a_listener_that_died_is_removed_by_the_next_poke(folder: Path) -> None:
    alive = wakeup.Listener(folder)
    # A listener killed with SIGKILL leaves its socket file behind, bound to nobody.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(folder / f"999999-dead{wakeup.SUFFIX}"))
    dead.close()
    try:
        assert wakeup.poke(folder) == 1
        assert sorted(p.name for p in folder.iterdir()) == [alive.name]
        assert alive.wait(NEVER) is True
    finally:
        alive.close()


def test_a_closed_listener_leaves_nothing_behind(folder: Path) -> None:
    listener = wakeup.Listener(folder)
    listener.close()
    listener.close()  # twice is harmless
    assert list(folder.iterdir()) == []
    assert wakeup.poke(folder) == 0


def test_the_folder_is_the_service_accounts_alone(folder: Path) -> None:
    listener = wakeup.Listener(folder)
    try:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / listener.name).stat().st_mode) == 0o600
    finally:
        listener.close()


def test_a_folder_too_long_for_a_socket_address_still_carries_pokes(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "broker.sqlite.wake"
    assert len(os.fsencode(deep)) > 108  # longer than any unix socket address
    listener = wakeup.Listener(deep)
    try:
        assert wakeup.poke(deep) == 1
        assert listener.wait(NEVER) is True
    finally:
        listener.close()


def test_what_a_poke_says_is_ignored_and_other_files_in_the_folder_are_left_alone(folder: Path) -> None:
    """A process that could reach the socket learns nothing and can only cause one more look:
    whatever it sends is read and thrown away."""
    listener = wakeup.Listener(folder)
    stray = folder / "notes.txt"
    stray.write_text("not a socket")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as attacker:
            attacker.sendto(b"run job 1234; DROP TABLE jobs" * 100, str(folder / listener.name))
        assert listener.wait(NEVER) is True
        assert listener.wait(0) is False
        assert wakeup.poke(folder) == 1
        assert stray.read_text() == "not a socket"
    finally:
        listener.close()
