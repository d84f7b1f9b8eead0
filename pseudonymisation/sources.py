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


__all__ = ["Opener", "SourceFile", "as_source", "plain_open", "readable"]
