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
from tests.statements import count_statements
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
