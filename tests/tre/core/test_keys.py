"""The key provider: master key files, envelope encryption, rotation, derivation and wrapping."""

from __future__ import annotations

import base64
import logging
import os
import pickle
import stat
from pathlib import Path

import pytest

from tre.core.keys import (
    DecryptionError,
    EnvKeyProvider,
    FileKeyProvider,
    InMemoryKeyProvider,
    KeyFileError,
    KeyProviderError,
    MasterKeyring,
    default_key_provider,
)


def initialised(tmp_path: Path) -> FileKeyProvider:
    provider = FileKeyProvider.in_instance(tmp_path / "instance")
    provider.initialise()
    return provider


def flip_byte(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# -- the key file ----------------------------------------------------------------------------------


def test_initialise_creates_key_file_readable_only_by_owner(tmp_path: Path) -> None:
    provider = initialised(tmp_path)

    assert stat.S_IMODE(provider.path.stat().st_mode) == 0o600
    assert provider.versions == (1,)


def test_initialise_creates_owner_only_file_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        provider = initialised(tmp_path)
    finally:
        os.umask(old)

    assert stat.S_IMODE(provider.path.stat().st_mode) == 0o600


def test_initialise_refuses_to_overwrite_existing_key(tmp_path: Path) -> None:
    provider = initialised(tmp_path)
    before = provider.path.read_bytes()

    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        FileKeyProvider(provider.path).initialise()

    assert provider.path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_with_group_or_other_permissions_is_refused(tmp_path: Path, mode: int) -> None:
    provider = initialised(tmp_path)
    provider.path.chmod(mode)

    with pytest.raises(KeyFileError, match="chmod 600"):
        FileKeyProvider(provider.path).seal(b"data", "test")


def test_key_file_missing_gives_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="initialise"):
        FileKeyProvider(tmp_path / "absent.key").seal(b"data", "test")


def test_key_file_malformed_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text('{"format": "something-else", "keys": {"1": "c2VjcmV0"}}')
    path.chmod(0o600)

    with pytest.raises(KeyFileError) as refused:
        FileKeyProvider(path).seal(b"data", "test")

    assert "c2VjcmV0" not in str(refused.value)


def test_key_file_with_short_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    short = base64.b64encode(b"x" * 16).decode()
    path.write_text(f'{{"format": "tre-master-keys/1", "current": 1, "keys": {{"1": "{short}"}}}}')
    path.chmod(0o600)

    with pytest.raises(KeyFileError, match="32 bytes"):
        FileKeyProvider(path).seal(b"data", "test")


def test_key_file_survives_reopening_by_a_new_provider(tmp_path: Path) -> None:
    provider = initialised(tmp_path)
    sealed = provider.seal(b"kept", "test")

    assert FileKeyProvider(provider.path).unseal(sealed, "test") == b"kept"


# -- envelopes -------------------------------------------------------------------------------------


def test_seal_then_unseal_returns_plaintext() -> None:
    provider = InMemoryKeyProvider()

    assert (
        provider.unseal(provider.seal(b"patient rows", "filestore:abc"), "filestore:abc") == b"patient rows"
    )


def test_seal_uses_fresh_data_key_and_nonce_each_time() -> None:
    provider = InMemoryKeyProvider()

    assert provider.seal(b"same", "p") != provider.seal(b"same", "p")


def test_seal_does_not_contain_plaintext() -> None:
    provider = InMemoryKeyProvider()
    plaintext = b"NHS 943 476 5919 " * 4

    assert plaintext not in provider.seal(plaintext, "p")


def test_unseal_with_wrong_purpose_fails() -> None:
    provider = InMemoryKeyProvider()
    sealed = provider.seal(b"secret", "project-key:1")

    with pytest.raises(DecryptionError, match="wrong purpose"):
        provider.unseal(sealed, "project-key:2")


def test_unseal_with_another_master_key_fails() -> None:
    sealed = InMemoryKeyProvider().seal(b"secret", "p")

    with pytest.raises(DecryptionError):
        InMemoryKeyProvider().unseal(sealed, "p")


def test_unseal_detects_tampering_anywhere_in_envelope() -> None:
    provider = InMemoryKeyProvider()
    sealed = provider.seal(b"some research output", "p")

    # Every byte after the magic: kind, version, nonces, wrapped key, ciphertext and tag.
    for index in range(4, len(sealed)):
        with pytest.raises(DecryptionError):
            provider.unseal(flip_byte(sealed, index), "p")


def test_unseal_refuses_truncated_or_foreign_input() -> None:
    provider = InMemoryKeyProvider()
    sealed = provider.seal(b"data", "p")

    for bad in (b"", sealed[:50], sealed[:-1], b"XXXX" + sealed[4:]):
        with pytest.raises(DecryptionError):
            provider.unseal(bad, "p")


def test_seal_refuses_empty_purpose() -> None:
    with pytest.raises(ValueError, match="purpose"):
        InMemoryKeyProvider().seal(b"data", "")


def test_sealed_data_cannot_be_unwrapped_as_a_key() -> None:
    provider = InMemoryKeyProvider()
    sealed = provider.seal(b"k" * 32, "project-key:1")

    with pytest.raises(DecryptionError):
        provider.unwrap_key(sealed, "project-key:1")


# -- rotation --------------------------------------------------------------------------------------


def test_rotation_keeps_old_envelopes_readable_and_seals_new_ones_with_new_version(tmp_path: Path) -> None:
    provider = initialised(tmp_path)
    old = provider.seal(b"before rotation", "p")

    assert provider.rotate() == 2
    new = provider.seal(b"after rotation", "p")

    assert provider.current_version == 2
    assert provider.unseal(old, "p") == b"before rotation"
    assert provider.unseal(new, "p") == b"after rotation"
    assert int.from_bytes(old[5:9], "big") == 1
    assert int.from_bytes(new[5:9], "big") == 2
    assert stat.S_IMODE(provider.path.stat().st_mode) == 0o600


def test_rotation_by_another_process_is_picked_up_on_unseal(tmp_path: Path) -> None:
    reader = initialised(tmp_path)
    reader.seal(b"load the keyring", "p")
    writer = FileKeyProvider(reader.path)
    writer.rotate()

    assert reader.unseal(writer.seal(b"from the rotated writer", "p"), "p") == b"from the rotated writer"


def test_rewrap_moves_envelope_to_current_version_without_touching_ciphertext(tmp_path: Path) -> None:
    provider = initialised(tmp_path)
    old = provider.seal(b"long-lived", "p")
    provider.rotate()

    rewrapped = provider.rewrap(old, "p")
    provider.retire(1)

    data_part = 9 + 12 + 48  # header, key-wrapping nonce, wrapped data key
    assert rewrapped[data_part:] == old[data_part:]
    assert rewrapped[:data_part] != old[:data_part]
    assert provider.unseal(rewrapped, "p") == b"long-lived"
    with pytest.raises(DecryptionError, match="version 1 is not held"):
        provider.unseal(old, "p")


def test_rewrap_with_wrong_purpose_fails() -> None:
    provider = InMemoryKeyProvider()
    sealed = provider.seal(b"x", "p")
    provider.rotate()

    with pytest.raises(DecryptionError):
        provider.rewrap(sealed, "q")


def test_retiring_current_version_is_refused(tmp_path: Path) -> None:
    provider = initialised(tmp_path)

    with pytest.raises(KeyProviderError, match="rotate first"):
        provider.retire(1)


# -- derivation and wrapping -----------------------------------------------------------------------


def test_derive_key_is_stable_and_separated_by_purpose() -> None:
    provider = InMemoryKeyProvider()

    audit = provider.derive_key("audit-chain")

    assert audit == provider.derive_key("audit-chain")
    assert len(audit) == 32
    assert audit != provider.derive_key("pseudonymisation:project-1")
    assert len(provider.derive_key("x", length=64)) == 64


def test_derive_key_of_old_version_is_still_available_after_rotation() -> None:
    provider = InMemoryKeyProvider()
    before = provider.derive_key("audit-chain")
    version = provider.current_version
    provider.rotate()

    assert provider.derive_key("audit-chain") != before
    assert provider.derive_key("audit-chain", version=version) == before


def test_derive_key_differs_between_master_keys() -> None:
    assert InMemoryKeyProvider().derive_key("audit-chain") != InMemoryKeyProvider().derive_key("audit-chain")


def test_wrapped_project_key_unwraps_only_for_its_purpose() -> None:
    provider = InMemoryKeyProvider()
    key, wrapped = provider.new_wrapped_key("project-key:42")

    assert provider.unwrap_key(wrapped, "project-key:42") == key
    assert key not in wrapped
    with pytest.raises(DecryptionError):
        provider.unwrap_key(wrapped, "project-key:43")


def test_wrap_key_refuses_short_keys() -> None:
    with pytest.raises(ValueError, match="128 bits"):
        InMemoryKeyProvider().wrap_key(b"short", "p")


# -- the environment provider ----------------------------------------------------------------------


def test_env_provider_reads_single_base64_key() -> None:
    value = EnvKeyProvider.generate_value()
    provider = EnvKeyProvider(environ={"TRE_MASTER_KEY": value})

    assert provider.current_version == 1
    assert provider.unseal(provider.seal(b"x", "p"), "p") == b"x"


def test_env_provider_reads_versioned_keys_and_uses_highest_as_current() -> None:
    one, two = EnvKeyProvider.generate_value(), EnvKeyProvider.generate_value()
    old = EnvKeyProvider(environ={"TRE_MASTER_KEY": f"1:{one}"}).seal(b"old", "p")

    provider = EnvKeyProvider(environ={"TRE_MASTER_KEY": f"1:{one},2:{two}"})

    assert provider.current_version == 2
    assert provider.unseal(old, "p") == b"old"


@pytest.mark.parametrize(
    "value", ["", "not base64!", base64.b64encode(b"short").decode(), "x:" + "A" * 44, "1:AAAA,1:AAAA"]
)
def test_env_provider_refuses_bad_values_without_echoing_them(value: str) -> None:
    with pytest.raises(KeyProviderError) as refused:
        EnvKeyProvider(environ={"TRE_MASTER_KEY": value}).seal(b"x", "p")

    if value:
        assert value not in str(refused.value)


def test_default_provider_prefers_environment_then_instance_file(tmp_path: Path) -> None:
    from_env = default_key_provider(tmp_path, environ={"TRE_MASTER_KEY": EnvKeyProvider.generate_value()})
    from_file = default_key_provider(tmp_path, environ={})

    assert isinstance(from_env, EnvKeyProvider)
    assert isinstance(from_file, FileKeyProvider)
    assert from_file.path == tmp_path / "master.key"


# -- secrets stay secret ---------------------------------------------------------------------------


def test_key_material_never_appears_in_repr_str_logs_or_pickles(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = initialised(tmp_path)
    provider.rotate()
    sealed = provider.seal(b"payload", "p")
    derived = provider.derive_key("audit-chain")
    project_key, _ = provider.new_wrapped_key("project-key:1")
    with pytest.raises(DecryptionError) as refused:
        provider.unseal(sealed, "wrong")
    ring = provider._keyring()
    masters = [ring.key(v) for v in ring.versions]

    shown = " ".join([repr(provider), str(provider), repr(ring), str(ring), str(refused.value), caplog.text])
    for secret in [*masters, derived, project_key]:
        for form in (secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:-1]):
            assert form not in shown
    for holder in (provider, ring, InMemoryKeyProvider()):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(holder)


@pytest.mark.parametrize(
    "keys, current",
    [({}, 1), ({1: b"x" * 31}, 1), ({0: b"x" * 32}, 0), ({1: b"x" * 32}, 2), ({True: b"x" * 32}, True)],
)
def test_master_keyring_refuses_malformed_keys(keys: dict[int, bytes], current: int) -> None:
    with pytest.raises(KeyProviderError):
        MasterKeyring(keys, current)
