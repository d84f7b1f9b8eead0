"""What waits for each person: one read per role, for the home page.

Each function answers for one person and one of their roles, in a constant number of SQL statements
whatever the number of items (a list is loaded, never looked up row by row), and shows only what the
person may act on: a DAC member never sees an application they are recused from, a checker never
sees a request they wrote or of a project whose team they are or were on. Nothing here changes
state; the pages the items link to ask the services again before anything is done.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, select
from sqlalchemy.orm import Session, lazyload

from disclosure import permissions as output_perm
from disclosure import rules as output_rules
from disclosure.models import OutputRequest, OutputReview
from projects import rules as project_rules
from projects.models import (
    AgreementSignature,
    AgreementTemplate,
    ApplicationVersion,
    ExtensionRequest,
    Project,
    ProjectMember,
    ReviewAssignment,
    TrainingRecord,
    Vote,
)
from projects.rules import SAFE_RESEARCHER_COURSE
from pseudonymisation.models import Extract
from tre.core.identity import User
from tre.core.permissions import ROLE_LABELS, Permission, Role, has_permission
from tre.core.roles import PENDING, RoleGrant

# The home page shows a project's id, title and state: its team and dataset requests (loaded with
# every project by default, three more statements) are left until something asks for them.
_PROJECT_ALONE = (lazyload(Project.members), lazyload(Project.dataset_requests))

# Project states in which the team still has something to do or wait for.
_OPEN_PROJECT_STATES = (
    project_rules.DRAFT,
    project_rules.SUBMITTED,
    project_rules.IN_REVIEW,
    project_rules.CHANGES_REQUESTED,
    project_rules.APPROVED,
    project_rules.ACTIVE,
    project_rules.SUSPENDED,
)


@dataclass(frozen=True)
class ResearchProject:
    """One of a researcher's projects and what it waits for (empty when nothing)."""

    # The project's columns the section shows (id, title, state, state_changed_at), as a row.
    project: Any
    waits_for: list[str]
    since: dt.datetime  # when the project entered its state
    returned_outputs: int


@dataclass(frozen=True)
class Application:
    """An application waiting for a committee member or the chair."""

    project: Project
    version: int
    since: dt.datetime
    votes: int = 0


@dataclass(frozen=True)
class CheckerItem:
    # The request's columns the list shows (id, title, state, round, author_id, project_id,
    # last_submitted_at, state_changed_at), as a row rather than a loaded OutputRequest.
    request: Any
    project_title: str
    submitted_at: dt.datetime
    held: bool  # the checker holds a review place of the current round


@dataclass(frozen=True)
class ExtractItem:
    extract: Extract
    project_title: str


@dataclass(frozen=True)
class AccountItem:
    user: User
    what: str  # what is waiting, in words
    since: dt.datetime
    grant_id: str | None = None


@dataclass
class Worklist:
    """The home page's sections: None when the person does not hold the role, else its items."""

    researcher: list[ResearchProject] | None = None
    reviewer: list[Application] | None = None
    chair_decisions: list[Application] | None = None
    chair_assignments: list[Application] | None = None
    chair_extensions: list[tuple[Project, ExtensionRequest]] | None = None
    checker: list[CheckerItem] | None = None
    checker_total: int = 0  # every waiting request the checker may check; ``checker`` shows a shortlist
    custodian: list[ExtractItem] | None = None
    administrator: list[AccountItem] | None = None
    counts: dict[str, int] = field(default_factory=dict)


def for_person(session: Session, user: Any, *, now: dt.datetime, quorum: int) -> Worklist:
    """Every section this person's roles give them."""
    out = Worklist()
    if has_permission(user, Permission.PROJECT_APPLY):
        out.researcher = researcher_projects(session, user, today=now.date())
    if has_permission(user, Permission.APPLICATION_REVIEW):
        out.reviewer = awaiting_vote(session, user)
    if has_permission(user, Permission.APPLICATION_DECIDE):
        out.chair_decisions, out.chair_assignments = chair_due(session, user, quorum=quorum)
        out.chair_extensions = pending_extensions(session)
    if has_permission(user, Permission.OUTPUT_REVIEW):
        waiting = awaiting_check(session, user)
        out.checker, out.checker_total = checker_shortlist(waiting, HOME_CHECKER_ITEMS), len(waiting)
    if has_permission(user, Permission.EXTRACT_MANAGE):
        out.custodian = extracts_to_watch(session)
    if has_permission(user, Permission.USER_MANAGE):
        out.administrator = accounts_awaiting(session, user, now=now)
    return out


# Built once (its cache key is kept with it): every researcher's home page runs it. One statement
# reads the columns the section shows and, per project, what it waits for: the count of returned
# output requests, whether the person signed the current agreement (the highest version, with its
# content hash), and the person's latest safe researcher training expiry. It replaced loading each
# project as an object plus four statements (the current template with its text, the signatures, the
# training, the counts), most of the home page's CPU for a researcher (issue 26).
_CURRENT_TEMPLATE_ID = (
    select(AgreementTemplate.id).order_by(AgreementTemplate.version.desc()).limit(1).scalar_subquery()
)
_RESEARCHER_PROJECTS = (
    select(
        Project.id,
        Project.title,
        Project.state,
        Project.state_changed_at,
        select(func.count())
        .select_from(OutputRequest)
        .where(OutputRequest.project_id == Project.id, OutputRequest.state == output_rules.RETURNED)
        .correlate(Project)
        .scalar_subquery()
        .label("returned"),
        exists()
        .where(
            AgreementSignature.user_id == bindparam("user_id"),
            AgreementSignature.project_id == Project.id,
            AgreementSignature.template_id == AgreementTemplate.id,
            AgreementSignature.content_hash == AgreementTemplate.content_hash,
            AgreementTemplate.id == _CURRENT_TEMPLATE_ID,
        )
        .correlate(Project)
        .label("signed"),
        select(func.max(TrainingRecord.expires_on))
        .where(TrainingRecord.user_id == bindparam("user_id"), TrainingRecord.course == SAFE_RESEARCHER_COURSE)
        .scalar_subquery()
        .label("trained_until"),
    )
    .join(ProjectMember, ProjectMember.project_id == Project.id)
    .where(
        ProjectMember.user_id == bindparam("user_id"),
        ProjectMember.removed_at.is_(None),
        Project.state.in_(_OPEN_PROJECT_STATES),
    )
    .order_by(Project.state_changed_at)
)


def researcher_projects(session: Session, user: Any, *, today: dt.date) -> list[ResearchProject]:
    """The person's open projects (as a current member) and what each waits for: one statement."""
    rows = []
    for p in session.execute(_RESEARCHER_PROJECTS, {"user_id": user.id}):
        trained = p.trained_until is not None and p.trained_until >= today
        rows.append(
            ResearchProject(p, _waits_for(p, trained=trained, signed=bool(p.signed)), p.state_changed_at, p.returned)
        )
    return rows


def _waits_for(p: Any, *, trained: bool, signed: bool) -> list[str]:
    waits: list[str] = []
    if p.state in (project_rules.DRAFT, project_rules.CHANGES_REQUESTED):
        waits.append("your application to be completed and submitted")
    elif p.state in (project_rules.SUBMITTED, project_rules.IN_REVIEW):
        waits.append("the data access committee's decision")
    elif p.state == project_rules.SUSPENDED:
        waits.append("the committee to lift the suspension")
    if p.state in (project_rules.APPROVED, project_rules.ACTIVE):
        if not trained:
            waits.append("your safe researcher training (none current on record)")
        if not signed:
            waits.append("your signature on the current data access agreement")
        if p.state == project_rules.APPROVED:
            waits.append("the project to be activated")
    return waits


def _current_versions(session: Session, states: Iterable[str]) -> Any:
    """Projects in ``states`` joined to their current application version."""
    return (
        select(Project, ApplicationVersion)
        .options(*_PROJECT_ALONE)
        .join(
            ApplicationVersion,
            and_(ApplicationVersion.project_id == Project.id, ApplicationVersion.number == Project.current_version),
        )
        .where(Project.state.in_(tuple(states)))
        .order_by(Project.state_changed_at)
    )


def awaiting_vote(session: Session, user: Any) -> list[Application]:
    """Applications in review whose current version this member is assigned to, without a declared
    conflict, and has not yet voted on: one statement."""
    voted = select(Vote.id).where(Vote.version_id == ApplicationVersion.id, Vote.reviewer_id == user.id)
    query = (
        _current_versions(session, (project_rules.IN_REVIEW,))
        .add_columns(ReviewAssignment.assigned_at)
        .join(ReviewAssignment, ReviewAssignment.version_id == ApplicationVersion.id)
        .where(
            ReviewAssignment.reviewer_id == user.id,
            ReviewAssignment.conflict_declared_at.is_(None),
            ~voted.exists(),
        )
    )
    return [Application(p, v.number, assigned_at) for p, v, assigned_at in session.execute(query)]


def chair_due(session: Session, user: Any, *, quorum: int) -> tuple[list[Application], list[Application]]:
    """The chair's decisions due (in review, with the quorum of counted votes) and the submitted
    applications waiting for reviewers; never one the chair is recused from. Three statements."""
    pairs = list(session.execute(_current_versions(session, (project_rules.SUBMITTED, project_rules.IN_REVIEW))))
    if not pairs:
        return [], []
    version_ids = [v.id for _, v in pairs]
    conflicted: dict[str, set[str]] = {vid: set() for vid in version_ids}
    for vid, reviewer in session.execute(
        select(ReviewAssignment.version_id, ReviewAssignment.reviewer_id).where(
            ReviewAssignment.version_id.in_(version_ids), ReviewAssignment.conflict_declared_at.is_not(None)
        )
    ):
        conflicted[vid].add(reviewer)
    votes: dict[str, list[Vote]] = {vid: [] for vid in version_ids}
    for vote in session.scalars(select(Vote).where(Vote.version_id.in_(version_ids))):
        votes[vote.version_id].append(vote)
    decisions, assignments = [], []
    for project, version in pairs:
        if user.id in conflicted[version.id]:
            continue  # recused: someone else decides
        if project.state == project_rules.SUBMITTED:
            assignments.append(Application(project, version.number, project.state_changed_at))
            continue
        counted = project_rules.counted_votes(votes[version.id], conflicted[version.id], decider_id=user.id)
        if len(counted) >= quorum:
            decisions.append(Application(project, version.number, project.state_changed_at, len(counted)))
    return decisions, assignments


def pending_extensions(session: Session) -> list[tuple[Project, ExtensionRequest]]:
    """Extension requests waiting for the chair's decision: one statement."""
    rows = session.execute(
        select(Project, ExtensionRequest)
        .options(*_PROJECT_ALONE)
        .join(ExtensionRequest, ExtensionRequest.project_id == Project.id)
        .where(ExtensionRequest.outcome.is_(None))
        .order_by(ExtensionRequest.requested_at)
    )
    return [(p, e) for p, e in rows]


# What the checker's list shows of each waiting request, and what ``can_check`` asks of it: columns,
# not ORM objects. The queue grows with the submissions waiting, and building an object (with its
# identity and state) per row was most of this section's CPU under the load benchmark.
_QUEUED_REQUEST_COLUMNS = (
    OutputRequest.id,
    OutputRequest.title,
    OutputRequest.state,
    OutputRequest.round,
    OutputRequest.author_id,
    OutputRequest.project_id,
    OutputRequest.last_submitted_at,
    OutputRequest.state_changed_at,
)
_AWAITING_CHECK = (
    select(*_QUEUED_REQUEST_COLUMNS, Project.title.label("project_title"))
    .join(Project, Project.id == OutputRequest.project_id)
    .where(OutputRequest.state.in_(tuple(output_rules.IN_QUEUE_STATES)))
    .order_by(OutputRequest.last_submitted_at)
)

# The places a checker holds on requests in the queue. Asked by the queue's states rather than by the
# list of the requests' ids: the list (one bound value per waiting request) made a new statement text
# whenever the queue's length changed, so it was rendered every time and never stayed prepared.
_HELD_IN_QUEUE = (
    select(OutputReview.request_id, OutputReview.round)
    .join(OutputRequest, OutputRequest.id == OutputReview.request_id)
    .where(
        OutputReview.reviewer_id == bindparam("reviewer_id"),
        OutputRequest.state.in_(tuple(output_rules.IN_QUEUE_STATES)),
    )
)


def awaiting_check(session: Session, user: Any) -> list[CheckerItem]:
    """Output requests in the queue this checker may check (never their own, never of a project whose
    team they are or were on), oldest submission first, marking those they hold a place on. Four
    statements."""
    rows = list(session.execute(_AWAITING_CHECK))
    if not rows:
        return []
    teams = output_perm.teams_of(session, {r.project_id for r in rows}, include_former=True)
    mine = [r for r in rows if output_perm.can_check(session, user, r, teams=teams)]
    mine_ids = {r.id for r in mine}
    held = {
        (request_id, round_)
        for request_id, round_ in session.execute(_HELD_IN_QUEUE, {"reviewer_id": user.id})
        if request_id in mine_ids
    }
    return [
        CheckerItem(r, r.project_title, r.last_submitted_at or r.state_changed_at, (r.id, r.round) in held)
        for r in mine
    ]


# The home page lists at most this many of the requests a checker may check (the queue page has them
# all, a page at a time): with hundreds waiting, listing every one made each checker's home page dearer
# with every submission, and the oldest few are the ones to act on.
HOME_CHECKER_ITEMS = 10


def checker_shortlist(items: list[CheckerItem], limit: int) -> list[CheckerItem]:
    """Every request the checker holds a place on, then the oldest others, ``limit`` in all (more only
    when they hold more), in the queue's order: oldest submission first."""
    room = max(0, limit - sum(1 for item in items if item.held))
    kept: list[CheckerItem] = []
    for item in items:
        if item.held:
            kept.append(item)
        elif room:
            kept.append(item)
            room -= 1
    return kept


def extracts_to_watch(session: Session) -> list[ExtractItem]:
    """Each project's latest extract when it is queued, building or failed: one statement."""
    latest = (
        select(func.max(Extract.requested_at))
        .where(Extract.project_id == Project.id)
        .correlate(Project)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Extract, Project.title)
        .join(Project, Project.id == Extract.project_id)
        .where(Extract.requested_at == latest, Extract.state.in_(("queued", "running", "failed")))
        .order_by(Extract.requested_at)
    )
    return [ExtractItem(e, title) for e, title in rows]


def _role_label(name: str) -> str:
    try:
        return ROLE_LABELS[Role(name)]
    except ValueError:
        return name


def accounts_awaiting(session: Session, user: Any, *, now: dt.datetime) -> list[AccountItem]:
    """Role grants this administrator may approve (not asked by them, not for them) and accounts
    locked after failed sign-ins: two statements."""
    items = [
        AccountItem(
            person,
            f"a second administrator to approve the role \u201c{_role_label(grant.role)}\u201d",
            grant.requested_at,
            grant.id,
        )
        for grant, person in session.execute(
            select(RoleGrant, User)
            .join(User, User.id == RoleGrant.user_id)
            .where(RoleGrant.state == PENDING, RoleGrant.requested_by != user.id, RoleGrant.user_id != user.id)
            .order_by(RoleGrant.requested_at)
        )
    ]
    for person in session.scalars(
        select(User).where(User.locked_until.is_not(None), User.locked_until > now).order_by(User.display_name)
    ):
        assert person.locked_until is not None
        items.append(AccountItem(person, "locked after failed sign-ins", person.locked_until))
    return items
