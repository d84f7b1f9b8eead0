"""The demo's landing folder inside the instance: made private, written once, never through a link."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tre.demo.omop import DEMO_OMOP_FOLDER, load_demo_landing


def test_the_demo_landing_is_private_and_written_once(tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir(mode=0o755)
    (tmp_path / "landing").chmod(0o755)  # an operator's lax folder is taken back to 0700

    folder = load_demo_landing(tmp_path, persons=5)
    first = (folder / "person.csv").read_bytes()
    again = load_demo_landing(tmp_path, persons=9)  # would write nine people, were it to write

    assert folder == again == tmp_path / "landing" / DEMO_OMOP_FOLDER
    assert stat.S_IMODE((tmp_path / "landing").stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "person.csv").read_bytes() == first


def test_a_landing_folder_that_is_a_link_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "landing").symlink_to(elsewhere)

    with pytest.raises(ValueError, match="is a link"):
        load_demo_landing(instance, persons=5)
    assert list(elsewhere.iterdir()) == []
