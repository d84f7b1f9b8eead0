"""End to end in a real browser (Debian chromium driven by Playwright): apply, submit, assign two
reviewers of whom one declares a conflict, vote, approve fewer columns, sign, and see the access
gate open; then see it close when training expires and when a new agreement version is published.

The real app is served by werkzeug on a free local port with a temporary instance and SQLite; the
demo accounts sign in through the login form with their password and a TOTP code.
"""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from sqlalchemy import select, update

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
COLUMNS = [
    {"name": "nhs_number", "role": "direct_identifier", "description": "NHS number"},
    {"name": "date_of_birth", "role": "quasi_identifier", "description": "Date of birth"},
    {"name": "postcode", "role": "quasi_identifier", "description": "Home postcode"},
    {"name": "diagnosis", "role": "attribute", "description": "Primary diagnosis"},
]

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from werkzeug.serving import make_server

    from projects.rules import ProjectPolicy
    from projects.services import Projects
    from tests.conftest import make_test_app
    from tre.core.identity import Identity
    from tre.demo.accounts import load_accounts
    from tre.models import metadata

    app = make_test_app(tmp_path / "instance", f"sqlite:///{tmp_path / 'tre.sqlite'}")
    p = app.extensions["tre.platform"]
    metadata.create_all(p.db.engine)
    with app.app_context():
        accounts = {
            a["email"].split("@")[0]: a
            for a in load_accounts(Identity(p.db.session, p.keys, p.audit), tmp_path / "instance")
        }
        from tre.core.identity import User

        people = {
            k: p.db.session.scalar(select(User).where(User.email == a["email"])) for k, a in accounts.items()
        }
        svc = Projects(p.db.session, p.audit, ProjectPolicy())
        svc.register_dataset(
            people["cara.custodian"],
            name="admissions",
            title="Hospital admissions",
            description="Spells",
            source_kind="parquet",
            source_location="/data/admissions.parquet",
            sensitivity="special_category",
            columns=COLUMNS,
        )
        svc.publish_agreement(people["adam.admin"], "Data access agreement", "Version one of the agreement.")
        today = dt.date.today()
        for key in ("rita.researcher", "sam.scientist"):
            svc.record_training(
                people["adam.admin"],
                people[key].id,
                today - dt.timedelta(days=30),
                today + dt.timedelta(days=335),
            )
        p.db.session.remove()
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "url": f"http://127.0.0.1:{httpd.server_port}",
            "accounts": accounts,
            "app": app,
            "people": people,
        }
    finally:
        httpd.shutdown()
        thread.join(timeout=5)
        p.db.dispose()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def sign_in(browser: Any, server: dict[str, Any], key: str) -> Any:
    account = server["accounts"][key]
    page = browser.new_context().new_page()
    page.set_default_timeout(15_000)
    page.goto(server["url"] + "/auth/login")
    page.get_by_label("Email address").fill(account["email"])
    page.get_by_label("Password").fill(account["password"])
    page.get_by_role("button", name="Continue").click()
    totp = pyotp.TOTP(account["totp_secret"])
    page.get_by_label("Security code").fill(totp.at(int(time.time()) + totp.interval))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    return page


def test_apply_review_approve_sign_and_the_gate_opens_then_closes(
    server: dict[str, Any], browser: Any
) -> None:
    url = server["url"]
    today = dt.date.today()

    # The principal investigator drafts and submits.
    rita = sign_in(browser, server, "rita.researcher")
    rita.goto(url + "/projects/new")
    rita.get_by_label("Project title").fill("Readmissions after heart failure")
    rita.get_by_role("button", name="Create draft").click()
    project_url = rita.url.split("/edit")[0]
    project_id = project_url.rsplit("/", 1)[1]
    for label, value in [
        ("Lay summary", "Why people go back into hospital."),
        ("Scientific purpose", "Estimate readmission rates."),
        ("Public benefit", "Better discharge planning."),
        ("Legal basis", "Article 6(1)(e) and 9(2)(j)"),
        ("Ethics or HRA approval reference", "IRAS 424242"),
        ("Start date", today.isoformat()),
        ("End date", (today + dt.timedelta(days=200)).isoformat()),
    ]:
        rita.get_by_label(label, exact=True).fill(value)
    rita.get_by_role("button", name="Save draft").click()
    for column in ("nhs_number", "date_of_birth", "diagnosis"):
        rita.locator(f"#col-admissions-{column}").check(force=True)
    rita.get_by_label("Why you need these columns").fill("Link spells; age; outcome.")
    rita.get_by_role("button", name="Save Hospital admissions").click()
    rita.get_by_label("Add a researcher by email address").fill(server["accounts"]["sam.scientist"]["email"])
    rita.get_by_role("button", name="Add to the team").click()
    rita.get_by_role("link", name="Check and submit").click()
    rita.get_by_role("button", name="Submit to the committee").click()
    expect(rita.locator("main")).to_contain_text("Application submitted")

    # The chair assigns two reviewers.
    chris = sign_in(browser, server, "chris.chair")
    chris.goto(url + "/dac/")
    chris.get_by_role("link", name="Readmissions after heart failure").click()
    chris.get_by_label("Dana Kowalski").check(force=True)
    chris.get_by_label("Drew MacLeod").check(force=True)
    chris.get_by_role("button", name="Assign").click()
    expect(chris.locator("main")).to_contain_text("2 reviewer(s) assigned")

    # One reviewer declares a conflict: no vote form, no votes.
    drew = sign_in(browser, server, "drew.dac")
    drew.goto(f"{url}/dac/{project_id}")
    drew.get_by_label("Describe the conflict").fill("I supervised the PI's doctorate.")
    drew.get_by_role("button", name="Declare a conflict").click()
    expect(drew.locator("#conflicted")).to_be_visible()
    expect(drew.get_by_role("button", name="Cast vote")).to_have_count(0)

    # The other votes, with a rationale.
    dana = sign_in(browser, server, "dana.dac")
    dana.goto(f"{url}/dac/{project_id}")
    dana.get_by_label("Approve", exact=True).check(force=True)
    dana.get_by_label("Your reasons").fill("Clear purpose and minimal data.")
    dana.get_by_role("button", name="Cast vote").click()
    expect(dana.locator("main")).to_contain_text("Vote recorded")

    # One counted vote is below the quorum of two, and the chair's own vote never counts towards the
    # quorum of their own decision: the decide page says so and offers no decision; the chair adds a
    # third member to the panel, who votes.
    chris.goto(f"{url}/dac/{project_id}/decide")
    expect(chris.locator("#quorum-not-reached")).to_contain_text("1 of 2 votes")
    expect(chris.get_by_role("button", name="Record decision")).to_have_count(0)
    chris.goto(f"{url}/dac/{project_id}")
    chris.get_by_label("Della Osei").check(force=True)
    chris.get_by_role("button", name="Assign").click()
    della = sign_in(browser, server, "della.dac")
    della.goto(f"{url}/dac/{project_id}")
    della.get_by_label("Approve with conditions").check(force=True)
    della.get_by_label("Your reasons").fill("Date of birth is not needed for this question.")
    della.get_by_role("button", name="Cast vote").click()
    expect(della.locator("main")).to_contain_text("2 counted of a quorum of 2")
    chris.goto(f"{url}/dac/{project_id}")

    # The chair approves fewer columns than were asked for.
    chris.get_by_role("link", name="Record the decision").click()
    chris.get_by_label("Approve", exact=True).check(force=True)
    chris.locator("#approve-admissions-date_of_birth").uncheck(force=True)
    chris.get_by_label("Conditions of approval").fill("Round all counts to the nearest 5.")
    chris.get_by_role("button", name="Record decision").click()
    expect(chris.locator("main")).to_contain_text("Decision recorded: approved")

    # The applicant sees the decision and the approved columns, starts the project and signs.
    rita.goto(project_url)
    expect(rita.locator("main")).to_contain_text("Committee decision: Approved")
    expect(rita.locator("#approved-columns")).to_contain_text("nhs_number, diagnosis")
    expect(rita.locator("main")).not_to_contain_text("Clear purpose and minimal data.")
    rita.get_by_role("button", name="Start the project").click()
    rita.locator("#agreement-link").click()
    rita.get_by_label("Type your full name to sign").fill("Dr Rita Patel")
    rita.get_by_role("button", name="Sign the agreement").click()
    expect(rita.locator("#gate-open")).to_be_visible()

    sam = sign_in(browser, server, "sam.scientist")
    sam.goto(project_url)
    expect(sam.locator("#gate-closed")).to_be_visible()
    sam.locator("#agreement-link").click()
    sam.get_by_label("Type your full name to sign").fill("Sam Okafor")
    sam.get_by_role("button", name="Sign the agreement").click()
    expect(sam.locator("#gate-open")).to_be_visible()

    # Time passes and Sam's training expires: the gate closes until an administrator records renewal.
    from projects.models import TrainingRecord

    db = server["app"].extensions["tre.db"]
    sam_id = server["people"]["sam.scientist"].id
    with db.session_factory() as s:
        s.execute(
            update(TrainingRecord)
            .where(TrainingRecord.user_id == sam_id)
            .values(expires_on=today - dt.timedelta(days=1))
        )
        s.commit()
    sam.reload()
    expect(sam.locator("#gate-closed")).to_be_visible()
    expect(sam.locator("#gate-reasons")).to_contain_text("training is missing or has expired")
    adam = sign_in(browser, server, "adam.admin")
    adam.goto(url + "/projects/admin/training")
    adam.get_by_label("Person").select_option(sam_id)
    adam.get_by_label("Completed on").fill(today.isoformat())
    adam.get_by_label("Expires on").fill((today + dt.timedelta(days=365)).isoformat())
    adam.get_by_role("button", name="Record safe researcher training").click()
    expect(adam.locator("main")).to_contain_text("Training recorded")
    sam.reload()
    expect(sam.locator("#gate-open")).to_be_visible()

    # A new agreement version closes the gate until Sam signs it.
    adam.goto(url + "/projects/admin/agreements")
    adam.get_by_label("Text of the agreement").fill(
        "Version two: outputs leave only after two checkers agree."
    )
    adam.get_by_role("button", name="Publish new version").click()
    expect(adam.locator("main")).to_contain_text("Version 2 published")
    sam.reload()
    expect(sam.locator("#gate-closed")).to_be_visible()
    expect(sam.locator("#gate-reasons")).to_contain_text("agreement is not signed")
    sam.locator("#agreement-link").click()
    sam.get_by_label("Type your full name to sign").fill("Sam Okafor")
    sam.get_by_role("button", name="Sign the agreement").click()
    expect(sam.locator("#gate-open")).to_be_visible()
