"""The control plane calls the hub's API at its own internal address (TRE_JUPYTERHUB_API_URL), which
may differ from the public address browsers use (TRE_JUPYTERHUB_URL)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from projects.workspaces import WorkspaceSession
from tests.conftest import make_test_app
from tests.projects.factories import build_world, complete_draft
from tre.core import jobs
from tre.core.config import Settings
from tre.core.db import transaction
from tre.workspaces import ENFORCE_JOB


class _Hub(http.server.BaseHTTPRequestHandler):
    deleted: list[tuple[str, str]] = []

    def do_DELETE(self) -> None:  # noqa: N802 - the http.server spelling
        _Hub.deleted.append((self.path, self.headers.get("Authorization", "")))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def internal_hub() -> Iterator[str]:
    _Hub.deleted = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_hub_api_url_defaults_to_the_public_hub_url(tmp_path: Path) -> None:
    settings = Settings.from_env({}, instance_path=tmp_path, jupyterhub_url="https://hub.example.nhs.uk")

    assert settings.jupyterhub_api_url == "https://hub.example.nhs.uk"


def test_hub_api_url_is_read_on_its_own(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"TRE_JUPYTERHUB_URL": "https://hub.example.nhs.uk",
         "TRE_JUPYTERHUB_API_URL": "http://hub.tre.svc.cluster.local:8081"},
        instance_path=tmp_path,
    )

    assert settings.jupyterhub_url == "https://hub.example.nhs.uk"
    assert settings.jupyterhub_api_url == "http://hub.tre.svc.cluster.local:8081"


def test_gate_enforcement_stops_servers_through_the_internal_hub_api(tmp_path: Path, internal_hub: str) -> None:
    from tre.models import metadata

    # The public address is a closed port: a call sent there would fail and nothing would stop.
    app = make_test_app(tmp_path / "instance", f"sqlite:///{tmp_path / 'tre.sqlite'}",
                        jupyterhub_url="http://127.0.0.1:9", jupyterhub_api_url=internal_hub)
    db = app.extensions["tre.db"]
    metadata.create_all(db.engine)
    try:
        w = build_world(app)
        project = complete_draft(w)  # a draft: nobody may touch its data, so its server must stop
        with transaction(db.session) as s:
            s.add(WorkspaceSession(user_id=w.pi.id, project_id=project.id, hub_username="u-pi", server_name="p-1"))
            job_id = jobs.enqueue(s, ENFORCE_JOB, {}).id  # the test app runs it when this commits

        assert [path for path, _ in _Hub.deleted] == ["/hub/api/users/u-pi/servers/p-1"]
        assert _Hub.deleted[0][1].startswith("token ")
        with db.session_factory() as s:
            job = s.get(jobs.Job, job_id)
            assert job is not None and job.state == jobs.SUCCEEDED
            assert job.result == {"stale": 1, "stopped": 1}
    finally:
        db.session.remove()
        db.dispose()
