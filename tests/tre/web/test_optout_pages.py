"""Opt-out lists through the pages and the API: custodians load and see versions (never numbers),
others are refused, a bad upload is refused whole, the chair records an exemption on the project
page, and the extract manifest page shows what each list did."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import pytest
from sqlalchemy import select

from pseudonymisation.models import OptOutListVersion
from tests.projects.factories import World, approved, build_world
from tests.tre.web.test_projects_pages import login, post, token
from tre.authn import API_AUDIENCE

NUMBERS = ["9434765919", "9434765870"]


@pytest.fixture
def w(sqlite_app: Any) -> World:
    return build_world(sqlite_app)


def _versions(w: World) -> list[OptOutListVersion]:
    return list(w.session.scalars(select(OptOutListVersion)))


def test_a_custodian_uploads_a_list_file_and_sees_its_version_and_count_but_no_number(w: World, client: Any) -> None:
    login(client, w.custodian)

    page = client.post(
        "/extracts/optouts",
        data={"name": "national", "dataset": "", "description": "NDOP extract, November",
              "file": (io.BytesIO(("nhs_number\n" + "\n".join(NUMBERS) + "\n").encode()), "ndop.csv"),
              "csrf_token": token(client, "/extracts/optouts")},
        content_type="multipart/form-data", follow_redirects=True,
    )

    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Loaded national version 1: 2 NHS numbers" in text
    listing = client.get("/extracts/optouts").get_data(as_text=True)
    assert "national" in listing and "Every source" in listing
    for n in NUMBERS:
        assert n not in text and n not in listing


def test_a_pasted_list_with_a_bad_line_is_refused_with_its_line_number_and_nothing_is_kept(
    w: World, client: Any
) -> None:
    login(client, w.custodian)

    page = post(client, "/extracts/optouts", {"name": "national", "numbers": "9434765919\n1234567890\n"},
                token_from="/extracts/optouts")

    text = page.get_data(as_text=True)
    assert page.status_code == 400
    assert "line 2: the check digit is wrong" in text
    assert "1234567890" not in text and "9434765919" not in text  # the form does not echo the numbers
    assert _versions(w) == []


def test_a_per_source_restriction_is_loaded_for_one_dataset(w: World, client: Any) -> None:
    login(client, w.custodian)

    post(client, "/extracts/optouts", {"name": "trust-objections", "dataset": w.dataset_id, "numbers": NUMBERS[0]},
         token_from="/extracts/optouts")

    (version,) = _versions(w)
    assert version.dataset_id == w.dataset_id
    history = client.get("/extracts/optouts/trust-objections").get_data(as_text=True)
    assert "Hospital admissions only" in client.get("/extracts/optouts").get_data(as_text=True)
    assert "the dataset Hospital admissions only" in history and "(in force)" in history


def test_people_without_the_custodian_role_are_refused_the_opt_out_pages(w: World, client: Any) -> None:
    for person in (w.pi, w.chair, w.admin):
        login(client, person)
        assert client.get("/extracts/optouts").status_code == 403
        # The CSRF check or the route's declaration refuses the post; either way nothing is loaded.
        assert client.post("/extracts/optouts", data={"name": "national", "numbers": NUMBERS[0]}).status_code in (
            400, 403)
    assert _versions(w) == []


def test_the_chair_records_an_exemption_on_the_project_page_and_the_project_shows_it(
    w: World, client: Any
) -> None:
    project = approved(w)
    login(client, w.chair)
    path = f"/projects/{project.id}"
    assert 'id="exempt-optout"' in client.get(path).get_data(as_text=True)

    post(client, f"/dac/{project.id}/optout-exemptions",
         {"list_name": "national", "basis": "Section 251 support, CAG 21/CAG/0001"}, token_from=path)

    login(client, w.pi)
    page = client.get(path).get_data(as_text=True)
    assert 'id="optout-exemptions"' in page and "Section 251 support, CAG 21/CAG/0001" in page
    assert 'id="exempt-optout"' not in page  # the form is the chair's


def test_a_committee_member_cannot_record_an_exemption(w: World, client: Any) -> None:
    project = approved(w)
    login(client, w.dana)

    response = client.post(f"/dac/{project.id}/optout-exemptions",
                           data={"list_name": "national", "basis": "Section 251 support, CAG 21/CAG/0001",
                                 "csrf_token": token(client, f"/projects/{project.id}")})

    assert response.status_code == 403
    assert w.svc.optout_exemptions(project) == []


# --- the API ------------------------------------------------------------------------------------


def _api(app: Any, user: Any) -> tuple[Any, dict[str, str]]:
    bearer = app.extensions["tre.platform"].tokens.issue(user.id, API_AUDIENCE, "api", dt.timedelta(minutes=10))
    return app.test_client(), {"Authorization": f"Bearer {bearer}"}


def test_the_api_loads_a_list_refuses_a_bad_one_by_line_and_lists_versions(w: World) -> None:
    client, headers = _api(w.app, w.custodian)

    bad = client.post("/api/v1/optout-lists", json={"name": "national", "numbers": "9434765919\nabc\n"},
                      headers=headers)
    good = client.post("/api/v1/optout-lists", json={"name": "national", "numbers": "\n".join(NUMBERS)},
                       headers=headers)

    assert bad.status_code == 422
    assert bad.get_json()["errors"]["lines"] == [{"line": 2, "reason": "not ten digits"}]
    assert good.status_code == 201 and good.get_json()["version"] == 1 and good.get_json()["number_count"] == 2
    listed = client.get("/api/v1/optout-lists", headers=headers).get_json()
    assert [(v["name"], v["version"]) for v in listed] == [("national", 1)]
    assert not any(n in client.get("/api/v1/optout-lists/national", headers=headers).get_data(as_text=True)
                   for n in NUMBERS)


def test_the_api_refuses_a_researcher_loading_a_list_and_lets_only_the_chair_exempt(w: World) -> None:
    project = approved(w)
    client, researcher = _api(w.app, w.pi)
    _, chair = _api(w.app, w.chair)

    assert client.post("/api/v1/optout-lists", json={"name": "national", "numbers": NUMBERS[0]},
                       headers=researcher).status_code == 403
    body = {"list_name": "national", "basis": "Section 251 support, CAG 21/CAG/0001"}
    assert client.post(f"/api/v1/projects/{project.id}/optout-exemptions", json=body,
                       headers=researcher).status_code == 403
    assert client.post(f"/api/v1/projects/{project.id}/optout-exemptions", json=body, headers=chair).status_code == 201

    shown = client.get(f"/api/v1/projects/{project.id}/optout-exemptions", headers=researcher).get_json()
    assert [(e["list_name"], e["basis"]) for e in shown] == [("national", body["basis"])]
    assert client.delete(f"/api/v1/projects/{project.id}/optout-exemptions/national",
                         headers=chair).status_code == 204
