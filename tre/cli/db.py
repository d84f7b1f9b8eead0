"""``tre db``: the database schema (Alembic migrations)."""

from __future__ import annotations

import click

from tre.cli.common import load_settings, redact
from tre.core import migrate
from tre.core.filemodes import ensure_private_folder


@click.group("db")
def db_cli() -> None:
    """Database migrations (Alembic)."""


@db_cli.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Bring the database schema up to date."""
    settings = load_settings()
    ensure_private_folder(settings.instance_path, "instance folder")
    migrate.upgrade(settings.database_url, revision)
    click.echo(f"database at {redact(settings.database_url)} is at revision {revision}")


@db_cli.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Step the schema back to REVISION."""
    migrate.downgrade(load_settings().database_url, revision)


@db_cli.command("current")
def db_current() -> None:
    """Show the schema revision of the database."""
    migrate.current(load_settings().database_url)


@db_cli.command("revision")
@click.option("-m", "--message", required=True)
def db_revision(message: str) -> None:
    """Write a new migration from the difference between the models and the database (developers)."""
    migrate.revision(load_settings().database_url, message)
