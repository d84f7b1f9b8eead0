"""Operating-system isolation of one workspace on one machine: its unix account, its files, its network.

Everything here needs root and is called by the local spawner only. Why each piece:

* A unix account per (user, project), with a primary group of its own and membership of the project's
  group, so one workspace cannot read another project's files even through a shell in the notebook.
* The extract stays where the control plane wrote it; its group becomes the project's group with
  ``g=rX, o=`` and the owner unchanged, so members of the project read it, nobody else can, and no
  workspace can write it (the workspace account is never the owner).
* A network namespace per workspace, joined to the host by a veth pair, with no default route and an
  nftables table inside that lets new connections out only to the hub API and the output API on the
  host; the host DNATs those two ports to its loopback and drops everything else from the veths.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import grp
import hashlib
import ipaddress
import os
import pwd
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
NETNS_DIR = Path("/run/netns")

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(RuntimeError):
    """An isolation step failed; the workspace must not start without it."""


async def run(*argv: str, stdin: str | None = None) -> str:
    """Run a system command without a shell; raise with its stderr if it fails."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin.encode() if stdin is not None else None)
    if process.returncode != 0:
        raise SandboxError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} failed: {err.decode().strip()[:300]}")
    return out.decode()


# --------------------------------------------------------------------------- accounts and files


def project_group_name(project_id: str) -> str:
    """A unix group name for the project; long ids are shortened with a hash so names stay unique."""
    slug = re.sub(r"[^a-z0-9-]", "-", project_id.lower()).strip("-") or "p"
    name = f"tre-p-{slug}"
    if len(name) > 32:
        name = f"tre-p-{slug[:15]}-{hashlib.sha256(project_id.encode()).hexdigest()[:10]}"
    return name


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


async def ensure_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        await run("groupadd", "--system", name)
        return grp.getgrnam(name).gr_gid


async def ensure_account(name: str, project_group: str, home_root: str) -> Account:
    """Create (once) a system account with no login shell, its own home (0700) and the project group."""
    root = Path(home_root)
    # Folders made here on the way (e.g. /var/lib/tre under the service's umask 077) must let the
    # workspace accounts through to their homes: traverse-only, no listing.
    missing = [folder for folder in (root, *root.parents) if not folder.exists()]
    root.mkdir(parents=True, exist_ok=True)
    for folder in missing:
        os.chmod(folder, 0o711)  # noqa: S103  # nosec B103
    closed = [str(folder) for folder in root.parents if not os.stat(folder).st_mode & stat.S_IXOTH]
    if closed:
        raise SandboxError(f"workspace accounts cannot reach their homes under {home_root}: chmod o+x {closed[0]}")
    # Traverse-only: a workspace can reach its own home but cannot list the others.
    os.chmod(root, 0o711)  # noqa: S103 - execute-only for others is the point  # nosec B103
    await ensure_group(project_group)
    home = root / name
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        await run(
            "useradd", "--system", "--user-group", "--shell", "/usr/sbin/nologin",
            "--home-dir", str(home), "--no-create-home", "--groups", project_group, name,
        )  # fmt: skip
        entry = pwd.getpwnam(name)
    else:
        if entry.pw_uid == 0 or entry.pw_dir != str(home):
            raise SandboxError(f"unix account {name} exists but is not a workspace account")
        if name not in grp.getgrnam(project_group).gr_mem:
            await run("usermod", "--append", "--groups", project_group, name)
    home.mkdir(exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    os.chmod(home, 0o700)
    return Account(name=name, uid=entry.pw_uid, gid=entry.pw_gid, home=str(home))


def share_extract_read_only(extract_path: str, project_group: str) -> None:
    """Let the project's group read the extract and nobody else: group r-X, other nothing, owner kept.

    Runs at every start so a file added to the extract since the last start is covered too.
    """
    gid = grp.getgrnam(project_group).gr_gid
    top = Path(extract_path)
    if not top.is_dir() or top.is_symlink():
        raise SandboxError(f"the extract {extract_path} is not a directory")
    for path in [top, *top.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        os.chown(path, info.st_uid, gid, follow_symlinks=False)
        keep = stat.S_IMODE(info.st_mode) & 0o700 & ~0o022
        group_bits = 0o050 if stat.S_ISDIR(info.st_mode) else 0o040
        os.chmod(path, keep | group_bits)


def prepare_outputs(outputs_path: str, account: Account) -> None:
    """A private writable folder for the workspace's outputs: the account's own, mode 0700."""
    path = Path(outputs_path)
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, account.uid, account.gid)
    os.chmod(path, 0o700)


def link_into_home(account: Account, name: str, target: str) -> None:
    """A root-owned symlink in the home, so the notebook's file browser shows the folder by name."""
    link = Path(account.home) / name
    if link.is_symlink() or link.exists():
        if link.is_symlink() and os.readlink(link) == target:
            return
        if link.is_dir() and not link.is_symlink():
            raise SandboxError(f"{link} is a real folder; refusing to replace it")
        link.unlink()
    link.symlink_to(target)
    os.chown(link, 0, 0, follow_symlinks=False)


# --------------------------------------------------------------------------- network


@dataclass(frozen=True)
class EgressPlan:
    """Names and addresses one hub uses for its workspaces' networks.

    ``prefix`` (at most 6 characters) names the host's nftables table, the namespaces and the host
    ends of the veths, so two hubs on one machine (a test hub beside a running one) never touch each
    other's rules. ``ports`` are the host loopback ports a workspace may open connections to.
    """

    prefix: str
    pool: str
    ports: tuple[int, ...]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,5}", self.prefix):
            raise SandboxError("the egress prefix must be 1-6 lowercase letters or digits")
        network = ipaddress.ip_network(self.pool)
        if not isinstance(network, ipaddress.IPv4Network) or network.prefixlen > 29:
            raise SandboxError("the egress pool must be an IPv4 network of at least a /29")

    @property
    def table(self) -> str:
        return f"{self.prefix}_workspaces"

    @property
    def host_if_prefix(self) -> str:
        return f"{self.prefix}h"


@dataclass(frozen=True)
class Egress:
    """The network namespace of one workspace and the addresses on either side of its veth."""

    netns: str
    host_if: str
    host_ip: str
    workspace_ip: str

    def to_state(self) -> dict[str, str]:
        return {
            "netns": self.netns,
            "host_if": self.host_if,
            "host_ip": self.host_ip,
            "ws_ip": self.workspace_ip,
        }

    @classmethod
    def from_state(cls, state: dict[str, str]) -> Egress:
        return cls(state["netns"], state["host_if"], state["host_ip"], state["ws_ip"])


def allocate_slot(plan: EgressPlan) -> tuple[int, str, str]:
    """The first free /30 of the pool: (slot, host address, workspace address).

    Called with no await between the scan and the creation of the veth, so two spawns in one hub
    process cannot take the same slot.
    """
    used = {int(name[len(plan.host_if_prefix) :]) for name in host_interfaces(plan)}
    pool = ipaddress.ip_network(plan.pool)
    # Another hub's interfaces (another prefix, or one killed before it could clean up) are not
    # ours to count, but a route of theirs inside the pool would take our workspace's traffic.
    taken = [net for net in host_routes() if net.prefixlen > pool.prefixlen and net.overlaps(pool)]
    for slot, subnet in enumerate(pool.subnets(new_prefix=30)):
        if slot == 0 or slot in used or any(subnet.overlaps(net) for net in taken):
            continue
        host_ip, workspace_ip = (str(address) for address in subnet.hosts())
        return slot, host_ip, workspace_ip
    raise SandboxError("no free workspace network slots")


def host_routes(table: Path = Path("/proc/net/route")) -> list[ipaddress.IPv4Network]:
    """The IPv4 networks the host routes to (the kernel's main table, read without a subprocess)."""
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return []
    routes = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        # Destination and mask are little-endian hex words.
        destination = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
        routes.append(ipaddress.IPv4Network(f"{destination}/{mask}", strict=False))
    return routes


def _ports(plan: EgressPlan) -> str:
    return ", ".join(str(port) for port in sorted(set(plan.ports)))


async def ensure_host_rules(plan: EgressPlan) -> None:
    """The host side, replaced whole: DNAT the allowed ports to loopback, drop all else from the veths."""
    veths = f'"{plan.host_if_prefix}*"'
    ruleset = f"""
table inet {plan.table}
delete table inet {plan.table}
table inet {plan.table} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname {veths} ip daddr {plan.pool} tcp dport {{ {_ports(plan)} }} dnat ip to 127.0.0.1
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname {veths} ct state established,related accept
        iifname {veths} ip daddr 127.0.0.1 tcp dport {{ {_ports(plan)} }} accept
        iifname {veths} drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname {veths} drop
        oifname {veths} drop
    }}
}}
"""
    await run("nft", "-f", "-", stdin=ruleset)


async def delete_host_rules(plan: EgressPlan) -> None:
    await run("nft", "-f", "-", stdin=f"table inet {plan.table}\ndelete table inet {plan.table}\n")


# Held around creating a workspace's network (rules, then veth) and around removing it (veth, then the
# rules when it was the last), so a start and the last stop in one hub never interleave.
HOST_RULES_LOCK = asyncio.Lock()


def host_interfaces(plan: EgressPlan, net: Path = Path("/sys/class/net")) -> list[str]:
    """This hub's host ends of workspace veths that exist now."""
    return [
        name
        for name in os.listdir(net)
        if name.startswith(plan.host_if_prefix) and name[len(plan.host_if_prefix) :].isdigit()
    ]


async def delete_host_rules_if_unused(plan: EgressPlan) -> bool:
    """Remove the hub's host table once no workspace of this hub has a network; True if removed."""
    if host_interfaces(plan):
        return False
    await delete_host_rules(plan)
    return True


def _workspace_ruleset(plan: EgressPlan, host_ip: str) -> str:
    """Inside the namespace: out only to the host end of the veth on the allowed ports (and replies)."""
    return f"""
table inet tre_egress {{
    chain output {{
        type filter hook output priority filter; policy drop;
        oifname "lo" accept
        ct state established,related accept
        ip daddr {host_ip} tcp dport {{ {_ports(plan)} }} accept
    }}
}}
"""


async def create_egress(plan: EgressPlan, key: str) -> Egress:
    """A namespace whose only way out is ``host_ip:ports``, which the host DNATs to its own loopback."""
    netns = f"{plan.prefix}-{key}"
    if (NETNS_DIR / netns).exists():
        await run("ip", "netns", "delete", netns)
    slot, host_ip, workspace_ip = allocate_slot(plan)
    host_if, inner_if = f"{plan.host_if_prefix}{slot}", f"{plan.prefix}w{slot}"
    egress = Egress(netns=netns, host_if=host_if, host_ip=host_ip, workspace_ip=workspace_ip)
    await run("ip", "netns", "add", netns)
    try:
        await run("ip", "link", "add", host_if, "type", "veth", "peer", "name", inner_if, "netns", netns)
        await run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        # Without this the kernel would not route packets from the veth to 127.0.0.1 after DNAT.
        Path(f"/proc/sys/net/ipv4/conf/{host_if}/route_localnet").write_text("1")
        await run("ip", "link", "set", host_if, "up")
        await run("ip", "-n", netns, "addr", "add", f"{workspace_ip}/30", "dev", inner_if)
        await run("ip", "-n", netns, "link", "set", inner_if, "up")
        await run("ip", "-n", netns, "link", "set", "lo", "up")
        await run("ip", "netns", "exec", netns, "nft", "-f", "-", stdin=_workspace_ruleset(plan, host_ip))
    except BaseException:
        await delete_egress(egress)
        raise
    return egress


async def delete_egress(egress: Egress) -> None:
    """Remove the veth pair (by its host end) and the namespace."""
    # The host end first: deleting it removes the pair at once, while a deleted namespace's veth goes
    # away later (the kernel cleans namespaces up asynchronously), and the last stop counts veths.
    if Path(f"/sys/class/net/{egress.host_if}").exists():
        await run("ip", "link", "delete", egress.host_if)
    if (NETNS_DIR / egress.netns).exists():
        await run("ip", "netns", "delete", egress.netns)


def open_netns(netns: str) -> int:
    return os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)


def enter_netns(fd: int) -> None:
    """Join a network namespace (called in the child between fork and exec, while still root)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def processes_of(uid: int, proc: Path = Path("/proc")) -> list[int]:
    """The ids of the processes whose real user id is ``uid`` (read from /proc, no subprocess)."""
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue  # it ended while we looked
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if int(line.split()[1]) == uid:
                    pids.append(int(entry.name))
                break
    return pids


async def end_processes_of(account: Account, timeout: float = 10.0) -> list[int]:
    """Kill whatever still runs as a workspace account and wait until it is gone; return what is left.

    The account belongs to one workspace, so after its server stopped nothing of it may run on: a
    kernel the sandbox's PID namespace is still tearing down, or (without the sandbox) a process a
    terminal left in the background.
    """
    if account.uid == 0:
        raise SandboxError("refusing to end the processes of root")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = processes_of(account.uid)
        if not left or loop.time() > deadline:
            return left
        for pid in left:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        await asyncio.sleep(0.05)


async def remove_account(account: Account, home_root: str, outputs_path: str = "") -> None:
    """Remove a workspace account for good: its processes, its home, then the account itself.

    Its outputs folder is the control plane's to delete; it is handed to root first, so a later
    account given the same uid does not inherit it. The project's group stays: the extract keeps its
    gid, and a new group reusing that gid would read it.
    """
    entry = pwd.getpwnam(account.name)
    home = Path(home_root) / account.name
    if entry.pw_uid == 0 or entry.pw_uid != account.uid or entry.pw_dir != str(home):
        raise SandboxError(f"unix account {account.name} is not this workspace's account")
    left = await end_processes_of(account)
    if left:
        raise SandboxError(f"{len(left)} processes of {account.name} would not end")
    if home.is_dir() and not home.is_symlink():
        shutil.rmtree(home)
    points = Path(home_root) / ".mounts" / account.name
    for name in ("extract", "outputs"):
        with contextlib.suppress(FileNotFoundError):
            (points / name).rmdir()  # empty on the host; refuses (and so raises) if not
    with contextlib.suppress(FileNotFoundError):
        points.rmdir()
    outputs = Path(outputs_path) if outputs_path else None
    if outputs is not None and outputs.is_dir() and not outputs.is_symlink():
        for path in [outputs, *outputs.rglob("*")]:
            if path.lstat().st_uid == account.uid:
                os.chown(path, 0, 0, follow_symlinks=False)
    await run("userdel", account.name)


def staging_dirs(home_root: str, account: Account) -> tuple[str, str]:
    """Empty root-owned mount points (extract, outputs) the account can reach, made once per account.

    On the host they stay empty; only inside the workspace's own mount namespace is the project's
    extract (and the outputs folder) bound onto them, by root, so the workspace's unprivileged
    sandbox can bind them from there without the account ever traversing the 0700 instance folder.
    """
    base = Path(home_root) / ".mounts"
    base.mkdir(mode=0o711, exist_ok=True)
    os.chmod(base, 0o711)  # noqa: S103 - traverse-only for others is the point  # nosec B103
    mine = base / account.name
    mine.mkdir(mode=0o711, exist_ok=True)
    os.chmod(mine, 0o711)  # noqa: S103  # nosec B103
    points = []
    for name in ("extract", "outputs"):
        point = mine / name
        point.mkdir(mode=0o755, exist_ok=True)
        os.chown(point, 0, 0)
        os.chmod(point, 0o755)  # noqa: S103 - an empty mount point  # nosec B103
        points.append(str(point))
    return points[0], points[1]


def bind_privately(binds: list[tuple[str, str]]) -> None:
    """In the child, still root: a mount namespace of its own, then ``source`` bound on ``target``.

    Nothing of this is seen on the host (the namespace's mounts are private).
    """
    if _libc.unshare(CLONE_NEWNS) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    if _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    for source, target in binds:
        if _libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"bind {source} on {target}: {os.strerror(error)}")


def drop_to(account: Account) -> None:
    """Become the workspace account for good: groups first, then gid, then uid."""
    os.initgroups(account.name, account.gid)
    os.setgid(account.gid)
    os.setuid(account.uid)
    os.chdir(account.home)


# --------------------------------------------------------------------------- CPU share while starting


def _stat_fields(stat_text: str) -> list[str]:
    """The fields of a /proc/PID/stat line after the command name (which may hold spaces and brackets)."""
    return stat_text.rsplit(")", 1)[1].split()


def raise_own_priority(nice: int) -> None:
    """In the child, still root and leading its new session: give that session (where bwrap builds the
    sandbox) and the processes started from it (they inherit it) this nice."""
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    with contextlib.suppress(OSError):  # a kernel without autogroups
        Path("/proc/self/autogroup").write_text(str(nice))


class StartingSession:
    """The CPU share of one workspace's session while its server starts (ADR 0028).

    Linux shares the CPU between sessions first (autogroups, when the hub runs in the root cgroup) and
    between the processes of a session second, so a server starting in a session of its own gets one
    share among all the sessions that are busy on the host, whatever its processes' own nice values.
    While it starts, the spawner gives that session a larger share (a negative autogroup nice: only
    root may); the session bwrap itself runs in (``outer_session``, led by the spawner's child) and the
    processes were raised before the child dropped root (``raise_own_priority``), the latter for hubs
    whose cgroup makes per-process nice count instead of autogroups. All of it is put back to 0 once the
    server listens, before anyone can reach it, so nothing the researcher runs keeps it.

    The session is found among the account's processes as one that leads a session other than the
    spawner's child's, and is held by a handle on its ``/proc`` folder, so a pid that ended and was
    reused is never touched.
    """

    def __init__(self, uid: int, outer_session: int, proc: Path = Path("/proc")) -> None:
        if uid == 0:
            raise SandboxError("refusing to change the CPU share of root's sessions")
        self.uid = uid
        self.outer_session = outer_session
        self.proc = proc
        self._folder: int | None = None
        self.nice = 0

    def find(self) -> bool:
        """Hold the session the sandbox made, once it exists; True when held."""
        if self._folder is not None:
            return True
        for pid in processes_of(self.uid, self.proc):
            try:
                folder = os.open(self.proc / str(pid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                continue  # it ended while we looked
            try:
                with open(os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=folder)) as stat_file:
                    session = int(_stat_fields(stat_file.read())[3])
                with open(os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=folder)) as status_file:
                    uid_line = next(line for line in status_file if line.startswith("Uid:"))
            except (OSError, StopIteration, IndexError, ValueError):
                os.close(folder)
                continue
            if session == pid and session != self.outer_session and int(uid_line.split()[1]) == self.uid:
                self._folder = folder
                return True
            os.close(folder)
        return False

    def set(self, nice: int) -> bool:
        """Give the held session this autogroup nice (-20..19); False if it is not held or has ended."""
        if self._folder is None or not -20 <= nice <= 19:
            return False
        try:
            descriptor = os.open("autogroup", os.O_WRONLY | os.O_CLOEXEC, dir_fd=self._folder)
            try:
                os.write(descriptor, str(nice).encode())
            finally:
                os.close(descriptor)
        except OSError:
            return False
        self.nice = nice
        return True

    def read(self) -> int | None:
        """The held session's autogroup nice as the kernel has it (None if not held or ended)."""
        if self._folder is None:
            return None
        try:
            with open(os.open("autogroup", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._folder)) as handle:
                return int(handle.read().split("nice")[1])
        except (OSError, IndexError, ValueError):
            return None

    def release(self) -> None:
        """Put the sessions back to an equal share, and every process of the account to nice 0."""
        with contextlib.suppress(OSError):  # no process of the account left: nothing to put back
            os.setpriority(os.PRIO_USER, self.uid, 0)
        with contextlib.suppress(OSError):  # the spawner's child (not reaped yet, so its pid is its own)
            (self.proc / str(self.outer_session) / "autogroup").write_text("0")
        if self._folder is None:
            return
        if self.nice != 0:
            self.set(0)
        os.close(self._folder)
        self._folder = None
