"""``tre doctor`` says precisely what is wrong with a deployment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tre.core import migrate
from tre.core.config import Settings
from tre.core.doctor import head_of, run_checks
from tre.core.platform import initialise_keys


@pytest.fixture(autouse=True)
def service_umask() -> Iterator[None]:
    """What the service's entry points do first (tre/core/filemodes.py restrict_umask)."""
    previous = os.umask(0o077)
    yield
    os.umask(previous)


def _embedded(tmp_path: Path) -> Settings:
    instance = tmp_path / "instance"
    instance.mkdir(mode=0o700)
    settings = Settings.from_env({}, instance_path=instance)
    initialise_keys(settings)
    migrate.upgrade(settings.database_url)
    return settings


def test_doctor_passes_a_freshly_initialised_embedded_instance(tmp_path: Path) -> None:
    findings = run_checks(_embedded(tmp_path), head_of(migrate.MIGRATIONS))

    assert [f.check for f in findings if not f.ok] == []


def test_doctor_names_an_unmigrated_database(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    instance.mkdir(mode=0o700)
    settings = Settings.from_env({}, instance_path=instance)
    initialise_keys(settings)

    findings = {f.check: f for f in run_checks(settings, head_of(migrate.MIGRATIONS))}

    assert not findings["database"].ok
    assert "tre db upgrade" in findings["database"].message


def test_doctor_refuses_embedded_choices_in_production(tmp_path: Path) -> None:
    settings = _embedded(tmp_path)
    production = Settings.from_env({}, instance_path=settings.instance_path, environment="production")

    failed = {f.check: f.message for f in run_checks(production, head_of(migrate.MIGRATIONS)) if not f.ok}

    assert "SQLite" in failed["database"]
    assert "loses messages" in failed["broker"]
    assert "TRE_MASTER_KEY" in failed["master key"]
    assert "https://" in failed["web security"]


def test_doctor_names_an_unreachable_broker(tmp_path: Path) -> None:
    settings = _embedded(tmp_path)
    broken = Settings.from_env({}, instance_path=settings.instance_path, broker_url="redis://127.0.0.1:1/0")

    failed = {f.check for f in run_checks(broken, head_of(migrate.MIGRATIONS)) if not f.ok}

    assert failed == {"broker"}
