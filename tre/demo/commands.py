"""``tre demo load`` and ``tre demo code``: demo accounts and data for a newcomer's first run."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tre.core.config import DEMO_ENVIRONMENTS, Settings
from tre.core.filemodes import ensure_private_folder

DEMO_PATIENTS = 100_000


@click.command("load")
@click.option("--patients", type=click.IntRange(min=1), default=DEMO_PATIENTS, show_default=True)
def load_command(patients: int) -> None:
    """Create the demo accounts and synthetic data (skips what is already there)."""
    settings = Settings.from_env()
    if settings.environment not in DEMO_ENVIRONMENTS:
        raise click.ClickException("demo data is refused outside the embedded setup")
    from tre.cli import command_app
    from tre.core.identity import Identity
    from tre.demo.accounts import load_accounts

    app = command_app()
    p = app.extensions["tre.platform"]
    with app.app_context():
        accounts = load_accounts(Identity(p.db.session, p.keys, p.audit), settings.instance_path)
        click.echo(f"{len(accounts)} demo accounts ready")
        # The raw sources (names, NHS numbers): the service's alone, like everything it writes.
        data_dir = ensure_private_folder(settings.instance_path / "demo-data", "demo sources folder")
        if not (data_dir / "datasets.json").exists():
            from tre.demo import synthetic

            result = synthetic.generate(data_dir, patients=patients, progress=sys.stderr.isatty())
            click.echo(f"synthetic data for {patients:,} patients in {data_dir}: {result['rows']}")
        from tre.demo.catalogue import register_demo_datasets

        register_demo_datasets(app, data_dir)
        from tre.demo.accounts import DOMAIN
        from tre.demo.optouts import DEMO_LIST, load_demo_optouts

        loaded = load_demo_optouts(app, data_dir, f"cara.custodian@{DOMAIN}")
        if loaded is not None:
            click.echo(f"opt-out list {DEMO_LIST!r}: {loaded:,} synthetic patients opted out")
        _build_demo_extracts(app)
    _load_demo_landing(settings)


def _load_demo_landing(settings: Settings) -> None:
    """The instance's landing folder with the demo's OMOP tables, for a custodian to register on the
    OMOP page; an unset TRE_LANDING_DIR means this folder in a demo environment (ADR 0064)."""
    from tre.demo.omop import load_demo_landing

    try:
        folder = load_demo_landing(settings.instance_path)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if settings.landing_dir is not None and settings.landing_dir != folder.parent:
        click.echo(f"demo OMOP tables in {folder}; TRE_LANDING_DIR names another folder ({settings.landing_dir}), "
                   "so the OMOP page will not list them")
    else:
        click.echo(f"demo OMOP tables in the landing folder {folder.parent}, as {folder.name}: "
                   "a custodian registers them at /catalogue/omop")


def _build_demo_extracts(app: object) -> None:
    """Build the active demo project's extract here and now, so its workspace has data at once."""
    from sqlalchemy import select

    from projects.models import Project
    from projects.rules import ACTIVE
    from pseudonymisation.tasks import extracts_service
    from tre.core import jobs
    from tre.core.identity import User
    from tre.demo.accounts import DOMAIN

    p = app.extensions["tre.platform"]  # type: ignore[attr-defined]
    custodian = p.db.session.scalar(select(User).where(User.email == f"cara.custodian@{DOMAIN}"))
    jobs.set_dispatcher(None)  # run the job in this process, below, not through the broker
    for project in p.db.session.scalars(select(Project).where(Project.state == ACTIVE)).all():
        service = extracts_service(p)
        extract = service.request(custodian, project.id)
        if extract.state != "succeeded" and extract.job_id:
            outcome = jobs.run_job(p.db, extract.job_id, lease_seconds=p.settings.job_lease_seconds)
            click.echo(f"extract for {project.title!r}: {outcome}")


@click.command("code")
@click.argument("email")
def code_command(email: str) -> None:
    """Print the security code a demo account's authenticator app would show now."""
    from tre.demo.accounts import current_code

    settings = Settings.from_env()
    try:
        click.echo(current_code(Path(settings.instance_path), email))
    except (KeyError, FileNotFoundError):
        raise click.ClickException(f"{email} is not a demo account of this instance") from None
