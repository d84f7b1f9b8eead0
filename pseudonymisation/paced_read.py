"""Keep a CSV reader's read-ahead to a few chunks, whatever the speed of the code taking its batches.

``pyarrow.csv.open_csv`` reads its input on an Arrow I/O thread into a queue of up to 32 blocks of
``block_size``, whether or not ``use_threads`` is set. When the source is read faster than the
batches are taken, that queue fills: 32 chunks held, not one. ``PacedFile`` is the file Arrow is
handed instead of the real one: its ``read`` waits while the bytes it has handed out would pass
``(batches taken + window) x chunk_bytes``. ``paced_batches`` is the consumer's side: it counts each
batch as it is taken, and when it ends for any reason (the last batch, a fault, a consumer that
stops early) it releases a waiting read, which then answers end of file.

No wait is unbounded: a waiting read wakes every ``_TICK`` seconds to look at the stop flag, and the
stop flag is set in a ``finally``. Why a window of three: ADR 0039 (read-ahead section).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

WINDOW = 3  # chunks Arrow may hold beyond the batches taken; a batch needs at most two blocks
_TICK = 0.1  # seconds between looks at the stop flag while a read waits
# Seconds a read waits while the reader is being opened. If opening fails (a first row longer than
# a chunk), Arrow waits for the reads under way before it raises, so a read held then must go on.
# Long, so that a normal open on a busy machine never lets a read past the window; the cost is that
# a delivery whose first row is longer than a chunk is refused this much later.
_OPENING_PATIENCE = 10.0


class PacedFile:
    """A binary file for Arrow that reads at most ``window`` chunks ahead of the batches taken.

    It does not close ``raw``: whoever opened it does."""

    def __init__(self, raw: Any, chunk_bytes: int, window: int = WINDOW) -> None:
        if chunk_bytes <= 0 or window <= 0:
            raise ValueError("chunk_bytes and window must be positive")
        self._raw = raw
        self._chunk = chunk_bytes
        self._window = window
        self._lock = threading.Condition()
        self._handed = 0  # bytes Arrow has been given
        self._taken = 0  # batches the consumer has taken
        self._reading = 0  # reads under way
        self._waiting = 0  # reads waiting to be admitted
        self._stopped = False
        self._opening = False
        self._held_at: int | None = None  # the batches taken when a read last began to wait

    # The consumer's side ------------------------------------------------------------------------

    def took(self) -> None:
        """One more batch taken: the reader may go one chunk further."""
        with self._lock:
            self._taken += 1
            self._lock.notify_all()

    @contextlib.contextmanager
    def opening(self) -> Iterator[None]:
        """While Arrow's reader is being made: a read waits at most ``_OPENING_PATIENCE`` seconds."""
        with self._lock:
            self._opening = True
        try:
            yield
        finally:
            with self._lock:
                self._opening = False
                self._lock.notify_all()

    def stop(self) -> None:
        """No more batches will be taken: a waiting read answers end of file, and so does any later one."""
        with self._lock:
            self._stopped = True
            self._held_at = None
            self._lock.notify_all()

    def finish(self) -> None:
        """``stop``, then give a read already past its wait a moment to end, so the opener does not
        close ``raw`` under it."""
        self.stop()
        self.wait_idle(_TICK * 50)

    def wait_idle(self, timeout: float) -> bool:
        """Whether, within ``timeout`` seconds, no read is under way or waiting (after ``stop``, soon none is)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._reading == 0 and self._waiting == 0, timeout)

    def wait_held(self, timeout: float) -> bool:
        """Whether, within ``timeout`` seconds, a read waits for more batches than have been taken."""
        with self._lock:
            return self._lock.wait_for(lambda: self._held_at == self._taken, timeout)

    @property
    def handed(self) -> int:
        with self._lock:
            return self._handed

    # Arrow's side -------------------------------------------------------------------------------

    def _admit(self, size: int) -> bool:
        # A read that asks for more than the window (or for everything) is counted as one chunk.
        need = size if 0 <= size <= self._window * self._chunk else self._chunk
        with self._lock:
            since = time.monotonic()
            self._waiting += 1
            try:
                while not self._stopped and self._handed + need > (self._taken + self._window) * self._chunk:
                    if self._opening and time.monotonic() - since > _OPENING_PATIENCE:
                        break  # the reader is not open yet: Arrow may be waiting on this read to fail
                    if self._held_at != self._taken:
                        self._held_at = self._taken
                        self._lock.notify_all()
                    self._lock.wait(_TICK)
            finally:
                self._waiting -= 1
                self._held_at = None
                self._lock.notify_all()
            if self._stopped:
                return False
            self._reading += 1
            return True

    def _done(self, count: int) -> None:
        with self._lock:
            self._handed += count
            self._reading -= 1
            self._lock.notify_all()

    def read(self, size: int = -1) -> bytes:
        if not self._admit(size):
            return b""
        data = b""
        try:
            data = self._raw.read(size) or b""
        finally:
            self._done(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not self._admit(len(view)):
            return 0
        count = 0
        try:
            count = self._raw.readinto(view) or 0
        finally:
            self._done(count)
        return count

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return bool(getattr(self._raw, "closed", False))

    def close(self) -> None:
        self.stop()


def paced_batches(
    raw: Any,
    chunk_bytes: int,
    open_reader: Callable[[PacedFile], Any],
    *,
    window: int = WINDOW,
    on_open: Callable[[PacedFile], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """The batches of ``open_reader(paced file)``, with Arrow held to ``window`` chunks ahead of them.

    ``on_open`` sees the paced file (the tests use it to watch the bytes handed out)."""
    paced = PacedFile(raw, chunk_bytes, window)
    if on_open is not None:
        on_open(paced)
    reader = None
    try:
        with paced.opening():
            reader = open_reader(paced)
        for batch in reader:
            paced.took()
            yield batch
    finally:
        paced.finish()  # before the reader goes: Arrow's end waits for its reads under way
        del reader


__all__ = ["WINDOW", "PacedFile", "paced_batches"]
