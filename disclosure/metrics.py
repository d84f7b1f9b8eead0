"""How the output queue is doing: queue length, turnaround and automated-check latency.

Figures are read from the database when asked, so they are right whichever process did the work.
Turnaround runs from a request's first submission to its final decision (approved or rejected);
check latency from a check job's creation to its end, i.e. what a researcher waits for a verdict.
``prometheus_text`` gives the same figures in Prometheus's text format (aggregates only: no ids).

The durations are read for a window (``since``): a page asks for its chosen window, Prometheus for the
last ``PROMETHEUS_WINDOW``, so the rows fetched do not grow with the years of history (ADR 0067). The
Prometheus summaries' ``_sum`` and ``_count`` stay cumulative, as the format expects: the database adds
them up (``lifetime_totals``) and returns two numbers, not the rows.
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, DateTime, Float, func, select, type_coerce
from sqlalchemy.orm import Session

from disclosure import rules
from disclosure.models import OutputRequest
from disclosure.services import CHECK_JOB
from tre.core.db import utcnow
from tre.core.jobs import FAILED, SUCCEEDED, Job


@dataclass(frozen=True)
class Summary:
    count: int = 0
    total: float = 0.0
    median: float | None = None
    p90: float | None = None
    maximum: float | None = None

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        if not values:
            return cls()
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
        return cls(len(ordered), float(sum(ordered)), float(statistics.median(ordered)), float(p90), float(ordered[-1]))


@dataclass(frozen=True)
class QueueMetrics:
    by_state: dict[str, int] = field(default_factory=dict)
    queue_length: int = 0
    oldest_waiting_seconds: float | None = None
    turnaround_seconds: Summary = Summary()
    check_latency_seconds: Summary = Summary()
    checks_failed: int = 0


def _seconds(later: dt.datetime, earlier: dt.datetime) -> float:
    return (later - earlier).total_seconds()


# Prometheus's quantiles cover the requests decided and the checks finished in the last 30 days.
PROMETHEUS_WINDOW = dt.timedelta(days=30)


@dataclass(frozen=True)
class LifetimeTotals:
    """How many requests were ever decided and checks ever finished, and their durations added up."""

    turnaround_count: int = 0
    turnaround_seconds: float = 0.0
    latency_count: int = 0
    latency_seconds: float = 0.0


def collect(session: Session, *, now: dt.datetime | None = None, since: dt.datetime | None = None) -> QueueMetrics:
    """The queue's figures in four statements. The longest wait is the database's ``MIN`` of the
    waiting requests' submission times (it read every one), asked with the failed checks' count.
    Turnaround and check latency cover the requests decided and the checks finished from ``since`` on
    (``None``: all time); the queue's counts are always now."""
    now = now or utcnow()
    decided_in = [OutputRequest.decided_at >= since] if since is not None else []
    finished_in = [Job.finished_at >= since] if since is not None else []
    by_state = {state: 0 for state in rules.STATES}
    for state, count in session.execute(select(OutputRequest.state, func.count()).group_by(OutputRequest.state)):
        by_state[state] = int(count)
    oldest, failed = session.execute(
        select(
            select(func.min(OutputRequest.last_submitted_at))
            .where(OutputRequest.state.in_(tuple(rules.IN_QUEUE_STATES - {rules.APPROVED})))
            .scalar_subquery(),
            select(func.count()).select_from(Job).where(Job.kind == CHECK_JOB, Job.state == FAILED).scalar_subquery(),
        )
    ).one()
    turnaround = [
        (decided - submitted).total_seconds()
        for submitted, decided in session.execute(
            select(
                type_coerce(OutputRequest.submitted_at, DateTime()), type_coerce(OutputRequest.decided_at, DateTime())
            ).where(OutputRequest.decided_at.is_not(None), OutputRequest.submitted_at.is_not(None), *decided_in)
        )
    ]
    # One row per check job ever run (they are never deleted): read as the database's naive UTC values
    # (both columns are UTC, so their difference is the same) without the UTC type's per-value work.
    latency = [
        (finished - created).total_seconds()
        for created, finished in session.execute(
            select(type_coerce(Job.created_at, DateTime()), type_coerce(Job.finished_at, DateTime())).where(
                Job.kind == CHECK_JOB, Job.state == SUCCEEDED, Job.finished_at.is_not(None), *finished_in
            )
        )
    ]
    return QueueMetrics(
        by_state=by_state,
        queue_length=sum(by_state[s] for s in (rules.SUBMITTED, rules.CHECKING, rules.AWAITING_REVIEW)),
        oldest_waiting_seconds=_seconds(now, oldest) if oldest is not None else None,
        turnaround_seconds=Summary.of(turnaround),
        check_latency_seconds=Summary.of(latency),
        checks_failed=int(failed or 0),
    )


def _seconds_between(session: Session, later: Any, earlier: Any) -> ColumnElement[float]:
    """``later - earlier`` in seconds, as the database computes it (columns of naive UTC values)."""
    if session.get_bind().dialect.name == "postgresql":
        return type_coerce(func.extract("epoch", later - earlier), Float())
    return type_coerce((func.julianday(later) - func.julianday(earlier)) * 86400.0, Float())


def lifetime_totals(session: Session) -> LifetimeTotals:
    """Every decided request's turnaround and every finished check's latency, counted and added up by the
    database in one statement: two numbers each, however long the service has run."""
    submitted = type_coerce(OutputRequest.submitted_at, DateTime())
    decided = type_coerce(OutputRequest.decided_at, DateTime())
    created, finished = type_coerce(Job.created_at, DateTime()), type_coerce(Job.finished_at, DateTime())
    decided_rows = (OutputRequest.decided_at.is_not(None), OutputRequest.submitted_at.is_not(None))
    checked_rows = (Job.kind == CHECK_JOB, Job.state == SUCCEEDED, Job.finished_at.is_not(None))
    row = session.execute(
        select(
            select(func.count()).select_from(OutputRequest).where(*decided_rows).scalar_subquery(),
            select(func.sum(_seconds_between(session, decided, submitted))).where(*decided_rows).scalar_subquery(),
            select(func.count()).select_from(Job).where(*checked_rows).scalar_subquery(),
            select(func.sum(_seconds_between(session, finished, created))).where(*checked_rows).scalar_subquery(),
        )
    ).one()
    return LifetimeTotals(int(row[0] or 0), float(row[1] or 0.0), int(row[2] or 0), float(row[3] or 0.0))


def prometheus_text(m: QueueMetrics, totals: LifetimeTotals | None = None) -> str:
    """The Prometheus text exposition format (version 0.0.4) of the queue's figures. With ``totals``, the
    summaries' ``_sum`` and ``_count`` are those lifetime figures (cumulative, as Prometheus expects) and
    the quantiles are ``m``'s window; without, all come from ``m``."""
    lines = [
        "# HELP tre_output_requests Output requests by state",
        "# TYPE tre_output_requests gauge",
        *[f'tre_output_requests{{state="{state}"}} {count}' for state, count in sorted(m.by_state.items())],
        "# HELP tre_output_queue_length Requests waiting for automated checks or human review",
        "# TYPE tre_output_queue_length gauge",
        f"tre_output_queue_length {m.queue_length}",
        "# HELP tre_output_oldest_waiting_seconds Age of the longest-waiting request in the queue",
        "# TYPE tre_output_oldest_waiting_seconds gauge",
        f"tre_output_oldest_waiting_seconds {_num(m.oldest_waiting_seconds or 0.0)}",
        "# HELP tre_output_checks_failed Automated check jobs that ended FAILED",
        "# TYPE tre_output_checks_failed gauge",
        f"tre_output_checks_failed {m.checks_failed}",
    ]
    t = totals or LifetimeTotals(
        m.turnaround_seconds.count, m.turnaround_seconds.total, m.check_latency_seconds.count,
        m.check_latency_seconds.total,
    )
    for name, helptext, summary, total, count in (
        ("tre_output_turnaround_seconds", "First submission to final decision", m.turnaround_seconds,
         t.turnaround_seconds, t.turnaround_count),
        ("tre_output_check_latency_seconds", "Automated check: job created to verdict", m.check_latency_seconds,
         t.latency_seconds, t.latency_count),
    ):
        lines += [f"# HELP {name} {helptext}", f"# TYPE {name} summary"]
        for quantile, value in (("0.5", summary.median), ("0.9", summary.p90)):
            lines.append(f'{name}{{quantile="{quantile}"}} {_num(value) if value is not None else "NaN"}')
        lines += [f"{name}_sum {_num(total)}", f"{name}_count {count}"]
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return repr(float(value))
