"""The pictures on the service's pages: application turnaround for the committee, output turnaround for
checkers, extract progress for custodians; each with its numbers as a table, and only for its audience."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import update

from disclosure.models import OutputRequest
from projects.models import Decision
from pseudonymisation.models import Extract
from pseudonymisation.pipeline import Progress
from pseudonymisation.services import _reporter
from tests.projects.factories import World, approved, build_world, in_review, make_user, ready_for_access
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


# --- the turnaround pages' window (ADR 0067) ----------------------------------------------------------


def _decided_long_ago(w: World) -> None:
    """Move every decision so far to 400 days ago: before even the last year."""
    w.session.execute(update(Decision).values(decided_at=utcnow() - dt.timedelta(days=400)))
    w.session.commit()


def test_application_turnaround_shows_the_last_90_days_by_default_and_offers_the_other_windows(
    w: World, client: Any
) -> None:
    approved(w)
    _decided_long_ago(w)
    approved(w)  # decided today
    in_review(w)  # open: always shown
    login(client, w.dana)

    body = client.get("/dac/turnaround").get_data(as_text=True)

    since = (utcnow() - dt.timedelta(days=90)).strftime("%-d %B %Y")
    assert f"decided in <strong>the last 90 days</strong> (since {since}), and every one still open" in body
    assert "Chair&#39;s decision (1 done)" in body and "Waiting for reviewers (2 done)" in body
    for key in ("30", "365", "all"):
        assert f'href="/dac/turnaround?window={key}#turnaround-window"' in body
    assert '<strong aria-current="page">The last 90 days</strong>' in body


def test_application_turnaround_over_all_time_counts_the_old_decisions_too(w: World, client: Any) -> None:
    approved(w)
    _decided_long_ago(w)
    approved(w)
    login(client, w.dana)

    last_year = client.get("/dac/turnaround?window=365").get_data(as_text=True)
    every = client.get("/dac/turnaround?window=all").get_data(as_text=True)

    assert "Chair&#39;s decision (1 done)" in last_year and "<strong>the last year</strong>" in last_year
    assert "Chair&#39;s decision (2 done)" in every and "<strong>all time</strong>" in every
    assert "(since" not in every


@pytest.mark.parametrize("path", ["/dac/turnaround", "/outputs/metrics"])
def test_turnaround_window_not_offered_is_refused_with_400_over_the_default_window(
    w: World, client: Any, path: str
) -> None:
    chair_and_checker = make_user(client.application, "casey.both", ["dac_chair", "output_checker"])
    login(client, chair_and_checker)

    for bad in ("7", "all-time", "<script>"):
        response = client.get(path, query_string={"window": bad})
        body = response.get_data(as_text=True)

        assert response.status_code == 400, bad
        assert "There is a problem" in body and "choose 30, 90 or 365 days, or all time" in body
        assert "<strong>the last 90 days</strong>" in body  # the default window, said as such
    assert "<script>" not in body and "&lt;script&gt;" in body


def test_output_turnaround_states_its_window_and_keeps_open_requests_of_any_age(sqlite_app: Any, client: Any) -> None:
    from tests.disclosure.factories import World as OutputWorld

    with sqlite_app.app_context():
        ow = OutputWorld(sqlite_app)
        old, waiting = ow.released(), ow.submitted()
        long_ago = utcnow() - dt.timedelta(days=200)
        ow.session.execute(
            update(OutputRequest)
            .where(OutputRequest.id.in_((old.id, waiting.id)))
            .values(submitted_at=long_ago, state_changed_at=long_ago)
        )
        ow.session.commit()
    login(client, ow.olive)

    body = client.get("/outputs/metrics?window=30").get_data(as_text=True)
    every = client.get("/outputs/metrics?window=all").get_data(as_text=True)

    assert "Showing requests finished (released, rejected, withdrawn or revoked) in <strong>the last 30 days" in body
    assert waiting.id[:6] in body and old.id[:6] not in body  # the open one whatever its age; not the old one
    assert waiting.id[:6] in every and old.id[:6] in every
    assert "Release (0 done)" in body and "Release (1 done)" in every


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
