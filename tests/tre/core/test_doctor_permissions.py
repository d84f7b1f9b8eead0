"""``tre doctor`` fails a deployment whose own files other accounts could read or change, naming each."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tre.core import migrate
from tre.core.config import Settings
from tre.core.doctor import head_of, run_checks
from tre.core.filemodes import private_group
from tre.core.platform import initialise_keys


@pytest.fixture(autouse=True)
def service_umask() -> Iterator[None]:
    """What the service's entry points do first (tre/core/filemodes.py restrict_umask)."""
    previous = os.umask(0o077)
    yield
    os.umask(previous)


@pytest.fixture
def deployment(tmp_path: Path) -> Settings:
    """An initialised instance with a database, a broker file and a stored file, all made private."""
    instance = tmp_path / "instance"
    instance.mkdir(mode=0o700)
    settings = Settings.from_env({}, instance_path=instance)
    initialise_keys(settings)
    migrate.upgrade(settings.database_url)
    (instance / "broker.sqlite").touch()
    (instance / "files" / "ab").mkdir(parents=True)
    (instance / "files" / "ab" / "sealed-object").write_bytes(b"sealed")
    return settings


def _another_group() -> int:
    """A group other than the service's own, to which a test may give a file."""
    if os.geteuid() == 0:
        return 65534  # nogroup
    others = [gid for gid in os.getgroups() if gid != os.getgid()]
    if not others:
        pytest.skip("this account belongs to no second group to give a file to")
    return others[0]


def _lax(path: Path, mode: int) -> None:
    """Give ``path`` ``mode``, in a group other accounts may be in (the service's own private group's
    bits grant nobody else anything and are allowed)."""
    os.chown(path, -1, _another_group())
    path.chmod(mode)


def _failures(settings: Settings) -> dict[str, str]:
    return {f.check: f.message for f in run_checks(settings, head_of(migrate.MIGRATIONS)) if not f.ok}


def test_doctor_passes_a_deployment_whose_files_are_the_services_alone(deployment: Settings) -> None:
    assert _failures(deployment) == {}


def test_doctor_fails_an_instance_folder_other_accounts_may_enter(deployment: Settings) -> None:
    deployment.instance_path.chmod(0o711)

    failed = _failures(deployment)

    assert "mode 711" in failed["instance folder"] and "chmod 700" in failed["instance folder"]
    assert str(deployment.instance_path) in failed["private files"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
def test_doctor_fails_a_database_readable_or_writable_by_group_or_others(deployment: Settings, mode: int) -> None:
    database = deployment.instance_path / "tre.sqlite"
    _lax(database, mode)

    failed = _failures(deployment)

    assert set(failed) == {"private files"}
    assert f"{database} (mode {mode:o})" in failed["private files"]


def test_doctor_names_every_offending_path_database_broker_keys_and_file_store(deployment: Settings) -> None:
    instance = deployment.instance_path
    lax = {
        instance / "tre.sqlite": 0o644,
        instance / "broker.sqlite": 0o644,
        instance / "master.key": 0o640,
        instance / "audit-chain.key": 0o644,
        instance / "hub-api-token": 0o604,
        instance / "files": 0o755,
        instance / "files" / "ab" / "sealed-object": 0o644,
    }
    for path, mode in lax.items():
        _lax(path, mode)

    failed = _failures(deployment)

    message = failed["private files"]
    assert message.startswith(f"{len(lax)} of the service's files or folders are open to other accounts")
    for path, mode in lax.items():
        assert f"{path} (mode {mode:o})" in message
    assert "mode 600" not in message and "mode 700" not in message
    assert "600" in failed["master key"]


def test_group_bits_of_the_services_own_private_group_are_allowed(deployment: Settings) -> None:
    # As on Kubernetes: the pods' fsGroup is the service's own group, and the kubelet gives the
    # volume's files to it (g+rw, setgid folders); no other account is in that group.
    own = private_group()
    if own is None:
        pytest.skip("the service's primary group has other members here")
    instance = deployment.instance_path
    instance.chmod(0o2770)
    (instance / "tre.sqlite").chmod(0o660)
    (instance / "files").chmod(0o2770)

    assert _failures(deployment) == {}

    _lax(instance / "tre.sqlite", 0o660)

    assert f"{instance / 'tre.sqlite'} (mode 660)" in _failures(deployment)["private files"]


def test_doctor_passes_again_once_the_lax_files_are_made_private(deployment: Settings) -> None:
    instance = deployment.instance_path
    (instance / "tre.sqlite").chmod(0o644)
    (instance / "files").chmod(0o755)
    assert "private files" in _failures(deployment)

    (instance / "tre.sqlite").chmod(0o600)
    (instance / "files").chmod(0o700)

    assert _failures(deployment) == {}


def test_extracts_shared_with_their_project_group_are_not_offences_but_staging_copies_are(
    deployment: Settings,
) -> None:
    extract = deployment.extracts_path / "PROJ-A" / "patients"
    extract.mkdir(parents=True)
    for folder in (deployment.extracts_path, extract.parent, extract):
        folder.chmod(0o750)
    (extract / "part-000000.parquet").touch()
    (extract / "part-000000.parquet").chmod(0o640)
    staging = deployment.extracts_path / ".staging" / "PROJ-A"
    staging.mkdir(parents=True)
    (staging / "copy.arrow").touch()
    (staging / "copy.arrow").chmod(0o644)

    failed = _failures(deployment)

    assert str(staging / "copy.arrow") in failed["private files"]
    assert "PROJ-A/patients" not in failed["private files"]


def test_a_database_file_outside_the_instance_folder_is_checked_too(deployment: Settings, tmp_path: Path) -> None:
    elsewhere = tmp_path / "db" / "tre.sqlite"
    elsewhere.parent.mkdir()
    os.replace(deployment.instance_path / "tre.sqlite", elsewhere)
    elsewhere.chmod(0o644)
    moved = Settings.from_env({}, instance_path=deployment.instance_path, database_url=f"sqlite:///{elsewhere}")

    assert f"{elsewhere} (mode 644)" in _failures(moved)["private files"]


def test_only_the_first_paths_are_listed_with_a_count_of_the_rest(deployment: Settings) -> None:
    store = deployment.instance_path / "files" / "ab"
    for n in range(14):
        (store / f"object-{n}").touch()
        (store / f"object-{n}").chmod(0o644)

    message = _failures(deployment)["private files"]

    assert message.startswith("14 of the service's files")
    assert "and 4 more" in message


def test_an_extract_readable_by_everyone_is_an_offence(deployment: Settings) -> None:
    extract = deployment.extracts_path / "PROJ-A" / "patients"
    extract.mkdir(parents=True)
    deployment.extracts_path.chmod(0o711)  # others may pass through the root, as workspaces must
    for folder in (extract.parent, extract):
        folder.chmod(0o750)
    part = extract / "part-000000.parquet"
    part.touch()
    part.chmod(0o644)
    assert _failures(deployment)["private files"].startswith("1 of the service's files")
    assert f"{part} (mode 644)" in _failures(deployment)["private files"]

    part.chmod(0o640)

    assert _failures(deployment) == {}
