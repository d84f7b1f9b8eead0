"""Arrow's CSV read-ahead is held to a few chunks of the batches taken (pseudonymisation/paced_read.py)."""

import datetime as dt
import functools
import io
import threading

import pyarrow.csv as pacsv
import pytest

from pseudonymisation import paced_read, profiling
from pseudonymisation.delivery_checks import DeliveryCheckError, DeliveryRules, ExpectedColumn, check_delivery
from pseudonymisation.profiling import ProfilingError

CHUNK = 16 * 1024
TODAY = dt.date(2026, 12, 6)
COLUMNS = [ExpectedColumn("row_id", "integer"), ExpectedColumn("value", "integer")]
SETTLE = 30.0  # seconds: only a broken reader waits this long; a passing run never does


class CountingFile(io.BytesIO):
    """A source that counts the bytes read from it and says when it reached its end."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0
        self.at_end = threading.Event()

    def read(self, size=-1):
        data = super().read(size)
        self.read_bytes += len(data)
        if not data:
            self.at_end.set()
        return data


def _csv_bytes(rows: int) -> bytes:
    return ("id,town,note\n" + "".join(f"{i},Bradford,visit number {i:08d}\n" for i in range(rows))).encode()


def _open(paced):
    return pacsv.open_csv(paced, read_options=pacsv.ReadOptions(block_size=CHUNK, use_threads=False))


def _settled(source: CountingFile, paced: paced_read.PacedFile) -> None:
    """Wait until the reader can go no further: held by the window, or at the end of the file."""
    for _ in range(int(SETTLE / 0.05)):
        if paced.wait_held(0.05) or source.at_end.is_set():
            return
    raise AssertionError("the reader neither waited nor reached the end")


def test_the_reader_never_holds_more_than_the_window_ahead_of_a_slow_consumer():
    data = _csv_bytes(12_000)  # about 30 chunks: fewer than Arrow's own queue of 32, so unheld it reads all
    source = CountingFile(data)
    seen: list[paced_read.PacedFile] = []
    batches = paced_read.paced_batches(source, CHUNK, _open, on_open=seen.append)

    taken, rows, ahead = 0, 0, []
    for batch in batches:
        taken += 1
        rows += batch.num_rows
        _settled(source, seen[0])  # the consumer is slow: the reader has gone as far as it may
        ahead.append(source.read_bytes - taken * CHUNK)
        assert source.read_bytes <= (taken + paced_read.WINDOW) * CHUNK

    assert rows == 12_000
    assert taken > 2 * paced_read.WINDOW
    assert max(ahead) == paced_read.WINDOW * CHUNK  # it did read ahead, as far as the window


def test_a_consumer_that_stops_after_the_first_batch_leaves_no_read_waiting():
    source = CountingFile(_csv_bytes(12_000))
    seen: list[paced_read.PacedFile] = []
    batches = paced_read.paced_batches(source, CHUNK, _open, on_open=seen.append)

    next(batches)
    _settled(source, seen[0])
    assert seen[0].wait_held(0)
    batches.close()

    assert seen[0].wait_idle(SETTLE)
    assert not seen[0].wait_held(0)
    assert source.read_bytes <= (1 + paced_read.WINDOW) * CHUNK
    assert seen[0].read(CHUNK) == b""  # a read after the end answers end of file at once


def test_a_fault_in_the_checks_mid_file_ends_the_reading_and_parsing_threads(tmp_path, monkeypatch):
    path = tmp_path / "d.csv"
    path.write_bytes(b"row_id,value\n" + b"".join(b"%d,%d\n" % (i, i % 97) for i in range(60_000)))
    before = set(threading.enumerate())
    seen: list[paced_read.PacedFile] = []
    monkeypatch.setattr(paced_read, "paced_batches", functools.partial(paced_read.paced_batches, on_open=seen.append))
    calls = []

    def fail_at_the_second_batch(rows: int) -> None:
        calls.append(rows)
        if len(calls) == 2:
            raise RuntimeError("the checks failed mid-file")

    with pytest.raises(RuntimeError, match="mid-file"):
        check_delivery(
            path, COLUMNS, DeliveryRules(), today=TODAY, chunk_bytes=CHUNK, progress=fail_at_the_second_batch
        )

    assert len(seen) == 1 and seen[0].handed < path.stat().st_size  # it stopped well before the end
    assert seen[0].wait_idle(SETTLE)
    assert not seen[0].wait_held(0)
    assert seen[0].read(CHUNK) == b""
    assert [t.name for t in set(threading.enumerate()) - before] == []


@pytest.mark.parametrize("where", ["first", "late"])
def test_a_row_longer_than_a_chunk_is_still_refused_as_a_parsing_error(tmp_path, monkeypatch, where):
    monkeypatch.setattr(paced_read, "_OPENING_PATIENCE", 0.5)  # the refusal waits this long at most
    long_row = "1,Bradford," + "x" * (4 * CHUNK) + "\n"
    body = "".join(f"{i},Leeds,short\n" for i in range(5_000))
    path = tmp_path / "long.csv"
    path.write_text("id,town,note\n" + (long_row + body if where == "first" else body + long_row + body))

    with pytest.raises(ProfilingError, match="parsing error"):
        list(profiling.read_batches(path, chunk_bytes=CHUNK)[3])
    with pytest.raises(DeliveryCheckError):
        check_delivery(path, [ExpectedColumn("id", "integer")], DeliveryRules(), today=TODAY, chunk_bytes=CHUNK)


def test_paced_batches_match_unpaced_ones_on_a_single_byte_encoded_file(tmp_path):
    text = "id;town;note\n" + "".join(f'{i};Bradfôrd;"line {i}\nwith ü"\n' for i in range(8_000))
    path = tmp_path / "cp.csv"
    path.write_bytes(text.encode("latin-1"))

    fmt, dialect, _, batches = profiling.read_batches(path, chunk_bytes=CHUNK)
    paced = [b.to_pydict() for b in batches]
    with path.open("rb") as raw:
        unpaced = [b.to_pydict() for b in profiling._csv_reader(raw, dialect, CHUNK, ["id", "town", "note"])]

    assert fmt == "csv"
    assert sum(len(b["id"]) for b in paced) == 8_000
    assert paced == unpaced
