"""``tre extract``: build and inspect project extracts."""

from __future__ import annotations

import click

from tre.cli.common import account, command_app


@click.group("extract")
def extract_cli() -> None:
    """Project extracts (approved columns, tokenised and generalised)."""


@extract_cli.command("build")
@click.argument("project_id")
@click.option("--as", "as_email", required=True, help="The data custodian asking (recorded in the audit log).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Run it here and show progress.")
def extract_build(project_id: str, as_email: str, wait: bool) -> None:
    """Build PROJECT's extract (queued for a worker, or run here with --wait)."""
    from pseudonymisation.services import ExtractServiceError
    from pseudonymisation.tasks import extracts_service
    from tre.core import jobs

    app = command_app()
    p = app.extensions["tre.platform"]
    if wait:
        jobs.set_dispatcher(None)  # this process runs the job itself, below
    with app.app_context():
        service = extracts_service(p)
        try:
            extract = service.request(account(app, as_email), project_id)
        except ExtractServiceError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"extract {extract.id}: {extract.state} (job {extract.job_id})")
        if wait and extract.state not in ("succeeded", "failed") and extract.job_id:
            outcome = jobs.run_job(p.db, extract.job_id, lease_seconds=p.settings.job_lease_seconds)
            p.db.session.expire_all()
            job = p.db.session.get(jobs.Job, extract.job_id)
            click.echo(f"job {extract.job_id}: {outcome}" + (f" — {job.last_error}" if job and job.last_error else ""))
            # A long source was split: run its partitions, then the merge the last one enqueued, here.
            from sqlalchemy import select

            from pseudonymisation.services import MERGE_JOB, PARTITION_JOB

            for kind in (PARTITION_JOB, MERGE_JOB):
                queued = p.db.session.scalars(select(jobs.Job.id).where(
                    jobs.Job.idempotency_key.like(f"{kind}:{extract.id}%"), jobs.Job.state == jobs.QUEUED
                ).order_by(jobs.Job.created_at)).all()
                p.db.session.rollback()  # end the read: on SQLite it holds the write lock
                for job_id in queued:
                    outcome = jobs.run_job(p.db, job_id, lease_seconds=p.settings.job_lease_seconds)
                    click.echo(f"{kind} job {job_id}: {outcome}")
            p.db.session.expire_all()
            done = p.db.session.get(type(extract), extract.id)
            click.echo(f"extract {extract.id}: {done.state if done else 'missing'}")


@extract_cli.command("status")
@click.argument("project_id")
def extract_status(project_id: str) -> None:
    """Show PROJECT's latest extract and its job's progress."""
    from pseudonymisation.tasks import extracts_service
    from tre.core.jobs import Job

    app = command_app()
    p = app.extensions["tre.platform"]
    extract = extracts_service(p).latest(project_id)
    if extract is None:
        raise click.ClickException("no extract for that project")
    job = p.db.session.get(Job, extract.job_id) if extract.job_id else None
    click.echo(f"extract {extract.id}: {extract.state}")
    if job is not None:
        click.echo(f"job {job.id}: {job.state}, {job.progress:.0%} {job.progress_message} "
                   f"(attempt {job.attempts}/{job.max_attempts}){' — ' + job.last_error if job.last_error else ''}")


@extract_cli.command("manifest")
@click.argument("project_id")
@click.option("--optouts", "optouts_only", is_flag=True, help="Only say which opt-out lists were applied or skipped.")
def extract_manifest(project_id: str, optouts_only: bool) -> None:
    """Print PROJECT's latest extract manifest (counts, transforms, k-anonymity, opt-outs; never keys)."""
    import json

    from pseudonymisation.tasks import extracts_service

    app = command_app()
    extract = extracts_service(app.extensions["tre.platform"]).latest(project_id)
    if extract is None or not extract.manifest:
        raise click.ClickException("no finished extract for that project")
    if not optouts_only:
        click.echo(json.dumps(extract.manifest, indent=2))
        return
    for dataset, entries in sorted((extract.manifest.get("optouts") or {}).items()):
        if not entries:
            click.echo(f"{dataset}: no opt-out list applies")
        for e in entries:
            if e.get("status") == "applied":
                outcome = f"applied, {e['rows_removed']:,} rows removed"
            elif e.get("exempt"):
                outcome = f"skipped (exempt: {e['exempt']['basis']}), {e['rows_not_removed']:,} rows kept"
            else:
                outcome = e.get("status", "")
            click.echo(f"{dataset}: {e['name']} v{e['version']} ({e['fingerprint'][:16]}): {outcome}")
