"""Deliveries named in the landing folder, and their copies in the identifiable zone.

A custodian names a file by its path inside the configured landing folder (``TRE_LANDING_DIR``).
A name that is absolute, climbs with ``..``, passes through a symbolic link at any step, or is not
a regular file is refused: the service account can read more than the landing folder, and a name
must never let a custodian make it read (and so copy into a version) a file of someone else's.

The accepted copy is made by reading the opened file, never by path again, so a file swapped for a
link after the check is not followed. Pure: no Flask, no SQLAlchemy.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path, PurePosixPath

SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
_BLOCK = 1 << 22


class LandingError(ValueError):
    """The name cannot be taken from the landing folder; the message is safe to show."""


def check_name(name: str) -> PurePosixPath:
    """The name as a relative path of plain parts, or refuse it."""
    text = (name or "").strip()
    if not text or len(text) > 500 or "\x00" in text or "\\" in text:
        raise LandingError("Name a file in the landing folder, such as 2026-12/registry.csv")
    path = PurePosixPath(text)
    # Checked on the text as written: PurePosixPath would quietly fold "a/./b" and "a//b".
    if text.startswith("/") or any(part in ("..", ".", "") for part in text.split("/")):
        raise LandingError("Name the file by its path inside the landing folder (no leading /, no ..)")
    if path.suffix.lower() not in SUFFIXES:
        raise LandingError("A delivery must be a .csv, .tsv, .txt or .parquet file")
    return path


def open_in_landing(root: Path | None, name: str) -> tuple[int, PurePosixPath]:
    """Open the named file inside ``root`` for reading, following no link; returns (fd, name)."""
    if root is None:
        raise LandingError("No landing folder is configured (TRE_LANDING_DIR)")
    path = check_name(name)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        raise LandingError("The landing folder cannot be opened") from None
    try:
        for part in path.parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                raise LandingError(f"No folder {part} in the landing folder (links are not followed)") from None
            os.close(fd)
            fd = nxt
        try:
            file_fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=fd)
        except OSError:
            raise LandingError("No such file in the landing folder (links are not followed)") from None
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise LandingError("The name is not a regular file")
    return file_fd, path


def list_folder(root: Path | None, name: str) -> list[str]:
    """The regular files directly inside a folder of the landing folder (links are left out)."""
    if root is None:
        raise LandingError("No landing folder is configured (TRE_LANDING_DIR)")
    text = (name or "").strip().strip("/")
    if not text or "\x00" in text or "\\" in text or any(p in ("..", ".", "") for p in text.split("/")):
        raise LandingError("Name the folder by its path inside the landing folder (no leading /, no ..)")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in text.split("/"):
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                raise LandingError(f"No folder {part} in the landing folder (links are not followed)") from None
            os.close(fd)
            fd = nxt
        return sorted(entry for entry in os.listdir(fd)
                      if stat.S_ISREG(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode))
    finally:
        os.close(fd)


def file_sha256(path: Path) -> tuple[str, int]:
    """A file's sha256 and size, read in blocks without following a link."""
    digest, size = hashlib.sha256(), 0
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
        while block := handle.read(_BLOCK):
            size += len(block)
            digest.update(block)
    return digest.hexdigest(), size


def copy_into_zone(fd: int, target: Path, *, max_bytes: int) -> tuple[str, int]:
    """Copy an opened delivery to ``target`` (written aside, then renamed; mode 0600); returns its
    sha256 and size. Refuses (and leaves nothing) past ``max_bytes``."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    digest, size = hashlib.sha256(), 0
    try:
        out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "rb") as source, open(out_fd, "wb") as out:
            while block := source.read(_BLOCK):
                size += len(block)
                if size > max_bytes:
                    raise LandingError(f"The delivery is larger than the limit of {max_bytes:,} bytes")
                digest.update(block)
                out.write(block)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


__all__ = ["SUFFIXES", "LandingError", "check_name", "copy_into_zone", "file_sha256", "list_folder", "open_in_landing"]
