"""Applications: drafts, the team, requested datasets and columns, submission as frozen versions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from projects import permissions as perm
from projects.kernel import (
    _LONG_TEXT_LIMIT,
    _SINGLE_LINE_FIELDS,
    _TEXT_LIMITS,
    APPLICATION_FIELDS,
    IncompleteApplication,
    NotFound,
    ProjectError,
    ProjectsKernel,
)
from projects.models import (
    ApplicationVersion,
    Dataset,
    DatasetRequest,
    Project,
    ProjectMember,
)
from projects.rules import (
    CHANGES_REQUESTED,
    DRAFT,
    EDITABLE_STATES,
    PRINCIPAL_INVESTIGATOR,
    RESEARCHER,
    STATE_LABELS,
    SUBMITTED,
    check_requested_columns,
    check_single_line,
    check_transition,
    missing_for_submission,
)
from tre.core.db import utcnow
from tre.core.identity import User
from tre.core.permissions import Permission


class Applications(ProjectsKernel):
    # --- applications -----------------------------------------------------------------------------

    def create_project(self, actor: Any, title: str) -> Project:
        """Start a draft; the person creating it is its principal investigator."""
        title = (title or "").strip()
        if not title or len(title) > 300:
            raise ProjectError("Enter a project title (300 characters at most)")
        check_single_line("project title", title)
        with self._tx() as s:
            self._allow(perm.can_apply(actor), "project.create", actor)
            project = Project(title=title, pi_id=actor.id, state=DRAFT)
            project.members = [ProjectMember(user_id=actor.id, role=PRINCIPAL_INVESTIGATOR, added_by=actor.id)]
            s.add(project)
            s.flush()
            self._record(s, "project.create", actor, project)
        return project

    def update_application(self, actor: Any, project_id: str, **fields: Any) -> Project:
        """Save any of the application's fields (drafts save incomplete; submission checks)."""
        unknown = set(fields) - set(APPLICATION_FIELDS)
        if unknown:
            raise ProjectError(f"Unknown fields: {', '.join(sorted(unknown))}")
        for key in ("start_date", "end_date"):
            if key in fields and fields[key] is not None and not isinstance(fields[key], dt.date):
                raise ProjectError("Enter dates as real dates")
        for key, value in fields.items():
            if key in ("start_date", "end_date"):
                continue
            value = (value or "").strip() if isinstance(value, str) else ""
            if key == "title" and not value:
                raise ProjectError("Enter a project title")
            if len(value) > _TEXT_LIMITS.get(key, _LONG_TEXT_LIMIT):
                raise ProjectError(f"The {key.replace('_', ' ')} is too long")
            if key in _SINGLE_LINE_FIELDS:
                check_single_line(key.replace("_", " "), value)
            fields[key] = value
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_edit_application(actor, project), "project.update", actor, project)
            if project.state not in EDITABLE_STATES:
                raise ProjectError(
                    f"The application cannot be changed while it is {STATE_LABELS[project.state].lower()}"
                )
            changed = sorted(k for k, v in fields.items() if getattr(project, k) != v)
            for key, value in fields.items():
                setattr(project, key, value)
            project.updated_at = utcnow()
            self._record(s, "project.update", actor, project, fields=changed)
        return project

    def set_dataset_request(
        self, actor: Any, project_id: str, dataset_id: str, columns: Sequence[str], justification: str
    ) -> DatasetRequest:
        """Ask for exactly these columns of a dataset, and say why (data minimisation)."""
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_edit_application(actor, project), "project.request_dataset", actor, project)
            if project.state not in EDITABLE_STATES:
                raise ProjectError("The application cannot be changed now")
            ds = s.get(Dataset, dataset_id) if dataset_id else None
            if ds is None:
                raise NotFound("No such dataset")
            wanted = check_requested_columns(columns, ds.column_names)
            if not wanted:
                raise ProjectError(f"Choose the columns you need from {ds.title}")
            req = s.scalar(
                select(DatasetRequest).where(
                    DatasetRequest.project_id == project.id, DatasetRequest.dataset_id == ds.id
                )
            )
            if req is None:
                req = DatasetRequest(dataset_id=ds.id)
                project.dataset_requests.append(req)
            req.columns = wanted
            req.justification = (justification or "").strip()[:_LONG_TEXT_LIMIT]
            project.updated_at = utcnow()
            self._record(s, "project.request_dataset", actor, project, dataset_id=ds.id, columns=len(wanted))
        return req

    def remove_dataset_request(self, actor: Any, project_id: str, dataset_id: str) -> None:
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_edit_application(actor, project), "project.request_dataset", actor, project)
            if project.state not in EDITABLE_STATES:
                raise ProjectError("The application cannot be changed now")
            s.execute(
                delete(DatasetRequest).where(
                    DatasetRequest.project_id == project.id, DatasetRequest.dataset_id == dataset_id
                )
            )
            s.expire(project, ["dataset_requests"])
            self._record(s, "project.remove_dataset", actor, project, dataset_id=dataset_id)

    def add_member(self, actor: Any, project_id: str, email: str) -> ProjectMember:
        """Add a researcher to the team (while the application can be edited)."""
        email = (email or "").strip().lower()
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_edit_application(actor, project), "project.add_member", actor, project)
            if project.state not in EDITABLE_STATES:
                raise ProjectError("The team can only change while the application can be edited")
            user = s.scalar(select(User).where(User.email == email))
            if user is None or not user.is_active or not user.has(Permission.PROJECT_VIEW_OWN):
                raise ProjectError("There is no active researcher with that email address")
            existing = next((m for m in project.members if m.user_id == user.id), None)
            if existing is not None and existing.removed_at is None:
                raise ProjectError("That person is already on the team")
            if existing is not None:
                existing.removed_at = existing.removed_by = None
                member = existing
            else:
                member = ProjectMember(user_id=user.id, role=RESEARCHER, added_by=actor.id)
                project.members.append(member)
            s.flush()
            self._record(s, "project.add_member", actor, project, member_id=user.id)
        return member

    def remove_member(self, actor: Any, project_id: str, user_id: str) -> None:
        """Take someone off the team: their access stops with this commit."""
        with self._tx() as s:
            project, member = self._removable_member(s, actor, project_id, user_id, lock=True)
            member.removed_at = utcnow()
            member.removed_by = actor.id
            self._record(s, "project.remove_member", actor, project, member_id=user_id)

    def member_to_remove(self, actor: Any, project_id: str, user_id: str) -> tuple[Project, ProjectMember]:
        """What ``remove_member`` would do, checked as it checks (a refusal is audited the same way) for
        its confirmation page; changes nothing."""
        with self._tx() as s:
            return self._removable_member(s, actor, project_id, user_id, lock=False)

    def _removable_member(
        self, s: Session, actor: Any, project_id: str, user_id: str, *, lock: bool
    ) -> tuple[Project, ProjectMember]:
        project = self._project(s, project_id, lock=lock)
        allowed = perm.is_pi(actor, project) or perm.can_govern(actor)
        self._allow(allowed, "project.remove_member", actor, project)
        member = next((m for m in project.active_members if m.user_id == user_id), None)
        if member is None:
            raise NotFound("That person is not on the team")
        if member.role == PRINCIPAL_INVESTIGATOR:
            raise ProjectError("The principal investigator cannot be removed from the project")
        return project, member

    def application_snapshot(self, project: Project) -> dict[str, Any]:
        """The application as it stands (dates as dates): what submission checks and freezes."""
        snap: dict[str, Any] = {k: getattr(project, k) for k in APPLICATION_FIELDS}
        snap["datasets"] = sorted(
            (
                {
                    "dataset_id": r.dataset_id,
                    "name": r.dataset.name,
                    "title": r.dataset.title,
                    "columns": list(r.columns),
                    "justification": r.justification,
                }
                for r in project.dataset_requests
            ),
            key=lambda d: d["name"],
        )
        snap["members"] = [{"user_id": m.user_id, "role": m.role} for m in project.active_members]
        return snap

    def missing_for_submission(self, project: Project) -> list[str]:
        return missing_for_submission(self.application_snapshot(project), utcnow().date())

    def submit(self, actor: Any, project_id: str) -> ApplicationVersion:
        """Freeze the application as a new version and send it to the committee."""
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_edit_application(actor, project), "project.submit", actor, project)
            check_transition(project.state, SUBMITTED)
            snapshot = self.application_snapshot(project)
            problems = missing_for_submission(snapshot, utcnow().date())
            if problems:
                raise IncompleteApplication(problems)
            content = dict(
                snapshot,
                start_date=snapshot["start_date"].isoformat(),
                end_date=snapshot["end_date"].isoformat(),
            )
            project.current_version += 1
            version = ApplicationVersion(
                project_id=project.id, number=project.current_version, content=content, submitted_by=actor.id
            )
            s.add(version)
            s.flush()
            resubmitted = project.state == CHANGES_REQUESTED
            self._move(
                s,
                project,
                SUBMITTED,
                actor,
                "project.resubmit" if resubmitted else "project.submit",
                version=version.number,
            )
            self._notify_users(
                s,
                self._holders_of(s, Permission.APPLICATION_ASSIGN),
                f"Application {'resubmitted' if resubmitted else 'submitted'}: {project.title}",
                f"The application \u201c{project.title}\u201d (version {version.number}) is waiting "
                "for reviewers to be assigned.",
                "application.submitted",
            )
        return version
