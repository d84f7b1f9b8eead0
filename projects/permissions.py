"""*May this person do it?* Project-level answers built on the site-wide permissions of ``tre.core``.

``can_*`` functions return a bool and change nothing; the services turn a ``False`` into a refusal
that is audited. Whether it may happen *now* (the project's state) is for ``projects.rules``.
"""

from __future__ import annotations

from typing import Any

from projects.models import Project, ReviewAssignment
from tre.core.permissions import Permission, has_permission


def is_active_member(user: Any, project: Project) -> bool:
    return user is not None and any(m.user_id == user.id for m in project.active_members)


def is_pi(user: Any, project: Project) -> bool:
    return user is not None and project.pi_id == user.id


def can_apply(user: Any) -> bool:
    return has_permission(user, Permission.PROJECT_APPLY)


def can_view_project(user: Any, project: Project) -> bool:
    """Members see their project; the committee sees applications; nobody else does."""
    if user is None or not user.is_active:
        return False
    if is_active_member(user, project) or is_pi(user, project):
        return True
    return has_permission(user, Permission.APPLICATION_REVIEW)


def can_edit_application(user: Any, project: Project) -> bool:
    return is_pi(user, project) and has_permission(user, Permission.PROJECT_APPLY)


def can_assign_reviewers(user: Any) -> bool:
    return has_permission(user, Permission.APPLICATION_ASSIGN)


def can_review(user: Any) -> bool:
    return has_permission(user, Permission.APPLICATION_REVIEW)


def can_declare_conflict(user: Any) -> bool:
    """Any committee member may recuse themselves from an application, assigned to it or not."""
    return has_permission(user, Permission.APPLICATION_REVIEW)


def can_withdraw_conflict(user: Any) -> bool:
    """A committee member may withdraw their own declaration (the service reads only theirs); someone
    removed from the committee may not, so their recusal stands."""
    return has_permission(user, Permission.APPLICATION_REVIEW)


def can_vote(user: Any, assignment: ReviewAssignment | None) -> bool:
    """Only an assigned reviewer without a declared conflict of interest votes."""
    return (
        has_permission(user, Permission.APPLICATION_REVIEW)
        and assignment is not None
        and assignment.reviewer_id == user.id
        and not assignment.conflicted
    )


def can_see_votes(user: Any, assignment: ReviewAssignment | None, has_voted: bool) -> bool:
    """The chair sees votes unless conflicted; a reviewer sees them once they have voted themselves
    (so nobody is anchored by others), and a conflicted member never does."""
    if assignment is not None and assignment.conflicted:
        return False
    if has_permission(user, Permission.APPLICATION_DECIDE):
        return True
    return can_vote(user, assignment) and has_voted


def can_decide(user: Any, assignment: ReviewAssignment | None) -> bool:
    if assignment is not None and assignment.conflicted:
        return False
    return has_permission(user, Permission.APPLICATION_DECIDE)


def can_govern(user: Any) -> bool:
    """Suspend, reinstate, close, decide extensions: the committee's chair."""
    return has_permission(user, Permission.APPLICATION_DECIDE)


def can_activate(user: Any, project: Project) -> bool:
    return is_pi(user, project) or has_permission(user, Permission.APPLICATION_DECIDE)


def can_sign(user: Any, project: Project) -> bool:
    return is_active_member(user, project)


def can_manage_training(user: Any) -> bool:
    return has_permission(user, Permission.TRAINING_MANAGE)


def can_publish_agreement(user: Any) -> bool:
    return has_permission(user, Permission.AGREEMENT_MANAGE)


def can_register_dataset(user: Any) -> bool:
    return has_permission(user, Permission.DATASET_MANAGE)


def can_browse_catalogue(user: Any) -> bool:
    return has_permission(user, Permission.CATALOGUE_BROWSE)


def can_exempt_from_optout(user: Any) -> bool:
    """Recording that a legal basis sets aside an opt-out list is the committee chair's decision."""
    return has_permission(user, Permission.OPTOUT_EXEMPT)
