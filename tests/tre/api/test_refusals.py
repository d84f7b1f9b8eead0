"""The API passes the service's own refusal through (tre.api.refuse): the client reads the reason
the service gave, not a generic "A conflict happened..." text (issue 18)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.projects.factories import World, build_world, ready_for_access
from tests.tre.api.test_projects_api import Caller


@pytest.fixture
def w(sqlite_app: Any) -> World:
    return build_world(sqlite_app)


def test_extract_of_a_dataset_without_schema_answers_the_services_reason(w: World) -> None:
    p = ready_for_access(w)  # the factory's dataset has no extract schema

    answer = Caller(w.app, w.custodian).post(f"/projects/{p.id}/extracts")

    assert answer.status_code == 409
    assert answer.mimetype == "application/problem+json"
    assert "has no extract schema" in answer.get_json()["detail"]


def test_reidentification_refusal_answers_the_services_reason(w: World) -> None:
    p = ready_for_access(w)
    w.svc.close(w.chair, p.id, "Study finished")

    answer = Caller(w.app, w.custodian).post(
        "/reidentifications",
        {"project_id": p.id, "tokens": ["T1"], "purpose": "Recall a patient for urgent clinical care."},
    )

    assert answer.status_code == 422
    assert answer.get_json()["detail"] == "Re-identification is possible only while the project is active"


def test_unknown_project_answers_404_with_the_services_words(w: World) -> None:
    answer = Caller(w.app, w.pi).get("/projects/no-such-project")

    assert answer.status_code == 404 and answer.get_json()["detail"] == "No such project"
