"""``tre jobs``: background jobs."""

from __future__ import annotations

import sys
import time

import click

from tre.cli.common import command_app


@click.group("jobs")
def jobs_cli() -> None:
    """Background jobs."""


@jobs_cli.command("sweep")
def jobs_sweep() -> None:
    """Requeue jobs whose worker died and re-send jobs nobody picked up (the worker does this too)."""
    from tre.core import jobs

    app = command_app()
    settings = app.extensions["tre.settings"]
    report = jobs.sweep(app.extensions["tre.db"], requeue_after_seconds=settings.job_requeue_after_seconds)
    click.echo(f"requeued {report.requeued_lost}, resent {report.resent_stale}, failed {report.failed}")


@jobs_cli.command("selftest")
@click.option("--timeout", default=60, show_default=True, help="Seconds to wait for a worker.")
def jobs_selftest(timeout: int) -> None:
    """Send a diagnostic job and wait for a worker to finish it."""
    from tre.core import jobs
    from tre.core.db import transaction

    app = command_app()
    db = app.extensions["tre.db"]
    with app.app_context(), transaction(db.session) as s:
        job = jobs.enqueue(s, "kernel.selftest", {"sleep": 0})
        job_id = job.id
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A short session per look: on SQLite an open transaction would hold the write lock.
        with db.session_factory() as s:
            job = s.get(jobs.Job, job_id)
        if job is not None and job.state in (jobs.SUCCEEDED, jobs.FAILED):
            click.echo(f"job {job_id}: {job.state}")
            sys.exit(0 if job.state == jobs.SUCCEEDED else 1)
        time.sleep(0.5)
    click.echo(f"job {job_id}: no worker finished it within {timeout}s", err=True)
    sys.exit(1)
