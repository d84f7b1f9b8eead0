"""The application's form patterns: an incomplete submission's error summary on the form with each item
linked to its field, "check your answers" showing every dataset and column asked for, and a
confirmation step before a project is closed and its data destroyed."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import func, select

from projects.models import Project
from tests.projects.factories import World, build_world, complete_draft, ready_for_access
from tests.tre.web.test_projects_pages import login, post
from tre.core.audit import AuditEvent


@pytest.fixture
def w(sqlite_app: Any) -> World:
    return build_world(sqlite_app)


def summary_links(page: str) -> list[str]:
    match = re.search(r'class="nhsuk-error-summary".*?</div>\s*</div>', page, re.S)
    assert match, "no error summary"
    return re.findall(r'<a href="#([^"]+)"', match.group(0))


def test_incomplete_submission_shows_the_summary_on_the_form_linked_to_fields(w: World, client: Any) -> None:
    p = w.svc.create_project(w.pi, "Asthma in schools")
    login(client, w.pi)

    refused = post(client, f"/projects/{p.id}/submit", {}, token_from=f"/projects/{p.id}")

    assert refused.status_code == 400
    page = refused.get_data(as_text=True)
    assert f'action="/projects/{p.id}/edit"' in page and "Save draft" in page  # the form, not the project page
    links = summary_links(page)
    assert {"lay_summary", "scientific_purpose", "start_date", "end_date", "datasets"} <= set(links)
    for anchor in links:
        assert f'id="{anchor}"' in page, f"the summary links to #{anchor}, which is not on the page"
    assert 'id="lay_summary-error"' in page and "nhsuk-form-group--error" in page


def test_a_datasets_missing_justification_links_to_its_own_box(w: World, client: Any) -> None:
    p = complete_draft(w)
    w.svc.set_dataset_request(w.pi, p.id, w.dataset_id, ["diagnosis"], " ")
    login(client, w.pi)

    page = post(client, f"/projects/{p.id}/submit", {}, token_from=f"/projects/{p.id}").get_data(as_text=True)

    assert summary_links(page) == ["justification-admissions"]
    assert 'id="justification-admissions"' in page and page.count('id="justification"') == 0


def test_check_your_answers_shows_the_datasets_and_columns_asked_for(w: World, client: Any) -> None:
    p = complete_draft(w)
    login(client, w.pi)

    page = client.get(f"/projects/{p.id}").get_data(as_text=True)

    section = page[page.index('id="check-answers"') : page.index('action="/projects/' + p.id + '/submit"')]
    assert "Hospital admissions" in section
    for column, role in [
        ("nhs_number", "Direct identifier"),
        ("date_of_birth", "Quasi-identifier"),
        ("diagnosis", "Attribute"),
    ]:
        assert f"{column} <span" in section and f"({role})" in section
    assert "postcode" not in section  # not asked for
    assert "Link admissions; age; outcome" in section and "IRAS 123456" in section
    assert f'href="/projects/{p.id}/edit#justification-admissions"' in section


def test_project_page_lists_what_is_missing_with_links_to_the_form(w: World, client: Any) -> None:
    p = w.svc.create_project(w.pi, "Asthma in schools")
    login(client, w.pi)

    page = client.get(f"/projects/{p.id}").get_data(as_text=True)

    assert f'href="/projects/{p.id}/edit#lay_summary">Enter a lay summary' in page


def _closes(w: World) -> int:
    return int(
        w.session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "project.close"))
    )


def test_close_without_confirmation_shows_what_is_destroyed_and_changes_nothing(w: World, client: Any) -> None:
    p = ready_for_access(w)
    login(client, w.chair)

    first = post(client, f"/dac/{p.id}/close", {"reason": "Study ended"}, token_from=f"/projects/{p.id}")

    assert first.status_code == 200
    page = first.get_data(as_text=True)
    assert "Are you sure you want to close" in page and "This cannot be undone" in page
    assert "nhs_number" in page and "Study ended" in page  # the approved data, the reason carried over
    assert 'name="confirm"' in page
    w.session.expire_all()
    assert w.session.get(Project, p.id).state == "active" and _closes(w) == 0


def test_close_confirmation_sent_without_the_tick_is_refused(w: World, client: Any) -> None:
    p = ready_for_access(w)
    login(client, w.chair)

    refused = post(
        client, f"/dac/{p.id}/close", {"reason": "Study ended", "step": "confirm"}, token_from=f"/projects/{p.id}"
    )

    assert refused.status_code == 400
    assert summary_links(refused.get_data(as_text=True)) == ["confirm"]
    w.session.expire_all()
    assert w.session.get(Project, p.id).state == "active" and _closes(w) == 0


def test_close_without_a_reason_is_sent_back_before_the_confirmation(w: World, client: Any) -> None:
    p = ready_for_access(w)
    login(client, w.chair)

    refused = post(client, f"/dac/{p.id}/close", {"reason": " "}, token_from=f"/projects/{p.id}")

    assert refused.status_code == 302 and refused.headers["Location"].endswith(f"/projects/{p.id}")
    assert "Give the reason for closing the project" in client.get(f"/projects/{p.id}").get_data(as_text=True)
    w.session.expire_all()
    assert w.session.get(Project, p.id).state == "active" and _closes(w) == 0


def test_close_confirmed_closes(w: World, client: Any) -> None:
    from tre.core import jobs

    jobs.set_dispatcher(None)  # the destruction job is the worker's; see tests/projects/test_closure.py
    p = ready_for_access(w)
    login(client, w.chair)

    done = post(
        client,
        f"/dac/{p.id}/close",
        {"reason": "Study ended", "step": "confirm", "confirm": "yes"},
        token_from=f"/projects/{p.id}",
    )

    assert done.status_code == 302
    w.session.expire_all()
    assert w.session.get(Project, p.id).state == "closed" and _closes(w) == 1


def test_researcher_cannot_reach_the_close_confirmation(w: World, client: Any) -> None:
    p = ready_for_access(w)
    login(client, w.pi)

    response = post(client, f"/dac/{p.id}/close", {"reason": "x"}, token_from=f"/projects/{p.id}")

    assert response.status_code == 403
    w.session.expire_all()
    assert w.session.get(Project, p.id).state == "active"
