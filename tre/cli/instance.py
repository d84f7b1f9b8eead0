"""``tre init`` and ``tre doctor``: set up an instance and check a deployment."""

from __future__ import annotations

import sys

import click

from tre.cli.common import command_app, load_settings
from tre.core import migrate
from tre.core.filemodes import ensure_private_folder


@click.command("init")
def init() -> None:
    """Create the instance folder, its secrets and the database schema. Safe to run again."""
    settings = load_settings()
    ensure_private_folder(settings.instance_path, "instance folder")

    command_app()  # creates the session secret and the keys on first run
    migrate.upgrade(settings.database_url)
    click.echo(f"instance ready in {settings.instance_path}")


@click.command("doctor")
def doctor() -> None:
    """Check this deployment's configuration and reachability; exit non-zero on any problem."""
    from tre.core.doctor import head_of, run_checks

    findings = run_checks(load_settings(), head_of(migrate.MIGRATIONS))
    for f in findings:
        click.echo(f"{'ok  ' if f.ok else 'FAIL'}  {f.check}: {f.message}")
    if not all(f.ok for f in findings):
        sys.exit(1)
