"""The master keyring wrapped by AWS KMS, against a real KMS server over HTTP on loopback.

The server is moto's (tests/tre/core/conftest.py): it really encrypts, binds the encryption context
and refuses a wrong one, and keeps key state; it does not enforce IAM or key policies.
"""

from __future__ import annotations

import base64
import json
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.tre.core.conftest import free_port
from tre.core.config import Settings
from tre.core.doctor import run_checks
from tre.core.keys import FileKeyProvider, KeyFileError, KeyProvider, MasterKeyring
from tre.core.keyservices import (
    WRAPPED_KEYRING_FILENAME,
    KeyServiceError,
    WrappedKeyringProvider,
    key_provider_for,
    wrap_existing_keyring,
)

pytestmark = pytest.mark.integration

boto3 = pytest.importorskip("boto3", reason="boto3 and moto[server] are in the dev extra")

REGION = "eu-west-2"


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3's own credential chain, as in production (the emulator accepts any key).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-test")
    monkeypatch.delenv("TRE_MASTER_KEY", raising=False)


@pytest.fixture
def kms(moto_server: str) -> Any:
    return boto3.client("kms", endpoint_url=moto_server, region_name=REGION)


@pytest.fixture
def key_id(kms: Any) -> str:
    return str(kms.create_key(KeyUsage="ENCRYPT_DECRYPT", KeySpec="SYMMETRIC_DEFAULT")["KeyMetadata"]["KeyId"])


def kms_settings(instance: Path, endpoint: str, key_id: str, deployment: str = "tre-north", **more: Any) -> Settings:
    instance.mkdir(parents=True, exist_ok=True, mode=0o711)
    return Settings.from_env({}, instance_path=instance, key_provider="aws-kms", kms_key_id=key_id,
                             kms_endpoint_url=endpoint, kms_region=REGION, key_deployment=deployment, **more)


@pytest.fixture
def settings(tmp_path: Path, moto_server: str, key_id: str) -> Settings:
    return kms_settings(tmp_path / "instance", moto_server, key_id)


def initialised(settings: Settings) -> WrappedKeyringProvider:
    provider = key_provider_for(settings)
    assert isinstance(provider, WrappedKeyringProvider)
    provider.initialise()
    assert provider.versions == (1,)  # loaded now, so it keeps this keyring if a test alters the file
    return provider


def key_material(provider: KeyProvider) -> list[bytes]:
    ring = provider._keyring()
    keys = [ring.key(v) for v in ring.versions]
    return keys + [base64.b64encode(k) for k in keys] + [k.hex().encode() for k in keys]


def assert_holds_no_key(text: str | bytes, provider: KeyProvider) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in key_material(provider):
        assert secret not in data


def test_keyring_is_kept_only_wrapped_and_opens_in_another_process_s_provider(settings: Settings) -> None:
    provider = initialised(settings)
    envelope = provider.seal(b"an approved output", "filestore:abc")

    blob = (settings.instance_path / WRAPPED_KEYRING_FILENAME).read_bytes()
    reopened = key_provider_for(settings)

    assert json.loads(blob)["format"] == "tre-wrapped-master-keys/1"
    assert_holds_no_key(blob, provider)
    assert not (settings.instance_path / "master.key").exists()
    assert reopened.unseal(envelope, "filestore:abc") == b"an approved output"
    assert reopened.derive_key("audit-chain") == provider.derive_key("audit-chain")


def test_keyring_from_another_deployment_is_refused_before_the_service_is_asked(
    settings: Settings, moto_server: str
) -> None:
    initialised(settings)
    other = kms_settings(settings.instance_path, moto_server, settings.kms_key_id, deployment="tre-south")

    with pytest.raises(KeyFileError, match="belongs to deployment 'tre-north'.*TRE_KEY_DEPLOYMENT is 'tre-south'"):
        _ = key_provider_for(other).current_version


def test_keyring_relabelled_for_another_deployment_is_refused_by_the_kms_encryption_context(
    settings: Settings, moto_server: str
) -> None:
    provider = initialised(settings)
    path = settings.instance_path / WRAPPED_KEYRING_FILENAME
    document = json.loads(path.read_bytes())
    document["deployment"] = "tre-south"
    path.write_text(json.dumps(document))
    other = kms_settings(settings.instance_path, moto_server, settings.kms_key_id, deployment="tre-south")

    with pytest.raises(KeyServiceError, match="InvalidCiphertextException") as refused:
        _ = key_provider_for(other).current_version

    assert "TRE_KEY_DEPLOYMENT" in str(refused.value)
    assert_holds_no_key(str(refused.value), provider)


def test_altered_keyring_ciphertext_does_not_authenticate(settings: Settings) -> None:
    initialised(settings)
    path = settings.instance_path / WRAPPED_KEYRING_FILENAME
    document = json.loads(path.read_bytes())
    ciphertext = bytearray(base64.b64decode(document["ciphertext"]))
    ciphertext[5] ^= 1
    document["ciphertext"] = base64.b64encode(bytes(ciphertext)).decode()
    path.write_text(json.dumps(document))

    with pytest.raises(KeyFileError, match="was altered"):
        _ = key_provider_for(settings).current_version


def test_keyring_wrapped_by_another_kms_key_does_not_open(settings: Settings, kms: Any, moto_server: str) -> None:
    initialised(settings)
    other_key = kms.create_key()["KeyMetadata"]["KeyId"]
    other = kms_settings(settings.instance_path, moto_server, other_key)

    # AWS answers IncorrectKeyException; moto answers AccessDeniedException.
    with pytest.raises(KeyServiceError, match=r"Decrypt failed \((IncorrectKeyException|AccessDeniedException)\)"):
        _ = key_provider_for(other).current_version


def test_doctor_says_the_kms_key_is_disabled(settings: Settings, kms: Any) -> None:
    # AWS then refuses Decrypt too (DisabledException), so the TRE cannot start; moto does not
    # enforce key state on Decrypt, so start-up refusal on revocation is shown by the HSM tests.
    initialised(settings)

    kms.disable_key(KeyId=settings.kms_key_id)

    finding = next(f for f in run_checks(settings, None) if f.check == "master key")
    assert not finding.ok and "is Disabled, not Enabled: access to it has been revoked" in finding.message


def test_rotate_master_through_the_cli_rewraps_the_blob_and_old_envelopes_still_open(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tre.cli import main

    provider = initialised(settings)
    envelope = provider.seal(b"sealed before rotation", "filestore:before")
    before = (settings.instance_path / WRAPPED_KEYRING_FILENAME).read_bytes()
    for name, value in {"TRE_INSTANCE_PATH": settings.instance_path, "TRE_KEY_PROVIDER": "aws-kms",
                        "TRE_KMS_KEY_ID": settings.kms_key_id, "TRE_KMS_ENDPOINT_URL": settings.kms_endpoint_url,
                        "TRE_KMS_REGION": REGION, "TRE_KEY_DEPLOYMENT": "tre-north"}.items():
        monkeypatch.setenv(name, str(value))

    result = CliRunner().invoke(main, ["keys", "rotate-master"])

    assert result.exit_code == 0, result.output
    assert "master key version 2 is now current" in result.output
    reopened = key_provider_for(settings)
    assert reopened.versions == (1, 2)
    assert (settings.instance_path / WRAPPED_KEYRING_FILENAME).read_bytes() != before
    assert reopened.unseal(envelope, "filestore:before") == b"sealed before rotation"
    rewrapped = reopened.rewrap(envelope, "filestore:before")
    assert isinstance(reopened, WrappedKeyringProvider)
    reopened.retire(1)
    assert key_provider_for(settings).unseal(rewrapped, "filestore:before") == b"sealed before rotation"


def test_a_clear_key_file_is_moved_into_kms_with_every_version(settings: Settings, tmp_path: Path) -> None:
    clear = FileKeyProvider(tmp_path / "old" / "master.key")
    clear.initialise()
    clear.rotate()
    envelope = clear.seal(b"sealed under the clear key", "project-key:7")

    target, said = wrap_existing_keyring(settings, clear.path)

    assert "versions 1, 2" in said
    assert key_provider_for(settings).unseal(envelope, "project-key:7") == b"sealed under the clear key"
    with pytest.raises(KeyFileError, match="already exists"):
        wrap_existing_keyring(settings, clear.path)
    assert target.path.read_bytes() == (settings.instance_path / WRAPPED_KEYRING_FILENAME).read_bytes()


def test_master_key_in_the_environment_beside_a_key_service_is_refused_naming_the_variable(
    settings: Settings,
) -> None:
    with pytest.raises(KeyServiceError, match="TRE_MASTER_KEY is set but TRE_KEY_PROVIDER is aws-kms"):
        key_provider_for(settings, {"TRE_MASTER_KEY": "anything"})


# -- tre doctor ------------------------------------------------------------------------------------


def master_key_finding(settings: Settings) -> Any:
    return next(f for f in run_checks(settings, None) if f.check == "master key")


def test_doctor_reaches_the_key_and_opens_the_keyring(settings: Settings) -> None:
    initialised(settings)

    finding = master_key_finding(settings)

    assert finding.ok, finding.message
    assert settings.kms_key_id in finding.message and "is enabled" in finding.message
    assert "opens (versions 1, current 1, deployment 'tre-north')" in finding.message


def test_doctor_names_a_missing_keyring_an_unknown_key_and_an_unreachable_service(
    settings: Settings, tmp_path: Path, moto_server: str
) -> None:
    missing_blob = master_key_finding(settings)
    unknown_key = master_key_finding(kms_settings(tmp_path / "b", moto_server, str(uuid.uuid4())))
    unreachable = master_key_finding(kms_settings(tmp_path / "c", f"http://127.0.0.1:{free_port()}",
                                                  settings.kms_key_id))

    assert not missing_blob.ok and "no wrapped master keyring" in missing_blob.message
    assert "tre init" in missing_blob.message
    assert not unknown_key.ok and "NotFoundException" in unknown_key.message
    assert "TRE_KMS_KEY_ID" in unknown_key.message
    assert not unreachable.ok and "cannot reach the key service" in unreachable.message
    assert "TRE_KMS_ENDPOINT_URL" in unreachable.message


def test_doctor_fails_while_a_clear_master_key_lies_beside_the_wrapped_one(settings: Settings) -> None:
    initialised(settings)
    FileKeyProvider.in_instance(settings.instance_path).initialise()

    finding = master_key_finding(settings)

    assert not finding.ok and "in clear" in finding.message and "shred" in finding.message


def test_doctor_accepts_a_key_service_in_production(settings: Settings, moto_server: str) -> None:
    initialised(settings)
    production = kms_settings(settings.instance_path, moto_server, settings.kms_key_id, environment="production")

    assert master_key_finding(production).ok


# -- backup and restore ----------------------------------------------------------------------------


def test_backup_carries_only_the_wrapped_keyring_and_restores_with_the_same_kms_key(
    tmp_path: Path, moto_server: str, key_id: str
) -> None:
    from tests.conftest import make_test_app
    from tre.core import migrate
    from tre.core.audit import iter_events
    from tre.core.backup import create_backup, restore_backup
    from tre.core.db import make_engine
    from tre.models import metadata

    kms = {"key_provider": "aws-kms", "kms_key_id": key_id, "kms_endpoint_url": moto_server,
           "kms_region": REGION, "key_deployment": "tre-north"}
    url = f"sqlite:///{tmp_path / 'source.sqlite'}"
    migrate.upgrade(url)
    source = make_test_app(tmp_path / "source", url, **kms)
    p = source.extensions["tre.platform"]
    digest = p.files.put(b"an approved output table\n")
    archive = tmp_path / "backup.tar.gz"
    create_backup(p.db.engine, metadata, tmp_path / "source", archive, files=p.files)
    p.db.dispose()

    with tarfile.open(archive) as tar:
        names = tar.getnames()
        blob = tar.extractfile(f"instance/{WRAPPED_KEYRING_FILENAME}").read()  # type: ignore[union-attr]
    assert not any("master.key" in n for n in names)
    assert_holds_no_key(blob, p.keys)

    target_url = f"sqlite:///{tmp_path / 'target.sqlite'}"
    migrate.upgrade(target_url)
    target_settings = kms_settings(tmp_path / "target", moto_server, key_id)
    engine = make_engine(target_url)
    restore_backup(archive, engine, metadata, tmp_path / "target", files=None)
    engine.dispose()

    target = make_test_app(tmp_path / "target", target_url, **kms)
    tp = target.extensions["tre.platform"]
    assert tp.files.get(digest) == b"an approved output table\n"
    with tp.db.session_factory() as s:
        assert tp.audit.verify(iter_events(s)).ok
    assert key_provider_for(target_settings).derive_key("x") == p.keys.derive_key("x")
    tp.db.dispose()


def test_keyring_survives_many_rotations_beyond_what_kms_encrypt_could_hold(settings: Settings) -> None:
    provider = initialised(settings)
    envelope = provider.seal(b"first", "p")
    ring = MasterKeyring.generate()
    for _ in range(120):
        ring = ring.with_new_version()
    big = WrappedKeyringProvider(settings.instance_path / "big.wrapped", provider.service, "tre-north")

    big.initialise(ring)

    assert key_provider_for(settings).unseal(envelope, "p") == b"first"
    assert WrappedKeyringProvider(big.path, provider.service, "tre-north").versions == ring.versions
    assert big.path.stat().st_size > 4096


def test_tre_backup_and_tre_restore_commands_carry_the_keyring_wrapped_and_need_no_passphrase(
    tmp_path: Path, moto_server: str, key_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tre.cli import main

    def use(instance: Path) -> None:
        for name, value in {"TRE_INSTANCE_PATH": instance, "TRE_DATABASE_URL": f"sqlite:///{instance}.sqlite",
                            "TRE_BROKER_URL": "memory://", "TRE_KEY_PROVIDER": "aws-kms", "TRE_KMS_KEY_ID": key_id,
                            "TRE_KMS_ENDPOINT_URL": moto_server, "TRE_KMS_REGION": REGION,
                            "TRE_KEY_DEPLOYMENT": "tre-north"}.items():
            monkeypatch.setenv(name, str(value))

    runner = CliRunner()
    use(tmp_path / "source")
    assert runner.invoke(main, ["init"]).exit_code == 0
    archive = tmp_path / "backup.tar.gz"
    refused = runner.invoke(main, ["backup", str(archive), "--with-master-key"])
    made = runner.invoke(main, ["backup", str(archive)])
    use(tmp_path / "target")
    restored = runner.invoke(main, ["restore", str(archive)])

    assert refused.exit_code == 1 and "--with-master-key has nothing to add" in refused.output
    assert made.exit_code == 0 and "master keyring wrapped by aws-kms" in made.output, made.output
    assert restored.exit_code == 0, restored.output
    assert "audit chain intact" in restored.output
    assert (tmp_path / "target" / WRAPPED_KEYRING_FILENAME).read_bytes() == (
        tmp_path / "source" / WRAPPED_KEYRING_FILENAME
    ).read_bytes()
    assert not (tmp_path / "target" / "master.key").exists()
