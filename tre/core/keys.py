"""The key provider: the one place that holds the master key, and envelope encryption built on it.

Everything secret at rest (stored files, JWT signing keys, per-project keys) is sealed through this
module, so the master key never leaves it. The master key is a *keyring* of numbered versions: new
writes use the current version and every envelope records the version that wrapped it, so rotating
the master key never requires re-encrypting data (``rewrap`` moves an envelope to the current
version by re-wrapping only its 32-byte data key, after which an old version can be retired).

Envelope layout (all integers big-endian)::

    b"TRE\\x01" | kind (1) | master version (4) | KEK nonce (12) | wrapped data key (48)
                | data nonce (12) | AES-256-GCM ciphertext with tag

The data key is fresh per message. The associated data of both AES-GCM operations names the
purpose, so an envelope sealed for one purpose (``filestore:<sha>``) cannot be opened as another
(``project-key:<id>``). Python cannot reliably wipe memory, so keys live as ``bytes`` for the
life of the process; what we can guarantee is that they never reach logs, reprs or pickles.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
import stat
import struct
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)

KEY_BYTES = 32
MASTER_KEY_FILENAME = "master.key"
DEFAULT_ENV_VARIABLE = "TRE_MASTER_KEY"
_FILE_FORMAT = "tre-master-keys/1"

_MAGIC = b"TRE\x01"
_KIND_SEALED = 1
_KIND_WRAPPED_KEY = 2
_HEADER = struct.Struct(">4sBI")
_NONCE_BYTES = 12
_TAG_BYTES = 16
_WRAPPED_DEK_BYTES = KEY_BYTES + _TAG_BYTES
_MIN_ENVELOPE = _HEADER.size + _NONCE_BYTES + _WRAPPED_DEK_BYTES + _NONCE_BYTES + _TAG_BYTES
_MAX_PURPOSE_BYTES = 1024
# Distinct HKDF "info" prefixes keep the key-encryption key and caller-derived keys apart, so no
# purpose string a caller chooses can ever yield the key that wraps data keys.
_KEK_INFO = b"tre/kek/v1"
_DERIVE_INFO = b"tre/derive/v1\x00"


class KeyProviderError(Exception):
    """Base for key provider failures. Messages name files and versions, never key material."""


class KeyFileError(KeyProviderError):
    """The master key file is missing, already exists, malformed or too widely readable."""


class DecryptionError(KeyProviderError):
    """An envelope could not be opened: tampered, truncated, wrong purpose or unknown key version."""


class _NoPickle:
    """Refuse pickling, so key holders can never be sent as Celery task arguments or cached to disk."""

    __slots__ = ()

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} holds key material and cannot be pickled")


class MasterKeyring(_NoPickle):
    """Numbered master key versions, one of them current. Immutable; rotation builds a new one."""

    __slots__ = ("_keys", "_current")

    def __init__(self, keys: Mapping[int, bytes], current: int) -> None:
        if not keys:
            raise KeyProviderError("a master keyring needs at least one key")
        for version, key in keys.items():
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise KeyProviderError(f"master key versions are positive integers, got {version!r}")
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise KeyProviderError(f"master key version {version} is not {KEY_BYTES} bytes")
        if current not in keys:
            raise KeyProviderError(f"current master key version {current} is not in the keyring")
        self._keys = dict(keys)
        self._current = current

    @classmethod
    def generate(cls) -> MasterKeyring:
        """A keyring with one fresh random key: for initialisation and for tests."""
        return cls({1: secrets.token_bytes(KEY_BYTES)}, current=1)

    @property
    def current(self) -> int:
        return self._current

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._keys))

    def key(self, version: int) -> bytes:
        try:
            return self._keys[version]
        except KeyError:
            raise KeyProviderError(f"master key version {version} is not held") from None

    def with_new_version(self) -> MasterKeyring:
        """A copy with one more random key, which becomes current."""
        version = max(self._keys) + 1
        return MasterKeyring({**self._keys, version: secrets.token_bytes(KEY_BYTES)}, current=version)

    def without_version(self, version: int) -> MasterKeyring:
        """A copy with ``version`` removed; the current version cannot be retired."""
        if version == self._current:
            raise KeyProviderError("the current master key version cannot be retired; rotate first")
        if version not in self._keys:
            raise KeyProviderError(f"master key version {version} is not held")
        return MasterKeyring({v: k for v, k in self._keys.items() if v != version}, self._current)

    def __repr__(self) -> str:
        return f"<MasterKeyring versions={list(self.versions)} current={self._current}>"

    __str__ = __repr__


def _hkdf(master: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


def _purpose_bytes(purpose: str) -> bytes:
    if not isinstance(purpose, str) or not purpose:
        raise ValueError("a purpose must be a non-empty string naming what the key is for")
    encoded = purpose.encode("utf-8")
    if len(encoded) > _MAX_PURPOSE_BYTES:
        raise ValueError(f"a purpose must be at most {_MAX_PURPOSE_BYTES} bytes")
    return encoded


class KeyProvider(_NoPickle, ABC):
    """Holds the master keyring and offers the only operations anything else may do with it.

    Subclasses supply :meth:`_load`. The keyring is always held in this process's memory, since
    :meth:`derive_key` and the envelopes need it; ``tre.core.keyservices`` keeps it at rest only
    wrapped by a KMS or HSM key that never leaves that service.
    """

    def __init__(self) -> None:
        self._ring: MasterKeyring | None = None
        self._lock = threading.Lock()

    @abstractmethod
    def _load(self) -> MasterKeyring:
        """Read the keyring from wherever this provider keeps it."""

    def _keyring(self) -> MasterKeyring:
        ring = self._ring
        if ring is None:
            with self._lock:
                if self._ring is None:
                    self._ring = self._load()
                ring = self._ring
        return ring

    def reload(self) -> None:
        """Forget the cached keyring, so a rotation made by another process is picked up."""
        with self._lock:
            self._ring = None

    @property
    def current_version(self) -> int:
        """Record this beside anything protected by :meth:`derive_key` that must survive rotation."""
        return self._keyring().current

    @property
    def versions(self) -> tuple[int, ...]:
        return self._keyring().versions

    def _master(self, version: int) -> bytes:
        ring = self._keyring()
        if version not in ring.versions:
            # Another process may have rotated since we loaded; look once more before refusing.
            self.reload()
            ring = self._keyring()
        if version not in ring.versions:
            raise DecryptionError(f"master key version {version} is not held by this provider")
        return ring.key(version)

    # -- envelope encryption -------------------------------------------------------------------

    def seal(self, plaintext: bytes, purpose: str) -> bytes:
        """Encrypt ``plaintext`` under a fresh data key wrapped by the current master key."""
        return self._seal(bytes(plaintext), purpose, _KIND_SEALED)

    def unseal(self, envelope: bytes, purpose: str) -> bytes:
        """Open an envelope made by :meth:`seal` for exactly this ``purpose``."""
        return self._unseal(envelope, purpose, _KIND_SEALED)

    def wrap_key(self, key: bytes, purpose: str) -> bytes:
        """Wrap a random key (e.g. a project's) for storage; destroying the blob crypto-shreds it.

        Wrapped keys carry their own envelope kind, so ``seal`` output can never be unwrapped as a
        key nor a wrapped key unsealed as data, whatever purposes a caller picks.
        """
        if len(key) < 16:
            raise ValueError("refusing to wrap a key shorter than 128 bits")
        return self._seal(bytes(key), purpose, _KIND_WRAPPED_KEY)

    def unwrap_key(self, wrapped: bytes, purpose: str) -> bytes:
        return self._unseal(wrapped, purpose, _KIND_WRAPPED_KEY)

    def new_wrapped_key(self, purpose: str, length: int = KEY_BYTES) -> tuple[bytes, bytes]:
        """A fresh random key and its wrapped form: ``(key, wrapped)``; store only ``wrapped``."""
        key = secrets.token_bytes(length)
        return key, self.wrap_key(key, purpose)

    def rewrap(self, envelope: bytes, purpose: str) -> bytes:
        """Re-wrap an envelope's data key under the current master version; the data is untouched."""
        kind, version, kek_nonce, wrapped_dek, rest = self._parse(envelope)
        current = self.current_version
        if version == current:
            return bytes(envelope)
        dek = self._unwrap_dek(kind, version, kek_nonce, wrapped_dek, purpose)
        return self._wrap_dek(kind, current, dek, purpose) + rest

    def derive_key(self, purpose: str, length: int = KEY_BYTES, *, version: int | None = None) -> bytes:
        """A key derived from a master version by HKDF-SHA256 with the purpose as info.

        Derived keys are deterministic, so they change when the master key rotates: callers that
        must recompute one later (the audit chain's HMAC key) store :attr:`current_version` and
        pass it back. Keys that must be destroyable on their own (project keys) should instead be
        random and wrapped with :meth:`wrap_key`, since a derived key can be recomputed forever.
        """
        if not 16 <= length <= 64:
            raise ValueError("derived keys are between 16 and 64 bytes")
        master = self._master(self.current_version if version is None else version)
        return _hkdf(master, _DERIVE_INFO + _purpose_bytes(purpose), length)

    def _kek(self, version: int) -> AESGCM:
        return AESGCM(_hkdf(self._master(version), _KEK_INFO, KEY_BYTES))

    @staticmethod
    def _dek_aad(kind: int, version: int, purpose: str) -> bytes:
        return b"tre/dek\x00" + _HEADER.pack(_MAGIC, kind, version) + _purpose_bytes(purpose)

    @staticmethod
    def _data_aad(kind: int, purpose: str) -> bytes:
        # Deliberately excludes the master version, so rewrap() need not touch the ciphertext.
        return b"tre/data\x00" + _MAGIC + bytes([kind]) + _purpose_bytes(purpose)

    def _wrap_dek(self, kind: int, version: int, dek: bytes, purpose: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        wrapped = self._kek(version).encrypt(nonce, dek, self._dek_aad(kind, version, purpose))
        return _HEADER.pack(_MAGIC, kind, version) + nonce + wrapped

    def _unwrap_dek(self, kind: int, version: int, nonce: bytes, wrapped: bytes, purpose: str) -> bytes:
        try:
            return self._kek(version).decrypt(nonce, wrapped, self._dek_aad(kind, version, purpose))
        except InvalidTag:
            raise DecryptionError("envelope refused: wrong purpose, or the envelope was altered") from None

    def _seal(self, plaintext: bytes, purpose: str, kind: int) -> bytes:
        _purpose_bytes(purpose)
        dek = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        ciphertext = AESGCM(dek).encrypt(nonce, plaintext, self._data_aad(kind, purpose))
        return self._wrap_dek(kind, self.current_version, dek, purpose) + nonce + ciphertext

    @staticmethod
    def _parse(envelope: bytes) -> tuple[int, int, bytes, bytes, bytes]:
        if not isinstance(envelope, bytes | bytearray | memoryview) or len(envelope) < _MIN_ENVELOPE:
            raise DecryptionError("not an envelope: too short")
        data = bytes(envelope)
        magic, kind, version = _HEADER.unpack_from(data)
        if magic != _MAGIC or kind not in (_KIND_SEALED, _KIND_WRAPPED_KEY):
            raise DecryptionError("not an envelope: unknown format")
        at = _HEADER.size
        kek_nonce = data[at : at + _NONCE_BYTES]
        at += _NONCE_BYTES
        wrapped_dek = data[at : at + _WRAPPED_DEK_BYTES]
        at += _WRAPPED_DEK_BYTES
        return kind, version, kek_nonce, wrapped_dek, data[at:]

    def _unseal(self, envelope: bytes, purpose: str, expected_kind: int) -> bytes:
        kind, version, kek_nonce, wrapped_dek, rest = self._parse(envelope)
        if kind != expected_kind:
            raise DecryptionError("envelope refused: sealed data and wrapped keys are not interchangeable")
        dek = self._unwrap_dek(kind, version, kek_nonce, wrapped_dek, purpose)
        try:
            return AESGCM(dek).decrypt(
                rest[:_NONCE_BYTES], rest[_NONCE_BYTES:], self._data_aad(kind, purpose)
            )
        except InvalidTag:
            raise DecryptionError("envelope refused: wrong purpose, or the envelope was altered") from None

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    __str__ = __repr__


class InMemoryKeyProvider(KeyProvider):
    """A provider over a keyring held only in memory: for tests and throwaway tools."""

    def __init__(self, keyring: MasterKeyring | None = None) -> None:
        super().__init__()
        self._initial = keyring or MasterKeyring.generate()

    def _load(self) -> MasterKeyring:
        return self._initial

    def rotate(self) -> int:
        self._initial = self._initial.with_new_version()
        self.reload()
        return self._initial.current

    def retire(self, version: int) -> None:
        self._initial = self._initial.without_version(version)
        self.reload()


class FileKeyProvider(KeyProvider):
    """The embedded setup's provider: a JSON keyring in a file only its owner may read (mode 0600)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__()
        self.path = Path(path)

    @classmethod
    def in_instance(cls, instance_path: Path | str) -> FileKeyProvider:
        return cls(Path(instance_path) / MASTER_KEY_FILENAME)

    def initialise(self) -> None:
        """Create the key file with one random key; refuses to overwrite, since that loses data."""
        create_private_file(self.path, serialise_keyring(MasterKeyring.generate()))
        self.reload()
        log.info("created master key file %s", self.path)

    def _load(self) -> MasterKeyring:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise KeyFileError(f"no master key file at {self.path}; initialise the instance first") from None
        try:
            # fstat the open descriptor, so the file we check is the file we read.
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(f"{self.path} is not a regular file")
            if info.st_mode & 0o077:
                raise KeyFileError(
                    f"{self.path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others may access "
                    "it; refusing to use it (run: chmod 600)"
                )
            with os.fdopen(fd, "rb", closefd=False) as handle:
                raw = handle.read()
        finally:
            os.close(fd)
        return deserialise_keyring(raw, str(self.path))

    def _write(self, ring: MasterKeyring) -> None:
        """Replace the file atomically, so a crash leaves either the old keyring or the new one."""
        replace_private_file(self.path, serialise_keyring(ring))
        self.reload()

    def rotate(self) -> int:
        """Add a new master key version and make it current; older versions still decrypt."""
        self.reload()
        ring = self._keyring().with_new_version()
        self._write(ring)
        log.info("rotated master key in %s to version %d", self.path, ring.current)
        return ring.current

    def retire(self, version: int) -> None:
        """Remove an old version: only after every envelope using it has been ``rewrap``-ped."""
        self.reload()
        self._write(self._keyring().without_version(version))
        log.info("retired master key version %d from %s", version, self.path)

    def __repr__(self) -> str:
        return f"<FileKeyProvider path={str(self.path)!r}>"

    __str__ = __repr__


class EnvKeyProvider(KeyProvider):
    """Production provider fed by an orchestrator's secret, in ``TRE_MASTER_KEY`` by default.

    The value is base64 of 32 bytes (version 1), or ``<version>:<base64>`` entries separated by
    commas, in which case the highest version is current. This is the one place outside the
    settings module that reads the environment: a key must never sit in the printable ``Settings``.
    """

    def __init__(
        self, variable: str = DEFAULT_ENV_VARIABLE, environ: Mapping[str, str] | None = None
    ) -> None:
        super().__init__()
        self.variable = variable
        self._environ = environ

    @staticmethod
    def generate_value() -> str:
        """A fresh value for the variable, for an operator to put in their secret store."""
        return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")

    def _load(self) -> MasterKeyring:
        environ = os.environ if self._environ is None else self._environ
        raw = environ.get(self.variable, "").strip()
        if not raw:
            raise KeyProviderError(f"environment variable {self.variable} is not set")
        keys: dict[int, bytes] = {}
        for number, entry in enumerate(raw.split(","), start=1):
            entry = entry.strip()
            version_text, sep, encoded = entry.partition(":")
            if not sep:
                version_text, encoded = "1", entry
            try:
                version = int(version_text)
                key = base64.b64decode(encoded, validate=True)
            except (ValueError, binascii.Error):
                # Never echo the value: it is (or is close to) a key.
                raise KeyProviderError(
                    f"{self.variable}: entry {number} is not <version>:<base64 of 32 bytes>"
                ) from None
            if version in keys:
                raise KeyProviderError(f"{self.variable}: version {version} appears twice")
            keys[version] = key
        return MasterKeyring(keys, current=max(keys))

    def __repr__(self) -> str:
        return f"<EnvKeyProvider variable={self.variable!r}>"

    __str__ = __repr__


def default_key_provider(instance_path: Path | str, environ: Mapping[str, str] | None = None) -> KeyProvider:
    """The environment's key if ``TRE_MASTER_KEY`` is set, otherwise the instance folder's key file."""
    environ = os.environ if environ is None else environ
    if environ.get(DEFAULT_ENV_VARIABLE):
        return EnvKeyProvider(DEFAULT_ENV_VARIABLE, environ)
    return FileKeyProvider.in_instance(instance_path)


def create_private_file(path: Path, data: bytes) -> None:
    """Write a new owner-only (0600) file durably; refuses to overwrite, since that could lose keys."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"{path} already exists; refusing to overwrite a master key "
            "(everything sealed with it would become unreadable)"
        ) from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    _fsync_dir(path.parent)


def replace_private_file(path: Path, data: bytes) -> None:
    """Replace an owner-only file atomically, so a crash leaves either the old content or the new."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".master-key-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb", closefd=False) as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def serialise_keyring(ring: MasterKeyring) -> bytes:
    """The keyring as ``tre-master-keys/1`` JSON: key material in clear, for a protected place only."""
    document: dict[str, Any] = {
        "format": _FILE_FORMAT,
        "current": ring.current,
        "keys": {str(v): base64.b64encode(ring.key(v)).decode("ascii") for v in ring.versions},
    }
    return json.dumps(document, indent=2).encode("utf-8") + b"\n"


def deserialise_keyring(raw: bytes, where: str) -> MasterKeyring:
    """Read ``tre-master-keys/1`` JSON; errors name ``where``, never the content."""
    try:
        document = json.loads(raw)
        if document.get("format") != _FILE_FORMAT:
            raise ValueError("format")
        keys = {int(v): base64.b64decode(k, validate=True) for v, k in document["keys"].items()}
        current = int(document["current"])
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        raise KeyFileError(f"{where} is not a {_FILE_FORMAT} key file") from None
    try:
        return MasterKeyring(keys, current)
    except KeyProviderError as exc:
        raise KeyFileError(f"{where}: {exc}") from None


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: the directory entry must reach the disk as well as the file."""
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
