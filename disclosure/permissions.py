"""*May this person do it?* Answers about output requests, built on ``tre.core.permissions``.

``can_*`` functions return a bool and change nothing; the services turn a ``False`` into an audited
refusal. Whether it may happen *now* (the request's state) is for ``disclosure.rules``; whether the
author may touch the project's data at all is for the access gate (``projects.gate``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from projects.models import Project, ProjectMember
from tre.core.permissions import Permission, has_permission


def team_ids(session: Session, project_id: str, *, include_former: bool = False) -> set[str]:
    """The project's PI and members (current ones, or everyone who ever was one)."""
    return teams_of(session, [project_id], include_former=include_former)[project_id]


def teams_of(session: Session, project_ids: Iterable[str], *, include_former: bool = False) -> dict[str, set[str]]:
    """``team_ids`` for several projects in two statements, whatever their number (a list page's lookups)."""
    teams: dict[str, set[str]] = {project_id: set() for project_id in project_ids}
    if not teams:
        return teams
    query = select(ProjectMember.project_id, ProjectMember.user_id).where(ProjectMember.project_id.in_(list(teams)))
    if not include_former:
        query = query.where(ProjectMember.removed_at.is_(None))
    for project_id, user_id in session.execute(query):
        teams[project_id].add(user_id)
    for project_id, pi in session.execute(select(Project.id, Project.pi_id).where(Project.id.in_(list(teams)))):
        if pi:
            teams[project_id].add(pi)
    return teams


def can_submit(user: Any) -> bool:
    return has_permission(user, Permission.OUTPUT_SUBMIT)


def is_team_member(session: Session, user: Any, project_id: str) -> bool:
    return user is not None and user.id in team_ids(session, project_id)


def can_edit(user: Any, request: Any) -> bool:
    """Only the author changes a request (files, groups, submission, withdrawal)."""
    return can_submit(user) and user.id == request.author_id


def can_view_as_team(session: Session, user: Any, request: Any) -> bool:
    """The author and the project's current team see the request, its verdicts and shared comments."""
    if user is None or not user.is_active:
        return False
    return user.id == request.author_id or is_team_member(session, user, request.project_id)


def can_check(session: Session, user: Any, request: Any, *, teams: dict[str, set[str]] | None = None) -> bool:
    """An output checker who is neither the author nor (now or ever) on the project's team.

    ``teams``, when given, is ``teams_of(session, ..., include_former=True)`` loaded once for a list of
    requests; it changes where the team comes from, never the answer.
    """
    if not has_permission(user, Permission.OUTPUT_REVIEW):
        return False
    if user.id == request.author_id:
        return False
    if teams is None or request.project_id not in teams:
        team = team_ids(session, request.project_id, include_former=True)
    else:
        team = teams[request.project_id]
    return user.id not in team


def can_download(session: Session, user: Any, request: Any) -> bool:
    """Only the project's current team downloads a released bundle (researchers, outside the workspace)."""
    return can_submit(user) and is_team_member(session, user, request.project_id)
