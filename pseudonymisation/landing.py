"""Deliveries named in the landing folder, and their copies in the identifiable zone.

A custodian names a file by its path inside the configured landing folder (``TRE_LANDING_DIR``).
A name that is absolute, climbs with ``..``, passes through a symbolic link at any step, or is not
a regular file is refused: the service account can read more than the landing folder, and a name
must never let a custodian make it read (and so copy into a version) a file of someone else's.

The accepted copy is made by reading the opened file, never by path again, so a file swapped for a
link after the check is not followed (``pseudonymisation.zone.seal_into_zone`` seals it into the zone).
Pure: no Flask, no SQLAlchemy.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")
_BLOCK = 1 << 22
NOT_CONFIGURED = ("No landing folder is configured (TRE_LANDING_DIR): an administrator sets it to the folder "
                  "custodians deliver into")
# The folders of the landing folder a page offers at most (a page lists them; it is not a file browser).
MAX_FOLDERS = 50


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
        raise LandingError(NOT_CONFIGURED)
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
        raise LandingError(NOT_CONFIGURED)
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


def top_folders(root: Path | None) -> list[str]:
    """The folders directly inside the landing folder (links are left out), at most ``MAX_FOLDERS``
    of them by name; none when no landing folder is configured or it cannot be opened."""
    if root is None:
        return []
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    try:
        found = []
        for entry in sorted(os.listdir(fd)):
            try:
                if stat.S_ISDIR(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                    found.append(entry)
            except OSError:
                continue
            if len(found) == MAX_FOLDERS:
                break
        return found
    finally:
        os.close(fd)


__all__ = ["MAX_FOLDERS", "NOT_CONFIGURED", "SUFFIXES", "LandingError", "check_name", "list_folder",
           "open_in_landing", "top_folders"]
