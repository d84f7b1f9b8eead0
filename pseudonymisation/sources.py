"""A source file to read: where it is, and how to open its plaintext.

Readers (profiling, the delivery checks, the extract pipeline) take a ``SourceFile`` (or a plain
path, read as it is). The edge that holds the key provider builds one whose opener decrypts a
sealed copy in the identifiable zone (``pseudonymisation.zone``), so no reader handles keys and
every reader gets the same bytes whether the copy is sealed or not. Pure: no Flask, no SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

Opener = Callable[[Path], BinaryIO]


def plain_open(path: Path) -> BinaryIO:
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


@dataclass(frozen=True)
class SourceFile:
    path: Path
    opener: Opener = plain_open

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def suffix(self) -> str:
        return self.path.suffix

    def is_file(self) -> bool:
        return self.path.is_file()

    def open(self) -> BinaryIO:
        return self.opener(self.path)

    def size(self) -> int:
        """The plaintext's size in bytes."""
        with self.open() as handle:
            return handle.seek(0, os.SEEK_END)

    def stat_key(self) -> tuple[int, int]:
        """What changes when the stored file is replaced: its size on disk and modification time."""
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class OnePassSource(SourceFile):
    """A source read as it arrives (and sealed as it is read, ``zone.seal_into_zone_reading``): its
    first bytes may be read again (sniffing, the header row), the rest once and in order, so a
    CSV reader streams it but nothing seeks in it; its size is known once it has all been read."""

    read_rest: Callable[[], int] | None = None

    def is_file(self) -> bool:
        return True

    def size(self) -> int:
        assert self.read_rest is not None
        return self.read_rest()

    def stat_key(self) -> tuple[int, int]:
        raise TypeError("a source being read as it arrives has no stored file yet")


@contextlib.contextmanager
def readable(source: SourceFile) -> Iterator[str | BinaryIO]:
    """What Arrow should read: a plain file by its path (Arrow's own reads, memory-mapped for
    Parquet), a sealed one through its decrypting reader."""
    if source.opener is plain_open:
        yield str(source.path)
    else:
        with source.open() as handle:
            yield handle


def as_source(source: SourceFile | Path | str) -> SourceFile:
    return source if isinstance(source, SourceFile) else SourceFile(Path(source))


__all__ = ["OnePassSource", "Opener", "SourceFile", "as_source", "plain_open", "readable"]
