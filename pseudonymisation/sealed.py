"""Sealed files: identifiable copies kept encrypted at rest, readable in place and at any offset.

A sealed file is a header and a run of chunks. The header carries a random file id and the file's
data key *wrapped* by the key provider (the wrapping happens at the edge, ``pseudonymisation.zone``;
this module only ever sees the unwrapped key it is handed). Each chunk holds up to ``chunk_size``
bytes of plaintext, encrypted with AES-256-GCM under the data key:

    header  = MAGIC | chunk size (u32) | file id (16 bytes) | wrapped key length (u16) | wrapped key
    chunk i = AES-GCM(key, nonce = 4 zero bytes | i (u64), plaintext, aad = header | i (u64) | last)

The nonce is the chunk's index: safe, because every file has a key of its own. The additional data
binds every chunk to its file (magic, chunk size and file id: a chunk cannot be moved into another
file), to its position (chunks cannot be reordered) and to whether it is the last one, so a file cut
short at a chunk boundary fails to open instead of reading as a shorter file. The wrapped key is left
out of it, so the key provider can re-wrap a file's key under a new master version by rewriting the
header alone (``rewrap_header``); a wrapped key taken from another file does not unwrap, because it
was wrapped for that file's id. Every chunk but the last is full;
the last holds 0 to ``chunk_size`` bytes, so the plaintext's size follows from the file's.

Readers get a seekable binary file (``open_sealed``): Arrow's CSV reader streams it and its Parquet
reader seeks in it, a chunk decrypted at a time, so memory follows the chunk, never the file.
Pure: no Flask, no SQLAlchemy, no key provider.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import queue
import secrets
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"TRESEAL1"
CHUNK_SIZE = 1 << 20
_TAG = 16
_FIXED = struct.Struct(">8sI16sH")  # magic, chunk size, file id, wrapped key length
_INDEX = struct.Struct(">Q")
_BLOCK = 1 << 22
# What a one-pass reader may read again from the start: the dialect's sniff (64 KiB) and Arrow's
# reads of the header row (it reads ahead about a dozen 1 MiB blocks when opened).
_HEAD = 1 << 25
_QUEUED = 4  # blocks handed to the sealing thread and not yet sealed: memory follows the block
_SYNC_EVERY = 1 << 26  # written bytes between flushes to the disk, so the last fsync is short
T = TypeVar("T")


class SealedFileError(ValueError):
    """A sealed file is damaged, cut short or not sealed with the key given; safe to show."""


class ReadOnceError(SealedFileError):
    """A one-pass reader went back to bytes already past (``OnePassReader``): the reader needs a
    stored copy to read instead; nothing is wrong with the delivery."""


def _nonce(index: int) -> bytes:
    return b"\x00\x00\x00\x00" + _INDEX.pack(index)


def _aad(header: bytes, index: int, last: bool) -> bytes:
    # Magic, chunk size and file id: everything of the header but the wrapped key and its length.
    return header[: _FIXED.size - 2] + _INDEX.pack(index) + (b"\x01" if last else b"\x00")


def file_id_purpose(file_id: bytes) -> str:
    """The key provider purpose a file's data key is wrapped for: one per file."""
    return f"sealed-file:{file_id.hex()}"


def is_sealed(path: Path | str) -> bool:
    """Whether the file starts as a sealed file does (it may still fail to open)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_header(handle: BinaryIO) -> tuple[bytes, bytes, int, bytes]:
    """``(header bytes, file id, chunk size, wrapped key)`` of an open sealed file, from its start."""
    handle.seek(0)
    fixed = handle.read(_FIXED.size)
    if len(fixed) < _FIXED.size:
        raise SealedFileError("not a sealed file: too short")
    magic, chunk_size, file_id, wrapped_length = _FIXED.unpack(fixed)
    if magic != MAGIC or not 1 <= chunk_size <= 1 << 26:
        raise SealedFileError("not a sealed file")
    wrapped = handle.read(wrapped_length)
    if len(wrapped) != wrapped_length:
        raise SealedFileError("the sealed file's header is cut short")
    return fixed + wrapped, file_id, chunk_size, wrapped


def rewrap_header(path: Path | str, rewrap: Callable[[bytes, bytes], bytes]) -> bool:
    """Replace a sealed file's wrapped key by ``rewrap(file_id, wrapped)`` (same length: the same
    key under the current master version), in place; the chunks are untouched. True if it changed."""
    fd = os.open(path, os.O_RDWR)
    try:
        with os.fdopen(os.dup(fd), "rb") as handle:
            _, file_id, _, wrapped = read_header(handle)
        new = rewrap(file_id, wrapped)
        if new == wrapped:
            return False
        if len(new) != len(wrapped):
            raise SealedFileError("a re-wrapped key must keep its length")
        os.pwrite(fd, new, _FIXED.size)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def new_file_id() -> bytes:
    return secrets.token_bytes(16)


class SealedWriter:
    """Writes a sealed file to an open binary handle; ``finish()`` writes the last chunk. Nothing is
    written on garbage collection: a writer abandoned part way leaves a file that fails to open."""

    def __init__(self, out: BinaryIO, key: bytes, file_id: bytes, wrapped_key: bytes,
                 chunk_size: int = CHUNK_SIZE) -> None:
        if len(key) != 32 or len(file_id) != 16:
            raise ValueError("a sealed file needs a 256-bit key and a 16-byte file id")
        self._out, self._aead, self._chunk = out, AESGCM(key), chunk_size
        self._header = _FIXED.pack(MAGIC, chunk_size, file_id, len(wrapped_key)) + wrapped_key
        out.write(self._header)
        # The plaintext not yet sealed, as views of the blocks written (a bytes block is kept by
        # reference, not copied: most chunks are sealed straight from the block they lie in).
        self._pending: collections.deque[memoryview] = collections.deque()
        self._held = 0
        self._index = 0
        self._finished = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._finished:
            raise ValueError("write to a finished sealed file")
        view = memoryview(data).cast("B")
        size = len(view)
        if not size:
            return 0
        if not isinstance(data, bytes):
            view = memoryview(bytes(view))  # the caller may change its buffer after this returns
        self._pending.append(view)
        self._held += size
        # Keep at least one byte back: the last chunk must be written with the last flag.
        while self._held > self._chunk:
            self._emit(self._take(self._chunk), last=False)
        return size

    def _take(self, size: int) -> memoryview | bytes:
        """The first ``size`` bytes pending: a view when they lie in one block, joined otherwise."""
        first = self._pending[0]
        self._held -= size
        if len(first) >= size:
            if len(first) == size:
                self._pending.popleft()
            else:
                self._pending[0] = first[size:]
            return first[:size]
        joined = bytearray()
        while len(joined) < size:
            part = self._pending.popleft()
            need = size - len(joined)
            if len(part) > need:
                self._pending.appendleft(part[need:])
            joined += part[:need]
        return bytes(joined)

    def _emit(self, plaintext: bytes | memoryview, *, last: bool) -> None:
        self._out.write(self._aead.encrypt(_nonce(self._index), plaintext, _aad(self._header, self._index, last)))
        self._index += 1

    def finish(self) -> None:
        if not self._finished:
            self._emit(self._take(self._held) if self._held else b"", last=True)
            self._finished = True


class SealedReader(io.RawIOBase):
    """The plaintext of a sealed file, read and seeked like a plain one; each chunk checked."""

    def __init__(self, handle: BinaryIO, key: bytes) -> None:
        super().__init__()
        self._raw = handle
        self._header, _, self._chunk, _ = read_header(handle)
        try:
            self._aead = AESGCM(key)
        except ValueError:
            raise SealedFileError("the sealed file's key is not a 256-bit key") from None
        body = os.fstat(handle.fileno()).st_size - len(self._header) if hasattr(handle, "fileno") else None
        if body is None:
            handle.seek(0, os.SEEK_END)
            body = handle.tell() - len(self._header)
        stride = self._chunk + _TAG
        self._chunks = -(-body // stride) if body > 0 else 0
        if self._chunks == 0 or body - (self._chunks - 1) * stride < _TAG:
            raise SealedFileError("the sealed file is cut short")
        self._size = body - self._chunks * _TAG
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def _plain_chunk(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        stride = self._chunk + _TAG
        self._raw.seek(len(self._header) + index * stride)
        sealed = self._raw.read(stride)
        last = index == self._chunks - 1
        try:
            plain = self._aead.decrypt(_nonce(index), sealed, _aad(self._header, index, last))
        except InvalidTag:
            raise SealedFileError("the sealed file was altered, cut short or sealed with another key") from None
        self._cached = (index, plain)
        return plain

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            index, at = divmod(self._pos, self._chunk)
            plain = self._plain_chunk(index)
            take = min(len(view) - done, len(plain) - at)
            view[done : done + take] = plain[at : at + take]
            done += take
            self._pos += take
        return done

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
            self._cached = None
        super().close()


def open_sealed(path: Path | str, unwrap: Callable[[bytes, bytes], bytes]) -> io.BufferedReader:
    """Open a sealed file for reading; ``unwrap(file_id, wrapped)`` gives its data key."""
    handle = open(path, "rb")  # noqa: SIM115 - closed by the reader
    try:
        _, file_id, _, wrapped = read_header(handle)
        reader = SealedReader(handle, unwrap(file_id, wrapped))
    except BaseException:
        handle.close()
        raise
    return io.BufferedReader(reader, buffer_size=1 << 16)


def seal_stream(source: BinaryIO, target: Path, *, key: bytes, file_id: bytes, wrapped_key: bytes,
                max_bytes: int, too_large: Callable[[int], Exception]) -> tuple[str, int]:
    """Seal what ``source`` holds into ``target`` (written aside, then renamed; mode 0600); returns
    the sha256 and size of the *plaintext*. Past ``max_bytes`` raises ``too_large(max_bytes)`` and
    leaves nothing behind."""
    sha, size, _ = seal_while_reading(source, target, key=key, file_id=file_id, wrapped_key=wrapped_key,
                                      max_bytes=max_bytes, too_large=too_large, read=None)
    return sha, size


class _Sealer:
    """The sealing side of a one-pass copy: a thread that hashes, encrypts and writes the blocks it
    is handed, in order (hashlib and AES-GCM release the GIL, so it runs beside the reader), and
    flushes to the disk as it goes."""

    def __init__(self, out: BinaryIO, writer: SealedWriter) -> None:
        self.out, self.writer = out, writer
        self.digest = hashlib.sha256()
        self.blocks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="seal", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        unsynced = 0
        while (block := self.blocks.get()) is not None:
            if self.error is not None:
                continue  # keep taking blocks so the reader is never stuck; it raises at its next block
            try:
                self.digest.update(block)
                self.writer.write(block)
                unsynced += len(block)
                if unsynced >= _SYNC_EVERY:
                    self.out.flush()
                    os.fdatasync(self.out.fileno())
                    unsynced = 0
            except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
                self.error = exc

    def put(self, block: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.blocks.put(block)

    def close(self, *, complete: bool) -> None:
        """Stop the thread; if ``complete``, write the last chunk and make the file durable."""
        self.blocks.put(None)
        self.thread.join()
        if complete:
            if self.error is not None:
                raise self.error
            self.writer.finish()
            self.out.flush()
            os.fsync(self.out.fileno())


class _Tee:
    """One read of the source, block by block: each block goes to the sealer and to the reader.
    The first ``_HEAD`` bytes are kept, so readers may start again from the beginning (sniffing a
    dialect, reading the header row) until one reads past them, when they are dropped; beyond, the
    plaintext is read once, in order, and so the bytes checked are exactly the bytes sealed."""

    def __init__(self, source: BinaryIO, sealer: _Sealer, max_bytes: int,
                 too_large: Callable[[int], Exception]) -> None:
        self.source, self.sealer, self.max_bytes, self.too_large = source, sealer, max_bytes, too_large
        self.head = bytearray()
        self.last_at, self.last = 0, b""
        self.pulled = 0
        self.ended = False

    def pull(self) -> bool:
        """Read the next block; False at the end of the source."""
        if self.ended:
            return False
        block = self.source.read(_BLOCK)
        if not block:
            self.ended = True
            return False
        if self.pulled + len(block) > self.max_bytes:
            raise self.too_large(self.max_bytes)
        self.sealer.put(bytes(block))
        if len(self.head) == self.pulled < _HEAD:
            self.head += block[: _HEAD - self.pulled]
        self.last_at, self.last = self.pulled, block
        self.pulled += len(block)
        return True

    def drain(self) -> int:
        """Read (and so seal) the rest of the source; the plaintext's size."""
        while self.pull():
            pass
        return self.pulled


class OnePassReader(io.RawIOBase):
    """A reader of a source being sealed as it is read: it may re-read the first bytes, and reads
    past what the tee still holds only at the point the source has reached."""

    def __init__(self, tee: _Tee) -> None:
        super().__init__()
        self._tee, self._pos = tee, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        tee, done = self._tee, 0
        held: bytes | bytearray
        while done < len(view):
            if self._pos < len(tee.head):
                held, at = tee.head, self._pos
            elif tee.last_at <= self._pos < tee.last_at + len(tee.last):
                held, at = tee.last, self._pos - tee.last_at
            elif self._pos == tee.pulled:
                if done or not tee.pull():
                    break  # a short read is allowed; the next call pulls
                continue
            else:
                raise ReadOnceError("a delivery being sealed is read once, in order, past its first bytes")
            take = min(len(view) - done, len(held) - at)
            view[done : done + take] = memoryview(held)[at : at + take]
            done += take
            self._pos += take
        if tee.head and self._pos > len(tee.head) >= _HEAD:
            # A reader is past the head: from now on no reader may start again (``_Tee``), so its
            # 32 MiB are let go instead of being held to the end of the file.
            tee.head = bytearray()
        return done


def seal_while_reading(source: BinaryIO, target: Path, *, key: bytes, file_id: bytes, wrapped_key: bytes,
                       max_bytes: int, too_large: Callable[[int], Exception],
                       read: Callable[[Callable[[], io.BufferedReader], Callable[[], int]], T] | None,
                       ) -> tuple[str, int, T | None]:
    """Seal ``source`` into ``target`` as ``seal_stream`` does, in one read of it, while
    ``read(open, size)`` reads the same plaintext: ``open()`` gives a reader of it from the start
    (only the first bytes can be read twice; see ``OnePassReader``), ``size()`` reads the rest and
    says how long it is. Whatever ``read`` leaves unread is sealed after it returns. Returns the
    plaintext's sha256 and size and what ``read`` returned. If ``read`` raises, or the source is too
    large, nothing is left behind; the file appears at ``target`` only when complete and durable."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(out_fd, "wb") as out:
            sealer = _Sealer(out, SealedWriter(out, key, file_id, wrapped_key))
            tee = _Tee(source, sealer, max_bytes, too_large)
            complete = False
            try:
                result = None if read is None else read(lambda: io.BufferedReader(OnePassReader(tee), 1 << 16),
                                                        tee.drain)
                size = tee.drain()
                complete = True
            finally:
                sealer.close(complete=complete)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return sealer.digest.hexdigest(), size, result


__all__ = ["CHUNK_SIZE", "MAGIC", "OnePassReader", "ReadOnceError", "SealedFileError", "SealedReader", "SealedWriter",
           "file_id_purpose", "is_sealed", "new_file_id", "open_sealed", "read_header", "rewrap_header",
           "seal_stream", "seal_while_reading"]
