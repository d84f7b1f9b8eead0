"""A wake-up signal between processes on one machine: a folder of unix datagram sockets.

A process that waits for work binds its own socket in the folder (``Listener``) and waits on it
with a timeout; a process that has just made work visible sends one datagram to every socket in
the folder (``poke``). The datagram carries nothing: it only says "look again". Whatever it wakes
must still find the work where it is kept (for the embedded broker, its database), so a lost,
late or spurious poke changes when a waiter looks, never what it finds (ADR 0017).

The folder is made 0700: only the service's own account can poke or listen. Unix socket paths
are limited to about 100 bytes; a longer folder is reached through ``/proc/self/fd`` (Linux),
and where neither works the listener is simply not made and its caller polls as before.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import select
import socket
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".sock"
_MAX_PATH = 100  # sockaddr_un holds 108 bytes on Linux, 104 on macOS: keep below both
_DATAGRAM = b"\x01"


class _Folder:
    """The folder, opened, and the address of a socket name inside it, however long its path is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)

    def address(self, name: str) -> str:
        full = os.path.join(self.path, name)
        if len(os.fsencode(full)) <= _MAX_PATH:
            return full
        return f"/proc/self/fd/{self.fd}/{name}"

    def close(self) -> None:
        os.close(self.fd)


class Listener:
    """One waiting process's socket in the folder. ``wait`` returns early when poked."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._folder = _Folder(folder)
        self.name = f"{os.getpid()}-{secrets.token_hex(6)}{SUFFIX}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.bind(self._folder.address(self.name))
            os.chmod(self.name, 0o600, dir_fd=self._folder.fd)  # whatever the umask
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            self._folder.close()
            raise
        self._closed = False

    def wait(self, timeout: float) -> bool:
        """Block until poked or ``timeout`` seconds pass; True when poked. Pokes that arrived
        since the last wait count (they wait in the socket's buffer), all as one."""
        if self._closed:
            return False
        ready, _, _ = select.select([self._sock], [], [], max(timeout, 0.0))
        if not ready:
            return False
        while True:
            try:
                self._sock.recv(16)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return True

    def nudge(self) -> None:
        """Wake this listener from another thread of the same process."""
        if not self._closed:
            _send(self._folder, self.name)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name, dir_fd=self._folder.fd)
        self._folder.close()


def _send(folder: _Folder, name: str) -> bool:
    """One datagram to ``name``; False when nobody listens there any more."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        try:
            sender.sendto(_DATAGRAM, folder.address(name))
        except (BlockingIOError, InterruptedError):
            return True  # its buffer is full of pokes: it will look anyway
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:
            if exc.errno == errno.ENOTSOCK:
                return True  # not ours to judge or remove
            log.debug("wake-up to %s not sent: %s", name, type(exc).__name__)
            return True
    return True


def poke(folder: Path) -> int:
    """Wake every listener in ``folder``; remove the sockets of listeners that died. Never raises:
    a missing folder (nobody has listened yet) or any failure only means waiters poll a little longer.
    Returns how many listeners were sent a datagram."""
    try:
        opened = _Folder(folder)
    except OSError:
        return 0
    sent = 0
    try:
        for name in os.listdir(opened.fd):
            if not name.endswith(SUFFIX):
                continue
            if _send(opened, name):
                sent += 1
            else:
                # A listener that exited without closing (killed): its socket file remains.
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=opened.fd)
    except OSError as exc:
        log.debug("wake-up folder %s not read: %s", folder, type(exc).__name__)
    finally:
        opened.close()
    return sent
