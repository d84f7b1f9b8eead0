"""The permission model's pieces (tre/core/filemodes.py): private folders, the project group's name,
the umask, and the walk that finds what others could use."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from jupyter import sandbox
from tre.core.filemodes import (
    ensure_private_folder,
    open_to_others,
    private_group,
    project_group_name,
    restrict_umask,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_private_folder_is_700_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o000)
    try:
        folder = ensure_private_folder(tmp_path / "a" / "instance", "instance folder")
    finally:
        os.umask(previous)

    assert _mode(folder) == 0o700


def test_a_lax_folder_is_taken_back_to_700_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "instance"
    folder.mkdir()
    folder.chmod(0o711)

    with caplog.at_level(logging.WARNING, logger="tre.core.filemodes"):
        ensure_private_folder(folder, "instance folder")

    assert _mode(folder) == 0o700
    assert f"the instance folder {folder} had mode 711, open to other accounts; made it 700" in caplog.text


def test_a_private_folder_is_left_alone_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "instance"
    folder.mkdir(mode=0o700)

    with caplog.at_level(logging.WARNING, logger="tre.core.filemodes"):
        ensure_private_folder(folder)

    assert caplog.text == ""


def test_restrict_umask_makes_new_files_600_and_returns_the_old_mask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        assert restrict_umask() == 0o022
        (tmp_path / "f").write_text("x")
        (tmp_path / "d").mkdir()
    finally:
        os.umask(previous)

    assert _mode(tmp_path / "f") == 0o600 and _mode(tmp_path / "d") == 0o700


@pytest.mark.parametrize("project_id", ["p1", "PROJ-2026-001", "a" * 64, "Ünïcode project", "---"])
def test_group_names_are_valid_unix_names_and_the_hubs_own(project_id: str) -> None:
    name = project_group_name(project_id)

    assert len(name) <= 32 and name.startswith("tre-p-")
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in name)
    # The hub computed the name itself before the gate sent it (unix_group): while it still can,
    # the two must never name different groups.
    hub_group_name = getattr(sandbox, "project_group_name", None)
    if hub_group_name is not None:
        assert name == hub_group_name(project_id)


def test_long_ids_sharing_a_prefix_get_different_groups() -> None:
    assert project_group_name("x" * 40 + "1") != project_group_name("x" * 40 + "2")


def test_the_walk_skips_links_and_skipped_folders(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "shared").mkdir(parents=True)
    top.chmod(0o700)
    (top / "shared").chmod(0o755)
    (top / "shared" / "open").touch()
    (top / "shared" / "open").chmod(0o644)
    (top / "secret").touch()
    (top / "secret").chmod(0o600)
    (top / "link").symlink_to("/etc/passwd")

    assert open_to_others(top, skip=[top / "shared"]) == []
    assert set(open_to_others(top)) == {(top / "shared", 0o755), (top / "shared" / "open", 0o644)}


def test_the_services_own_private_group_bits_are_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A Kubernetes volume given to the pods' fsGroup (the service's own group) is 2770: kept as is.
    if private_group() is None:
        pytest.skip("the service's primary group has other members here")
    folder = tmp_path / "instance"
    folder.mkdir()
    os.chown(folder, -1, os.getgid())
    folder.chmod(0o2770)

    with caplog.at_level(logging.WARNING, logger="tre.core.filemodes"):
        ensure_private_folder(folder, "instance folder")

    assert _mode(folder) == 0o2770 and caplog.text == ""
