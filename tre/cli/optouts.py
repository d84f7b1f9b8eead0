"""``tre optout``: opt-out lists that extracts apply."""

from __future__ import annotations

from pathlib import Path

import click

from tre.cli.common import account, command_app


@click.group("optout")
def optout_cli() -> None:
    """Opt-out lists (the national data opt-out, a source's own restrictions) that extracts apply."""


@optout_cli.command("load")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", default=None, help="Restrict the list to this catalogued dataset (default: every source).")
@click.option("--description", default="", help="Where the list came from.")
@click.option("--as", "as_email", required=True, help="The data custodian loading it (recorded in the audit log).")
def optout_load(name: str, file: Path, dataset: str | None, description: str, as_email: str) -> None:
    """Load FILE (one NHS number a line, or CSV with them first) as the next version of list NAME.

    Any line that is not a valid NHS number refuses the whole file; the lines are named by number."""
    from pseudonymisation.optout_lists import OptOutError, OptOutLists

    app = command_app()
    p = app.extensions["tre.platform"]
    with app.app_context():
        try:
            version = OptOutLists(p.db.session, p.audit, p.files).load(
                account(app, as_email), name, file.read_bytes(), dataset=dataset, description=description
            )
        except OptOutError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"{version.name} version {version.version}: {version.number_count:,} NHS numbers "
               f"({version.duplicates} duplicates dropped), fingerprint {version.fingerprint[:16]}")


@optout_cli.command("list")
def optout_list() -> None:
    """The version in force of every list: name, scope, version, count and fingerprint."""
    from pseudonymisation.optout_lists import current_versions

    app = command_app()
    with app.app_context():
        for v in current_versions(app.extensions["tre.db"].session):
            scope = f"dataset {v.dataset_id}" if v.dataset_id else "every source"
            click.echo(f"{v.name}\tv{v.version}\t{v.number_count:,} numbers\t{scope}\t{v.fingerprint[:16]}")
