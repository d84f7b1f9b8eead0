"""How long work waits at each stage, in working days: applications (submission to the chair's
decision) and output requests (submission to release), for the turnaround pictures.

A read across the domain packages (like ``tre.worklist``), in a constant number of statements whatever
the number of items; nothing here changes state. Working days count Monday to Friday, in fractions of a
day (a request checked in three hours took 0.125 of one); bank holidays are not known here and count
as working days. A stage not reached yet is ``None``; a stage still under way is counted up to ``now``
only when the caller asks (``open_until_now``), so medians describe finished stages.

Items are named by a short reference and the date they were submitted, never by a title, so the
pictures say nothing about a project or an output that the page's reader could not see elsewhere.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from disclosure.models import OutputRequest, OutputReview
from projects.models import ApplicationVersion, Decision, ReviewAssignment, Vote
from tre.core.db import utcnow

APPLICATION_STAGES = ("Waiting for reviewers", "Review", "Chair's decision")
OUTPUT_STAGES = ("Automated checks", "Waiting for a checker", "Review and decision", "Release")
RECENT = 15


def working_days(start: dt.datetime, end: dt.datetime) -> float:
    """Monday-to-Friday time between two moments, in days (0 when ``end`` is not after ``start``)."""
    if end <= start:
        return 0.0
    day = dt.timedelta(days=1)

    def weekday(d: dt.date) -> bool:
        return d.weekday() < 5

    first, last = start.date(), end.date()
    if first == last:
        return (end - start) / day if weekday(first) else 0.0
    midnight_after_start = dt.datetime.combine(first + day, dt.time(), tzinfo=start.tzinfo)
    midnight_of_end = dt.datetime.combine(last, dt.time(), tzinfo=end.tzinfo)
    head = (midnight_after_start - start) / day if weekday(first) else 0.0
    tail = (end - midnight_of_end) / day if weekday(last) else 0.0
    whole = int(np.busday_count(first + day, last))
    return head + whole + tail


@dataclass(frozen=True)
class Item:
    label: str
    submitted_at: dt.datetime
    stages: tuple[float | None, ...]


@dataclass(frozen=True)
class Turnaround:
    stages: tuple[str, ...]
    items: list[Item]  # the most recent first, at most RECENT

    @property
    def medians(self) -> list[float | None]:
        out: list[float | None] = []
        for i in range(len(self.stages)):
            done = [it.stages[i] for it in self.all_items if it.stages[i] is not None]
            out.append(float(statistics.median(done)) if done else None)
        return out

    @property
    def counts(self) -> list[int]:
        return [sum(1 for it in self.all_items if it.stages[i] is not None) for i in range(len(self.stages))]

    all_items: Sequence[Item] = ()  # every item, for the medians


def _span(start: dt.datetime | None, end: dt.datetime | None, now: dt.datetime | None) -> float | None:
    if start is None:
        return None
    if end is None:
        return working_days(_aware(start), now) if now is not None else None
    return working_days(_aware(start), _aware(end))


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _label(item_id: str, submitted: dt.datetime) -> str:
    return f"{item_id[:6]} ({submitted:%d %b})"


def _finish(stages: tuple[str, ...], items: list[Item]) -> Turnaround:
    items.sort(key=lambda it: it.submitted_at, reverse=True)
    return Turnaround(stages, items[:RECENT], items)


def applications(session: Session, *, open_until_now: bool = False, now: dt.datetime | None = None) -> Turnaround:
    """Each submitted application version: waiting for reviewers (submission to first assignment),
    review (first assignment to last vote) and the chair's decision (last vote to decision)."""
    now = _aware(now or utcnow()) if open_until_now else None
    versions = session.execute(
        select(ApplicationVersion.id, ApplicationVersion.project_id, ApplicationVersion.submitted_at)
    ).all()
    assigned = dict(
        session.execute(
            select(ReviewAssignment.version_id, func.min(ReviewAssignment.assigned_at)).group_by(
                ReviewAssignment.version_id
            )
        ).all()
    )
    voted = dict(session.execute(select(Vote.version_id, func.max(Vote.cast_at)).group_by(Vote.version_id)).all())
    decided = dict(session.execute(select(Decision.version_id, Decision.decided_at)).all())
    items = []
    for version_id, project_id, submitted in versions:
        first_assigned, last_vote, decision = assigned.get(version_id), voted.get(version_id), decided.get(version_id)
        review_end = last_vote if last_vote is not None else (decision if first_assigned is not None else None)
        items.append(
            Item(
                _label(project_id, submitted),
                _aware(submitted),
                (
                    _span(submitted, first_assigned, now if decision is None else None),
                    _span(first_assigned, review_end, now if decision is None else None),
                    _span(review_end, decision, now) if review_end is not None else None,
                ),
            )
        )
    return _finish(APPLICATION_STAGES, items)


def output_requests(session: Session, *, open_until_now: bool = False, now: dt.datetime | None = None) -> Turnaround:
    """Each submitted output request: automated checks, waiting for a checker (checks done to the first
    claim), review and decision (first claim to the final decision), release (decision to release)."""
    now = _aware(now or utcnow()) if open_until_now else None
    rows = session.execute(
        select(
            OutputRequest.id,
            OutputRequest.submitted_at,
            OutputRequest.checks_finished_at,
            OutputRequest.decided_at,
            OutputRequest.released_at,
            OutputRequest.state,
        ).where(OutputRequest.submitted_at.is_not(None))
    ).all()
    claimed = dict(
        session.execute(
            select(OutputReview.request_id, func.min(OutputReview.claimed_at)).group_by(OutputReview.request_id)
        ).all()
    )
    items = []
    for request_id, submitted, checked, decided, released, state in rows:
        ongoing = now if state not in ("released", "rejected", "withdrawn", "revoked") else None
        first_claim = claimed.get(request_id)
        items.append(
            Item(
                _label(request_id, submitted),
                _aware(submitted),
                (
                    _span(submitted, checked, ongoing),
                    _span(checked, first_claim, ongoing) if checked is not None else None,
                    _span(first_claim, decided, ongoing) if first_claim is not None else None,
                    _span(decided, released, ongoing if state == "approved" else None) if decided is not None else None,
                ),
            )
        )
    return _finish(OUTPUT_STAGES, items)
