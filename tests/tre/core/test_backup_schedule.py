"""Scheduled backups: off by default, sealed by the key provider, kept to the last N, reported by
``tre doctor``, and the drill restores the newest into a scratch instance and verifies it."""

from __future__ import annotations

import datetime as dt
import tarfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import make_test_app
from tests.tre.helpers import create_user
from tre.core import jobs
from tre.core.backup import BackupError
from tre.core.backup_schedule import (
    BACKUP_JOB,
    LocalVault,
    backup_name,
    drill,
    last_backup_age,
    schedule,
    take_backup,
)
from tre.core.config import ConfigError, Settings
from tre.models import metadata


def _source(tmp_path: Path, database_url: str, **settings: Any) -> Any:
    app = make_test_app(tmp_path / "instance", database_url, **settings)
    metadata.create_all(app.extensions["tre.db"].engine)
    create_user(app, "ada@nhs.example", ["administrator"])
    app.extensions["tre.platform"].files.put(b"an approved output table\n")
    return app


def _take(app: Any, at: dt.datetime, keep: int = 3) -> Any:
    p = app.extensions["tre.platform"]
    return take_backup(p.db.engine, metadata, p.settings, p.keys, p.files, keep=keep, now=at)


def test_scheduled_backups_are_off_unless_an_interval_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "_PERIODIC", {})
    assert not schedule(Settings.from_env({}, instance_path=tmp_path))
    assert BACKUP_JOB not in jobs._PERIODIC
    assert schedule(Settings.from_env({"TRE_BACKUP_EVERY_HOURS": "6"}, instance_path=tmp_path))
    assert jobs._PERIODIC[BACKUP_JOB] == 6 * 3600


def test_a_negative_interval_or_keeping_none_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TRE_BACKUP_EVERY_HOURS"):
        Settings.from_env({"TRE_BACKUP_EVERY_HOURS": "-1"}, instance_path=tmp_path)
    with pytest.raises(ConfigError, match="TRE_BACKUP_KEEP"):
        Settings.from_env({"TRE_BACKUP_KEEP": "0"}, instance_path=tmp_path)


def test_a_scheduled_backup_is_sealed_and_only_the_newest_are_kept(tmp_path: Path, database_url: str) -> None:
    app = _source(tmp_path, database_url)
    start = dt.datetime(2026, 12, 1, 2, 30, tzinfo=dt.UTC)
    for hours in range(5):
        _take(app, start + dt.timedelta(hours=hours), keep=3)
    vault = LocalVault(tmp_path / "instance" / "backups")
    names = [b.name for b in vault.list()]
    assert names == [backup_name(start + dt.timedelta(hours=h)) for h in (2, 3, 4)]

    stored = vault.root / names[-1]
    assert stored.stat().st_mode & 0o077 == 0
    with pytest.raises(tarfile.TarError):  # ciphertext: not an archive, nothing readable in it
        tarfile.open(stored)
    assert b"ada@nhs.example" not in stored.read_bytes()
    app.extensions["tre.db"].dispose()


def test_the_drill_restores_the_newest_backup_and_verifies_rows_and_the_audit_chain(
    tmp_path: Path, database_url: str
) -> None:
    app = _source(tmp_path, database_url)
    p = app.extensions["tre.platform"]
    _take(app, dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    create_user(app, "bea@nhs.example", ["researcher"])
    _take(app, dt.datetime(2026, 12, 2, tzinfo=dt.UTC))

    report = drill(p.settings, p.keys, metadata)

    assert report.ok, report.problems
    assert report.name == backup_name(dt.datetime(2026, 12, 2, tzinfo=dt.UTC))
    assert report.audit_events >= 2 and report.rows > report.audit_events
    app.extensions["tre.db"].dispose()


def test_the_drill_fails_on_a_backup_that_was_tampered_with(tmp_path: Path) -> None:
    app = _source(tmp_path, f"sqlite:///{tmp_path / 'tre.sqlite'}")
    p = app.extensions["tre.platform"]
    taken = _take(app, dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    stored = tmp_path / "instance" / "backups" / taken.name
    blob = bytearray(stored.read_bytes())
    blob[-40] ^= 1
    stored.write_bytes(bytes(blob))

    with pytest.raises(BackupError, match="cannot be opened"):
        drill(p.settings, p.keys, metadata)
    app.extensions["tre.db"].dispose()


def test_doctor_reports_the_age_of_the_newest_backup_and_fails_when_it_is_stale(tmp_path: Path) -> None:
    app = _source(tmp_path, f"sqlite:///{tmp_path / 'tre.sqlite'}")
    # Not given to the app: its start would turn the periodic job on for every later test.
    settings = Settings.from_env({}, instance_path=tmp_path / "instance", backup_every_hours=24)
    with pytest.raises(RuntimeError, match="no backup"):
        last_backup_age(settings)
    taken = dt.datetime(2026, 12, 1, 2, 30, tzinfo=dt.UTC)
    _take(app, taken)
    assert "newest backup 5 h 0 min old" in last_backup_age(settings, now=taken + dt.timedelta(hours=5))
    with pytest.raises(RuntimeError, match="more than twice"):
        last_backup_age(settings, now=taken + dt.timedelta(hours=49))
    off = Settings.from_env({}, instance_path=settings.instance_path)
    assert "off" in last_backup_age(off)
    app.extensions["tre.db"].dispose()


def test_the_backup_job_stores_a_backup_when_the_worker_runs_it(tmp_path: Path, database_url: str) -> None:
    from tests.disclosure.factories import no_broker, run_queued_jobs
    from tre.core.db import transaction

    app = _source(tmp_path, database_url)
    no_broker()
    db = app.extensions["tre.db"]
    with app.app_context(), transaction(db.session) as s:
        jobs.enqueue(s, BACKUP_JOB, {})
    assert run_queued_jobs(app) == [jobs.SUCCEEDED]
    assert len(LocalVault(tmp_path / "instance" / "backups").list()) == 1
    db.dispose()


def test_tre_backups_drill_prints_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tre.cli import main

    monkeypatch.setenv("TRE_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.delenv("TRE_DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(main, ["init"]).exit_code == 0
    none = runner.invoke(main, ["backups", "drill"])
    assert none.exit_code == 1 and "no stored backup" in none.output

    now = runner.invoke(main, ["backups", "now"])
    assert now.exit_code == 0, now.output
    listed = runner.invoke(main, ["backups", "list"])
    assert "tre-backup-" in listed.output
    result = runner.invoke(main, ["backups", "drill"])
    assert result.exit_code == 0, result.output
    assert "drill passed" in result.output and "audit events verified" in result.output


@pytest.mark.integration
def test_with_files_in_s3_backups_go_to_the_bucket_beside_them_and_the_drill_reads_them_back(
    tmp_path: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    boto3 = pytest.importorskip("boto3", reason="boto3 and moto[server] are in the dev extra")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-test")
    client = boto3.client("s3", endpoint_url=moto_server, region_name="eu-west-2")
    bucket = f"tre-files-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    app = _source(tmp_path, f"sqlite:///{tmp_path / 'tre.sqlite'}", files_s3_bucket=bucket,
                  files_s3_endpoint_url=moto_server, files_s3_region="eu-west-2", files_s3_prefix="tre")
    p = app.extensions["tre.platform"]
    start = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    for day in range(3):
        _take(app, start + dt.timedelta(days=day), keep=2)

    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"])
    backups = [k for k in keys if k.startswith("tre/backups/")]
    assert backups == [f"tre/backups/{backup_name(start + dt.timedelta(days=d))}" for d in (1, 2)]
    assert len(list(p.files.sealed_objects())) == 1  # the store still sees only its one file
    assert not (tmp_path / "instance" / "backups").exists()

    report = drill(p.settings, p.keys, metadata)
    assert report.ok and report.name == backup_name(start + dt.timedelta(days=2))
    assert "newest backup" in last_backup_age(p.settings.__class__.from_env(
        {}, instance_path=p.settings.instance_path, files_s3_bucket=bucket, files_s3_endpoint_url=moto_server,
        files_s3_region="eu-west-2", files_s3_prefix="tre", backup_every_hours=48,
    ), now=start + dt.timedelta(days=3))
    p.db.dispose()
