"""Through the real control plane, worker and JupyterHub: a researcher opens the project's
workspace from the project page and lands in JupyterLab with the extract; a researcher of no
project is refused; when the project is suspended, the running server is stopped."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from projects.workspaces import server_name
from tests.e2e.conftest import LiveService, sign_in

RUNTIME = Path(os.environ.get("TRE_WORKSPACE_RUNTIME", "/opt/tre-workspace"))

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="NOT ROOT: workspaces need their own unix accounts; skipped"),
    pytest.mark.skipif(
        not (RUNTIME / "bin" / "jupyter-labhub").exists(),
        reason="WORKSPACE RUNTIME NOT BUILT (make workspace-runtime); skipped",
    ),
]


def _hub_servers(service: LiveService, username: str) -> dict[str, Any]:
    token = (service.instance / "hub-api-token").read_text().strip()
    request = urllib.request.Request(
        f"{service.hub_url}/hub/api/users/{username}", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        return dict(json.load(response).get("servers", {}))


def test_workspace_opens_from_the_project_page_and_stops_when_the_project_is_suspended(
    page: Any, live_service: LiveService
) -> None:
    rita = "rita.researcher@demo.tre.example"
    sign_in(page, live_service, rita)
    page.goto(live_service.url + "/projects/")
    page.get_by_role("link", name="Heart failure readmissions").first.click()
    project_id = page.url.rstrip("/").rsplit("/", 1)[-1]

    started = time.monotonic()
    page.click("#open-workspace")
    page.wait_for_url("**/lab**", timeout=180_000)
    page.locator(".jp-DirListing-content").get_by_text("extract", exact=True).wait_for(timeout=90_000)
    print(f"\nSPAWN TIME through the real control plane: {time.monotonic() - started:.1f} s")

    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{live_service.instance / 'tre.sqlite'}")
    with engine.connect() as conn:
        rita_id = conn.execute(text("SELECT id FROM users WHERE email = :e"), {"e": rita}).scalar_one()
    engine.dispose()
    username = f"u-{rita_id}"
    assert server_name(project_id) in _hub_servers(live_service, username)

    # The committee chair suspends the project through the page; within a minute the server stops.
    chair = page.context.browser.new_context().new_page()
    sign_in(chair, live_service, "chris.chair@demo.tre.example")
    chair.goto(f"{live_service.url}/projects/{project_id}")
    chair.locator("form[action$='/suspend'] textarea").fill("Suspected breach under investigation")
    chair.locator("form[action$='/suspend'] button[type=submit]").click()

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server_name(project_id) in _hub_servers(live_service, username):
        time.sleep(3)
    assert server_name(project_id) not in _hub_servers(live_service, username)


def test_researcher_of_no_project_is_refused_a_workspace(page: Any, live_service: LiveService) -> None:
    sign_in(page, live_service, "rob.other@demo.tre.example")
    page.goto(live_service.url + "/projects/")

    assert page.locator("#open-workspace").count() == 0
