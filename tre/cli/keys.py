"""``tre keys``: rotate and wrap keys."""

from __future__ import annotations

from pathlib import Path

import click

from tre.cli.common import load_settings


@click.group("keys")
def keys_cli() -> None:
    """Key rotation (nothing already encrypted needs re-encrypting)."""


@keys_cli.command("rotate-master")
def keys_rotate_master() -> None:
    """Add a new master key version; new envelopes use it, old ones still open."""
    from tre.core.keys import FileKeyProvider, KeyProviderError
    from tre.core.keyservices import WrappedKeyringProvider, key_provider_for

    try:
        provider = key_provider_for(load_settings())
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

    settings = load_settings()
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

    settings = load_settings()
    keys = key_provider_for(settings)
    ring = SigningKeyring.in_instance(settings.instance_path, keys)
    kid = ring.rotate()
    if retire_kid:
        ring.retire(retire_kid)
    ring.save(settings.instance_path / SIGNING_KEYS_FILENAME, keys)
    click.echo(f"signing key {kid} is now current; published keys: {', '.join(ring.kids)}")
