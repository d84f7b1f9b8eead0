"""Tables of the person index: linkage runs, each record's person, the uncertain band, and a
linkage officer's decisions on pairs (kept across runs, so the next run reuses them).

All of it lives in the identifiable zone: no workspace and no researcher reaches these tables. They
hold record keys (source and record id), never names, dates or postcodes; a person's pseudonym is
the 16-byte block the project tokens are made from (encrypted under the linkage key).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import CheckConstraint, Float, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tre.core.db import Base, new_id, utcnow

RUN_STATES = ("queued", "running", "succeeded", "failed")
METHODS = ("deterministic", "probabilistic", "clerical", "singleton")
DECISIONS = ("match", "no_match")


class LinkageRun(Base):
    """One build of the person index over the linked datasets as they stood; the newest succeeded
    run is the index in force. ``inputs_sha256`` covers the sources' bytes, their linkage columns,
    the settings and the officers' decisions: the same inputs asked for twice are one run."""

    __tablename__ = "linkage_runs"
    __table_args__ = (
        CheckConstraint(f"state IN {RUN_STATES!r}", name="state_known"),
        CheckConstraint("(state IN ('succeeded', 'failed')) = (finished_at IS NOT NULL)", name="finished_when_final"),
        Index("ix_linkage_runs_state", "state", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    inputs_sha256: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(20), default="queued")
    job_id: Mapped[str | None] = mapped_column(String(32))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    requested_by: Mapped[str | None] = mapped_column(String(32))
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    # Counts and ratios only (docs/pseudonymisation/linkage.md, "Quality"); no identifier.
    quality: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text)


class PersonIndexEntry(Base):
    """Where one source record landed in one run: its person, how and how surely."""

    __tablename__ = "person_index_entries"
    __table_args__ = (
        CheckConstraint(f"method IN {METHODS!r}", name="method_known"),
        CheckConstraint(
            "(method = 'singleton') = (match_probability IS NULL)", name="probability_unless_singleton"
        ),
        Index("ix_person_index_entries_person", "run_id", "person_id"),
        Index("ix_person_index_entries_pseudonym", "person_pseudonym"),  # re-identification's lookup
    )

    run_id: Mapped[str] = mapped_column(ForeignKey("linkage_runs.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(String(100), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    person_id: Mapped[int]
    person_pseudonym: Mapped[bytes] = mapped_column(LargeBinary(16))
    method: Mapped[str] = mapped_column(String(20))
    match_probability: Mapped[float | None] = mapped_column(Float)


class LinkageCandidate(Base):
    """A pair of one run's uncertain band (scored, but below the linking threshold), for review."""

    __tablename__ = "linkage_candidates"
    __table_args__ = (
        UniqueConstraint("run_id", "left_source", "left_record_id", "right_source", "right_record_id",
                         name="uq_linkage_candidates_pair"),
        Index("ix_linkage_candidates_run", "run_id", "match_probability"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(ForeignKey("linkage_runs.id", ondelete="CASCADE"))
    left_source: Mapped[str] = mapped_column(String(100))
    left_record_id: Mapped[str] = mapped_column(String(200))
    right_source: Mapped[str] = mapped_column(String(100))
    right_record_id: Mapped[str] = mapped_column(String(200))
    match_probability: Mapped[float] = mapped_column(Float)
    match_weight: Mapped[float] = mapped_column(Float)


class LinkageDecision(Base):
    """A linkage officer's verdict on a pair of records; every later run applies it."""

    __tablename__ = "linkage_decisions"
    __table_args__ = (
        UniqueConstraint("left_source", "left_record_id", "right_source", "right_record_id",
                         name="uq_linkage_decisions_pair"),
        CheckConstraint(f"decision IN {DECISIONS!r}", name="decision_known"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    left_source: Mapped[str] = mapped_column(String(100))
    left_record_id: Mapped[str] = mapped_column(String(200))
    right_source: Mapped[str] = mapped_column(String(100))
    right_record_id: Mapped[str] = mapped_column(String(200))
    decision: Mapped[str] = mapped_column(String(10))
    rationale: Mapped[str] = mapped_column(Text, default="")
    candidate_id: Mapped[str | None] = mapped_column(String(32))
    decided_by: Mapped[str] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
