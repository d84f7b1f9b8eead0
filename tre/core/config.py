"""Typed settings read from ``TRE_*`` environment variables, with safe defaults for one machine.

Every setting has one name, one type and one default here; nothing else in the code reads the
environment. Defaults describe the embedded setup (SQLite, a broker that needs no server, a local
folder for files), so ``make run`` works on a fresh machine, and production changes only variables.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

PREFIX = "TRE_"
# "" chooses as before: TRE_MASTER_KEY when set, else the key file in the instance folder.
KEY_PROVIDERS = ("", "file", "env", "aws-kms", "pkcs11")
# Where demo data may be loaded, and where an unset TRE_LANDING_DIR may mean the instance's own
# ``landing`` folder (ADR 0064). Any other TRE_ENVIRONMENT (production, staging ...) gets neither.
DEMO_ENVIRONMENTS = frozenset({"embedded", "development", "test"})
# The landing folder inside the instance that ``tre demo load`` makes (ADR 0064).
INSTANCE_LANDING = "landing"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and what is expected."""


def _default_instance() -> Path:
    return Path(os.environ.get("TRE_INSTANCE_PATH", Path.cwd() / "instance")).resolve()


@dataclass(frozen=True)
class Settings:
    """The whole configuration of one deployment. Field ``foo_bar`` is read from ``TRE_FOO_BAR``."""

    instance_path: Path = field(default_factory=_default_instance)
    # Empty means "derive from the instance folder" (see resolved()).
    database_url: str = ""
    # Connections each process keeps open to the database between requests (ADR 0080): at least the
    # threads of a web process (GUNICORN_THREADS, 8), so that no connection is opened and closed per
    # request. Ten more may be opened for a burst, and are closed once it is over.
    database_pool_size: int = 10
    broker_url: str = ""
    host: str = "127.0.0.1"
    port: int = 5000
    public_url: str = ""
    # "development" relaxes nothing about security; it only allows plain-HTTP cookies on 127.0.0.1.
    environment: str = "embedded"
    log_level: str = "INFO"
    # "text" reads well in a terminal on one machine; "json" is for log collectors in production.
    log_format: str = "text"
    # Bearer token Prometheus must present at /metrics; empty means only 127.0.0.1 may scrape.
    metrics_token: str = ""
    # Background jobs: a claimed job must heartbeat within this lease or the sweeper takes it back.
    job_lease_seconds: int = 120
    job_max_attempts: int = 3
    job_sweep_interval_seconds: int = 15
    # A queued job that no worker picked up in this long is sent again (server-less brokers lose messages).
    job_requeue_after_seconds: int = 60
    # The embedded broker (sqla+sqlite): producers wake waiting workers through sockets beside the
    # broker file (ADR 0017); a worker looks for messages at least this often whatever it hears
    # (0: 2000 ms with wake-ups, when a look is only a safety net; 1000 ms, kombu's, without).
    broker_wakeups: bool = True
    broker_poll_ms: int = 0
    task_soft_time_limit_seconds: int = 1800
    task_time_limit_seconds: int = 1900
    max_upload_bytes: int = 16 * 1024 * 1024
    # Stored files (encrypted) in an S3-compatible bucket instead of ``<instance>/files``: the bucket,
    # a key prefix, and for storage other than AWS (MinIO, Ceph) its endpoint. Credentials come from
    # boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a web identity, an instance role).
    files_s3_bucket: str = ""
    files_s3_prefix: str = ""
    files_s3_endpoint_url: str = ""
    files_s3_region: str = ""
    session_cookie_secure: bool = False
    # Rate limits (tre/ratelimits.py): how many reverse proxies in front of the service each add the
    # address they saw to X-Forwarded-For (0: the connecting address is the client's and the header
    # is ignored), and where the counters live (empty: in memory; redis://... to share them).
    trusted_proxies: int = 0
    rate_limit_storage_url: str = ""
    # Off only for test and load rigs that send thousands of requests from one address.
    rate_limits: bool = True
    # A signed-in session ends this many hours after sign-in however active it is (the idle limit,
    # 30 minutes, ends it sooner).
    session_max_hours: int = 12
    jupyterhub_url: str = "http://127.0.0.1:8000"
    # The hub's REST API as the control plane reaches it (in a cluster, the hub's internal service,
    # e.g. http://hub.tre.svc.cluster.local:8081); empty means the public ``jupyterhub_url``.
    jupyterhub_api_url: str = ""
    # Where extracts and workspaces' private output folders live; empty means inside the instance.
    extracts_path: Path | None = None
    workspaces_path: Path | None = None
    # Data onboarding: the folder custodians drop deliveries into (empty: none, deliveries from a
    # landing folder are refused; but in a demo environment, ``<instance>/landing`` when that folder
    # exists, as ``tre demo load`` makes it: ADR 0064), and the identifiable zone where accepted and quarantined
    # deliveries are kept (only the service account may enter it; no workspace mounts it).
    landing_dir: Path | None = None
    identifiable_path: Path | None = None
    # Or the landing area as an S3 prefix (boto3 needed); when the bucket is set it is used instead
    # of the folder. Credentials come from boto3's usual chain, never from these settings.
    landing_s3_bucket: str = ""
    landing_s3_prefix: str = ""
    landing_s3_endpoint_url: str = ""
    landing_s3_region: str = ""
    # Browser uploads of deliveries (pseudonymisation/uploads.py): the largest chunk a request may
    # carry (below TRE_MAX_UPLOAD_BYTES, the limit of any request) and the hours an upload may sit
    # idle before it is expired and its bytes removed.
    upload_chunk_bytes: int = 8 * 1024 * 1024
    # Database sources a custodian may deliver a table from, by name only: a JSON object of short
    # names to SQLAlchemy URLs (read-only accounts), e.g. {"warehouse": "postgresql+psycopg://..."}.
    # The URLs never leave the service: custodians see and send the names.
    database_sources: str = field(default="", repr=False)
    upload_expiry_hours: int = 24
    # Named as the publisher in each dataset's metadata export (DCAT).
    metadata_publisher: str = "Trusted research environment"
    # Extracts: rows per chunk (a worker's memory follows it) and per partition. A Parquet source
    # longer than one partition is built by several workers at once and merged (same result as one
    # worker with the same chunk size); 0 builds every extract in one job.
    extract_chunk_rows: int = 1_000_000
    extract_partition_rows: int = 5_000_000
    # The person index: where Splink runs the linkage model. "duckdb" in the worker's process (one
    # machine); "spark" on Splink's Spark backend (the optional spark extra; ADR 0031), with
    # linkage_spark_master the Spark master ("local[2]": Spark in the worker on two cores; a cluster's
    # URL otherwise) and linkage_spark_checkpoint_dir where Spark writes intermediate tables ("" keeps
    # them in memory, enough in local mode).
    linkage_backend: str = "duckdb"
    linkage_spark_master: str = "local[2]"
    linkage_spark_checkpoint_dir: str = ""
    # Projects: votes needed (from reviewers without a conflict) before the chair may decide.
    dac_quorum: int = 2
    # Reminders this many days before training or a project expires.
    training_warning_days: int = 30
    project_expiry_warning_days: int = 30
    # Email: empty host keeps messages in the outbox table (shown on the messages page).
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_starttls: bool = False
    mail_from: str = "tre@localhost"
    # Output checking: independent reviews every output request needs (never fewer than 1).
    output_reviews_required: int = 2
    # Re-runs of the code an output request was submitted with (disclosure/rerun, ADR 0018): the
    # workspace runtime they run in, their limits (CPU seconds, address space, disk, wall time), and
    # whether a file the re-run did not reproduce (differs, not re-made, re-run failed or not yet done)
    # may be released at all. Requests sent without code are not re-run and not held by this.
    workspace_runtime: str = "/opt/tre-workspace"
    rerun_cpu_seconds: int = 600
    rerun_memory_mb: int = 4096
    rerun_disk_mb: int = 1024
    rerun_wall_seconds: int = 900
    rerun_release_unreproduced: bool = False
    # Whether every output request must carry the code that made its files (refused and audited
    # without it; ADR 0029). Off by default, for the demo and for TREs that accept files alone.
    rerun_require_code: bool = False
    # Where re-runs run (ADR 0029): "local" (bubblewrap on the worker's machine) or "kubernetes" (a Job
    # pod per re-run, infra/production/kubernetes/rerun/: its namespace, the workspace image, the
    # worker's mount of the tre-rerun-work volume, the claims' names, and how long a pod may take to
    # start on top of the wall-time limit).
    rerun_launcher: str = "local"
    rerun_k8s_namespace: str = "tre"
    rerun_k8s_image: str = "registry.example.nhs.uk/tre/workspace"
    rerun_k8s_work_dir: str = "/var/lib/tre/rerun-work"
    rerun_k8s_work_claim: str = "tre-rerun-work"
    rerun_k8s_extracts_claim: str = "tre-extracts"
    rerun_k8s_start_seconds: int = 300
    # Scheduled backups (tre/core/backup_schedule.py): hours between them, 0 = off; how many to keep.
    backup_every_hours: int = 0
    backup_keep: int = 7
    # Single sign-on with an OpenID Connect provider (docs/sso.md). Off unless issuer, client id
    # and client secret are all set. The discovery URL defaults to the issuer's well-known one.
    oidc_issuer: str = ""
    oidc_discovery_url: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = field(default="", repr=False)
    oidc_scopes: str = "openid email profile"
    oidc_display_name: str = "your organisation's account"
    # First sign-in may link to the account with the same email, only if the provider says it is verified.
    oidc_link_by_verified_email: bool = False
    # Comma-separated ``amr`` values (e.g. "mfa,hwk") that stand in for the TOTP code at sign-in.
    # Empty (the default): the TRE's own TOTP is always asked for after single sign-on.
    oidc_trusted_amr: str = ""
    # Where the master keyring comes from (tre/core/keyservices.py, docs/operations.md): empty means
    # TRE_MASTER_KEY if set, else ``<instance>/master.key``; "file", "env", or one of the key services
    # that keep it only wrapped, "aws-kms" or "pkcs11" (an HSM). A key service binds the wrapped
    # keyring to ``key_deployment``, a name that must never change, so one deployment's keyring
    # cannot be swapped in for another's.
    key_provider: str = ""
    key_deployment: str = ""
    kms_key_id: str = ""
    kms_endpoint_url: str = ""
    kms_region: str = ""
    pkcs11_module: str = ""
    pkcs11_token_label: str = ""
    pkcs11_key_label: str = ""
    # The token's user PIN, in the variable or (better) in a file only the service account may read.
    pkcs11_pin: str = field(default="", repr=False)
    pkcs11_pin_file: str = ""

    def resolved(self) -> Settings:
        """Fill the settings that default to places inside the instance folder."""
        inst = self.instance_path
        changes: dict[str, Any] = {}
        if not self.database_url:
            changes["database_url"] = f"sqlite:///{inst / 'tre.sqlite'}"
        if not self.broker_url:
            changes["broker_url"] = f"sqla+sqlite:///{inst / 'broker.sqlite'}"
        if not self.public_url:
            changes["public_url"] = f"http://{self.host}:{self.port}"
        if self.extracts_path is None:
            changes["extracts_path"] = inst / "extracts"
        if self.workspaces_path is None:
            changes["workspaces_path"] = inst / "workspaces"
        if self.identifiable_path is None:
            changes["identifiable_path"] = inst / "identifiable"
        if self.landing_dir is None:
            changes["landing_dir"] = self._instance_landing()
        if not self.jupyterhub_api_url:
            changes["jupyterhub_api_url"] = self.jupyterhub_url
        if not 1 <= self.database_pool_size <= 100:
            raise ConfigError("TRE_DATABASE_POOL_SIZE must be between 1 and 100")
        if not 0 <= self.trusted_proxies <= 10:
            raise ConfigError("TRE_TRUSTED_PROXIES must be between 0 and 10")
        if not 1 <= self.session_max_hours <= 24 * 7:
            raise ConfigError("TRE_SESSION_MAX_HOURS must be between 1 and 168 (a week)")
        if self.upload_chunk_bytes < 64 * 1024:
            raise ConfigError("TRE_UPLOAD_CHUNK_BYTES must be at least 65536")
        # A chunk travels in one request, which TRE_MAX_UPLOAD_BYTES limits (with room for headers).
        changes["upload_chunk_bytes"] = max(min(self.upload_chunk_bytes, self.max_upload_bytes - 64 * 1024), 1024)
        if self.database_sources.strip():
            try:
                sources = json.loads(self.database_sources)
            except ValueError:
                sources = None
            if not isinstance(sources, dict) or not all(isinstance(v, str) and v for v in sources.values()):
                raise ConfigError("TRE_DATABASE_SOURCES must be a JSON object of names to SQLAlchemy URLs")
        if not 1 <= self.upload_expiry_hours <= 24 * 30:
            raise ConfigError("TRE_UPLOAD_EXPIRY_HOURS must be between 1 and 720")
        if self.extract_chunk_rows < 1 or self.extract_partition_rows < 0:
            raise ConfigError("TRE_EXTRACT_CHUNK_ROWS must be at least 1 and TRE_EXTRACT_PARTITION_ROWS at least 0")
        if self.linkage_backend not in ("duckdb", "spark"):
            raise ConfigError("TRE_LINKAGE_BACKEND must be duckdb or spark")
        if self.broker_poll_ms == 0:
            changes["broker_poll_ms"] = 2000 if self.broker_wakeups else 1000
        elif not 10 <= self.broker_poll_ms <= 60_000:
            raise ConfigError("TRE_BROKER_POLL_MS must be 0 (automatic) or between 10 and 60000 (milliseconds)")
        if not 0 <= self.backup_every_hours <= 24 * 31 or self.backup_keep < 1:
            raise ConfigError("TRE_BACKUP_EVERY_HOURS must be between 0 (off) and 744, TRE_BACKUP_KEEP at least 1")
        oidc = {"TRE_OIDC_ISSUER": self.oidc_issuer, "TRE_OIDC_CLIENT_ID": self.oidc_client_id,
                "TRE_OIDC_CLIENT_SECRET": self.oidc_client_secret}
        if any(oidc.values()) and not all(oidc.values()):
            missing = ", ".join(name for name, value in oidc.items() if not value)
            raise ConfigError(f"single sign-on is half configured: set {missing} too (or unset them all)")
        scopes = self.oidc_scopes.strip() or "openid email profile"
        changes["oidc_scopes"] = scopes
        changes["oidc_display_name"] = self.oidc_display_name.strip() or "your organisation's account"
        if all(oidc.values()) and "openid" not in scopes.split():
            raise ConfigError("TRE_OIDC_SCOPES must include openid (the id_token is what identifies the person)")
        if self.oidc_issuer and not self.oidc_discovery_url:
            changes["oidc_discovery_url"] = self.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
        changes["key_provider"] = self._checked_key_provider()
        return dataclasses.replace(self, **changes)

    def _instance_landing(self) -> Path | None:
        """The instance's own landing folder, for an unset TRE_LANDING_DIR: only in a demo environment,
        and only when it is a real folder (not a link) that ``tre demo load`` or the operator made.
        Anywhere else unset stays unset, and deliveries from a landing folder are refused."""
        if self.environment not in DEMO_ENVIRONMENTS:
            return None
        folder = self.instance_path / INSTANCE_LANDING
        return folder if folder.is_dir() and not folder.is_symlink() else None

    def _checked_key_provider(self) -> str:
        """Refuse a key service set up by halves, or settings for one service while another is chosen."""
        provider = self.key_provider.strip().lower()
        if provider not in KEY_PROVIDERS:
            raise ConfigError(f"TRE_KEY_PROVIDER must be empty or one of {', '.join(KEY_PROVIDERS[1:])}, "
                              f"got {self.key_provider!r}")
        groups = {
            "aws-kms": {"TRE_KMS_KEY_ID": self.kms_key_id, "TRE_KMS_ENDPOINT_URL": self.kms_endpoint_url,
                        "TRE_KMS_REGION": self.kms_region},
            "pkcs11": {"TRE_PKCS11_MODULE": self.pkcs11_module, "TRE_PKCS11_TOKEN_LABEL": self.pkcs11_token_label,
                       "TRE_PKCS11_KEY_LABEL": self.pkcs11_key_label, "TRE_PKCS11_PIN": self.pkcs11_pin,
                       "TRE_PKCS11_PIN_FILE": self.pkcs11_pin_file},
        }
        for service, values in groups.items():
            if provider != service:
                stray = [name for name, value in values.items() if value]
                if stray:
                    raise ConfigError(f"{stray[0]} is set but TRE_KEY_PROVIDER is {provider or 'empty'}: "
                                      f"set TRE_KEY_PROVIDER={service} or unset {stray[0]}")
        if provider not in ("aws-kms", "pkcs11"):
            if self.key_deployment:
                raise ConfigError("TRE_KEY_DEPLOYMENT is only for TRE_KEY_PROVIDER=aws-kms or pkcs11")
            return provider
        required = ["TRE_KEY_DEPLOYMENT"] + (
            ["TRE_KMS_KEY_ID"] if provider == "aws-kms"
            else ["TRE_PKCS11_MODULE", "TRE_PKCS11_TOKEN_LABEL", "TRE_PKCS11_KEY_LABEL"]
        )
        missing = [name for name in required if not getattr(self, name[len(PREFIX):].lower())]
        if missing:
            raise ConfigError(f"TRE_KEY_PROVIDER={provider} needs {', '.join(missing)}")
        if provider == "pkcs11" and bool(self.pkcs11_pin) == bool(self.pkcs11_pin_file):
            raise ConfigError("TRE_KEY_PROVIDER=pkcs11 needs exactly one of TRE_PKCS11_PIN and TRE_PKCS11_PIN_FILE")
        return provider

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_client_id and self.oidc_client_secret)

    @property
    def oidc_trusted_amr_values(self) -> frozenset[str]:
        return frozenset(v.strip() for v in self.oidc_trusted_amr.split(",") if v.strip())

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def broker_needs_no_server(self) -> bool:
        return self.broker_url.startswith(("sqla+", "filesystem:", "memory:"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from ``TRE_<FIELD>``; explicit overrides (tests) win over the environment."""
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = PREFIX + f.name.upper()
            if f.name in overrides:
                values[f.name] = _coerce(name, overrides[f.name], hints[f.name])
            elif name in environ:
                values[f.name] = _coerce(name, environ[name], hints[f.name])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        return cls(**values).resolved()


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    if not isinstance(raw, str):
        return Path(raw) if kind is Path or (kind == (Path | None) and raw is not None) else raw
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is Path or kind == (Path | None):
            return Path(raw).expanduser().resolve()
        return raw
    except ValueError:
        type_name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{name} must be of type {type_name}, got {raw!r}") from None
