"""The projects, committee and catalogue pages: each kind of user walks their part through the browser
client; views only parse, authorise and call the services."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from sqlalchemy import select

from projects.models import Project
from projects.services import approved_columns
from tests.projects.factories import (
    TODAY,
    World,
    approved,
    build_world,
    complete_draft,
    in_review,
    publish_agreement,
    ready_for_access,
    voted,
)
from tre.core.db import utcnow


@pytest.fixture
def w(sqlite_app: Any) -> World:
    return build_world(sqlite_app)


def login(client: Any, user: Any) -> Any:
    with client.session_transaction() as sess:
        sess["uid"] = user.id
        sess["epoch"] = user.session_epoch
        sess["seen"] = sess["signed_in"] = int(utcnow().timestamp())
    return client


def token(client: Any, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def post(client: Any, path: str, data: dict[str, Any], *, token_from: str) -> Any:
    return client.post(path, data={**data, "csrf_token": token(client, token_from)})


def test_menu_links_reach_projects_applications_and_datasets(w: World, client: Any) -> None:
    login(client, w.chair)

    assert client.get("/dac/").status_code == 200
    assert client.get("/catalogue/").status_code == 200
    home = client.get("/").get_data(as_text=True)
    assert 'href="/dac/"' in home and 'href="/catalogue/"' in home


def test_researcher_drafts_and_is_told_precisely_what_is_missing(w: World, client: Any) -> None:
    login(client, w.pi)

    created = post(client, "/projects/new", {"title": "Asthma in schools"}, token_from="/projects/new")
    project_id = created.headers["Location"].split("/")[2]
    refused = post(client, f"/projects/{project_id}/submit", {}, token_from=f"/projects/{project_id}")

    assert refused.status_code == 400
    body = refused.get_data(as_text=True)
    assert "There is a problem" in body and "Enter a lay summary" in body and "Choose at least one dataset" in body


def test_researcher_fills_the_wizard_and_submits(w: World, client: Any) -> None:
    p = w.svc.create_project(w.pi, "Asthma in schools")
    login(client, w.pi)
    edit = f"/projects/{p.id}/edit"

    post(
        client,
        edit,
        {
            "title": "Asthma in schools",
            "lay_summary": "L",
            "scientific_purpose": "S",
            "public_benefit": "B",
            "legal_basis": "6(1)(e)",
            "ethics_reference": "IRAS 9",
            "funder": "",
            "start_date": TODAY.isoformat(),
            "end_date": TODAY.replace(year=TODAY.year + 1).isoformat(),
        },
        token_from=edit,
    )
    post(
        client,
        f"/projects/{p.id}/datasets/{w.dataset_id}",
        {"columns": ["nhs_number", "diagnosis"], "justification": "link; outcome"},
        token_from=edit,
    )
    post(client, f"/projects/{p.id}/members", {"email": w.member.email}, token_from=edit)
    submitted = post(client, f"/projects/{p.id}/submit", {}, token_from=f"/projects/{p.id}")

    assert submitted.status_code == 302
    w.session.expire_all()
    assert w.session.get(Project, p.id).state == "submitted"


def test_date_in_the_wrong_format_is_explained(w: World, client: Any) -> None:
    p = w.svc.create_project(w.pi, "Dates")
    login(client, w.pi)

    response = post(
        client,
        f"/projects/{p.id}/edit",
        {"title": "Dates", "start_date": "31/12/2026"},
        token_from=f"/projects/{p.id}/edit",
    )

    assert response.status_code == 400 and "2026-04-30" in response.get_data(as_text=True)


def test_another_researcher_cannot_open_someone_elses_project(w: World, client: Any) -> None:
    p = complete_draft(w)
    login(client, w.outsider)

    assert client.get(f"/projects/{p.id}").status_code == 403
    assert client.get(f"/projects/{p.id}/edit").status_code == 403


def test_researcher_cannot_reach_committee_pages(w: World, client: Any) -> None:
    p = in_review(w)
    login(client, w.pi)

    assert client.get("/dac/").status_code == 403
    assert client.get(f"/dac/{p.id}").status_code == 403


def test_chair_assigns_reviewers_from_the_review_page(w: World, client: Any) -> None:
    p = complete_draft(w)
    w.svc.submit(w.pi, p.id)
    login(client, w.chair)

    response = post(client, f"/dac/{p.id}/assign", {"reviewers": [w.dana.id, w.drew.id]}, token_from=f"/dac/{p.id}")

    assert response.status_code == 302
    page = client.get(f"/dac/{p.id}").get_data(as_text=True)
    assert "Dana Dac" in page and "Drew Dac" in page


def test_conflicted_reviewer_sees_no_vote_form_and_no_votes(w: World, client: Any) -> None:
    p = in_review(w)
    w.svc.cast_vote(w.dana, p.id, "approve", "A private rationale 7731")
    login(client, w.drew)

    post(client, f"/dac/{p.id}/conflict", {"reason": "Former colleague"}, token_from=f"/dac/{p.id}")
    page = client.get(f"/dac/{p.id}").get_data(as_text=True)

    assert 'id="conflicted"' in page
    assert "Cast vote" not in page and "7731" not in page


def test_vote_without_rationale_shows_the_error_and_records_nothing(w: World, client: Any) -> None:
    p = in_review(w)
    login(client, w.dana)

    response = post(client, f"/dac/{p.id}/vote", {"choice": "approve", "rationale": ""}, token_from=f"/dac/{p.id}")

    assert response.status_code == 400 and "Give the reasons for your vote" in response.get_data(as_text=True)
    assert w.svc.votes_visible_to(w.chair, p) == []


def test_chair_approves_fewer_columns_on_the_decision_page(w: World, client: Any) -> None:
    p = voted(w)
    login(client, w.chair)

    response = post(
        client,
        f"/dac/{p.id}/decide",
        {
            "outcome": "approved",
            "columns-admissions": ["nhs_number", "diagnosis"],
            "conditions": "Round to 5",
            "public_comment": "",
        },
        token_from=f"/dac/{p.id}/decide",
    )

    assert response.status_code == 302
    assert approved_columns(w.session, p.id) == {"admissions": ["nhs_number", "diagnosis"]}


def test_applicant_sees_decision_and_conditions_but_not_votes(w: World, client: Any) -> None:
    p = approved(w)
    login(client, w.pi)

    page = client.get(f"/projects/{p.id}").get_data(as_text=True)

    assert "Committee decision: Approved" in page and "Round counts to 5." in page
    assert "Sound design, minimal columns." not in page  # a reviewer's rationale stays private


def test_member_signs_the_agreement_and_the_gate_opens_on_the_project_page(w: World, client: Any) -> None:
    p = approved(w)
    template = publish_agreement(w)
    w.svc.activate(w.pi, p.id)
    w.svc.record_training(w.admin, w.member.id, TODAY, TODAY.replace(year=TODAY.year + 1))
    login(client, w.member)
    assert 'id="gate-closed"' in client.get(f"/projects/{p.id}").get_data(as_text=True)

    response = post(
        client,
        f"/projects/{p.id}/agreement",
        {"content_hash": template.content_hash, "signed_name": w.member.display_name},
        token_from=f"/projects/{p.id}/agreement",
    )

    assert response.status_code == 302
    assert 'id="gate-open"' in client.get(f"/projects/{p.id}").get_data(as_text=True)


def test_administrator_records_training_and_publishes_a_new_agreement(w: World, client: Any) -> None:
    p = ready_for_access(w)
    login(client, w.admin)

    post(
        client,
        "/projects/admin/agreements",
        {"title": "DAA", "body": "Version two text"},
        token_from="/projects/admin/agreements",
    )
    recorded = post(
        client,
        "/projects/admin/training",
        {
            "user_id": w.outsider.id,
            "completed_on": TODAY.isoformat(),
            "expires_on": TODAY.replace(year=TODAY.year + 1).isoformat(),
        },
        token_from="/projects/admin/training",
    )

    assert recorded.status_code == 302
    assert w.svc.training_expiry(w.outsider.id) is not None
    from projects.gate import check_access

    assert check_access(w.session, w.member.id, p.id).reasons == ["agreement_not_signed"]


def test_post_without_csrf_token_is_refused(w: World, client: Any) -> None:
    login(client, w.pi)

    response = client.post("/projects/new", data={"title": "No token"})

    assert response.status_code == 400
    assert w.session.scalar(select(Project).where(Project.title == "No token")) is None


def test_custodian_registers_a_dataset_that_researchers_can_browse(w: World, client: Any) -> None:
    login(client, w.custodian)
    post(
        client,
        "/catalogue/new",
        {
            "name": "gp_events",
            "title": "GP events",
            "description": "Coded GP events",
            "source_kind": "parquet",
            "source_location": "/data/gp.parquet",
            "sensitivity": "high",
            "columns": "nhs_number | direct_identifier | NHS number\n"
            "event_date | quasi_identifier | Date\ncode | attribute | SNOMED",
        },
        token_from="/catalogue/new",
    )
    login(client, w.pi)

    listing = client.get("/catalogue/").get_data(as_text=True)
    ds_id = re.search(r'href="/catalogue/datasets/([0-9a-f]+)">GP events', listing).group(1)
    page = client.get(f"/catalogue/datasets/{ds_id}").get_data(as_text=True)

    assert "Quasi-identifier" in page and "event_date" in page and "/data/gp.parquet" not in page


def test_messages_page_shows_a_persons_own_notifications(w: World, client: Any) -> None:
    approved(w)
    login(client, w.pi)

    page = client.get("/projects/messages").get_data(as_text=True)

    assert "Decision on your application" in page


def test_messages_page_reads_the_columns_it_shows_and_renders_as_the_objects_did(w: World, client: Any) -> None:
    """Issue 26: a checker is sent a message per submission, so under load the page lists 200; it reads
    the three columns it shows, and renders exactly what the former read of whole objects did."""
    from flask import render_template
    from sqlalchemy import event

    from tre.core.notifications import OutboxMessage, notify

    approved(w)
    session = w.app.extensions["tre.platform"].db.session
    for n in range(3):
        notify(session, recipient_id=w.pi.id, recipient_email="pi@example.org", subject=f"Notice {n} <b>",
               body=f"Line one\nline & two {n}", topic="test")
    session.commit()
    login(client, w.pi)
    loaded: list[Any] = []

    def on_load(target: Any, _context: Any) -> None:
        loaded.append(target)

    event.listen(OutboxMessage, "load", on_load)
    try:
        page = client.get("/projects/messages")
    finally:
        event.remove(OutboxMessage, "load", on_load)

    assert page.status_code == 200 and loaded == []
    with w.app.test_request_context("/projects/messages"):
        from flask import g

        g.user = w.pi
        former = session.scalars(
            select(OutboxMessage).where(OutboxMessage.recipient_id == w.pi.id)
            .order_by(OutboxMessage.created_at.desc()).limit(200)
        ).all()
        expected = render_template("projects/messages.html", title="My messages", messages=former)
    body = page.get_data(as_text=True)
    assert body.count("nhsuk-card__heading") == len(former) >= 4
    main = re.compile(r"<h1>My messages</h1>.*?</main>", re.S)
    assert main.search(body).group(0) == main.search(expected).group(0)


def test_chair_suspends_from_the_project_page_and_access_stops(w: World, client: Any) -> None:
    from projects.gate import check_access

    p = ready_for_access(w)
    login(client, w.chair)

    response = post(client, f"/dac/{p.id}/suspend", {"reason": "Possible breach"}, token_from=f"/projects/{p.id}")

    assert response.status_code == 302
    w.session.expire_all()
    assert check_access(w.session, w.pi.id, p.id).reasons == ["project_suspended"]


def test_extension_is_requested_by_the_pi_and_granted_from_the_queue(w: World, client: Any) -> None:
    p = ready_for_access(w)
    new_end = p.end_date.replace(year=p.end_date.year + 1)
    login(client, w.pi)
    post(
        client,
        f"/projects/{p.id}/extension",
        {"end_date": new_end.isoformat(), "reason": "Slow recruitment"},
        token_from=f"/projects/{p.id}",
    )
    ext = w.svc.pending_extension(p)
    login(client, w.chair)

    post(client, f"/dac/extensions/{ext.id}", {"grant": "1"}, token_from="/dac/")

    w.session.expire_all()
    assert w.session.get(Project, p.id).end_date == new_end


def test_chair_closes_a_project_from_its_page(w: World, client: Any) -> None:
    from tre.core import jobs

    jobs.set_dispatcher(None)  # the destruction job is the worker's; see tests/projects/test_closure.py
    p = ready_for_access(w)
    login(client, w.chair)

    response = post(
        client,
        f"/dac/{p.id}/close",
        {"reason": "Study ended early", "step": "confirm", "confirm": "yes"},
        token_from=f"/projects/{p.id}",
    )

    assert response.status_code == 302
    w.session.expire_all()
    assert w.session.get(Project, p.id).state == "closed"


def test_decide_page_offers_no_decision_before_the_quorum_has_voted(w: World, client: Any) -> None:
    p = in_review(w)
    w.svc.cast_vote(w.dana, p.id, "approve", "Sound design.")  # one of the two votes the quorum needs
    login(client, w.chair)

    before = client.get(f"/dac/{p.id}/decide").get_data(as_text=True)
    w.svc.cast_vote(w.drew, p.id, "approve", "Fine.")
    after = client.get(f"/dac/{p.id}/decide").get_data(as_text=True)

    assert 'id="quorum-not-reached"' in before and "1 of 2 votes" in before
    assert "Record decision" not in before and 'name="outcome"' not in before
    assert 'id="quorum-reached"' in after and "Record decision" in after


def test_decide_page_does_not_count_the_deciding_chairs_own_vote_towards_the_quorum(w: World, client: Any) -> None:
    p = complete_draft(w)
    w.svc.submit(w.pi, p.id)
    w.svc.assign_reviewers(w.chair, p.id, [w.chair.id, w.dana.id])
    w.svc.cast_vote(w.chair, p.id, "approve", "Mine.")
    w.svc.cast_vote(w.dana, p.id, "approve", "Hers.")
    login(client, w.chair)

    page = client.get(f"/dac/{p.id}/decide").get_data(as_text=True)

    assert "1 of 2 votes" in page and "Record decision" not in page


def _confirm_schema(w: World) -> None:
    from projects.models import Dataset

    ds = w.session.get(Dataset, w.dataset_id)
    ds.schema_spec = {
        "name": "admissions",
        "nhs_number_column": "nhs_number",
        "columns": [
            {"name": "nhs_number", "role": "direct_identifier", "transform": {"kind": "nhs_token", "params": {}}},
            {
                "name": "date_of_birth",
                "role": "quasi_identifier",
                "transform": {"kind": "dob_age_band", "params": {"reference_date": "2026-01-01"}},
            },
            {"name": "postcode", "role": "quasi_identifier", "transform": {"kind": "postcode_district", "params": {}}},
            {"name": "diagnosis", "role": "attribute", "transform": {"kind": "keep", "params": {}}},
        ],
    }
    w.session.commit()


def test_column_picker_says_what_each_column_becomes_in_the_extract(w: World, client: Any) -> None:
    p = complete_draft(w)
    _confirm_schema(w)
    login(client, w.pi)

    page = client.get(f"/projects/{p.id}/edit").get_data(as_text=True)

    assert re.search(r'id="col-admissions-nhs_number-becomes">In your extract: token \(per project\)<', page)
    assert re.search(r'id="col-admissions-date_of_birth-becomes">In your extract: age band<', page)
    assert 'aria-describedby="col-admissions-postcode-becomes"' in page


def test_check_your_answers_lists_each_column_asked_for_and_what_it_becomes(w: World, client: Any) -> None:
    p = complete_draft(w)
    _confirm_schema(w)
    login(client, w.pi)

    page = client.get(f"/projects/{p.id}").get_data(as_text=True)

    answers = re.findall(r'<li class="answer-column">(\w+) .*?: becomes ([^<]+)</li>', page)
    assert answers == [("nhs_number", "token (per project)"), ("date_of_birth", "age band"), ("diagnosis", "kept")]


def test_column_picker_says_when_the_custodian_has_not_confirmed_the_schema(w: World, client: Any) -> None:
    p = complete_draft(w)
    login(client, w.pi)

    page = client.get(f"/projects/{p.id}/edit").get_data(as_text=True)

    assert "In your extract: not known yet: the custodian has not confirmed the extract schema" in page


def test_column_picker_says_when_the_stored_schema_must_be_corrected(w: World, client: Any) -> None:
    # A schema confirmed before ADR 0068 keeping the NHS number raw: the page loads and says so.
    p = complete_draft(w)
    _confirm_schema(w)
    from projects.models import Dataset

    ds = w.session.get(Dataset, w.dataset_id)
    ds.schema_spec = ds.schema_spec | {"columns": [
        {"name": "nhs_number", "role": "attribute", "transform": {"kind": "keep", "params": {}}},
        *ds.schema_spec["columns"][1:]]}
    w.session.commit()
    login(client, w.pi)

    page = client.get(f"/projects/{p.id}/edit")

    assert page.status_code == 200
    assert re.search(r'id="col-admissions-nhs_number-becomes">In your extract: not known: the custodian must correct '
                     r"the extract schema \(extracts are refused until then\)<", page.get_data(as_text=True))


def test_member_asked_to_sign_a_new_version_sees_what_changed_since_they_signed(w: World, client: Any) -> None:
    p = approved(w)
    first = publish_agreement(w)
    w.svc.activate(w.pi, p.id)
    w.svc.sign_agreement(w.member, p.id, first.content_hash, w.member.display_name)
    publish_agreement(w, "I will use the data only for the approved purpose, inside the secure environment.")
    login(client, w.member)

    page = client.get(f"/projects/{p.id}/agreement").get_data(as_text=True)

    assert "What changed since version 1, which you signed" in page
    changes = page[page.index('id="agreement-changes"') :]
    assert re.search(r"<ins [^>]*><span class=\"nhsuk-u-visually-hidden\">\[added: </span>secure ", changes)
    assert "<del" not in changes.split("</div>")[0]  # nothing was removed


def test_agreements_page_shows_the_changes_from_the_previous_version(w: World, client: Any) -> None:
    publish_agreement(w, "Keep outputs small.")
    publish_agreement(w, "Keep outputs checked.")
    login(client, w.admin)

    page = client.get("/projects/admin/agreements").get_data(as_text=True)

    assert "Changes from version 1" in page
    assert "[removed: </span>small.<" in page and "[added: </span>checked.<" in page


def test_project_page_counts_the_submitted_versions_and_shows_the_waiting_extension(w: World, client: Any) -> None:
    project = approved(w)
    login(client, w.pi)
    before = client.get(f"/projects/{project.id}").get_data(as_text=True)
    asked_until = project.end_date + dt.timedelta(days=90)
    w.svc.request_extension(w.pi, project.id, asked_until, "Recruitment ran late")

    page = client.get(f"/projects/{project.id}").get_data(as_text=True)

    versions = re.compile(r"Versions submitted\s*</dt>\s*<dd[^>]*>\s*(\d+)")
    assert versions.search(before) and versions.search(before).group(1) == "1"
    assert "is waiting for the committee chair" not in before and 'name="end_date"' in before
    assert f"An extension to {asked_until.strftime('%d %B %Y')} is waiting for the committee chair." in page
    assert 'name="end_date"' not in page
