"""In a real browser: open a workspace from the control plane, see JupyterLab, be refused downloads."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.jupyter.realhub import Hub

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="CHROMIUM NOT INSTALLED (make browser)"),
]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context()
        yield context.new_page()
        context.close()
        browser.close()


def open_workspace(page: Any, hub: Hub, username: str, project: str) -> None:
    """What the researcher does on the project page: press "Open workspace"."""
    token = hub.fake.issue_token(username, project)
    page.goto(f"{hub.fake.url}/open/{token}?hub={hub.url}")
    page.get_by_role("button", name="Open workspace").click()


def test_researcher_opens_the_workspace_in_jupyterlab(hub: Hub, page):
    username, project = hub.grant("e"), hub.project("e")
    started = time.monotonic()

    open_workspace(page, hub, username, project)
    page.wait_for_url(f"**/user/{username}/{project.lower()}/lab**", timeout=120_000)
    listing = page.locator(".jp-DirListing-content")
    listing.get_by_text("extract", exact=True).wait_for(timeout=60_000)
    print(
        f"\nBROWSER SPAWN TIME (button press to JupyterLab file browser): {time.monotonic() - started:.1f} s"
    )

    assert listing.get_by_text("outputs", exact=True).is_visible()
    back = page.locator("#tre-project a")
    assert back.text_content() == project  # no title from this gate: the project's id
    assert back.get_attribute("href") == f"{hub.fake.url}/projects/{project}"
    refused = page.goto(f"{hub.url}/user/{username}/{project.lower()}/files/extract/data.csv")
    assert refused.status == 403
    assert "tre-submit" in page.content()


def test_researcher_refused_by_the_gate_sees_why(hub: Hub, page):
    username, project = f"u-{hub.tag}f", hub.project("f")
    hub.fake.refuse(username, project.lower(), "you are not a member of this project")

    open_workspace(page, hub, username, project)

    page.get_by_text("you are not a member of this project").first.wait_for(timeout=60_000)
