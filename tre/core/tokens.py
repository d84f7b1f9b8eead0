"""API tokens: short-lived EdDSA-signed JWTs, their signing keyring, and personal tokens for scripts.

This is the only module that encodes or decodes JWTs (a test enforces it), so the rules live in
one place: the algorithm is fixed to EdDSA before the token is read (never taken from its header,
which is how ``alg=none`` and HMAC-with-the-public-key forgeries work); ``exp``, ``iat``, ``nbf``,
``aud``, ``iss``, ``jti`` and ``sub`` are required; the key is chosen by ``kid`` from our own keyring
only; revocation and single use are checked through hooks the database layer supplies.

Signing keys rotate: a keyring holds several Ed25519 keys, signs with the current one and verifies
with any it still holds, so tokens minted before a rotation stay valid until their key is retired.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, NoReturn

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from tre.core.keys import KeyProvider, KeyProviderError

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
SIGNING_KEYS_FILENAME = "jwt-signing-keys.json"
# Real tokens are a few hundred bytes; refusing big ones early bounds the work an attacker can cause.
MAX_TOKEN_CHARS = 8192
_FILE_FORMAT = "tre-jwt-signing-keys/1"
_ALLOWED_HEADER = frozenset({"alg", "kid", "typ"})
_REQUIRED_CLAIMS = ["exp", "iat", "nbf", "aud", "iss", "jti", "sub", "purpose"]
_RESERVED_CLAIMS = frozenset(_REQUIRED_CLAIMS) | {"project", "single_use", "gen"}
# A process that meets an unknown kid re-reads the key file at most this often (another process
# may have rotated), so a stream of made-up kids cannot turn into a stream of file reads.
_RELOAD_INTERVAL_SECONDS = 30.0


class TokenKeyError(Exception):
    """The signing key file is missing, malformed or does not match its key ids."""


class Refusal(StrEnum):
    """Why a token was refused: for the audit log, never for the response (which says only 401)."""

    MALFORMED = "malformed"
    ALGORITHM = "algorithm"
    UNKNOWN_KEY = "unknown_key"
    SIGNATURE = "signature"
    MISSING_CLAIM = "missing_claim"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    AUDIENCE = "audience"
    ISSUER = "issuer"
    PURPOSE = "purpose"
    REVOKED = "revoked"
    # Minted before the person's last password reset, MFA reset or (de)activation.
    SUPERSEDED = "superseded"
    REPLAYED = "replayed"


class InvalidToken(Exception):
    """A token was refused. The message never contains the token itself."""

    def __init__(self, reason: Refusal) -> None:
        super().__init__(f"token refused: {reason.value}")
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Claims:
    """What a verified token says; only ever built from a token that passed every check."""

    subject: str
    audience: str
    issuer: str
    purpose: str
    jti: str
    issued_at: dt.datetime
    not_before: dt.datetime
    expires_at: dt.datetime
    project_id: str | None = None
    single_use: bool = False
    extra: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))


@dataclasses.dataclass(frozen=True)
class StoredState:
    """What the database says of a presented token, read by the caller in one go (see ``verify``)."""

    revoked: bool  # its jti is recorded as revoked
    generation: int | None  # its subject's current token generation; None: no such account


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint: a kid that is derived from the key, so it cannot lie about it."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _b64url(_raw_public(public_key))},
        separators=(",", ":"),
        sort_keys=True,
    )
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


class SigningKeyring:
    """Ed25519 signing keys by kid, one current. In memory (``generate``) or in a sealed file."""

    def __init__(self, keys: Mapping[str, Ed25519PrivateKey], current_kid: str) -> None:
        self._lock = threading.Lock()
        self._source: tuple[Path, KeyProvider] | None = None
        self._last_reload = float("-inf")
        self._set(dict(keys), current_kid)

    def _set(self, keys: dict[str, Ed25519PrivateKey], current_kid: str) -> None:
        for kid, private in keys.items():
            if key_id(private.public_key()) != kid:
                raise TokenKeyError(f"signing key {kid!r} does not match its key id")
        if current_kid not in keys:
            raise TokenKeyError("the current signing key is not in the keyring")
        self._keys = keys
        self._current = current_kid

    @classmethod
    def generate(cls) -> SigningKeyring:
        """A keyring with one fresh key that lives only in this process: for tests and tools."""
        private = Ed25519PrivateKey.generate()
        return cls({key_id(private.public_key()): private}, key_id(private.public_key()))

    @classmethod
    def load(cls, path: Path | str, keys: KeyProvider) -> SigningKeyring:
        """Read a keyring saved by :meth:`save`; later rotations are saved back to the same file."""
        path = Path(path)
        ring = cls(*_read_keyring_file(path, keys))
        ring._source = (path, keys)
        ring._last_reload = time.monotonic()
        return ring

    @classmethod
    def load_or_create(cls, path: Path | str, keys: KeyProvider) -> SigningKeyring:
        """Load the keyring, first creating it with one fresh key if the file does not exist."""
        path = Path(path)
        if not path.exists():
            fresh = cls.generate()
            try:
                _write_keyring_file(path, keys, fresh._keys, fresh._current, exclusive=True)
            except FileExistsError:
                pass  # another process created it first; use theirs
            else:
                log.info("created JWT signing keyring %s", path)
        return cls.load(path, keys)

    @classmethod
    def in_instance(cls, instance_path: Path | str, keys: KeyProvider) -> SigningKeyring:
        return cls.load_or_create(Path(instance_path) / SIGNING_KEYS_FILENAME, keys)

    def save(self, path: Path | str, keys: KeyProvider) -> None:
        """Write every key, sealed by the key provider, atomically to ``path`` (mode 0600)."""
        with self._lock:
            _write_keyring_file(Path(path), keys, self._keys, self._current, exclusive=False)

    @property
    def current_kid(self) -> str:
        return self._current

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def rotate(self) -> str:
        """Add a fresh key and sign with it from now on; the old keys still verify. Returns its kid."""
        with self._lock:
            self._reload_locked()
            private = Ed25519PrivateKey.generate()
            kid = key_id(private.public_key())
            keys = {**self._keys, kid: private}
            self._persist_locked(keys, kid)
            self._set(keys, kid)
        log.info("rotated JWT signing key; new kid %s", kid)
        return kid

    def retire(self, kid: str) -> None:
        """Stop accepting tokens signed with ``kid``; wait until its tokens have expired first."""
        with self._lock:
            self._reload_locked()
            if kid == self._current:
                raise TokenKeyError("the current signing key cannot be retired; rotate first")
            if kid not in self._keys:
                raise TokenKeyError(f"no signing key {kid!r}")
            keys = {k: v for k, v in self._keys.items() if k != kid}
            self._persist_locked(keys, self._current)
            self._set(keys, self._current)
        log.info("retired JWT signing key %s", kid)

    def _reload_locked(self) -> None:
        if self._source is not None:
            self._set(*_read_keyring_file(*self._source))
            self._last_reload = time.monotonic()

    def _persist_locked(self, keys: dict[str, Ed25519PrivateKey], current: str) -> None:
        if self._source is not None:
            path, provider = self._source
            _write_keyring_file(path, provider, keys, current, exclusive=False)

    def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        return self._current, self._keys[self._current]

    def verification_key(self, kid: str) -> Ed25519PublicKey | None:
        """The public key for ``kid``, re-reading a file-backed keyring (rate-limited) on a miss."""
        private = self._keys.get(kid)
        if private is None and self._source is not None:
            with self._lock:
                if time.monotonic() - self._last_reload >= _RELOAD_INTERVAL_SECONDS:
                    self._reload_locked()
            private = self._keys.get(kid)
        return None if private is None else private.public_key()

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public keys as a JSON Web Key Set, current key first, for anyone verifying our tokens."""
        ordered = [self._current] + [kid for kid in self._keys if kid != self._current]
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64url(_raw_public(self._keys[kid].public_key())),
                    "kid": kid,
                    "use": "sig",
                    "alg": ALGORITHM,
                }
                for kid in ordered
            ]
        }

    def __repr__(self) -> str:
        return f"<SigningKeyring kids={list(self._keys)} current={self._current!r}>"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("SigningKeyring holds private keys and cannot be pickled")


def _signing_key_purpose(kid: str) -> str:
    return f"jwt-signing-key:{kid}"


def _read_keyring_file(path: Path, provider: KeyProvider) -> tuple[dict[str, Ed25519PrivateKey], str]:
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise TokenKeyError(f"no signing keyring at {path}") from None
    except ValueError:
        raise TokenKeyError(f"{path} is not a {_FILE_FORMAT} file") from None
    try:
        if document["format"] != _FILE_FORMAT:
            raise ValueError("format")
        keys: dict[str, Ed25519PrivateKey] = {}
        for entry in document["keys"]:
            kid = entry["kid"]
            raw = provider.unseal(base64.b64decode(entry["sealed"], validate=True), _signing_key_purpose(kid))
            keys[kid] = Ed25519PrivateKey.from_private_bytes(raw)
        current = document["current"]
    except (KeyError, TypeError, ValueError, KeyProviderError):
        raise TokenKeyError(f"{path}: a signing key could not be read or unsealed") from None
    return keys, current


def _write_keyring_file(
    path: Path, provider: KeyProvider, keys: Mapping[str, Ed25519PrivateKey], current: str, *, exclusive: bool
) -> None:
    """Atomic replace; with ``exclusive`` the final rename refuses to clobber a file made meanwhile."""
    document = {
        "format": _FILE_FORMAT,
        "current": current,
        "keys": [
            {
                "kid": kid,
                "sealed": base64.b64encode(
                    provider.seal(
                        private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()),
                        _signing_key_purpose(kid),
                    )
                ).decode("ascii"),
            }
            for kid, private in keys.items()
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".jwt-keys-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if another process created the file first
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- issuing and verifying -----------------------------------------------------------------------


class InMemoryRevocations:
    """Revoked jtis in a set: the test double for the database-backed revocation list."""

    def __init__(self) -> None:
        self._revoked: set[str] = set()

    def revoke(self, jti: str) -> None:
        self._revoked.add(jti)

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked


class InMemorySingleUse:
    """Consumed jtis in a dict: the test double for the database's unique-jti table."""

    def __init__(self) -> None:
        self._used: dict[str, dt.datetime] = {}
        self._lock = threading.Lock()

    def consume(self, jti: str, expires_at: dt.datetime) -> bool:
        with self._lock:
            if jti in self._used:
                return False
            self._used[jti] = expires_at
            return True


class TokenService:
    """Mints and checks API tokens for one issuer.

    ``is_revoked(jti)`` is required so revocation cannot be forgotten. ``consume(jti, expires_at)``
    must atomically record a jti and return False if it was already recorded (a unique row in the
    database); without it, single-use tokens are refused rather than accepted more than once.
    ``generation_of(subject)`` gives the subject's current token generation (None for nobody):
    with it every token carries the generation it was minted in (claim ``gen``) and is refused
    once the person's generation has moved on, so one bump ends every token of a person.
    """

    def __init__(
        self,
        keyring: SigningKeyring,
        issuer: str,
        *,
        is_revoked: Callable[[str], bool],
        consume: Callable[[str, dt.datetime], bool] | None = None,
        generation_of: Callable[[str], int | None] | None = None,
        leeway: dt.timedelta = dt.timedelta(seconds=10),
        max_ttl: dt.timedelta = dt.timedelta(hours=24),
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        if not issuer:
            raise ValueError("an issuer is required")
        self.keyring = keyring
        self.issuer = issuer
        self._is_revoked = is_revoked
        self._consume = consume
        self._generation_of = generation_of
        self.leeway = leeway
        self.max_ttl = max_ttl
        self._clock = clock

    def issue(
        self,
        subject: str,
        audience: str,
        purpose: str,
        ttl: dt.timedelta,
        project_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        *,
        single_use: bool = False,
    ) -> str:
        """A signed token; see :meth:`issue_with_claims` when the jti must be stored for revocation."""
        return self.issue_with_claims(
            subject, audience, purpose, ttl, project_id, extra, single_use=single_use
        )[0]

    def issue_with_claims(
        self,
        subject: str,
        audience: str,
        purpose: str,
        ttl: dt.timedelta,
        project_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        *,
        single_use: bool = False,
    ) -> tuple[str, Claims]:
        for name, value in (("subject", subject), ("audience", audience), ("purpose", purpose)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"a token needs a non-empty {name}")
        if project_id is not None and (not isinstance(project_id, str) or not project_id):
            raise ValueError("project_id must be a non-empty string or None")
        if not dt.timedelta(seconds=1) <= ttl <= self.max_ttl:
            raise ValueError(f"a token lives between one second and {self.max_ttl}")
        extra = dict(extra or {})
        clash = _RESERVED_CLAIMS.intersection(extra)
        if clash:
            raise ValueError(f"extra claims may not set reserved claims: {', '.join(sorted(clash))}")

        issued = int(self._now().timestamp())
        expires = issued + int(ttl.total_seconds())
        jti = secrets.token_urlsafe(16)
        payload: dict[str, Any] = {
            **extra,
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
            "jti": jti,
            "purpose": purpose,
        }
        if project_id is not None:
            payload["project"] = project_id
        if single_use:
            payload["single_use"] = True
        if self._generation_of is not None:
            generation = self._generation_of(subject)
            if generation is None:
                raise ValueError("no token can be issued for an unknown subject")
            payload["gen"] = generation
        kid, private = self.keyring.signing_key()
        token = jwt.encode(payload, private, algorithm=ALGORITHM, headers={"kid": kid, "typ": "JWT"})
        log.debug("issued token jti=%s purpose=%s kid=%s", jti, purpose, kid)
        return token, _claims_from(payload)

    def verify(
        self,
        token: str,
        audience: str,
        purpose: str | None = None,
        *,
        stored: Callable[[Claims], StoredState] | None = None,
    ) -> Claims:
        """The claims of a token that passes every check; otherwise :class:`InvalidToken`.

        ``purpose=None`` accepts any purpose: pass one wherever the caller knows what it expects.
        ``stored``, if given, reads the token's revocation and its subject's generation together
        (one statement, in the caller's transaction) instead of the service's two separate reads;
        it is asked only once the signature and every claim have passed, and every decision on what
        it returns is still taken here, in the same order.
        """
        if not isinstance(audience, str) or not audience:
            raise ValueError("verify() needs the audience this service answers to")
        try:
            claims = self._verify(token, audience, purpose, stored)
        except InvalidToken as refused:
            log.info("token refused: %s", refused.reason.value)
            raise
        return claims

    def _verify(
        self, token: str, audience: str, purpose: str | None, stored: Callable[[Claims], StoredState] | None
    ) -> Claims:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken(Refusal.MALFORMED)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken(Refusal.MALFORMED) from None
        # Decide the algorithm ourselves, before any key is touched.
        if header.get("alg") != ALGORITHM:
            raise InvalidToken(Refusal.ALGORITHM)
        if not _ALLOWED_HEADER.issuperset(header):
            # jku, jwk, x5u, crit...: we never take keys or rules from the token itself.
            raise InvalidToken(Refusal.MALFORMED)
        kid = header.get("kid")
        public = self.keyring.verification_key(kid) if isinstance(kid, str) else None
        if public is None:
            raise InvalidToken(Refusal.UNKNOWN_KEY)
        try:
            payload = jwt.decode(
                token,
                key=public,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=self.issuer,
                options={
                    "require": _REQUIRED_CLAIMS,
                    "strict_aud": True,
                    # Times are checked below against our injectable clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken(Refusal.SIGNATURE) from None
        except jwt.MissingRequiredClaimError:
            raise InvalidToken(Refusal.MISSING_CLAIM) from None
        except jwt.InvalidAudienceError:
            raise InvalidToken(Refusal.AUDIENCE) from None
        except jwt.InvalidIssuerError:
            raise InvalidToken(Refusal.ISSUER) from None
        except jwt.InvalidTokenError:
            raise InvalidToken(Refusal.MALFORMED) from None

        # Belt and braces over the library's own checks: exact string equality, nothing looser.
        if payload["aud"] != audience:
            raise InvalidToken(Refusal.AUDIENCE)
        if payload["iss"] != self.issuer:
            raise InvalidToken(Refusal.ISSUER)
        for name in ("exp", "nbf", "iat"):
            if not isinstance(payload[name], int) or isinstance(payload[name], bool):
                raise InvalidToken(Refusal.MALFORMED)
        for name in ("jti", "sub", "purpose"):
            if not isinstance(payload[name], str) or not payload[name]:
                raise InvalidToken(Refusal.MALFORMED)
        project = payload.get("project")
        if project is not None and not isinstance(project, str):
            raise InvalidToken(Refusal.MALFORMED)
        single_use = payload.get("single_use", False)
        if not isinstance(single_use, bool):
            raise InvalidToken(Refusal.MALFORMED)

        now = self._now().timestamp()
        leeway = self.leeway.total_seconds()
        if payload["exp"] <= now - leeway:
            raise InvalidToken(Refusal.EXPIRED)
        if payload["nbf"] > now + leeway or payload["iat"] > now + leeway:
            raise InvalidToken(Refusal.NOT_YET_VALID)
        if purpose is not None and payload["purpose"] != purpose:
            raise InvalidToken(Refusal.PURPOSE)

        generation = payload.get("gen")
        if generation is not None and (not isinstance(generation, int) or isinstance(generation, bool)):
            raise InvalidToken(Refusal.MALFORMED)

        claims = _claims_from(payload)
        state = stored(claims) if stored is not None else None
        if state.revoked if state is not None else self._is_revoked(claims.jti):
            raise InvalidToken(Refusal.REVOKED)
        if self._generation_of is not None and (
            generation is None
            or generation != (state.generation if state is not None else self._generation_of(claims.subject))
        ):
            raise InvalidToken(Refusal.SUPERSEDED)
        if claims.single_use and (self._consume is None or not self._consume(claims.jti, claims.expires_at)):
            raise InvalidToken(Refusal.REPLAYED)
        return claims

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return self.keyring.jwks()

    def _now(self) -> dt.datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the token clock must return timezone-aware datetimes")
        return now

    def __repr__(self) -> str:
        return f"<TokenService issuer={self.issuer!r} keyring={self.keyring!r}>"


def _claims_from(payload: Mapping[str, Any]) -> Claims:
    def at(seconds: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)

    extra = {k: v for k, v in payload.items() if k not in _RESERVED_CLAIMS}
    return Claims(
        subject=payload["sub"],
        audience=payload["aud"],
        issuer=payload["iss"],
        purpose=payload["purpose"],
        jti=payload["jti"],
        issued_at=at(payload["iat"]),
        not_before=at(payload["nbf"]),
        expires_at=at(payload["exp"]),
        project_id=payload.get("project"),
        single_use=bool(payload.get("single_use", False)),
        extra=MappingProxyType(extra),
    )


# -- personal API tokens ---------------------------------------------------------------------------

# A public marker (not a secret) that lets secret scanners recognise a leaked token.
PERSONAL_TOKEN_PREFIX = "trepat"  # noqa: S105
_PERSONAL_TOKEN = re.compile(rf"{PERSONAL_TOKEN_PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})")


class PersonalToken(NamedTuple):
    """A new personal token. Show ``plaintext`` to its owner once; store only the other two."""

    plaintext: str
    lookup_prefix: str
    hash: str

    def __repr__(self) -> str:
        return f"PersonalToken(lookup_prefix={self.lookup_prefix!r}, plaintext=<hidden>)"


def new_personal_token() -> PersonalToken:
    """``trepat_<12 hex lookup>_<256-bit secret>``: the prefix finds the row, the hash proves it.

    The hash is plain SHA-256, not argon2: argon2's slowness exists to protect guessable passwords,
    but a 256-bit random secret cannot be guessed however fast the hash, and a fast hash lets every
    API request check a token without handing attackers a CPU-exhaustion lever.
    """
    lookup = secrets.token_hex(6)
    plaintext = f"{PERSONAL_TOKEN_PREFIX}_{lookup}_{secrets.token_urlsafe(32)}"
    return PersonalToken(plaintext, lookup, hash_personal_token(plaintext))


def hash_personal_token(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def personal_token_lookup_prefix(plaintext: str) -> str:
    """The lookup prefix of a presented token, or :class:`InvalidToken` if it is not one of ours."""
    match = _PERSONAL_TOKEN.fullmatch(plaintext) if isinstance(plaintext, str) else None
    if match is None:
        raise InvalidToken(Refusal.MALFORMED)
    return match.group(1)


def personal_token_matches(plaintext: str, stored_hash: str) -> bool:
    """Compare in constant time, so response timing reveals nothing about the stored hash."""
    if not isinstance(plaintext, str) or not isinstance(stored_hash, str):
        return False
    return hmac.compare_digest(hash_personal_token(plaintext).encode(), stored_hash.encode())
