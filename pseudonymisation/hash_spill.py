"""Count repeated and unmatched 64-bit key hashes in memory bounded by the chunk, not the file.

ADR 0043. A delivery's duplicate-key check and its referential check compare every row's key hash
with every other row's; held in memory that is 8 bytes a row for the whole file. Here each chunk's
hashes are written to one of 256 bucket files, chosen by a byte of the value's image (equal values
always share a bucket), and each bucket is then read, sorted and counted on its own. A bucket
larger than the read limit is split by the next byte, so no read ever passes the limit, however
skewed the keys.

The hashes are of NHS numbers and other identifiers, and an unkeyed 64-bit hash of a 10-digit
number is reversed by trying every number. So what is written is each hash encrypted as one AES-256
block (the hash and eight zero bytes) under a key drawn from ``os.urandom`` for this one check and
held only in this object's memory: equal hashes give equal blocks and different ones different
blocks, so every count is the same as in memory, and the files mean nothing once the key is gone.
The key is never written or logged. A bucket is decrypted only when it is read back. The files are
0600 in a fresh 0700 directory made by ``tempfile.mkdtemp`` inside the caller's scratch directory,
and that directory is removed when the spill closes (a ``with`` block: also when the check raises).

Pure: numpy, cryptography and the standard library; no Flask, no SQLAlchemy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

PREFIX = "tre-key-spill-"
_BLOCK = 16  # bytes written a value: one AES block
_BUCKETS = 256  # one byte of the block chooses the bucket; the next byte splits a bucket too large
_DEPTH = _BLOCK  # after all 16 bytes, the values of a bucket are one value
_RECORD = np.dtype(f"V{_BLOCK}")


class SpillError(OSError):
    """The scratch directory cannot hold the spill (full disk, no permission); names no value."""


def _cipher(key: bytes) -> Cipher[modes.ECB]:
    # One block per value, so ECB reveals equality of values and nothing else: that is the point.
    return Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305 - one block per value  # nosec B305


class _Level:
    """The bucket files of one level in ``folder``: a record goes to the bucket its byte ``depth``
    names. Records wait in memory until ``buffer_bytes`` of them wait in all, then each bucket's are
    appended to its file (opened and closed each time, so a level holds no descriptor)."""

    def __init__(self, folder: Path, depth: int, buffer_bytes: int) -> None:
        self.folder, self.depth, self.buffer_bytes = folder, depth, buffer_bytes
        self.waiting: list[list[np.ndarray]] = [[] for _ in range(_BUCKETS)]
        self.waiting_bytes = 0
        self.sizes = np.zeros(_BUCKETS, dtype=np.int64)  # records per bucket, written or waiting

    def path(self, bucket: int) -> Path:
        return self.folder / f"{bucket:02x}"

    def append(self, records: np.ndarray) -> None:
        """Records are one-dimensional, of ``_RECORD`` (16 bytes moved as one item)."""
        if not len(records):
            return
        bucket = records.view(np.uint8).reshape(-1, _BLOCK)[:, self.depth]
        order = np.argsort(bucket, kind="stable")  # a radix sort for one byte
        counts = np.bincount(bucket, minlength=_BUCKETS)
        ordered = records[order]
        ends = np.cumsum(counts)
        for b in np.flatnonzero(counts):
            self.waiting[b].append(ordered[ends[b] - counts[b]:ends[b]])
        self.sizes += counts
        self.waiting_bytes += records.nbytes
        if self.waiting_bytes >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        for b, parts in enumerate(self.waiting):
            if not parts:
                continue
            fd = os.open(self.path(b), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "ab") as handle:
                for part in parts:
                    handle.write(memoryview(part).cast("B"))  # a contiguous slice: written without a copy
            parts.clear()
        self.waiting_bytes = 0

    def read(self, bucket: int, start: int, count: int) -> np.ndarray:
        with self.path(bucket).open("rb") as handle:
            handle.seek(start * _BLOCK)
            return np.fromfile(handle, dtype=_RECORD, count=count)


@dataclass(frozen=True)
class Leaf:
    """One bucket's values, sorted; ``extra`` more copies of its one value when the bucket could
    not be split (every byte of its blocks is the same, so all its values are equal)."""

    values: np.ndarray
    extra: int = 0


class HashSpill:
    """64-bit hashes spilled to bucket files, encrypted under a key of this spill's own.

    Open it with ``with``; ``add`` each chunk's hashes. ``duplicates`` and ``distinct_and_missing``
    then read it a bucket at a time, never more than ``read_limit_bytes`` of a spill's blocks at
    once. A spill opened with ``shared=other`` uses ``other``'s key, so the two bucket alike."""

    def __init__(self, scratch_dir: Path | str, *, read_limit_bytes: int = 1 << 24, buffer_bytes: int = 1 << 22,
                 shared: HashSpill | None = None) -> None:
        self._scratch = Path(scratch_dir)
        self._read_limit = max(int(read_limit_bytes), _BLOCK)
        self._buffer_bytes = max(int(buffer_bytes), _BLOCK)
        self._key = shared._key if shared is not None else os.urandom(32)
        self._folder: Path | None = None
        self._top: _Level | None = None
        self.count = 0

    def __repr__(self) -> str:
        return f"HashSpill(count={self.count})"  # never the key

    @property
    def folder(self) -> Path | None:
        """The spill's own directory while it is open; None once closed."""
        return self._folder

    def __enter__(self) -> HashSpill:
        try:
            self._folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self._scratch))  # 0700, new
        except OSError as exc:
            raise SpillError(f"The scratch directory cannot hold the key check's files ({exc.strerror})") from None
        self._top = _Level(self._folder, 0, self._buffer_bytes)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        folder, self._folder, self._top = self._folder, None, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _open_level(self) -> _Level:
        if self._top is None:
            raise SpillError("The spill is not open")
        return self._top

    def add(self, hashes: np.ndarray) -> None:
        top = self._open_level()
        if not len(hashes):
            return
        plain = np.zeros((len(hashes), 2), dtype=np.uint64)
        plain[:, 0] = hashes
        op = _cipher(self._key).encryptor()
        sealed = op.update(memoryview(plain).cast("B")) + op.finalize()
        try:
            top.append(np.frombuffer(sealed, dtype=_RECORD))
        except OSError as exc:
            raise SpillError(f"The scratch directory cannot hold the key check's files ({exc.strerror})") from None
        self.count += len(hashes)

    def _values(self, records: np.ndarray) -> np.ndarray:
        op = _cipher(self._key).decryptor()
        plain = np.frombuffer(op.update(memoryview(records).cast("B")) + op.finalize(), dtype=np.uint64)
        values = plain[0::2].copy()
        values.sort()
        return values


def _leaves(spills: Sequence[HashSpill]) -> Iterator[tuple[Leaf, ...]]:
    """The spills' buckets side by side (the same bucket of each, keyed alike), one tuple a bucket."""
    levels = [s._open_level() for s in spills]
    for level in levels:
        level.flush()
    yield from _walk(spills, levels)


def _walk(spills: Sequence[HashSpill], levels: Sequence[_Level | None]) -> Iterator[tuple[Leaf, ...]]:
    limit = min(s._read_limit for s in spills) // _BLOCK
    depth = next(level.depth for level in levels if level is not None)
    empty = Leaf(np.zeros(0, dtype=np.uint64))
    for b in range(_BUCKETS):
        sizes = [int(level.sizes[b]) if level is not None else 0 for level in levels]
        if not any(sizes):
            continue
        if max(sizes) <= limit:
            yield tuple(Leaf(s._values(level.read(b, 0, n))) if n and level is not None else empty
                        for s, level, n in zip(spills, levels, sizes, strict=True))
        elif depth == _DEPTH - 1:
            # Every byte of these blocks is the same: each side's bucket holds one value, repeated.
            yield tuple(Leaf(s._values(level.read(b, 0, 1)), n - 1) if n and level is not None else empty
                        for s, level, n in zip(spills, levels, sizes, strict=True))
        else:
            subs: list[_Level | None] = []
            for s, level, n in zip(spills, levels, sizes, strict=True):
                if not n or level is None:
                    subs.append(None)
                    continue
                sub = _Level(Path(tempfile.mkdtemp(prefix="split-", dir=level.folder)), depth + 1, s._buffer_bytes)
                for start in range(0, n, limit):
                    sub.append(level.read(b, start, min(limit, n - start)))
                sub.flush()
                subs.append(sub)
            try:
                yield from _walk(spills, subs)
            finally:
                for sub in subs:
                    if sub is not None:
                        shutil.rmtree(sub.folder, ignore_errors=True)


def _distinct_sorted(values: np.ndarray) -> np.ndarray:
    if not len(values):
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def duplicates(spill: HashSpill) -> int:
    """How many of the spilled values repeat an earlier one (the values less the distinct ones)."""
    repeats = 0
    for (leaf,) in _leaves([spill]):
        repeats += int(np.count_nonzero(leaf.values[1:] == leaf.values[:-1])) + leaf.extra
    return repeats


def distinct_count(spill: HashSpill) -> int:
    """How many distinct values were spilled."""
    return sum(len(_distinct_sorted(leaf.values)) for (leaf,) in _leaves([spill]))


def distinct_and_missing(found: HashSpill, reference: HashSpill) -> tuple[int, int]:
    """The distinct values spilled to ``found``, and how many of them were not spilled to
    ``reference`` (opened with ``shared=found``)."""
    if found._key != reference._key:
        raise SpillError("The two spills are not keyed alike")
    distinct = missing = 0
    for ours, theirs in _leaves([found, reference]):
        mine = _distinct_sorted(ours.values)
        distinct += len(mine)
        if len(mine):
            missing += int(np.count_nonzero(~np.isin(mine, _distinct_sorted(theirs.values), assume_unique=True)))
    return distinct, missing


__all__ = ["PREFIX", "HashSpill", "Leaf", "SpillError", "distinct_and_missing", "distinct_count", "duplicates"]
