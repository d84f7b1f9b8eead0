"""The master keyring wrapped by an HSM over PKCS#11, against SoftHSM2 (a software token).

Every test here talks to the real SoftHSM2 library through python-pkcs11: a fresh token directory
(``SOFTHSM2_CONF`` in a temporary folder), tokens initialised with ``softhsm2-util``, AES keys made
inside the token. SoftHSM2 is not a hardware module: it shows the PKCS#11 conversation is right
(sessions, login, key lookup by label, CKM_AES_GCM with associated data, attribute checks), not
that a particular HSM's policies are.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tre.core.config import Settings
from tre.core.doctor import run_checks
from tre.core.keys import KeyProvider
from tre.core.keyservices import (
    WRAPPED_KEYRING_FILENAME,
    KeyServiceError,
    WrappedKeyringProvider,
    key_provider_for,
)

pytestmark = pytest.mark.integration

pkcs11 = pytest.importorskip("pkcs11", reason="python-pkcs11 is in the dev extra")

MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
MODULE = next((m for m in MODULES if Path(m).exists()), "")
if not MODULE or not shutil.which("softhsm2-util"):
    pytest.skip("SoftHSM2 is not installed: `make softhsm` installs Debian's softhsm2 when run as root",
                allow_module_level=True)

TOKEN = "tre-test"
OTHER_TOKEN = "tre-other"
PIN = "31415926"
SO_PIN = "27182818"


def _init_token(label: str) -> None:
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", PIN],
        check=True, capture_output=True,
    )


def _make_key(label: str, *, extractable: bool = False) -> None:
    from pkcs11 import Attribute, KeyType

    token = pkcs11.lib(MODULE).get_token(token_label=TOKEN)
    with token.open(user_pin=PIN, rw=True) as session:
        session.generate_key(KeyType.AES, 256, label=label, store=True,
                             template={Attribute.EXTRACTABLE: extractable, Attribute.SENSITIVE: not extractable})


def _destroy_key(label: str) -> None:
    from pkcs11 import KeyType, ObjectClass

    token = pkcs11.lib(MODULE).get_token(token_label=TOKEN)
    with token.open(user_pin=PIN, rw=True) as session:
        session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=label).destroy()


@pytest.fixture(scope="module", autouse=True)
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A token directory of our own; SoftHSM2 reads SOFTHSM2_CONF when the library is first loaded."""
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(conf))
        pkcs11.unload(MODULE)
        for label in (TOKEN, OTHER_TOKEN):
            _init_token(label)
        _make_key("tre-master")
        _make_key("tre-extractable", extractable=True)
        _make_key("tre-twice")
        _make_key("tre-twice")
        yield
        pkcs11.unload(MODULE)


@pytest.fixture(autouse=True)
def no_master_key_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRE_MASTER_KEY", raising=False)


def hsm_settings(instance: Path, **overrides: Any) -> Settings:
    instance.mkdir(parents=True, exist_ok=True, mode=0o711)
    values: dict[str, Any] = {"key_provider": "pkcs11", "pkcs11_module": MODULE, "pkcs11_token_label": TOKEN,
                              "pkcs11_key_label": "tre-master", "pkcs11_pin": PIN, "key_deployment": "tre-north"}
    values.update(overrides)
    return Settings.from_env({}, instance_path=instance, **values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return hsm_settings(tmp_path / "instance")


def initialised(settings: Settings) -> WrappedKeyringProvider:
    provider = key_provider_for(settings)
    assert isinstance(provider, WrappedKeyringProvider)
    provider.initialise()
    assert provider.versions == (1,)  # loaded now, so it keeps this keyring if a test alters the file
    return provider


def assert_holds_no_key(text: str | bytes, provider: KeyProvider) -> None:
    data = text.encode() if isinstance(text, str) else text
    ring = provider._keyring()
    for v in ring.versions:
        key = ring.key(v)
        assert key not in data and base64.b64encode(key) not in data and key.hex().encode() not in data


def open_error(settings: Settings) -> str:
    with pytest.raises(KeyServiceError) as refused:
        _ = key_provider_for(settings).versions
    message = str(refused.value)
    assert PIN not in message
    return message


def test_keyring_is_kept_only_wrapped_and_opens_again_through_the_hsm(settings: Settings) -> None:
    provider = initialised(settings)
    envelope = provider.seal(b"a project key's secret", "project-key:3")

    blob = (settings.instance_path / WRAPPED_KEYRING_FILENAME).read_bytes()
    reopened = key_provider_for(settings)

    assert json.loads(blob)["service"] == "pkcs11"
    assert_holds_no_key(blob, provider)
    assert reopened.unseal(envelope, "project-key:3") == b"a project key's secret"


def test_pin_is_read_from_a_file(settings: Settings, tmp_path: Path) -> None:
    envelope = initialised(settings).seal(b"x", "p")
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")

    from_file = hsm_settings(settings.instance_path, pkcs11_pin="", pkcs11_pin_file=str(pin_file))

    assert key_provider_for(from_file).unseal(envelope, "p") == b"x"


def test_wrong_pin_is_refused_naming_the_setting_without_echoing_any_pin(settings: Settings) -> None:
    initialised(settings)

    message = open_error(hsm_settings(settings.instance_path, pkcs11_pin="27182818"))

    assert "refused the PIN" in message and "TRE_PKCS11_PIN" in message
    assert "27182818" not in message


def test_unknown_token_key_label_module_and_a_shared_label_are_each_named(
    settings: Settings, tmp_path: Path
) -> None:
    initialised(settings)
    at = settings.instance_path

    assert "TRE_PKCS11_TOKEN_LABEL" in open_error(hsm_settings(at, pkcs11_token_label="no-such-token"))
    assert "TRE_PKCS11_KEY_LABEL" in open_error(hsm_settings(at, pkcs11_key_label="no-such-key"))
    assert "labels must be unique" in open_error(hsm_settings(at, pkcs11_key_label="tre-twice"))
    assert "TRE_PKCS11_MODULE" in open_error(hsm_settings(at, pkcs11_module=str(tmp_path / "missing.so")))


def test_keyring_relabelled_for_another_deployment_is_refused_inside_the_hsm(settings: Settings) -> None:
    provider = initialised(settings)
    path = settings.instance_path / WRAPPED_KEYRING_FILENAME
    document = json.loads(path.read_bytes())
    document["deployment"] = "tre-south"
    path.write_text(json.dumps(document))

    message = open_error(hsm_settings(settings.instance_path, key_deployment="tre-south"))

    assert "unwrapping the keyring's data key failed" in message and "TRE_KEY_DEPLOYMENT" in message
    assert_holds_no_key(message, provider)


def test_keyring_wrapped_by_another_hsm_key_does_not_open(settings: Settings) -> None:
    initialised(settings)

    message = open_error(hsm_settings(settings.instance_path, pkcs11_key_label="tre-extractable"))

    assert "unwrapping the keyring's data key failed" in message


def test_destroying_the_hsm_key_stops_the_keyring_from_opening(tmp_path: Path) -> None:
    _make_key("tre-revocable")
    revocable = hsm_settings(tmp_path / "instance", pkcs11_key_label="tre-revocable")
    initialised(revocable)
    assert key_provider_for(revocable).versions == (1,)

    _destroy_key("tre-revocable")

    assert "no AES key labelled 'tre-revocable'" in open_error(revocable)


def test_rotate_master_through_the_cli_with_the_pin_in_a_file(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tre.cli import main

    envelope = initialised(settings).seal(b"before rotation", "filestore:1")
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN)
    for name, value in {"TRE_INSTANCE_PATH": settings.instance_path, "TRE_KEY_PROVIDER": "pkcs11",
                        "TRE_PKCS11_MODULE": MODULE, "TRE_PKCS11_TOKEN_LABEL": TOKEN,
                        "TRE_PKCS11_KEY_LABEL": "tre-master", "TRE_PKCS11_PIN_FILE": pin_file,
                        "TRE_KEY_DEPLOYMENT": "tre-north"}.items():
        monkeypatch.setenv(name, str(value))

    result = CliRunner().invoke(main, ["keys", "rotate-master"])

    assert result.exit_code == 0, result.output
    reopened = key_provider_for(settings)
    assert reopened.versions == (1, 2) and reopened.current_version == 2
    assert reopened.unseal(envelope, "filestore:1") == b"before rotation"


def test_doctor_opens_the_keyring_and_checks_the_key_cannot_leave_the_token(settings: Settings) -> None:
    initialised(settings)
    leaky = hsm_settings(settings.instance_path, pkcs11_key_label="tre-extractable")

    good = next(f for f in run_checks(settings, None) if f.check == "master key")
    bad = next(f for f in run_checks(leaky, None) if f.check == "master key")

    assert good.ok, good.message
    assert "non-extractable" in good.message and "opens (versions 1" in good.message
    assert not bad.ok and "can leave the token" in bad.message
