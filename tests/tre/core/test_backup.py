"""A backup restores into a fresh instance (on SQLite or PostgreSQL) with the audit chain intact."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import make_test_app
from tests.tre.helpers import PASSWORD, create_user, identity
from tre.core import migrate
from tre.core.audit import iter_events
from tre.core.backup import BackupError, create_backup, restore_backup
from tre.core.identity import User
from tre.models import metadata


def _source(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'source.sqlite'}"
    migrate.upgrade(url)
    app = make_test_app(tmp_path / "source", url)
    create_user(app, "ada@nhs.example", ["administrator"])
    create_user(app, "rita@nhs.example", ["researcher"])
    sha = app.extensions["tre.platform"].files.put(b"an approved output table\n")
    return app, sha


def test_backup_restored_into_a_fresh_instance_keeps_accounts_files_and_a_valid_chain(
    tmp_path: Path, database_url: str
) -> None:
    source, sha = _source(tmp_path)
    archive = tmp_path / "backup.tar.gz"
    p = source.extensions["tre.platform"]
    create_backup(p.db.engine, metadata, tmp_path / "source", archive,
                  master_key_file=tmp_path / "source" / "master.key", passphrase="long backup passphrase")

    migrate.upgrade(database_url)
    target_instance = tmp_path / "target"
    from tre.core.db import make_engine

    engine = make_engine(database_url)
    restore_backup(archive, engine, metadata, target_instance, passphrase="long backup passphrase")
    engine.dispose()

    target = make_test_app(target_instance, database_url)
    tp = target.extensions["tre.platform"]
    with tp.db.session_factory() as s:
        report = tp.audit.verify(iter_events(s))
    assert report.ok and report.checked > 0
    assert tp.files.get(sha) == b"an approved output table\n"
    assert identity(target).authenticate("rita@nhs.example", PASSWORD).email == "rita@nhs.example"
    # New events chain on after the restored ones.
    create_user(target, "new@nhs.example", ["auditor"])
    with tp.db.session_factory() as s:
        assert tp.audit.verify(iter_events(s)).ok
    tp.db.dispose()
    source.extensions["tre.db"].dispose()


def test_backup_without_the_master_key_holds_no_key_in_clear(tmp_path: Path) -> None:
    source, _ = _source(tmp_path)
    archive = tmp_path / "b.tar.gz"
    p = source.extensions["tre.platform"]
    create_backup(p.db.engine, metadata, tmp_path / "source", archive)
    master = (tmp_path / "source" / "master.key").read_bytes()

    with tarfile.open(archive) as tar:
        names = tar.getnames()
        blobs = [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]  # type: ignore[union-attr]
    assert not any(n.startswith("keys/") for n in names)
    assert not any(master in b for b in blobs)
    source.extensions["tre.db"].dispose()


def test_restore_refuses_a_database_that_already_has_data(tmp_path: Path) -> None:
    source, _ = _source(tmp_path)
    archive = tmp_path / "b.tar.gz"
    p = source.extensions["tre.platform"]
    create_backup(p.db.engine, metadata, tmp_path / "source", archive)

    with pytest.raises(BackupError, match="not empty"):
        restore_backup(archive, p.db.engine, metadata, tmp_path / "source")
    assert len(p.db.session.scalars(select(User)).all()) == 2
    source.extensions["tre.db"].dispose()


def test_restore_refuses_an_archive_with_path_traversal(tmp_path: Path, database_url: str) -> None:
    evil = tmp_path / "evil.tar.gz"
    import io

    with tarfile.open(evil, "w:gz") as tar:
        data = b"{}"
        info = tarfile.TarInfo("../../etc/owned")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    from tre.core.db import make_engine

    engine = make_engine(database_url)
    with pytest.raises(BackupError, match="unsafe name"):
        restore_backup(evil, engine, metadata, tmp_path / "t")
    engine.dispose()
    assert not (tmp_path.parent.parent / "etc" / "owned").exists()
