"""Accessibility, measured: the home page as each role (and signed out) in Debian's Chromium, checked
by axe-core (the npm package in node_modules, injected into the page; nothing is downloaded at test
time; the browser context bypasses the service's Content-Security-Policy only so that the checker's
script can be added). Any serious or critical violation fails, with its rule, help text and the offending elements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import LiveService, sign_in

pytestmark = pytest.mark.e2e

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")
# One demo account per role; the chair also holds the member role, so sees both committee sections.
PEOPLE = [
    "rita.researcher",
    "dana.dac",
    "chris.chair",
    "olive.checker",
    "cara.custodian",
    "adam.admin",
    "audrey.auditor",
]


def blocking_violations(page: Any) -> list[str]:
    """Run axe-core on the page as it stands; describe each serious or critical violation."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `make setup` (npm ci installs axe-core from package.json)")
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    found = []
    for v in result["violations"]:
        if v.get("impact") in BLOCKING:
            targets = "; ".join(" ".join(n["target"]) for n in v["nodes"][:5])
            found.append(f"{v['impact']} {v['id']}: {v['help']} ({len(v['nodes'])} elements, e.g. {targets})")
    return found


def test_home_page_signed_out_has_no_serious_accessibility_violation(browser: Any, live_service: LiveService) -> None:
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(live_service.url + "/")

        assert blocking_violations(page) == []
    finally:
        context.close()


@pytest.mark.parametrize("person", PEOPLE)
def test_home_page_as_each_role_has_no_serious_accessibility_violation(
    browser: Any, live_service: LiveService, person: str
) -> None:
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        sign_in(page, live_service, f"{person}@demo.tre.example")
        page.goto(live_service.url + "/")
        assert page.locator("h1").inner_text() == "Your tasks"

        assert blocking_violations(page) == []
    finally:
        context.close()


def test_the_check_reports_a_critical_violation(page: Any) -> None:
    """The check itself can fail: an image without a text alternative is reported."""
    page.set_content('<html lang="en"><head><title>t</title></head><body><main><img src="x.png"></main></body></html>')

    found = blocking_violations(page)

    assert any(" image-alt:" in f for f in found), found


def test_incomplete_application_form_and_its_check_page_have_no_serious_violation(
    browser: Any, live_service: LiveService
) -> None:
    """The form patterns: the error summary on the form (linked to its fields) and 'check your answers'."""
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        sign_in(page, live_service, "rob.other@demo.tre.example")
        page.goto(live_service.url + "/projects/new")
        page.fill("#title", "Accessibility of an incomplete application")
        page.click("main button[type=submit]")
        page.wait_for_url("**/edit")
        project_page = page.url.removesuffix("/edit")
        page.goto(project_page)
        assert blocking_violations(page) == [], "check your answers"
        page.get_by_role("button", name="Submit to the committee").click()
        page.locator(".nhsuk-error-summary").wait_for()
        page.locator('.nhsuk-error-summary a[href="#lay_summary"]').click()

        assert page.evaluate("document.activeElement.id") == "lay_summary"
        assert blocking_violations(page) == [], "the form with its error summary"
    finally:
        context.close()
