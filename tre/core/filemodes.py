"""Who may read what the service writes (docs/adr/0006-private-files.md).

Everything the service writes is private to the account it runs as: every process it starts works
under umask 077, and the instance folder is 0700. The one exception is an extract, which its
project's members must read: it belongs to the project's unix group, folders 0750 and files 0640,
when the service runs as root and that group exists; otherwise it stays 0700/0600, service only.
"""

from __future__ import annotations

import grp
import hashlib
import logging
import os
import pwd
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

SERVICE_UMASK = 0o077
# Any permission at all for the group or others.
GROUP_OR_OTHERS = 0o077


def restrict_umask() -> int:
    """Make every file and folder this process (and each child it starts) creates private to its
    account; return the mask it replaced. Called first thing by the ``tre`` command (so also by
    everything ``tre run`` starts: gunicorn, the worker, JupyterHub) and by the ``tre.wsgi`` and
    ``tre.worker`` entry points that a process manager may start on their own."""
    return os.umask(SERVICE_UMASK)


def ensure_private_folder(path: Path, what: str = "folder") -> Path:
    """Create ``path`` with mode 0700, or take an existing one back to 0700 with a warning. Bits for
    the service's own private group (``private_group``) are left alone; a folder this account does
    not own and cannot change is logged as an error and left for ``tre doctor`` to report."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not open_to_others(path, own_group=private_group(), only_top=True):
        return path
    mode = stat.S_IMODE(path.stat().st_mode)
    try:
        path.chmod(0o700)
    except PermissionError:
        log.error("the %s %s has mode %o, open to other accounts, and this account cannot change it: "
                  "chmod 700 it", what, path, mode)
        return path
    log.warning("the %s %s had mode %o, open to other accounts; made it 700", what, path, mode)
    return path


def project_group_name(project_id: str) -> str:
    """The unix group whose members may read the project's extract. The one definition: the hub
    receives it in the access gate's answer (``unix_group``) and makes the workspace account a member."""
    slug = re.sub(r"[^a-z0-9-]", "-", project_id.lower()).strip("-") or "p"
    name = f"tre-p-{slug}"
    if len(name) > 32:  # the longest group name shadow-utils accepts
        name = f"tre-p-{slug[:15]}-{hashlib.sha256(project_id.encode()).hexdigest()[:10]}"
    return name


def project_gid(project_id: str) -> int | None:
    """The gid of the project's group if it exists and this process may give files to it (root)."""
    if os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam(project_group_name(project_id)).gr_gid
    except KeyError:
        return None


def share_read_only_with_group(top: Path, project_id: str) -> str | None:
    """Give the tree at ``top`` to the project's group, read-only (folders 0750, files 0640, owner
    kept), nobody else anything; return the group's name. The hub creates the group (with the first
    workspace account of the project); until it exists, or where the service is not root, the tree is
    made 0700/0600, the service's alone, and None is returned."""
    gid = project_gid(project_id)
    if gid is None:
        _chmod_tree(top, folders=0o700, files=0o600, gid=None)
        return None
    _chmod_tree(top, folders=0o750, files=0o640, gid=gid)
    return project_group_name(project_id)


def _chmod_tree(top: Path, *, folders: int, files: int, gid: int | None) -> None:
    for path in _walk(top):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue  # never follow a link out of the tree
        if gid is not None:
            os.chown(path, info.st_uid, gid, follow_symlinks=False)
        path.chmod(folders if stat.S_ISDIR(info.st_mode) else files)


def _walk(top: Path) -> Iterator[Path]:
    yield top
    for root, dirs, names in os.walk(top):
        for name in (*dirs, *names):
            yield Path(root) / name


def private_group() -> int | None:
    """The service's primary group when no other account belongs to it (as on Kubernetes, where the
    pods' ``fsGroup`` is the service's own group and the kubelet may give it the volume's files): its
    permission bits then grant nobody else anything. None when another account is in it."""
    gid, uid = os.getgid(), os.getuid()
    try:
        if grp.getgrgid(gid).gr_mem:
            return None
    except KeyError:
        pass  # a group with no entry names no members
    if any(entry.pw_gid == gid and entry.pw_uid != uid for entry in pwd.getpwall()):
        return None
    return gid


def open_to_others(
    top: Path, skip: Iterable[Path] = (), bits: int = GROUP_OR_OTHERS, own_group: int | None = None,
    *, only_top: bool = False,
) -> list[tuple[Path, int]]:
    """Every file or folder at or under ``top`` (not below a ``skip`` folder) whose mode has any of
    ``bits`` (by default: the group or other accounts may read, write or enter it), with its mode.
    Group bits do not count on a path whose group is ``own_group`` (see ``private_group``). Links are
    not followed; ``only_top`` looks at ``top`` alone."""
    skipped = {Path(p) for p in skip}
    found: list[tuple[Path, int]] = []

    def check(path: Path, info: os.stat_result) -> None:
        mode = stat.S_IMODE(info.st_mode)
        counted = bits & ~0o070 if own_group is not None and info.st_gid == own_group else bits
        if mode & counted:
            found.append((path, mode))

    if not top.exists():
        return found
    if only_top or not top.is_dir():
        check(top, top.lstat())
        return found
    for root, dirs, names in os.walk(top):
        here = Path(root)
        dirs[:] = [d for d in dirs if here / d not in skipped]
        for path in (here, *(here / n for n in names)):
            info = path.lstat()
            if not stat.S_ISLNK(info.st_mode):
                check(path, info)
    return found
