"""Plumbing every ``tre`` command shares: the settings, the app a command works with, and the account
named by ``--as EMAIL``. Errors become one clear line (``click.ClickException``), never a traceback."""

from __future__ import annotations

from typing import Any

import click

from tre.core.config import ConfigError, Settings


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        # The message names the variable and what it must be; a traceback would only hide it.
        raise click.ClickException(str(exc)) from None


def command_app() -> Any:
    """The app one command works with; its database connections are closed when the command ends,
    so no connection outlives it (and none holds SQLite's lock in a process that runs several)."""
    from tre.app import create_app

    app = create_app()
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(app.extensions["tre.db"].dispose)
    return app


def account(app: Any, email: str) -> Any:
    """The account a command acts as (``--as EMAIL``); the services it calls check its permissions."""
    from sqlalchemy import select

    from tre.core.identity import User

    user = app.extensions["tre.db"].session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise click.ClickException(f"no account {email}")
    return user


def redact(url: str) -> str:
    """Show where a database is without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
