"""The projects API walks the same journey as the pages, with bearer tokens, and is documented."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.projects.factories import TODAY, World, build_world, complete_draft, make_user, publish_agreement
from tre.authn import API_AUDIENCE


@pytest.fixture
def w(sqlite_app: Any) -> World:
    return build_world(sqlite_app)


class Caller:
    def __init__(self, app: Any, user: Any) -> None:
        token = app.extensions["tre.platform"].tokens.issue(
            user.id, API_AUDIENCE, "api", dt.timedelta(minutes=10)
        )
        self.client = app.test_client()
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> Any:
        return self.client.get(f"/api/v1{path}", headers=self.headers)

    def post(self, path: str, body: Any = None) -> Any:
        return self.client.post(f"/api/v1{path}", json=body or {}, headers=self.headers)

    def patch(self, path: str, body: Any) -> Any:
        return self.client.patch(f"/api/v1{path}", json=body, headers=self.headers)

    def put(self, path: str, body: Any) -> Any:
        return self.client.put(f"/api/v1{path}", json=body, headers=self.headers)


def test_whole_journey_over_the_api_opens_the_gate(w: World) -> None:
    app = w.app
    pi, member, chair = Caller(app, w.pi), Caller(app, w.member), Caller(app, w.chair)
    dana, drew, admin = Caller(app, w.dana), Caller(app, w.drew), Caller(app, w.admin)

    project = pi.post("/projects", {"title": "Sepsis outcomes"}).get_json()
    pid = project["id"]
    assert (
        pi.patch(
            f"/projects/{pid}",
            {
                "lay_summary": "L",
                "scientific_purpose": "S",
                "public_benefit": "B",
                "legal_basis": "6(1)(e)",
                "ethics_reference": "IRAS 2",
                "start_date": TODAY.isoformat(),
                "end_date": (TODAY + dt.timedelta(days=200)).isoformat(),
            },
        ).status_code
        == 200
    )
    assert (
        pi.put(
            f"/projects/{pid}/datasets/{w.dataset_id}",
            {"columns": ["nhs_number", "postcode", "diagnosis"], "justification": "why"},
        ).status_code
        == 200
    )
    assert pi.post(f"/projects/{pid}/members", {"email": w.member.email}).status_code == 200
    assert pi.post(f"/projects/{pid}/submit").get_json()["number"] == 1
    assert (
        chair.post(
            f"/projects/{pid}/reviewers", {"reviewer_ids": [w.dana.id, w.drew.id, w.chair.id]}
        ).status_code
        == 200
    )
    assert drew.post(f"/projects/{pid}/conflict", {"reason": "Colleague"}).status_code == 204
    assert dana.post(f"/projects/{pid}/votes", {"choice": "approve", "rationale": "Good"}).status_code == 201
    assert (
        chair.post(f"/projects/{pid}/votes", {"choice": "approve", "rationale": "Agreed"}).status_code == 201
    )
    assert drew.get(f"/projects/{pid}/votes").status_code == 403
    # The chair's own vote does not count towards the quorum of the chair's decision; the
    # service's own refusal reaches the client.
    refused = chair.post(f"/projects/{pid}/decision", {"outcome": "approved", "conditions": "Round"})
    assert refused.status_code == 422 and "quorum: 1 of 2" in refused.get_json()["detail"]
    erin = make_user(w.app, "erin.dac", ["dac_member"])
    w.svc.assign_reviewers(w.chair, pid, [erin.id])
    w.svc.cast_vote(erin, pid, "approve", "Sound")
    decided = chair.post(
        f"/projects/{pid}/decision",
        {
            "outcome": "approved",
            "conditions": "Round",
            "approved_columns": {"admissions": ["nhs_number", "diagnosis"]},
        },
    )
    assert decided.status_code == 201
    template = publish_agreement(w)
    assert pi.post(f"/projects/{pid}/activate").get_json()["state"] == "active"
    for caller, person in ((pi, w.pi), (member, w.member)):
        signed = caller.post(
            f"/projects/{pid}/signatures",
            {"content_hash": template.content_hash, "signed_name": person.display_name},
        )
        assert signed.status_code == 201
        assert (
            admin.post(
                "/training",
                {
                    "user_id": person.id,
                    "completed_on": TODAY.isoformat(),
                    "expires_on": (TODAY + dt.timedelta(days=365)).isoformat(),
                },
            ).status_code
            == 201
        )

    access = member.get(f"/projects/{pid}/access").get_json()

    assert access == {"allowed": True, "reasons": [], "messages": []}
    assert member.get(f"/projects/{pid}/approved-columns").get_json()["datasets"] == {
        "admissions": ["nhs_number", "diagnosis"]
    }


def test_incomplete_submission_over_the_api_lists_what_is_missing(w: World) -> None:
    pi = Caller(w.app, w.pi)
    pid = pi.post("/projects", {"title": "Thin"}).get_json()["id"]

    response = pi.post(f"/projects/{pid}/submit")

    assert response.status_code == 422
    assert "Enter a lay summary" in response.get_json()["errors"]["missing"]


def test_api_refuses_a_researcher_deciding(w: World) -> None:
    response = Caller(w.app, w.pi).post("/projects/x/decision", {"outcome": "approved"})

    assert response.status_code == 403


def test_api_answers_404_for_an_unknown_project(w: World) -> None:
    assert Caller(w.app, w.chair).get("/projects/nope").status_code == 404


def test_access_answer_names_the_reasons_for_refusal(w: World) -> None:
    pi = Caller(w.app, w.pi)
    pid = pi.post("/projects", {"title": "Draft only"}).get_json()["id"]

    answer = pi.get(f"/projects/{pid}/access").get_json()

    assert answer["allowed"] is False and "project_not_active" in answer["reasons"]


def test_a_member_withdraws_their_own_declaration_over_the_api_and_nobody_elses(w: World) -> None:
    p = complete_draft(w)
    w.svc.submit(w.pi, p.id)
    w.svc.declare_conflict(w.drew, p.id, "Colleague")
    dana, drew, admin = Caller(w.app, w.dana), Caller(w.app, w.drew), Caller(w.app, w.admin)

    naming = dana.post(f"/projects/{p.id}/conflict/withdraw", {"reason": "Need Drew", "reviewer_id": w.drew.id})
    own_none = dana.post(f"/projects/{p.id}/conflict/withdraw", {"reason": "Need Drew"})
    not_committee = admin.post(f"/projects/{p.id}/conflict/withdraw", {"reason": "Need Drew"})
    assert naming.status_code == 422  # the body names nobody: an unknown field is refused
    assert own_none.status_code == 422 and "You have not declared" in own_none.get_json()["detail"]
    assert not_committee.status_code == 403
    assert w.svc.assignments(w.svc.current_version(p))[0].conflicted

    assert drew.post(f"/projects/{p.id}/conflict/withdraw", {"reason": "Wrong application"}).status_code == 204
    again = drew.post(f"/projects/{p.id}/conflict/withdraw", {"reason": "Wrong application"})
    assert again.status_code == 422 and "already withdrawn" in again.get_json()["detail"]
    w.session.expire_all()
    assert w.svc.assignments(w.svc.current_version(p)) == []


def test_openapi_document_describes_the_projects_api(client: Any) -> None:
    paths = client.get("/api/openapi.json").get_json()["paths"]

    for path in (
        "/api/v1/projects",
        "/api/v1/projects/{project_id}/decision",
        "/api/v1/projects/{project_id}/conflict/withdraw",
        "/api/v1/projects/{project_id}/access",
        "/api/v1/datasets",
        "/api/v1/training",
        "/api/v1/agreement",
    ):
        assert path in paths, path
