"""A source's proposal is read once per file and day, kept in a bounded cache, and read again when the
file, the day or the profiler's rules change."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import threading
from pathlib import Path

import pytest

from pseudonymisation import profiling, proposal_cache
from pseudonymisation.profiling import ProfilingError, SourceProposal
from pseudonymisation.proposal_cache import ProposalCache, source_key

DAY = dt.date(2024, 5, 1)


def _csv(path: Path, rows: int) -> Path:
    path.write_text("code,value\n" + "".join(f"E{i % 7},{i}\n" for i in range(rows)))
    return path


def _reading(cache: ProposalCache, path: Path, *, today: dt.date = DAY) -> tuple[SourceProposal, bool, int]:
    reads = 0

    def compute() -> SourceProposal:
        nonlocal reads
        reads += 1
        return profiling.propose(path, today=today)

    proposal, cached = cache.proposal(path, sealed=False, today=today, compute=compute)
    return proposal, cached, reads


def test_the_second_proposal_of_a_file_is_not_read_again_and_is_equal(tmp_path: Path) -> None:
    cache = ProposalCache()
    source = _csv(tmp_path / "s.csv", 20)

    first, first_cached, first_reads = _reading(cache, source)
    second, second_cached, second_reads = _reading(cache, source)

    assert (first_cached, first_reads) == (False, 1)
    assert (second_cached, second_reads) == (True, 0)
    assert second == first == profiling.propose(source, today=DAY)


def test_a_replaced_file_at_the_same_path_is_read_again(tmp_path: Path) -> None:
    cache = ProposalCache()
    source = _csv(tmp_path / "s.csv", 20)
    _reading(cache, source)

    _csv(tmp_path / "new.csv", 35).replace(source)  # a delivery's new file moved over the old one
    proposal, cached, reads = _reading(cache, source)

    assert (cached, reads, proposal.row_count) == (False, 1, 35)


def test_a_file_rewritten_in_place_with_the_same_size_is_read_again(tmp_path: Path) -> None:
    cache = ProposalCache()
    source = _csv(tmp_path / "s.csv", 20)
    _reading(cache, source)
    before = os.stat(source)

    source.write_text(source.read_text().replace("E", "F"))  # same inode, same size
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000))
    _, cached, reads = _reading(cache, source)

    assert (cached, reads) == (False, 1)


def test_another_day_or_another_way_of_reading_is_a_different_key(tmp_path: Path) -> None:
    source = _csv(tmp_path / "s.csv", 5)

    key = source_key(source, sealed=False, today=DAY)

    assert key is not None
    assert key != source_key(source, sealed=False, today=DAY + dt.timedelta(days=1))
    assert key != source_key(source, sealed=True, today=DAY)
    assert key == source_key(source, sealed=False, today=DAY)


def test_a_new_profiler_version_is_a_different_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _csv(tmp_path / "s.csv", 5)
    key = source_key(source, sealed=False, today=DAY)

    monkeypatch.setattr(proposal_cache, "PROFILER_VERSION", profiling.PROFILER_VERSION + 1)

    assert source_key(source, sealed=False, today=DAY) != key


def test_a_file_that_cannot_be_stated_is_read_every_time_and_never_kept(tmp_path: Path) -> None:
    cache = ProposalCache()
    missing = tmp_path / "gone.csv"

    for _ in range(2):
        with pytest.raises(ProfilingError):
            _reading(cache, missing)

    assert source_key(missing, sealed=False, today=DAY) is None
    assert len(cache) == 0


def test_a_failure_is_never_kept(tmp_path: Path) -> None:
    cache = ProposalCache()
    source = _csv(tmp_path / "s.csv", 5)
    calls = 0

    def failing() -> SourceProposal:
        nonlocal calls
        calls += 1
        raise OSError("disk")

    for _ in range(2):
        with pytest.raises(OSError, match="disk"):
            cache.proposal(source, sealed=False, today=DAY, compute=failing)

    assert calls == 2
    assert len(cache) == 0


def test_a_file_changed_while_it_was_read_is_not_kept(tmp_path: Path) -> None:
    cache = ProposalCache()
    source = _csv(tmp_path / "s.csv", 5)

    def read_while_replaced() -> SourceProposal:
        proposal = profiling.propose(source, today=DAY)
        _csv(tmp_path / "new.csv", 9).replace(source)
        return proposal

    cache.proposal(source, sealed=False, today=DAY, compute=read_while_replaced)

    assert len(cache) == 0


def test_the_least_recently_used_proposal_goes_first_when_full(tmp_path: Path) -> None:
    cache = ProposalCache(entries=2)
    a, b, c = (_csv(tmp_path / f"{n}.csv", 3) for n in "abc")
    _reading(cache, a)
    _reading(cache, b)
    _reading(cache, a)  # a used again: b is now the oldest

    _reading(cache, c)

    assert len(cache) == 2
    assert _reading(cache, a)[1] is True
    assert _reading(cache, b)[1] is False


def test_a_kept_proposal_cannot_be_changed_by_one_caller_for_another(tmp_path: Path) -> None:
    cache = ProposalCache()
    source = _csv(tmp_path / "s.csv", 5)
    proposal, _, _ = _reading(cache, source)
    column = proposal.columns[0]

    with pytest.raises(TypeError):
        column.counts["rows"] = 0  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        proposal.row_count = 0  # type: ignore[misc]
    served = proposal.to_dict()
    served["columns"][0]["counts"]["rows"] = 0

    assert _reading(cache, source)[0].columns[0].counts["rows"] == 5


def test_a_kept_proposal_holds_counts_and_rules_not_values(tmp_path: Path) -> None:
    source = tmp_path / "s.csv"
    source.write_text("patient_name,nhs_number\n" + "".join(f"Zebedee{i},9434765919\n" for i in range(10)))
    cache = ProposalCache()

    proposal, _, _ = _reading(cache, source)

    text = repr(proposal) + repr(proposal.to_dict())
    assert "Zebedee" not in text and "9434765919" not in text
    for column in proposal.columns:
        assert all(isinstance(v, int) for v in column.counts.values())


def test_threads_reading_the_same_source_share_one_bounded_cache(tmp_path: Path) -> None:
    cache = ProposalCache(entries=4)
    sources = [_csv(tmp_path / f"{i}.csv", 3 + i) for i in range(6)]
    failures: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(30):
                source = sources[(i + offset) % len(sources)]
                proposal, _, _ = _reading(cache, source)
                assert proposal.row_count == 3 + sources.index(source)
        except BaseException as exc:  # noqa: BLE001 - reported below, on the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert failures == []
    assert len(cache) == 4
