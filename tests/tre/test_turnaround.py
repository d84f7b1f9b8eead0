"""Turnaround per stage in working days (tre/turnaround.py) and the extract's rate and time left
(tre/web/pictures.py), from the real services' records."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import update

from disclosure.models import OutputRequest, OutputReview
from projects.models import ApplicationVersion, Decision, ReviewAssignment, Vote
from pseudonymisation.pipeline import Progress
from pseudonymisation.services import _reporter
from tests.projects.factories import approved, build_world
from tre import turnaround
from tre.turnaround import working_days
from tre.web.pictures import extract_progress

MONDAY = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)


def at(days: float) -> dt.datetime:
    return MONDAY + dt.timedelta(days=days)


def test_working_days_leave_out_the_weekend() -> None:
    assert working_days(at(0), at(7)) == pytest.approx(5)  # Monday to Monday
    assert working_days(at(4), at(8)) == pytest.approx(2)  # Friday 09:00 to Tuesday 09:00
    assert working_days(at(5), at(6)) == 0  # Saturday to Sunday
    assert working_days(at(0), at(0.125)) == pytest.approx(0.125)  # three hours
    assert working_days(at(3), at(1)) == 0


def test_application_stages_run_from_submission_to_assignment_last_vote_and_decision(app: Any) -> None:
    with app.app_context():
        w = build_world(app)
        project = approved(w)
        s = w.session
        s.execute(
            update(ApplicationVersion).where(ApplicationVersion.project_id == project.id).values(submitted_at=at(0))
        )
        s.execute(update(ReviewAssignment).values(assigned_at=at(2)))
        s.execute(update(Vote).values(cast_at=at(3)))
        s.execute(update(Vote).where(Vote.reviewer_id == w.drew.id).values(cast_at=at(4)))
        s.execute(update(Decision).values(decided_at=at(8)))
        s.commit()

        t = turnaround.applications(s)

    assert [it.stages for it in t.items] == [(pytest.approx(2), pytest.approx(2), pytest.approx(2))]
    assert t.medians == [pytest.approx(2)] * 3 and t.counts == [1, 1, 1]
    assert project.title not in t.items[0].label  # named by reference, not by title


def test_output_request_stages_from_submission_to_release(app: Any) -> None:
    from tests.disclosure.factories import World

    with app.app_context():
        w = World(app)
        req = w.released()
        waiting = w.submitted()
        s = w.session
        s.execute(
            update(OutputRequest)
            .where(OutputRequest.id == req.id)
            .values(submitted_at=at(0), checks_finished_at=at(0.5), decided_at=at(3), released_at=at(7))
        )
        s.execute(update(OutputReview).where(OutputReview.request_id == req.id).values(claimed_at=at(1)))
        s.execute(update(OutputRequest).where(OutputRequest.id == waiting.id).values(submitted_at=at(-1)))
        s.commit()

        done = turnaround.output_requests(s)
        still_open = turnaround.output_requests(s, open_until_now=True, now=at(1))

    stages = {it.label[:6]: it.stages for it in done.items}
    assert stages[req.id[:6]] == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(2), pytest.approx(2))
    assert stages[waiting.id[:6]][2:] == (None, None)  # not claimed, not decided
    assert done.medians[3] == pytest.approx(2) and done.counts[3] == 1
    # The waiting request's checks finished when the job ran (today), so only its claim is open.
    assert {it.label[:6] for it in still_open.items} == {req.id[:6], waiting.id[:6]}


def test_extract_rate_and_time_left_come_from_the_progress_the_extract_service_reports() -> None:
    reported: list[tuple[float, str]] = []
    _reporter(lambda fraction, message: reported.append((fraction, message)))(
        Progress("admissions", 3, 30_000, 120_000, 0)
    )
    fraction, message = reported[0]

    estimate = extract_progress(fraction, message, started_at=at(0), now=at(0) + dt.timedelta(seconds=60))

    assert estimate.dataset == "admissions" and estimate.rows_read == 30_000
    assert estimate.rows_per_second == pytest.approx(500)
    assert estimate.seconds_left == pytest.approx(180)  # a quarter done in a minute: three minutes left


def test_extract_progress_without_a_start_or_rows_gives_no_estimate() -> None:
    estimate = extract_progress(0.0, "queued", started_at=None, now=at(0))

    assert estimate.rows_read is None and estimate.rows_per_second is None and estimate.seconds_left is None


def test_turnaround_reads_take_as_many_statements_for_many_items_as_for_one(sqlite_app: Any) -> None:
    from tests.disclosure.factories import World
    from tests.statements import count_statements

    with sqlite_app.app_context():
        outputs_world = World(sqlite_app)
        w = build_world(sqlite_app)
        approved(w)
        outputs_world.released()
        one = (
            count_statements(sqlite_app, lambda: turnaround.applications(w.session))[0],
            count_statements(sqlite_app, lambda: turnaround.output_requests(w.session))[0],
        )
        for _ in range(3):
            approved(w)
            outputs_world.released()
        many = (
            count_statements(sqlite_app, lambda: turnaround.applications(w.session))[0],
            count_statements(sqlite_app, lambda: turnaround.output_requests(w.session))[0],
        )
        counted = len(turnaround.applications(w.session).items), len(turnaround.output_requests(w.session).items)

    assert counted == (4, 4)
    assert many == one
