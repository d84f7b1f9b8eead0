"""Reading the queue: who sees a request and as what, the blind review picture, the checkers' queue,
a researcher's requests, checkers' workload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, func, select
from sqlalchemy.orm import lazyload

from disclosure import permissions as perm
from disclosure import rules
from disclosure.kernel import OutputsBase, _Denied
from disclosure.models import (
    OutputCheck,
    OutputComment,
    OutputDecision,
    OutputFile,
    OutputRequest,
    OutputReview,
    OutputVote,
)
from disclosure.progress import AutomatedStatus, _checks_by_file, queued_statuses
from projects.models import Project

# What the checkers' queue (page and API) shows of each waiting request and what ``can_check`` asks of
# it, as columns: the queue grows with the submissions waiting, and an ORM object per request and per
# file (with its group) was most of the queue's CPU under the load benchmark (ADR 0042). A template
# or reply that needs more of the request adds the column here.
_QUEUED_COLUMNS = (
    OutputRequest.id,
    OutputRequest.title,
    OutputRequest.state,
    OutputRequest.round,
    OutputRequest.reviews_required,
    OutputRequest.author_id,
    OutputRequest.project_id,
    OutputRequest.last_submitted_at,
)


def _queue_statement() -> Any:
    current = (OutputFile.request_id == OutputRequest.id, OutputFile.superseded_at.is_(None))
    verdict = (
        select(OutputCheck.id)
        .where(
            OutputCheck.file_id == OutputFile.id,
            OutputCheck.request_id == OutputRequest.id,
            OutputCheck.policy_sha256 == bindparam("policy_sha256"),
        )
        # Two levels down, the request would not be correlated on its own: the check would be joined
        # to every request in the table (3 ms a queue read with 170 waiting, on PostgreSQL).
        .correlate(OutputFile, OutputRequest)
        .exists()
    )
    files = select(func.count(OutputFile.id)).where(*current).correlate(OutputRequest).scalar_subquery()
    checked = select(func.count(OutputFile.id)).where(*current, verdict).correlate(OutputRequest).scalar_subquery()
    return (
        select(*_QUEUED_COLUMNS, files.label("files"), checked.label("checked"))
        .where(OutputRequest.state.in_(tuple(rules.IN_QUEUE_STATES)))
        .order_by(OutputRequest.last_submitted_at)
    )


_QUEUE = _queue_statement()  # built once: SQLAlchemy keeps its cache key

# This round's reviews of every request in the queue, by claim time: asked by the queue's states, not by
# the list of the requests' ids, whose one bound value per waiting request made a new statement text
# whenever the queue's length changed (rendered every time, never kept prepared).
_QUEUE_REVIEWS = (
    select(OutputReview)
    .join(
        OutputRequest,
        and_(OutputRequest.id == OutputReview.request_id, OutputRequest.round == OutputReview.round),
    )
    .where(OutputRequest.state.in_(tuple(rules.IN_QUEUE_STATES)))
    .order_by(OutputReview.claimed_at)
)


@dataclass
class ReviewPicture:
    """What one person may see of a request's reviews: blind until every required review is in."""

    unblinded: bool
    reviews: list[OutputReview]
    votes: list[OutputVote]
    comments: list[OutputComment]
    decisions: list[OutputDecision]


@dataclass(frozen=True)
class QueueEntry:
    """One row of a checker's queue."""

    req: Any  # a row of ``Queries.queue``: the columns the queue shows and ``can_check`` asks
    status: AutomatedStatus
    reviews: list[OutputReview]


class Queries(OutputsBase):
    def get_for(self, actor: Any, request_id: str) -> tuple[OutputRequest, str]:
        """The request and how the person sees it: "checker" or "team"; anyone else is refused."""
        s = self.session
        req = self._get(s, request_id)
        if perm.can_check(s, actor, req):
            return req, "checker"
        if perm.can_view_as_team(s, actor, req):
            return req, "team"
        with self._tx():
            raise _Denied("output.view", getattr(actor, "id", None), req, "neither checker nor team")
        raise AssertionError("unreachable")  # pragma: no cover

    def review_picture(self, actor: Any, req: OutputRequest, role: str) -> ReviewPicture:
        """Blindness: a checker sees only their own votes and private comments until every required
        review of the round is submitted; the team sees only shared comments and final decisions."""
        s = self.session
        reviews = self._reviewers(s, req)
        done = sum(1 for r in reviews if r.submitted_at is not None)
        unblinded = done >= req.reviews_required
        votes = list(s.scalars(select(OutputVote).where(OutputVote.request_id == req.id)))
        comments = list(
            s.scalars(
                select(OutputComment).where(OutputComment.request_id == req.id).order_by(OutputComment.created_at)
            )
        )
        decisions = list(
            s.scalars(select(OutputDecision).where(OutputDecision.request_id == req.id).order_by(OutputDecision.round))
        )
        if role == "checker":
            if not unblinded:
                votes = [v for v in votes if v.reviewer_id == actor.id]
                comments = [
                    c
                    for c in comments
                    if c.round < req.round
                    or c.author_id == actor.id
                    or c.visibility == rules.SHARED
                    and c.author_id not in {r.reviewer_id for r in reviews}
                ]
        else:
            # The team sees what checkers asked to change once a round is decided, never who voted how.
            decided_rounds = {d.round for d in decisions}
            votes = [v for v in votes if v.round in decided_rounds and v.vote == rules.VOTE_CHANGES]
            comments = [c for c in comments if c.visibility == rules.SHARED]
            reviews = []
        return ReviewPicture(unblinded, reviews, votes, comments, decisions)

    def queue(self) -> list[Any]:
        """The requests waiting for checkers, oldest first, as rows of ``_QUEUED_COLUMNS`` with two
        counts: ``files`` (current files) and ``checked`` (of those, the ones with a verdict under the
        current policy). One statement, and no ORM object per request or per file."""
        return list(self.session.execute(_QUEUE, {"policy_sha256": self.policy.sha256}))

    def queue_for(self, actor: Any) -> list[QueueEntry]:
        """The queue as ``actor`` may check it, oldest first, with each request's automated status and
        this round's reviews: the same ``can_check`` answer per request, with the teams, checks, jobs and
        reviews each loaded once for the whole list rather than once per request. A page of it is
        ``entries`` of a slice of ``checkable``."""
        return self.entries(self.checkable(actor))

    def checkable(self, actor: Any) -> list[Any]:
        """The waiting requests ``actor`` may check, oldest first, as rows of the queue statement.

        Which requests a checker may check depends on teams past and present, so the filter runs here on
        the rows, before any page is taken: a page never counts, and never shows, a request its reader
        may not check."""
        s = self.session
        waiting = self.queue()
        teams = perm.teams_of(s, {r.project_id for r in waiting}, include_former=True)
        return [r for r in waiting if perm.can_check(s, actor, r, teams=teams)]

    def entries(self, rows: list[Any]) -> list[QueueEntry]:
        """Queue rows with their automated status and this round's reviews."""
        s = self.session
        statuses = queued_statuses(s, rows, self.policy.sha256)
        reviews: dict[str, list[OutputReview]] = {r.id: [] for r in rows}
        if reviews:
            for review in s.scalars(_QUEUE_REVIEWS):
                if review.request_id in reviews:
                    reviews[review.request_id].append(review)
        return [QueueEntry(r, statuses[r.id], reviews[r.id]) for r in rows]

    def requests_of(self, actor: Any, *, offset: int = 0, limit: int | None = None) -> tuple[list[OutputRequest], int]:
        """The requests of ``actor``'s projects (and their own), newest first, and how many there are in
        all: ``offset`` and ``limit`` take one page of them, counted in the same statement."""
        from projects.models import ProjectMember

        projects = select(ProjectMember.project_id).where(
            ProjectMember.user_id == actor.id, ProjectMember.removed_at.is_(None)
        )
        mine = (
            (OutputRequest.author_id == actor.id)
            | OutputRequest.project_id.in_(projects)
            | OutputRequest.project_id.in_(select(Project.id).where(Project.pi_id == actor.id))
        )
        # The list shows each request's title, state and date: its groups and files (two statements
        # over everything the person ever submitted) are left until something asks for them.
        stmt = (
            select(OutputRequest, func.count().over().label("total"))
            .options(lazyload(OutputRequest.groups), lazyload(OutputRequest.files))
            .where(mine)
            .order_by(OutputRequest.created_at.desc(), OutputRequest.id.desc())
            .offset(offset)
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        rows = self.session.execute(stmt).all()
        if rows:
            return [r for r, _ in rows], int(rows[0].total)
        if not offset:
            return [], 0
        # A page past the end: no row to carry the count, so it is asked for by itself.
        total = self.session.scalar(select(func.count()).select_from(OutputRequest).where(mine))
        return [], int(total or 0)

    def workload(self) -> dict[str, int]:
        """Open reviews (claimed, not yet submitted) per checker id."""
        rows = self.session.execute(
            select(OutputReview.reviewer_id, func.count())
            .join(OutputRequest, OutputRequest.id == OutputReview.request_id)
            .where(
                OutputReview.submitted_at.is_(None),
                OutputReview.round == OutputRequest.round,
                OutputRequest.state.in_(tuple(rules.IN_QUEUE_STATES)),
            )
            .group_by(OutputReview.reviewer_id)
        )
        return {uid: int(n) for uid, n in rows}

    def checks_of(self, req: OutputRequest) -> dict[str, OutputCheck]:
        return _checks_by_file(self.session, req)
