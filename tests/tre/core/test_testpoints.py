"""Named test points (tre/core/testpoints.py): inert unless a test's folder is named, held by exactly
one process when armed, and refused in production or in a folder others may write to."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tre.core import testpoints
from tre.core.testpoints import Barrier

POINT = "job.progress.kernel.selftest"


@pytest.fixture
def barrier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Barrier:
    b = Barrier(tmp_path / "points")
    monkeypatch.setenv(testpoints.ENV, str(b.folder))
    monkeypatch.delenv("TRE_ENVIRONMENT", raising=False)
    return b


def test_reach_without_the_variable_does_nothing_even_when_a_folder_is_armed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(testpoints.ENV, raising=False)
    monkeypatch.setenv("TRE_TESTPOINTS_TIMEOUT", "0")
    b = Barrier(tmp_path / "points")
    b.arm(POINT)

    testpoints.reach(POINT)

    assert (b.folder / f"{POINT}.armed").exists() and b.reached(POINT) is None


def test_a_point_not_armed_is_passed_straight_through(barrier: Barrier) -> None:
    testpoints.reach(POINT)

    assert list(barrier.folder.iterdir()) == []


def test_an_armed_point_holds_the_process_until_released_and_names_its_pid(barrier: Barrier) -> None:
    barrier.arm(POINT)
    passed = threading.Event()

    def run() -> None:
        testpoints.reach(POINT)
        passed.set()

    worker = threading.Thread(target=run)
    worker.start()
    held = barrier.wait_reached(POINT, timeout=60)
    assert held == {"pid": os.getpid()}
    assert not passed.is_set()  # held: it cannot have gone on before the release below

    barrier.release(POINT)
    worker.join(timeout=60)

    assert passed.is_set()
    assert list(barrier.folder.iterdir()) == []  # the hold cleans up after itself


def test_an_armed_point_is_taken_by_exactly_one_of_two_processes(barrier: Barrier) -> None:
    barrier.arm(POINT)
    first = threading.Thread(target=testpoints.reach, args=(POINT,))
    first.start()
    barrier.wait_reached(POINT, timeout=60)

    testpoints.reach(POINT)  # the second one finds nothing armed: it is not held

    barrier.release(POINT)
    first.join(timeout=60)
    assert not first.is_alive()


def test_a_point_is_refused_in_production(barrier: Barrier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRE_ENVIRONMENT", "production")
    monkeypatch.setenv("TRE_TESTPOINTS_TIMEOUT", "0")  # were it held, it would not hang the test
    barrier.arm(POINT)

    testpoints.reach(POINT)

    assert (barrier.folder / f"{POINT}.armed").exists() and barrier.reached(POINT) is None


def test_a_folder_others_may_write_to_is_refused(barrier: Barrier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRE_TESTPOINTS_TIMEOUT", "0")
    barrier.folder.chmod(0o777)
    barrier.arm(POINT)

    testpoints.reach(POINT)

    assert (barrier.folder / f"{POINT}.armed").exists() and barrier.reached(POINT) is None


def test_a_held_process_goes_on_by_itself_after_the_timeout(
    barrier: Barrier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRE_TESTPOINTS_TIMEOUT", "0")
    barrier.arm(POINT)

    testpoints.reach(POINT)  # taken, never released, and yet it returns

    assert list(barrier.folder.iterdir()) == []


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "name with spaces"])
def test_a_point_name_that_is_not_a_plain_word_is_refused(barrier: Barrier, name: str) -> None:
    with pytest.raises(ValueError):
        barrier.arm(name)
    with pytest.raises(ValueError):
        testpoints.reach(name)
