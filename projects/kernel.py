"""Plumbing shared by the projects use cases: the service's errors, the limits of its fields, what
other packages read of a project's approved data, and ``ProjectsKernel`` — one transaction per call,
permission and rule refusals audited, audit events and notifications. The use cases are in
``catalogue``, ``applications``, ``committee``, ``lifecycle`` and ``agreements``; ``services.Projects``
combines them."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, select
from sqlalchemy.orm import Session

from projects.models import (
    ApprovedColumn,
    Dataset,
    DatasetColumn,
    OptOutExemption,
    Project,
)
from projects.rules import (
    ProjectPolicy,
    RuleViolation,
    check_transition,
)
from tre.core.audit import DENIED, AuditLog
from tre.core.db import transaction, utcnow
from tre.core.identity import UserRole
from tre.core.notifications import notify_users
from tre.core.permissions import ROLE_PERMISSIONS, Permission

ProjectError = RuleViolation


class ProjectPermissionDenied(ProjectError):
    pass


class NotFound(ProjectError):
    pass


class IncompleteApplication(ProjectError):
    """Submission refused; ``problems`` lists precisely what is missing."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("The application is not complete: " + "; ".join(problems))


class _Denied(Exception):
    def __init__(self, action: str, actor_id: str | None, project_id: str | None) -> None:
        self.action, self.actor_id, self.project_id = action, actor_id, project_id


APPLICATION_FIELDS: tuple[str, ...] = (
    "title",
    "lay_summary",
    "scientific_purpose",
    "public_benefit",
    "legal_basis",
    "ethics_reference",
    "funder",
    "start_date",
    "end_date",
)
_TEXT_LIMITS = {"title": 300, "ethics_reference": 200, "funder": 200}
# Shown on one line, in mail subjects among other places: no line breaks or control characters.
_SINGLE_LINE_FIELDS = frozenset(_TEXT_LIMITS)
_LONG_TEXT_LIMIT = 20_000
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def agreement_hash(title: str, body: str) -> str:
    return hashlib.sha256(f"{title}\n\n{body}".encode()).hexdigest()


def _norm_name(name: str) -> str:
    return " ".join((name or "").split()).casefold()


@dataclass(frozen=True)
class ApprovedDataset:
    """One dataset a project may receive, with THE approved columns in the dataset's order."""

    dataset_id: str
    name: str
    source_kind: str
    source_location: str
    schema_spec: dict[str, Any]
    columns: list[str] = field(default_factory=list)


def approved_datasets(session: Session, project_id: str) -> list[ApprovedDataset]:
    return approved_datasets_of(session, [project_id]).get(project_id, [])


def approved_datasets_of(session: Session, project_ids: list[str]) -> dict[str, list[ApprovedDataset]]:
    """``approved_datasets`` of several projects in one statement (a list of projects shows them all)."""
    if not project_ids:
        return {}
    rows = session.execute(
        select(ApprovedColumn.project_id, ApprovedColumn.dataset_id, ApprovedColumn.column_name)
        .where(ApprovedColumn.project_id.in_(project_ids))
    ).all()
    by_project: dict[str, dict[str, set[str]]] = {}
    for project_id, dataset_id, column in rows:
        by_project.setdefault(project_id, {}).setdefault(dataset_id, set()).add(column)
    out: dict[str, list[ApprovedDataset]] = {}
    for project_id, by_dataset in by_project.items():
        result = []
        for dataset_id, columns in by_dataset.items():
            ds = session.get(Dataset, dataset_id)
            assert ds is not None
            ordered = [c for c in ds.column_names if c in columns]
            result.append(
                ApprovedDataset(ds.id, ds.name, ds.source_kind, ds.source_location, dict(ds.schema_spec), ordered)
            )
        out[project_id] = sorted(result, key=lambda d: d.name)
    return out


def approved_columns(session: Session, project_id: str) -> dict[str, list[str]]:
    """THE approved column list per dataset name, e.g. ``{"admissions": ["nhs_number", ...]}``.

    Empty until the chair approves; extracts, workspaces and output checks must use exactly this.
    """
    return approved_columns_of(session, [project_id]).get(project_id, {})


# Each approved column with its dataset's name and its place among the dataset's columns; a name the
# dataset no longer has comes with no place (and, as in ``approved_datasets_of``, is left out).
_APPROVED_COLUMNS = (
    select(ApprovedColumn.project_id, Dataset.name, DatasetColumn.name)
    .join(Dataset, Dataset.id == ApprovedColumn.dataset_id)
    .outerjoin(
        DatasetColumn,
        and_(DatasetColumn.dataset_id == ApprovedColumn.dataset_id, DatasetColumn.name == ApprovedColumn.column_name),
    )
    .where(ApprovedColumn.project_id.in_(bindparam("ids", expanding=True)))
    .order_by(DatasetColumn.position)
)


def approved_columns_of(session: Session, project_ids: list[str]) -> dict[str, dict[str, list[str]]]:
    """``approved_columns`` of several projects, read as columns in one statement: the same answer as
    ``approved_datasets_of`` gives by name, without loading each dataset and all its columns."""
    if not project_ids:
        return {}
    found: dict[str, dict[str, list[str]]] = {}
    for project_id, dataset_name, column in session.execute(_APPROVED_COLUMNS, {"ids": list(project_ids)}):
        columns = found.setdefault(project_id, {}).setdefault(dataset_name, [])
        if column is not None:
            columns.append(column)
    # Datasets in the order of their names as Python sorts them (not the database's collation).
    return {p: {name: by_name[name] for name in sorted(by_name)} for p, by_name in found.items()}


def project_optout_exemptions(session: Session, project_id: str) -> list[OptOutExemption]:
    """THE opt-out lists the committee exempted this project from, with the basis it recorded."""
    return list(
        session.scalars(
            select(OptOutExemption).where(OptOutExemption.project_id == project_id).order_by(OptOutExemption.list_name)
        )
    )


@dataclass
class ProjectsKernel:
    """The state and plumbing every use case shares."""

    session: Session
    audit: AuditLog
    policy: ProjectPolicy = field(default_factory=ProjectPolicy)
    request_id: str | None = None

    # --- plumbing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Session]:
        """One service call's transaction. A permission refusal, and a rule's refusal after the
        permission check passed (e.g. a vote on an active project), rolls it back and is then
        audited on its own, so every refusal leaves one event (the message is the reason given)."""
        self._attempt: tuple[str, str | None, str | None] | None = None
        try:
            with transaction(self.session) as s:
                yield s
        except _Denied as denied:
            self._record_refusal(denied.action, denied.actor_id, denied.project_id, "not permitted")
            raise ProjectPermissionDenied("You do not have permission to do that") from None
        except RuleViolation as refusal:
            if self._attempt is not None and not isinstance(refusal, ProjectPermissionDenied):
                self._record_refusal(*self._attempt, str(refusal)[:500])
            raise

    def _record_refusal(self, action: str, actor_id: str | None, project_id: str | None, reason: str) -> None:
        with transaction(self.session) as s:
            self.audit.record(
                s,
                action,
                actor_id=actor_id,
                outcome=DENIED,
                target_type="project" if project_id else None,
                target_id=project_id,
                project_id=project_id,
                request_id=self.request_id,
                detail={"reason": reason},
            )

    def _allow(self, ok: bool, action: str, actor: Any, project: Project | None = None) -> None:
        actor_id, project_id = getattr(actor, "id", None), project.id if project else None
        if not ok:
            raise _Denied(action, actor_id, project_id)
        self._attempt = (action, actor_id, project_id)  # a rule refusing from here on is audited as this

    def _record(self, s: Session, action: str, actor: Any, project: Project | None, **detail: Any) -> None:
        self.audit.record(
            s,
            action,
            actor_id=getattr(actor, "id", None),
            target_type="project" if project else None,
            target_id=project.id if project else None,
            project_id=project.id if project else None,
            request_id=self.request_id,
            detail=detail,
        )

    @staticmethod
    def _project(s: Session, project_id: str, *, lock: bool = False) -> Project:
        project = s.get(Project, project_id, with_for_update=lock) if project_id else None
        if project is None:
            raise NotFound("No such project")
        return project

    def _move(self, s: Session, project: Project, target: str, actor: Any, action: str, **detail: Any) -> None:
        before = project.state
        check_transition(before, target)
        project.state = target
        project.state_changed_at = utcnow()
        self._record(s, action, actor, project, **{"from": before, "to": target}, **detail)

    def _notify_users(
        self,
        s: Session,
        user_ids: Sequence[str],
        subject: str,
        body: str,
        topic: str,
        dedupe: str | None = None,
    ) -> None:
        notify_users(s, user_ids, subject=subject, body=body, topic=topic, dedupe_key=dedupe or None)

    @staticmethod
    def _holders_of(s: Session, permission: Permission) -> list[str]:
        roles = [role.value for role, granted in ROLE_PERMISSIONS.items() if permission in granted]
        return list(s.scalars(select(UserRole.user_id).where(UserRole.role.in_(roles)).distinct()))
