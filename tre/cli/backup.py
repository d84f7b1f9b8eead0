"""``tre backup`` and ``tre restore``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tre.cli.audit import audit_verify
from tre.cli.common import command_app, load_settings
from tre.core import migrate


@click.command("backup")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--with-master-key", is_flag=True, help="Include the master key, wrapped with a passphrase.")
def backup(archive: Path, with_master_key: bool) -> None:
    """Write the database, stored files and wrapped keys to ARCHIVE (.tar.gz)."""
    from tre.core.backup import BackupError, create_backup
    from tre.core.db import make_engine
    from tre.core.doctor import head_of
    from tre.models import metadata

    settings = load_settings()
    passphrase = None
    if with_master_key and settings.key_provider in ("aws-kms", "pkcs11"):
        raise click.ClickException(
            f"TRE_KEY_PROVIDER is {settings.key_provider}: the keyring is always in the backup, wrapped by "
            "the key service, so --with-master-key has nothing to add"
        )
    if with_master_key:
        passphrase = os.environ.get("TRE_BACKUP_PASSPHRASE") or click.prompt(
            "Passphrase for the master key", hide_input=True, confirmation_prompt=True
        )
    engine = make_engine(settings.database_url)
    from tre.core.filestore import file_store_for
    from tre.core.keyservices import key_provider_for

    store = file_store_for(settings, key_provider_for(settings))
    try:
        summary = create_backup(
            engine,
            metadata,
            settings.instance_path,
            archive,
            master_key_file=settings.instance_path / "master.key" if with_master_key else None,
            passphrase=passphrase,
            revision=head_of(migrate.MIGRATIONS),
            files=store,
        )
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(
        f"backup written to {summary.path}: {sum(summary.tables.values())} rows, {summary.files} files"
        + (
            ", master key wrapped with the passphrase"
            if summary.includes_master_key
            else f", master keyring wrapped by {settings.key_provider}"
            if settings.key_provider in ("aws-kms", "pkcs11")
            else ", without the master key (keep it safe separately)"
        )
    )


@click.command("restore")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def restore(archive: Path) -> None:
    """Restore ARCHIVE into this (fresh) instance and database, then verify the audit chain."""
    from tre.core.backup import BackupError, read_manifest, restore_backup
    from tre.core.db import make_engine
    from tre.core.doctor import head_of
    from tre.models import metadata

    settings = load_settings()
    try:
        manifest = read_manifest(archive)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    passphrase = None
    if manifest.get("includes_master_key") and not (settings.instance_path / "master.key").exists():
        passphrase = os.environ.get("TRE_BACKUP_PASSPHRASE") or click.prompt("Passphrase", hide_input=True)
    # With a key service the archive carries the wrapped keyring; the service's key must be the same.
    has_key = (settings.key_provider in ("aws-kms", "pkcs11") or (settings.instance_path / "master.key").exists()
               or os.environ.get("TRE_MASTER_KEY"))
    if not manifest.get("includes_master_key") and not has_key:
        raise click.ClickException(
            "this backup does not carry the master key: put the original master.key in the instance "
            "folder, set TRE_MASTER_KEY, or set TRE_KEY_PROVIDER to the key service it was wrapped by"
        )
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        from tre.core.filestore import file_store_for
        from tre.core.keyservices import key_provider_for

        store = file_store_for(settings, key_provider_for(settings))
        restore_backup(archive, engine, metadata, settings.instance_path, passphrase=passphrase, files=store,
                       revision=head_of(migrate.MIGRATIONS))
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(
        f"restored {sum(manifest['tables'].values())} rows and {manifest['files']} files; checking the audit chain"
    )
    ctx = click.get_current_context()
    ctx.invoke(audit_verify)


@click.group("backups")
def backups_cli() -> None:
    """Scheduled, encrypted backups beside the stored files (TRE_BACKUP_EVERY_HOURS, TRE_BACKUP_KEEP)."""


@backups_cli.command("now")
def backups_now() -> None:
    """Take a scheduled-style backup now: sealed, stored beside the files, old ones pruned."""
    from tre.core.backup import BackupError
    from tre.core.backup_schedule import take_backup
    from tre.core.db import Base

    app = command_app()
    p = app.extensions["tre.platform"]
    try:
        result = take_backup(p.db.engine, Base.metadata, p.settings, p.keys, p.files)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backup {result.name} stored in {result.where}: {result.rows} rows, {result.files} files, "
               f"{result.size:,} bytes sealed" + (f"; removed {len(result.removed)} older" if result.removed else ""))


@backups_cli.command("list")
def backups_list() -> None:
    """The stored backups, oldest first, with their age."""
    import datetime as dt

    from tre.core.backup_schedule import vault_for

    vault = vault_for(load_settings())
    backups = vault.list()
    if not backups:
        click.echo(f"no stored backup in {vault.describe()}")
    now = dt.datetime.now(dt.UTC)
    for b in backups:
        hours = (now - b.taken_at).total_seconds() / 3600
        click.echo(f"{b.name}\t{b.size:,} bytes\t{hours:.1f} h old")


@backups_cli.command("drill")
@click.option("--name", default=None, help="The stored backup to drill (default: the newest).")
def backups_drill(name: str | None) -> None:
    """Restore the newest stored backup into a scratch instance and verify it; exit 1 if it fails."""
    from tre.core.backup import BackupError
    from tre.core.backup_schedule import drill
    from tre.core.db import Base

    app = command_app()
    p = app.extensions["tre.platform"]
    try:
        report = drill(p.settings, p.keys, Base.metadata, name=name)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"drill of {report.name}: {report.tables} tables, {report.rows} rows restored, "
               f"{report.audit_events} audit events verified in {report.seconds:.1f} s")
    for problem in report.problems:
        click.echo(f"PROBLEM: {problem}", err=True)
    if not report.ok:
        sys.exit(1)
    click.echo("drill passed")
