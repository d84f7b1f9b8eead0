"""The committee's pages for a member the chair has not assigned: the application page says who assigns
reviewers and what the member can do now, and lets them declare a conflict of interest before reading
further; the chair sees the declaration and is not offered the member. The member alone may withdraw
their declaration as made in error, and the chair sees it withdrawn, with both reasons (ADR 0065)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from projects.models import Project, WithdrawnConflict
from tests.projects.factories import World, approved, build_world, make_user, review_rows, submitted
from tests.tre.web.test_projects_pages import login, post, token
from tre.core.audit import DENIED, AuditEvent
from tre.core.identity import Identity


@pytest.fixture
def w(sqlite_app: Any) -> World:
    return build_world(sqlite_app)


def _denials(w: World, action: str) -> list[tuple[str | None, str | None]]:
    w.session.expire_all()
    events = w.session.scalars(
        select(AuditEvent).where(AuditEvent.action == action, AuditEvent.outcome == DENIED).order_by(AuditEvent.seq)
    )
    return [(e.actor_id, e.target_id) for e in events]


def test_unassigned_member_is_told_who_assigns_reviewers_and_what_to_do_now(w: World, client: Any) -> None:
    p = submitted(w)
    login(client, w.drew)

    page = client.get(f"/dac/{p.id}").get_data(as_text=True)

    assert 'id="not-assigned"' in page and "You are not assigned to review this application" in page
    assert "The chair is" in page and '<a href="mailto:chris.chair@nhs.example">Chris Chair</a>' in page
    assert "ask the chair to assign you" in page
    assert 'id="declare-conflict"' in page and "Cast vote" not in page
    # The declaration comes before the application's details, so it can be made before reading them.
    assert page.index('id="declare-conflict"') < page.index("<h2>The application</h2>")


def test_unassigned_member_is_told_when_nobody_holds_the_chair(w: World, client: Any) -> None:
    p = submitted(w)
    Identity(w.session, w.app.extensions["tre.platform"].keys, w.audit).set_active(w.admin, w.chair.id, False)
    login(client, w.drew)

    page = client.get(f"/dac/{p.id}").get_data(as_text=True)

    assert "Nobody holds the chair's role at the moment: ask an administrator" in page


def test_assigned_reviewer_and_chair_get_no_unassigned_explanation(w: World, client: Any) -> None:
    p = submitted(w)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id])

    for person in (w.dana, w.chair):
        login(client, person)
        page = client.get(f"/dac/{p.id}").get_data(as_text=True)
        assert 'id="not-assigned"' not in page
        assert 'id="declare-conflict"' in page  # either may still recuse themselves


def test_unassigned_member_declares_a_conflict_from_the_application_page(w: World, client: Any) -> None:
    p = submitted(w)
    login(client, w.drew)

    response = post(client, f"/dac/{p.id}/conflict", {"reason": "I supervised the PI"}, token_from=f"/dac/{p.id}")

    assert response.status_code == 302
    page = client.get(f"/dac/{p.id}").get_data(as_text=True)
    assert 'id="conflicted"' in page and "before being assigned" in page
    assert 'id="not-assigned"' not in page and 'id="declare-conflict"' not in page
    [row] = review_rows(w, p)
    assert row.reviewer_id == w.drew.id and row.conflicted and not row.assigned


def test_chair_sees_the_declaration_and_is_not_offered_the_member(w: World, client: Any) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "I supervised the PI <b>2019</b>")
    login(client, w.chair)

    page = client.get(f"/dac/{p.id}").get_data(as_text=True)

    conflicts = page[page.index('id="conflicts"'):page.index("</table>", page.index('id="conflicts"'))]
    assert "Drew Dac" in conflicts and "before being assigned" in conflicts
    assert "I supervised the PI &lt;b&gt;2019&lt;/b&gt;" in conflicts  # the member's words, never as HTML
    assert f'value="{w.drew.id}"' not in page and f'value="{w.dana.id}"' in page
    assert "Members who declared a conflict of interest are not offered" in page
    assert "Nobody is assigned yet" in page  # a declaration is no reviewer


def test_chair_assigning_a_member_who_declared_a_conflict_is_told_why_and_nothing_changes(
    w: World, client: Any
) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    login(client, w.chair)

    response = post(client, f"/dac/{p.id}/assign", {"reviewers": [w.dana.id, w.drew.id]}, token_from=f"/dac/{p.id}")

    assert response.status_code == 400
    assert "Drew Dac has declared a conflict of interest on this application" in response.get_data(as_text=True)
    assert [(a.reviewer_id, a.assigned) for a in review_rows(w, p)] == [(w.drew.id, False)]
    assert w.session.get(Project, p.id).state == "submitted"


def test_queue_tells_members_how_to_declare_a_conflict_and_counts_no_declaration_as_a_reviewer(
    w: World, client: Any
) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    login(client, w.dana)

    page = client.get("/dac/").get_data(as_text=True)

    advice = page[page.index('id="conflict-advice"'):]
    assert advice.startswith('id="conflict-advice">If you have a conflict of interest with an application, assigned')
    assert "declare it at the top of its page before reading further" in advice
    assert "Not assigned" in page
    row = page[page.index(f'href="/dac/{p.id}"'):page.index("</tr>", page.index(f'href="/dac/{p.id}"'))]
    assert '<td class="nhsuk-table__cell">0</td>' in row  # Drew's declaration is not a reviewer
    login(client, w.drew)
    assert "Conflict declared" in client.get("/dac/").get_data(as_text=True)


# --- attacks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["researcher", "custodian", "output_checker"])
def test_nobody_outside_the_committee_can_post_a_conflict_and_it_is_audited(w: World, client: Any, who: str) -> None:
    p = submitted(w)
    actor = {
        "researcher": w.outsider,
        "custodian": w.custodian,
        "output_checker": make_user(w.app, "olive.checker", ["output_checker"]),
    }[who]
    login(client, actor)

    response = client.post(f"/dac/{p.id}/conflict", data={"reason": "Out of my way", "csrf_token": token(client, "/")})

    assert response.status_code == 403
    assert _denials(w, "access.denied") == [(actor.id, "dac.conflict")]
    assert review_rows(w, p) == []


def test_the_applicant_cannot_post_a_conflict_on_their_own_application(w: World, client: Any) -> None:
    p = submitted(w)
    login(client, w.pi)

    response = client.post(f"/dac/{p.id}/conflict", data={"reason": "Recuse", "csrf_token": token(client, "/")})

    assert response.status_code == 403 and review_rows(w, p) == []


def test_a_member_removed_from_the_committee_while_signed_in_cannot_post_a_conflict(w: World, client: Any) -> None:
    p = submitted(w)
    login(client, w.drew)
    csrf = token(client, f"/dac/{p.id}")  # the form was open while the role was taken away
    Identity(w.session, w.app.extensions["tre.platform"].keys, w.audit).set_roles(w.admin, w.drew.id, ["researcher"])

    response = client.post(f"/dac/{p.id}/conflict", data={"reason": "Former colleague", "csrf_token": csrf})

    assert response.status_code == 403
    assert _denials(w, "access.denied") == [(w.drew.id, "dac.conflict")]
    assert review_rows(w, p) == []


def test_a_conflict_on_an_application_not_under_review_is_refused_with_a_clear_message(w: World, client: Any) -> None:
    p = approved(w)
    login(client, w.dana)
    before = [(a.reviewer_id, a.conflicted) for a in review_rows(w, p)]

    page = client.get(f"/dac/{p.id}").get_data(as_text=True)
    response = post(client, f"/dac/{p.id}/conflict", {"reason": "Former colleague"}, token_from=f"/dac/{p.id}")

    assert 'id="declare-conflict"' not in page and 'id="not-assigned"' not in page
    assert response.status_code == 400
    assert "only while the application is waiting for the committee" in response.get_data(as_text=True)
    assert [(a.reviewer_id, a.conflicted) for a in review_rows(w, p)] == before


def test_sending_the_declaration_twice_keeps_one(w: World, client: Any) -> None:
    p = submitted(w)
    login(client, w.drew)
    csrf = token(client, f"/dac/{p.id}")

    first = client.post(f"/dac/{p.id}/conflict", data={"reason": "Former colleague", "csrf_token": csrf})
    second = client.post(f"/dac/{p.id}/conflict", data={"reason": "Former colleague", "csrf_token": csrf})

    assert first.status_code == 302 and second.status_code == 400
    assert "already declared a conflict of interest" in second.get_data(as_text=True)
    assert [(a.reviewer_id, a.conflict_reason) for a in review_rows(w, p)] == [(w.drew.id, "Former colleague")]


def test_project_page_points_a_committee_member_to_the_committees_page(w: World, client: Any) -> None:
    p = submitted(w)

    login(client, w.drew)
    member_page = client.get(f"/projects/{p.id}").get_data(as_text=True)
    login(client, w.pi)
    applicant_page = client.get(f"/projects/{p.id}").get_data(as_text=True)

    assert 'id="committee-review"' in member_page and f'href="/dac/{p.id}"' in member_page
    assert 'id="committee-review"' not in applicant_page


# --- withdrawing a declaration made in error ----------------------------------------------------------


def _withdrawn(w: World) -> list[WithdrawnConflict]:
    w.session.expire_all()
    return list(w.session.scalars(select(WithdrawnConflict)))


def test_member_sees_their_declaration_and_withdraws_it_from_the_application_page(w: World, client: Any) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Co-author <i>2021</i>")
    login(client, w.drew)

    page = client.get(f"/dac/{p.id}").get_data(as_text=True)
    response = post(
        client, f"/dac/{p.id}/conflict/withdraw", {"reason": "Wrong application"}, token_from=f"/dac/{p.id}"
    )

    mine = page[page.index('id="conflicted"'):]
    assert "Co-author &lt;i&gt;2021&lt;/i&gt;" in mine  # their own words, never as HTML
    assert 'id="withdraw-conflict"' in page and "Withdraw my declaration" in page
    assert "The chair will then be able to assign you" in page
    assert response.status_code == 302
    after = client.get(f"/dac/{p.id}").get_data(as_text=True)
    assert "Declaration of a conflict of interest withdrawn" in after
    assert 'id="conflicted"' not in after and 'id="withdraw-conflict"' not in after
    assert 'id="declare-conflict"' in after and 'id="not-assigned"' in after
    assert review_rows(w, p) == []
    assert [(k.reviewer_id, k.reason) for k in _withdrawn(w)] == [(w.drew.id, "Wrong application")]


def test_an_assigned_reviewer_is_told_they_will_review_again_once_they_withdraw(w: World, client: Any) -> None:
    p = submitted(w)
    w.svc.assign_reviewers(w.chair, p.id, [w.drew.id])
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    login(client, w.drew)

    page = client.get(f"/dac/{p.id}").get_data(as_text=True)
    post(client, f"/dac/{p.id}/conflict/withdraw", {"reason": "Misread the team"}, token_from=f"/dac/{p.id}")

    assert "You will be an ordinary reviewer of this application again" in page and "Cast vote" not in page
    assert "Cast vote" in client.get(f"/dac/{p.id}").get_data(as_text=True)


def test_chair_sees_the_withdrawn_declaration_with_both_reasons_and_can_assign_the_member(
    w: World, client: Any
) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Co-author <b>2019</b>")
    w.svc.withdraw_conflict(w.drew, p.id, "Wrong study <script>x</script>")
    w.svc.declare_conflict(w.dana, p.id, "The PI is my sister")
    login(client, w.chair)

    page = client.get(f"/dac/{p.id}").get_data(as_text=True)

    table = page[page.index('id="conflicts"'):page.index("</table>", page.index('id="conflicts"'))]
    assert "<th scope=\"col\" class=\"nhsuk-table__header\">Withdrawn</th>" in table
    [withdrawn] = [row for row in table.split("<tr")[1:] if "withdrawn-conflict" in row]
    assert "Drew Dac" in withdrawn and "before being assigned" in withdrawn and "as made in error" in withdrawn
    assert "Co-author &lt;b&gt;2019&lt;/b&gt;" in withdrawn
    assert "Wrong study &lt;script&gt;x&lt;/script&gt;" in withdrawn and "<script>x" not in page
    standing = [row for row in table.split("<tr")[1:] if "Dana Dac" in row]
    assert len(standing) == 1 and "No: it stands" in standing[0]
    assert f'value="{w.drew.id}"' in page and f'value="{w.dana.id}"' not in page  # Drew is offered again

    assigned = post(client, f"/dac/{p.id}/assign", {"reviewers": [w.drew.id]}, token_from=f"/dac/{p.id}")
    assert assigned.status_code == 302
    login(client, w.drew)
    voted = post(
        client, f"/dac/{p.id}/vote", {"choice": "approve", "rationale": "Sound"}, token_from=f"/dac/{p.id}"
    )
    assert voted.status_code == 302 and "You voted" in client.get(f"/dac/{p.id}").get_data(as_text=True)


# --- attacks on withdrawal ----------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["another_member", "chair"])
def test_a_committee_member_cannot_withdraw_someone_elses_declaration_by_naming_them(
    w: World, client: Any, who: str
) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    actor = w.dana if who == "another_member" else w.chair
    login(client, actor)

    forged = {"reason": "Drew is needed", "reviewer_id": w.drew.id, "user_id": w.drew.id, "member": w.drew.id}
    response = post(client, f"/dac/{p.id}/conflict/withdraw", forged, token_from=f"/dac/{p.id}")

    assert response.status_code == 400
    assert "You have not declared a conflict of interest on this application" in response.get_data(as_text=True)
    [row] = review_rows(w, p)
    assert row.reviewer_id == w.drew.id and row.conflicted and _withdrawn(w) == []
    assert _denials(w, "project.withdraw_conflict") == [(actor.id, p.id)]


@pytest.mark.parametrize("who", ["researcher", "administrator", "applicant"])
def test_nobody_outside_the_committee_can_post_a_withdrawal_and_it_is_audited(
    w: World, client: Any, who: str
) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    actor = {"researcher": w.outsider, "administrator": w.admin, "applicant": w.pi}[who]
    login(client, actor)

    response = client.post(
        f"/dac/{p.id}/conflict/withdraw", data={"reason": "Made in error", "csrf_token": token(client, "/")}
    )

    assert response.status_code == 403
    assert _denials(w, "access.denied") == [(actor.id, "dac.withdraw_conflict")]
    [row] = review_rows(w, p)
    assert row.conflicted and _withdrawn(w) == []


def test_a_member_removed_from_the_committee_while_signed_in_cannot_withdraw(w: World, client: Any) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    login(client, w.drew)
    csrf = token(client, f"/dac/{p.id}")  # the form was open while the role was taken away
    Identity(w.session, w.app.extensions["tre.platform"].keys, w.audit).set_roles(w.admin, w.drew.id, ["researcher"])

    response = client.post(f"/dac/{p.id}/conflict/withdraw", data={"reason": "Made in error", "csrf_token": csrf})

    assert response.status_code == 403
    assert _denials(w, "access.denied") == [(w.drew.id, "dac.withdraw_conflict")]
    [row] = review_rows(w, p)
    assert row.conflicted and _withdrawn(w) == []


def test_sending_the_withdrawal_twice_withdraws_once_and_says_so(w: World, client: Any) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    login(client, w.drew)
    csrf = token(client, f"/dac/{p.id}")

    first = client.post(f"/dac/{p.id}/conflict/withdraw", data={"reason": "Wrong one", "csrf_token": csrf})
    second = client.post(f"/dac/{p.id}/conflict/withdraw", data={"reason": "Wrong one", "csrf_token": csrf})

    assert first.status_code == 302 and second.status_code == 400
    assert "already withdrawn your declaration" in second.get_data(as_text=True)
    assert len(_withdrawn(w)) == 1


def test_a_withdrawal_without_a_reason_is_refused_and_the_declaration_stands(w: World, client: Any) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    login(client, w.drew)

    response = post(client, f"/dac/{p.id}/conflict/withdraw", {"reason": " "}, token_from=f"/dac/{p.id}")

    assert response.status_code == 400
    assert "Say why your declaration of a conflict of interest was made in error" in response.get_data(as_text=True)
    [row] = review_rows(w, p)
    assert row.conflicted and _withdrawn(w) == []


def test_a_decided_application_offers_no_withdrawal_and_refuses_one(w: World, client: Any) -> None:
    p = submitted(w)
    dora = make_user(w.app, "dora.dac", ["dac_member"])
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, dora.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "Sound")
    w.svc.cast_vote(dora, p.id, "approve", "Sound")
    w.svc.decide(w.chair, p.id, "rejected", public_comment="Not in the public interest")
    login(client, w.drew)

    page = client.get(f"/dac/{p.id}").get_data(as_text=True)
    response = post(client, f"/dac/{p.id}/conflict/withdraw", {"reason": "Made in error"}, token_from=f"/dac/{p.id}")

    assert 'id="conflicted"' in page and 'id="withdraw-conflict"' not in page
    assert response.status_code == 400
    assert "can be withdrawn only while the application is waiting for the committee" in response.get_data(
        as_text=True
    )
    assert [a.reviewer_id for a in review_rows(w, p) if a.conflicted] == [w.drew.id] and _withdrawn(w) == []
