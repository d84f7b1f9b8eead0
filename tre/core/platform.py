"""The kernel's services, built once per process from the settings: database, keys, audit log,
file store and token service. The web app, the workers and the CLI all hold one of these."""

from __future__ import annotations

import datetime as dt
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tre.core.audit import (
    CHAIN_KEY_PURPOSE,
    CHECKPOINT_FILE,
    CHECKPOINT_KEY_PURPOSE,
    AuditLog,
    CheckpointFile,
)
from tre.core.config import Settings
from tre.core.db import Database, utcnow
from tre.core.filestore import LocalFileStore, S3FileStore, file_store_for
from tre.core.identity import TokenUse, User
from tre.core.keys import KeyProvider
from tre.core.keyservices import key_provider_for
from tre.core.tokens import SigningKeyring, TokenService

CHAIN_KEY_FILE = "audit-chain.key"
# Shared secrets between the control plane and JupyterHub, one for each direction.
HUB_SERVICE_TOKEN_FILE = "hub-service-token"  # noqa: S105 - a file name; the hub presents its content
HUB_API_TOKEN_FILE = "hub-api-token"  # noqa: S105 - a file name; we present its content to the hub


class PlatformNotInitialised(RuntimeError):
    """The instance has no keys yet: run ``tre init``."""


@dataclass
class Platform:
    settings: Settings
    db: Database
    keys: KeyProvider
    audit: AuditLog
    files: LocalFileStore | S3FileStore
    tokens: TokenService

    def __repr__(self) -> str:
        return f"Platform(instance={self.settings.instance_path})"


def initialise_keys(settings: Settings) -> None:
    """Create the master key, the audit chain key and the signing keys if absent. Safe to repeat."""
    keys = key_provider_for(settings)
    initialise = getattr(keys, "initialise", None)
    path = getattr(keys, "path", None)
    if initialise is not None and path is not None and not Path(path).exists():
        initialise()
    chain = settings.instance_path / CHAIN_KEY_FILE
    if not chain.exists():
        _, wrapped = keys.new_wrapped_key(CHAIN_KEY_PURPOSE)
        _write_private(chain, wrapped)
    SigningKeyring.in_instance(settings.instance_path, keys)
    for name in (HUB_SERVICE_TOKEN_FILE, HUB_API_TOKEN_FILE):
        path = settings.instance_path / name
        if not path.exists():
            _write_private(path, secrets.token_urlsafe(32).encode())


def read_secret(settings: Settings, name: str) -> str:
    return (settings.instance_path / name).read_text(encoding="utf-8").strip()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def build_platform(settings: Settings, db: Database) -> Platform:
    keys = key_provider_for(settings)
    chain = settings.instance_path / CHAIN_KEY_FILE
    if not chain.exists():
        raise PlatformNotInitialised(f"no keys in {settings.instance_path}: run `tre init` first")
    chain_key = keys.unwrap_key(chain.read_bytes(), CHAIN_KEY_PURPOSE)
    files = file_store_for(settings, keys)
    ring = SigningKeyring.in_instance(settings.instance_path, keys)

    def is_revoked(jti: str) -> bool:
        with db.session_factory() as s:
            return s.scalar(select(TokenUse.jti).where(TokenUse.jti == jti, TokenUse.kind == "revoked")) is not None

    def consume(jti: str, expires_at: dt.datetime) -> bool:
        # The primary key makes spending a single-use token atomic across every process.
        with db.session_factory() as s:
            s.add(TokenUse(jti=jti, kind="consumed", expires_at=expires_at))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                return False
            return True

    def generation_of(user_id: str) -> int | None:
        with db.session_factory() as s:
            return s.scalar(select(User.token_generation).where(User.id == user_id))

    tokens = TokenService(
        ring, issuer=settings.public_url, is_revoked=is_revoked, consume=consume, generation_of=generation_of
    )
    checkpoints = CheckpointFile(settings.instance_path / CHECKPOINT_FILE, keys.derive_key(CHECKPOINT_KEY_PURPOSE))
    def lane_lengths() -> dict[int, int]:
        # A bare DBAPI connection: on SQLite it reads without BEGIN IMMEDIATE, so it never waits
        # for the write lock a caller's open session may hold.
        raw = db.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT lane, max(lane_seq) FROM audit_events GROUP BY lane")
            return {int(lane): int(length) for lane, length in cursor.fetchall()}
        finally:
            raw.close()

    return Platform(settings, db, keys, AuditLog(chain_key, checkpoints, lane_lengths), files, tokens)


def revoke_token(db: Database, jti: str, expires_at: dt.datetime) -> None:
    with db.session_factory() as s:
        existing = s.get(TokenUse, jti)
        if existing is None:
            s.add(TokenUse(jti=jti, kind="revoked", expires_at=expires_at))
        else:
            existing.kind = "revoked"
        s.commit()


def prune_token_uses(db: Database) -> int:
    from sqlalchemy import delete

    with db.session_factory() as s:
        result = s.execute(delete(TokenUse).where(TokenUse.expires_at < utcnow()))
        s.commit()
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
