"""The key checks' spill (ADR 0043): the same counts as sorting every hash in memory, in bounded
reads, and files that are private while they exist, gone afterwards and useless without the key."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pseudonymisation.hash_spill import (
    PREFIX,
    HashSpill,
    SpillError,
    _leaves,
    distinct_and_missing,
    distinct_count,
    duplicates,
)

SMALL = {"read_limit_bytes": 4096, "buffer_bytes": 1024}  # splits and writes early, on little data


def _in_memory_duplicates(parts: list[np.ndarray]) -> int:
    """The method the spill replaces: every hash at once, sorted, equal neighbours counted."""
    every = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    every.sort()
    return int(np.count_nonzero(every[1:] == every[:-1]))


def _drawn(seed: int) -> list[list[np.ndarray]]:
    """Chunks of hashes: few distinct values (many repeats), repeats only across chunks, full-range
    values, all one value, empty chunks, nothing, one value."""
    rng = np.random.default_rng(seed)
    few = [rng.integers(0, 300, int(n), dtype=np.uint64) for n in rng.integers(0, 2000, 9)]
    base = rng.integers(0, 2**64 - 1, 1500, dtype=np.uint64)
    across = [base[:800], base[500:], np.zeros(0, dtype=np.uint64), base[::7]]
    wide = [rng.integers(0, 2**64 - 1, 3000, dtype=np.uint64, endpoint=True) for _ in range(3)]
    same = [np.full(int(n), 2**63 + seed, dtype=np.uint64) for n in (700, 1, 2500)]
    return [few, across, wide, same, [], [np.zeros(0, dtype=np.uint64)], [np.array([seed], dtype=np.uint64)]]


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_duplicates_are_those_of_sorting_every_hash_in_memory(tmp_path: Path, seed: int) -> None:
    for parts in _drawn(seed):
        for limits in (SMALL, {}):
            with HashSpill(tmp_path, **limits) as spill:
                for part in parts:
                    spill.add(part)
                assert duplicates(spill) == _in_memory_duplicates(parts)
                assert distinct_count(spill) == (len(np.unique(np.concatenate(parts))) if parts else 0)


def test_a_bucket_of_one_value_past_the_read_limit_is_counted_without_reading_it_whole(tmp_path: Path) -> None:
    # 4096 bytes hold 256 blocks; 5000 copies of one value cannot be split by any byte.
    with HashSpill(tmp_path, **SMALL) as spill:
        spill.add(np.full(5000, 42, dtype=np.uint64))
        spill.add(np.arange(300, dtype=np.uint64))
        assert duplicates(spill) == 5000 - 1 + 1  # 42 is also among 0..299


@pytest.mark.parametrize("seed", [4, 5])
def test_distinct_values_missing_from_a_reference_are_those_of_a_set_comparison(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cases = [
        (rng.integers(0, 5000, 20000, dtype=np.uint64), rng.integers(0, 5000, 3000, dtype=np.uint64)),
        (np.full(3000, 7, dtype=np.uint64), np.full(4000, 7, dtype=np.uint64)),
        (np.full(3000, 7, dtype=np.uint64), np.full(4000, 8, dtype=np.uint64)),
        (rng.integers(0, 2**64 - 1, 5000, dtype=np.uint64), np.zeros(0, dtype=np.uint64)),
        (np.zeros(0, dtype=np.uint64), rng.integers(0, 10, 50, dtype=np.uint64)),
    ]
    for ours, theirs in cases:
        with HashSpill(tmp_path, **SMALL) as found, HashSpill(tmp_path, shared=found, **SMALL) as reference:
            for part in np.array_split(ours, 5):
                found.add(part)
            for part in np.array_split(theirs, 3):
                reference.add(part)
            distinct = np.unique(ours)
            assert distinct_and_missing(found, reference) == (len(distinct), int((~np.isin(distinct, theirs)).sum()))


def test_spills_not_keyed_alike_are_not_compared(tmp_path: Path) -> None:
    with HashSpill(tmp_path) as a, HashSpill(tmp_path) as b:
        a.add(np.arange(10, dtype=np.uint64))
        b.add(np.arange(10, dtype=np.uint64))
        with pytest.raises(SpillError):
            distinct_and_missing(a, b)


def test_spilled_files_are_private_and_are_not_the_hashes(tmp_path: Path) -> None:
    hashes = np.random.default_rng(9).integers(0, 2**64 - 1, 20000, dtype=np.uint64)
    with HashSpill(tmp_path, **SMALL) as spill:
        spill.add(hashes)
        folder = spill.folder
        assert folder is not None and folder.parent == tmp_path and folder.name.startswith(PREFIX)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = _files(folder)
        assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
        written = b"".join(f.read_bytes() for f in files)
        assert len(written) == 16 * len(hashes)
        # Neither the hashes nor any 8 bytes of what was written are the unkeyed values.
        words = set(np.frombuffer(written, dtype=np.uint64).tolist())
        assert not words & set(hashes.tolist())
        assert hashes.tobytes()[:64] not in written
        assert repr(spill) == "HashSpill(count=20000)"  # never the key


def test_two_spills_of_the_same_hashes_write_different_bytes(tmp_path: Path) -> None:
    hashes = np.arange(5000, dtype=np.uint64)
    written = []
    for _ in range(2):
        with HashSpill(tmp_path, **SMALL) as spill:
            spill.add(hashes)
            assert spill.folder is not None
            written.append(set(np.frombuffer(b"".join(f.read_bytes() for f in _files(spill.folder)),
                                             dtype=np.uint64).tolist()))
    assert not written[0] & written[1]


def test_the_spill_is_gone_after_counting_and_after_a_failure_mid_count(tmp_path: Path) -> None:
    with HashSpill(tmp_path, **SMALL) as spill:
        spill.add(np.full(5000, 3, dtype=np.uint64))  # a bucket that is split, so sub-levels exist
        assert duplicates(spill) == 4999
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(RuntimeError), HashSpill(tmp_path, **SMALL) as spill:  # noqa: PT012 - fails mid-count
        spill.add(np.random.default_rng(1).integers(0, 100, 20000, dtype=np.uint64))  # split buckets
        for n, _ in enumerate(spill_leaves(spill)):
            if n == 3:
                raise RuntimeError("the check failed part-way")
    assert list(tmp_path.iterdir()) == []


def spill_leaves(spill: HashSpill) -> Iterator[int]:
    """The buckets one by one, as ``duplicates`` reads them (so a failure can come between two)."""
    for (leaf,) in _leaves([spill]):
        yield len(leaf.values)


def test_a_scratch_directory_that_cannot_hold_the_spill_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SpillError, match="scratch directory"), HashSpill(tmp_path / "absent"):
        pass
