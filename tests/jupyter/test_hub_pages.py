"""The hub as a researcher sees it: no token page, the way back to the TRE, no leftovers of refusals."""

from __future__ import annotations

import json

import pytest
import requests

from tests.jupyter.realhub import IS_ROOT, RUNTIME, RUNTIME_READY, Hub

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not RUNTIME_READY,
        reason=f"WORKSPACE RUNTIME NOT BUILT at {RUNTIME}: run infra/jupyterhub/build-workspace-runtime.sh",
    ),
    pytest.mark.skipif(not IS_ROOT, reason="the real-hub test runs the secure (root) spawner"),
]


def test_researcher_has_no_token_page_and_a_link_back_to_the_tre(hub: Hub):
    username, project = f"u-{hub.tag}h", hub.project("h")
    hub.fake.refuse(username, project.lower(), "not needed for this test")
    with requests.Session() as session:
        hub.login(session, username, project)

        home = session.get(f"{hub.url}/hub/home", timeout=30)
        token = session.get(f"{hub.url}/hub/token", timeout=30)

    assert home.status_code == 200
    assert "/hub/token" not in home.text and ">Token<" not in home.text
    assert f'href="{hub.fake.url}/projects/"' in home.text
    assert token.status_code == 404
    assert "do not issue API tokens" in token.text


def test_a_refused_start_leaves_no_named_server_behind(hub: Hub):
    username, project = f"u-{hub.tag}g", hub.project("g")
    hub.fake.refuse(username, project.lower(), "the agreement has expired")
    with requests.Session() as session:
        response = hub.login(session, username, project)
        page = session.get(hub.url + response.headers["Location"], timeout=60)

    assert "the agreement has expired" in page.text
    hub.wait_removed(username, project.lower())
    model = hub.api("GET", f"/users/{username}", params={"include_stopped_servers": "1"}).json()
    assert set(model["servers"]) <= {""}  # the default server every hub user has, never started


def test_jupyterlab_names_the_project_and_links_back_to_its_page(hub: Hub):
    username = hub.grant("n", TRE_PROJECT_NAME="Heart failure & frailty <2024>")
    server = hub.project("n").lower()
    with requests.Session() as session:
        response = hub.login(session, username, hub.project("n"))
        session.get(hub.url + response.headers["Location"], timeout=60)
        hub.wait_ready(username, server)
        lab = session.get(f"{hub.url}/user/{username}/{server}/lab", timeout=60)
    hub.api("DELETE", f"/users/{username}/servers/{server}")

    config_text = lab.text.split('id="jupyter-config-data" type="application/json">', 1)[1].split("</script>", 1)[0]
    config = json.loads(config_text)
    assert config["treProjectName"] == "Heart failure & frailty <2024>"
    assert config["treProjectUrl"] == f"{hub.fake.url}/projects/{hub.project('n')}"  # the browser's address
    built = RUNTIME / "share" / "jupyter" / "labextensions" / "tre-output-submit" / "static"
    assert any("tre-output-submit:project" in path.read_text() for path in built.glob("*.js"))
    hub.wait_stopped(username, server)
