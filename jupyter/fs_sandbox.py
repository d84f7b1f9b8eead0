"""The file-system and process sandbox every local workspace runs in (bubblewrap; ADR 0005).

The spawner joins the workspace's network namespace and drops to its unix account, then executes
``bwrap``, which (unprivileged, in a user namespace of its own) builds a fresh mount namespace and PID
namespace and runs the single-user server inside. Everything the server starts (kernels, terminals)
inherits both. Inside, the root is an empty tmpfs holding only:

* the system's ``/usr`` (and the merged-usr links ``/bin``, ``/lib``...), read-only, less the programs
  of ``HIDDEN_PROGRAMS`` (node);
* the workspace runtime, read-only;
* a handful of ``/etc`` files the runtime reads (libraries, time zone, terminal settings), read-only,
  and a ``passwd``/``group``/``hosts`` written for this workspace alone (no other account is named);
* the account's own home and outputs folder, read-write, and its project's extract, read-only, each
  at the same path as on the host so links and ``TRE_*_DIR`` variables still point at them;
* a private ``/tmp`` and ``/dev/shm`` (tmpfs), a minimal ``/dev`` and a ``/proc`` of its own PID
  namespace, so no other process (the hub, another workspace) can be seen, signalled or read.

Nothing else exists inside: not the instance folder, other extracts or homes, ``/root``, ``/var``.
This module only builds the command line and the generated files; it runs nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Top-level links of a merged-/usr system (Debian 12): recreated as links, never bound.
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

# What the runtime reads from /etc. None holds a secret or names another account.
ETC_ALLOWED = (
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "ca-certificates.conf",
    "fonts",
    "host.conf",
    "inputrc",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "profile",
    "R",  # R_HOME/etc links here (Debian): R's own site settings, no secret
    "ssl/certs",
    "terminfo",
    "timezone",
)

HOSTNAME = "tre-workspace"

# Programs of the host's /usr a workspace never sees (an empty device is bound over each, so it is not
# executable). No JavaScript runtime: JupyterLab's extensions are prebuilt, there is no network to fetch
# packages, and JupyterLab asks node for its package registry at every start (1-2 s of each open here).
HIDDEN_PROGRAMS = ("bin/node", "bin/nodejs", "local/bin/node", "local/bin/nodejs")


@dataclass(frozen=True)
class SandboxLayout:
    """What one workspace may see. Paths are the host's; inside they appear at the same place."""

    runtime: str
    home: str
    account: str
    uid: int
    gid: int
    extract: str
    outputs: str
    project_group: str = ""
    project_gid: int | None = None
    extra_read_only: tuple[str, ...] = field(default_factory=tuple)
    # Where bwrap (running as the account) finds the extract and outputs: the spawner bind-mounts them
    # there, as root, in the workspace's own mount namespace, because the instance folder above them
    # is 0700. Empty: the paths themselves.
    extract_source: str = ""
    outputs_source: str = ""


def generated_files(layout: SandboxLayout) -> dict[str, str]:
    """The ``/etc`` files written for this workspace: only root, nobody and the account itself."""
    passwd = (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{layout.account}:x:{layout.uid}:{layout.gid}:TRE workspace:{layout.home}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    group = f"root:x:0:\n{layout.account}:x:{layout.gid}:\n"
    if layout.project_group and layout.project_gid is not None:
        group += f"{layout.project_group}:x:{layout.project_gid}:{layout.account}\n"
    group += "nogroup:x:65534:\n"
    hosts = f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    return {
        "/etc/passwd": passwd,
        "/etc/group": group,
        "/etc/hosts": hosts,
        "/etc/hostname": HOSTNAME + "\n",
    }


def bwrap_argv(
    layout: SandboxLayout,
    files: dict[str, int],
    bwrap: str = "bwrap",
    host_root: str = "/",
) -> list[str]:
    """The ``bwrap`` command line (up to and including ``--``) that sandboxes one workspace.

    ``files`` maps each generated file's path inside the sandbox to a readable file descriptor the
    spawner passes to the child (``--ro-bind-data``), so nothing is written on the host for them.
    ``host_root`` lets a test describe another machine's layout.
    """
    root = Path(host_root)
    argv = [
        bwrap,
        # A user namespace is how an unprivileged bwrap gets its mount and PID namespaces; inside it
        # the workspace may not create another (the kernel's largest unprivileged attack surface).
        "--unshare-user",
        "--disable-userns",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        HOSTNAME,
        "--die-with-parent",
        # No controlling terminal shared with the hub: a TIOCSTI on it cannot type into the hub.
        "--new-session",
        "--cap-drop",
        "ALL",
        "--ro-bind",
        str(root / "usr"),
        "/usr",
    ]
    for name in ROOT_LINKS:
        path = root / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), f"/{name}"]
    hidden: set[str] = set()
    usr = (root / "usr").resolve()
    for name in HIDDEN_PROGRAMS:
        path = root / "usr" / name
        real = path.resolve()
        if path.exists() and real.is_relative_to(usr) and real.is_file():
            hidden.add("/usr/" + str(real.relative_to(usr)))
    for target in sorted(hidden):
        argv += ["--ro-bind", "/dev/null", target]
    for name in ETC_ALLOWED:
        path = root / "etc" / name
        if path.exists() or path.is_symlink():
            argv += ["--ro-bind", str(path), f"/etc/{name}"]
    for target, descriptor in sorted(files.items()):
        argv += ["--ro-bind-data", str(descriptor), target]
    argv += [
        "--dev",
        "/dev",
        "--tmpfs",
        "/dev/shm",  # noqa: S108  # nosec B108 - a fresh tmpfs inside the sandbox, not the host's
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",  # noqa: S108  # nosec B108 - a fresh tmpfs inside the sandbox, not the host's
        "--ro-bind",
        layout.runtime,
        layout.runtime,
    ]
    for path in layout.extra_read_only:
        argv += ["--ro-bind", path, path]
    argv += [
        "--bind",
        layout.home,
        layout.home,
        "--bind",
        layout.outputs_source or layout.outputs,
        layout.outputs,
        # After the outputs: if one folder held the other, the read-only extract still wins.
        "--ro-bind",
        layout.extract_source or layout.extract,
        layout.extract,
        # The root tmpfs (and the /etc, mount points and parents bwrap made in it) becomes read-only:
        # only the home, the outputs, /tmp and /dev/shm take writes.
        "--remount-ro",
        "/",
        "--chdir",
        layout.home,
        "--",
    ]
    return argv
