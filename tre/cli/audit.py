"""``tre audit``: the audit log."""

from __future__ import annotations

import sys

import click

from tre.cli.common import command_app


@click.group("audit")
def audit_cli() -> None:
    """The audit log."""


@audit_cli.command("verify")
@click.option(
    "--expect",
    metavar="SEQ:HASH",
    multiple=True,
    help="A head printed by an earlier verify and kept elsewhere (an external anchor): the event SEQ "
    "must still be in the chain with this hash. Give it once for each lane's head.",
)
def audit_verify(expect: tuple[str, ...] = ()) -> None:
    """Check every link of the audit chain and the chain against its signed checkpoint (so events
    cut off its end are found); report the first problem and exit non-zero."""
    from sqlalchemy import select

    from tre.core.audit import AuditEvent, iter_events

    anchors = [_parse_anchor(text) for text in expect]
    app = command_app()
    platform = app.extensions["tre.platform"]
    with platform.db.session_factory() as s:
        report = platform.audit.verify(iter_events(s))
    if not report.ok:
        where = f"at event {report.first_broken_seq}" if report.first_broken_seq else "(checkpoint)"
        click.echo(
            f"AUDIT CHAIN BROKEN {where}: {report.problem} ({report.checked} events before it verified)", err=True
        )
        sys.exit(1)
    for seq, expected_hash in anchors:
        with platform.db.session_factory() as s:
            found = s.scalar(select(AuditEvent.chain_hash).where(AuditEvent.seq == seq))
        if found != expected_hash:
            problem = "is missing" if found is None else "has another hash"
            click.echo(f"AUDIT CHAIN BROKEN at event {seq}: the anchored event {problem}", err=True)
            sys.exit(1)
    click.echo(f"audit chain intact: {report.checked} events verified")
    if report.checkpoint is not None:
        click.echo(f"checkpoint of {report.checkpoint.at}: {report.checkpoint.count} events, matched")
    else:
        click.echo("no checkpoint yet: events cut off the end could not be checked")
    for lane, seq, chain_hash in report.heads:
        # One chain per lane (ADR 0016): each lane's last event is a head worth keeping.
        click.echo(f"head of lane {lane} (keep it elsewhere, check later with --expect): {seq}:{chain_hash}")


def _parse_anchor(text: str) -> tuple[int, str]:
    seq, _, chain_hash = text.partition(":")
    if not seq.isdigit() or len(chain_hash) != 64:
        raise click.BadParameter("give SEQ:HASH as printed by `tre audit verify`", param_hint="--expect")
    return int(seq), chain_hash.lower()
