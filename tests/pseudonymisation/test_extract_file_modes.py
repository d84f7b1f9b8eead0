"""A built extract is readable by its project's unix group only (tre/core/filemodes.py): a curious
account outside the group cannot open a byte of it, a member can, and without the group (or without
root) it stays the service's alone.

Real accounts: as root, throwaway users and the project's group are made and removed around each
test, and reads are tried as them with ``runuser``."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_test_app
from tests.pseudonymisation.test_optout_lists import _active_project, _build
from tre.core.filemodes import project_group_name
from tre.demo import synthetic

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "groupadd", "runuser")),
    reason="needs root and useradd, groupadd, runuser to make throwaway accounts",
)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("modes-demo")
    synthetic.generate(out, patients=200, seed=5)
    return out


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Any]:
    from tre.models import metadata

    # The extracts live outside the (0700) instance folder, in a folder others may pass through, so
    # that only the extract's own modes stand between an account and its files.
    shared = tmp_path / "shared"
    shared.mkdir()
    application = make_test_app(tmp_path / "instance", f"sqlite:///{tmp_path / 'tre.sqlite'}",
                                extracts_path=shared / "extracts")
    for folder in (shared, tmp_path, *tmp_path.parents):
        if folder == folder.parent:
            break
        folder.chmod(stat.S_IMODE(folder.stat().st_mode) | 0o011)
    db = application.extensions["tre.db"]
    metadata.create_all(db.engine)
    yield application
    db.session.remove()
    db.dispose()


@pytest.fixture
def accounts() -> Iterator[Any]:
    """Make throwaway accounts and groups; remove them (and only them) afterwards."""
    made_users: list[str] = []
    made_groups: list[str] = []

    class Accounts:
        def group(self, name: str) -> None:
            assert _run("groupadd", "--system", name).returncode == 0
            made_groups.append(name)

        def user(self, groups: list[str] = ()) -> str:  # type: ignore[assignment]
            name = f"trb2-{uuid.uuid4().hex[:8]}"
            argv = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]
            if groups:
                argv += ["--groups", ",".join(groups)]
            assert _run(*argv, name).returncode == 0
            made_users.append(name)
            return name

    yield Accounts()
    for name in made_users:
        _run("userdel", name)
    for name in made_groups:
        _run("groupdel", name)


def _read_as(user: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Read the first block of ``path`` as ``user`` (the bytes go nowhere)."""
    return _run("runuser", "-u", user, "--", "dd", f"if={path}", "of=/dev/null", "count=1", "status=none")


def _tree(folder: Path) -> list[Path]:
    return [folder, *sorted(folder.rglob("*"))]


def test_an_extract_is_readable_by_its_projects_group_and_nobody_else(app: Any, demo_data: Path, accounts: Any) -> None:
    w, project = _active_project(app, demo_data)
    group = project_group_name(project.id)
    accounts.group(group)  # as the hub makes it with the project's first workspace account
    member, outsider = accounts.user([group]), accounts.user()
    folder = app.extensions["tre.settings"].extracts_path / project.id
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.parent.chmod(0o711)  # passable, as projects/workspaces.py leaves the extracts root

    _build(app, w, project.id)

    part = next(folder.rglob("part-*.parquet"))
    gid = grp.getgrnam(group).gr_gid
    for path in _tree(folder):
        info = path.stat()
        assert info.st_gid == gid and info.st_uid == 0, path
        assert stat.S_IMODE(info.st_mode) == (0o750 if path.is_dir() else 0o640), path
    denied = _read_as(outsider, part)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert _run("runuser", "-u", outsider, "--", "ls", str(folder)).returncode != 0
    assert _read_as(member, next(folder.rglob("manifest.json"))).returncode == 0
    assert _read_as(member, part).returncode == 0


def test_another_projects_member_cannot_read_this_extract(app: Any, demo_data: Path, accounts: Any) -> None:
    w, project = _active_project(app, demo_data)
    accounts.group(project_group_name(project.id))
    accounts.group("tre-p-other-project-b2")
    other_member = accounts.user(["tre-p-other-project-b2"])
    folder = app.extensions["tre.settings"].extracts_path / project.id
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.parent.chmod(0o711)

    _build(app, w, project.id)

    denied = _read_as(other_member, next(folder.rglob("part-*.parquet")))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


def test_without_the_projects_group_the_extract_stays_the_services_alone(
    app: Any, demo_data: Path, accounts: Any,
) -> None:
    w, project = _active_project(app, demo_data)
    outsider = accounts.user()
    folder = app.extensions["tre.settings"].extracts_path / project.id
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.parent.chmod(0o711)

    _build(app, w, project.id)

    for path in _tree(folder):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    denied = _read_as(outsider, next(folder.rglob("manifest.json")))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
