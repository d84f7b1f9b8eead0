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

from sqlalchemy import bindparam, select
from sqlalchemy.orm import lazyload, selectinload

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
    approved_columns_of,
    approved_datasets,
    approved_datasets_of,
    project_optout_exemptions,
)
from projects.lifecycle import Lifecycle
from projects.models import Dataset, DatasetRequest, Project, ProjectMember
from projects.rules import ACTIVE, APPROVED, IN_REVIEW, SUBMITTED, SUSPENDED
from projects.rules import RuleViolation as RuleViolation  # re-exported

# The reads of a project and of a person's projects, built once (see ``get_project``, ``projects_of``).
_REQUESTS_ON_USE = [lazyload(Project.dataset_requests)]
# As above, for a caller that shows each request's dataset by name only: the datasets' columns are not
# read with them (one statement fewer; each dataset would read its own on use).
_REQUESTS_ON_USE_WITHOUT_COLUMNS = [
    lazyload(Project.dataset_requests).joinedload(DatasetRequest.dataset).lazyload(Dataset.columns)
]
_PROJECTS_OF = (
    select(Project)
    # Each request's dataset comes for its name; nobody listing projects shows the datasets' columns
    # (the approved ones are read as columns, ``approved_columns_of``), so reading them is refused.
    .options(selectinload(Project.dataset_requests).joinedload(DatasetRequest.dataset).raiseload(Dataset.columns))
    .join(ProjectMember)
    .where(ProjectMember.user_id == bindparam("user_id"), ProjectMember.removed_at.is_(None))
    .order_by(Project.updated_at.desc())
)
_REVIEW_QUEUE = (
    select(Project)
    # As ``_PROJECTS_OF``: the API names each requested dataset and never shows its columns (ADR 0061).
    .options(selectinload(Project.dataset_requests).joinedload(DatasetRequest.dataset).raiseload(Dataset.columns))
    .where(Project.state.in_((SUBMITTED, IN_REVIEW)))
    .order_by(Project.state_changed_at)
)
_PROJECT_ROWS_OF = (
    select(Project.id, Project.title, Project.state, Project.end_date)
    .join(ProjectMember)
    .where(ProjectMember.user_id == bindparam("user_id"), ProjectMember.removed_at.is_(None))
    .order_by(Project.updated_at.desc())
)


@dataclass
class Projects(Catalogue, Applications, Committee, Lifecycle, AgreementsAndTraining):
    """Every use case of the projects domain, on one session and audit log."""

    # --- reading ----------------------------------------------------------------------------------

    def get_project(self, actor: Any, project_id: str, *, dataset_columns: bool = True) -> Project:
        """The project, if this person may see it (refusals are audited).

        Its team comes with it (the permission check reads it); its dataset requests are read when a
        caller first uses them: the review pages, the agreement page and most API reads of a project
        never do, and loading them with their datasets and columns cost two statements each time.
        ``dataset_columns=False`` is for a caller that names the requested datasets without their
        columns (the API's answer): the requests then come with their datasets in one statement."""
        options = _REQUESTS_ON_USE if dataset_columns else _REQUESTS_ON_USE_WITHOUT_COLUMNS
        with self._tx() as s:
            project = s.get(Project, project_id, options=options) if project_id else None
            if project is None:
                raise NotFound("No such project")
            self._allow(perm.can_view_project(actor, project), "project.view", actor, project)
        return project

    def projects_of(self, user_id: str) -> list[Project]:
        """The person's projects with their teams and dataset requests (with their datasets' names)."""
        return list(self.session.scalars(_PROJECTS_OF, {"user_id": user_id}))

    def project_rows_of(self, user_id: str) -> list[Any]:
        """The id, title, state and end date of each of the person's projects, newest change first: what
        the "My projects" page shows, read as columns in one statement."""
        return list(self.session.execute(_PROJECT_ROWS_OF, {"user_id": user_id}))

    def review_queue(self) -> list[Project]:
        """Applications waiting for the committee, oldest first (their age is how long they have waited)."""
        return list(self.session.scalars(_REVIEW_QUEUE))

    def governed_projects(self) -> list[Project]:
        return list(
            self.session.scalars(
                select(Project).where(Project.state.in_((APPROVED, ACTIVE, SUSPENDED))).order_by(Project.end_date)
            )
        )
