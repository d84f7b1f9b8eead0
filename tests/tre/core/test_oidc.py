"""Single sign-on in the kernel: its settings, the identity service's linking rules, and ``tre doctor``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.tre.helpers import create_user, identity
from tests.tre.oidc_provider import OidcTestProvider
from tre.core.audit import AuditEvent
from tre.core.config import ConfigError, Settings
from tre.core.doctor import check_oidc_discovery
from tre.core.identity import IdentityError, OidcLink, PermissionDenied, SsoRefused

ISSUER = "https://login.example.nhs.uk"


@pytest.fixture
def provider() -> Iterator[OidcTestProvider]:
    p = OidcTestProvider().start()
    yield p
    p.stop()


# --- settings --------------------------------------------------------------------------------------


def test_single_sign_on_is_off_unless_configured(tmp_path: Path) -> None:
    settings = Settings.from_env({}, instance_path=tmp_path)

    assert not settings.oidc_enabled


def test_half_configured_single_sign_on_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TRE_OIDC_CLIENT_SECRET"):
        Settings.from_env({"TRE_OIDC_ISSUER": ISSUER, "TRE_OIDC_CLIENT_ID": "tre"}, instance_path=tmp_path)


def test_scopes_without_openid_are_refused(tmp_path: Path) -> None:
    env = {"TRE_OIDC_ISSUER": ISSUER, "TRE_OIDC_CLIENT_ID": "tre", "TRE_OIDC_CLIENT_SECRET": "x" * 20,
           "TRE_OIDC_SCOPES": "email profile"}
    with pytest.raises(ConfigError, match="openid"):
        Settings.from_env(env, instance_path=tmp_path)


def test_settings_from_environment_derive_discovery_and_hide_the_secret(tmp_path: Path) -> None:
    env = {"TRE_OIDC_ISSUER": ISSUER, "TRE_OIDC_CLIENT_ID": "tre", "TRE_OIDC_CLIENT_SECRET": "very-secret-value",
           "TRE_OIDC_TRUSTED_AMR": "mfa, hwk,", "TRE_OIDC_LINK_BY_VERIFIED_EMAIL": "true"}

    settings = Settings.from_env(env, instance_path=tmp_path)

    assert settings.oidc_enabled and settings.oidc_link_by_verified_email
    assert settings.oidc_discovery_url == f"{ISSUER}/.well-known/openid-configuration"
    assert settings.oidc_trusted_amr_values == frozenset({"mfa", "hwk"})
    assert "very-secret-value" not in repr(settings)


# --- the identity service ----------------------------------------------------------------------------


def _claims(sub: str, **more: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "sub": sub, **more}


def test_a_stored_link_opens_its_account_and_only_that(app: Any) -> None:
    ada, _ = create_user(app, "ada@nhs.example", ["researcher"])
    create_user(app, "bo@nhs.example", ["researcher"])
    ident = identity(app)
    ident.link_oidc(ada, _claims("sub-ada"))

    result = ident.sign_in_with_oidc(_claims("sub-ada", email="bo@nhs.example", email_verified=True),
                                     link_by_verified_email=True)

    assert result.user.id == ada.id and not result.second_factor_done


def test_one_identity_links_to_one_account_and_one_account_to_one_identity(app: Any) -> None:
    ada, _ = create_user(app, "ada@nhs.example", ["researcher"])
    bo, _ = create_user(app, "bo@nhs.example", ["researcher"])
    ident = identity(app)
    ident.link_oidc(ada, _claims("sub-ada"))

    with pytest.raises(IdentityError, match="already linked"):
        ident.link_oidc(bo, _claims("sub-ada"))
    with pytest.raises(IdentityError, match="already linked"):
        ident.link_oidc(ada, _claims("sub-other"))
    assert [(link.user_id, link.subject) for link in app.extensions["tre.db"].session.scalars(select(OidcLink))] == [
        (ada.id, "sub-ada")
    ]


def test_email_linking_does_not_take_over_an_account_linked_to_another_subject(app: Any) -> None:
    ada, _ = create_user(app, "ada@nhs.example", ["researcher"])
    ident = identity(app)
    ident.link_oidc(ada, _claims("sub-ada"))

    with pytest.raises(SsoRefused) as refused:
        ident.sign_in_with_oidc(_claims("sub-new", email="ada@nhs.example", email_verified=True),
                                link_by_verified_email=True)

    assert refused.value.reason == "account linked to another subject"


def test_refusals_are_audited_without_the_email_or_raw_subject(app: Any) -> None:
    ident = identity(app)

    with pytest.raises(SsoRefused):
        ident.sign_in_with_oidc(_claims("sub-stranger", email="stranger@nhs.example", email_verified=True),
                                link_by_verified_email=True)

    event = app.extensions["tre.db"].session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.sso")).one()
    assert event.outcome == "denied" and event.detail["reason"] == "no account with that email"
    assert "stranger" not in str(event.detail) and "sub-stranger" not in str(event.detail)


def test_only_an_administrator_removes_a_link_and_it_is_audited(app: Any) -> None:
    admin, _ = create_user(app, "admin@nhs.example", ["administrator"])
    ada, _ = create_user(app, "ada@nhs.example", ["researcher"])
    ident = identity(app)
    link = ident.link_oidc(ada, _claims("sub-ada"))

    with pytest.raises(PermissionDenied):
        ident.remove_oidc_link(ada, ada.id, link.id)
    ident.remove_oidc_link(admin, ada.id, link.id)

    assert ident.oidc_links(ada.id) == []
    with pytest.raises(SsoRefused):
        ident.sign_in_with_oidc(_claims("sub-ada"), link_by_verified_email=False)
    actions = [e.action for e in app.extensions["tre.db"].session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
    assert "user.sso_unlink" in actions


# --- doctor ------------------------------------------------------------------------------------------


def _sso_settings(tmp_path: Path, provider: OidcTestProvider, issuer: str | None = None) -> Settings:
    return Settings.from_env(
        {}, instance_path=tmp_path, oidc_issuer=issuer or provider.issuer, oidc_client_id=provider.client_id,
        oidc_client_secret=provider.client_secret,
    )


def test_doctor_fetches_the_discovery_document(tmp_path: Path, provider: OidcTestProvider) -> None:
    assert "reachable" in check_oidc_discovery(_sso_settings(tmp_path, provider))


def test_doctor_refuses_a_discovery_document_for_another_issuer(tmp_path: Path, provider: OidcTestProvider) -> None:
    settings = Settings.from_env(
        {}, instance_path=tmp_path, oidc_issuer="https://elsewhere.example",
        oidc_discovery_url=f"{provider.issuer}/.well-known/openid-configuration",
        oidc_client_id="c", oidc_client_secret="s",
    )

    with pytest.raises(RuntimeError, match="must be identical"):
        check_oidc_discovery(settings)


def test_doctor_names_an_unreachable_provider(tmp_path: Path) -> None:
    settings = Settings.from_env({}, instance_path=tmp_path, oidc_issuer="http://127.0.0.1:1", oidc_client_id="c",
                                 oidc_client_secret="s")

    with pytest.raises(RuntimeError, match="cannot fetch"):
        check_oidc_discovery(settings)
