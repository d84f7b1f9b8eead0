"""Master keyrings kept at rest only wrapped by an external key service: AWS KMS or a PKCS#11 HSM.

The keyring is the same ``tre-master-keys/1`` JSON that :class:`~tre.core.keys.FileKeyProvider`
writes, but on disk it is only ever AES-256-GCM ciphertext under a fresh data key, and that data key
is stored wrapped by a key that never leaves the service (a KMS key, or a non-extractable AES key
inside the HSM). Loading the keyring asks the service to unwrap the data key; rotating or retiring a
version writes a new blob under a new data key.

What this buys: a copy of the instance folder or of a backup is useless without the right to use
the service's key; revoking that right (disabling the KMS key, removing the HSM key or its PIN)
stops the TRE from starting. What it does not: a running process still holds the keyring in
memory, because :meth:`~tre.core.keys.KeyProvider.derive_key` and the envelopes need it.

Both layers bind the blob to its purpose and to the deployment's name (``TRE_KEY_DEPLOYMENT``):
the KMS encryption context, or the AES-GCM associated data inside the HSM, and the local AES-GCM
associated data. A blob written for another deployment, or altered, does not open.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
import stat
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tre.core.keys import (
    DEFAULT_ENV_VARIABLE,
    KEY_BYTES,
    MASTER_KEY_FILENAME,
    EnvKeyProvider,
    FileKeyProvider,
    KeyFileError,
    KeyProvider,
    KeyProviderError,
    MasterKeyring,
    create_private_file,
    default_key_provider,
    deserialise_keyring,
    replace_private_file,
    serialise_keyring,
)

log = logging.getLogger(__name__)

WRAPPED_KEYRING_FILENAME = "master-keyring.wrapped"
_WRAPPED_FORMAT = "tre-wrapped-master-keys/1"
_PURPOSE = "tre-master-keyring"
_NONCE_BYTES = 12
_PKCS11_SESSIONS = threading.Lock()


class KeyServiceError(KeyProviderError):
    """The key service cannot be reached, refused, or is set up wrongly. Names settings, never keys."""


class KeyService(ABC):
    """An external service holding a key-encryption key that never leaves it."""

    name: str

    @abstractmethod
    def describe(self) -> str:
        """Which key, where: for messages (no secrets)."""

    @abstractmethod
    def check(self) -> str:
        """Reach the service and check the key is there and usable; say what was found."""

    @abstractmethod
    def new_data_key(self, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        """A fresh 32-byte data key and its form wrapped by the service's key under ``context``."""

    @abstractmethod
    def open_data_key(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        """Unwrap a data key made by :meth:`new_data_key` with exactly the same ``context``."""


def keyring_context(deployment: str) -> dict[str, str]:
    return {"tre:purpose": _PURPOSE, "tre:deployment": deployment}


def _aad(context: Mapping[str, str]) -> bytes:
    return (_WRAPPED_FORMAT + "\x00" + json.dumps(dict(context), sort_keys=True)).encode("utf-8")


class WrappedKeyringProvider(KeyProvider):
    """The master keyring in a file that only a key service can open."""

    def __init__(self, path: Path | str, service: KeyService, deployment: str) -> None:
        super().__init__()
        if not deployment:
            raise KeyServiceError("TRE_KEY_DEPLOYMENT must name this deployment")
        self.path = Path(path)
        self.service = service
        self.deployment = deployment

    @classmethod
    def in_instance(cls, instance_path: Path | str, service: KeyService, deployment: str) -> WrappedKeyringProvider:
        return cls(Path(instance_path) / WRAPPED_KEYRING_FILENAME, service, deployment)

    @property
    def _context(self) -> dict[str, str]:
        return keyring_context(self.deployment)

    def _wrap(self, ring: MasterKeyring) -> bytes:
        context = self._context
        data_key, wrapped = self.service.new_data_key(context)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, serialise_keyring(ring), _aad(context))
        document = {
            "format": _WRAPPED_FORMAT,
            "service": self.service.name,
            "deployment": self.deployment,
            "wrapped_data_key": base64.b64encode(wrapped).decode("ascii"),
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
        }
        return json.dumps(document, indent=2).encode("utf-8") + b"\n"

    def initialise(self, keyring: MasterKeyring | None = None) -> None:
        """Write the blob with a fresh keyring, or with ``keyring`` (moving an existing one in)."""
        create_private_file(self.path, self._wrap(keyring or MasterKeyring.generate()))
        self.reload()
        log.info("created wrapped master keyring %s (%s)", self.path, self.service.name)

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise KeyFileError(f"no wrapped master keyring at {self.path}: run `tre init`") from None
        if not stat.S_ISREG(self.path.stat().st_mode):
            raise KeyFileError(f"{self.path} is not a regular file")
        try:
            document = json.loads(raw)
            if document.get("format") != _WRAPPED_FORMAT:
                raise ValueError("format")
            fields = {k: document[k] for k in ("service", "deployment")}
            for k in ("wrapped_data_key", "nonce", "ciphertext"):
                fields[k] = base64.b64decode(document[k], validate=True)
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
            raise KeyFileError(f"{self.path} is not a {_WRAPPED_FORMAT} file") from None
        return fields

    def _load(self) -> MasterKeyring:
        blob = self._read()
        if blob["service"] != self.service.name:
            raise KeyFileError(
                f"{self.path} was wrapped by {blob['service']!r}, but TRE_KEY_PROVIDER is {self.service.name!r}"
            )
        if blob["deployment"] != self.deployment:
            raise KeyFileError(
                f"{self.path} belongs to deployment {blob['deployment']!r}, but TRE_KEY_DEPLOYMENT is "
                f"{self.deployment!r}: a keyring from another deployment is never used"
            )
        context = self._context
        data_key = self.service.open_data_key(blob["wrapped_data_key"], context)
        try:
            plaintext = AESGCM(data_key).decrypt(blob["nonce"], blob["ciphertext"], _aad(context))
        except (InvalidTag, ValueError):
            raise KeyFileError(f"{self.path} was altered: its keyring does not authenticate") from None
        return deserialise_keyring(plaintext, str(self.path))

    def rotate(self) -> int:
        """Add a new master key version and make it current; the blob is rewritten under a new data key."""
        self.reload()
        ring = self._keyring().with_new_version()
        replace_private_file(self.path, self._wrap(ring))
        self.reload()
        log.info("rotated wrapped master keyring %s to version %d", self.path, ring.current)
        return ring.current

    def retire(self, version: int) -> None:
        """Remove an old version: only after every envelope using it has been ``rewrap``-ped."""
        self.reload()
        replace_private_file(self.path, self._wrap(self._keyring().without_version(version)))
        self.reload()
        log.info("retired master key version %d from %s", version, self.path)

    def check(self) -> str:
        """For ``tre doctor``: the service answers, the key is usable and the blob opens."""
        found = self.service.check()
        self.reload()
        ring = self._keyring()
        return (f"{found}; keyring {self.path.name} opens (versions {', '.join(map(str, ring.versions))}, "
                f"current {ring.current}, deployment {self.deployment!r})")

    def __repr__(self) -> str:
        return f"<WrappedKeyringProvider path={str(self.path)!r} service={self.service.name!r}>"

    __str__ = __repr__


# -- AWS KMS -----------------------------------------------------------------------------------------


class AwsKmsKeyService(KeyService):
    """A symmetric KMS key: GenerateDataKey and Decrypt with the keyring's encryption context.

    Credentials come from boto3's usual chain (environment, web identity, instance role). The
    role needs ``kms:GenerateDataKey``, ``kms:Decrypt`` and ``kms:DescribeKey`` on this key only.
    """

    name = "aws-kms"

    def __init__(self, key_id: str, *, endpoint_url: str = "", region: str = "", client: Any = None) -> None:
        if not key_id:
            raise KeyServiceError("TRE_KMS_KEY_ID must name the KMS key")
        self.key_id = key_id
        self.endpoint_url = endpoint_url
        self.region = region
        self._client = client

    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise KeyServiceError("TRE_KEY_PROVIDER=aws-kms needs boto3: pip install 'tre[kms]'") from None
            self._client = boto3.client(
                "kms",
                endpoint_url=self.endpoint_url or None,
                region_name=self.region or None,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=10),
            )
        return self._client

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"KMS key {self.key_id!r}{where}"

    @contextmanager
    def _calling(self, action: str) -> Iterator[None]:
        """Turn botocore's failures into messages that say which setting to look at."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "error"))
            hint = {
                "NotFoundException": "no such key: check TRE_KMS_KEY_ID and TRE_KMS_REGION",
                "DisabledException": "the key is disabled: access to it has been revoked",
                "KMSInvalidStateException": "the key is not usable (disabled or pending deletion)",
                "AccessDeniedException": "this role may not use the key (kms:GenerateDataKey, kms:Decrypt, "
                "kms:DescribeKey), or the keyring was wrapped by another key",
                "IncorrectKeyException": "the keyring was wrapped by another key than TRE_KMS_KEY_ID",
                "InvalidCiphertextException": "the wrapped data key does not open with this key and context: "
                "another key, another TRE_KEY_DEPLOYMENT, or an altered file",
                "UnrecognizedClientException": "the AWS credentials are not accepted",
                "InvalidClientTokenId": "the AWS credentials are not accepted",
            }.get(code, "the service refused")
            raise KeyServiceError(f"{self.describe()}: {action} failed ({code}): {hint}") from None
        except NoCredentialsError:
            raise KeyServiceError(
                f"{self.describe()}: no AWS credentials found (environment, web identity or instance role)"
            ) from None
        except NoRegionError:
            raise KeyServiceError(f"{self.describe()}: no AWS region: set TRE_KMS_REGION") from None
        except BotoCoreError as exc:
            raise KeyServiceError(
                f"{self.describe()}: cannot reach the key service ({type(exc).__name__}): "
                "check TRE_KMS_ENDPOINT_URL, TRE_KMS_REGION and the network"
            ) from None

    def check(self) -> str:
        with self._calling("DescribeKey"):
            meta = self.client().describe_key(KeyId=self.key_id)["KeyMetadata"]
        state, usage, spec = meta.get("KeyState"), meta.get("KeyUsage"), meta.get("KeySpec")
        if state != "Enabled":
            raise KeyServiceError(f"{self.describe()} is {state}, not Enabled: access to it has been revoked")
        if usage not in (None, "ENCRYPT_DECRYPT") or spec not in (None, "SYMMETRIC_DEFAULT"):
            raise KeyServiceError(f"{self.describe()} is {spec} for {usage}; a SYMMETRIC_DEFAULT "
                                  "ENCRYPT_DECRYPT key is needed")
        return f"{self.describe()} is enabled"

    def new_data_key(self, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        with self._calling("GenerateDataKey"):
            answer = self.client().generate_data_key(
                KeyId=self.key_id, KeySpec="AES_256", EncryptionContext=dict(context)
            )
        return bytes(answer["Plaintext"]), bytes(answer["CiphertextBlob"])

    def open_data_key(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        with self._calling("Decrypt"):
            answer = self.client().decrypt(
                CiphertextBlob=wrapped, KeyId=self.key_id, EncryptionContext=dict(context)
            )
        key = bytes(answer["Plaintext"])
        if len(key) != KEY_BYTES:
            raise KeyServiceError(f"{self.describe()}: the unwrapped data key is not {KEY_BYTES} bytes")
        return key

    def __repr__(self) -> str:
        return f"<AwsKmsKeyService key_id={self.key_id!r}>"


# -- PKCS#11 (an HSM) ----------------------------------------------------------------------------------


class Pkcs11KeyService(KeyService):
    """A non-extractable AES key in a PKCS#11 token, found by label; AES-GCM runs inside the token.

    The data key is random from this process; the token encrypts it with CKM_AES_GCM under its own
    key, with the keyring's context as associated data. Nothing but the PIN leaves this process.
    """

    name = "pkcs11"

    def __init__(self, module: str, token_label: str, key_label: str, pin: str) -> None:
        self.module = module
        self.token_label = token_label
        self.key_label = key_label
        self._pin = pin

    def describe(self) -> str:
        return f"AES key {self.key_label!r} on token {self.token_label!r}"

    @contextmanager
    def _key(self, action: str) -> Iterator[Any]:
        try:
            import pkcs11
            from pkcs11 import exceptions as p11
        except ImportError:
            raise KeyServiceError("TRE_KEY_PROVIDER=pkcs11 needs python-pkcs11: pip install 'tre[hsm]'") from None
        try:
            lib = pkcs11.lib(self.module)
        except Exception:  # noqa: BLE001 - a missing or foreign library raises many kinds
            raise KeyServiceError(f"cannot load the PKCS#11 module {self.module} (TRE_PKCS11_MODULE)") from None
        try:
            token = lib.get_token(token_label=self.token_label)
        except p11.NoSuchToken:
            raise KeyServiceError(f"no token labelled {self.token_label!r} in {self.module} "
                                  "(TRE_PKCS11_TOKEN_LABEL)") from None
        except p11.PKCS11Error as exc:
            raise KeyServiceError(
                f"{self.describe()}: the module refused to list tokens ({type(exc).__name__})"
            ) from None
        try:
            # Login state is per process in PKCS#11 and closing a session logs every session out, so
            # one session at a time (loads and rotations are rare; nothing else here uses the token).
            with _PKCS11_SESSIONS, token.open(user_pin=self._pin) as session:
                # The whole search is read (not get_key) so no search is left open when the session closes.
                found = list(session.get_objects({
                    pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                    pkcs11.Attribute.KEY_TYPE: pkcs11.KeyType.AES,
                    pkcs11.Attribute.LABEL: self.key_label,
                }))
                if not found:
                    raise KeyServiceError(f"no AES key labelled {self.key_label!r} on token {self.token_label!r} "
                                          "(TRE_PKCS11_KEY_LABEL)")
                if len(found) > 1:
                    raise KeyServiceError(f"more than one AES key labelled {self.key_label!r} on token "
                                          f"{self.token_label!r}: labels must be unique")
                yield found[0]
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
            raise KeyServiceError(f"token {self.token_label!r} refused the PIN "
                                  "(TRE_PKCS11_PIN or TRE_PKCS11_PIN_FILE)") from None
        except p11.PinLocked:
            raise KeyServiceError(f"token {self.token_label!r} has locked its user PIN; its security "
                                  "officer must reset it") from None
        except p11.PKCS11Error as exc:
            raise KeyServiceError(f"{self.describe()}: {action} failed ({type(exc).__name__}): wrong key, "
                                  "another TRE_KEY_DEPLOYMENT, or an altered file") from None

    def check(self) -> str:
        from pkcs11 import Attribute

        with self._key("reading the key's attributes") as key:
            extractable = key[Attribute.EXTRACTABLE]
            sensitive = key[Attribute.SENSITIVE]
            can = key[Attribute.ENCRYPT] and key[Attribute.DECRYPT]
        if extractable or not sensitive:
            raise KeyServiceError(f"{self.describe()} can leave the token (CKA_EXTRACTABLE true or "
                                  "CKA_SENSITIVE false): make a non-extractable, sensitive key")
        if not can:
            raise KeyServiceError(f"{self.describe()} may not encrypt and decrypt (CKA_ENCRYPT, CKA_DECRYPT)")
        return f"{self.describe()} is usable, sensitive and non-extractable"

    @staticmethod
    def _gcm(nonce: bytes, context: Mapping[str, str]) -> Any:
        from pkcs11 import GCMParams

        return GCMParams(nonce, _aad(context), 128)

    def new_data_key(self, context: Mapping[str, str]) -> tuple[bytes, bytes]:
        from pkcs11 import Mechanism

        data_key = secrets.token_bytes(KEY_BYTES)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        with self._key("wrapping a data key") as key:
            wrapped = key.encrypt(data_key, mechanism=Mechanism.AES_GCM, mechanism_param=self._gcm(nonce, context))
        return data_key, nonce + bytes(wrapped)

    def open_data_key(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        from pkcs11 import Mechanism

        if len(wrapped) != _NONCE_BYTES + KEY_BYTES + 16:
            raise KeyFileError("the wrapped data key is not the length the HSM writes")
        nonce, body = wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:]
        with self._key("unwrapping the keyring's data key") as key:
            data_key = key.decrypt(body, mechanism=Mechanism.AES_GCM, mechanism_param=self._gcm(nonce, context))
        return bytes(data_key)

    def __repr__(self) -> str:
        return f"<Pkcs11KeyService token={self.token_label!r} key={self.key_label!r}>"


# -- choosing ------------------------------------------------------------------------------------------


def key_service_for(settings: Any) -> KeyService:
    if settings.key_provider == "aws-kms":
        return AwsKmsKeyService(settings.kms_key_id, endpoint_url=settings.kms_endpoint_url, region=settings.kms_region)
    if settings.key_provider == "pkcs11":
        pin = settings.pkcs11_pin
        if settings.pkcs11_pin_file:
            try:
                pin = Path(settings.pkcs11_pin_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise KeyServiceError(f"cannot read TRE_PKCS11_PIN_FILE {settings.pkcs11_pin_file} "
                                      f"({exc.strerror})") from None
        return Pkcs11KeyService(settings.pkcs11_module, settings.pkcs11_token_label, settings.pkcs11_key_label, pin)
    raise KeyServiceError(f"TRE_KEY_PROVIDER={settings.key_provider or 'empty'} is not a key service")


def key_provider_for(settings: Any, environ: Mapping[str, str] | None = None) -> KeyProvider:
    """The provider the settings choose (``TRE_KEY_PROVIDER``); see :mod:`tre.core.config`."""
    environ = os.environ if environ is None else environ
    provider = settings.key_provider
    if provider in ("aws-kms", "pkcs11"):
        if environ.get(DEFAULT_ENV_VARIABLE):
            raise KeyServiceError(f"{DEFAULT_ENV_VARIABLE} is set but TRE_KEY_PROVIDER is {provider}: the keyring "
                                  f"comes from the key service, so unset {DEFAULT_ENV_VARIABLE}")
        return WrappedKeyringProvider.in_instance(settings.instance_path, key_service_for(settings),
                                                  settings.key_deployment)
    if provider == "env":
        return EnvKeyProvider(DEFAULT_ENV_VARIABLE, environ)
    if provider == "file":
        return FileKeyProvider.in_instance(settings.instance_path)
    return default_key_provider(settings.instance_path, environ)


def wrap_existing_keyring(
    settings: Any, from_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[WrappedKeyringProvider, str]:
    """Move a clear keyring (``from_file``, else ``TRE_MASTER_KEY``, else ``master.key``) into the
    chosen key service, keeping every version, so everything sealed so far still opens."""
    environ = os.environ if environ is None else environ
    if settings.key_provider not in ("aws-kms", "pkcs11"):
        raise KeyServiceError("set TRE_KEY_PROVIDER to aws-kms or pkcs11 (and its settings) first")
    source: KeyProvider
    if from_file is not None:
        source, where = FileKeyProvider(from_file), str(from_file)
    elif environ.get(DEFAULT_ENV_VARIABLE):
        source, where = EnvKeyProvider(DEFAULT_ENV_VARIABLE, environ), DEFAULT_ENV_VARIABLE
    else:
        path = Path(settings.instance_path) / MASTER_KEY_FILENAME
        source, where = FileKeyProvider(path), str(path)
    target = WrappedKeyringProvider.in_instance(settings.instance_path, key_service_for(settings),
                                                settings.key_deployment)
    if target.path.exists():
        raise KeyFileError(f"{target.path} already exists; refusing to replace a wrapped keyring")
    target.initialise(source._keyring())
    return target, f"from {where}, versions {', '.join(map(str, target.versions))}"
