"""The identifiable zone's copies (pseudonymisation.zone): sealed under a key of their own that only
the key provider can unwrap, read back through ``SourceFile`` exactly, refused past the size limit
leaving nothing; a file that is not sealed is read as it is."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import pytest

from pseudonymisation import zone
from pseudonymisation.landing import LandingError
from pseudonymisation.sealed import SealedFileError, is_sealed, read_header
from tre.core.keys import InMemoryKeyProvider

CONTENT = b"nhs_number,name,postcode\n" + b"9434765919,Ada Lovelace,LS1 4AP\n" * 500


def landed(tmp_path: Path) -> Path:
    source = tmp_path / "landing" / "d.csv"
    source.parent.mkdir()
    source.write_bytes(CONTENT)
    return source


def test_a_copy_is_sealed_at_rest_and_reads_back_exactly(tmp_path: Path) -> None:
    keys = InMemoryKeyProvider()
    target = tmp_path / "zone" / "d.csv"
    sha, size = zone.seal_into_zone(os.open(landed(tmp_path), os.O_RDONLY), target, keys, max_bytes=1 << 20)

    assert (sha, size) == (hashlib.sha256(CONTENT).hexdigest(), len(CONTENT))
    assert is_sealed(target) and oct(target.stat().st_mode & 0o777) == oct(0o600)
    on_disk = target.read_bytes()
    assert b"9434765919" not in on_disk and b"Lovelace" not in on_disk and b"LS1 4AP" not in on_disk
    source = zone.source(target, keys)
    with source.open() as handle:
        assert handle.read() == CONTENT
    assert source.size() == len(CONTENT)


def test_another_services_keys_cannot_open_a_copy(tmp_path: Path) -> None:
    target = tmp_path / "zone" / "d.csv"
    zone.seal_into_zone(os.open(landed(tmp_path), os.O_RDONLY), target, InMemoryKeyProvider(), max_bytes=1 << 20)
    with pytest.raises(SealedFileError, match="key cannot be opened"):
        zone.source(target, InMemoryKeyProvider()).open()


def test_a_copy_past_the_limit_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    zone_dir = tmp_path / "zone"
    with pytest.raises(LandingError, match="larger than the limit"):
        zone.seal_into_zone(os.open(landed(tmp_path), os.O_RDONLY), zone_dir / "big.csv", InMemoryKeyProvider(),
                            max_bytes=100)
    assert list(zone_dir.iterdir()) == []


def test_a_file_that_is_not_sealed_is_read_as_it_is(tmp_path: Path) -> None:
    with zone.source(landed(tmp_path), InMemoryKeyProvider()).open() as handle:
        assert handle.read() == CONTENT


def test_a_copy_survives_a_master_key_rotation_once_its_key_is_rewrapped(tmp_path: Path) -> None:
    keys = InMemoryKeyProvider()
    target = tmp_path / "zone" / "d.csv"
    zone.seal_into_zone(os.open(landed(tmp_path), os.O_RDONLY), target, keys, max_bytes=1 << 20)
    old = keys.current_version
    keys.rotate()

    assert zone.rewrap(target, keys) is True
    assert zone.rewrap(target, keys) is False  # already under the current version
    keys.retire(old)
    with zone.source(target, keys).open() as handle:
        assert handle.read() == CONTENT


def test_a_wrapped_key_taken_from_another_copy_does_not_open_this_one(tmp_path: Path) -> None:
    keys = InMemoryKeyProvider()
    first, second = tmp_path / "zone" / "a.csv", tmp_path / "zone" / "b.csv"
    source = landed(tmp_path)
    for target in (first, second):
        zone.seal_into_zone(os.open(source, os.O_RDONLY), target, keys, max_bytes=1 << 20)
    with open(first, "rb") as a, open(second, "rb") as b:
        (header_a, _, _, wrapped_a), (_, _, _, wrapped_b) = read_header(a), read_header(b)
    assert len(wrapped_a) == len(wrapped_b)
    forged = bytearray(first.read_bytes())
    at = len(header_a) - len(wrapped_a)
    forged[at : len(header_a)] = wrapped_b  # b's wrapped key in a's header
    first.write_bytes(bytes(forged))
    with pytest.raises(SealedFileError, match="key cannot be opened"):
        zone.source(first, keys).open()


def test_one_pass_gives_the_same_copy_sha_and_report_as_sealing_then_checking(tmp_path: Path) -> None:
    from pseudonymisation.delivery_checks import DeliveryRules, ExpectedColumn, check_delivery

    keys = InMemoryKeyProvider()
    expected = [ExpectedColumn("nhs_number"), ExpectedColumn("name"), ExpectedColumn("postcode")]
    rules = DeliveryRules(nhs_number_column="nhs_number", key_columns=("nhs_number",))

    def check(source):  # noqa: ANN001, ANN202
        return check_delivery(source, expected, rules, today=dt.date(2026, 12, 6), chunk_bytes=4096)

    two = tmp_path / "zone" / "two" / "d.csv"
    sha, size = zone.seal_into_zone(os.open(landed(tmp_path), os.O_RDONLY), two, keys, max_bytes=1 << 20)
    before = check(zone.source(two, keys))
    one = tmp_path / "zone" / "one" / "d.csv"
    opened = os.open(tmp_path / "landing" / "d.csv", os.O_RDONLY)
    sha1, size1, after = zone.seal_into_zone_reading(opened, one, keys, max_bytes=1 << 20, read=check)

    assert (sha1, size1) == (sha, size) == (hashlib.sha256(CONTENT).hexdigest(), len(CONTENT))
    assert after.to_dict() == before.to_dict() and after.to_dict()["uniqueness"]["duplicate_rows"] == 499
    assert is_sealed(one) and b"Lovelace" not in one.read_bytes()
    assert zone.plaintext_sha256(zone.source(one, keys)) == (sha, size)
    assert sorted(p.name for p in one.parent.iterdir()) == ["d.csv"]
