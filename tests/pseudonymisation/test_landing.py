"""Names in the landing folder: plain relative paths only, no link followed at any step."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pseudonymisation.landing import LandingError, check_name, copy_into_zone, open_in_landing


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


def test_copy_hashes_and_refuses_past_the_limit_leaving_nothing(tmp_path: Path) -> None:
    source = tmp_path / "landing" / "d.csv"
    source.parent.mkdir()
    source.write_bytes(b"a,b\n" + b"1,2\n" * 1000)

    sha, size = copy_into_zone(os.open(source, os.O_RDONLY), tmp_path / "zone" / "d.csv", max_bytes=1 << 20)
    assert (sha, size) == (hashlib.sha256(source.read_bytes()).hexdigest(), source.stat().st_size)
    assert oct((tmp_path / "zone" / "d.csv").stat().st_mode & 0o777) == oct(0o600)

    with pytest.raises(LandingError, match="larger than the limit"):
        copy_into_zone(os.open(source, os.O_RDONLY), tmp_path / "zone" / "big.csv", max_bytes=100)
    assert sorted(p.name for p in (tmp_path / "zone").iterdir()) == ["d.csv"]
