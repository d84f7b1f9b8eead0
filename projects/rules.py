"""The rules of the projects domain: *may this happen now?* Plain Python, no database, no Flask.

The project lifecycle is one table of allowed transitions (``TRANSITIONS``); everything that
moves a project asks ``check_transition`` and the diagram in ``docs/projects.md`` is generated
from the same table (``mermaid_diagram``). The access gate's conditions are here too, as a pure
function of facts the gate gathers from the database.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tre.core import statemachine

# --- vocabularies (the models turn each into a check constraint) ---------------------------------

DRAFT = "draft"
SUBMITTED = "submitted"
IN_REVIEW = "in_review"
APPROVED = "approved"
CHANGES_REQUESTED = "changes_requested"
REJECTED = "rejected"
ACTIVE = "active"
SUSPENDED = "suspended"
CLOSED = "closed"
DATA_DESTROYED = "data_destroyed"

STATES: tuple[str, ...] = (
    DRAFT,
    SUBMITTED,
    IN_REVIEW,
    APPROVED,
    CHANGES_REQUESTED,
    REJECTED,
    ACTIVE,
    SUSPENDED,
    CLOSED,
    DATA_DESTROYED,
)
STATE_LABELS: dict[str, str] = {
    DRAFT: "Draft",
    SUBMITTED: "Submitted",
    IN_REVIEW: "In review",
    APPROVED: "Approved",
    CHANGES_REQUESTED: "Changes requested",
    REJECTED: "Rejected",
    ACTIVE: "Active",
    SUSPENDED: "Suspended",
    CLOSED: "Closed",
    DATA_DESTROYED: "Data destroyed",
}

SOURCE_KINDS: tuple[str, ...] = ("parquet", "csv", "database_table")
SENSITIVITY_LEVELS: tuple[str, ...] = ("low", "medium", "high", "special_category")
COLUMN_ROLES: tuple[str, ...] = ("direct_identifier", "quasi_identifier", "attribute", "free_text")
COLUMN_ROLE_LABELS = {
    "direct_identifier": "Direct identifier",
    "quasi_identifier": "Quasi-identifier",
    "attribute": "Attribute",
    "free_text": "Free text (may hold identifiers)",
}
PRINCIPAL_INVESTIGATOR, RESEARCHER = "principal_investigator", "researcher"
MEMBER_ROLES: tuple[str, ...] = (PRINCIPAL_INVESTIGATOR, RESEARCHER)

VOTE_APPROVE = "approve"
VOTE_APPROVE_WITH_CONDITIONS = "approve_with_conditions"
VOTE_CHANGES_NEEDED = "changes_needed"
VOTE_REJECT = "reject"
VOTE_CHOICES: tuple[str, ...] = (VOTE_APPROVE, VOTE_APPROVE_WITH_CONDITIONS, VOTE_CHANGES_NEEDED, VOTE_REJECT)
VOTE_LABELS = {
    VOTE_APPROVE: "Approve",
    VOTE_APPROVE_WITH_CONDITIONS: "Approve with conditions",
    VOTE_CHANGES_NEEDED: "Changes needed",
    VOTE_REJECT: "Reject",
}

DECISION_OUTCOMES: tuple[str, ...] = (APPROVED, CHANGES_REQUESTED, REJECTED)
EXTENSION_OUTCOMES: tuple[str, ...] = ("granted", "refused")

SAFE_RESEARCHER_COURSE = "safe_researcher"


class RuleViolation(Exception):
    """Something that may not happen now; the message is safe to show to the person."""


class IllegalTransition(RuleViolation):
    pass


# --- the lifecycle --------------------------------------------------------------------------------

# (from, to) -> the name of the step. Nothing else moves a project.
TRANSITIONS: dict[tuple[str, str], str] = {
    (DRAFT, SUBMITTED): "submit",
    (SUBMITTED, IN_REVIEW): "start review",
    (IN_REVIEW, APPROVED): "approve",
    (IN_REVIEW, CHANGES_REQUESTED): "request changes",
    (IN_REVIEW, REJECTED): "reject",
    (CHANGES_REQUESTED, SUBMITTED): "resubmit",
    (APPROVED, ACTIVE): "activate",
    (ACTIVE, SUSPENDED): "suspend",
    (SUSPENDED, ACTIVE): "reinstate",
    # An approved project that never started, a running one, or a suspended one can be closed.
    (APPROVED, CLOSED): "close",
    (ACTIVE, CLOSED): "close",
    (SUSPENDED, CLOSED): "close",
    (CLOSED, DATA_DESTROYED): "record destruction",
}

TERMINAL_STATES = frozenset({REJECTED, DATA_DESTROYED})
EDITABLE_STATES = frozenset({DRAFT, CHANGES_REQUESTED})


# A committee may exempt a project from an opt-out list while it reviews the application or once
# it has approved it, and until the project closes.
OPTOUT_EXEMPTION_STATES = frozenset({IN_REVIEW, APPROVED, ACTIVE, SUSPENDED})
_LIST_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def check_optout_exemption(state: str, legal_basis: str, list_name: str, basis: str) -> None:
    """May the committee record an opt-out exemption now? Raise ``RuleViolation`` saying why not."""
    if not list_name or len(list_name) > 100 or not set(list_name) <= _LIST_NAME_CHARS:
        raise RuleViolation("Name the opt-out list (lower-case letters, digits, dashes and underscores)")
    if state not in OPTOUT_EXEMPTION_STATES:
        raise RuleViolation("Only a project in review, approved, active or suspended can be exempted from a list")
    if not (legal_basis or "").strip():
        raise RuleViolation("The project has no recorded legal basis to exempt it")
    if len((basis or "").strip()) < 10:
        raise RuleViolation(
            "Say which part of the legal basis exempts the project (for example the section 251 reference)"
        )


def allowed_targets(state: str) -> list[str]:
    return [to for (frm, to) in TRANSITIONS if frm == state]


def check_transition(current: str, target: str) -> str:
    """Return the step's name, or raise ``IllegalTransition`` saying what is possible instead."""
    if current not in STATES or target not in STATES:
        raise IllegalTransition(f"Unknown project state: {target if current in STATES else current}")
    step = TRANSITIONS.get((current, target))
    if step is None:
        possible = ", ".join(STATE_LABELS[t].lower() for t in allowed_targets(current)) or "nothing (it is final)"
        raise IllegalTransition(
            f"A project that is {STATE_LABELS[current].lower()} cannot become "
            f"{STATE_LABELS[target].lower()}; "
            f"it can become: {possible}"
        )
    return step


def mermaid_diagram() -> str:
    """The lifecycle as a Mermaid state diagram, generated from ``TRANSITIONS``."""
    return statemachine.mermaid_diagram(TRANSITIONS, STATES, DRAFT)


# --- policy settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectPolicy:
    """Settings of the committee and the gate that an instance may change."""

    quorum: int = 2
    training_course: str = SAFE_RESEARCHER_COURSE
    training_warning_days: int = 30
    expiry_warning_days: int = 30

    @classmethod
    def from_settings(cls, settings: Any) -> ProjectPolicy:
        return cls(
            quorum=int(getattr(settings, "dac_quorum", cls.quorum)),
            training_warning_days=int(getattr(settings, "training_warning_days", cls.training_warning_days)),
            expiry_warning_days=int(getattr(settings, "project_expiry_warning_days", cls.expiry_warning_days)),
        )


# --- applications ---------------------------------------------------------------------------------

REQUIRED_TEXT_FIELDS: tuple[tuple[str, str], ...] = (
    ("title", "Enter a project title"),
    ("lay_summary", "Enter a lay summary"),
    ("scientific_purpose", "Describe the scientific purpose"),
    ("public_benefit", "Describe the public benefit"),
    ("legal_basis", "State the legal basis for using the data"),
    ("ethics_reference", "Enter the ethics or HRA approval reference"),
)
MAX_PROJECT_YEARS = 5


def missing_for_submission(application: Mapping[str, Any], today: dt.date) -> list[str]:
    """Everything an application still lacks before it can be submitted, in the form's order.

    ``application`` is the snapshot that becomes the submitted version: text fields, ``start_date``
    and ``end_date`` (dates or None), ``datasets`` (each with ``name``, ``columns``,
    ``justification``) and ``members``.
    """
    return [message for _, message in submission_problems(application, today)]


def submission_problems(application: Mapping[str, Any], today: dt.date) -> list[tuple[str, str]]:
    """``missing_for_submission`` with the form field each problem is about, as (field, message):
    a text field's name, ``start_date``/``end_date``, ``datasets``, or ``columns:<dataset>`` and
    ``justification:<dataset>`` for one dataset's request (so a form can link each to its field)."""
    problems = [(key, message) for key, message in REQUIRED_TEXT_FIELDS if not str(application.get(key) or "").strip()]
    start, end = application.get("start_date"), application.get("end_date")
    if start is None:
        problems.append(("start_date", "Enter the start date"))
    if end is None:
        problems.append(("end_date", "Enter the end date"))
    if start is not None and end is not None:
        if end < start:
            problems.append(("end_date", "The end date must be after the start date"))
        elif (end - start).days > 366 * MAX_PROJECT_YEARS:
            problems.append(
                ("end_date", f"A project can last {MAX_PROJECT_YEARS} years at most; ask again to extend it later")
            )
    if end is not None and end < today:
        problems.append(("end_date", "The end date is in the past"))
    datasets = application.get("datasets") or []
    if not datasets:
        problems.append(("datasets", "Choose at least one dataset"))
    for ds in datasets:
        name = ds.get("name")
        if not ds.get("columns"):
            problems.append((f"columns:{name}", f"Choose the columns you need from {name}"))
        if not str(ds.get("justification") or "").strip():
            problems.append((f"justification:{name}", f"Explain why you need each column of {name}"))
    return problems


def check_requested_columns(requested: Iterable[str], available: Sequence[str]) -> list[str]:
    """The requested columns in the dataset's own order; unknown names are refused."""
    wanted = list(dict.fromkeys(requested))
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise RuleViolation(f"These columns are not in the dataset: {', '.join(unknown)}")
    return [c for c in available if c in wanted]


def check_approved_columns(
    requested: Mapping[str, Sequence[str]], approved: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """The chair may approve fewer columns than asked, never more, and at least one in all."""
    result: dict[str, list[str]] = {}
    for dataset, columns in approved.items():
        if dataset not in requested:
            raise RuleViolation(f"The application did not ask for the dataset {dataset}")
        extra = [c for c in columns if c not in requested[dataset]]
        if extra:
            raise RuleViolation(f"Columns not asked for cannot be approved: {', '.join(extra)}")
        kept = [c for c in requested[dataset] if c in columns]
        if kept:
            result[dataset] = kept
    if not result:
        raise RuleViolation("Approve at least one column, or request changes instead")
    return result


# --- the committee --------------------------------------------------------------------------------


def check_vote(choice: str, rationale: str) -> None:
    if choice not in VOTE_CHOICES:
        raise RuleViolation("Choose approve, approve with conditions, changes needed or reject")
    if not (rationale or "").strip():
        raise RuleViolation("Give the reasons for your vote")


# The states in which an application waits for the committee: reviewers are assigned, and any member
# may declare a conflict of interest or withdraw their own declaration, only then.
UNDER_REVIEW_STATES = frozenset({SUBMITTED, IN_REVIEW})


def check_conflict_declaration(state: str, reason: str) -> None:
    """May a committee member declare a conflict of interest on an application in ``state`` now?"""
    if state not in UNDER_REVIEW_STATES:
        raise RuleViolation(
            "A conflict of interest can be declared only while the application is waiting for the "
            f"committee (submitted or in review); this one is {STATE_LABELS.get(state, state).lower()}"
        )
    if not (reason or "").strip():
        raise RuleViolation("Describe the conflict of interest")


def check_conflict_withdrawal(state: str, *, declared: bool, withdrawn_before: bool, reason: str) -> None:
    """May a committee member withdraw their own declaration of a conflict of interest now? Only while
    the application waits for the committee (as for declaring), only a declaration they hold on its
    current version, and with the reason it was made in error (ADR 0065)."""
    if state not in UNDER_REVIEW_STATES:
        raise RuleViolation(
            "A declaration of a conflict of interest can be withdrawn only while the application is waiting "
            f"for the committee (submitted or in review); this one is {STATE_LABELS.get(state, state).lower()}"
        )
    if not declared:
        if withdrawn_before:
            raise RuleViolation(
                "You have already withdrawn your declaration of a conflict of interest on this application; "
                "there is nothing more to withdraw"
            )
        raise RuleViolation(
            "You have not declared a conflict of interest on this application, so there is nothing to withdraw"
        )
    if not (reason or "").strip():
        raise RuleViolation("Say why your declaration of a conflict of interest was made in error")


def counted_votes(votes: Iterable[Any], conflicted: Iterable[str], *, decider_id: str) -> list[Any]:
    """The votes that count towards the quorum: not from a reviewer with a declared conflict of
    interest, and not from the person deciding. A chair who is also an assigned reviewer may vote
    (the vote is on the record and shown to the committee), but a decision needs the quorum from
    *other* reviewers, so no one decides on the strength of their own vote."""
    excluded = set(conflicted) | {decider_id}
    return [v for v in votes if v.reviewer_id not in excluded]


def check_quorum(votes_cast: int, quorum: int) -> None:
    if votes_cast < quorum:
        raise RuleViolation(
            f"The committee has not reached its quorum: {votes_cast} of {quorum} votes from reviewers "
            "without a conflict of interest, not counting the chair deciding"
        )


# Characters that break a line or hide text in a one-line field (a mail subject, a page title):
# C0/C1 controls (CR, LF, TAB...), format characters (right-to-left overrides, zero-width
# characters) and the Unicode line and paragraph separators.
_NOT_ON_ONE_LINE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def check_single_line(label: str, value: str) -> None:
    if any(unicodedata.category(ch) in _NOT_ON_ONE_LINE for ch in value):
        raise RuleViolation(
            f"The {label} must be one line of plain text: remove line breaks, tabs and control characters"
        )


def check_decision(outcome: str, conditions: str, public_comment: str) -> None:
    if outcome not in DECISION_OUTCOMES:
        raise RuleViolation("Choose approve, request changes or reject")
    if outcome in (CHANGES_REQUESTED, REJECTED) and not (public_comment or "").strip():
        raise RuleViolation("Tell the applicant why, in the comment they will see")


# --- the access gate ------------------------------------------------------------------------------

GATE_REASONS: dict[str, str] = {
    "user_unknown": "The account does not exist",
    "user_inactive": "The account is not active",
    "mfa_not_enrolled": "Multi-factor authentication is not set up",
    "project_unknown": "The project does not exist",
    "project_suspended": "The project is suspended",
    "project_not_active": "The project is not active",
    "before_start_date": "The project has not started yet",
    "after_end_date": "The project has passed its end date",
    "not_a_member": "The person is not a member of the project",
    "no_agreement_published": "No data access agreement has been published",
    "agreement_not_signed": "The current data access agreement is not signed for this project",
    "training_missing_or_expired": "Safe researcher training is missing or has expired",
}


@dataclass(frozen=True)
class GateFacts:
    """What the gate needs to know, gathered from the database in one place."""

    user_exists: bool
    user_active: bool
    mfa_enrolled: bool
    project_exists: bool
    project_state: str | None
    start_date: dt.date | None
    end_date: dt.date | None
    active_member: bool
    agreement_published: bool
    current_agreement_signed: bool
    training_expires_on: dt.date | None


def gate_reasons(facts: GateFacts, today: dt.date) -> list[str]:
    """Every reason the person may not touch the project's data today (empty means allowed)."""
    reasons: list[str] = []
    if not facts.user_exists:
        return ["user_unknown"]
    if not facts.user_active:
        reasons.append("user_inactive")
    if not facts.mfa_enrolled:
        reasons.append("mfa_not_enrolled")
    if not facts.project_exists:
        return [*reasons, "project_unknown"]
    if facts.project_state == SUSPENDED:
        reasons.append("project_suspended")
    elif facts.project_state != ACTIVE:
        reasons.append("project_not_active")
    if facts.start_date is None or today < facts.start_date:
        reasons.append("before_start_date")
    if facts.end_date is None or today > facts.end_date:
        reasons.append("after_end_date")
    if not facts.active_member:
        reasons.append("not_a_member")
    if not facts.agreement_published:
        reasons.append("no_agreement_published")
    elif not facts.current_agreement_signed:
        reasons.append("agreement_not_signed")
    if facts.training_expires_on is None or facts.training_expires_on < today:
        reasons.append("training_missing_or_expired")
    return reasons


def check_extension(current_end: dt.date | None, requested_end: dt.date, reason: str) -> None:
    if current_end is None or requested_end <= current_end:
        raise RuleViolation("The new end date must be later than the current end date")
    if not (reason or "").strip():
        raise RuleViolation("Explain why the project needs more time")
