"""Clerical review of the person index's uncertain band, by linkage officers only.

A linkage officer lists the undecided candidate pairs of the index in force, opens one to see both
records' identifiers side by side (read from the sources in the identifiable zone at that moment,
never copied into the database), and decides match or no match with a reason. Every list, every
view and every decision writes an audit event naming the candidate, never an identifier; every
refusal is audited too. Decisions are kept by record pair and applied by every later run
(``PersonIndex.build``), so a pair is decided once.

Separation of duties: the permission is granted only by the linkage officer role, and
``has_permission`` withholds it from anybody who also holds the researcher or output checker role
(``tre/core/permissions.py``), whichever way the roles were given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pseudonymisation.linkage import Record
from pseudonymisation.person_index import LinkagePermissionDenied, LinkageServiceError, PersonIndex, records_of
from pseudonymisation.person_index_models import DECISIONS, LinkageCandidate, LinkageDecision, LinkageRun
from tre.core.audit import DENIED, AuditLog
from tre.core.db import transaction
from tre.core.identity import User
from tre.core.keys import KeyProvider
from tre.core.permissions import Permission, has_permission

MAX_RATIONALE = 2000
FIELDS = ("nhs_number", "first_name", "surname", "date_of_birth", "sex", "postcode")


@dataclass(frozen=True)
class PairView:
    """One candidate pair, side by side: what a linkage officer decides on."""

    candidate: LinkageCandidate
    left: Record | None  # None when the record is no longer in its source
    right: Record | None

    def rows(self) -> list[tuple[str, Any, Any, bool]]:
        """(field, left value, right value, values agree) for the page."""
        out = []
        for name in FIELDS:
            a = getattr(self.left, name, None) if self.left else None
            b = getattr(self.right, name, None) if self.right else None
            out.append((name, a, b, a is not None and str(a).strip().upper() == str(b or "").strip().upper()))
        return out


@dataclass
class LinkageReview:
    session: Session
    audit: AuditLog
    keys: KeyProvider
    request_id: str | None = None

    def _require(self, actor: User | None, action: str, target_id: str | None = None) -> User:
        if actor is None or not has_permission(actor, Permission.LINKAGE_REVIEW):
            with transaction(self.session) as s:
                self.audit.record(s, action, actor_id=actor.id if actor else None, outcome=DENIED,
                                  target_type="linkage_candidate" if target_id else None,
                                  target_id=(target_id or "")[:64] or None, request_id=self.request_id,
                                  detail={"reason": "not a linkage officer, or holds a conflicting role"})
            raise LinkagePermissionDenied("Only a linkage officer may review candidate pairs")
        return actor

    def _index(self) -> PersonIndex:
        return PersonIndex(self.session, self.audit, self.keys, self.request_id)

    def queue(self, actor: User) -> tuple[LinkageRun | None, list[LinkageCandidate]]:
        """The undecided pairs of the index in force, most likely match first (no identifiers)."""
        self._require(actor, "linkage.review_queue")
        run = self._index().current_run()
        if run is None:
            pending: list[LinkageCandidate] = []
        else:
            decided = {
                (d.left_source, d.left_record_id, d.right_source, d.right_record_id)
                for d in self.session.scalars(select(LinkageDecision))
            }
            pending = [
                c for c in self.session.scalars(
                    select(LinkageCandidate).where(LinkageCandidate.run_id == run.id)
                    .order_by(LinkageCandidate.match_probability.desc(), LinkageCandidate.id)
                )
                if (c.left_source, c.left_record_id, c.right_source, c.right_record_id) not in decided
            ]
        with transaction(self.session) as s:
            self.audit.record(s, "linkage.review_queue", actor_id=actor.id, target_type="linkage_run",
                              target_id=run.id if run else None, request_id=self.request_id,
                              detail={"pending": len(pending)})
        return run, pending

    def view(self, actor: User, candidate_id: str) -> PairView:
        """Both records of one pair, identifiers included; the view is audited."""
        self._require(actor, "linkage.view_pair", candidate_id)
        candidate = self.session.get(LinkageCandidate, candidate_id)
        if candidate is None:
            raise LinkageServiceError("No such candidate pair")
        sources = {s.dataset.name: s for s in self._index().sources()}
        left = _find(sources, candidate.left_source, candidate.left_record_id)
        right = _find(sources, candidate.right_source, candidate.right_record_id)
        with transaction(self.session) as s:
            self.audit.record(s, "linkage.view_pair", actor_id=actor.id, target_type="linkage_candidate",
                              target_id=candidate.id, request_id=self.request_id,
                              detail={"run": candidate.run_id, "sources": [candidate.left_source,
                                                                           candidate.right_source]})
        return PairView(candidate, left, right)

    def decide(self, actor: User, candidate_id: str, decision: str, rationale: str) -> LinkageDecision:
        """Record a linkage officer's verdict on a pair; the next run applies it."""
        self._require(actor, "linkage.decide", candidate_id)
        if decision not in DECISIONS:
            raise LinkageServiceError("The decision must be match or no_match")
        rationale = (rationale or "").strip()
        if not rationale:
            raise LinkageServiceError("Give the reason for the decision")
        if len(rationale) > MAX_RATIONALE:
            raise LinkageServiceError(f"The reason is longer than {MAX_RATIONALE} characters")
        candidate = self.session.get(LinkageCandidate, candidate_id)
        if candidate is None:
            raise LinkageServiceError("No such candidate pair")
        try:
            with transaction(self.session) as s:
                row = LinkageDecision(
                    left_source=candidate.left_source, left_record_id=candidate.left_record_id,
                    right_source=candidate.right_source, right_record_id=candidate.right_record_id,
                    decision=decision, rationale=rationale, candidate_id=candidate.id, decided_by=actor.id,
                )
                s.add(row)
                s.flush()
                self.audit.record(s, "linkage.decide", actor_id=actor.id, target_type="linkage_candidate",
                                  target_id=candidate.id, request_id=self.request_id,
                                  detail={"decision": decision, "run": candidate.run_id})
        except IntegrityError:
            raise LinkageServiceError("This pair has already been decided") from None
        return row


def _find(sources: dict[str, Any], source: str, record_id: str) -> Record | None:
    found = sources.get(source)
    if found is None:
        return None
    return next((r for r in records_of(found) if r.record_id == record_id), None)
