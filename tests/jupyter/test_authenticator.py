"""The authenticator accepts only what the control plane redeems, and fails closed."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path

import pytest

from jupyter.authenticator import REDEMPTION_ATTR, TreAuthenticator
from jupyter.controlplane import ControlPlaneUnavailable, WorkspaceRefused
from tests.jupyter.fake_control_plane import FakeControlPlane


def make_authenticator(url: str, token_file: Path | str) -> TreAuthenticator:
    authenticator = TreAuthenticator()
    authenticator.control_plane.url = url
    authenticator.control_plane.service_token_file = str(token_file)
    return authenticator


def authenticate(authenticator: TreAuthenticator, data: dict) -> tuple[dict | None, object]:
    handler = types.SimpleNamespace()
    return asyncio.run(authenticator.authenticate(handler, data)), handler


def test_valid_token_logs_in_the_user_the_control_plane_names(fake_cp: FakeControlPlane, service_token_file):
    token = fake_cp.issue_token("u-1", "PROJ1")

    result, handler = authenticate(make_authenticator(fake_cp.url, service_token_file), {"token": token})

    assert result == {"name": "u-1", "admin": False}
    assert getattr(handler, REDEMPTION_ATTR).server_name == "proj1"
    assert fake_cp.calls == [("/api/v1/hub/redeem", {"token": token})]


def test_token_is_single_use(fake_cp: FakeControlPlane, service_token_file):
    token = fake_cp.issue_token("u-1", "proj1")
    authenticator = make_authenticator(fake_cp.url, service_token_file)
    authenticate(authenticator, {"token": token})

    with pytest.raises(WorkspaceRefused) as refused:
        authenticate(authenticator, {"token": token})

    assert refused.value.status_code == 403
    assert "already used" in refused.value.jupyterhub_message


def test_missing_token_is_not_a_login(fake_cp: FakeControlPlane, service_token_file):
    result, _ = authenticate(make_authenticator(fake_cp.url, service_token_file), {})

    assert result is None
    assert fake_cp.calls == []


def test_unreachable_control_plane_fails_closed(service_token_file):
    with pytest.raises(ControlPlaneUnavailable) as refused:
        authenticate(make_authenticator("http://127.0.0.1:9", service_token_file), {"token": "t"})

    assert refused.value.status_code == 503
    assert "cannot reach the TRE control plane" in refused.value.jupyterhub_message


def test_control_plane_error_fails_closed(fake_cp: FakeControlPlane, service_token_file):
    fake_cp.fail_with = 500

    with pytest.raises(ControlPlaneUnavailable):
        authenticate(make_authenticator(fake_cp.url, service_token_file), {"token": "t"})


def test_missing_service_token_file_fails_closed_without_calling(fake_cp: FakeControlPlane, tmp_path):
    with pytest.raises(ControlPlaneUnavailable):
        authenticate(make_authenticator(fake_cp.url, tmp_path / "absent"), {"token": "t"})

    assert fake_cp.calls == []


def test_wrong_service_secret_is_refused(fake_cp: FakeControlPlane, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-secret")

    with pytest.raises(WorkspaceRefused):
        authenticate(make_authenticator(fake_cp.url, wrong), {"token": fake_cp.issue_token("u-1", "p")})


@pytest.mark.parametrize("username", ["root/../x", "U-1", "", "a" * 80])
def test_redemption_naming_an_unusable_user_is_refused(fake_cp, service_token_file, username):
    token = fake_cp.issue_token("u-1", "proj1")
    fake_cp.tokens[token]["username"] = username

    with pytest.raises(ControlPlaneUnavailable):
        authenticate(make_authenticator(fake_cp.url, service_token_file), {"token": token})


def test_login_origin_defaults_to_the_control_plane(fake_cp: FakeControlPlane, service_token_file):
    authenticator = make_authenticator("http://127.0.0.1:5000/", service_token_file)

    assert authenticator.allowed_login_origins() == {"http://127.0.0.1:5000"}
