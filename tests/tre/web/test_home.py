"""The home page: each role's section lists what waits for that person and for how long, in a constant
number of statements, and never anything the person may not act on."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from disclosure import rules as output_rules
from disclosure.models import OutputRequest
from projects.models import Project
from pseudonymisation.models import Extract
from tests.projects.factories import World, build_world, complete_draft, in_review, make_user, ready_for_access, voted
from tests.statements import count_statements
from tre.core.db import utcnow
from tre.core.roles import RoleGrant
from tre.web.home import waited


def login(client: Any, user: Any) -> Any:
    with client.session_transaction() as sess:
        sess["uid"] = user.id
        sess["epoch"] = user.session_epoch
        sess["seen"] = sess["signed_in"] = int(utcnow().timestamp())
    return client


def home(app: Any, user: Any) -> str:
    response = login(app.test_client(), user).get("/")
    assert response.status_code == 200
    return str(response.get_data(as_text=True))


def section(page: str, heading_id: str) -> str:
    """The HTML of one section of the home page ('' when the section is absent)."""
    start = page.find(f'aria-labelledby="{heading_id}"')
    if start < 0:
        return ""
    return page[start : page.index("</section>", start)]


def output_request(w: World, project: Project, author: Any, *, title: str, hours_ago: int = 3) -> OutputRequest:
    at = utcnow() - dt.timedelta(hours=hours_ago)
    req = OutputRequest(
        project_id=project.id,
        author_id=author.id,
        title=title,
        state=output_rules.AWAITING_REVIEW,
        submitted_at=at,
        last_submitted_at=at,
    )
    w.session.add(req)
    w.session.commit()
    return req


@pytest.fixture
def w(sqlite_app: Any) -> World:
    return build_world(sqlite_app)


def test_signed_out_home_invites_sign_in_and_lists_no_tasks(w: World) -> None:
    page = w.app.test_client().get("/").get_data(as_text=True)

    assert "Sign in to apply" in page and "Your tasks" not in page


def test_researcher_sees_what_an_approved_project_waits_for(w: World) -> None:
    p = voted(w)
    w.svc.decide(w.chair, p.id, "approved", conditions="Round counts.")

    mine = section(home(w.app, w.member), "home-researcher")

    assert p.title in mine
    assert "safe researcher training" in mine and "current data access agreement" in mine
    assert "project to be activated" in mine


def test_researcher_sees_returned_outputs_and_nothing_once_ready(w: World) -> None:
    p = ready_for_access(w)
    output_request(w, p, w.member, title="Table 1").state = output_rules.RETURNED
    w.session.commit()

    mine = section(home(w.app, w.pi), "home-researcher")

    assert "1 output request returned to you for changes" in mine
    assert "training" not in mine and "agreement" not in mine


def test_outsider_does_not_see_another_teams_project(w: World) -> None:
    p = complete_draft(w)

    page = home(w.app, w.outsider)

    assert p.id not in page and "not on any open project" in page


def test_member_sees_application_awaiting_their_vote_until_they_vote(w: World) -> None:
    p = in_review(w)

    before = section(home(w.app, w.dana), "home-reviewer")
    w.svc.cast_vote(w.dana, p.id, "approve", "Fine.")
    after = section(home(w.app, w.dana), "home-reviewer")

    assert p.title in before and "Version" in before
    assert p.id not in after and "No application waits for your vote" in after


def test_recused_member_never_sees_the_application(w: World) -> None:
    p = in_review(w)
    w.svc.declare_conflict(w.dana, p.id, "I supervise the PI")

    page = home(w.app, w.dana)

    assert p.id not in page and p.title not in page


def test_a_reviewer_who_withdraws_a_declaration_made_in_error_sees_the_application_await_their_vote(
    w: World,
) -> None:
    p = in_review(w)
    w.svc.declare_conflict(w.dana, p.id, "I supervise the PI")
    w.svc.withdraw_conflict(w.dana, p.id, "Wrong application")

    assert p.title in section(home(w.app, w.dana), "home-reviewer")


def test_unassigned_member_does_not_see_the_application(w: World) -> None:
    p = in_review(w)
    other = make_user(w.app, "erin.dac", ["dac_member"])

    assert p.id not in home(w.app, other)


def test_chair_sees_decision_due_only_at_quorum(w: World) -> None:
    p = in_review(w)
    w.svc.cast_vote(w.dana, p.id, "approve", "Fine.")
    before = section(home(w.app, w.chair), "home-chair")
    w.svc.cast_vote(w.drew, p.id, "approve", "Fine too.")
    after = section(home(w.app, w.chair), "home-chair")

    assert p.id not in before
    assert f"/dac/{p.id}/decide" in after and "quorum reached (2 votes)" in after


def test_chair_sees_a_submitted_application_to_assign(w: World) -> None:
    p = complete_draft(w)
    w.svc.submit(w.pi, p.id)

    chair = section(home(w.app, w.chair), "home-chair")

    assert f"/dac/{p.id}" in chair and "Assign reviewers" in chair


def test_recused_chair_is_not_shown_the_decision(w: World) -> None:
    p = complete_draft(w)
    w.svc.submit(w.pi, p.id)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id, w.chair.id])
    w.svc.declare_conflict(w.chair, p.id, "Co-author of the PI")
    w.svc.cast_vote(w.dana, p.id, "approve", "Fine.")
    w.svc.cast_vote(w.drew, p.id, "approve", "Fine too.")

    assert p.id not in home(w.app, w.chair)


def test_person_with_several_roles_sees_each_section(w: World) -> None:
    page = home(w.app, w.chair)

    assert section(page, "home-reviewer") and section(page, "home-chair")
    assert not section(page, "home-checker") and not section(page, "home-administrator")


def test_checker_sees_request_with_time_since_submission(w: World) -> None:
    p = ready_for_access(w)
    olive = make_user(w.app, "olive.checker", ["output_checker"])
    req = output_request(w, p, w.member, title="Admissions by age", hours_ago=5)

    mine = section(home(w.app, olive), "home-checker")

    assert f"/outputs/requests/{req.id}" in mine and "5 hours" in mine
    assert "Awaiting review" in mine


def test_checker_home_lists_held_requests_then_the_oldest_and_leads_to_the_queue_for_the_rest(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from disclosure.models import OutputReview

    monkeypatch.setattr("tre.worklist.HOME_CHECKER_ITEMS", 3)
    p = ready_for_access(w)
    olive = make_user(w.app, "olive.checker", ["output_checker"])
    made = [output_request(w, p, w.member, title=f"Table {n}", hours_ago=20 - n) for n in range(5)]
    first = section(home(w.app, olive), "home-checker")
    w.session.add(OutputReview(request_id=made[4].id, round=made[4].round, reviewer_id=olive.id, assigned_by=olive.id))
    w.session.commit()

    held = section(home(w.app, olive), "home-checker")

    assert [r.id for r in made if f"/outputs/requests/{r.id}" in first] == [r.id for r in made[:3]]
    assert "These are 3 of the 5 requests you may check" in first and 'href="/outputs/queue"' in first
    assert [r.id for r in made if f"/outputs/requests/{r.id}" in held] == [made[0].id, made[1].id, made[4].id]
    assert held.count("You are reviewing") == 1


def test_checker_never_sees_a_request_they_authored_or_of_their_team(w: World) -> None:
    """A researcher who also checks outputs (and a former member of the team) must not review it."""
    p = complete_draft(w)
    author = make_user(w.app, "ali.author", ["researcher", "output_checker"])
    w.svc.add_member(w.pi, p.id, author.email)
    former = make_user(w.app, "fay.former", ["researcher", "output_checker"])
    w.svc.add_member(w.pi, p.id, former.email)
    w.svc.remove_member(w.pi, p.id, former.id)
    req = output_request(w, p, author, title="Mine")
    w.session.commit()

    for person in (author, former):
        page = home(w.app, person)
        assert req.id not in page
        assert "No output request waits for you" in section(page, "home-checker")


def test_custodian_sees_failed_extract_but_not_one_that_later_succeeded(w: World) -> None:
    p = ready_for_access(w)
    now = utcnow()
    failed = Extract(
        project_id=p.id,
        plan_hash="a" * 64,
        state="failed",
        requested_at=now - dt.timedelta(hours=2),
        finished_at=now,
        error="boom",
    )
    w.session.add(failed)
    w.session.commit()
    first = section(home(w.app, w.custodian), "home-custodian")
    w.session.add(Extract(project_id=p.id, plan_hash="a" * 64, state="succeeded", requested_at=now, finished_at=now))
    w.session.commit()
    later = section(home(w.app, w.custodian), "home-custodian")

    assert failed.id in first and "Failed" in first
    assert failed.id not in later


def test_administrator_sees_grants_they_may_approve_not_their_own(w: World) -> None:
    other_admin = make_user(w.app, "ava.admin", ["administrator"])
    grant = RoleGrant(user_id=w.member.id, role="output_checker", requested_by=w.admin.id)
    w.session.add(grant)
    w.session.commit()

    theirs = section(home(w.app, other_admin), "home-administrator")
    own = section(home(w.app, w.admin), "home-administrator")

    assert w.member.id in theirs and "Output checker" in theirs
    assert w.member.id not in own


def test_waited_reads_as_words() -> None:
    now = dt.datetime(2026, 1, 10, 12, tzinfo=dt.UTC)

    assert waited(now - dt.timedelta(seconds=20), now) == "under a minute"
    assert waited(now - dt.timedelta(minutes=1), now) == "1 minute"
    assert waited(now - dt.timedelta(hours=30), now) == "30 hours"
    assert waited(now - dt.timedelta(days=9), now) == "9 days"


def test_home_costs_the_same_statements_for_one_item_or_five(app: Any) -> None:
    """On SQLite and PostgreSQL: one person holding every role, with one then five items in each list."""
    w = build_world(app)
    everyone = make_user(
        app, "all.roles", ["researcher", "dac_member", "dac_chair", "output_checker", "data_custodian", "administrator"]
    )
    other_admin = make_user(app, "ava.admin", ["administrator"])

    def add_items() -> None:
        w.svc.add_member(w.pi, complete_draft(w).id, everyone.email)
        p = complete_draft(w)
        w.svc.submit(w.pi, p.id)
        w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id, everyone.id])
        done = voted(w)
        output_request(w, done, w.member, title="T")
        now = utcnow()
        w.session.add(Extract(project_id=done.id, plan_hash="b" * 64, state="running", requested_at=now))
        w.session.add(RoleGrant(user_id=w.member.id, role="output_checker", requested_by=other_admin.id))
        w.session.commit()

    add_items()
    client = login(app.test_client(), everyone)
    client.get("/")
    with_one, first = count_statements(app, lambda: client.get("/"))
    for _ in range(4):
        add_items()
    with_five, page = count_statements(app, lambda: client.get("/"))

    assert first.status_code == page.status_code == 200
    html = page.get_data(as_text=True)
    assert section(html, "home-reviewer").count("data-project=") == 5
    assert section(html, "home-researcher").count("data-project=") == 5
    assert section(html, "home-chair").count("quorum reached") == 5
    assert section(html, "home-checker").count("data-request=") == 5
    assert section(html, "home-custodian").count("data-extract=") == 5
    assert section(html, "home-administrator").count("data-user=") == 5
    assert with_five == with_one
