"""Names in the landing folder: plain relative paths only, no link followed at any step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pseudonymisation.landing import LandingError, check_name, open_in_landing


@pytest.mark.parametrize("name", ["", "/etc/x.csv", "../x.csv", "a/../../x.csv", "a/./x.csv", "a\\x.csv",
                                  "x.exe", "a//x.csv", "x\x00.csv"])
def test_a_name_that_is_not_a_plain_relative_path_is_refused(name: str) -> None:
    with pytest.raises(LandingError):
        check_name(name)


def test_links_are_not_followed_at_any_step(tmp_path: Path) -> None:
    root, outside = tmp_path / "landing", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.csv").write_text("a\n1\n")
    (root / "real" / "ok.csv").write_text("a\n1\n")
    os.symlink(outside / "secret.csv", root / "file-link.csv")
    os.symlink(outside, root / "dir-link")

    fd, _ = open_in_landing(root, "real/ok.csv")
    os.close(fd)
    for name in ("file-link.csv", "dir-link/secret.csv"):
        with pytest.raises(LandingError, match="links are not followed"):
            open_in_landing(root, name)


def test_a_missing_landing_folder_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LandingError, match="TRE_LANDING_DIR"):
        open_in_landing(None, "x.csv")


def test_a_missing_landing_folder_is_refused_saying_which_setting_to_set(tmp_path: Path) -> None:
    from pseudonymisation.landing import list_folder

    with pytest.raises(LandingError, match=r"TRE_LANDING_DIR.*an administrator sets it"):
        list_folder(None, "cdm")


def test_top_folders_lists_real_folders_only_and_nothing_without_a_landing_folder(tmp_path: Path) -> None:
    from pseudonymisation.landing import top_folders

    root, outside = tmp_path / "landing", tmp_path / "outside"
    (root / "b-cdm").mkdir(parents=True)
    (root / "a-cdm").mkdir()
    outside.mkdir()
    (root / "file.csv").write_text("a\n1\n")
    os.symlink(outside, root / "dir-link")

    assert top_folders(root) == ["a-cdm", "b-cdm"]
    assert top_folders(None) == [] and top_folders(tmp_path / "missing") == []
