"""The output queue's figures (``disclosure.metrics.collect``) read less and answer the same.

The former read is kept here as the reference: it fetched every waiting request's submission time to
find the longest wait, and every check job's times through the UTC column type. The new read asks the
database for the oldest submission with the failed checks' count in one statement, and reads the
durations' columns as the database's naive UTC values.
"""

from __future__ import annotations

import datetime as dt
import statistics
from typing import Any

from sqlalchemy import func, select

from disclosure import rules
from disclosure.metrics import QueueMetrics, Summary, collect
from disclosure.models import OutputRequest
from disclosure.services import CHECK_JOB
from tests.disclosure.factories import SAFE_CSV, World
from tests.statements import count_rows, count_statements
from tre.core.db import utcnow
from tre.core.jobs import FAILED, SUCCEEDED, Job


def _former_collect(session: Any, now: dt.datetime) -> QueueMetrics:
    """``collect`` as it was before issue 26's gap pass (every row read and converted in Python)."""
    by_state = {state: 0 for state in rules.STATES}
    for state, count in session.execute(select(OutputRequest.state, func.count()).group_by(OutputRequest.state)):
        by_state[state] = int(count)
    waiting = [
        w for w in session.scalars(
            select(OutputRequest.last_submitted_at).where(
                OutputRequest.state.in_(tuple(rules.IN_QUEUE_STATES - {rules.APPROVED}))
            )
        )
        if w is not None
    ]
    turnaround = [
        (decided - submitted).total_seconds()
        for submitted, decided in session.execute(
            select(OutputRequest.submitted_at, OutputRequest.decided_at).where(
                OutputRequest.decided_at.is_not(None), OutputRequest.submitted_at.is_not(None)
            )
        )
    ]
    latency = [
        (finished - created).total_seconds()
        for created, finished in session.execute(
            select(Job.created_at, Job.finished_at).where(Job.kind == CHECK_JOB, Job.state == SUCCEEDED)
        )
        if finished is not None
    ]
    failed = session.scalar(select(func.count()).select_from(Job).where(Job.kind == CHECK_JOB, Job.state == FAILED))
    return QueueMetrics(
        by_state=by_state,
        queue_length=sum(by_state[s] for s in (rules.SUBMITTED, rules.CHECKING, rules.AWAITING_REVIEW)),
        oldest_waiting_seconds=max(((now - w).total_seconds() for w in waiting), default=None),
        turnaround_seconds=Summary.of(turnaround),
        check_latency_seconds=Summary.of(latency),
        checks_failed=int(failed or 0),
    )


def _check_jobs(session: Any, states: list[str]) -> None:
    """Check jobs with uneven latencies (microseconds apart), as a busy worker leaves them."""
    start = utcnow() - dt.timedelta(hours=3)
    for i, state in enumerate(states):
        created = start + dt.timedelta(seconds=7 * i, microseconds=(i * 7919) % 1_000_000)
        finished = created + dt.timedelta(seconds=i % 5, microseconds=(i * 104_729) % 1_000_000)
        session.add(Job(kind=CHECK_JOB, idempotency_key=f"metrics-test-{i}", state=state,
                        created_at=created, finished_at=finished))
    session.commit()


def test_queue_figures_are_those_of_the_former_read(app: Any) -> None:
    with app.app_context():
        w = World(app)
        session = w.session
        now = utcnow()
        assert collect(session, now=now) == _former_collect(session, now)  # nothing at all yet
        w.submitted(content=SAFE_CSV)
        w.submitted()
        w.draft()
        w.released(content=SAFE_CSV)
        _check_jobs(session, [SUCCEEDED] * 9 + [FAILED] * 2)
        now = utcnow()

        new, old = collect(session, now=now), _former_collect(session, now)

        assert new == old
        assert new.oldest_waiting_seconds is not None and new.oldest_waiting_seconds > 0
        assert new.checks_failed == 2 and new.check_latency_seconds.count >= 9
        assert new.turnaround_seconds.count == 1
        latencies = sorted(
            (f - c).total_seconds() for c, f in session.execute(
                select(Job.created_at, Job.finished_at).where(Job.kind == CHECK_JOB, Job.state == SUCCEEDED))
        )
        assert new.check_latency_seconds.median == statistics.median(latencies)


def test_queue_figures_take_four_statements_however_many_requests_wait(app: Any) -> None:
    with app.app_context():
        w = World(app)
        w.submitted(content=SAFE_CSV)
        session = w.session
        session.commit()
        few, _ = count_statements(app, lambda: collect(session))
        session.commit()
        for _ in range(3):
            w.submitted(content=SAFE_CSV)
        session.commit()
        more, figures = count_statements(app, lambda: collect(session))

    assert figures.queue_length == 4
    # group-by of the states, the oldest wait with the failed checks, the turnaround's and the latency's
    # columns (a BEGIN more on SQLite); it was five (the waiting requests' times, the failed count apart)
    assert few == more <= (5 if app.extensions["tre.db"].engine.dialect.name == "sqlite" else 4), more


def _move_back(session: Any, days: int, *, ids: list[str], job_keys: list[str]) -> None:
    """Decide those requests, and finish those check jobs, ``days`` ago (a second apart, as they were)."""
    moved = utcnow() - dt.timedelta(days=days)
    for request in session.scalars(select(OutputRequest).where(OutputRequest.id.in_(ids))):
        took = request.decided_at - request.submitted_at
        request.submitted_at, request.decided_at = moved - took, moved
    for job in session.scalars(select(Job).where(Job.idempotency_key.in_(job_keys))):
        took = job.finished_at - job.created_at
        job.created_at, job.finished_at = moved - took, moved
    session.commit()


def test_a_window_reads_only_what_was_decided_and_checked_in_it_and_totals_count_everything(app: Any) -> None:
    from disclosure.metrics import lifetime_totals

    with app.app_context():
        w = World(app)
        session = w.session
        old = [w.released(content=SAFE_CSV).id for _ in range(3)]
        recent = w.released(content=SAFE_CSV).id
        _check_jobs(session, [SUCCEEDED] * 6)
        _move_back(session, 200, ids=old, job_keys=[f"metrics-test-{i}" for i in range(4)])
        now = utcnow()
        since = now - dt.timedelta(days=90)

        rows, windowed = count_rows(app, lambda: collect(session, now=now, since=since))
        all_rows, everything = count_rows(app, lambda: collect(session, now=now))
        totals = lifetime_totals(session)

        decided = {r.id: (r.decided_at - r.submitted_at).total_seconds()
                   for r in session.scalars(select(OutputRequest).where(OutputRequest.decided_at.is_not(None)))}
        checks = [(j.finished_at - j.created_at, j.finished_at >= since) for j in session.scalars(
            select(Job).where(Job.kind == CHECK_JOB, Job.state == SUCCEEDED))]

    assert windowed.turnaround_seconds == Summary.of([decided[recent]])
    assert windowed.check_latency_seconds == Summary.of([d.total_seconds() for d, inside in checks if inside])
    assert everything.turnaround_seconds == Summary.of(list(decided.values()))
    assert all_rows - rows == 3 + 4  # the old decisions and the old checks are not fetched in the window
    # The lifetime totals are the database's own sums of every request and check, not a window's.
    assert (totals.turnaround_count, totals.latency_count) == (len(decided), len(checks))
    assert abs(totals.turnaround_seconds - sum(decided.values())) < 0.01
    assert abs(totals.latency_seconds - sum(d.total_seconds() for d, _ in checks)) < 0.01


def test_prometheus_summaries_count_every_request_and_check_ever_but_quantiles_cover_the_window(app: Any) -> None:
    from disclosure.metrics import PROMETHEUS_WINDOW, lifetime_totals, prometheus_text

    with app.app_context():
        w = World(app)
        session = w.session
        old = [w.released(content=SAFE_CSV).id for _ in range(2)]
        _move_back(session, PROMETHEUS_WINDOW.days + 10, ids=old, job_keys=[])
        now = utcnow()
        windowed = collect(session, now=now, since=now - PROMETHEUS_WINDOW)
        text = prometheus_text(windowed, lifetime_totals(session))

    assert windowed.turnaround_seconds.count == 0
    assert 'tre_output_turnaround_seconds{quantile="0.5"} NaN' in text  # nothing decided in the window
    assert "tre_output_turnaround_seconds_count 2" in text  # cumulative, as Prometheus expects
