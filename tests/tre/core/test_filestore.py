"""The encrypted content-addressed file store, on a local folder and on a fake S3 client.

``FakeS3`` implements the four boto3 methods the store uses, raising errors shaped like botocore's
``ClientError`` for missing objects; ``test_filestore_s3_server.py`` runs the same contract tests
against a real S3 server (moto's emulator) over HTTP.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tre.core.filestore import (
    FileIntegrityError,
    FileStore,
    FileTooLarge,
    LocalFileStore,
    S3FileStore,
    StoredFileNotFound,
)
from tre.core.keys import InMemoryKeyProvider

LIMIT = 4096


class FakeClientError(Exception):
    """Shaped like botocore.exceptions.ClientError: the error code sits in ``response``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


class FakeS3:
    """An in-memory bucket speaking boto3's put_object / get_object / head_object / delete_object."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.puts = 0

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:  # noqa: N803
        self.puts += 1
        self.objects[(Bucket, Key)] = bytes(Body)
        return {}

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        if (Bucket, Key) not in self.objects:
            raise FakeClientError("NoSuchKey")
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)])}

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        if (Bucket, Key) not in self.objects:
            raise FakeClientError("404")
        return {"ContentLength": len(self.objects[(Bucket, Key)])}

    def delete_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self.objects.pop((Bucket, Key), None)
        return {}


class CountingStream(io.RawIOBase):
    """An endless stream that counts how much was read from it."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = 65536 if size is None or size < 0 else size
        self.read_bytes += size
        return b"z" * size


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


@pytest.fixture
def local(tmp_path: Path) -> LocalFileStore:
    return LocalFileStore(tmp_path / "files", InMemoryKeyProvider(), max_bytes=LIMIT)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileStore]:
    keys = InMemoryKeyProvider()
    if request.param == "local":
        yield LocalFileStore(tmp_path / "files", keys, max_bytes=LIMIT)
    else:
        yield S3FileStore(FakeS3(), "tre-files", keys, max_bytes=LIMIT, prefix="outputs")


# -- both back ends --------------------------------------------------------------------------------


def test_put_returns_sha256_of_plaintext_and_get_returns_content(store: FileStore) -> None:
    content = b"table 1: counts by region\n"

    digest = store.put(content)

    assert digest == sha(content)
    assert store.exists(digest)
    assert store.get(digest) == content


def test_put_accepts_binary_stream(store: FileStore) -> None:
    content = os.urandom(LIMIT)

    assert store.put(io.BytesIO(content)) == sha(content)
    assert store.get(sha(content)) == content


def test_put_accepts_empty_content(store: FileStore) -> None:
    assert store.get(store.put(b"")) == b""


def test_put_over_size_limit_raises_clear_error(store: FileStore) -> None:
    content = b"x" * (LIMIT + 1)

    with pytest.raises(FileTooLarge, match=f"limit of {LIMIT} bytes; nothing was stored") as refused:
        store.put(content)

    assert refused.value.limit == LIMIT
    assert not store.exists(sha(content))


def test_get_of_unknown_hash_raises_not_found(store: FileStore) -> None:
    with pytest.raises(StoredFileNotFound):
        store.get(sha(b"never stored"))


@pytest.mark.parametrize("name", ["../../etc/passwd", "ABC", "a" * 63, "A" * 64, "g" * 64, ""])
def test_names_other_than_lowercase_sha256_are_refused(store: FileStore, name: str) -> None:
    for operation in (store.get, store.exists, store.delete):
        with pytest.raises(ValueError, match="sha256"):
            operation(name)


def test_delete_removes_file_and_reports_whether_it_existed(store: FileStore) -> None:
    digest = store.put(b"to be destroyed at closure")

    assert store.delete(digest) is True
    assert not store.exists(digest)
    assert store.delete(digest) is False
    with pytest.raises(StoredFileNotFound):
        store.get(digest)


# -- the local folder ------------------------------------------------------------------------------


def test_local_store_writes_encrypted_file_in_sharded_folders(local: LocalFileStore) -> None:
    content = b"NHS number 9434765919 appears in this output"

    digest = local.put(content)

    [path] = stored_files(local.root)
    assert path == local.root / digest[:2] / digest[2:4] / digest
    assert content not in path.read_bytes()
    assert b"9434765919" not in path.read_bytes()


def test_local_store_put_is_idempotent(local: LocalFileStore) -> None:
    digest = local.put(b"same content")
    [path] = stored_files(local.root)
    first = path.read_bytes()

    assert local.put(io.BytesIO(b"same content")) == digest
    assert stored_files(local.root) == [path]
    assert path.read_bytes() == first


def test_local_store_detects_tampered_ciphertext(local: LocalFileStore) -> None:
    digest = local.put(b"approved output")
    [path] = stored_files(local.root)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))

    with pytest.raises(FileIntegrityError, match=digest):
        local.get(digest)


def test_local_store_detects_object_swapped_under_another_name(local: LocalFileStore) -> None:
    approved = local.put(b"approved, safe output")
    other = local.put(b"unchecked output with small counts")
    approved_path = local.root / approved[:2] / approved[2:4] / approved
    other_path = local.root / other[:2] / other[2:4] / other
    approved_path.write_bytes(other_path.read_bytes())

    with pytest.raises(FileIntegrityError):
        local.get(approved)


def test_local_store_detects_truncated_file(local: LocalFileStore) -> None:
    digest = local.put(b"content")
    [path] = stored_files(local.root)
    path.write_bytes(path.read_bytes()[:20])

    with pytest.raises(FileIntegrityError):
        local.get(digest)


def test_local_store_put_heals_damaged_copy(local: LocalFileStore) -> None:
    digest = local.put(b"precious")
    [path] = stored_files(local.root)
    path.write_bytes(b"garbage")

    local.put(b"precious")

    assert local.get(digest) == b"precious"


def test_local_store_size_limit_on_stream_stops_reading_and_writes_nothing(local: LocalFileStore) -> None:
    endless = CountingStream()

    with pytest.raises(FileTooLarge):
        local.put(endless)

    assert endless.read_bytes <= LIMIT + 1
    assert not local.root.exists() or stored_files(local.root) == []


def test_local_store_writes_atomically_via_temporary_file_and_rename(
    local: LocalFileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spying_replace(src: str, dst: str) -> None:
        # At the moment of the rename the final name must not exist yet, and the temporary must.
        assert not Path(dst).exists()
        assert Path(src).is_file()
        renames.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spying_replace)
    digest = local.put(b"atomic")

    [(src, dst)] = renames
    assert Path(src).parent == Path(dst).parent
    assert Path(src).name.startswith(".tmp-")
    assert dst.endswith(digest)
    assert [p.name for p in stored_files(local.root)] == [digest]


def test_local_store_syncs_the_parent_of_every_folder_it_makes_and_only_then(
    local: LocalFileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file synced into a folder whose own entry in its parent was never synced can vanish with the
    # folder in a crash: each new fan-out folder's parent is synced, then the file's own folder.
    real_fsync = os.fsync
    synced: list[Path] = []

    def recording_fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    local.root.mkdir(parents=True, exist_ok=True)
    digest = local.put(b"a new folder pair")
    top, leaf = local.root / digest[:2], local.root / digest[:2] / digest[2:4]
    folders = [path for path in synced if path.is_dir()]
    assert folders == [local.root, top, leaf]

    content = b"into folders that exist already"
    name = hashlib.sha256(content).hexdigest()
    existing = local.root / name[:2] / name[2:4]
    existing.mkdir(parents=True, exist_ok=True)
    synced.clear()
    assert local.put(content) == name
    assert [path for path in synced if path.is_dir()] == [existing]


def test_local_store_failed_write_leaves_neither_partial_nor_temporary_file(
    local: LocalFileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)

    with pytest.raises(OSError, match="disk full"):
        local.put(b"never half-written")

    assert stored_files(local.root) == []


def test_local_store_refuses_text_stream(local: LocalFileStore) -> None:
    with pytest.raises(TypeError, match="binary"):
        local.put(io.StringIO("text"))  # type: ignore[arg-type]


def test_store_refuses_non_positive_limit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        LocalFileStore(tmp_path, InMemoryKeyProvider(), max_bytes=0)


def test_files_stored_under_one_master_key_cannot_be_read_with_another(tmp_path: Path) -> None:
    digest = LocalFileStore(tmp_path, InMemoryKeyProvider(), max_bytes=LIMIT).put(b"content")

    with pytest.raises(FileIntegrityError):
        LocalFileStore(tmp_path, InMemoryKeyProvider(), max_bytes=LIMIT).get(digest)


def test_files_stay_readable_after_master_key_rotation(tmp_path: Path) -> None:
    keys = InMemoryKeyProvider()
    store = LocalFileStore(tmp_path, keys, max_bytes=LIMIT)
    digest = store.put(b"before rotation")

    keys.rotate()

    assert store.get(digest) == b"before rotation"


# -- S3 --------------------------------------------------------------------------------------------


def test_s3_store_puts_encrypted_object_under_prefixed_sharded_key() -> None:
    client = FakeS3()
    store = S3FileStore(client, "tre-files", InMemoryKeyProvider(), max_bytes=LIMIT, prefix="/outputs/")
    content = b"release me"

    digest = store.put(content)

    [(bucket, key)] = client.objects
    assert (bucket, key) == ("tre-files", f"outputs/{digest[:2]}/{digest[2:4]}/{digest}")
    assert content not in client.objects[(bucket, key)]


def test_s3_store_put_is_idempotent() -> None:
    client = FakeS3()
    store = S3FileStore(client, "b", InMemoryKeyProvider(), max_bytes=LIMIT)

    store.put(b"once")
    store.put(b"once")

    assert client.puts == 1


def test_s3_store_detects_tampered_object() -> None:
    client = FakeS3()
    store = S3FileStore(client, "b", InMemoryKeyProvider(), max_bytes=LIMIT)
    digest = store.put(b"approved output")
    [key] = client.objects
    client.objects[key] = client.objects[key][:-1] + bytes([client.objects[key][-1] ^ 1])

    with pytest.raises(FileIntegrityError):
        store.get(digest)


def test_s3_store_size_limit_writes_nothing() -> None:
    client = FakeS3()
    store = S3FileStore(client, "b", InMemoryKeyProvider(), max_bytes=LIMIT)

    with pytest.raises(FileTooLarge):
        store.put(CountingStream())

    assert client.puts == 0


def test_s3_store_passes_through_errors_other_than_not_found() -> None:
    class BrokenClient(FakeS3):
        def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
            raise FakeClientError("AccessDenied")

    store = S3FileStore(BrokenClient(), "b", InMemoryKeyProvider(), max_bytes=LIMIT)

    with pytest.raises(FakeClientError, match="AccessDenied"):
        store.exists(sha(b"x"))


# -- nothing secret leaks --------------------------------------------------------------------------


def test_file_store_logs_and_reprs_show_no_content_or_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = InMemoryKeyProvider()
    local = LocalFileStore(tmp_path, keys, max_bytes=LIMIT)
    s3 = S3FileStore(FakeS3(), "b", keys, max_bytes=LIMIT)
    content = b"canary-content-7f3a9"
    digest = local.put(content)
    s3.put(content)
    (tmp_path / digest[:2] / digest[2:4] / digest).write_bytes(b"tampered")
    with pytest.raises(FileIntegrityError):
        local.get(digest)
    master = keys._keyring().key(1)

    shown = " ".join([caplog.text, repr(local), str(local), repr(s3)])
    assert "canary-content-7f3a9" not in shown
    assert master.hex() not in shown
    assert digest in caplog.text  # the hash is what operators need to find the object
