"""Re-run a submitted notebook or script in a sandbox with no network at all (issue 24, ADR 0018).

The output queue's re-run job calls this as a separate process (``python -m jupyter.rerun``, a JSON
plan on stdin, a JSON answer on stdout), so the control plane never imports the sandbox and this module
never imports the control plane. The sandbox is the workspace's (``jupyter.fs_sandbox``: the same
read-only system, runtime and ``/etc`` files, a new user, mount, PID, IPC and UTS namespace, every
capability dropped) with these differences:

* ``--unshare-net``: a network namespace of its own with only a loopback, not even the output API;
* a home of its own, holding only the code at its path in the workspace home, ``outputs/`` and links
  to the extract, which is bound read-only at its own path (``TRE_EXTRACT_DIR``);
* limits from the TRE's policy: CPU seconds, address space (memory) and the largest file it may write
  (``prlimit``, i.e. ``setrlimit``, inherited by every process it starts), the home on a tmpfs of the
  disk limit's size when this runs as root (else the file-size limit and a count after the run), and
  wall time (the sandbox is killed, with everything in it: ``--die-with-parent`` and its PID namespace).

After the code ends, a second sandbox (no network, nothing writable) decodes the images of the re-run
and of the submission with the runtime's Pillow, so the comparison is by pixels, and untrusted image
files are never decoded by the control plane. Nothing of the code's printed output or tracebacks comes
back: the answer says ``ok`` or the exception's type, the cell and the line of code that raised.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess  # nosec B404 - bwrap and prlimit, argv lists, no shell
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter.client import extract_version
from jupyter.fs_sandbox import ETC_ALLOWED, HOSTNAME, ROOT_LINKS
from jupyter.rerun_driver import collect
from jupyter.sandbox import CLONE_NEWNS, MS_PRIVATE, MS_REC, _libc

HOME = "/home/tre-rerun"
DRIVER = "/opt/tre-rerun/driver.py"
STATUS_DIR = "/opt/tre-rerun/status"
SUBMITTED_DIR = "/opt/tre-rerun/submitted"
RERUN_UID = 65534  # nobody, inside the sandbox's user namespace


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 600
    memory_bytes: int = 4 * 1024**3
    disk_bytes: int = 1024**3
    wall_seconds: int = 900

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Limits:
        limits = cls(**{k: int(v) for k, v in data.items() if k in cls.__dataclass_fields__})
        if min(limits.cpu_seconds, limits.memory_bytes, limits.disk_bytes, limits.wall_seconds) <= 0:
            raise ValueError("every re-run limit must be positive")
        return limits


class RerunError(RuntimeError):
    """The sandbox could not be built (not the code's fault): the job reports it, with this reason."""


def _system_binds(host_root: Path = Path("/")) -> list[str]:
    argv = ["--ro-bind", str(host_root / "usr"), "/usr"]
    for name in ROOT_LINKS:
        path = host_root / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), f"/{name}"]
    for name in ETC_ALLOWED:
        path = host_root / "etc" / name
        if path.exists() or path.is_symlink():
            argv += ["--ro-bind", str(path), f"/etc/{name}"]
    return argv


def _etc_files() -> dict[str, str]:
    return {
        "/etc/passwd": (
            f"root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:{RERUN_UID}:{RERUN_UID}:re-run:{HOME}:/bin/bash\n"
        ),
        "/etc/group": f"root:x:0:\nnogroup:x:{RERUN_UID}:\n",
        "/etc/hosts": f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost\n",
        "/etc/hostname": HOSTNAME + "\n",
    }


def bwrap_argv(
    *,
    runtime: str,
    home: str,
    extract: str,
    driver: str,
    binds: list[tuple[str, str, bool]],
    files: dict[str, int],
    tmp_bytes: int,
    home_writable: bool = True,
    bwrap: str = "bwrap",
) -> list[str]:
    """The ``bwrap`` command line (up to ``--``) of a re-run sandbox. ``binds`` are (host, inside,
    writable); ``files`` map generated ``/etc`` files to readable descriptors."""
    argv = [
        bwrap,
        "--unshare-user",
        "--uid",
        str(RERUN_UID),
        "--gid",
        str(RERUN_UID),
        "--disable-userns",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",  # a loopback only: no route anywhere, not even to the output API
        "--unshare-cgroup-try",
        "--hostname",
        HOSTNAME,
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        *_system_binds(),
    ]
    for target, descriptor in sorted(files.items()):
        argv += ["--ro-bind-data", str(descriptor), target]
    argv += [
        "--dev",
        "/dev",
        "--size",
        str(tmp_bytes),
        "--tmpfs",
        "/tmp",  # noqa: S108  # nosec B108 - a fresh tmpfs inside the sandbox
        "--size",
        str(tmp_bytes),
        "--tmpfs",
        "/dev/shm",  # noqa: S108  # nosec B108
        "--proc",
        "/proc",
        "--ro-bind",
        runtime,
        runtime,
        "--ro-bind",
        driver,
        DRIVER,
        "--bind" if home_writable else "--ro-bind",
        home,
        HOME,
    ]
    for source, target, writable in binds:
        argv += ["--bind" if writable else "--ro-bind", source, target]
    if extract:
        argv += ["--ro-bind", extract, extract]
    argv += ["--remount-ro", "/", "--chdir", HOME, "--"]
    return argv


def _environment(runtime: str, extract: str) -> dict[str, str]:
    return {
        "HOME": HOME,
        "USER": "nobody",
        "PATH": f"{runtime}/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "TRE_RERUN": "1",
        "TRE_EXTRACT_DIR": extract,
        "TRE_OUTPUTS_DIR": f"{HOME}/outputs",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": "/tmp/matplotlib",  # noqa: S108  # nosec B108
        "JUPYTER_RUNTIME_DIR": "/tmp/jupyter-runtime",  # noqa: S108  # nosec B108
        "IPYTHONDIR": "/tmp/ipython",  # noqa: S108  # nosec B108
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        # One thread each: the same sums in the same order as far as the libraries allow, and no
        # per-thread arenas eating the memory limit.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _run_sandboxed(
    argv: list[str], env: dict[str, str], files: dict[str, str], limits: Limits, *, capture: bool
) -> tuple[int, bytes, bool, float]:
    """Run ``argv`` (a bwrap line and its command) under prlimit; (exit status, stdout, timed out, seconds)."""
    descriptors: dict[str, int] = {}
    pipes: list[int] = []
    try:
        for target, text in files.items():
            read, write = os.pipe()
            os.write(write, text.encode())
            os.close(write)
            descriptors[target] = read
            pipes.append(read)
        full = [
            "prlimit",
            f"--cpu={limits.cpu_seconds}",
            f"--as={limits.memory_bytes}",
            f"--fsize={limits.disk_bytes}",
            "--core=0",
            "--",
            *[str(descriptors[a[len("@fd:") :]]) if a.startswith("@fd:") else a for a in argv],
        ]
        started = time.monotonic()
        process = subprocess.Popen(  # noqa: S603  # nosec B603 - argv list built here, no shell
            full,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            # The code's own messages may hold data: never kept (TRE_RERUN_DEBUG shows them, on a test machine).
            stderr=None if os.environ.get("TRE_RERUN_DEBUG") else subprocess.DEVNULL,
            pass_fds=tuple(pipes),
            start_new_session=True,
        )
        try:
            out, _ = process.communicate(timeout=limits.wall_seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            out, _ = process.communicate()
            timed_out = True
        return process.returncode, out or b"", timed_out, time.monotonic() - started
    finally:
        for fd in pipes:
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def _sized_home(home: Path, disk_bytes: int) -> Any:
    """The home on a tmpfs of the disk limit's size when root may mount one; else the plain folder.

    The mount is made in a mount namespace of this process's own, so it is never seen on the host and
    goes away with this process, however it ends (a killed worker takes it along).
    """
    mounted = False
    mount = shutil.which("mount")
    if os.geteuid() == 0 and mount and _private_mounts():
        result = subprocess.run(  # noqa: S603  # nosec B603
            [mount, "-t", "tmpfs", "-o", f"size={disk_bytes},mode=0777", "tre-rerun", str(home)],
            capture_output=True,
            check=False,
        )
        mounted = result.returncode == 0
    try:
        yield "tmpfs" if mounted else "file-size limit and a count after the run"
    finally:
        if mounted:
            umount = shutil.which("umount") or "/usr/bin/umount"
            subprocess.run([umount, "--lazy", str(home)], capture_output=True, check=False)  # noqa: S603  # nosec B603


def _private_mounts() -> bool:
    """Enter a mount namespace of our own whose mounts do not propagate to the host."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        return False
    return _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0


def _reason(status: dict[str, Any], returncode: int, timed_out: bool, limits: Limits, kind: str) -> str:
    mb = limits.memory_bytes // (1024 * 1024)
    if timed_out:
        return f"the code ran longer than the re-run's wall-time limit ({limits.wall_seconds} s)"
    error, code = str(status.get("error") or ""), str(status.get("errno") or "")
    if error == "ExtractChanged":
        return (
            "the project's extract has changed since the outputs were made: "
            "the code cannot be re-run on the data it read"
        )
    where = f" in cell {status['cell']}" if status.get("cell") else ""
    line = f" at `{status['line']}`" if status.get("line") else ""
    if error == "MemoryError":
        return f"the code needed more memory than the re-run allows ({mb} MB): MemoryError{where}{line}"
    if error == "DeadKernelError":
        return f"the kernel died{where}: most likely a CPU ({limits.cpu_seconds} s) or memory ({mb} MB) limit"
    if code in ("EFBIG", "ENOSPC", "EDQUOT"):
        return f"the code wrote more than the re-run's disk limit ({limits.disk_bytes} bytes: {code}{where}{line})"
    network = ("ENETUNREACH", "EHOSTUNREACH", "ECONNREFUSED", "EADDRNOTAVAIL", "ETIMEDOUT", "EAI_NONAME")
    if code in network or error in ("ConnectionError", "ConnectionRefusedError", "URLError", "gaierror"):
        return f"the code tried to use the network ({error} {code}{where}{line}): a re-run has no network at all"
    if code in ("ENOENT", "EACCES", "EROFS", "EPERM") or error in ("FileNotFoundError", "PermissionError"):
        return (
            f"the code reached for a file the re-run does not have or may not write ({error} {code}{where}{line}): "
            "a re-run sees only the code, its home and outputs folder, and the project's extract (read-only)"
        )
    if error:
        return f"the {kind} raised {error}{where}{line}"
    if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGKILL):
        return f"the code was stopped: CPU ({limits.cpu_seconds} s) or memory limit"
    return f"the {kind} did not finish (exit status {returncode})"


def extract_changed(plan: dict[str, Any]) -> dict[str, Any] | None:
    """The answer when the project's extract is no longer the version the code read; else None."""
    recorded, extract = plan.get("extract_version"), plan.get("extract") or ""
    if not recorded or not extract:
        return None
    found = extract_version(extract)
    if found == recorded:
        return None
    return {
        "status": "failed",
        "reason": "the project's extract has changed since the outputs were made (version "
        f"{recorded[:12]} then, {(found or 'none')[:12]} now): the code cannot be re-run on the data it read",
        "log": [f"extract version recorded {recorded}", f"extract version now {found}"],
        "files": {},
        "images": {},
        "timings": {},
    }


def outcome(
    status: dict[str, Any], returncode: int, timed_out: bool, sizes: int, limits: Limits, kind: str
) -> tuple[str, str]:
    """("done", "") or ("failed", the reason for the checker), from what the driver reported."""
    if status.get("status") == "ok" and returncode == 0 and not timed_out and sizes <= limits.disk_bytes:
        return "done", ""
    if sizes > limits.disk_bytes:
        return "failed", f"the code wrote more than the re-run's disk limit ({limits.disk_bytes} bytes)"
    return "failed", _reason(status, returncode, timed_out, limits, kind)


def log_lines(status: dict[str, Any], returncode: int, timed_out: bool, limits: Limits, disk_rule: str) -> list[str]:
    """The log a checker reads: what the driver reported, never the code's output."""
    log = [f"status: {status.get('status', 'none')}", f"exit: {returncode}", f"disk limit by: {disk_rule}"]
    if status.get("error"):
        log.append(f"error: {status['error']} {status.get('errno') or ''}".strip())
    if status.get("cell"):
        log.append(f"cell: {status['cell']}")
    if status.get("line"):
        log.append(f"line: {status['line']}")
    if timed_out:
        log.append(f"killed after {limits.wall_seconds} s")
    return log


def split_prints(prints: dict[str, Any], home: str, submitted: str) -> dict[str, Any]:
    """The images' digests by side: the re-run's (paths in its home) and the submission's."""
    images: dict[str, Any] = {"rerun": {}, "submitted": {}}
    for path, print_ in prints.items():
        if path.startswith(home + "/"):
            images["rerun"][path[len(home) + 1 :]] = print_
        elif path.startswith(submitted + "/"):
            images["submitted"][path[len(submitted) + 1 :]] = print_
    return images


def rerun(plan: dict[str, Any]) -> dict[str, Any]:
    """Run one plan (see ``main``) and answer with the outcome; raises ``RerunError`` if no sandbox."""
    limits = Limits.from_dict(plan.get("limits", {}))
    runtime, work = plan["runtime"], Path(plan["work"])
    extract, code_path, kind = plan.get("extract") or "", plan["code_path"], plan["kind"]
    python = Path(runtime) / "bin" / "python"
    if shutil.which("bwrap") is None:
        raise RerunError("bubblewrap (bwrap) is not installed on the worker")
    if not python.exists():
        raise RerunError(f"the workspace runtime is not built at {runtime}")
    driver = str(Path(__file__).with_name("rerun_driver.py"))
    changed = extract_changed(plan)
    if changed is not None:
        return changed
    home, status_dir, submitted = work / "home", work / "status", work / "submitted"
    for folder in (home, status_dir, submitted):
        folder.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with _sized_home(home, limits.disk_bytes) as disk_rule:
        (home / "outputs").mkdir(exist_ok=True)
        target = home / code_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plan["code_file"], target)
        if extract:
            (home / "extract").symlink_to(extract)
        for folder in (home, *[p for p in home.rglob("*") if p.is_dir() and not p.is_symlink()]):
            os.chmod(folder, 0o777)  # noqa: S103  # nosec B103 - a private scratch folder; nobody inside writes
        os.chmod(status_dir, 0o777)  # noqa: S103  # nosec B103
        etc = _etc_files()
        fds = {name: f"@fd:{name}" for name in etc}
        env = _environment(runtime, extract)
        tmp_bytes = min(limits.disk_bytes, 512 * 1024**2)
        base = dict(runtime=runtime, home=str(home), extract=extract, driver=driver, tmp_bytes=tmp_bytes)
        run_argv = bwrap_argv(**base, binds=[(str(status_dir), STATUS_DIR, True)], files=fds)  # type: ignore[arg-type]
        run_argv += [str(python), DRIVER, "run", kind, f"{HOME}/{code_path}", f"{STATUS_DIR}/status.json"]
        returncode, _, timed_out, timings["code_seconds"] = _run_sandboxed(run_argv, env, etc, limits, capture=False)
        try:
            status = json.loads((status_dir / "status.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            status = {}
        made = collect(home, code_path)
        sizes = sum((home / name).stat().st_size for name in made)
        state, reason = outcome(status, returncode, timed_out, sizes, limits, kind)
        images: dict[str, Any] = {}
        if state == "done":
            started = time.monotonic()
            images = _fingerprints(plan, base, env, etc, fds, limits, python, home, submitted)
            timings["fingerprint_seconds"] = time.monotonic() - started
        copied = _copy_out(home, made, work / "made") if state == "done" else {}
    return {
        "status": state,
        "reason": reason,
        "log": log_lines(status, returncode, timed_out, limits, disk_rule),
        "files": copied,
        "images": images,
        "timings": timings,
        "limits": limits.__dict__,
    }


def _fingerprints(
    plan: dict[str, Any],
    base: dict[str, Any],
    env: dict[str, str],
    etc: dict[str, str],
    fds: dict[str, str],
    limits: Limits,
    python: Path,
    home: Path,
    submitted: Path,
) -> dict[str, Any]:
    """Decoded pixels of every image, the re-run's and the submission's, in a read-only sandbox."""
    argv = bwrap_argv(
        **{**base, "extract": ""}, binds=[(str(submitted), SUBMITTED_DIR, False)], files=fds, home_writable=False
    )  # type: ignore[arg-type]
    argv += [str(python), DRIVER, "fingerprint", HOME, SUBMITTED_DIR]
    returncode, out, _timed_out, _ = _run_sandboxed(argv, env, etc, limits, capture=True)
    if returncode != 0:
        return {}
    try:
        answer = json.loads(out)
    except ValueError:
        return {}
    return split_prints(answer, HOME, SUBMITTED_DIR)


def _copy_out(home: Path, made: dict[str, str], destination: Path) -> dict[str, str]:
    """The files made, copied off the (possibly tmpfs) home before it is unmounted."""
    for relative in made:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(home / relative, target, follow_symlinks=False)
    return made


def main(run: Any = None) -> int:
    """``python -m jupyter.rerun``: a JSON plan on stdin, the JSON answer on stdout (``run`` is another
    launcher's: ``jupyter.rerun_kubernetes`` answers the same plan the same way).

    The plan: ``runtime`` (the workspace runtime's prefix), ``work`` (an empty folder of the caller's; the
    re-made files end in ``work/made``; the submitted images go in ``work/submitted`` first), ``code_file``
    (the code's bytes), ``code_path`` (its path in the home), ``kind`` (notebook or script), ``extract``
    (the project's extract folder, bound read-only; empty for none) and ``limits``.
    """
    plan = json.load(sys.stdin)
    try:
        answer = (run or rerun)(plan)
    except RerunError as error:
        answer = {"status": "failed", "reason": f"the re-run sandbox could not be built: {error}", "log": []}
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
