"""A source's schema proposal, kept in memory once read, so reopening the custodian's page does not
read and profile the whole source again (ADR 0069).

A proposal is counts and proposed rules only (``profiling.SourceProposal``, frozen, no value from the
source), so keeping one in a process holds nothing identifiable. It is kept under what could change
it: the file read (its path, and the inode, size and modification time of what is there now, so a
delivery that replaces the file or points the dataset elsewhere misses), how it is read (through the
zone's seal or as it is), the day (age bands and dates in the future depend on it) and
``profiling.PROFILER_VERSION``. A file that cannot be stat'ed is not kept; a failure is never kept.

Bounded (least recently used goes first) and safe across a worker's threads. Pure: no Flask, no
SQLAlchemy. Permission and audit stay with the caller, on every request.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

from pseudonymisation.profiling import PROFILER_VERSION, SourceProposal

DEFAULT_ENTRIES = 32

Key = tuple[Hashable, ...]


def file_identity(path: Path | str) -> tuple[str, int, int, int, int] | None:
    """The file's path with what changes when it is replaced or rewritten (device and inode, size,
    modification time in nanoseconds); None if it cannot be stat'ed (then nothing is kept)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def source_key(path: Path | str, *, sealed: bool, today: dt.date) -> Key | None:
    """The key a proposal of ``path`` read on ``today`` is kept under, or None (not to be kept)."""
    identity = file_identity(path)
    if identity is None:
        return None
    return (PROFILER_VERSION, identity, sealed, today.isoformat())


class ProposalCache:
    """At most ``entries`` proposals, the least recently used dropped first."""

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        if entries < 1:
            raise ValueError("a proposal cache holds at least one entry")
        self._entries = entries
        self._kept: OrderedDict[Key, SourceProposal] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def get(self, key: Key) -> SourceProposal | None:
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
            return found

    def put(self, key: Key, proposal: SourceProposal) -> None:
        with self._lock:
            self._kept[key] = proposal
            self._kept.move_to_end(key)
            while len(self._kept) > self._entries:
                self._kept.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def proposal(
        self, path: Path | str, *, sealed: bool, today: dt.date, compute: Callable[[], SourceProposal]
    ) -> tuple[SourceProposal, bool]:
        """The proposal of the file at ``path`` and whether it was kept from before; ``compute`` reads
        the source on a miss (its errors pass through, and nothing is kept). Two threads that miss
        together both read: the lock is never held while a source is read. What is read is kept only
        if the file is the same after the read as before it (not rewritten meanwhile)."""
        before = source_key(path, sealed=sealed, today=today)
        if before is not None:
            found = self.get(before)
            if found is not None:
                return found, True
        proposal = compute()
        if before is not None and source_key(path, sealed=sealed, today=today) == before:
            self.put(before, proposal)
        return proposal, False


# One per process (each web worker has its own): what ``DatasetSchemas`` uses unless given another.
PROPOSALS = ProposalCache()

__all__ = ["DEFAULT_ENTRIES", "PROPOSALS", "ProposalCache", "file_identity", "source_key"]
