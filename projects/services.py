"""The use cases of the projects domain, one transaction each.

Every public method of ``Projects`` checks permission (``projects.permissions``) and policy
(``projects.rules``), changes state, writes its audit event and any notification in the same
transaction, and commits — or raises an exception whose message is safe to show and changes
nothing. A refusal for lack of permission is itself audited. Audit details hold ids and codes only.

Other packages read a project's approved data through ``approved_columns`` and ``approved_datasets``
and ask the access gate (``projects.gate``) before touching data.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from projects import closure
from projects import permissions as perm
from projects.gate import current_agreement, training_expiry
from projects.models import (
    AgreementSignature,
    AgreementTemplate,
    ApplicationVersion,
    ApprovedColumn,
    Dataset,
    DatasetColumn,
    DatasetRequest,
    Decision,
    ExtensionRequest,
    OptOutExemption,
    Project,
    ProjectMember,
    ReviewAssignment,
    TrainingRecord,
    Vote,
)
from projects.rules import (
    ACTIVE,
    APPROVED,
    CHANGES_REQUESTED,
    COLUMN_ROLES,
    DRAFT,
    EDITABLE_STATES,
    IN_REVIEW,
    PRINCIPAL_INVESTIGATOR,
    REJECTED,
    RESEARCHER,
    SENSITIVITY_LEVELS,
    SOURCE_KINDS,
    STATE_LABELS,
    SUBMITTED,
    SUSPENDED,
    ProjectPolicy,
    RuleViolation,
    check_approved_columns,
    check_decision,
    check_extension,
    check_optout_exemption,
    check_quorum,
    check_requested_columns,
    check_single_line,
    check_transition,
    check_vote,
    counted_votes,
    missing_for_submission,
)
from tre.core.audit import DENIED, AuditLog
from tre.core.db import transaction, utcnow
from tre.core.identity import User, UserRole
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
    rows = session.execute(
        select(ApprovedColumn.dataset_id, ApprovedColumn.column_name).where(ApprovedColumn.project_id == project_id)
    ).all()
    by_dataset: dict[str, set[str]] = {}
    for dataset_id, column in rows:
        by_dataset.setdefault(dataset_id, set()).add(column)
    result = []
    for dataset_id, columns in by_dataset.items():
        ds = session.get(Dataset, dataset_id)
        assert ds is not None
        ordered = [c for c in ds.column_names if c in columns]
        result.append(
            ApprovedDataset(ds.id, ds.name, ds.source_kind, ds.source_location, dict(ds.schema_spec), ordered)
        )
    return sorted(result, key=lambda d: d.name)


def approved_columns(session: Session, project_id: str) -> dict[str, list[str]]:
    """THE approved column list per dataset name, e.g. ``{"admissions": ["nhs_number", ...]}``.

    Empty until the chair approves; extracts, workspaces and output checks must use exactly this.
    """
    return {d.name: d.columns for d in approved_datasets(session, project_id)}


def project_optout_exemptions(session: Session, project_id: str) -> list[OptOutExemption]:
    """THE opt-out lists the committee exempted this project from, with the basis it recorded."""
    return list(
        session.scalars(
            select(OptOutExemption).where(OptOutExemption.project_id == project_id).order_by(OptOutExemption.list_name)
        )
    )


@dataclass
class Projects:
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

    # --- the catalogue ----------------------------------------------------------------------------

    def register_dataset(
        self,
        actor: Any,
        *,
        name: str,
        title: str,
        description: str,
        source_kind: str,
        source_location: str,
        sensitivity: str,
        columns: Sequence[Mapping[str, Any]],
        row_count: int | None = None,
        schema_spec: dict[str, Any] | None = None,
    ) -> Dataset:
        """Add a dataset with a role, description and sensitivity for every column."""
        name = (name or "").strip().lower()
        if not name or len(name) > 100 or not set(name) <= _NAME_OK:
            raise ProjectError("Give the dataset a short name of lower-case letters, digits and underscores")
        if not (title or "").strip():
            raise ProjectError("Give the dataset a title")
        check_single_line("dataset title", title.strip())
        if source_kind not in SOURCE_KINDS:
            raise ProjectError("The source must be a Parquet file, a CSV file or a database table")
        if not (source_location or "").strip():
            raise ProjectError("Say where the source is")
        if sensitivity not in SENSITIVITY_LEVELS:
            raise ProjectError("Choose a sensitivity level")
        if not columns:
            raise ProjectError("Describe at least one column")
        seen: set[str] = set()
        rows = []
        for i, c in enumerate(columns):
            cname = str(c.get("name") or "").strip()
            if not cname or cname in seen or len(cname) > 100:
                raise ProjectError(f"Column {i + 1} needs a unique name")
            if c.get("role") not in COLUMN_ROLES:
                raise ProjectError(
                    f"Give column {cname} a role: direct identifier, quasi-identifier, attribute or free text"
                )
            sens = c.get("sensitivity") or sensitivity
            if sens not in SENSITIVITY_LEVELS:
                raise ProjectError(f"Column {cname} has an unknown sensitivity level")
            seen.add(cname)
            rows.append(
                DatasetColumn(
                    position=i,
                    name=cname,
                    role=c["role"],
                    data_type=str(c.get("data_type") or "string")[:50],
                    description=str(c.get("description") or ""),
                    sensitivity=sens,
                )
            )
        with self._tx() as s:
            self._allow(perm.can_register_dataset(actor), "dataset.register", actor)
            if s.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
                raise ProjectError("A dataset with that name is already registered")
            ds = Dataset(
                name=name,
                title=title.strip()[:200],
                description=description or "",
                source_kind=source_kind,
                source_location=source_location.strip(),
                sensitivity=sensitivity,
                row_count=row_count,
                schema_spec=dict(schema_spec or {}),
                registered_by=getattr(actor, "id", None),
                columns=rows,
            )
            s.add(ds)
            s.flush()
            self.audit.record(
                s,
                "dataset.register",
                actor_id=getattr(actor, "id", None),
                target_type="dataset",
                target_id=ds.id,
                request_id=self.request_id,
                detail={"columns": len(rows)},
            )
        return ds

    def list_datasets(self) -> list[Dataset]:
        return list(self.session.scalars(select(Dataset).order_by(Dataset.title)))

    def get_dataset(self, dataset_id: str) -> Dataset:
        ds = self.session.get(Dataset, dataset_id) if dataset_id else None
        if ds is None:
            ds = self.session.scalar(select(Dataset).where(Dataset.name == dataset_id))
        if ds is None:
            raise NotFound("No such dataset")
        return ds

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
            project = self._project(s, project_id, lock=True)
            allowed = perm.is_pi(actor, project) or perm.can_govern(actor)
            self._allow(allowed, "project.remove_member", actor, project)
            member = next((m for m in project.active_members if m.user_id == user_id), None)
            if member is None:
                raise NotFound("That person is not on the team")
            if member.role == PRINCIPAL_INVESTIGATOR:
                raise ProjectError("The principal investigator cannot be removed from the project")
            member.removed_at = utcnow()
            member.removed_by = actor.id
            self._record(s, "project.remove_member", actor, project, member_id=user_id)

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

    # --- review -----------------------------------------------------------------------------------

    def current_version(self, project: Project) -> ApplicationVersion | None:
        if project.current_version < 1:
            return None
        return self.session.scalar(
            select(ApplicationVersion).where(
                ApplicationVersion.project_id == project.id,
                ApplicationVersion.number == project.current_version,
            )
        )

    def versions(self, project: Project) -> list[ApplicationVersion]:
        return list(
            self.session.scalars(
                select(ApplicationVersion)
                .where(ApplicationVersion.project_id == project.id)
                .order_by(ApplicationVersion.number.desc())
            )
        )

    def assignments(self, version: ApplicationVersion | None) -> list[ReviewAssignment]:
        if version is None:
            return []
        return list(
            self.session.scalars(
                select(ReviewAssignment)
                .where(ReviewAssignment.version_id == version.id)
                .order_by(ReviewAssignment.assigned_at)
            )
        )

    def assignment_for(self, version: ApplicationVersion | None, user_id: str) -> ReviewAssignment | None:
        if version is None:
            return None
        return self.session.scalar(
            select(ReviewAssignment).where(
                ReviewAssignment.version_id == version.id, ReviewAssignment.reviewer_id == user_id
            )
        )

    def _votes(self, version: ApplicationVersion) -> list[Vote]:
        return list(self.session.scalars(select(Vote).where(Vote.version_id == version.id).order_by(Vote.cast_at)))

    def votes_visible_to(
        self, actor: Any, project: Project, version: ApplicationVersion | None = None
    ) -> list[Vote] | None:
        """The votes on a version, or None when this person may not see them."""
        version = version or self.current_version(project)
        if version is None:
            return None
        assignment = self.assignment_for(version, actor.id)
        votes = self._votes(version)
        has_voted = any(v.reviewer_id == actor.id for v in votes)
        return votes if perm.can_see_votes(actor, assignment, has_voted) else None

    def assign_reviewers(self, actor: Any, project_id: str, reviewer_ids: Sequence[str]) -> list[ReviewAssignment]:
        """The chair assigns committee members to the current version; the review starts."""
        reviewer_ids = list(dict.fromkeys(r for r in reviewer_ids if r))
        if not reviewer_ids:
            raise ProjectError("Choose at least one reviewer")
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_assign_reviewers(actor), "project.assign_reviewers", actor, project)
            if project.state not in (SUBMITTED, IN_REVIEW):
                raise ProjectError("Reviewers can be assigned only to a submitted application")
            version = self.current_version(project)
            assert version is not None
            existing = {a.reviewer_id for a in self.assignments(version)}
            added = []
            for rid in reviewer_ids:
                reviewer = s.get(User, rid)
                if reviewer is None or not perm.can_review(reviewer):
                    raise ProjectError("Reviewers must be active members of the data access committee")
                if any(m.user_id == rid for m in project.active_members):
                    raise ProjectError("A member of the project's own team cannot review it")
                if rid in existing:
                    continue
                assignment = ReviewAssignment(version_id=version.id, reviewer_id=rid, assigned_by=actor.id)
                s.add(assignment)
                added.append(assignment)
            s.flush()
            if project.state == SUBMITTED:
                self._move(s, project, IN_REVIEW, actor, "project.start_review", version=version.number)
            self._record(
                s,
                "project.assign_reviewers",
                actor,
                project,
                version=version.number,
                reviewer_ids=[a.reviewer_id for a in added],
            )
            self._notify_users(
                s,
                [a.reviewer_id for a in added],
                f"Please review: {project.title}",
                f"You have been asked to review the application \u201c{project.title}\u201d (version "
                f"{version.number}). If you have a conflict of interest, declare it before reading further.",
                "application.assigned",
            )
        return added

    def declare_conflict(self, actor: Any, project_id: str, reason: str) -> ReviewAssignment:
        """A reviewer declares a conflict of interest: they no longer vote or see votes on it."""
        if not (reason or "").strip():
            raise ProjectError("Describe the conflict of interest")
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            version = self.current_version(project)
            assignment = self.assignment_for(version, actor.id)
            self._allow(perm.can_review(actor) and assignment is not None, "project.declare_conflict", actor, project)
            assert assignment is not None and version is not None
            if assignment.conflicted:
                raise ProjectError("You have already declared a conflict of interest on this application")
            if s.scalar(select(Vote.id).where(Vote.version_id == version.id, Vote.reviewer_id == actor.id)):
                raise ProjectError("You have already voted; ask the chair to set your vote aside")
            assignment.conflict_declared_at = utcnow()
            assignment.conflict_reason = reason.strip()[:_LONG_TEXT_LIMIT]
            self._record(s, "project.declare_conflict", actor, project, version=version.number)
        return assignment

    def cast_vote(self, actor: Any, project_id: str, choice: str, rationale: str) -> Vote:
        """One vote per reviewer per version, with its rationale; votes are final."""
        check_vote(choice, rationale)
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            version = self.current_version(project)
            assignment = self.assignment_for(version, actor.id)
            self._allow(perm.can_vote(actor, assignment), "project.vote", actor, project)
            assert version is not None
            if project.state != IN_REVIEW:
                raise ProjectError("Votes can be cast only while the application is in review")
            if s.scalar(select(Vote.id).where(Vote.version_id == version.id, Vote.reviewer_id == actor.id)):
                raise ProjectError("You have already voted on this version")
            vote = Vote(version_id=version.id, reviewer_id=actor.id, choice=choice, rationale=rationale.strip())
            s.add(vote)
            s.flush()
            self._record(s, "project.vote", actor, project, version=version.number, choice=choice)
        return vote

    def decide(
        self,
        actor: Any,
        project_id: str,
        outcome: str,
        *,
        conditions: str = "",
        public_comment: str = "",
        approved_columns: Mapping[str, Sequence[str]] | None = None,
    ) -> Decision:
        """The chair's decision on the current version, once the quorum has voted.

        On approval ``approved_columns`` (dataset name -> columns) may hold fewer columns than were
        asked for; it becomes THE approved list. None approves everything requested.
        """
        check_decision(outcome, conditions, public_comment)
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            version = self.current_version(project)
            assignment = self.assignment_for(version, actor.id)
            self._allow(perm.can_decide(actor, assignment), "project.decide", actor, project)
            if project.state != IN_REVIEW or version is None:
                raise ProjectError("Only an application in review can be decided")
            conflicted = {a.reviewer_id for a in self.assignments(version) if a.conflicted}
            counted = counted_votes(self._votes(version), conflicted, decider_id=actor.id)
            check_quorum(len(counted), self.policy.quorum)
            decision = Decision(
                project_id=project.id,
                version_id=version.id,
                outcome=outcome,
                conditions=(conditions or "").strip(),
                public_comment=(public_comment or "").strip(),
                decided_by=actor.id,
            )
            s.add(decision)
            s.flush()
            detail: dict[str, Any] = {"version": version.number, "votes": len(counted)}
            if outcome == APPROVED:
                requested = {d["name"]: list(d["columns"]) for d in version.content["datasets"]}
                ids = {d["name"]: d["dataset_id"] for d in version.content["datasets"]}
                chosen = check_approved_columns(requested, requested if approved_columns is None else approved_columns)
                s.execute(delete(ApprovedColumn).where(ApprovedColumn.project_id == project.id))
                for name, cols in chosen.items():
                    for col in cols:
                        s.add(
                            ApprovedColumn(
                                project_id=project.id,
                                dataset_id=ids[name],
                                column_name=col,
                                decision_id=decision.id,
                            )
                        )
                detail["approved_columns"] = {name: len(cols) for name, cols in chosen.items()}
                detail["requested_columns"] = {name: len(cols) for name, cols in requested.items()}
            action = {
                APPROVED: "project.approve",
                CHANGES_REQUESTED: "project.request_changes",
                REJECTED: "project.reject",
            }[outcome]
            self._move(s, project, outcome, actor, action, **detail)
            words = {
                APPROVED: "approved",
                CHANGES_REQUESTED: "returned for changes",
                REJECTED: "not approved",
            }
            self._notify_users(
                s,
                [m.user_id for m in project.active_members],
                f"Decision on your application: {project.title}",
                f"The data access committee has {words[outcome]} \u201c{project.title}\u201d. "
                "Sign in to read the decision and any conditions.",
                "application.decided",
            )
        return decision

    def decisions(self, project: Project) -> list[Decision]:
        return list(
            self.session.scalars(
                select(Decision).where(Decision.project_id == project.id).order_by(Decision.decided_at.desc())
            )
        )

    # --- opt-out exemptions -----------------------------------------------------------------------

    def set_optout_exemption(self, actor: Any, project_id: str, list_name: str, basis: str) -> OptOutExemption:
        """The chair records that the project's legal basis exempts it from the named opt-out list.

        Deciding again for the same list replaces the recorded basis. The exemption holds for every
        version of the list; extracts built afterwards keep the list's patients and say so.
        """
        list_name = (list_name or "").strip().lower()
        basis = (basis or "").strip()[:_LONG_TEXT_LIMIT]
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_exempt_from_optout(actor), "project.optout_exempt", actor, project)
            check_optout_exemption(project.state, project.legal_basis, list_name, basis)
            exemption = s.scalar(
                select(OptOutExemption).where(
                    OptOutExemption.project_id == project.id, OptOutExemption.list_name == list_name
                )
            )
            if exemption is None:
                exemption = OptOutExemption(
                    project_id=project.id, list_name=list_name, basis=basis, decided_by=actor.id
                )
                s.add(exemption)
            else:
                exemption.basis, exemption.decided_by, exemption.decided_at = basis, actor.id, utcnow()
            s.flush()
            self._record(s, "project.optout_exempt", actor, project, list=list_name)
        return exemption

    def revoke_optout_exemption(self, actor: Any, project_id: str, list_name: str) -> None:
        """Withdraw an exemption: extracts built afterwards remove the list's patients again."""
        list_name = (list_name or "").strip().lower()
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_exempt_from_optout(actor), "project.optout_revoke", actor, project)
            exemption = s.scalar(
                select(OptOutExemption).where(
                    OptOutExemption.project_id == project.id, OptOutExemption.list_name == list_name
                )
            )
            if exemption is None:
                raise NotFound("The project is not exempt from that list")
            s.delete(exemption)
            self._record(s, "project.optout_revoke", actor, project, list=list_name)

    def optout_exemptions(self, project: Project) -> list[OptOutExemption]:
        return project_optout_exemptions(self.session, project.id)

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
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_govern(actor), "project.suspend", actor, project)
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

    # --- agreements -------------------------------------------------------------------------------

    def publish_agreement(self, actor: Any, title: str, body: str) -> AgreementTemplate:
        """A new current version: everyone must sign it again before further access."""
        title, body = (title or "").strip(), (body or "").strip()
        if not title or not body:
            raise ProjectError("The agreement needs a title and a text")
        check_single_line("agreement title", title)
        with self._tx() as s:
            self._allow(perm.can_publish_agreement(actor), "agreement.publish", actor)
            latest = current_agreement(s)
            content_hash = agreement_hash(title, body)
            if latest is not None and latest.content_hash == content_hash:
                raise ProjectError("This text is the same as the current version")
            template = AgreementTemplate(
                version=(latest.version + 1) if latest else 1,
                title=title[:200],
                body=body,
                content_hash=content_hash,
                published_by=getattr(actor, "id", None),
            )
            s.add(template)
            s.flush()
            self.audit.record(
                s,
                "agreement.publish",
                actor_id=getattr(actor, "id", None),
                target_type="agreement",
                target_id=template.id,
                request_id=self.request_id,
                detail={"version": template.version, "content_hash": content_hash},
            )
            running = s.scalars(select(Project).where(Project.state.in_((APPROVED, ACTIVE, SUSPENDED))))
            for project in running:
                self._notify_users(
                    s,
                    [m.user_id for m in project.active_members],
                    f"Please sign the new agreement: {project.title}",
                    f"Version {template.version} of the data access agreement is published. "
                    f"Sign it on the project page of \u201c{project.title}\u201d to keep access.",
                    "agreement.due",
                    dedupe=f"agreement:{template.id}:{project.id}",
                )
        return template

    def current_agreement(self) -> AgreementTemplate | None:
        return current_agreement(self.session)

    def sign_agreement(self, actor: Any, project_id: str, content_hash: str, signed_name: str) -> AgreementSignature:
        """Sign the current version for this project; ``content_hash`` is the version the person read."""
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_sign(actor, project), "agreement.sign", actor, project)
            if project.state not in (APPROVED, ACTIVE, SUSPENDED):
                raise ProjectError("Agreements are signed once the project is approved")
            template = current_agreement(s)
            if template is None:
                raise ProjectError("No data access agreement has been published yet")
            if content_hash != template.content_hash:
                raise ProjectError(
                    "The agreement has changed since you opened it: read the current version and sign again"
                )
            if _norm_name(signed_name) != _norm_name(actor.display_name):
                raise ProjectError("Type your full name exactly as it appears on your account to sign")
            if s.scalar(
                select(AgreementSignature.id).where(
                    AgreementSignature.template_id == template.id,
                    AgreementSignature.project_id == project.id,
                    AgreementSignature.user_id == actor.id,
                )
            ):
                raise ProjectError("You have already signed this version for this project")
            sig = AgreementSignature(
                template_id=template.id,
                project_id=project.id,
                user_id=actor.id,
                content_hash=template.content_hash,
                signed_name=signed_name.strip()[:200],
            )
            s.add(sig)
            s.flush()
            self._record(
                s,
                "agreement.sign",
                actor,
                project,
                agreement_version=template.version,
                content_hash=template.content_hash,
            )
        return sig

    def signatures(self, project: Project) -> list[AgreementSignature]:
        return list(
            self.session.scalars(
                select(AgreementSignature)
                .where(AgreementSignature.project_id == project.id)
                .order_by(AgreementSignature.signed_at)
            )
        )

    # --- training ---------------------------------------------------------------------------------

    def record_training(
        self,
        actor: Any,
        user_id: str,
        completed_on: dt.date,
        expires_on: dt.date,
        *,
        course: str | None = None,
        reference: str = "",
    ) -> TrainingRecord:
        course = course or self.policy.training_course
        if not isinstance(completed_on, dt.date) or not isinstance(expires_on, dt.date):
            raise ProjectError("Enter the completion and expiry dates")
        if expires_on < completed_on:
            raise ProjectError("The expiry date must be after the completion date")
        if completed_on > utcnow().date():
            raise ProjectError("The completion date cannot be in the future")
        with self._tx() as s:
            self._allow(perm.can_manage_training(actor), "training.record", actor)
            person = s.get(User, user_id) if user_id else None
            if person is None:
                raise NotFound("No such account")
            record = TrainingRecord(
                user_id=person.id,
                course=course[:100],
                completed_on=completed_on,
                expires_on=expires_on,
                reference=(reference or "").strip()[:200],
                recorded_by=getattr(actor, "id", None),
            )
            s.add(record)
            s.flush()
            self.audit.record(
                s,
                "training.record",
                actor_id=getattr(actor, "id", None),
                target_type="user",
                target_id=person.id,
                request_id=self.request_id,
                detail={
                    "course": record.course,
                    "record_id": record.id,
                    "expires_on": expires_on.isoformat(),
                },
            )
        return record

    def import_training(self, actor: Any, csv_text: str) -> int:
        """Import records from CSV lines ``email,completed_on,expires_on[,reference]`` (ISO dates).

        All or nothing: any bad line refuses the whole import and names every bad line.
        """
        rows: list[tuple[str, dt.date, dt.date, str]] = []
        problems: list[str] = []
        for number, row in enumerate(csv.reader(io.StringIO(csv_text or "")), start=1):
            if not row or not any(cell.strip() for cell in row) or row[0].strip().lower() == "email":
                continue
            if len(row) < 3:
                problems.append(f"Line {number}: give an email, a completion date and an expiry date")
                continue
            try:
                completed, expires = dt.date.fromisoformat(row[1].strip()), dt.date.fromisoformat(row[2].strip())
            except ValueError:
                problems.append(f"Line {number}: write dates like 2026-04-30")
                continue
            if expires < completed or completed > utcnow().date():
                problems.append(f"Line {number}: the dates are not possible")
                continue
            reference = row[3].strip() if len(row) > 3 else ""
            rows.append((row[0].strip().lower(), completed, expires, reference))
        if not rows and not problems:
            raise ProjectError("There is nothing to import")
        with self._tx() as s:
            self._allow(perm.can_manage_training(actor), "training.import", actor)
            users = {u.email: u for u in s.scalars(select(User).where(User.email.in_([r[0] for r in rows])))}
            problems += [f"No account for {email}" for email, *_ in rows if email not in users]
            if problems:
                raise ProjectError("Nothing was imported: " + "; ".join(problems))
            for email, completed, expires, reference in rows:
                s.add(
                    TrainingRecord(
                        user_id=users[email].id,
                        course=self.policy.training_course,
                        completed_on=completed,
                        expires_on=expires,
                        reference=reference[:200],
                        recorded_by=getattr(actor, "id", None),
                    )
                )
            self.audit.record(
                s,
                "training.import",
                actor_id=getattr(actor, "id", None),
                request_id=self.request_id,
                detail={"records": len(rows), "user_ids": sorted(users[r[0]].id for r in rows)},
            )
        return len(rows)

    def training_records(self, user_id: str) -> list[TrainingRecord]:
        return list(
            self.session.scalars(
                select(TrainingRecord)
                .where(TrainingRecord.user_id == user_id)
                .order_by(TrainingRecord.expires_on.desc())
            )
        )

    def training_expiry(self, user_id: str) -> dt.date | None:
        return training_expiry(self.session, user_id, self.policy.training_course)

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
