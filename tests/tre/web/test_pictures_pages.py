"""The pictures on the service's pages: application turnaround for the committee, output turnaround for
checkers, extract progress for custodians; each with its numbers as a table, and only for its audience."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from pseudonymisation.models import Extract
from pseudonymisation.pipeline import Progress
from pseudonymisation.services import _reporter
from tests.projects.factories import World, approved, build_world, ready_for_access
from tests.tre.web.test_projects_pages import login
from tre.core.db import utcnow
from tre.core.jobs import Job


@pytest.fixture
def w(sqlite_app: Any) -> World:
    return build_world(sqlite_app)


def test_committee_sees_application_turnaround_as_pictures_with_tables(w: World, client: Any) -> None:
    approved(w)
    login(client, w.dana)

    body = client.get("/dac/turnaround").get_data(as_text=True)

    assert 'id="applications-median"' in body and 'id="applications-recent"' in body
    assert body.count('role="img"') == 2 and 'id="applications-median-table"' in body
    assert "Chair&#39;s decision (1 done)" in body  # the table names each stage and how many finished it
    assert 'href="/dac/turnaround"' in client.get("/dac/").get_data(as_text=True)


def test_application_turnaround_is_refused_to_researchers(w: World, client: Any) -> None:
    approved(w)
    login(client, w.pi)

    assert client.get("/dac/turnaround").status_code == 403


def test_custodian_sees_a_building_extract_with_rate_and_time_left(w: World, client: Any) -> None:
    project = ready_for_access(w)
    s = w.session
    reported: list[tuple[float, str]] = []
    _reporter(lambda f, m: reported.append((f, m)))(Progress("admissions", 2, 50_000, 200_000, 0))
    job = Job(
        kind="extracts.build",
        idempotency_key="picture-test",
        state="running",
        progress=reported[0][0],
        progress_message=reported[0][1],
        started_at=utcnow() - dt.timedelta(seconds=100),
        lease_owner="worker-1",
        lease_expires_at=utcnow() + dt.timedelta(minutes=5),
    )
    s.add(job)
    s.flush()
    s.add(Extract(project_id=project.id, plan_hash="0" * 64, job_id=job.id, state="running"))
    s.commit()
    login(client, w.custodian)

    body = client.get("/extracts/").get_data(as_text=True)

    assert f'id="progress-{project.id}"' in body and "25%" in body
    assert "Rows per second" in body and "50,000" in body and "Time left" in body


def test_manifest_page_shows_the_k_anonymity_warning_and_plain_fingerprints(w: World, client: Any) -> None:
    project = ready_for_access(w)
    report = {
        "k": 5,
        "rows": 40_000,
        "groups": 27_059,
        "smallest_group": 1,
        "groups_below_k": 19_854,
        "rows_in_groups_below_k": 24_310,
    }
    manifest = {
        "manifests": {
            "patients": {
                "rows": {"in": 40_000, "opted_out": 0, "rejected": 0, "suppressed_for_k": 0, "out": 40_000},
                "k_anonymity": {"quasi_identifiers": ["age_band", "postcode_district"], "before": report},
            }
        },
        "optouts": {
            "patients": [
                {"name": "national", "version": 1, "fingerprint": "ab" * 32, "status": "applied", "rows_removed": 12}
            ]
        },
    }
    w.session.add(
        Extract(project_id=project.id, plan_hash="0" * 64, state="succeeded", manifest=manifest, finished_at=utcnow())
    )
    w.session.commit()
    login(client, w.custodian)

    body = client.get(f"/extracts/{project.id}/manifest").get_data(as_text=True)

    warning = body[body.index('id="k-anonymity-warning"') : body.index('id="manifest-rows"')]
    assert "19,854 of 27,059 groups are below k = 5" in warning and "were not suppressed" in warning
    assert "<code>" not in body and f'<span class="tre-mono">{"ab" * 8}</span>' in body
