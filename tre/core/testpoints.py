"""Named test points: places in the code where a test can hold a process still while it acts.

A test that kills a worker, crashes a database or races two requests must do so at a moment it
controls, not after a sleep that guesses how fast the machine is (docs/adr/0004-test-points.md). The
code calls ``reach("name")`` at such a moment. In production that call returns at once: it is inert
unless the ``TRE_TESTPOINTS`` environment variable names a folder, and it is refused (ignored, with
one error logged) when ``TRE_ENVIRONMENT`` is ``production``, or when the folder is not the
process's own or others may write to it.

When enabled, a point does nothing unless the test has *armed* it, and an armed point is taken by
exactly one reaching process (the arm file is renamed away, which the file system does atomically):

1. the test arms the point: ``<folder>/<name>.armed`` (``Barrier.arm``);
2. the first process to reach it renames that file, writes ``<name>.reached`` (its pid, written
   whole by rename), and blocks;
3. the test sees the point reached (``Barrier.wait_reached``), acts (kills the process, stops the
   database, sends the other request), and may ``release`` it: the process then goes on.

A process that is never released goes on by itself after ``TRE_TESTPOINTS_TIMEOUT`` seconds
(default 600), with a warning, so a test that died cannot wedge a worker for ever.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV = "TRE_TESTPOINTS"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_POLL_SECONDS = 0.02


def reach(name: str) -> None:
    """Announce that this process has reached the point ``name``; hold here if a test armed it."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    root = _usable(folder, os.environ.get("TRE_ENVIRONMENT", ""))
    if root is not None:
        _hold(root, name)


@functools.lru_cache(maxsize=8)
def _usable(folder: str, environment: str) -> Path | None:
    if environment == "production":
        log.error("%s is set in production: test points are refused", ENV)
        return None
    root = Path(folder)
    try:
        st = root.stat()
    except OSError:
        log.error("%s names no folder: test points are off", ENV)
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.error("%s must be a folder of this user that no one else may write to: test points are off", ENV)
        return None
    return root


def _check(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"a test point's name is letters, digits, '_', '.' or '-': {name!r}")
    return name


def _hold(root: Path, name: str) -> None:
    _check(name)
    try:
        os.rename(root / f"{name}.armed", root / f"{name}.taken")
    except FileNotFoundError:
        return  # not armed, or another process took it
    _write(root / f"{name}.reached", {"pid": os.getpid()})
    released = root / f"{name}.released"
    deadline = time.monotonic() + float(os.environ.get("TRE_TESTPOINTS_TIMEOUT", "600"))
    while not released.exists():
        if time.monotonic() > deadline:
            log.warning("test point %s was never released; going on", name)
            break
        time.sleep(_POLL_SECONDS)
    for suffix in ("taken", "reached", "released"):
        (root / f"{name}.{suffix}").unlink(missing_ok=True)


def _write(path: Path, content: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content), encoding="utf-8")
    os.replace(partial, path)


class Barrier:
    """The test's side: arm a point, wait until a process holds there, release it."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder

    @property
    def env(self) -> dict[str, str]:
        """The environment a process needs for its points to answer to this barrier."""
        return {ENV: str(self.folder)}

    def arm(self, name: str) -> None:
        """Make the next process that reaches ``name`` hold there. Leftovers of an earlier hold whose
        process was killed are cleared first."""
        _check(name)
        for suffix in ("taken", "reached", "released"):
            (self.folder / f"{name}.{suffix}").unlink(missing_ok=True)
        (self.folder / f"{name}.armed").touch()

    def reached(self, name: str) -> dict[str, Any] | None:
        """What the holding process wrote (its pid), or None while no process holds at ``name``."""
        try:
            content: dict[str, Any] = json.loads((self.folder / f"{_check(name)}.reached").read_text("utf-8"))
        except FileNotFoundError:
            return None
        return content

    def wait_reached(self, name: str, timeout: float) -> dict[str, Any]:
        """Wait until a process holds at ``name``; what it wrote. Raises TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (found := self.reached(name)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no process reached the test point {name!r} in {timeout:.0f} s")
            time.sleep(_POLL_SECONDS)
        return found

    def release(self, name: str) -> None:
        """Let the process holding at ``name`` go on."""
        (self.folder / f"{_check(name)}.released").touch()

    def disarm(self, name: str) -> None:
        (self.folder / f"{_check(name)}.armed").unlink(missing_ok=True)
