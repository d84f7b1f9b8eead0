"""``tre audit``: the audit log."""

from __future__ import annotations

import sys

import click

from tre.cli.common import command_app


@click.group("audit")
def audit_cli() -> None:
    """The audit log."""


@audit_cli.command("verify")
def audit_verify() -> None:
    """Check every link of the audit chain; report the first broken one and exit non-zero."""
    from tre.core.audit import iter_events

    app = command_app()
    platform = app.extensions["tre.platform"]
    with platform.db.session_factory() as s:
        report = platform.audit.verify(iter_events(s))
    if report.ok:
        click.echo(f"audit chain intact: {report.checked} events verified")
        return
    click.echo(
        f"AUDIT CHAIN BROKEN at event {report.first_broken_seq}: {report.problem} "
        f"({report.checked} events before it verified)",
        err=True,
    )
    sys.exit(1)
