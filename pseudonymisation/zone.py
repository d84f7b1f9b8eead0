"""Copies in the identifiable zone, sealed at rest: the edge between the key provider and the readers.

A delivery's copy (and so every dataset version) is written sealed (``pseudonymisation.sealed``)
under a data key of its own, wrapped by the key provider for that file alone. Readers are handed a
``SourceFile`` whose opener unwraps the key and decrypts as they read; a file that is not sealed
(a source registered where it already lay, the demo's data) is read as it is. The plaintext never
touches the disk on the way in or out, and destroying a file's header destroys its key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from pseudonymisation import sealed
from pseudonymisation.landing import LandingError
from pseudonymisation.sources import OnePassSource, Opener, SourceFile
from tre.core.keys import DecryptionError, KeyProvider

T = TypeVar("T")


def opener(keys: KeyProvider) -> Opener:
    """Open a file of the zone: through its seal if it has one, as it is otherwise."""

    def unwrap(file_id: bytes, wrapped: bytes) -> bytes:
        try:
            return keys.unwrap_key(wrapped, sealed.file_id_purpose(file_id))
        except DecryptionError:
            raise sealed.SealedFileError("the sealed file's key cannot be opened by this service") from None

    def open_(path: Path) -> BinaryIO:
        if sealed.is_sealed(path):
            return sealed.open_sealed(path, unwrap)
        return open(path, "rb")  # noqa: SIM115 - the caller closes it

    return open_


def rewrap(path: Path | str, keys: KeyProvider) -> bool:
    """Move a sealed file's key to the current master version (before an old version is retired);
    the data is not touched. True if the file's header changed."""
    return sealed.rewrap_header(path, lambda file_id, wrapped: keys.rewrap(wrapped, sealed.file_id_purpose(file_id)))


def plaintext_sha256(source: SourceFile) -> tuple[str, int]:
    """The sha256 and size of a file's plaintext, read through its seal."""
    digest, size = hashlib.sha256(), 0
    with source.open() as handle:
        while block := handle.read(1 << 22):
            size += len(block)
            digest.update(block)
    return digest.hexdigest(), size


def source(path: Path | str, keys: KeyProvider) -> SourceFile:
    return SourceFile(Path(path), opener(keys))


def seal_into_zone(source: int | BinaryIO, target: Path, keys: KeyProvider, *, max_bytes: int) -> tuple[str, int]:
    """Seal an opened delivery (a file descriptor in the landing folder, or a stream from the landing
    bucket) into the zone, closing it; returns the sha256 and size of its plaintext. Refuses (and
    leaves nothing) past ``max_bytes``."""
    sha, size, _ = seal_into_zone_reading(source, target, keys, max_bytes=max_bytes, read=None)
    return sha, size


def seal_into_zone_reading(source: int | BinaryIO, target: Path, keys: KeyProvider, *, max_bytes: int,
                           read: Callable[[SourceFile], T] | None) -> tuple[str, int, T | None]:
    """``seal_into_zone``, while ``read`` reads the same plaintext in the same pass (a CSV delivery's
    checks: one read of the landing file instead of sealing it and decrypting it again). ``read`` is
    handed a ``OnePassSource`` named as the target; the checks see exactly the bytes sealed and
    hashed. Returns the sha256 and size of the plaintext and what ``read`` returned; if ``read``
    raises, nothing is left in the zone."""
    file_id = sealed.new_file_id()
    key, wrapped = keys.new_wrapped_key(sealed.file_id_purpose(file_id))

    def through(open_: Callable[[], BinaryIO], read_rest: Callable[[], int]) -> T | None:
        return None if read is None else read(OnePassSource(target, lambda _path: open_(), read_rest))

    with (open(source, "rb") if isinstance(source, int) else source) as source_handle:
        return sealed.seal_while_reading(
            source_handle, target, key=key, file_id=file_id, wrapped_key=wrapped, max_bytes=max_bytes,
            too_large=lambda limit: LandingError(f"The delivery is larger than the limit of {limit:,} bytes"),
            read=through if read is not None else None,
        )


__all__ = ["opener", "plaintext_sha256", "rewrap", "seal_into_zone", "seal_into_zone_reading", "source"]
