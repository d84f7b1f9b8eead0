"""A newcomer's first minutes, in a real browser against the really started service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import LiveService, sign_in

pytestmark = pytest.mark.e2e


def test_home_page_is_styled_and_tells_each_kind_of_user_where_to_go(
    page: Any, live_service: LiveService, tmp_path: Path
) -> None:
    page.goto(live_service.url + "/")

    assert page.title().startswith("Home")
    header_colour = page.eval_on_selector(".nhsuk-header", "e => getComputedStyle(e).backgroundColor")
    assert header_colour == "rgb(0, 94, 184)"  # NHS blue: the toolkit's stylesheet really loaded
    for text in ("I am a researcher", "I sit on the data access committee", "I check outputs"):
        assert page.get_by_text(text).is_visible()
    page.screenshot(path=str(tmp_path / "home.png"), full_page=True)


def test_person_enrols_mfa_is_refused_a_page_and_the_auditor_finds_the_refusal(
    page: Any, browser: Any, live_service: LiveService
) -> None:
    import pyotp

    # An administrator adds a person and issues a reset link.
    admin = "adam.admin@demo.tre.example"
    sign_in(page, live_service, admin)
    page.goto(live_service.url + "/admin/users/new")
    page.fill("#display_name", "Nadia Newcomer")
    page.fill("#email", "nadia@demo.tre.example")
    page.check("#role-researcher")
    page.click("main button[type=submit]")
    page.click("text=Issue a password reset link")
    link = page.inner_text("#reset-link")

    # The newcomer sets a password, enrols MFA by the key shown under the QR code, and signs in.
    newcomer = browser.new_context().new_page()
    newcomer.goto(link)
    newcomer.fill("#password", "my own long passphrase")
    newcomer.click("button[type=submit]")
    newcomer.click("text=Sign in")
    newcomer.fill("#email", "nadia@demo.tre.example")
    newcomer.fill("#password", "my own long passphrase")
    newcomer.click("button[type=submit]")
    newcomer.wait_for_url("**/auth/mfa/enrol")
    assert "Set up multi-factor authentication" in newcomer.inner_text("h1")
    newcomer.click("text=I cannot scan the code")
    secret = newcomer.inner_text("#totp-secret").strip()
    newcomer.fill("#code", pyotp.TOTP(secret).now())
    newcomer.click("button[type=submit]")
    newcomer.locator("#recovery-codes").wait_for()
    assert newcomer.locator("#recovery-codes li").count() == 10
    newcomer.click("text=I have saved my codes")

    # She tries the audit log, which is not hers to see.
    response = newcomer.goto(live_service.url + "/audit/")
    assert response is not None and response.status == 403
    assert "You do not have access to this page" in newcomer.inner_text("h1")

    # The auditor finds that refusal.
    auditor = browser.new_context().new_page()
    sign_in(auditor, live_service, "audrey.auditor@demo.tre.example")
    auditor.goto(live_service.url + "/audit/?person=nadia@demo.tre.example&action=access.denied")
    rows = auditor.locator("#audit-events tbody tr")
    assert rows.count() == 1
    assert "audit.search" in rows.first.inner_text()
