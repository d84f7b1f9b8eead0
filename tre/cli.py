"""The ``tre`` command: set up an instance, migrate, load demo data, run the service and its workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from tre.core import migrate
from tre.core.config import ConfigError, Settings


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        # The message names the variable and what it must be; a traceback would only hide it.
        raise click.ClickException(str(exc)) from None


@click.group()
def main() -> None:
    """Trusted research environment control plane."""


# --- database -------------------------------------------------------------------------------------


@main.group("db")
def db_cli() -> None:
    """Database migrations (Alembic)."""


@db_cli.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Bring the database schema up to date."""
    settings = _settings()
    settings.instance_path.mkdir(parents=True, exist_ok=True, mode=0o711)
    migrate.upgrade(settings.database_url, revision)
    click.echo(f"database at {_redact(settings.database_url)} is at revision {revision}")


@db_cli.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Step the schema back to REVISION."""
    migrate.downgrade(_settings().database_url, revision)


@db_cli.command("current")
def db_current() -> None:
    """Show the schema revision of the database."""
    migrate.current(_settings().database_url)


@db_cli.command("revision")
@click.option("-m", "--message", required=True)
def db_revision(message: str) -> None:
    """Write a new migration from the difference between the models and the database (developers)."""
    migrate.revision(_settings().database_url, message)


def _redact(url: str) -> str:
    """Show where a database is without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- instance -------------------------------------------------------------------------------------


def command_app() -> Any:
    """The app one command works with; its database connections are closed when the command ends,
    so no connection outlives it (and none holds SQLite's lock in a process that runs several)."""
    from tre.app import create_app

    app = create_app()
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(app.extensions["tre.db"].dispose)
    return app


@main.command("init")
def init() -> None:
    """Create the instance folder, its secrets and the database schema. Safe to run again."""
    settings = _settings()
    settings.instance_path.mkdir(parents=True, exist_ok=True, mode=0o711)

    command_app()  # creates the session secret and the keys on first run
    migrate.upgrade(settings.database_url)
    click.echo(f"instance ready in {settings.instance_path}")


# --- operations -----------------------------------------------------------------------------------


@main.command("doctor")
def doctor() -> None:
    """Check this deployment's configuration and reachability; exit non-zero on any problem."""
    from tre.core.doctor import head_of, run_checks

    findings = run_checks(_settings(), head_of(migrate.MIGRATIONS))
    for f in findings:
        click.echo(f"{'ok  ' if f.ok else 'FAIL'}  {f.check}: {f.message}")
    if not all(f.ok for f in findings):
        sys.exit(1)


@main.command("backup")
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--with-master-key", is_flag=True, help="Include the master key, wrapped with a passphrase.")
def backup(archive: Path, with_master_key: bool) -> None:
    """Write the database, stored files and wrapped keys to ARCHIVE (.tar.gz)."""
    from tre.core.backup import create_backup
    from tre.core.db import make_engine
    from tre.core.doctor import head_of
    from tre.models import metadata

    settings = _settings()
    passphrase = None
    if with_master_key and settings.key_provider in ("aws-kms", "pkcs11"):
        raise click.ClickException(
            f"TRE_KEY_PROVIDER is {settings.key_provider}: the keyring is always in the backup, wrapped by "
            "the key service, so --with-master-key has nothing to add"
        )
    if with_master_key:
        passphrase = os.environ.get("TRE_BACKUP_PASSPHRASE") or click.prompt(
            "Passphrase for the master key", hide_input=True, confirmation_prompt=True
        )
    engine = make_engine(settings.database_url)
    from tre.core.filestore import file_store_for
    from tre.core.keyservices import key_provider_for

    store = file_store_for(settings, key_provider_for(settings))
    summary = create_backup(
        engine,
        metadata,
        settings.instance_path,
        archive,
        master_key_file=settings.instance_path / "master.key" if with_master_key else None,
        passphrase=passphrase,
        revision=head_of(migrate.MIGRATIONS),
        files=store,
    )
    engine.dispose()
    click.echo(
        f"backup written to {summary.path}: {sum(summary.tables.values())} rows, {summary.files} files"
        + (
            ", master key wrapped with the passphrase"
            if summary.includes_master_key
            else f", master keyring wrapped by {settings.key_provider}"
            if settings.key_provider in ("aws-kms", "pkcs11")
            else ", without the master key (keep it safe separately)"
        )
    )


@main.command("restore")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def restore(archive: Path) -> None:
    """Restore ARCHIVE into this (fresh) instance and database, then verify the audit chain."""
    from tre.core.backup import BackupError, read_manifest, restore_backup
    from tre.core.db import make_engine
    from tre.models import metadata

    settings = _settings()
    try:
        manifest = read_manifest(archive)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    passphrase = None
    if manifest.get("includes_master_key") and not (settings.instance_path / "master.key").exists():
        passphrase = os.environ.get("TRE_BACKUP_PASSPHRASE") or click.prompt("Passphrase", hide_input=True)
    # With a key service the archive carries the wrapped keyring; the service's key must be the same.
    has_key = (settings.key_provider in ("aws-kms", "pkcs11") or (settings.instance_path / "master.key").exists()
               or os.environ.get("TRE_MASTER_KEY"))
    if not manifest.get("includes_master_key") and not has_key:
        raise click.ClickException(
            "this backup does not carry the master key: put the original master.key in the instance "
            "folder, set TRE_MASTER_KEY, or set TRE_KEY_PROVIDER to the key service it was wrapped by"
        )
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        from tre.core.filestore import file_store_for
        from tre.core.keyservices import key_provider_for

        store = file_store_for(settings, key_provider_for(settings))
        restore_backup(archive, engine, metadata, settings.instance_path, passphrase=passphrase, files=store)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(
        f"restored {sum(manifest['tables'].values())} rows and {manifest['files']} files; checking the audit chain"
    )
    ctx = click.get_current_context()
    ctx.invoke(audit_verify)


# --- audit ----------------------------------------------------------------------------------------


@main.group("audit")
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


# --- extracts -------------------------------------------------------------------------------------


@main.group("extract")
def extract_cli() -> None:
    """Project extracts (approved columns, tokenised and generalised)."""


def _custodian(app: Any, email: str) -> Any:
    from sqlalchemy import select

    from tre.core.identity import User

    user = app.extensions["tre.db"].session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise click.ClickException(f"no account {email}")
    return user


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
            extract = service.request(_custodian(app, as_email), project_id)
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


# --- opt-out lists --------------------------------------------------------------------------------


@main.group("optout")
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
                _custodian(app, as_email), name, file.read_bytes(), dataset=dataset, description=description
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


# --- keys -----------------------------------------------------------------------------------------


@main.group("keys")
def keys_cli() -> None:
    """Key rotation (nothing already encrypted needs re-encrypting)."""


@keys_cli.command("rotate-master")
def keys_rotate_master() -> None:
    """Add a new master key version; new envelopes use it, old ones still open."""
    from tre.core.keys import FileKeyProvider, KeyProviderError
    from tre.core.keyservices import WrappedKeyringProvider, key_provider_for

    try:
        provider = key_provider_for(_settings())
        if not isinstance(provider, FileKeyProvider | WrappedKeyringProvider):
            raise click.ClickException("the master key comes from the environment: rotate it in your secret store")
        click.echo(f"master key version {provider.rotate()} is now current")
    except KeyProviderError as exc:
        raise click.ClickException(str(exc)) from None


@keys_cli.command("wrap-master")
@click.option("--from-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The clear key file to move in; default TRE_MASTER_KEY if set, else <instance>/master.key.")
def keys_wrap_master(from_file: Path | None) -> None:
    """Move the existing master keyring into the key service chosen by TRE_KEY_PROVIDER."""
    from tre.core.keys import KeyProviderError
    from tre.core.keyservices import wrap_existing_keyring

    settings = _settings()
    try:
        target, source = wrap_existing_keyring(settings, from_file)
    except KeyProviderError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"master keyring ({source}) is now wrapped in {target.path} by {target.service.describe()}; "
               "check with `tre doctor`, then destroy the clear copy (shred master.key, or remove "
               "TRE_MASTER_KEY from the environment and the secret store)")


@keys_cli.command("rotate-signing")
@click.option("--retire", "retire_kid", default=None, help="Also retire this old key id (its tokens stop working).")
def keys_rotate_signing(retire_kid: str | None) -> None:
    """Add a new token-signing key; tokens signed before stay valid until their key is retired."""
    from tre.core.keyservices import key_provider_for
    from tre.core.tokens import SIGNING_KEYS_FILENAME, SigningKeyring

    settings = _settings()
    keys = key_provider_for(settings)
    ring = SigningKeyring.in_instance(settings.instance_path, keys)
    kid = ring.rotate()
    if retire_kid:
        ring.retire(retire_kid)
    ring.save(settings.instance_path / SIGNING_KEYS_FILENAME, keys)
    click.echo(f"signing key {kid} is now current; published keys: {', '.join(ring.kids)}")


# --- people ---------------------------------------------------------------------------------------


@main.group("users")
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


# --- jobs -----------------------------------------------------------------------------------------


@main.group("jobs")
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


# --- processes ------------------------------------------------------------------------------------


def _worker_argv(settings: Settings, beat: bool, queues: tuple[str, ...] = (), concurrency: int = 2) -> list[str]:
    from tre.core.jobs import QUEUES

    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tre.worker",
        "worker",
        "--loglevel",
        settings.log_level,
        "--concurrency",
        str(concurrency),
        "-Q",
        ",".join(queues or QUEUES),
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        argv += ["--beat", "--schedule", str(settings.instance_path / "celerybeat-schedule")]
    return argv


@main.command("worker")
@click.option("--beat/--no-beat", default=None, help="Also run the periodic sweeper (default: on one machine).")
@click.option("-Q", "--queues", default="", help="Comma-separated queues to take jobs from (default: all).")
@click.option("--concurrency", default=2, show_default=True, help="Jobs run at once by this worker.")
def worker(beat: bool | None, queues: str, concurrency: int) -> None:
    """Run a Celery worker (all queues, or the named ones)."""
    from tre.core.jobs import QUEUES

    settings = _settings()
    chosen = tuple(q.strip() for q in queues.split(",") if q.strip())
    unknown = set(chosen) - set(QUEUES)
    if unknown:
        raise click.BadParameter(f"unknown queue(s) {', '.join(sorted(unknown))}; known: {', '.join(QUEUES)}")
    beat = settings.broker_needs_no_server if beat is None else beat
    os.execv(sys.executable, _worker_argv(settings, beat, chosen, concurrency))  # noqa: S606


@main.command("beat")
def beat_command() -> None:
    """Run only the periodic scheduler (exactly one per deployment): the job sweeper and expiry tasks."""
    settings = _settings()
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tre.worker",
        "beat",
        "--loglevel",
        settings.log_level,
        "--schedule",
        str(settings.instance_path / "celerybeat-schedule"),
    ]
    os.execv(sys.executable, argv)  # noqa: S606


def _web_argv(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{settings.host}:{settings.port}",
        "--workers",
        "2",
        "--threads",
        "4",
        "--access-logfile",
        "-",
        "tre.wsgi:app",
    ]


@main.command("run")
def run() -> None:
    """Run the whole service on this machine (web server, worker, sweeper) until Ctrl-C."""
    settings = _settings()
    # Web processes share request metrics through this folder, emptied at each start.
    prom = settings.instance_path / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir(parents=True)
    env = dict(os.environ, TRE_INSTANCE_PATH=str(settings.instance_path), PROMETHEUS_MULTIPROC_DIR=str(prom))
    procs: dict[str, subprocess.Popen[Any]] = {}
    commands = {"web": _web_argv(settings), "worker": _worker_argv(settings, beat=True)}
    hub_note = _hub_command(settings, env, commands)
    for name, argv in commands.items():
        procs[name] = subprocess.Popen(argv, env=env, start_new_session=True)  # noqa: S603
    click.echo(f"\nThe trusted research environment is at {settings.public_url}  (Ctrl-C stops everything)")
    click.echo(hub_note + "\n")
    _print_demo_logins(settings)

    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    try:
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    click.echo(f"{name} exited with status {proc.returncode}; stopping the rest", err=True)
                    exit_code = 1
                    stopping = True
            time.sleep(0.5)
    finally:
        # Children that JupyterHub starts in sessions of their own (its proxy, its services) do
        # not get our signal; note them now, while their parent still lives.
        strays = [child for proc in procs.values() for child in _descendants(proc.pid)]
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        # JupyterHub stops its proxy and services on SIGTERM, but only if given the time to.
        deadline = time.monotonic() + 30
        for proc in procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        _stop_stragglers(settings.instance_path, strays)
        click.echo("stopped")
    sys.exit(exit_code)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), found through each process's parent id."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [p for p, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def _stop_stragglers(instance: Path, strays: list[int]) -> None:
    """Stop what our processes started in sessions of their own: the descendants noted before the
    shutdown, and anything else carrying this instance's path in its environment."""
    marker = f"TRE_INSTANCE_PATH={instance}".encode()
    me = os.getpid()
    targets = set(strays)
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        try:
            if pid != me and marker in (entry / "environ").read_bytes().split(b"\0"):
                targets.add(pid)
        except (OSError, ValueError):
            continue
    for sig in (signal.SIGTERM, signal.SIGKILL):  # a worker stuck in a task ignores the first
        alive = []
        for pid in targets:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except OSError:
                continue
        if not alive:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in alive):
            time.sleep(0.2)
        targets = {pid for pid in alive if Path(f"/proc/{pid}").exists()}


def _hub_command(settings: Settings, env: dict[str, str], commands: dict[str, list[str]]) -> str:
    """Add JupyterHub to the processes when its workspace runtime is built; say what happens if not."""
    from urllib.parse import urlsplit

    runtime = Path(os.environ.get("TRE_WORKSPACE_RUNTIME", "/opt/tre-workspace"))
    hub = Path(sys.executable).parent / "jupyterhub"
    if not hub.exists() or not (runtime / "bin" / "jupyter-labhub").exists():
        return "Workspaces: JupyterHub is not started (run `make workspace-runtime` as root to build it)."
    hub_port = urlsplit(settings.jupyterhub_url).port or 8000
    env.update(
        TRE_HUB_STATE_DIR=str(settings.instance_path / "jupyterhub"),
        TRE_HUB_PORT=str(hub_port),
        TRE_CONTROL_PLANE_URL=settings.public_url,
        TRE_HUB_SERVICE_TOKEN_FILE=str(settings.instance_path / "hub-service-token"),
        TRE_HUB_CONTROL_PLANE_API_TOKEN_FILE=str(settings.instance_path / "hub-api-token"),
        TRE_WORKSPACE_RUNTIME=str(runtime),
    )
    config = Path(__file__).resolve().parents[1] / "jupyter" / "jupyterhub_config.py"
    commands["hub"] = [str(hub), "-f", str(config)]
    note = f"Workspaces: JupyterHub at {settings.jupyterhub_url}"
    if os.geteuid() != 0 and not env.get("TRE_HUB_INSECURE_DEV"):
        note += (
            " — NOT running as root, so workspaces cannot get their own unix accounts and network"
            " namespaces and will refuse to start (see docs/workspaces.md)"
        )
    return note


def _print_demo_logins(settings: Settings) -> None:
    logins = settings.instance_path / "demo-logins.txt"
    if logins.exists():
        click.echo(logins.read_text(encoding="utf-8"))


def _register_subcommands() -> None:
    from tre.demo.cli import demo_cli
    from tre.demo.commands import code_command, load_command

    demo_cli.add_command(load_command)
    demo_cli.add_command(code_command)
    main.add_command(demo_cli)


_register_subcommands()


if __name__ == "__main__":  # pragma: no cover
    main()
