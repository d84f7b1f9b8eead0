"""The bubblewrap command line and the /etc files written for one workspace (no root, nothing run)."""

from __future__ import annotations

from pathlib import Path

from jupyter import fs_sandbox

LAYOUT = fs_sandbox.SandboxLayout(
    runtime="/opt/tre-workspace",
    home="/var/lib/tre/workspaces/tre-ab12",
    account="tre-ab12",
    uid=998,
    gid=997,
    extract="/srv/tre/instance/extracts/P1",
    outputs="/srv/tre/instance/outputs/u-p1",
    project_group="tre-p-p1",
    project_gid=996,
)


def fake_root(tmp_path: Path) -> Path:
    """A machine with merged /usr links, an /etc holding secrets beside what the runtime needs."""
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    for name in ("bin", "lib", "sbin"):
        (tmp_path / name).symlink_to(f"usr/{name}")
    etc = tmp_path / "etc"
    (etc / "ssl" / "certs").mkdir(parents=True)
    (etc / "ssl" / "private").mkdir()
    for name in ("ld.so.cache", "localtime", "shadow", "passwd", "group", "machine-id"):
        (etc / name).write_text("x")
    return tmp_path


def pairs(argv: list[str], option: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, arg in enumerate(argv) if arg == option]


def test_bwrap_argv_binds_only_the_runtime_home_outputs_extract_and_safe_etc(tmp_path: Path):
    root = fake_root(tmp_path)

    argv = fs_sandbox.bwrap_argv(LAYOUT, {"/etc/passwd": 7}, bwrap="/usr/bin/bwrap", host_root=str(root))

    assert argv[0] == "/usr/bin/bwrap" and argv[-1] == "--"
    assert pairs(argv, "--bind") == [(LAYOUT.home, LAYOUT.home), (LAYOUT.outputs, LAYOUT.outputs)]
    assert sorted(pairs(argv, "--ro-bind")) == sorted(
        [
            (str(root / "usr"), "/usr"),
            (str(root / "etc" / "ld.so.cache"), "/etc/ld.so.cache"),
            (str(root / "etc" / "localtime"), "/etc/localtime"),
            (str(root / "etc" / "ssl" / "certs"), "/etc/ssl/certs"),
            (LAYOUT.runtime, LAYOUT.runtime),
            (LAYOUT.extract, LAYOUT.extract),
        ]
    )
    assert pairs(argv, "--symlink") == [("usr/bin", "/bin"), ("usr/sbin", "/sbin"), ("usr/lib", "/lib")]
    assert pairs(argv, "--ro-bind-data") == [("7", "/etc/passwd")]


def test_bwrap_argv_hides_the_hosts_javascript_runtime_after_binding_usr(tmp_path: Path):
    root = fake_root(tmp_path)
    (root / "usr" / "bin").mkdir()
    (root / "usr" / "bin" / "node").write_text("an executable")
    (root / "usr" / "bin" / "nodejs").symlink_to("node")  # Debian's alias: hidden through its target

    argv = fs_sandbox.bwrap_argv(LAYOUT, {}, host_root=str(root))

    binds = pairs(argv, "--ro-bind")
    assert ("/dev/null", "/usr/bin/node") in binds
    assert [target for source, target in binds if source == "/dev/null"] == ["/usr/bin/node"]
    assert binds.index(("/dev/null", "/usr/bin/node")) > binds.index((str(root / "usr"), "/usr"))


def test_bwrap_argv_new_pid_user_ipc_namespaces_and_read_only_root(tmp_path: Path):
    argv = fs_sandbox.bwrap_argv(LAYOUT, {}, host_root=str(fake_root(tmp_path)))

    for flag in ("--unshare-pid", "--unshare-user", "--disable-userns", "--unshare-ipc", "--die-with-parent"):
        assert flag in argv
    assert "--unshare-net" not in argv  # the spawner already put it in the workspace's network namespace
    assert "--share-net" not in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--remount-ro") + 1] == "/"
    # The extract is bound last of the data, so it stays read-only even inside a writable folder.
    binds = [i for i, arg in enumerate(argv) if arg in ("--bind", "--ro-bind")]
    assert argv[binds[-1] : binds[-1] + 3] == ["--ro-bind", LAYOUT.extract, LAYOUT.extract]


def test_generated_files_name_only_root_nobody_and_the_workspace_account():
    files = fs_sandbox.generated_files(LAYOUT)

    users = [line.split(":")[0] for line in files["/etc/passwd"].splitlines()]
    groups = {line.split(":")[0]: line.split(":")[3] for line in files["/etc/group"].splitlines()}
    assert users == ["root", "tre-ab12", "nobody"]
    assert f"tre-ab12:x:998:997:TRE workspace:{LAYOUT.home}:/bin/bash" in files["/etc/passwd"]
    assert groups == {"root": "", "tre-ab12": "", "tre-p-p1": "tre-ab12", "nogroup": ""}
    assert "localhost" in files["/etc/hosts"]
