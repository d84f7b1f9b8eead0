"""The data access committee: reviewers, conflicts of interest, votes, the chair's decision and
opt-out exemptions."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from projects import permissions as perm
from projects.kernel import (
    _LONG_TEXT_LIMIT,
    NotFound,
    ProjectError,
    ProjectsKernel,
    project_optout_exemptions,
)
from projects.models import (
    DECLARED_BEFORE_ASSIGNMENT,
    ApplicationVersion,
    ApprovedColumn,
    Decision,
    OptOutExemption,
    Project,
    ReviewAssignment,
    Vote,
    WithdrawnConflict,
)
from projects.rules import (
    APPROVED,
    CHANGES_REQUESTED,
    IN_REVIEW,
    REJECTED,
    SUBMITTED,
    UNDER_REVIEW_STATES,
    check_approved_columns,
    check_conflict_declaration,
    check_conflict_withdrawal,
    check_decision,
    check_optout_exemption,
    check_quorum,
    check_vote,
    counted_votes,
)
from tre.core.db import utcnow
from tre.core.identity import User


def _fingerprint(text: str) -> str:
    """What the audit log holds of a member's free-text reason: its SHA-256, which vouches for the text
    kept in the database without the log holding words that may name people (ADR 0065)."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ReviewOf:
    """One person's view of a version under review (``Committee.review_of``)."""

    assignments: list[ReviewAssignment]  # every reviewer's, oldest first
    assignment: ReviewAssignment | None  # the person's own
    votes: list[Vote] | None  # every vote, or None when the person may not see them
    own_vote: Vote | None
    counted: list[Vote]  # the votes that count towards the quorum if the person decides


class Committee(ProjectsKernel):
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

    def counted_votes_for(self, decider: Any, version: ApplicationVersion) -> list[Vote]:
        """The votes that count towards the quorum if ``decider`` decides ``version`` (what ``decide``
        checks; the decide page asks it first so that it offers a decision only once it can be made)."""
        conflicted = {a.reviewer_id for a in self.assignments(version) if a.conflicted}
        return counted_votes(self._votes(version), conflicted, decider_id=decider.id)

    def review_of(self, actor: Any, version: ApplicationVersion) -> ReviewOf:
        """What the review and decide pages show one person of a version, from its assignments and its
        votes read once each (it was six statements on the review page: the person's assignment twice,
        the votes, the assignments, and the person's vote again when they may not see the others')."""
        assignments = self.assignments(version)
        assignment = next((a for a in assignments if a.reviewer_id == actor.id), None)
        every_vote = self._votes(version)
        own = next((v for v in every_vote if v.reviewer_id == actor.id), None)
        visible = every_vote if perm.can_see_votes(actor, assignment, own is not None) else None
        conflicted = {a.reviewer_id for a in assignments if a.conflicted}
        return ReviewOf(
            assignments, assignment, visible, own, counted_votes(every_vote, conflicted, decider_id=actor.id)
        )

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
            if project.state not in UNDER_REVIEW_STATES:
                raise ProjectError("Reviewers can be assigned only to a submitted application")
            version = self.current_version(project)
            assert version is not None
            standing = {a.reviewer_id: a for a in self.assignments(version)}
            added = []
            for rid in reviewer_ids:
                reviewer = s.get(User, rid)
                if reviewer is None or not perm.can_review(reviewer):
                    raise ProjectError("Reviewers must be active members of the data access committee")
                if any(m.user_id == rid for m in project.active_members):
                    raise ProjectError("A member of the project's own team cannot review it")
                if rid in standing and standing[rid].conflicted:
                    raise ProjectError(
                        f"{reviewer.display_name} has declared a conflict of interest on this application "
                        "and cannot review it"
                    )
                if rid in standing:
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
        """A committee member declares a conflict of interest on the current version, assigned to it
        or not: they no longer vote, see votes or decide on it, and the chair cannot assign them. An
        unassigned member's declaration is a row of its own (``DECLARED_BEFORE_ASSIGNMENT``, ADR 0065);
        a second declaration is refused and changes nothing."""
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_declare_conflict(actor), "project.declare_conflict", actor, project)
            check_conflict_declaration(project.state, reason)
            version = self.current_version(project)
            assert version is not None  # a submitted application has a version
            assignment = self.assignment_for(version, actor.id)
            if assignment is not None and assignment.conflicted:
                raise ProjectError("You have already declared a conflict of interest on this application")
            if s.scalar(select(Vote.id).where(Vote.version_id == version.id, Vote.reviewer_id == actor.id)):
                raise ProjectError("You have already voted; ask the chair to set your vote aside")
            if assignment is None:
                assignment = ReviewAssignment(
                    version_id=version.id, reviewer_id=actor.id, assigned_by=DECLARED_BEFORE_ASSIGNMENT
                )
                s.add(assignment)
            assignment.conflict_declared_at = utcnow()
            assignment.conflict_reason = reason.strip()[:_LONG_TEXT_LIMIT]
            s.flush()
            self._record(
                s,
                "project.declare_conflict",
                actor,
                project,
                version=version.number,
                assigned=assignment.assigned,
                reason_sha256=_fingerprint(assignment.conflict_reason),
            )
        return assignment

    def withdraw_conflict(self, actor: Any, project_id: str, reason: str) -> WithdrawnConflict:
        """The member who declared a conflict of interest on the current version withdraws it as made in
        error, with a reason, while the application waits for the committee (ADR 0065).

        Only one's own: the call names no member, so nobody (the chair, an administrator) can withdraw
        another's declaration. A declaration made before assignment is deleted, so the chair may assign
        the member; one made after assignment is cleared, and the member is an ordinary assigned reviewer
        again. They hold no vote and have seen none: ``declare_conflict`` refuses a member who has voted
        and ``cast_vote`` one who has declared, and a reviewer sees votes only after voting. The
        declaration is kept, with the withdrawal, in ``withdrawn_conflicts`` for the chair's page.
        """
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_withdraw_conflict(actor), "project.withdraw_conflict", actor, project)
            version = self.current_version(project)
            assignment = self.assignment_for(version, actor.id)
            declared = assignment is not None and assignment.conflicted
            withdrawn_before = False  # asked only to say why there is nothing to withdraw
            if version is not None and not declared:
                earlier = select(WithdrawnConflict.id).where(
                    WithdrawnConflict.version_id == version.id, WithdrawnConflict.reviewer_id == actor.id
                )
                withdrawn_before = s.scalar(earlier.limit(1)) is not None
            check_conflict_withdrawal(
                project.state, declared=declared, withdrawn_before=withdrawn_before, reason=reason
            )
            assert version is not None and assignment is not None  # declared on the current version
            assert assignment.conflict_declared_at is not None and assignment.conflict_reason is not None
            withdrawal = WithdrawnConflict(
                version_id=version.id,
                reviewer_id=actor.id,
                while_assigned=assignment.assigned,
                declared_at=assignment.conflict_declared_at,
                declared_reason=assignment.conflict_reason,
                withdrawn_at=utcnow(),
                reason=reason.strip()[:_LONG_TEXT_LIMIT],
            )
            s.add(withdrawal)
            if assignment.assigned:
                assignment.conflict_declared_at = None
                assignment.conflict_reason = None
            else:
                s.delete(assignment)
            s.flush()
            self._record(
                s,
                "project.withdraw_conflict",
                actor,
                project,
                version=version.number,
                assigned=withdrawal.while_assigned,
                withdrawal_id=withdrawal.id,
                declared_reason_sha256=_fingerprint(withdrawal.declared_reason),
                reason_sha256=_fingerprint(withdrawal.reason),
            )
        return withdrawal

    def withdrawn_conflicts(self, version: ApplicationVersion | None) -> list[WithdrawnConflict]:
        """Every declaration of a conflict of interest withdrawn on a version, oldest withdrawal first."""
        if version is None:
            return []
        return list(
            self.session.scalars(
                select(WithdrawnConflict)
                .where(WithdrawnConflict.version_id == version.id)
                .order_by(WithdrawnConflict.withdrawn_at)
            )
        )

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
            counted = self.counted_votes_for(actor, version)
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
        return self.decisions_of([project.id]).get(project.id, [])

    def decisions_of(self, project_ids: list[str]) -> dict[str, list[Decision]]:
        """Each project's decisions, newest first, in one statement."""
        out: dict[str, list[Decision]] = {}
        if project_ids:
            for decision in self.session.scalars(
                select(Decision).where(Decision.project_id.in_(project_ids)).order_by(Decision.decided_at.desc())
            ):
                out.setdefault(decision.project_id, []).append(decision)
        return out

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
        with self._tx() as s:
            project, exemption = self._revocable_exemption(s, actor, project_id, list_name, lock=True)
            s.delete(exemption)
            self._record(s, "project.optout_revoke", actor, project, list=exemption.list_name)

    def exemption_to_revoke(self, actor: Any, project_id: str, list_name: str) -> tuple[Project, OptOutExemption]:
        """What ``revoke_optout_exemption`` would withdraw, checked as it checks, for its confirmation
        page; changes nothing."""
        with self._tx() as s:
            return self._revocable_exemption(s, actor, project_id, list_name, lock=False)

    def _revocable_exemption(
        self, s: Session, actor: Any, project_id: str, list_name: str, *, lock: bool
    ) -> tuple[Project, OptOutExemption]:
        list_name = (list_name or "").strip().lower()
        project = self._project(s, project_id, lock=lock)
        self._allow(perm.can_exempt_from_optout(actor), "project.optout_revoke", actor, project)
        exemption = s.scalar(
            select(OptOutExemption).where(
                OptOutExemption.project_id == project.id, OptOutExemption.list_name == list_name
            )
        )
        if exemption is None:
            raise NotFound("The project is not exempt from that list")
        return project, exemption

    def optout_exemptions(self, project: Project) -> list[OptOutExemption]:
        return project_optout_exemptions(self.session, project.id)
