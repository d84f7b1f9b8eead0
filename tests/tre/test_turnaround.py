"""Turnaround per stage in working days (tre/turnaround.py) and the extract's rate and time left
(tre/web/pictures.py), from the real services' records."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select, update

from disclosure.models import OutputRequest, OutputReview
from projects.models import DECLARED_BEFORE_ASSIGNMENT, ApplicationVersion, Decision, ReviewAssignment, Vote
from pseudonymisation.pipeline import Progress
from pseudonymisation.services import _reporter
from tests.projects.factories import approved, build_world, in_review
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


def test_a_conflict_declared_before_assignment_does_not_end_the_wait_for_reviewers(app: Any) -> None:
    with app.app_context():
        w = build_world(app)
        project = approved(w)
        s = w.session
        version = s.scalars(select(ApplicationVersion).where(ApplicationVersion.project_id == project.id)).one()
        s.execute(update(ApplicationVersion).where(ApplicationVersion.id == version.id).values(submitted_at=at(0)))
        s.execute(update(ReviewAssignment).values(assigned_at=at(2)))
        s.execute(update(Vote).values(cast_at=at(4)))
        s.execute(update(Decision).values(decided_at=at(8)))
        # The chair, not assigned, declared a conflict on day 1, before assigning anyone on day 2.
        s.add(ReviewAssignment(version_id=version.id, reviewer_id=w.chair.id, assigned_by=DECLARED_BEFORE_ASSIGNMENT,
                               assigned_at=at(1), conflict_declared_at=at(1), conflict_reason="My own study"))
        s.commit()

        t = turnaround.applications(s)

    assert [it.stages for it in t.items] == [(pytest.approx(2), pytest.approx(2), pytest.approx(2))]


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


# --- the window (ADR 0067) ---------------------------------------------------------------------------

NOW = at(10)  # Thursday 12 November 2026, 09:00
LAST_30_DAYS = turnaround.Window(30).since(NOW)  # Tuesday 13 October 2026, 09:00


def test_window_is_30_90_or_365_days_or_all_time_and_nothing_else() -> None:
    assert turnaround.window_named(None) == turnaround.Window(90)  # the default
    assert [turnaround.window_named(k).days for k in ("30", "90", "365", "all")] == [30, 90, 365, None]
    assert turnaround.Window(90).since(NOW) == NOW - dt.timedelta(days=90)
    assert turnaround.Window(None).since(NOW) is None
    for bad in ("7", "", "90 ", "-30", "ALL", "1e9", "90; drop table decisions"):
        with pytest.raises(ValueError, match="choose 30, 90 or 365 days, or all time"):
            turnaround.window_named(bad)


def _application_world(app: Any) -> tuple[Any, Any, Any, Any]:
    """Three applications: one decided in the last 30 days, one decided long before, one still in review
    since long before. Returns the world and the three projects."""
    w = build_world(app)
    recent, old, waiting = approved(w), approved(w), in_review(w)
    s = w.session
    for project, submitted, assigned, votes, decided in (
        (recent, at(0), at(2), (at(3), at(4)), at(8)),  # 2, 2 and 2 working days
        (old, at(-100), at(-99), (at(-98), at(-98)), at(-90)),
        (waiting, at(-56), at(-49), None, None),  # 5 working days waiting; in review since
    ):
        version = s.scalar(select(ApplicationVersion.id).where(ApplicationVersion.project_id == project.id))
        s.execute(update(ApplicationVersion).where(ApplicationVersion.id == version).values(submitted_at=submitted))
        s.execute(update(ReviewAssignment).where(ReviewAssignment.version_id == version).values(assigned_at=assigned))
        if votes is not None:
            s.execute(update(Vote).where(Vote.version_id == version).values(cast_at=votes[0]))
            s.execute(
                update(Vote).where(Vote.version_id == version, Vote.reviewer_id == w.drew.id).values(cast_at=votes[1])
            )
            s.execute(update(Decision).where(Decision.version_id == version).values(decided_at=decided))
    s.commit()
    return w, recent, old, waiting


def test_windowed_application_turnaround_is_the_hand_count_of_the_decided_in_window_and_the_open(app: Any) -> None:
    with app.app_context():
        w, recent, old, waiting = _application_world(app)

        windowed = turnaround.applications(w.session, since=LAST_30_DAYS, open_until_now=True, now=NOW)
        every = turnaround.applications(w.session, open_until_now=True, now=NOW)

    stages = {it.label[:6]: it.stages for it in windowed.all_items}
    assert set(stages) == {recent.id[:6], waiting.id[:6]}  # the old decision is outside; the open one is in
    assert stages[recent.id[:6]] == (pytest.approx(2), pytest.approx(2), pytest.approx(2))
    # Monday to Monday a week later; then Monday 14 September to Thursday 12 November, still in review.
    assert stages[waiting.id[:6]] == (pytest.approx(5), pytest.approx(43), None)
    assert windowed.medians == [pytest.approx(3.5), pytest.approx(22.5), pytest.approx(2)]
    assert windowed.counts == [2, 2, 1]
    # The same items as the whole history's read, with the same numbers: the window only chooses.
    assert [(it.label, it.stages) for it in every.all_items if it.label[:6] in stages] == [
        (it.label, it.stages) for it in windowed.all_items
    ]
    assert len(every.all_items) == 3 and every.counts == [3, 3, 2]


def _output_world(app: Any) -> tuple[Any, Any, Any, Any]:
    """Three output requests: one released in the last 30 days, one released long before, one waiting
    for a checker since long before. Returns the world and the three requests."""
    from tests.disclosure.factories import World

    w = World(app)
    recent, old, waiting = w.released(), w.released(), w.submitted()
    s = w.session
    for req, times, claimed in (
        (recent, dict(submitted_at=at(0), checks_finished_at=at(0.5), decided_at=at(3), released_at=at(7)), at(1)),
        (old, dict(submitted_at=at(-70), checks_finished_at=at(-70), decided_at=at(-65), released_at=at(-60)), at(-68)),
        (waiting, dict(submitted_at=at(-56), checks_finished_at=at(-55)), None),
    ):
        moved = times.get("released_at", at(-56))
        s.execute(update(OutputRequest).where(OutputRequest.id == req.id).values(state_changed_at=moved, **times))
        if claimed is not None:
            s.execute(update(OutputReview).where(OutputReview.request_id == req.id).values(claimed_at=claimed))
    s.commit()
    return w, recent, old, waiting


def test_windowed_output_turnaround_is_the_hand_count_of_the_finished_in_window_and_the_open(app: Any) -> None:
    with app.app_context():
        w, recent, old, waiting = _output_world(app)

        windowed = turnaround.output_requests(w.session, since=LAST_30_DAYS, open_until_now=True, now=NOW)
        every = turnaround.output_requests(w.session, open_until_now=True, now=NOW)

    stages = {it.label[:6]: it.stages for it in windowed.all_items}
    assert set(stages) == {recent.id[:6], waiting.id[:6]}
    assert stages[recent.id[:6]] == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(2), pytest.approx(2))
    # Checked by Tuesday 8 September, then waiting for a checker until Thursday 12 November: 47 working days.
    assert stages[waiting.id[:6]] == (pytest.approx(1), pytest.approx(47), None, None)
    assert windowed.medians == [pytest.approx(0.75), pytest.approx(23.75), pytest.approx(2), pytest.approx(2)]
    assert windowed.counts == [2, 2, 1, 1]
    assert [(it.label, it.stages) for it in every.all_items if it.label[:6] in stages] == [
        (it.label, it.stages) for it in windowed.all_items
    ]
    assert len(every.all_items) == 3 and every.counts == [3, 3, 2, 2]


def test_windowed_reads_fetch_the_window_and_the_open_work_not_the_history(app: Any) -> None:
    """The rows fetched are the in-window items and the open ones, however much history lies behind."""
    from tests.statements import count_rows

    with app.app_context():
        w, *_ = _application_world(app)
        ow, *_ = _output_world(app)
        s = w.session

        def read() -> tuple[int, int]:
            return (
                count_rows(app, lambda: turnaround.applications(s, since=LAST_30_DAYS, open_until_now=True))[0],
                count_rows(app, lambda: turnaround.output_requests(s, since=LAST_30_DAYS, open_until_now=True))[0],
            )

        before = read()
        for _ in range(4):  # more decided applications and released requests, all long before the window
            approved(w)
            ow.released()
        s.execute(update(Decision).where(Decision.decided_at > LAST_30_DAYS + dt.timedelta(days=40)).values(
            decided_at=at(-200)
        ))
        s.execute(
            update(OutputRequest)
            .where(OutputRequest.state == "released", OutputRequest.state_changed_at > at(30))
            .values(state_changed_at=at(-200))
        )
        s.commit()
        after = read()
        everything = (
            count_rows(app, lambda: turnaround.applications(s))[0],
            count_rows(app, lambda: turnaround.output_requests(s))[0],
        )

    assert before == (2, 2)  # one decided in the window and one open, of each kind
    assert after == before
    assert everything == (7, 7)  # all time reads them all (and the counter sees every row)
