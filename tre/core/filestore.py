"""The encrypted, content-addressed file store: bytes in, their sha256 out, encrypted at rest.

A file's name is the sha256 of its *plaintext*, so approvals can bind to a hash and the same
content is stored once. Each object is sealed by the key provider with purpose ``filestore:<sha>``:
an object copied over another's name fails to open, and after opening its hash is checked again,
so any tampering is reported rather than served. Size limits are enforced while reading, so an
oversized upload is refused before more than the limit is held in memory and nothing is written.

``LocalFileStore`` (a folder) is the embedded default; ``S3FileStore`` takes any boto3-style client;
``file_store_for`` picks one from the settings.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from tre.core.keys import DecryptionError, KeyProvider

log = logging.getLogger(__name__)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 1024 * 1024


class FileStoreError(Exception):
    """Base for file store failures."""


class FileTooLarge(FileStoreError):
    """The content is larger than the store accepts; nothing was written."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"file is larger than the limit of {limit} bytes; nothing was stored")
        self.limit = limit


class StoredFileNotFound(FileStoreError, LookupError):
    """No object is stored under this hash."""


class FileIntegrityError(FileStoreError):
    """A stored object failed to decrypt or its content no longer matches its hash."""


class FileStore(Protocol):
    """What the domain packages may do with stored files; nothing here exposes keys or paths."""

    def put(self, data: bytes | BinaryIO) -> str:
        """Store content (bytes or a readable binary stream); return the sha256 hex of the plaintext."""
        ...

    def get(self, sha256: str) -> bytes:
        """The plaintext stored under ``sha256``, verified against it."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> bool:
        """Remove the object; True if there was one. Used when a project is closed."""
        ...


def check_sha256(sha256: str) -> str:
    """Refuse anything but 64 lowercase hex digits: the hash becomes a path or an object key."""
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise ValueError("a stored file is named by 64 lowercase hexadecimal digits (sha256)")
    return sha256


def read_limited(data: bytes | bytearray | memoryview | BinaryIO, max_bytes: int) -> tuple[bytes, str]:
    """Read all content, at most ``max_bytes``, hashing as we go; return ``(content, sha256 hex)``.

    A stream is read in chunks and abandoned as soon as it passes the limit, so an attacker cannot
    make us buffer more than ``max_bytes`` plus one chunk.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        content = bytes(data)
        if len(content) > max_bytes:
            raise FileTooLarge(max_bytes)
        return content, hashlib.sha256(content).hexdigest()
    if not hasattr(data, "read"):
        raise TypeError("put() takes bytes or a readable binary stream")
    digest = hashlib.sha256()
    buffer = io.BytesIO()
    total = 0
    while True:
        chunk = data.read(min(_CHUNK_BYTES, max_bytes - total + 1))
        if not chunk:
            break
        if not isinstance(chunk, bytes | bytearray):
            raise TypeError("put() needs a stream opened in binary mode")
        total += len(chunk)
        if total > max_bytes:
            raise FileTooLarge(max_bytes)
        digest.update(chunk)
        buffer.write(chunk)
    return buffer.getvalue(), digest.hexdigest()


class _EncryptedStore(ABC):
    """What both back ends share: hashing, limits, sealing and verification."""

    def __init__(self, keys: KeyProvider, max_bytes: int) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError("max_bytes must be a positive number of bytes")
        self._keys = keys
        self.max_bytes = max_bytes

    @staticmethod
    def _purpose(sha256: str) -> str:
        return f"filestore:{sha256}"

    @abstractmethod
    def _read_object(self, sha256: str) -> bytes: ...

    @abstractmethod
    def _write_object(self, sha256: str, envelope: bytes) -> None: ...

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def delete(self, sha256: str) -> bool: ...

    @abstractmethod
    def sealed_objects(self) -> Iterator[tuple[str, bytes]]:
        """Every stored object as (sha256, sealed bytes), for backups: never decrypted here."""

    def put_sealed(self, sha256: str, envelope: bytes) -> None:
        """Store an object sealed elsewhere (a restore); it is verified whenever it is read."""
        check_sha256(sha256)
        self._write_object(sha256, envelope)

    def put(self, data: bytes | BinaryIO) -> str:
        content, sha256 = read_limited(data, self.max_bytes)
        if self.exists(sha256):
            try:
                self.get(sha256)
            except StoredFileNotFound:
                pass  # deleted between the two calls; store it afresh
            except FileIntegrityError:
                # The copy we hold is damaged and we have the genuine content in hand: heal it.
                log.warning("stored file %s failed verification; replacing it with the new upload", sha256)
            else:
                log.debug("file %s already stored", sha256)
                return sha256
        self._write_object(sha256, self._keys.seal(content, self._purpose(sha256)))
        log.info("stored file %s (%d bytes)", sha256, len(content))
        return sha256

    def get(self, sha256: str) -> bytes:
        check_sha256(sha256)
        envelope = self._read_object(sha256)
        try:
            content = self._keys.unseal(envelope, self._purpose(sha256))
        except DecryptionError:
            log.error("stored file %s failed to decrypt: altered, swapped or truncated", sha256)
            raise FileIntegrityError(f"stored file {sha256} failed its integrity check") from None
        if hashlib.sha256(content).hexdigest() != sha256:
            log.error("stored file %s does not match its hash", sha256)
            raise FileIntegrityError(f"stored file {sha256} failed its integrity check")
        return content


class LocalFileStore(_EncryptedStore):
    """Objects in ``root/ab/cd/<sha256>``; the two-level fan-out keeps folders small."""

    def __init__(self, root: Path | str, keys: KeyProvider, max_bytes: int) -> None:
        super().__init__(keys, max_bytes)
        self.root = Path(root)

    def _path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def _read_object(self, sha256: str) -> bytes:
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError:
            raise StoredFileNotFound(f"no stored file {sha256}") from None

    def _write_object(self, sha256: str, envelope: bytes) -> None:
        """Write to a temporary file in the target folder, then rename: readers never see a part."""
        final = self._path(sha256)
        _make_folder_durably(final.parent)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(envelope)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)

    def delete(self, sha256: str) -> bool:
        path = self._path(sha256)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        log.info("deleted stored file %s", sha256)
        return True

    def sealed_objects(self) -> Iterator[tuple[str, bytes]]:
        if not self.root.exists():
            return
        for path in sorted(p for p in self.root.rglob("*") if p.is_file() and _SHA256_HEX.fullmatch(p.name)):
            yield path.name, path.read_bytes()

    def __repr__(self) -> str:
        return f"<LocalFileStore root={str(self.root)!r} max_bytes={self.max_bytes}>"


class S3FileStore(_EncryptedStore):
    """Objects in an S3-compatible bucket, through any client with boto3's four object methods.

    The client is passed in (``boto3.client("s3", ...)`` in production) so boto3 stays an optional
    dependency. S3 makes a single ``put_object`` visible whole or not at all, which gives the same
    atomicity as the local store's rename.
    """

    def __init__(self, client: Any, bucket: str, keys: KeyProvider, max_bytes: int, prefix: str = "") -> None:
        super().__init__(keys, max_bytes)
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _key(self, sha256: str) -> str:
        check_sha256(sha256)
        return f"{self.prefix}{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def exists(self, sha256: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(sha256))
        except Exception as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    def _read_object(self, sha256: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(sha256))
        except Exception as exc:
            if _is_not_found(exc):
                raise StoredFileNotFound(f"no stored file {sha256}") from None
            raise
        body = response["Body"]
        try:
            return body.read()
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def _write_object(self, sha256: str, envelope: bytes) -> None:
        self._client.put_object(
            Bucket=self.bucket,
            Key=self._key(sha256),
            Body=envelope,
            ContentType="application/octet-stream",
        )

    def delete(self, sha256: str) -> bool:
        key = self._key(sha256)
        if not self.exists(sha256):
            return False
        self._client.delete_object(Bucket=self.bucket, Key=key)
        log.info("deleted stored file %s", sha256)
        return True

    def sealed_objects(self) -> Iterator[tuple[str, bytes]]:
        token: str | None = None
        while True:
            page = self._client.list_objects_v2(
                Bucket=self.bucket, Prefix=self.prefix, **({"ContinuationToken": token} if token else {})
            )
            for item in page.get("Contents", []):
                sha256 = item["Key"].rsplit("/", 1)[-1]
                if _SHA256_HEX.fullmatch(sha256) and item["Key"] == self._key(sha256):
                    yield sha256, self._read_object(sha256)
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def __repr__(self) -> str:
        return f"<S3FileStore bucket={self.bucket!r} prefix={self.prefix!r} max_bytes={self.max_bytes}>"


def _is_not_found(exc: Exception) -> bool:
    """Recognise botocore's ``ClientError`` for a missing object without importing botocore."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


def _make_folder_durably(folder: Path) -> None:
    """Make ``folder`` and any missing parents, and sync each new folder's parent: a file synced into
    a folder whose own entry was never synced can vanish with that folder in a crash."""
    missing: list[Path] = []
    walk = folder
    while not walk.exists():
        missing.append(walk)
        walk = walk.parent
    if not missing:
        return
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for made in reversed(missing):
        _fsync_dir(made.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_store_for(settings: Any, keys: KeyProvider) -> LocalFileStore | S3FileStore:
    """The deployment's store: ``TRE_FILES_S3_BUCKET`` set means S3 (boto3 needed), else the folder."""
    if not settings.files_s3_bucket:
        return LocalFileStore(settings.instance_path / "files", keys, max_bytes=settings.max_upload_bytes)
    try:
        import boto3  # noqa: PLC0415 - optional: only deployments that keep files in S3 install it
    except ImportError:
        from tre.core.config import ConfigError

        raise ConfigError("TRE_FILES_S3_BUCKET is set but boto3 is not installed: pip install 'tre[s3]'") from None
    client = boto3.client(
        "s3", endpoint_url=settings.files_s3_endpoint_url or None, region_name=settings.files_s3_region or None
    )
    return S3FileStore(client, settings.files_s3_bucket, keys, settings.max_upload_bytes,
                       prefix=settings.files_s3_prefix)
