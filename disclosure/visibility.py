"""THE rule for an output file's content outside the workspace: who may see it, now.

Outside the workspace, the content of an output file (its page, its raw bytes, the API, the release
bundle) is shown to

* an output checker while the request is theirs to review: they are an eligible checker (neither
  the author nor, now or ever, on the project's team), they hold a review place of the current
  round, the request is waiting for review or approved and not yet released, and the project is
  open (not suspended, closed or outside its dates); and
* the project's team only as released content: the request is released and its release not
  revoked, the file is one the release holds, and the access gate lets this person into the project
  now (a current member, signed, trained, the project open).

Nobody else sees it: not the author or the team before release (they see their files inside the
workspace), not a removed member, not a checker without a place, not an auditor. ``content_rule``
decides from plain facts (no database); ``content_access`` gathers the facts. Every route that
serves content asks ``content_access`` through the service, which records each refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from disclosure import permissions as perm
from disclosure import rules
from disclosure.models import OutputFile, OutputRelease, OutputRequest, OutputReview
from projects.gate import check_access

CHECKER = "checker"
TEAM = "team"

# A checker sees content only in these states (claimed and waiting for review, or approved and
# waiting for release); from release on the content is the team's, and a closed request shows none.
CHECKER_STATES = frozenset({rules.SUBMITTED, rules.CHECKING, rules.AWAITING_REVIEW, rules.APPROVED})
# The gate's reasons that are about the project rather than the person: they close it to checkers too.
PROJECT_CLOSED_REASONS = frozenset(
    {"project_unknown", "project_suspended", "project_not_active", "before_start_date", "after_end_date"}
)


@dataclass(frozen=True)
class ContentFacts:
    """What the rule needs to know about one person, one request and (optionally) one of its files."""

    user_active: bool
    eligible_checker: bool
    holds_review_place: bool
    state: str
    release_open: bool  # a release exists and is not revoked
    file_released: bool  # the file is one of the release's (True when asking about the whole bundle)
    gate_reasons: tuple[str, ...]  # the access gate's answer for this person and project


@dataclass(frozen=True)
class ContentAccess:
    allowed: bool
    as_: str | None = None  # CHECKER or TEAM when allowed
    reason: str = ""  # why not (for the audit log; never shown with identifiers)

    @property
    def message(self) -> str:
        """What the person is told when refused."""
        if self.reason.startswith("access gate"):
            return "The access gate does not let you into this project now, so its outputs cannot be seen or downloaded"
        return (
            "Outputs are seen outside the workspace only by their checkers during review, and by the "
            "project's team once released"
        )


def content_rule(facts: ContentFacts) -> ContentAccess:
    """May this person see the content now? The whole rule, from facts alone."""
    if not facts.user_active:
        return ContentAccess(False, reason="account not active")
    if facts.eligible_checker:
        closed = sorted(r for r in facts.gate_reasons if r in PROJECT_CLOSED_REASONS)
        if closed:
            return ContentAccess(False, reason="access gate: " + ",".join(closed))
        if facts.state not in CHECKER_STATES:
            return ContentAccess(False, reason=f"checker: request is {facts.state}")
        if not facts.holds_review_place:
            return ContentAccess(False, reason="checker without a review place this round")
        return ContentAccess(True, CHECKER)
    if facts.state != rules.RELEASED or not facts.release_open:
        return ContentAccess(False, reason=f"not released (request is {facts.state})")
    if facts.gate_reasons:
        return ContentAccess(False, reason="access gate: " + ",".join(sorted(facts.gate_reasons)))
    if not facts.file_released:
        return ContentAccess(False, reason="file not in the release")
    return ContentAccess(True, TEAM)


def gather(session: Session, user: Any, req: OutputRequest) -> tuple[ContentFacts, frozenset[str]]:
    """The facts about the whole request (``file_released`` True) and the ids of the files released."""
    active = bool(user is not None and getattr(user, "is_active", False))
    checker = active and perm.can_check(session, user, req)
    place = checker and (
        session.scalar(
            select(OutputReview.id).where(
                OutputReview.request_id == req.id,
                OutputReview.round == req.round,
                OutputReview.reviewer_id == user.id,
            )
        )
        is not None
    )
    release = session.scalar(select(OutputRelease).where(OutputRelease.request_id == req.id))
    entries = (release.manifest or {}).get("files", []) if release is not None else []
    released = frozenset(str(entry.get("file_id")) for entry in entries)
    reasons = tuple(check_access(session, user.id, req.project_id).reasons) if user is not None else ("user_unknown",)
    facts = ContentFacts(
        user_active=active,
        eligible_checker=checker,
        holds_review_place=place,
        state=req.state,
        release_open=release is not None and release.revoked_at is None,
        file_released=True,
        gate_reasons=reasons,
    )
    return facts, released


def content_access(session: Session, user: Any, req: OutputRequest, file: OutputFile | None = None) -> ContentAccess:
    """``content_rule`` for this person, request and file (``None``: the whole release bundle)."""
    return content_access_to_files(session, user, req, [file])[file.id if file is not None else None]


def content_access_to_files(
    session: Session, user: Any, req: OutputRequest, files: Sequence[OutputFile | None]
) -> dict[str | None, ContentAccess]:
    """``content_access`` for several files of one request, gathering the facts once (a page's links)."""
    facts, released = gather(session, user, req)
    return {
        (f.id if f is not None else None): content_rule(replace(facts, file_released=f is None or f.id in released))
        for f in files
    }
