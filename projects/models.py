"""Tables of the projects package: the dataset catalogue, projects and their application versions,
DAC review (assignments, conflicts and their withdrawals, votes, decisions), approved columns, agreements,
training, extensions and the record of data destruction at closure.

The database itself guards what the domain says is always true: enumerations are check
constraints, paired fields (a conflict and its reason, a decision and who made it) are set
together or not at all, and uniqueness (one vote per reviewer per version, one signature per
person per agreement version and project) is a unique constraint, not a hope.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from projects.rules import (
    COLUMN_ROLES,
    DECISION_OUTCOMES,
    EXTENSION_OUTCOMES,
    MEMBER_ROLES,
    SENSITIVITY_LEVELS,
    SOURCE_KINDS,
    STATES,
    VOTE_CHOICES,
)
from tre.core.db import Base, new_id, utcnow


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# --- the dataset catalogue ------------------------------------------------------------------------


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        CheckConstraint(_one_of("source_kind", SOURCE_KINDS), name="source_kind_known"),
        CheckConstraint(_one_of("sensitivity", SENSITIVITY_LEVELS), name="sensitivity_known"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # A short stable name (e.g. "admissions"): extracts and workspaces use it as the table name.
    name: Mapped[str] = mapped_column(String(100), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    source_kind: Mapped[str] = mapped_column(String(20))
    # Where the raw source lives; only the extract pipeline reads it. Never shown to researchers.
    source_location: Mapped[str] = mapped_column(String(1000))
    sensitivity: Mapped[str] = mapped_column(String(30))
    row_count: Mapped[int | None]
    # The full schema as pseudonymisation.schema.DatasetSchema.from_dict reads it (optional).
    schema_spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    registered_by: Mapped[str | None] = mapped_column(String(32))
    registered_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    columns: Mapped[list[DatasetColumn]] = relationship(
        back_populates="dataset",
        cascade="all, delete-orphan",
        order_by="DatasetColumn.position",
        lazy="selectin",
    )

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


class DatasetColumn(Base):
    __tablename__ = "dataset_columns"
    __table_args__ = (
        UniqueConstraint("dataset_id", "name"),
        CheckConstraint(_one_of("role", COLUMN_ROLES), name="role_known"),
        CheckConstraint(_one_of("sensitivity", SENSITIVITY_LEVELS), name="sensitivity_known"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    position: Mapped[int]
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(30))
    data_type: Mapped[str] = mapped_column(String(50), default="string")
    description: Mapped[str] = mapped_column(Text, default="")
    sensitivity: Mapped[str] = mapped_column(String(30))

    dataset: Mapped[Dataset] = relationship(back_populates="columns")


# --- projects and applications --------------------------------------------------------------------


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (
        CheckConstraint(_one_of("state", STATES), name="state_known"),
        CheckConstraint(
            "start_date IS NULL OR end_date IS NULL OR start_date <= end_date", name="dates_ordered"
        ),
        CheckConstraint("current_version >= 0", name="version_non_negative"),
        # Closed exactly when the state says so, and always with a reason.
        CheckConstraint(
            "(closed_at IS NULL) = (state NOT IN ('closed', 'data_destroyed'))", name="closed_when_closed"
        ),
        CheckConstraint("(closed_at IS NULL) = (closure_reason IS NULL)", name="closure_has_reason"),
        CheckConstraint(
            "(data_destroyed_at IS NULL) = (state <> 'data_destroyed')", name="destroyed_when_destroyed"
        ),
        Index("ix_projects_state", "state"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    title: Mapped[str] = mapped_column(String(300))
    state: Mapped[str] = mapped_column(String(30), default="draft")
    pi_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    lay_summary: Mapped[str] = mapped_column(Text, default="")
    scientific_purpose: Mapped[str] = mapped_column(Text, default="")
    public_benefit: Mapped[str] = mapped_column(Text, default="")
    legal_basis: Mapped[str] = mapped_column(Text, default="")
    ethics_reference: Mapped[str] = mapped_column(String(200), default="")
    funder: Mapped[str] = mapped_column(String(200), default="")
    start_date: Mapped[dt.date | None]
    end_date: Mapped[dt.date | None]
    # The number of the latest submitted version (0 while never submitted).
    current_version: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    state_changed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    suspension_reason: Mapped[str | None] = mapped_column(Text)
    closed_at: Mapped[dt.datetime | None]
    closure_reason: Mapped[str | None] = mapped_column(Text)
    data_destroyed_at: Mapped[dt.datetime | None]

    members: Mapped[list[ProjectMember]] = relationship(
        back_populates="project",
        cascade="all, delete-orphan",
        order_by="ProjectMember.added_at",
        lazy="selectin",
    )
    dataset_requests: Mapped[list[DatasetRequest]] = relationship(
        back_populates="project", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def active_members(self) -> list[ProjectMember]:
        return [m for m in self.members if m.removed_at is None]


class ProjectMember(Base):
    __tablename__ = "project_members"
    __table_args__ = (
        UniqueConstraint("project_id", "user_id"),
        CheckConstraint(_one_of("role", MEMBER_ROLES), name="role_known"),
        CheckConstraint("(removed_at IS NULL) = (removed_by IS NULL)", name="removal_paired"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[str] = mapped_column(String(30))
    added_by: Mapped[str] = mapped_column(String(32))
    added_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    removed_at: Mapped[dt.datetime | None]
    removed_by: Mapped[str | None] = mapped_column(String(32))

    project: Mapped[Project] = relationship(back_populates="members")


class DatasetRequest(Base):
    """The columns of one dataset the applicant asks for, and why (the editable draft)."""

    __tablename__ = "dataset_requests"
    __table_args__ = (UniqueConstraint("project_id", "dataset_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    columns: Mapped[list[Any]] = mapped_column(default=list)
    justification: Mapped[str] = mapped_column(Text, default="")

    project: Mapped[Project] = relationship(back_populates="dataset_requests")
    dataset: Mapped[Dataset] = relationship(lazy="joined")


class ApplicationVersion(Base):
    """A frozen copy of the application as submitted; every (re)submission makes a new one."""

    __tablename__ = "application_versions"
    __table_args__ = (
        UniqueConstraint("project_id", "number"),
        CheckConstraint("number >= 1", name="number_positive"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    number: Mapped[int]
    content: Mapped[dict[str, Any]]
    submitted_by: Mapped[str] = mapped_column(String(32))
    submitted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# --- DAC review -----------------------------------------------------------------------------------


# ``ReviewAssignment.assigned_by`` of a member who declared a conflict of interest before the chair
# assigned them: no account id (ids are 32 hex digits), so never mistaken for one (ADR 0065).
DECLARED_BEFORE_ASSIGNMENT = "declared-before-assignment"


class ReviewAssignment(Base):
    """One committee member's standing on one application version: assigned by the chair to review
    it, and recused from it once they declare a conflict of interest. A member may declare a conflict
    before anyone assigns them; that row is a recusal only (``assigned`` is False, ``assigned_by`` is
    ``DECLARED_BEFORE_ASSIGNMENT``) and the chair cannot assign them afterwards (ADR 0065)."""

    __tablename__ = "review_assignments"
    __table_args__ = (
        UniqueConstraint("version_id", "reviewer_id"),
        CheckConstraint("(conflict_declared_at IS NULL) = (conflict_reason IS NULL)", name="conflict_paired"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    version_id: Mapped[str] = mapped_column(ForeignKey("application_versions.id", ondelete="CASCADE"))
    reviewer_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    assigned_by: Mapped[str] = mapped_column(String(32))
    assigned_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    conflict_declared_at: Mapped[dt.datetime | None]
    # Private to the committee: never shown to the applicant.
    conflict_reason: Mapped[str | None] = mapped_column(Text)

    @property
    def conflicted(self) -> bool:
        return self.conflict_declared_at is not None

    @property
    def assigned(self) -> bool:
        """Did the chair assign this member (rather than the member declare a conflict unassigned)?"""
        return self.assigned_by != DECLARED_BEFORE_ASSIGNMENT


class WithdrawnConflict(Base):
    """A conflict of interest a committee member declared on an application version and then withdrew
    as made in error, with both dates and both reasons (ADR 0065). Written once by
    ``Committee.withdraw_conflict``, never changed: the declaration leaves ``review_assignments`` (a
    declaration made before assignment is deleted, one made after is cleared) and is kept here, so the
    chair still sees it. A member may declare and withdraw more than once, so nothing here is unique."""

    __tablename__ = "withdrawn_conflicts"
    __table_args__ = (
        CheckConstraint("length(trim(declared_reason)) > 0", name="declared_reason_required"),
        CheckConstraint("length(trim(reason)) > 0", name="reason_required"),
        Index("ix_withdrawn_conflicts_version", "version_id", "withdrawn_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    version_id: Mapped[str] = mapped_column(ForeignKey("application_versions.id", ondelete="CASCADE"))
    reviewer_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    # Had the chair assigned the member when they declared? If so they stay assigned after withdrawing.
    while_assigned: Mapped[bool]
    declared_at: Mapped[dt.datetime]
    # Private to the committee, like ``ReviewAssignment.conflict_reason``: never shown to the applicant.
    declared_reason: Mapped[str] = mapped_column(Text)
    withdrawn_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(Text)


class Vote(Base):
    __tablename__ = "votes"
    __table_args__ = (
        UniqueConstraint("version_id", "reviewer_id"),
        CheckConstraint(_one_of("choice", VOTE_CHOICES), name="choice_known"),
        CheckConstraint("length(trim(rationale)) > 0", name="rationale_required"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    version_id: Mapped[str] = mapped_column(ForeignKey("application_versions.id", ondelete="CASCADE"))
    reviewer_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    choice: Mapped[str] = mapped_column(String(40))
    rationale: Mapped[str] = mapped_column(Text)
    cast_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Decision(Base):
    """The chair's decision on one version; conditions and the public comment are shown to applicants."""

    __tablename__ = "decisions"
    __table_args__ = (CheckConstraint(_one_of("outcome", DECISION_OUTCOMES), name="outcome_known"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[str] = mapped_column(
        ForeignKey("application_versions.id", ondelete="CASCADE"), unique=True
    )
    outcome: Mapped[str] = mapped_column(String(30))
    conditions: Mapped[str] = mapped_column(Text, default="")
    public_comment: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[str] = mapped_column(String(32))
    # Indexed for the turnaround page's window: the decisions since a date, not every one (ADR 0067).
    decided_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class ApprovedColumn(Base):
    """THE list of columns a project may receive from each dataset, as the chair approved it.

    Extracts, workspaces and output checks read this (through ``projects.services.approved_columns``).
    """

    __tablename__ = "approved_columns"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), primary_key=True)
    column_name: Mapped[str] = mapped_column(String(100), primary_key=True)
    decision_id: Mapped[str] = mapped_column(ForeignKey("decisions.id", ondelete="CASCADE"))


class OptOutExemption(Base):
    """The committee's decision that a project's recorded legal basis exempts it from one named
    opt-out list (for example section 251 support set aside from the national data opt-out).

    Keyed by the list's name, so it holds for every version of that list. Revoking deletes the row;
    the audit log keeps both decisions.
    """

    __tablename__ = "optout_exemptions"
    __table_args__ = (
        UniqueConstraint("project_id", "list_name"),
        CheckConstraint("length(trim(basis)) > 0", name="basis_required"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    list_name: Mapped[str] = mapped_column(String(100))
    # Why: the legal basis as the committee recorded it (e.g. "s251 support, CAG ref 21/CAG/0001").
    basis: Mapped[str] = mapped_column(Text)
    decided_by: Mapped[str] = mapped_column(String(32))
    decided_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ExtensionRequest(Base):
    __tablename__ = "extension_requests"
    __table_args__ = (
        CheckConstraint(
            "(decided_at IS NULL) = (decided_by IS NULL) AND (decided_at IS NULL) = (outcome IS NULL)",
            name="decision_paired",
        ),
        CheckConstraint(f"outcome IS NULL OR {_one_of('outcome', EXTENSION_OUTCOMES)}", name="outcome_known"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    current_end_date: Mapped[dt.date]
    requested_end_date: Mapped[dt.date]
    reason: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(32))
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    outcome: Mapped[str | None] = mapped_column(String(20))
    decided_by: Mapped[str | None] = mapped_column(String(32))
    decided_at: Mapped[dt.datetime | None]


# --- agreements and training ----------------------------------------------------------------------


class AgreementTemplate(Base):
    """One version of the data access agreement; the highest version is the current one."""

    __tablename__ = "agreement_templates"
    __table_args__ = (CheckConstraint("version >= 1", name="version_positive"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    version: Mapped[int] = mapped_column(unique=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    published_by: Mapped[str | None] = mapped_column(String(32))
    published_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AgreementSignature(Base):
    __tablename__ = "agreement_signatures"
    __table_args__ = (UniqueConstraint("template_id", "project_id", "user_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    template_id: Mapped[str] = mapped_column(ForeignKey("agreement_templates.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    # What was signed, as the signer saw it: the template's hash and the name they typed.
    content_hash: Mapped[str] = mapped_column(String(64))
    signed_name: Mapped[str] = mapped_column(String(200))
    signed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class TrainingRecord(Base):
    __tablename__ = "training_records"
    __table_args__ = (
        CheckConstraint("completed_on <= expires_on", name="expires_after_completion"),
        Index("ix_training_records_user_course", "user_id", "course"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    course: Mapped[str] = mapped_column(String(100))
    completed_on: Mapped[dt.date]
    expires_on: Mapped[dt.date]
    reference: Mapped[str] = mapped_column(String(200), default="")
    recorded_by: Mapped[str | None] = mapped_column(String(32))
    recorded_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# --- closure --------------------------------------------------------------------------------------


class DestructionRecord(Base):
    """One destruction hook finished for one closed project (extracts deleted, key destroyed...)."""

    __tablename__ = "destruction_records"
    __table_args__ = (UniqueConstraint("project_id", "hook"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    hook: Mapped[str] = mapped_column(String(100))
    completed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
