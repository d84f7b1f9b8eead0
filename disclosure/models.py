"""Tables of the output queue: requests, groups, files, automated checks, reviews, votes, comments,
decisions, releases and each project's release ledger.

The database guards what the domain says is always true: states and votes are check constraints,
a request for changes always carries its comment, a revocation always its reason, one vote per
checker per file, one check per file per policy, and the workspace's idempotency key is unique.
Files are never edited: a changed file is a new row (the old one is kept, marked superseded), so
votes on a changed file start afresh and the history stays.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from disclosure.rules import DRAFT, OUTCOMES, STATES, VISIBILITIES, VOTES
from tre.core.db import Base, new_id, utcnow


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


CHECK_STATUSES: tuple[str, ...] = ("pass", "review", "fail", "error")


class OutputRequest(Base):
    __tablename__ = "output_requests"
    __table_args__ = (
        CheckConstraint(_one_of("state", STATES), name="state_known"),
        CheckConstraint("reviews_required >= 1", name="reviews_at_least_one"),
        CheckConstraint("round >= 1", name="round_positive"),
        CheckConstraint(
            "(released_at IS NULL) = (state NOT IN ('released', 'revoked'))", name="released_when_released"
        ),
        CheckConstraint(
            "state = 'draft' OR state = 'withdrawn' OR submitted_at IS NOT NULL",
            name="submitted_when_past_draft",
        ),
        UniqueConstraint("project_id", "client_key"),
        Index("ix_output_requests_state", "state"),
        Index("ix_output_requests_project", "project_id"),
        # The turnaround pages' window: requests finished (by state) since a moment, and decided since one.
        Index("ix_output_requests_state_changed", "state", "state_changed_at"),
        Index("ix_output_requests_decided_at", "decided_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    author_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    title: Mapped[str] = mapped_column(String(200), default="")
    state: Mapped[str] = mapped_column(String(30), default=DRAFT)
    # Incremented at every resubmission; reviews, comments and decisions belong to a round.
    round: Mapped[int] = mapped_column(default=1)
    reviews_required: Mapped[int] = mapped_column(default=2)
    # The workspace's Idempotency-Key (per project): the same submission twice creates one request.
    client_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    state_changed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    submitted_at: Mapped[dt.datetime | None]  # first submission: turnaround starts here
    last_submitted_at: Mapped[dt.datetime | None]
    checks_finished_at: Mapped[dt.datetime | None]
    decided_at: Mapped[dt.datetime | None]  # final decision (approved or rejected): turnaround ends here
    released_at: Mapped[dt.datetime | None]

    groups: Mapped[list[OutputGroup]] = relationship(
        back_populates="request",
        cascade="all, delete-orphan",
        order_by="OutputGroup.position",
        lazy="selectin",
    )
    files: Mapped[list[OutputFile]] = relationship(
        back_populates="request",
        cascade="all, delete-orphan",
        order_by="OutputFile.added_at",
        lazy="selectin",
    )

    @property
    def current_files(self) -> list[OutputFile]:
        return [f for f in self.files if f.superseded_at is None]


class OutputGroup(Base):
    __tablename__ = "output_groups"
    __table_args__ = (UniqueConstraint("request_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("output_requests.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    position: Mapped[int] = mapped_column(default=0)
    context: Mapped[str] = mapped_column(Text, default="")
    controls: Mapped[str] = mapped_column(Text, default="")

    request: Mapped[OutputRequest] = relationship(back_populates="groups")


class OutputFile(Base):
    """A copy of one file taken when it was added: its bytes live in the store under ``sha256``."""

    __tablename__ = "output_files"
    __table_args__ = (
        CheckConstraint("kind IN ('table', 'text', 'image')", name="kind_known"),
        CheckConstraint("size_bytes > 0", name="not_empty"),
        CheckConstraint("(superseded_at IS NULL) = (superseded_in_round IS NULL)", name="superseded_paired"),
        Index("ix_output_files_request", "request_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("output_requests.id", ondelete="CASCADE"))
    group_id: Mapped[str] = mapped_column(ForeignKey("output_groups.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    content_type: Mapped[str] = mapped_column(String(50))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int]
    table_spec: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    added_by: Mapped[str] = mapped_column(String(32))
    added_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    added_in_round: Mapped[int] = mapped_column(default=1)
    superseded_at: Mapped[dt.datetime | None]
    superseded_in_round: Mapped[int | None]

    request: Mapped[OutputRequest] = relationship(back_populates="files")
    group: Mapped[OutputGroup] = relationship(lazy="joined")


class OutputCheck(Base):
    """The automated verdict of one file under one policy (machine-readable, per file and per cell)."""

    __tablename__ = "output_checks"
    __table_args__ = (
        UniqueConstraint("file_id", "policy_sha256"),
        CheckConstraint(_one_of("status", CHECK_STATUSES), name="status_known"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    file_id: Mapped[str] = mapped_column(ForeignKey("output_files.id", ondelete="CASCADE"), index=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("output_requests.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    policy_sha256: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20))
    verdict: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Re-computation from the extract: {"status": "done"|"not_done"|"failed", "reason": ..., "matches": ...}
    recompute: Mapped[dict[str, Any]] = mapped_column(default=dict)
    differencing: Mapped[list[Any]] = mapped_column(default=list)
    # The ledger entry this file would add when released (count and sum tables with a known population).
    aggregate: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    job_id: Mapped[str | None] = mapped_column(String(32))
    checked_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class OutputReview(Base):
    """One checker's independent review of one round: claimed (or assigned), then submitted."""

    __tablename__ = "output_reviews"
    __table_args__ = (UniqueConstraint("request_id", "round", "reviewer_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("output_requests.id", ondelete="CASCADE"), index=True)
    round: Mapped[int]
    reviewer_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    assigned_by: Mapped[str] = mapped_column(String(32))
    claimed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    submitted_at: Mapped[dt.datetime | None]


class OutputVote(Base):
    """A checker's vote on one file (a changed file is a new row, so its votes start afresh)."""

    __tablename__ = "output_votes"
    __table_args__ = (
        UniqueConstraint("file_id", "reviewer_id"),
        CheckConstraint(_one_of("vote", VOTES), name="vote_known"),
        CheckConstraint("vote <> 'changes_requested' OR length(trim(comment)) > 0", name="changes_need_comment"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("output_requests.id", ondelete="CASCADE"), index=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("output_files.id", ondelete="CASCADE"))
    reviewer_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    vote: Mapped[str] = mapped_column(String(30))
    comment: Mapped[str] = mapped_column(Text, default="")
    round: Mapped[int]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class OutputComment(Base):
    __tablename__ = "output_comments"
    __table_args__ = (
        CheckConstraint(_one_of("visibility", VISIBILITIES), name="visibility_known"),
        CheckConstraint("length(trim(body)) > 0", name="not_blank"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("output_requests.id", ondelete="CASCADE"), index=True)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("output_groups.id", ondelete="CASCADE"))
    author_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    round: Mapped[int]
    visibility: Mapped[str] = mapped_column(String(20))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class OutputDecision(Base):
    """The consolidated decision of one round; an approval binds to the files' hashes."""

    __tablename__ = "output_decisions"
    __table_args__ = (
        UniqueConstraint("request_id", "round"),
        CheckConstraint(_one_of("outcome", OUTCOMES), name="outcome_known"),
        CheckConstraint("outcome = 'approve' OR length(trim(comment)) > 0", name="refusal_has_comment"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("output_requests.id", ondelete="CASCADE"), index=True)
    round: Mapped[int]
    outcome: Mapped[str] = mapped_column(String(20))
    comment: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # {file_id: sha256} of every current file at the moment of the decision.
    file_hashes: Mapped[dict[str, Any]] = mapped_column(default=dict)


class OutputRelease(Base):
    __tablename__ = "output_releases"
    __table_args__ = (
        CheckConstraint(
            "(revoked_at IS NULL) = (revoked_by IS NULL) AND (revoked_at IS NULL) = (revoke_reason IS NULL)",
            name="revocation_paired",
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("output_requests.id", ondelete="CASCADE"), unique=True)
    project_id: Mapped[str] = mapped_column(String(32), index=True)
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    bundle_bytes: Mapped[int]
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    released_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    released_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None]
    revoked_by: Mapped[str | None] = mapped_column(String(32))
    revoke_reason: Mapped[str | None] = mapped_column(Text)


class ProjectReleaseLedger(Base):
    """The disclosure engine's ``ReleaseLedger`` of one project, as JSON (``to_dict``/``from_dict``)."""

    __tablename__ = "project_release_ledgers"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    ledger: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


RERUN_STATES: tuple[str, ...] = ("pending", "done", "failed")
RERUN_OUTCOMES: tuple[str, ...] = ("reproduced", "differs", "not_rerun")


class OutputRerun(Base):
    """The code a round of a request was submitted with, and what re-running it made (issue 24, ADR 0018).

    One row per (request, round) that carried code: the notebook or script (its bytes in the store under
    ``code_sha256``, like a file's), the extract version it read, then the re-run job's answer: ``done``
    with one outcome per current file (``files``: file id -> reproduced / differs / not_rerun, the
    difference, and the automated checks run on the re-made file), or ``failed`` with a reason and a log
    that holds no data (exception names, limits hit, cell numbers; never values or printed output).
    """

    __tablename__ = "output_reruns"
    __table_args__ = (
        UniqueConstraint("request_id", "round"),
        CheckConstraint(_one_of("state", RERUN_STATES), name="rerun_state_known"),
        CheckConstraint("code_kind IN ('notebook', 'script')", name="code_kind_known"),
        CheckConstraint("(state = 'pending') = (finished_at IS NULL)", name="finished_when_not_pending"),
        CheckConstraint("state <> 'failed' OR length(trim(reason)) > 0", name="failure_has_reason"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("output_requests.id", ondelete="CASCADE"), index=True)
    round: Mapped[int]
    code_path: Mapped[str] = mapped_column(String(300))
    code_kind: Mapped[str] = mapped_column(String(20))
    code_sha256: Mapped[str] = mapped_column(String(64))
    code_bytes: Mapped[int]
    extract_version: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20), default="pending")
    reason: Mapped[str] = mapped_column(Text, default="")
    log: Mapped[list[Any]] = mapped_column(default=list)
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]


BUDGET_ENTRY_KINDS: tuple[str, ...] = ("spend", "refund")


class ProjectPrivacyBudget(Base):
    """A project's privacy-loss budget: the total its DAC set (or the policy's default). What is left is
    never stored: it is the total less the spends plus the refunds in ``privacy_budget_entries``. A
    release locks this row before it sums them, so two releases never both spend the last of it."""

    __tablename__ = "project_privacy_budgets"
    __table_args__ = (CheckConstraint("total_epsilon >= 0", name="total_not_negative"),)

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    total_epsilon: Mapped[float]
    set_by: Mapped[str | None] = mapped_column(String(32))  # None: the policy's default
    set_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")


class PrivacyBudgetEntry(Base):
    """One spend (a DP file released) or refund (a DAC correction) of a project's privacy budget."""

    __tablename__ = "privacy_budget_entries"
    __table_args__ = (
        CheckConstraint(_one_of("kind", BUDGET_ENTRY_KINDS), name="kind_known"),
        CheckConstraint("epsilon > 0", name="epsilon_positive"),
        CheckConstraint("kind = 'refund' OR file_id IS NOT NULL", name="spend_names_its_file"),
        CheckConstraint("kind = 'spend' OR length(trim(reason)) > 0", name="refund_has_reason"),
        UniqueConstraint("kind", "file_id"),  # one spend per file
        Index("ix_privacy_budget_entries_project", "project_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("project_privacy_budgets.project_id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10))
    epsilon: Mapped[float]
    request_id: Mapped[str | None] = mapped_column(String(32))
    file_id: Mapped[str | None] = mapped_column(String(32))
    actor_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
