"""``tre users``: the first administrator account."""

from __future__ import annotations

import click

from tre.cli.common import command_app


@click.group("users")
def users_cli() -> None:
    """Accounts (the first administrator; everything else is in the web pages and the API)."""


@users_cli.command("create-admin")
@click.option("--email", required=True)
@click.option("--name", "display_name", required=True)
@click.password_option()
def users_create_admin(email: str, display_name: str, password: str) -> None:
    """Create an administrator account; allowed from the command line of the server only."""
    from tre.core.identity import Identity, IdentityError

    app = command_app()
    p = app.extensions["tre.platform"]
    try:
        Identity(p.db.session, p.keys, p.audit).create_user(
            None, email, display_name, ["administrator"], password, bootstrap=True
        )
    except IdentityError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created administrator {email}")
