"""``tre doctor``: check a deployment's configuration and reachability, and say precisely what is wrong."""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from tre.core.config import Settings
from tre.core.filemodes import open_to_others, private_group

MAX_PATHS_SHOWN = 10


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    message: str


def _check(name: str, fn: Callable[[], str]) -> Finding:
    try:
        return Finding(name, True, fn())
    except Exception as exc:  # noqa: BLE001 - every failure becomes a finding, never a traceback
        return Finding(name, False, str(exc) or type(exc).__name__)


def run_checks(settings: Settings, head_revision: str | None) -> list[Finding]:
    from tre.core.backup_schedule import last_backup_age
    findings: list[Finding] = []
    production = settings.environment == "production"

    def instance() -> str:
        path = settings.instance_path
        if not path.is_dir():
            raise RuntimeError(f"instance folder {path} does not exist: run `tre init`")
        mode = stat.S_IMODE(path.stat().st_mode)
        if open_to_others(path, own_group=private_group(), only_top=True):
            raise RuntimeError(
                f"instance folder {path} is open to other accounts (mode {mode:o}); chmod 700 it"
            )
        return f"{path} (mode {mode:o})"

    def private_files() -> str:
        offending = private_files_open_to_others(settings)
        if offending:
            shown = ", ".join(f"{path} (mode {mode:o})" for path, mode in offending[:MAX_PATHS_SHOWN])
            more = f" and {len(offending) - MAX_PATHS_SHOWN} more" if len(offending) > MAX_PATHS_SHOWN else ""
            raise RuntimeError(
                f"{len(offending)} of the service's files or folders are open to other accounts: {shown}{more};"
                " `chmod -R go= ` them (only extracts may be shared, with their project's group)"
            )
        return "the database, broker, keys and file store are private to the service's account"

    def master_key() -> str:
        import os

        from tre.core.keyservices import WrappedKeyringProvider, key_provider_for

        provider = key_provider_for(settings)
        if isinstance(provider, WrappedKeyringProvider):
            clear = settings.instance_path / "master.key"
            if clear.exists():
                raise RuntimeError(
                    f"{clear} still holds the master keyring in clear although TRE_KEY_PROVIDER is "
                    f"{settings.key_provider}: once `tre keys wrap-master` has moved it, shred that file"
                )
            return provider.check()
        if os.environ.get("TRE_MASTER_KEY"):
            return "from the TRE_MASTER_KEY environment variable"
        if settings.key_provider == "env":
            raise RuntimeError("TRE_KEY_PROVIDER is env but TRE_MASTER_KEY is not set")
        path = settings.instance_path / "master.key"
        if production:
            raise RuntimeError(
                "production must not keep the master key on disk: set TRE_KEY_PROVIDER=aws-kms or pkcs11, "
                "or TRE_MASTER_KEY from a secret store"
            )
        if not path.exists():
            raise RuntimeError(f"{path} is missing: run `tre init`")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != 0o600:
            raise RuntimeError(f"{path} has mode {mode:o}; it must be 600")
        return f"{path} (mode 600)"

    def database() -> str:
        engine = create_engine(settings.database_url, pool_pre_ping=True)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                try:
                    current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                except Exception:
                    raise RuntimeError("the database has no schema: run `tre db upgrade`") from None
        finally:
            engine.dispose()
        if head_revision and current != head_revision:
            raise RuntimeError(f"schema is at {current}, code expects {head_revision}: run `tre db upgrade`")
        if production and settings.is_sqlite:
            raise RuntimeError("production uses SQLite: set TRE_DATABASE_URL to PostgreSQL")
        return f"{settings.database_url.split('@')[-1]} at revision {current}"

    def broker() -> str:
        from kombu import Connection

        with Connection(settings.broker_url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        if production and settings.broker_needs_no_server:
            raise RuntimeError("production uses a broker that loses messages: set TRE_BROKER_URL to Redis or RabbitMQ")
        return settings.broker_url.split("@")[-1]

    def file_store() -> str:
        if not settings.files_s3_bucket:
            return f"folder {settings.instance_path / 'files'}"
        from tre.core.filestore import file_store_for

        store = file_store_for(settings, keys=None)  # type: ignore[arg-type] - nothing is sealed here
        try:
            store._client.head_bucket(Bucket=store.bucket)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise RuntimeError(f"S3 bucket {store.bucket!r} cannot be reached ({code}): check TRE_FILES_S3_*"
                               " and the AWS credentials") from None
        where = f" at {settings.files_s3_endpoint_url}" if settings.files_s3_endpoint_url else ""
        return f"S3 bucket {store.bucket!r}{where}"

    def web_security() -> str:
        if production:
            if not settings.public_url.startswith("https://"):
                raise RuntimeError("TRE_PUBLIC_URL must be https:// in production")
            if not settings.session_cookie_secure:
                raise RuntimeError("TRE_SESSION_COOKIE_SECURE must be true in production")
            if not settings.metrics_token:
                raise RuntimeError("set TRE_METRICS_TOKEN so Prometheus can scrape /metrics")
        return f"public URL {settings.public_url}"

    def single_sign_on() -> str:
        if not settings.oidc_enabled:
            return "not configured (password and TOTP sign-in only)"
        return check_oidc_discovery(settings)

    for name, fn in (
        ("instance folder", instance),
        ("private files", private_files),
        ("master key", master_key),
        ("database", database),
        ("broker", broker),
        ("file store", file_store),
        ("web security", web_security),
        ("single sign-on", single_sign_on),
        ("backups", lambda: last_backup_age(settings)),
    ):
        findings.append(_check(name, fn))
    return findings


def private_files_open_to_others(settings: Settings) -> list[tuple[Path, int]]:
    """The service's own files and folders that the group or other accounts may use: everything in
    the instance folder (its database, broker, keys, file store, hub state) but the extracts and the
    workspaces' folders, which are shared on purpose; extracts that accounts outside their project's
    group may use; the extracts' staging copies, and a database, broker or HSM PIN file kept
    elsewhere."""
    instance = settings.instance_path
    shared = [p for p in (settings.extracts_path, settings.workspaces_path) if p is not None]
    own = private_group()
    found = open_to_others(instance, skip=shared, own_group=own)
    if settings.extracts_path is not None:
        # Shared with a project's group, never with everyone: only the extracts' root may be
        # entered (not listed) by others, so a workspace account can pass through it.
        extracts = settings.extracts_path
        found += [
            (path, mode)
            for path, mode in open_to_others(extracts, skip=[extracts / ".staging"], bits=0o007)
            if path != extracts or mode & 0o006
        ]
    elsewhere = [p / ".staging" for p in shared[:1]]
    for url in (settings.database_url, settings.broker_url):
        if url.split(":", 1)[0] in ("sqlite", "sqla+sqlite") and ":///" in url:
            elsewhere.append(Path(url.split(":///", 1)[1]))
    if settings.pkcs11_pin_file:
        elsewhere.append(Path(settings.pkcs11_pin_file))
    for path in elsewhere:
        if not path.is_relative_to(instance) or any(path.is_relative_to(p) for p in shared):
            found += [hit for hit in open_to_others(path, own_group=own) if hit not in found]
    return found


def check_oidc_discovery(settings: Settings, timeout: float = 5) -> str:
    """Fetch the provider's discovery document and check it describes the configured issuer."""
    import requests

    url = settings.oidc_discovery_url
    if settings.environment == "production" and not url.startswith("https://"):
        raise RuntimeError(f"the OIDC discovery URL {url} must be https:// in production")
    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
        document = response.json()
    except requests.RequestException as exc:
        raise RuntimeError(f"cannot fetch the OIDC discovery document {url}: {type(exc).__name__}") from None
    except ValueError:
        raise RuntimeError(f"the OIDC discovery document {url} is not JSON") from None
    if not isinstance(document, dict):
        raise RuntimeError(f"the OIDC discovery document {url} is not a JSON object")
    if document.get("issuer") != settings.oidc_issuer:
        raise RuntimeError(
            f"the discovery document names issuer {document.get('issuer')!r}, "
            f"but TRE_OIDC_ISSUER is {settings.oidc_issuer!r}: they must be identical"
        )
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not document.get(k)]
    if missing:
        raise RuntimeError(f"the OIDC discovery document {url} lacks {', '.join(missing)}")
    methods = document.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise RuntimeError("the provider does not support PKCE with S256")
    return f"{settings.oidc_issuer} (discovery document reachable)"


def head_of(migrations: Path) -> str | None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    return ScriptDirectory.from_config(cfg).get_current_head()
