"""A project after approval: activation, suspension, reinstatement, closure and extensions."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from projects import closure
from projects import permissions as perm
from projects.kernel import (
    _LONG_TEXT_LIMIT,
    NotFound,
    ProjectError,
    ProjectsKernel,
)
from projects.models import (
    ExtensionRequest,
    Project,
)
from projects.rules import (
    ACTIVE,
    APPROVED,
    SUSPENDED,
    check_extension,
    check_transition,
)
from tre.core.db import utcnow
from tre.core.permissions import Permission


class Lifecycle(ProjectsKernel):
    # --- the lifecycle after approval -------------------------------------------------------------

    def activate(self, actor: Any, project_id: str) -> Project:
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_activate(actor, project), "project.activate", actor, project)
            if project.end_date is not None and project.end_date < utcnow().date():
                raise ProjectError("The project has passed its end date; ask for an extension first")
            self._move(s, project, ACTIVE, actor, "project.activate")
        return project

    def suspend(self, actor: Any, project_id: str, reason: str) -> Project:
        if not (reason or "").strip():
            raise ProjectError("Give the reason for suspending the project")
        with self._tx() as s:
            project = self._suspendable(s, actor, project_id, lock=True)
            self._move(s, project, SUSPENDED, actor, "project.suspend")
            project.suspension_reason = reason.strip()[:_LONG_TEXT_LIMIT]
            self._notify_users(
                s,
                [m.user_id for m in project.active_members],
                f"Project suspended: {project.title}",
                f"Access to \u201c{project.title}\u201d is suspended until the committee reinstates it.",
                "project.suspended",
            )
        return project

    def project_to_suspend(self, actor: Any, project_id: str) -> Project:
        """The project ``suspend`` would suspend, checked as it checks, for its confirmation page;
        changes nothing."""
        with self._tx() as s:
            return self._suspendable(s, actor, project_id, lock=False)

    def _suspendable(self, s: Session, actor: Any, project_id: str, *, lock: bool) -> Project:
        project = self._project(s, project_id, lock=lock)
        self._allow(perm.can_govern(actor), "project.suspend", actor, project)
        check_transition(project.state, SUSPENDED)
        return project

    def reinstate(self, actor: Any, project_id: str) -> Project:
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_govern(actor), "project.reinstate", actor, project)
            self._move(s, project, ACTIVE, actor, "project.reinstate")
            project.suspension_reason = None
        return project

    def close(self, actor: Any, project_id: str, reason: str) -> Project:
        """Close by decision: access stops with this commit; data destruction is queued."""
        with self._tx() as s:
            project = self._project(s, project_id)
            self._allow(perm.can_govern(actor), "project.close", actor, project)
        return closure.close_project(
            self.session, self.audit, project_id, actor_id=actor.id, reason=reason, request_id=self.request_id
        )

    def request_extension(self, actor: Any, project_id: str, new_end_date: dt.date, reason: str) -> ExtensionRequest:
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.is_pi(actor, project), "project.request_extension", actor, project)
            if project.state not in (APPROVED, ACTIVE, SUSPENDED):
                raise ProjectError("Only an approved or running project can be extended")
            check_extension(project.end_date, new_end_date, reason)
            if s.scalar(
                select(ExtensionRequest.id).where(
                    ExtensionRequest.project_id == project.id, ExtensionRequest.decided_at.is_(None)
                )
            ):
                raise ProjectError("An extension request is already waiting for the chair")
            assert project.end_date is not None
            ext = ExtensionRequest(
                project_id=project.id,
                current_end_date=project.end_date,
                requested_end_date=new_end_date,
                reason=reason.strip(),
                requested_by=actor.id,
            )
            s.add(ext)
            s.flush()
            self._record(
                s,
                "project.request_extension",
                actor,
                project,
                extension_id=ext.id,
                requested_end_date=new_end_date.isoformat(),
            )
            self._notify_users(
                s,
                self._holders_of(s, Permission.APPLICATION_DECIDE),
                f"Extension requested: {project.title}",
                f"The principal investigator of \u201c{project.title}\u201d asks to extend its end date.",
                "project.extension_requested",
            )
        return ext

    def pending_extension(self, project: Project) -> ExtensionRequest | None:
        return self.session.scalar(
            select(ExtensionRequest).where(
                ExtensionRequest.project_id == project.id, ExtensionRequest.decided_at.is_(None)
            )
        )

    def decide_extension(self, actor: Any, extension_id: str, grant: bool) -> ExtensionRequest:
        with self._tx() as s:
            ext = s.get(ExtensionRequest, extension_id) if extension_id else None
            if ext is None:
                raise NotFound("No such extension request")
            project = self._project(s, ext.project_id, lock=True)
            self._allow(perm.can_govern(actor), "project.decide_extension", actor, project)
            if ext.decided_at is not None:
                raise ProjectError("This extension request has already been decided")
            ext.outcome = "granted" if grant else "refused"
            ext.decided_by = actor.id
            ext.decided_at = utcnow()
            if grant:
                project.end_date = ext.requested_end_date
            self._record(s, "project.decide_extension", actor, project, extension_id=ext.id, outcome=ext.outcome)
        return ext
