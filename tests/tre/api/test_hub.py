"""The JupyterHub contract as the control plane serves it: service secret, single-use login
tokens, and the gate asked before every workspace start."""

from __future__ import annotations

from typing import Any

import pytest

from projects.workspaces import HUB_AUDIENCE, LOGIN_PURPOSE, server_name, unix_user
from tests.projects.factories import build_world, ready_for_access
from tre.core.platform import HUB_SERVICE_TOKEN_FILE, read_secret
from tre.workspaces import workspaces_service


@pytest.fixture
def world(sqlite_app: Any) -> Any:
    return build_world(sqlite_app)


def _hub_headers(app: Any) -> dict[str, str]:
    return {"Authorization": "Bearer " + read_secret(app.extensions["tre.settings"], HUB_SERVICE_TOKEN_FILE)}


def _login_token(app: Any, user: Any, project_id: str) -> str:
    with app.test_request_context():
        return workspaces_service(app.extensions["tre.platform"]).issue_login_token(user, project_id)


def test_hub_calls_without_the_service_secret_are_refused(sqlite_app: Any, client: Any) -> None:
    for path, body in (("/api/v1/hub/redeem", {"token": "x" * 40}),
                       ("/api/v1/hub/authorise-spawn", {"username": "u-x", "server_name": "p"})):
        assert client.post(path, json=body).status_code == 401
        assert client.post(path, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_login_token_is_redeemed_once_for_the_person_and_project(sqlite_app: Any, client: Any, world: Any) -> None:
    project = ready_for_access(world)
    token = _login_token(sqlite_app, world.pi, project.id)

    first = client.post("/api/v1/hub/redeem", json={"token": token}, headers=_hub_headers(sqlite_app))
    again = client.post("/api/v1/hub/redeem", json={"token": token}, headers=_hub_headers(sqlite_app))

    assert first.status_code == 200
    assert first.get_json() == {
        "username": f"u-{world.pi.id}", "user_id": world.pi.id, "project_id": project.id,
        "server_name": server_name(project.id),
    }
    assert again.status_code == 403
    assert again.mimetype == "application/problem+json"


def test_token_for_another_audience_is_not_a_hub_login(sqlite_app: Any, client: Any, world: Any) -> None:
    project = ready_for_access(world)
    api_token = sqlite_app.extensions["tre.platform"].tokens.issue(
        world.pi.id, "tre-api", LOGIN_PURPOSE, __import__("datetime").timedelta(minutes=1), project_id=project.id
    )

    response = client.post("/api/v1/hub/redeem", json={"token": api_token}, headers=_hub_headers(sqlite_app))

    assert response.status_code == 403
    assert HUB_AUDIENCE == "jupyterhub"


def test_spawn_is_authorised_with_paths_account_and_a_project_scoped_output_token(
    sqlite_app: Any, client: Any, world: Any
) -> None:
    project = ready_for_access(world)

    answer = client.post("/api/v1/hub/authorise-spawn", headers=_hub_headers(sqlite_app),
                         json={"username": f"u-{world.member.id}", "server_name": server_name(project.id)}).get_json()

    assert answer["allowed"] is True
    assert answer["unix_user"] == unix_user(world.member.id, project.id)
    assert answer["extract_path"].endswith(f"/extracts/{project.id}")
    claims = sqlite_app.extensions["tre.platform"].tokens.verify(
        answer["env"]["TRE_OUTPUT_TOKEN"], audience="tre-api", purpose="output-submit"
    )
    assert claims.subject == world.member.id and claims.project_id == project.id
    assert answer["env"]["TRE_PROJECT_NAME"] == project.title  # JupyterLab names the project


def test_spawn_for_someone_outside_the_project_is_refused_with_the_reason(
    sqlite_app: Any, client: Any, world: Any
) -> None:
    project = ready_for_access(world)

    answer = client.post("/api/v1/hub/authorise-spawn", headers=_hub_headers(sqlite_app),
                         json={"username": f"u-{world.outsider.id}", "server_name": server_name(project.id)}).get_json()

    assert answer["allowed"] is False
    assert answer["reason"]
    assert "TRE_OUTPUT_TOKEN" not in str(answer)


def test_suspended_project_workspace_is_listed_for_stopping(sqlite_app: Any, client: Any, world: Any) -> None:
    project = ready_for_access(world)
    client.post("/api/v1/hub/authorise-spawn", headers=_hub_headers(sqlite_app),
                json={"username": f"u-{world.pi.id}", "server_name": server_name(project.id)})
    with sqlite_app.test_request_context():
        svc = workspaces_service(sqlite_app.extensions["tre.platform"])
        assert svc.workspaces_to_stop() == []

        world.svc.suspend(world.chair, project.id, "Breach under investigation")

        stale = svc.workspaces_to_stop()
    assert [(w.user_id, w.project_id) for w in stale] == [(world.pi.id, project.id)]


def test_server_names_are_valid_for_jupyterhub_and_name_one_project(sqlite_app: Any, world: Any) -> None:
    import re as _re

    from projects.workspaces import project_for_server

    project = ready_for_access(world)
    name = server_name(project.id)

    assert _re.fullmatch(r"[a-z][a-z0-9-]{0,28}[a-z0-9]", name)  # JupyterHub's safe-slug rule
    session = sqlite_app.extensions["tre.db"].session
    assert project_for_server(session, name).id == project.id
    assert project_for_server(session, "p") is None and project_for_server(session, project.id) is None


def test_control_plane_and_hub_agree_on_server_names() -> None:
    from jupyter.controlplane import expected_server_name

    for project_id in ("0a1b2c3d4e5f60718293a4b5c6d7e8f9", "ffffffffffffffffffffffffffffffff", "abc123def"):
        assert server_name(project_id) == expected_server_name(project_id)
