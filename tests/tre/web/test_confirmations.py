"""Confirmation pages for destructive actions: the GET says what will happen and changes nothing; it is
refused (and audited) as the action is; the POST from its "Yes" button does the action."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import func, select

from disclosure.models import OutputRelease, OutputRequest
from projects.models import OptOutExemption, ProjectMember
from tests.projects.factories import World, build_world, ready_for_access
from tests.tre.web.test_outputs import Browser, _browser
from tests.tre.web.test_projects_pages import login
from tre.core.audit import DENIED, AuditEvent


@pytest.fixture
def w(sqlite_app: Any) -> World:
    return build_world(sqlite_app)


@pytest.fixture
def web(sqlite_app: Any) -> Browser:
    return _browser(sqlite_app)


def _audit_count(session: Any) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(AuditEvent)) or 0


def _denials(session: Any, action: str) -> list[AuditEvent]:
    session.expire_all()
    return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action, AuditEvent.outcome == DENIED)))


def _yes(client: Any, page: str, **fields: str) -> Any:
    """Press the confirmation page's "Yes" button: post its form, with its CSRF token, to its action."""
    body = client.get(page).get_data(as_text=True)
    action = re.search(r'<form method="post" action="([^"]+)" novalidate id="confirm-form">', body)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', body)
    assert action and csrf, body
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', body))
    return client.post(action.group(1), data={**hidden, "csrf_token": csrf.group(1), **fields})


# --- removing a team member -----------------------------------------------------------------------


def test_member_removal_confirmation_says_what_happens_and_changes_nothing(w: World, client: Any) -> None:
    p = ready_for_access(w)
    login(client, w.pi)
    before = _audit_count(w.session)

    page = client.get(f"/projects/{p.id}/members/{w.member.id}/remove")

    body = page.get_data(as_text=True)
    assert page.status_code == 200
    assert f"Are you sure you want to remove {w.member.display_name} from the team?" in body
    assert "loses access" in body and 'id="confirm-cancel"' in body and f'href="/projects/{p.id}#team"' in body
    assert f'action="/projects/{p.id}/members/{w.member.id}/remove"' in body
    w.session.expire_all()
    assert any(m.user_id == w.member.id for m in w.session.get(type(p), p.id).active_members)
    assert _audit_count(w.session) == before


def test_yes_on_the_member_removal_page_removes_the_member(w: World, client: Any) -> None:
    p = ready_for_access(w)
    login(client, w.pi)
    show = client.get(f"/projects/{p.id}").get_data(as_text=True)
    assert f'href="/projects/{p.id}/members/{w.member.id}/remove"' in show  # the team table links to it

    done = _yes(client, f"/projects/{p.id}/members/{w.member.id}/remove")

    assert done.status_code == 302
    w.session.expire_all()
    member = w.session.scalar(select(ProjectMember).where(ProjectMember.user_id == w.member.id))
    assert member is not None and member.removed_at is not None


def test_researcher_of_another_project_is_refused_the_member_removal_page_and_it_is_audited(
    w: World, client: Any
) -> None:
    """The attack: someone outside the project asks for its removal page (to learn who is on the team,
    or to get a form to post)."""
    p = ready_for_access(w)
    login(client, w.outsider)

    page = client.get(f"/projects/{p.id}/members/{w.member.id}/remove")

    assert page.status_code in (403, 404)
    assert w.member.display_name not in page.get_data(as_text=True)
    refusals = _denials(w.session, "project.remove_member")
    assert [(e.actor_id, e.project_id) for e in refusals] == [(w.outsider.id, p.id)]


def test_removed_member_is_refused_the_removal_page_like_the_removal(w: World, client: Any) -> None:
    p = ready_for_access(w)
    w.svc.remove_member(w.pi, p.id, w.member.id)
    login(client, w.member)

    page = client.get(f"/projects/{p.id}/members/{w.pi.id}/remove")
    action = client.post(f"/projects/{p.id}/members/{w.pi.id}/remove")  # without CSRF: refused anyway

    assert page.status_code == 403
    assert action.status_code in (400, 403)
    assert len(_denials(w.session, "project.remove_member")) == 1  # the page's refusal, audited


def test_principal_investigator_has_no_removal_page(w: World, client: Any) -> None:
    p = ready_for_access(w)
    login(client, w.chair)

    page = client.get(f"/projects/{p.id}/members/{w.pi.id}/remove", follow_redirects=True)

    assert "The principal investigator cannot be removed" in page.get_data(as_text=True)
    assert "Are you sure" not in page.get_data(as_text=True)


# --- suspending a project; withdrawing an opt-out exemption ---------------------------------------


def test_suspension_is_confirmed_with_its_reason_then_done(w: World, client: Any) -> None:
    p = ready_for_access(w)
    login(client, w.chair)
    assert f'href="/dac/{p.id}/suspend"' in client.get(f"/projects/{p.id}").get_data(as_text=True)

    page = client.get(f"/dac/{p.id}/suspend").get_data(as_text=True)
    w.session.expire_all()
    assert w.session.get(type(p), p.id).state == "active"
    done = _yes(client, f"/dac/{p.id}/suspend", reason="Possible breach")

    assert "Are you sure you want to suspend" in page and 'name="reason"' in page
    assert done.status_code == 302
    w.session.expire_all()
    assert w.session.get(type(p), p.id).state == "suspended"


def test_researcher_is_refused_the_suspension_page(w: World, client: Any) -> None:
    p = ready_for_access(w)
    login(client, w.pi)

    assert client.get(f"/dac/{p.id}/suspend").status_code == 403


def test_optout_exemption_withdrawal_is_confirmed_then_done(w: World, client: Any) -> None:
    p = ready_for_access(w)
    w.svc.set_optout_exemption(w.chair, p.id, "national", "Section 251 support, CAG reference 21/CAG/0001")
    login(client, w.chair)
    page = f"/dac/{p.id}/optout-exemptions/national/revoke"
    assert f'href="{page}"' in client.get(f"/projects/{p.id}").get_data(as_text=True)

    body = client.get(page).get_data(as_text=True)
    assert "Are you sure you want to withdraw the exemption from the national opt-out list?" in body
    assert w.session.scalar(select(func.count()).select_from(OptOutExemption)) == 1
    _yes(client, page)

    w.session.expire_all()
    assert w.session.scalar(select(func.count()).select_from(OptOutExemption)) == 0


def test_researcher_is_refused_the_exemption_withdrawal_page(w: World, client: Any) -> None:
    p = ready_for_access(w)
    w.svc.set_optout_exemption(w.chair, p.id, "national", "Section 251 support, CAG reference 21/CAG/0001")
    login(client, w.pi)

    assert client.get(f"/dac/{p.id}/optout-exemptions/national/revoke").status_code == 403


# --- output requests: withdrawing, removing a file, revoking a release ------------------------------


def test_withdrawal_is_confirmed_then_done(web: Browser) -> None:
    w = web.world
    req = w.submitted()
    state = w.refresh(req).state
    rita = web.as_(w.author)
    page = f"/outputs/requests/{req.id}/withdraw"
    assert f'href="{page}"' in rita.get(f"/outputs/requests/{req.id}").get_data(as_text=True)

    body = rita.get(page).get_data(as_text=True)
    assert "Are you sure you want to withdraw this output request?" in body
    assert "Yes, withdraw this request" in body and "output checkers are told" in body
    assert w.refresh(req).state == state
    _yes(rita, page)

    assert w.refresh(req).state == "withdrawn"


def test_colleague_is_refused_the_withdrawal_page_and_it_is_audited(web: Browser) -> None:
    w = web.world
    req = w.submitted()
    state = w.refresh(req).state

    page = web.as_(w.colleague).get(f"/outputs/requests/{req.id}/withdraw")

    assert page.status_code == 403
    assert [e.actor_id for e in _denials(w.session, "output.withdraw")] == [w.colleague.id]
    assert w.refresh(req).state == state


def test_a_released_request_has_no_withdrawal_page(web: Browser) -> None:
    w = web.world
    req = w.released()

    page = web.as_(w.author).get(f"/outputs/requests/{req.id}/withdraw", follow_redirects=True)

    assert "Are you sure" not in page.get_data(as_text=True)
    assert w.refresh(req).state == "released"


def test_file_removal_is_confirmed_then_done(web: Browser) -> None:
    w = web.world
    req = w.draft()
    f = req.current_files[0]
    rita = web.as_(w.author)
    page = f"/outputs/requests/{req.id}/files/{f.id}/remove"

    body = rita.get(page).get_data(as_text=True)
    assert f"Are you sure you want to remove {f.name} from this request?" in body
    assert len(w.refresh(req).current_files) == 1
    _yes(rita, page)

    assert w.refresh(req).current_files == []


def test_revocation_is_confirmed_with_its_reason_then_done(web: Browser) -> None:
    w = web.world
    req = w.released()
    client = web.as_(w.olive)
    page = f"/outputs/requests/{req.id}/revoke"

    body = client.get(page).get_data(as_text=True)
    assert "Are you sure you want to revoke this release?" in body and 'name="reason"' in body
    assert w.refresh(req).state == "released"
    _yes(client, page, reason="A cell below the threshold was missed")

    assert w.refresh(req).state == "revoked"
    release = w.session.scalar(select(OutputRelease).where(OutputRelease.request_id == req.id))
    assert release is not None and release.revoke_reason == "A cell below the threshold was missed"


def test_author_is_refused_the_revocation_page_at_the_route_and_it_is_audited(web: Browser) -> None:
    w = web.world
    req = w.released()

    page = web.as_(w.author).get(f"/outputs/requests/{req.id}/revoke")

    assert page.status_code == 403
    # Refused at the route (a researcher holds no checker's permission), as a post to revoke is.
    refusals = _denials(w.session, "access.denied")
    assert [(e.actor_id, e.target_id) for e in refusals] == [(w.author.id, "outputs.confirm_revoke")]
    assert w.session.get(OutputRequest, req.id).state == "released"


# --- a personal API token; an account; a single sign-on link ----------------------------------------


def test_token_revocation_is_confirmed_then_done_and_another_persons_token_is_not_found(
    w: World, client: Any
) -> None:
    from tre.authn import identity_service

    with w.app.test_request_context():
        mine, _ = identity_service().create_personal_token(w.pi, "Nightly script", 30)
        theirs, _ = identity_service().create_personal_token(w.member, "Their script", 30)
    login(client, w.pi)
    assert f'href="/account/tokens/{mine.id}/revoke"' in client.get("/account/").get_data(as_text=True)

    body = client.get(f"/account/tokens/{mine.id}/revoke").get_data(as_text=True)
    other = client.get(f"/account/tokens/{theirs.id}/revoke")
    w.session.expire_all()
    assert w.session.get(type(mine), mine.id).revoked_at is None
    _yes(client, f"/account/tokens/{mine.id}/revoke")

    assert "Are you sure you want to revoke the token \u201cNightly script\u201d?" in body
    assert other.status_code == 404
    w.session.expire_all()
    assert w.session.get(type(mine), mine.id).revoked_at is not None
    assert w.session.get(type(theirs), theirs.id).revoked_at is None


def test_deactivation_is_confirmed_then_done(w: World, client: Any) -> None:
    login(client, w.admin)
    assert f'href="/admin/users/{w.outsider.id}/active"' in client.get(f"/admin/users/{w.outsider.id}").get_data(
        as_text=True
    )

    body = client.get(f"/admin/users/{w.outsider.id}/active").get_data(as_text=True)
    w.session.expire_all()
    assert w.session.get(type(w.outsider), w.outsider.id).is_active
    _yes(client, f"/admin/users/{w.outsider.id}/active")

    assert "Are you sure you want to deactivate" in body and "signed out everywhere" in body
    w.session.expire_all()
    assert not w.session.get(type(w.outsider), w.outsider.id).is_active


def test_non_administrator_is_refused_the_deactivation_page(w: World, client: Any) -> None:
    login(client, w.pi)

    assert client.get(f"/admin/users/{w.outsider.id}/active").status_code == 403

