"""Fixtures for the JupyterHub plug-ins: a fake control plane on real HTTP, and what it needs."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.jupyter.fake_control_plane import FakeControlPlane


@pytest.fixture
def service_token_file(tmp_path: Path) -> Path:
    path = tmp_path / "hub-service-token"
    path.write_text(secrets.token_hex(16) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def fake_cp(service_token_file: Path) -> Iterator[FakeControlPlane]:
    fake = FakeControlPlane(service_secret=service_token_file.read_text().strip()).start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def hub():
    """One real hub for the session's integration and end-to-end tests (it takes seconds to start)."""
    from tests.jupyter.realhub import IS_ROOT, RUNTIME, RUNTIME_READY, running_hub

    if not RUNTIME_READY:
        pytest.skip(
            f"WORKSPACE RUNTIME NOT BUILT at {RUNTIME}: run infra/jupyterhub/build-workspace-runtime.sh"
        )
    if not IS_ROOT:
        pytest.skip("the real hub runs the secure spawner, which needs root")
    with running_hub() as handle:
        yield handle
