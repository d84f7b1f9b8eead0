"""The ``tre`` command: set up an instance, migrate, load demo data, run the service and its workers.

Each command group lives in its own module here; this one only assembles them. A new group is a
module with a ``click.group`` and one ``main.add_command`` line below."""

from __future__ import annotations

import os

import click

from tre.cli.audit import audit_cli
from tre.cli.backup import backup, backups_cli, restore
from tre.cli.common import command_app
from tre.cli.db import db_cli
from tre.cli.extracts import extract_cli
from tre.cli.instance import doctor, init
from tre.cli.jobs import jobs_cli
from tre.cli.keys import keys_cli
from tre.cli.optouts import optout_cli
from tre.cli.processes import beat_command, run, worker
from tre.cli.users import users_cli
from tre.core.filemodes import restrict_umask

__all__ = ["command_app", "main"]


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Trusted research environment control plane."""
    # Everything a command writes, and every process it starts, is the service's alone. The old
    # mask comes back when the command ends, which matters only to a caller in the same process.
    previous = restrict_umask()
    ctx.call_on_close(lambda: os.umask(previous))


for _command in (
    db_cli, init, doctor, backup, backups_cli, restore, audit_cli, extract_cli, optout_cli, keys_cli, users_cli,
    jobs_cli, worker, beat_command, run,
):
    main.add_command(_command)


def _register_demo() -> None:
    from tre.demo.cli import demo_cli
    from tre.demo.commands import code_command, load_command

    demo_cli.add_command(load_command)
    demo_cli.add_command(code_command)
    main.add_command(demo_cli)


_register_demo()
