"""The use cases of the projects domain, one transaction each.

Every public method of ``Projects`` checks permission (``projects.permissions``) and policy
(``projects.rules``), changes state, writes its audit event and any notification in the same
transaction, and commits — or raises an exception whose message is safe to show and changes
nothing. A refusal for lack of permission is itself audited. Audit details hold ids and codes only.

Other packages read a project's approved data through ``approved_columns`` and ``approved_datasets``
and ask the access gate (``projects.gate``) before touching data.

``Projects`` is the one service object; its use cases live one module each — ``catalogue``,
``applications``, ``committee`` (review, decision, opt-out exemptions), ``lifecycle`` and
``agreements`` (and training) — on the plumbing in ``kernel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from projects import permissions as perm
from projects.agreements import AgreementsAndTraining
from projects.applications import Applications
from projects.catalogue import Catalogue
from projects.committee import Committee
from projects.kernel import (  # noqa: F401 - other packages import these from here
    APPLICATION_FIELDS,
    ApprovedDataset,
    IncompleteApplication,
    NotFound,
    ProjectError,
    ProjectPermissionDenied,
    agreement_hash,
    approved_columns,
    approved_datasets,
    approved_datasets_of,
    project_optout_exemptions,
)
from projects.lifecycle import Lifecycle
from projects.models import Project, ProjectMember
from projects.rules import ACTIVE, APPROVED, IN_REVIEW, SUBMITTED, SUSPENDED
from projects.rules import RuleViolation as RuleViolation  # re-exported


@dataclass
class Projects(Catalogue, Applications, Committee, Lifecycle, AgreementsAndTraining):
    """Every use case of the projects domain, on one session and audit log."""

    # --- reading ----------------------------------------------------------------------------------

    def get_project(self, actor: Any, project_id: str) -> Project:
        """The project, if this person may see it (refusals are audited)."""
        with self._tx() as s:
            project = self._project(s, project_id)
            self._allow(perm.can_view_project(actor, project), "project.view", actor, project)
        return project

    def projects_of(self, user_id: str) -> list[Project]:
        return list(
            self.session.scalars(
                select(Project)
                .join(ProjectMember)
                .where(ProjectMember.user_id == user_id, ProjectMember.removed_at.is_(None))
                .order_by(Project.updated_at.desc())
            )
        )

    def review_queue(self) -> list[Project]:
        """Applications waiting for the committee, oldest first (their age is how long they have waited)."""
        return list(
            self.session.scalars(
                select(Project).where(Project.state.in_((SUBMITTED, IN_REVIEW))).order_by(Project.state_changed_at)
            )
        )

    def governed_projects(self) -> list[Project]:
        return list(
            self.session.scalars(
                select(Project).where(Project.state.in_((APPROVED, ACTIVE, SUSPENDED))).order_by(Project.end_date)
            )
        )
