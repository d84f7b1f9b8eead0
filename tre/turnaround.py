"""How long work waits at each stage, in working days: applications (submission to the chair's
decision) and output requests (submission to release), for the turnaround pictures.

A read across the domain packages (like ``tre.worklist``), in one statement whatever the number of
items; nothing here changes state. Working days count Monday to Friday, in fractions of a
day (a request checked in three hours took 0.125 of one); bank holidays are not known here and count
as working days. A stage not reached yet is ``None``; a stage still under way is counted up to ``now``
only when the caller asks (``open_until_now``), so medians describe finished stages.

Items are named by a short reference and the date they were submitted, never by a title, so the
pictures say nothing about a project or an output that the page's reader could not see elsewhere.

A read covers a ``Window`` (ADR 0067): the items that finished since its start, and every item still
open whatever its age, because the open ones are the work in hand. The window is a ``WHERE`` in the
one statement each read sends, so the rows read follow the window and the open work, not the years of
history behind them; only "all time" reads everything.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import and_, func, or_, select, union_all
from sqlalchemy.orm import Session

from disclosure import rules as output_rules
from disclosure.models import OutputRequest, OutputReview
from projects import rules as project_rules
from projects.models import DECLARED_BEFORE_ASSIGNMENT, ApplicationVersion, Decision, Project, ReviewAssignment, Vote
from tre.core.db import utcnow

APPLICATION_STAGES = ("Waiting for reviewers", "Review", "Chair's decision")
OUTPUT_STAGES = ("Automated checks", "Waiting for a checker", "Review and decision", "Release")
RECENT = 15

# An output request has finished its stages once released, rejected, withdrawn or revoked; any other
# submitted request is open. Finished requests are windowed by the moment they reached that state.
OUTPUT_FINISHED_STATES = (
    output_rules.RELEASED,
    output_rules.REJECTED,
    output_rules.WITHDRAWN,
    output_rules.REVOKED,
)
OUTPUT_OPEN_STATES = tuple(s for s in output_rules.STATES if s not in OUTPUT_FINISHED_STATES)
# An application version is open until the chair decides on it: its project is then submitted or in review.
APPLICATION_OPEN_PROJECT_STATES = (project_rules.SUBMITTED, project_rules.IN_REVIEW)


@dataclass(frozen=True)
class Window:
    """The stretch of time a turnaround page covers: the last ``days`` days, or all time (``None``)."""

    days: int | None

    @property
    def key(self) -> str:
        """The value of the pages' ``window`` query parameter that asks for this window."""
        return "all" if self.days is None else str(self.days)

    @property
    def label(self) -> str:
        if self.days is None:
            return "all time"
        return "the last year" if self.days == 365 else f"the last {self.days} days"

    def since(self, now: dt.datetime) -> dt.datetime | None:
        """The window's first moment, ``None`` for all time."""
        return None if self.days is None else _aware(now) - dt.timedelta(days=self.days)


WINDOWS = (Window(30), Window(90), Window(365), Window(None))
DEFAULT_WINDOW = Window(90)


def window_named(key: str | None) -> Window:
    """The window a page's ``window`` parameter names; no parameter is the default (the last 90 days).
    Raise ``ValueError`` saying which windows there are for anything else."""
    if key is None:
        return DEFAULT_WINDOW
    for window in WINDOWS:
        if key == window.key:
            return window
    raise ValueError(
        f"There is no window called {key[:20]!r}: choose 30, 90 or 365 days, or all time "
        f"(window={', '.join(w.key for w in WINDOWS)})"
    )


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

    all_items: Sequence[Item] = ()  # every item read (the window's and the open ones), for the medians


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


def applications(
    session: Session,
    *,
    since: dt.datetime | None = None,
    open_until_now: bool = False,
    now: dt.datetime | None = None,
) -> Turnaround:
    """Each submitted application version: waiting for reviewers (submission to first assignment),
    review (first assignment to last vote) and the chair's decision (last vote to decision).

    With ``since``, the versions decided since then and every version not decided yet; without it,
    every version ever submitted. One statement: each version's first assignment and last vote are the
    database's ``MIN`` and ``MAX`` over that version's rows alone."""
    now = _aware(now or utcnow()) if open_until_now else None
    first_assigned = (
        select(func.min(ReviewAssignment.assigned_at))
        .where(
            ReviewAssignment.version_id == ApplicationVersion.id,
            # a member's conflict declared before anyone was assigned is not the chair assigning (ADR 0065)
            ReviewAssignment.assigned_by != DECLARED_BEFORE_ASSIGNMENT,
        )
        .scalar_subquery()
    )
    last_vote = select(func.max(Vote.cast_at)).where(Vote.version_id == ApplicationVersion.id).scalar_subquery()
    columns = (ApplicationVersion.project_id, ApplicationVersion.submitted_at, first_assigned, last_vote)
    if since is None:
        statement = select(*columns, Decision.decided_at).outerjoin(
            Decision, Decision.version_id == ApplicationVersion.id
        )
    else:
        # Two halves, each led by an index: the decisions since the window opened (ix_decisions_decided_at),
        # and the versions of the projects waiting for a decision (ix_projects_state) that have none yet.
        statement = union_all(
            select(*columns, Decision.decided_at)
            .select_from(Decision)
            .join(ApplicationVersion, ApplicationVersion.id == Decision.version_id)
            .where(Decision.decided_at >= since),
            select(*columns, Decision.decided_at)
            .select_from(Project)
            .join(ApplicationVersion, ApplicationVersion.project_id == Project.id)
            .outerjoin(Decision, Decision.version_id == ApplicationVersion.id)
            .where(Project.state.in_(APPLICATION_OPEN_PROJECT_STATES), Decision.id.is_(None)),
        )
    items = []
    for project_id, submitted, first_assigned_at, last_vote_at, decision in session.execute(statement):
        review_end = last_vote_at if last_vote_at is not None else (decision if first_assigned_at is not None else None)
        items.append(
            Item(
                _label(project_id, submitted),
                _aware(submitted),
                (
                    _span(submitted, first_assigned_at, now if decision is None else None),
                    _span(first_assigned_at, review_end, now if decision is None else None),
                    _span(review_end, decision, now) if review_end is not None else None,
                ),
            )
        )
    return _finish(APPLICATION_STAGES, items)


def output_requests(
    session: Session,
    *,
    since: dt.datetime | None = None,
    open_until_now: bool = False,
    now: dt.datetime | None = None,
) -> Turnaround:
    """Each submitted output request: automated checks, waiting for a checker (checks done to the first
    claim), review and decision (first claim to the final decision), release (decision to release).

    With ``since``, the requests that finished (released, rejected, withdrawn or revoked) since then and
    every request still open; without it, every request ever submitted. One statement: each request's
    first claim is the database's ``MIN`` over that request's reviews alone."""
    now = _aware(now or utcnow()) if open_until_now else None
    first_claim = (
        select(func.min(OutputReview.claimed_at)).where(OutputReview.request_id == OutputRequest.id).scalar_subquery()
    )
    statement = select(
        OutputRequest.id,
        OutputRequest.submitted_at,
        OutputRequest.checks_finished_at,
        OutputRequest.decided_at,
        OutputRequest.released_at,
        OutputRequest.state,
        first_claim,
    ).where(OutputRequest.submitted_at.is_not(None))
    if since is not None:
        statement = statement.where(
            or_(
                OutputRequest.state.in_(OUTPUT_OPEN_STATES),
                and_(OutputRequest.state.in_(OUTPUT_FINISHED_STATES), OutputRequest.state_changed_at >= since),
            )
        )
    items = []
    for request_id, submitted, checked, decided, released, state, first_claimed in session.execute(statement):
        ongoing = now if state not in OUTPUT_FINISHED_STATES else None
        items.append(
            Item(
                _label(request_id, submitted),
                _aware(submitted),
                (
                    _span(submitted, checked, ongoing),
                    _span(checked, first_claimed, ongoing) if checked is not None else None,
                    _span(first_claimed, decided, ongoing) if first_claimed is not None else None,
                    _span(decided, released, ongoing if state == "approved" else None) if decided is not None else None,
                ),
            )
        )
    return _finish(OUTPUT_STAGES, items)
