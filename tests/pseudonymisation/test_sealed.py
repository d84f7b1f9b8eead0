"""Sealed files (pseudonymisation.sealed): the plaintext comes back exactly, at any offset, through
Arrow's CSV and Parquet readers; any change to the file, its chunks' order or its length, or the
wrong key, makes it refuse to open rather than read wrong."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pseudonymisation import sealed
from pseudonymisation.sealed import (
    SealedFileError,
    SealedReader,
    SealedWriter,
    is_sealed,
    new_file_id,
    open_sealed,
    read_header,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CHUNK = 64


def seal(path: Path, data: bytes, *, key: bytes = KEY, chunk: int = CHUNK, file_id: bytes | None = None) -> Path:
    with open(path, "wb") as out:
        writer = SealedWriter(out, key, file_id or new_file_id(), b"wrapped-key-blob", chunk_size=chunk)
        for at in range(0, len(data), 50):  # writes that do not line up with chunks
            writer.write(data[at : at + 50])
        writer.finish()
    return path


def unwrap_to(key: bytes):  # noqa: ANN201 - a test helper
    def unwrap(file_id: bytes, wrapped: bytes) -> bytes:
        assert wrapped == b"wrapped-key-blob"
        return key

    return unwrap


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_the_plaintext_comes_back_exactly_whatever_its_size(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = seal(tmp_path / "f", data)
    assert is_sealed(path)
    with open_sealed(path, unwrap_to(KEY)) as handle:
        assert handle.read() == data
        assert handle.seek(0, os.SEEK_END) == size


def test_reads_at_any_offset_match_the_plaintext(tmp_path: Path) -> None:
    data = os.urandom(10 * CHUNK + 5)
    path = seal(tmp_path / "f", data)
    with open(path, "rb") as raw:
        reader = SealedReader(raw, KEY)
        for start, length in [(0, 3), (CHUNK - 2, 5), (5 * CHUNK, CHUNK * 2), (len(data) - 4, 100), (len(data), 5)]:
            reader.seek(start)
            buffer = bytearray(length)
            got = reader.readinto(buffer)
            assert bytes(buffer[:got]) == data[start : start + length]
        reader.close()


def test_the_file_on_disk_holds_no_plaintext(tmp_path: Path) -> None:
    data = b"nhs_number,postcode\n9434765919,LS1 4AP\n" * 20
    path = seal(tmp_path / "f", data)
    assert b"9434765919" not in path.read_bytes() and b"LS1 4AP" not in path.read_bytes()


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_changed_byte_anywhere_refuses_the_read(tmp_path: Path) -> None:
    data = os.urandom(4 * CHUNK)
    path = seal(tmp_path / "f", data)
    with open(path, "rb") as raw:
        header_length = len(read_header(raw)[0])
    for offset in (8 + 4 + 3, header_length + 5, header_length + 2 * (CHUNK + 16) + 1, path.stat().st_size - 1):
        damaged = tmp_path / f"damaged-{offset}"
        damaged.write_bytes(path.read_bytes())
        _flip(damaged, offset)
        with pytest.raises(SealedFileError), open_sealed(damaged, unwrap_to(KEY)) as handle:
            handle.read()


def test_a_file_cut_short_at_a_chunk_boundary_refuses_the_read(tmp_path: Path) -> None:
    path = seal(tmp_path / "f", os.urandom(3 * CHUNK + 10))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - (10 + 16)])  # the last chunk gone: two whole chunks remain
    with pytest.raises(SealedFileError), open_sealed(path, unwrap_to(KEY)) as handle:
        handle.read()


def test_chunks_swapped_within_a_file_or_taken_from_another_refuse_the_read(tmp_path: Path) -> None:
    file_id = new_file_id()
    first = seal(tmp_path / "a", os.urandom(3 * CHUNK + 1), file_id=file_id)
    second = seal(tmp_path / "b", os.urandom(3 * CHUNK + 1))
    with open(first, "rb") as raw:
        header = len(read_header(raw)[0])
    stride = CHUNK + 16
    a, b = first.read_bytes(), second.read_bytes()
    one, two = a[header : header + stride], a[header + stride : header + 2 * stride]
    swapped = a[:header] + two + one + a[header + 2 * stride :]
    grafted = a[:header] + b[header : header + stride] + a[header + stride :]
    for name, body in (("swapped", swapped), ("grafted", grafted)):
        target = tmp_path / name
        target.write_bytes(body)
        with pytest.raises(SealedFileError), open_sealed(target, unwrap_to(KEY)) as handle:
            handle.read()


def test_the_wrong_key_refuses_the_read(tmp_path: Path) -> None:
    path = seal(tmp_path / "f", b"a,b\n1,2\n")
    with pytest.raises(SealedFileError), open_sealed(path, unwrap_to(OTHER_KEY)) as handle:
        handle.read()


def test_a_plain_file_is_not_taken_for_a_sealed_one(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_bytes(b"a,b\n1,2\n")
    assert not is_sealed(plain)
    with pytest.raises(SealedFileError), open(plain, "rb") as raw:
        read_header(raw)


def test_arrow_reads_csv_and_parquet_through_the_seal_as_from_the_plain_file(tmp_path: Path) -> None:
    table = pa.table({"id": list(range(5000)), "code": [f"E{i % 90:02d}" for i in range(5000)]})
    csv_bytes = io.BytesIO()
    pacsv.write_csv(table, csv_bytes)
    parquet_bytes = io.BytesIO()
    pq.write_table(table, parquet_bytes, row_group_size=700)
    sealed_csv = seal(tmp_path / "t.csv", csv_bytes.getvalue(), chunk=4096)
    sealed_parquet = seal(tmp_path / "t.parquet", parquet_bytes.getvalue(), chunk=4096)

    with open_sealed(sealed_csv, unwrap_to(KEY)) as handle:
        assert pacsv.read_csv(handle).equals(pacsv.read_csv(io.BytesIO(csv_bytes.getvalue())))
    with open_sealed(sealed_parquet, unwrap_to(KEY)) as handle, pq.ParquetFile(handle) as parquet:
        assert parquet.num_row_groups == 8
        assert parquet.read_row_group(5).equals(table.slice(3500, 700))


@pytest.mark.parametrize("piece", [1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 3])
def test_writes_of_any_length_seal_the_same_plaintext(tmp_path: Path, piece: int) -> None:
    data = os.urandom(7 * CHUNK + 5)
    path = tmp_path / "s.bin"
    with open(path, "wb") as out:
        writer = SealedWriter(out, KEY, new_file_id(), b"wrapped-key-blob", chunk_size=CHUNK)
        for at in range(0, len(data), piece):
            writer.write(memoryview(data)[at : at + piece])
        writer.finish()

    with open_sealed(path, unwrap_to(KEY)) as handle:
        assert handle.read() == data
    with open(path, "rb") as raw:
        header = len(read_header(raw)[0])
    assert path.stat().st_size == header + len(data) + 8 * 16  # 7 full chunks and a short last one


@pytest.mark.parametrize("piece", [1, CHUNK, 3 * CHUNK, 4 * CHUNK + 7])
@pytest.mark.parametrize("kind", ["bytes", "a bytearray the caller reuses"])
def test_blocks_held_back_seal_what_was_written_even_if_the_caller_reuses_its_buffer(
    tmp_path: Path, piece: int, kind: str
) -> None:
    # bytes blocks are sealed from the block itself, not copied; any other buffer is copied first.
    data = os.urandom(8 * CHUNK)  # a whole number of chunks: the last is full, and still the last
    path = tmp_path / "s.bin"
    reused = bytearray(piece)
    with open(path, "wb") as out:
        writer = SealedWriter(out, KEY, new_file_id(), b"wrapped-key-blob", chunk_size=CHUNK)
        for at in range(0, len(data), piece):
            part = data[at : at + piece]
            if kind == "bytes":
                writer.write(part)
            else:
                del reused[len(part):]
                reused[: len(part)] = part
                writer.write(reused)
                reused[:] = bytes(len(reused))  # the caller's buffer changes after the write
        writer.finish()

    with open_sealed(path, unwrap_to(KEY)) as handle:
        assert handle.read() == data
    with open(path, "rb") as raw:
        header = len(read_header(raw)[0])
    assert path.stat().st_size == header + len(data) + 8 * 16


# --- one pass: sealed while it is read (seal_while_reading) -------------------------------------------


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 1000 bytes and a head of 3000, so a few kilobytes cross every boundary."""
    monkeypatch.setattr(sealed, "_BLOCK", 1000)
    monkeypatch.setattr(sealed, "_HEAD", 3000)


def one_pass(path: Path, data: bytes, read, *, max_bytes: int = 1 << 20):  # noqa: ANN001, ANN201
    return sealed.seal_while_reading(io.BytesIO(data), path, key=KEY, file_id=new_file_id(),
                                     wrapped_key=b"wrapped-key-blob", max_bytes=max_bytes,
                                     too_large=lambda limit: ValueError(f"over {limit}"), read=read)


@pytest.mark.usefixtures("small_blocks")
def test_one_pass_seals_what_the_reader_reads_and_hashes_the_plaintext(tmp_path: Path) -> None:
    data = os.urandom(10_500)

    def read(open_, size):  # noqa: ANN001, ANN202
        with open_() as again:  # the first bytes may be read more than once
            first = again.read(2500)
        with open_() as stream:
            whole = b""
            while piece := stream.read(777):
                whole += piece
        return first, whole, size()

    sha, size, (first, whole, told) = one_pass(tmp_path / "z.csv", data, read)

    assert whole == data and first == data[:2500] and told == size == len(data)
    assert sha == hashlib.sha256(data).hexdigest()
    with open_sealed(tmp_path / "z.csv", unwrap_to(KEY)) as handle:
        assert handle.read() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.csv"]


@pytest.mark.usefixtures("small_blocks")
def test_one_pass_seals_the_rest_when_the_reader_stops_early(tmp_path: Path) -> None:
    data = os.urandom(9_000)

    def read(open_, size):  # noqa: ANN001, ANN202
        with open_() as stream:
            return stream.read(10)

    sha, size, result = one_pass(tmp_path / "z.csv", data, read)

    assert result == data[:10] and size == len(data) and sha == hashlib.sha256(data).hexdigest()
    with open_sealed(tmp_path / "z.csv", unwrap_to(KEY)) as handle:
        assert handle.read() == data


@pytest.mark.usefixtures("small_blocks")
def test_a_reader_going_back_past_the_first_bytes_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    data = os.urandom(9_000)

    def read(open_, size):  # noqa: ANN001, ANN202
        with open_() as stream:
            stream.read(6000)
        with open_() as again:
            again.read(4000)  # bytes 3000..4000 are past the head and gone

    with pytest.raises(sealed.ReadOnceError):
        one_pass(tmp_path / "z.csv", data, read)

    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("small_blocks")
def test_the_first_bytes_are_let_go_once_a_reader_is_past_them(tmp_path: Path) -> None:
    # They are kept only so readers may start again; past them, that is refused, so they go.
    data = os.urandom(9_000)
    held: list[int] = []

    def read(open_, size):  # noqa: ANN001, ANN202
        with open_() as stream:
            stream.read(2000)
            held.append(len(stream.raw._tee.head))
            stream.read(2000)
            held.append(len(stream.raw._tee.head))
        with pytest.raises(sealed.ReadOnceError), open_() as again:
            again.read(10)
        return size()

    _, size, told = one_pass(tmp_path / "z.csv", data, read)

    assert held[0] > 0 and held[1] == 0 and told == size == len(data)
    with open_sealed(tmp_path / "z.csv", unwrap_to(KEY)) as handle:
        assert handle.read() == data


@pytest.mark.usefixtures("small_blocks")
def test_one_pass_over_the_size_limit_or_a_failing_reader_leaves_nothing(tmp_path: Path) -> None:
    data = os.urandom(9_000)

    def read_all(open_, size):  # noqa: ANN001, ANN202
        return size()

    def fail(open_, size):  # noqa: ANN001, ANN202
        with open_() as stream:
            stream.read(5000)
        raise RuntimeError("the reader stopped")

    with pytest.raises(ValueError, match="over 8000"):
        one_pass(tmp_path / "a.csv", data, read_all, max_bytes=8000)
    with pytest.raises(RuntimeError):
        one_pass(tmp_path / "b.csv", data, fail)

    assert list(tmp_path.iterdir()) == []
