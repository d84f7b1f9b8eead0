"""The checkers' use cases: claim or assign a review place, vote blind, comment, submit the review,
consolidate the round, move on past failed automated checks."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from disclosure import permissions as perm
from disclosure import rules
from disclosure.kernel import NotFound, OutputError, OutputsBase, _Denied
from disclosure.models import (
    OutputComment,
    OutputDecision,
    OutputFile,
    OutputGroup,
    OutputRequest,
    OutputReview,
    OutputVote,
)
from disclosure.progress import automated_status
from disclosure.rules import RuleViolation
from tre.core.db import utcnow
from tre.core.identity import User


class Reviewing(OutputsBase):
    def claim(self, actor: Any, request_id: str) -> OutputReview:
        return self.assign(actor, request_id, actor.id)

    def assign(self, actor: Any, request_id: str, reviewer_id: str) -> OutputReview:
        """Take (or give another eligible checker) one of the request's independent review seats."""
        with self._tx("output.claim" if reviewer_id == actor.id else "output.assign", actor, request_id) as s:
            req = self._get(s, request_id, lock=True)
            self._require_checker(s, actor, req, "output.assign")
            reviewer = s.get(User, reviewer_id)
            if reviewer is None or not perm.can_check(s, reviewer, req):
                raise RuleViolation("That person cannot check this request (not a checker, or on the project)")
            if req.state not in (rules.SUBMITTED, rules.CHECKING, rules.AWAITING_REVIEW):
                raise RuleViolation("Only a request waiting for review can be claimed")
            reviews = self._reviewers(s, req)
            if any(r.reviewer_id == reviewer_id for r in reviews):
                raise RuleViolation("That checker already holds a review of this request")
            if len(reviews) >= req.reviews_required:
                raise RuleViolation(f"All {req.reviews_required} review places are taken")
            review = OutputReview(request_id=req.id, round=req.round, reviewer_id=reviewer_id, assigned_by=actor.id)
            s.add(review)
            s.flush()
            self._record(
                s,
                "output.claim" if reviewer_id == actor.id else "output.assign",
                actor,
                req,
                reviewer_id=reviewer_id,
                round=req.round,
            )
            if reviewer_id != actor.id:
                self._notify(
                    s,
                    [reviewer_id],
                    "An output request was assigned to you",
                    f"Output request {req.id} was assigned to you for review.",
                    "output.assigned",
                    f"output.assigned:{req.id}:{req.round}",
                )
        return review

    def _my_open_review(self, s: Session, actor: Any, req: OutputRequest) -> OutputReview:
        review = s.scalar(
            select(OutputReview).where(
                OutputReview.request_id == req.id,
                OutputReview.round == req.round,
                OutputReview.reviewer_id == actor.id,
            )
        )
        if review is None:
            raise RuleViolation("Claim the request before reviewing it")
        if review.submitted_at is not None:
            raise RuleViolation("You have already submitted your review of this round")
        if req.state != rules.AWAITING_REVIEW:
            raise RuleViolation("The request is not awaiting review")
        return review

    def vote(self, actor: Any, request_id: str, file_id: str, vote: str, comment: str = "") -> OutputVote:
        rules_comment = (comment or "").strip()
        with self._tx("output.vote", actor, request_id) as s:
            req = self._get(s, request_id, lock=True)
            self._require_checker(s, actor, req, "output.vote")
            self._my_open_review(s, actor, req)
            rules.check_vote(vote, rules_comment)
            f = s.get(OutputFile, file_id)
            if f is None or f.request_id != req.id or f.superseded_at is not None:
                raise NotFound("No such file in this request")
            row = s.scalar(select(OutputVote).where(OutputVote.file_id == f.id, OutputVote.reviewer_id == actor.id))
            if row is None:
                row = OutputVote(
                    request_id=req.id,
                    file_id=f.id,
                    reviewer_id=actor.id,
                    vote=vote,
                    comment=rules_comment,
                    round=req.round,
                )
                s.add(row)
            else:
                row.vote, row.comment, row.round, row.updated_at = vote, rules_comment, req.round, utcnow()
            s.flush()
            self._record(s, "output.vote", actor, req, file_id=f.id, sha256=f.sha256, vote=vote, round=req.round)
        return row

    def comment(
        self, actor: Any, request_id: str, body: str, visibility: str, group_id: str | None = None
    ) -> OutputComment:
        """Checkers write private (checkers only) or shared comments; the team writes shared ones."""
        body = (body or "").strip()
        if not body:
            raise OutputError("Enter a comment")
        if len(body) > rules.MAX_TEXT:
            raise OutputError(f"A comment may be {rules.MAX_TEXT} characters at most")
        if visibility not in rules.VISIBILITIES:
            raise OutputError("Choose who may see the comment")
        with self._tx("output.comment", actor, request_id) as s:
            req = self._get(s, request_id, lock=True)
            checker = perm.can_check(s, actor, req)
            if not checker:
                if not perm.can_view_as_team(s, actor, req):
                    raise _Denied("output.comment", getattr(actor, "id", None), req, "neither checker nor team")
                if visibility != rules.SHARED:
                    raise RuleViolation("Comments from the project's team are always shared with the checkers")
            if req.state in rules.TERMINAL_STATES:
                raise RuleViolation("A closed request takes no more comments")
            if group_id is not None:
                grp = s.get(OutputGroup, group_id)
                if grp is None or grp.request_id != req.id:
                    raise NotFound("No such group")
            c = OutputComment(
                request_id=req.id,
                group_id=group_id,
                author_id=actor.id,
                round=req.round,
                visibility=visibility,
                body=body,
            )
            s.add(c)
            s.flush()
            self._record(s, "output.comment", actor, req, comment_id=c.id, visibility=visibility)
        return c

    def submit_review(self, actor: Any, request_id: str) -> OutputReview:
        with self._tx("output.submit_review", actor, request_id) as s:
            req = self._get(s, request_id, lock=True)
            self._require_checker(s, actor, req, "output.submit_review")
            review = self._my_open_review(s, actor, req)
            file_ids = [f.id for f in req.current_files]
            mine = {
                v.file_id: v.vote
                for v in s.scalars(
                    select(OutputVote).where(OutputVote.request_id == req.id, OutputVote.reviewer_id == actor.id)
                )
            }
            rules.check_review_complete(mine, file_ids)
            review.submitted_at = utcnow()
            self._record(
                s,
                "output.submit_review",
                actor,
                req,
                round=req.round,
                votes={fid: mine[fid] for fid in file_ids},
            )
            done = sum(1 for r in self._reviewers(s, req) if r.submitted_at is not None)
            if done >= req.reviews_required:
                self._tell_checkers(
                    s, req, "Every independent review is in: ready to consolidate", "output.reviews_complete"
                )
        return review

    def _approved_by_all(self, s: Session, req: OutputRequest, reviewer_ids: list[str]) -> bool:
        files = req.current_files
        votes = {
            (v.file_id, v.reviewer_id): v.vote
            for v in s.scalars(select(OutputVote).where(OutputVote.request_id == req.id))
        }
        return bool(files) and all(votes.get((f.id, r)) == rules.VOTE_APPROVE for f in files for r in reviewer_ids)

    def consolidate(self, actor: Any, request_id: str, outcome: str, comment: str = "") -> OutputDecision:
        """After every independent review: approve, return to the author for changes, or reject."""
        comment = (comment or "").strip()
        with self._tx("output.decide", actor, request_id) as s:
            req = self._get(s, request_id, lock=True)
            self._require_checker(s, actor, req, "output.decide")
            if req.state != rules.AWAITING_REVIEW:
                raise RuleViolation("Only a request awaiting review can be decided")
            done = [r.reviewer_id for r in self._reviewers(s, req) if r.submitted_at is not None]
            if actor.id not in done:
                raise RuleViolation("Only a checker who has submitted a review of this round may decide")
            rules.check_consolidation(
                outcome, comment, len(done), req.reviews_required, self._approved_by_all(s, req, done)
            )
            now = utcnow()
            decision = OutputDecision(
                request_id=req.id,
                round=req.round,
                outcome=outcome,
                comment=comment,
                decided_by=actor.id,
                decided_at=now,
                file_hashes={f.id: f.sha256 for f in req.current_files},
            )
            s.add(decision)
            if outcome != rules.OUTCOME_RETURN:
                req.decided_at = now
            if comment:
                s.add(
                    OutputComment(
                        request_id=req.id,
                        author_id=actor.id,
                        round=req.round,
                        visibility=rules.SHARED,
                        body=comment,
                    )
                )
            s.flush()
            self._move(
                s,
                req,
                rules.OUTCOME_TARGET[outcome],
                actor,
                f"output.{outcome}",
                round=req.round,
                decision_id=decision.id,
                files=decision.file_hashes,
            )
            subject = {
                rules.OUTCOME_APPROVE: "Your output request was approved",
                rules.OUTCOME_RETURN: "Your output request was returned for changes",
                rules.OUTCOME_REJECT: "Your output request was rejected",
            }[outcome]
            self._tell_team(s, req, subject, f"output.{outcome}")
        return decision

    def resolve_failed_checks(self, actor: Any, request_id: str) -> OutputRequest:
        """When an automated check ended FAILED, a checker moves the request on to human review."""
        with self._tx("output.checks_failed", actor, request_id) as s:
            req = self._get(s, request_id, lock=True)
            self._require_checker(s, actor, req, "output.checks_failed")
            status = automated_status(s, req, self.policy.sha256)
            if status.state != "failed":
                raise RuleViolation("No automated check of this request has failed")
            if req.state == rules.SUBMITTED:
                self._move(s, req, rules.CHECKING, actor, "output.checks_start")
            req.checks_finished_at = utcnow()
            self._move(s, req, rules.AWAITING_REVIEW, actor, "output.checks_failed", failed_files=status.failed_files)
        return req
