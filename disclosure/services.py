"""The output queue's use cases, one transaction each.

Every public method checks permission and policy, changes state, records its audit event and any
notification in the same transaction, and commits — or raises an ``OutputError`` whose message is
safe to show, having changed nothing (a refusal is itself recorded, in its own small transaction).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from disclosure import permissions as perm
from disclosure import rules
from disclosure.models import (
    OutputCheck,
    OutputComment,
    OutputDecision,
    OutputFile,
    OutputGroup,
    OutputRelease,
    OutputRequest,
    OutputReview,
    OutputVote,
    ProjectReleaseLedger,
)
from disclosure.rules import RuleViolation
from projects.gate import check_access
from projects.models import Project
from tre.core.audit import DENIED, AuditLog
from tre.core.db import transaction, utcnow
from tre.core.identity import User, UserRole
from tre.core.jobs import FAILED, SUCCEEDED, Job, enqueue
from tre.core.notifications import notify_users
from tre.core.permissions import ROLE_PERMISSIONS, Permission

CHECK_JOB = "outputs.check"
DEFAULT_GROUP = "outputs"


class OutputError(Exception):
    """An output request cannot be handled as asked; the message is safe to show."""


class OutputPermissionDenied(OutputError):
    pass


class NotFound(OutputError):
    pass


class IncompleteRequest(OutputError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("The request cannot be submitted yet: " + "; ".join(problems))


class _Denied(Exception):
    def __init__(
        self,
        action: str,
        actor_id: str | None,
        request: OutputRequest | None,
        reason: str,
        message: str = "You do not have permission to do that",
    ) -> None:
        self.action, self.actor_id, self.request, self.reason, self.message = (
            action,
            actor_id,
            request,
            reason,
            message,
        )


def check_job_key(request_id: str, sha256s: Sequence[str], policy_sha256: str) -> str:
    """The check job's idempotency key: the request, the hash of its files' hashes, and the policy.

    One job checks every file of a submission. (One job per file would be natural, but the kernel's
    ``enqueue`` sends a job's message when a later savepoint in the same transaction is released,
    i.e. before the transaction commits; a worker can then miss it until the sweeper re-sends it.
    With one job per transaction the message is sent only after the commit.)
    """
    digest = hashlib.sha256("\n".join(sorted(set(sha256s))).encode()).hexdigest()
    return f"{CHECK_JOB}:{request_id}:{digest}:{policy_sha256}"


def current_policy() -> Any:
    from disclosure.engine import default_policy

    return default_policy()


@dataclass
class ReviewPicture:
    """What one person may see of a request's reviews: blind until every required review is in."""

    unblinded: bool
    reviews: list[OutputReview]
    votes: list[OutputVote]
    comments: list[OutputComment]
    decisions: list[OutputDecision]


@dataclass
class Outputs:
    session: Session
    audit: AuditLog
    files: Any
    reviews_required: int = rules.DEFAULT_REVIEWS_REQUIRED
    request_id: str | None = None
    max_file_bytes: int = rules.MAX_FILE_BYTES
    _policy: Any = field(default=None, repr=False)

    @classmethod
    def from_platform(cls, platform: Any, request_id: str | None = None) -> Outputs:
        settings = platform.settings
        return cls(
            platform.db.session,
            platform.audit,
            platform.files,
            reviews_required=rules.reviews_required(getattr(settings, "output_reviews_required", 2)),
            request_id=request_id,
            max_file_bytes=min(rules.MAX_FILE_BYTES, int(settings.max_upload_bytes)),
        )

    @property
    def policy(self) -> Any:
        if self._policy is None:
            self._policy = current_policy()
        return self._policy

    # --- plumbing ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Session]:
        try:
            with transaction(self.session) as s:
                yield s
        except _Denied as denied:
            req = denied.request
            with transaction(self.session) as s:
                self.audit.record(
                    s,
                    denied.action,
                    actor_id=denied.actor_id,
                    outcome=DENIED,
                    target_type="output_request" if req else None,
                    target_id=req.id if req else None,
                    project_id=req.project_id if req else None,
                    request_id=self.request_id,
                    detail={"reason": denied.reason},
                )
            raise OutputPermissionDenied(denied.message) from None
        except RuleViolation as exc:
            raise OutputError(str(exc)) from None

    def _record(self, s: Session, action: str, actor: Any, req: OutputRequest, **detail: Any) -> None:
        self.audit.record(
            s,
            action,
            actor_id=getattr(actor, "id", None),
            target_type="output_request",
            target_id=req.id,
            project_id=req.project_id,
            request_id=self.request_id,
            detail=detail,
        )

    @staticmethod
    def _get(s: Session, request_id: str, *, lock: bool = False) -> OutputRequest:
        # Fresh from the database: a worker in another process may have moved the request on.
        req = s.get(OutputRequest, request_id, with_for_update=lock, populate_existing=True) if request_id else None
        if req is None:
            raise NotFound("No such output request")
        return req

    def _move(self, s: Session, req: OutputRequest, target: str, actor: Any, action: str, **detail: Any) -> None:
        before = req.state
        rules.check_transition(before, target)
        req.state = target
        req.state_changed_at = utcnow()
        self._record(s, action, actor, req, **{"from": before, "to": target}, **detail)

    def _require_author(self, s: Session, actor: Any, req: OutputRequest, action: str) -> None:
        if not perm.can_edit(actor, req):
            raise _Denied(action, getattr(actor, "id", None), req, "not the author")

    def _require_gate(self, s: Session, actor: Any, req: OutputRequest | None, project_id: str, action: str) -> None:
        decision = check_access(s, actor.id, project_id)
        if not decision.allowed:
            raise _Denied(
                action,
                actor.id,
                req,
                "access gate: " + ",".join(decision.reasons),
                "You cannot request outputs from this project now: " + "; ".join(decision.messages),
            )

    def _require_checker(self, s: Session, actor: Any, req: OutputRequest, action: str) -> None:
        if not perm.can_check(s, actor, req):
            raise _Denied(
                action,
                getattr(actor, "id", None),
                req,
                "not an eligible output checker",
                "Only an output checker who is neither the author nor on the project's team may do that",
            )

    @staticmethod
    def _notify(s: Session, user_ids: Sequence[str], subject: str, body: str, topic: str, dedupe: str) -> None:
        notify_users(s, user_ids, subject=subject, body=body, topic=topic, dedupe_key=dedupe)

    def _eligible_checkers(self, s: Session, req: OutputRequest) -> list[str]:
        roles = [r.value for r, granted in ROLE_PERMISSIONS.items() if Permission.OUTPUT_REVIEW in granted]
        ids = set(s.scalars(select(UserRole.user_id).where(UserRole.role.in_(roles))))
        excluded = perm.team_ids(s, req.project_id, include_former=True) | {req.author_id}
        return sorted(ids - excluded)

    def _reviewers(self, s: Session, req: OutputRequest) -> list[OutputReview]:
        return list(
            s.scalars(
                select(OutputReview)
                .where(OutputReview.request_id == req.id, OutputReview.round == req.round)
                .order_by(OutputReview.claimed_at)
            )
        )

    def _reviewers_of(self, s: Session, reqs: Sequence[OutputRequest]) -> dict[str, list[OutputReview]]:
        """``_reviewers`` of each request (its current round's reviews, by claim time) in one statement."""
        out: dict[str, list[OutputReview]] = {r.id: [] for r in reqs}
        if not out:
            return out
        rounds = {r.id: r.round for r in reqs}
        rows = s.scalars(
            select(OutputReview).where(OutputReview.request_id.in_(list(out))).order_by(OutputReview.claimed_at)
        )
        for review in rows:
            if review.round == rounds[review.request_id]:
                out[review.request_id].append(review)
        return out

    def _tell_checkers(self, s: Session, req: OutputRequest, subject: str, topic: str) -> None:
        reviewers = [r.reviewer_id for r in self._reviewers(s, req)]
        targets = reviewers or self._eligible_checkers(s, req)
        self._notify(
            s,
            targets,
            subject,
            f"Output request {req.id}: {subject.lower()}.",
            topic,
            f"{topic}:{req.id}:{req.round}",
        )

    def _tell_team(self, s: Session, req: OutputRequest, subject: str, topic: str) -> None:
        team = sorted(perm.team_ids(s, req.project_id) | {req.author_id})
        self._notify(
            s,
            team,
            subject,
            f"Output request {req.id}: {subject.lower()}.",
            topic,
            f"{topic}:{req.id}:{req.round}",
        )

    # --- the author -------------------------------------------------------------------------------

    def create_request(
        self, actor: Any, project_id: str, title: str, *, client_key: str | None = None
    ) -> tuple[OutputRequest, bool]:
        """A new draft request (or, for a repeated ``client_key``, the one it already made)."""
        title = self._clean_title(title, client_key)
        with self._tx() as s:
            return self._create(s, actor, project_id, title, client_key)

    @staticmethod
    def _clean_title(title: str, client_key: str | None) -> str:
        title = (title or "").strip()
        if len(title) > 200:
            raise OutputError("The title may be 200 characters at most")
        if client_key is not None and not (0 < len(client_key) <= 200):
            raise OutputError("The Idempotency-Key must be 1 to 200 characters")
        return title

    def _create(
        self, s: Session, actor: Any, project_id: str, title: str, client_key: str | None
    ) -> tuple[OutputRequest, bool]:
        if not perm.can_submit(actor):
            raise _Denied("output.create", getattr(actor, "id", None), None, "missing permission")
        if not project_id or s.get(Project, project_id) is None:
            raise NotFound("No such project")
        if client_key is not None:
            existing = s.scalar(
                select(OutputRequest).where(
                    OutputRequest.project_id == project_id, OutputRequest.client_key == client_key
                )
            )
            if existing is not None:
                if existing.author_id != actor.id:
                    raise _Denied("output.create", actor.id, existing, "idempotency key of another author")
                return existing, False
        self._require_gate(s, actor, None, project_id, "output.create")
        req = OutputRequest(
            project_id=project_id,
            author_id=actor.id,
            title=title,
            client_key=client_key,
            reviews_required=self.reviews_required,
        )
        try:
            with s.begin_nested():
                s.add(req)
                s.flush()
        except IntegrityError:
            # The same Idempotency-Key arrived twice at once and the other transaction won.
            existing = s.scalar(
                select(OutputRequest).where(
                    OutputRequest.project_id == project_id, OutputRequest.client_key == client_key
                )
            )
            if existing is None or client_key is None:
                raise
            if existing.author_id != actor.id:
                raise _Denied("output.create", actor.id, existing, "idempotency key of another author") from None
            return existing, False
        self._record(s, "output.create", actor, req, reviews_required=req.reviews_required)
        return req, True

    def submit_from_workspace(
        self,
        actor: Any,
        project_id: str,
        title: str,
        *,
        client_key: str | None,
        groups: Sequence[tuple[str, str, str]],
        files: Sequence[tuple[str, bytes, str, Any]],
    ) -> tuple[OutputRequest, bool]:
        """Create, fill and submit a request in one transaction (the workspace API): all or nothing.

        ``groups`` are (name, context, controls); ``files`` are (name, content, group, table spec).
        The same ``client_key`` again returns the request it made, changing nothing.
        """
        import disclosure.checks  # noqa: F401  (registers the check job's handler)

        title = self._clean_title(title, client_key)
        checked = [self._check_upload(name, content, spec) for name, content, _g, spec in files]
        with self._tx() as s:
            req, created = self._create(s, actor, project_id, title, client_key)
            if not created:
                return req, False
            for name, context, controls in groups:
                self._set_group(s, actor, req, name, context, controls)
            for (_n, content, group, _s), (accepted, spec) in zip(files, checked, strict=True):
                self._add_file(s, actor, req, accepted, spec, content, group)
            self._submit(s, actor, req)
        return req, True

    def set_group(self, actor: Any, request_id: str, name: str, context: str, controls: str) -> OutputGroup:
        """Create a group or change its context and controls."""
        with self._tx() as s:
            req = self._get(s, request_id, lock=True)
            return self._set_group(s, actor, req, name, context, controls)

    def _set_group(
        self, s: Session, actor: Any, req: OutputRequest, name: str, context: str, controls: str
    ) -> OutputGroup:
        name = (name or "").strip() or DEFAULT_GROUP
        if len(name) > 100:
            raise RuleViolation("A group name may be 100 characters at most")
        if len(context or "") > rules.MAX_TEXT or len(controls or "") > rules.MAX_TEXT:
            raise RuleViolation(f"Context and controls may be {rules.MAX_TEXT} characters at most")
        self._require_author(s, actor, req, "output.group")
        self._editable(req)
        group = self._group(s, req, name, create=True)
        group.context, group.controls = (context or "").strip(), (controls or "").strip()
        self._record(s, "output.group", actor, req, group_id=group.id)
        return group

    @staticmethod
    def _editable(req: OutputRequest) -> None:
        if req.state not in rules.EDITABLE_STATES:
            raise RuleViolation(
                f"A request that is {rules.STATE_LABELS[req.state].lower()} cannot be changed; "
                "only a draft or a returned request can"
            )

    @staticmethod
    def _group(s: Session, req: OutputRequest, name: str, *, create: bool) -> OutputGroup:
        group = next((g for g in req.groups if g.name == name), None)
        if group is None:
            if not create:
                raise NotFound("No such group")
            group = OutputGroup(name=name, position=len(req.groups))
            req.groups.append(group)
            s.flush()
        return group

    def _check_upload(self, name: str, content: bytes, table_spec: Any) -> tuple[rules.AcceptedFile, Any]:
        try:
            accepted = rules.check_file(name, content, self.max_file_bytes)
            spec = rules.check_table_spec(table_spec)
        except RuleViolation as exc:
            raise OutputError(str(exc)) from None
        if spec is not None and accepted.kind != "table":
            raise OutputError(f"{accepted.name}: only a CSV table can carry a table specification")
        return accepted, spec

    def add_file(
        self,
        actor: Any,
        request_id: str,
        name: str,
        content: bytes,
        *,
        group: str = DEFAULT_GROUP,
        table_spec: Any = None,
    ) -> OutputFile:
        """Copy a file into the encrypted store now; a file of the same name replaces the current one."""
        accepted, spec = self._check_upload(name, content, table_spec)
        with self._tx() as s:
            req = self._get(s, request_id, lock=True)
            return self._add_file(s, actor, req, accepted, spec, content, group)

    def _add_file(
        self,
        s: Session,
        actor: Any,
        req: OutputRequest,
        accepted: rules.AcceptedFile,
        spec: Any,
        content: bytes,
        group: str,
    ) -> OutputFile:
        self._require_author(s, actor, req, "output.add_file")
        self._editable(req)
        self._require_gate(s, actor, req, req.project_id, "output.add_file")
        current = [f for f in req.current_files if f.name == accepted.name]
        if len(req.current_files) - len(current) >= rules.MAX_FILES_PER_REQUEST:
            raise RuleViolation(f"A request may hold {rules.MAX_FILES_PER_REQUEST} files at most")
        # Content-addressed, so storing inside the transaction is safe: a copy left unused is harmless.
        sha256 = self.files.put(content)
        grp = self._group(s, req, (group or "").strip() or DEFAULT_GROUP, create=True)
        for old in current:
            if old.sha256 == sha256 and old.group_id == grp.id and old.table_spec == spec:
                return old  # the same file again: nothing changes
            old.superseded_at, old.superseded_in_round = utcnow(), req.round
        f = OutputFile(
            group_id=grp.id,
            name=accepted.name,
            kind=accepted.kind,
            content_type=accepted.content_type,
            sha256=sha256,
            size_bytes=len(content),
            table_spec=spec,
            added_by=actor.id,
            added_in_round=req.round,
        )
        req.files.append(f)
        s.flush()
        self._record(
            s,
            "output.add_file",
            actor,
            req,
            file_id=f.id,
            sha256=sha256,
            kind=f.kind,
            replaces=[o.id for o in current],
            has_table_spec=spec is not None,
        )
        return f

    def remove_file(self, actor: Any, request_id: str, file_id: str) -> None:
        with self._tx() as s:
            req = self._get(s, request_id, lock=True)
            self._require_author(s, actor, req, "output.remove_file")
            self._editable(req)
            f = s.get(OutputFile, file_id)
            if f is None or f.request_id != req.id or f.superseded_at is not None:
                raise NotFound("No such file in this request")
            f.superseded_at, f.superseded_in_round = utcnow(), req.round
            self._record(s, "output.remove_file", actor, req, file_id=f.id)

    def missing_for_submission(self, req: OutputRequest) -> list[str]:
        files = req.current_files
        counts = {g.id: sum(1 for f in files if f.group_id == g.id) for g in req.groups}
        facts = [rules.GroupFacts(g.name, g.context, g.controls, counts[g.id]) for g in req.groups]
        return rules.missing_for_submission(req.title, facts, len(files))

    def submit(self, actor: Any, request_id: str) -> OutputRequest:
        """Submit (or resubmit after a return): the automated checks start in the background."""
        import disclosure.checks  # noqa: F401  (registers the check job's handler)

        with self._tx() as s:
            req = self._get(s, request_id, lock=True)
            self._submit(s, actor, req)
        return req

    def _submit(self, s: Session, actor: Any, req: OutputRequest) -> None:
        self._require_author(s, actor, req, "output.submit")
        if req.state not in (rules.DRAFT, rules.RETURNED):
            rules.check_transition(req.state, rules.SUBMITTED)
        problems = self.missing_for_submission(req)
        if problems:
            raise IncompleteRequest(problems)
        self._require_gate(s, actor, req, req.project_id, "output.submit")
        resubmission = req.state == rules.RETURNED
        now = utcnow()
        if resubmission:
            req.round += 1
        req.submitted_at = req.submitted_at or now
        req.last_submitted_at = now
        req.checks_finished_at = None
        self._move(
            s,
            req,
            rules.SUBMITTED,
            actor,
            "output.resubmit" if resubmission else "output.submit",
            round=req.round,
            files={f.id: f.sha256 for f in req.current_files},
        )
        policy = self.policy
        shas = sorted({f.sha256 for f in req.current_files})
        enqueue(
            s,
            CHECK_JOB,
            {"request_id": req.id, "sha256s": shas, "policy_sha256": policy.sha256},
            idempotency_key=check_job_key(req.id, shas, policy.sha256),
        )
        advance_after_checks(s, self.audit, req, policy.sha256, request_id=self.request_id)
        self._tell_checkers(s, req, "Output request submitted for checking", "output.submitted")

    def withdraw(self, actor: Any, request_id: str) -> OutputRequest:
        with self._tx() as s:
            req = self._get(s, request_id, lock=True)
            self._require_author(s, actor, req, "output.withdraw")
            self._move(s, req, rules.WITHDRAWN, actor, "output.withdraw")
            if req.submitted_at is not None:
                self._tell_checkers(s, req, "Output request withdrawn by its author", "output.withdrawn")
        return req

    # --- the checkers -----------------------------------------------------------------------------

    def claim(self, actor: Any, request_id: str) -> OutputReview:
        return self.assign(actor, request_id, actor.id)

    def assign(self, actor: Any, request_id: str, reviewer_id: str) -> OutputReview:
        """Take (or give another eligible checker) one of the request's independent review seats."""
        with self._tx() as s:
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
        with self._tx() as s:
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
        with self._tx() as s:
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
        with self._tx() as s:
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
        with self._tx() as s:
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
        with self._tx() as s:
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

    def release(self, actor: Any, request_id: str) -> OutputRelease:
        """Build the bundle of an approved request, store it and open it to the project's team."""
        from disclosure.release import build_bundle

        with self._tx() as s:
            req = self._get(s, request_id, lock=True)
            self._require_checker(s, actor, req, "output.release")
            rules.check_transition(req.state, rules.RELEASED)
            decision = s.scalar(
                select(OutputDecision).where(OutputDecision.request_id == req.id, OutputDecision.round == req.round)
            )
            current = {f.id: f.sha256 for f in req.current_files}
            if decision is None or decision.outcome != rules.OUTCOME_APPROVE or decision.file_hashes != current:
                raise RuleViolation("The files differ from the ones approved: the request cannot be released")
            checks = _checks_by_file(s, req)
            bundle, manifest = build_bundle(s, req, self.files, checks, decision)
            sha = self.files.put(bundle)
            release = OutputRelease(
                request_id=req.id,
                project_id=req.project_id,
                bundle_sha256=sha,
                bundle_bytes=len(bundle),
                manifest=manifest,
                released_by=actor.id,
            )
            s.add(release)
            added = _record_in_ledger(s, req, checks)
            req.released_at = utcnow()
            self._move(s, req, rules.RELEASED, actor, "output.release", bundle_sha256=sha, ledger_entries=added)
            self._tell_team(s, req, "Your approved outputs are released and can be downloaded", "output.released")
        return release

    def download(self, actor: Any, request_id: str) -> tuple[bytes, OutputRelease]:
        """The released bundle, for the project's team only; every download is recorded."""
        with self._tx() as s:
            req = self._get(s, request_id)
            if not perm.can_download(s, actor, req):
                raise _Denied(
                    "output.download",
                    getattr(actor, "id", None),
                    req,
                    "not on the project's team",
                    "Only the project's team may download its released outputs",
                )
            release = s.scalar(select(OutputRelease).where(OutputRelease.request_id == req.id))
            if req.state != rules.RELEASED or release is None or release.revoked_at is not None:
                raise RuleViolation("Only released outputs that have not been revoked can be downloaded")
            data = self.files.get(release.bundle_sha256)
            self._record(s, "output.download", actor, req, bundle_sha256=release.bundle_sha256)
        return data, release

    def revoke(self, actor: Any, request_id: str, reason: str) -> OutputRelease:
        reason = (reason or "").strip()
        with self._tx() as s:
            req = self._get(s, request_id, lock=True)
            self._require_checker(s, actor, req, "output.revoke")
            if not reason:
                raise RuleViolation("Give the reason for revoking the release")
            rules.check_transition(req.state, rules.REVOKED)
            release = s.scalar(select(OutputRelease).where(OutputRelease.request_id == req.id))
            assert release is not None
            release.revoked_at, release.revoked_by, release.revoke_reason = utcnow(), actor.id, reason[:2000]
            self._move(s, req, rules.REVOKED, actor, "output.revoke")
            self._tell_team(s, req, "A release of your outputs was revoked", "output.revoked")
        return release

    def view_file(self, actor: Any, file_id: str) -> tuple[OutputFile, bytes]:
        """A file's bytes for a checker or the project's team; each view is recorded."""
        with self._tx() as s:
            f = s.get(OutputFile, file_id)
            if f is None:
                raise NotFound("No such file")
            req = self._get(s, f.request_id)
            if not (perm.can_check(s, actor, req) or perm.can_view_as_team(s, actor, req)):
                raise _Denied("output.view_file", getattr(actor, "id", None), req, "neither checker nor team")
            data = self.files.get(f.sha256)
            self._record(s, "output.view_file", actor, req, file_id=f.id, sha256=f.sha256)
        return f, data

    # --- reading ----------------------------------------------------------------------------------

    def get_for(self, actor: Any, request_id: str) -> tuple[OutputRequest, str]:
        """The request and how the person sees it: "checker" or "team"; anyone else is refused."""
        s = self.session
        req = self._get(s, request_id)
        if perm.can_check(s, actor, req):
            return req, "checker"
        if perm.can_view_as_team(s, actor, req):
            return req, "team"
        with self._tx():
            raise _Denied("output.view", getattr(actor, "id", None), req, "neither checker nor team")
        raise AssertionError("unreachable")  # pragma: no cover

    def review_picture(self, actor: Any, req: OutputRequest, role: str) -> ReviewPicture:
        """Blindness: a checker sees only their own votes and private comments until every required
        review of the round is submitted; the team sees only shared comments and final decisions."""
        s = self.session
        reviews = self._reviewers(s, req)
        done = sum(1 for r in reviews if r.submitted_at is not None)
        unblinded = done >= req.reviews_required
        votes = list(s.scalars(select(OutputVote).where(OutputVote.request_id == req.id)))
        comments = list(
            s.scalars(
                select(OutputComment).where(OutputComment.request_id == req.id).order_by(OutputComment.created_at)
            )
        )
        decisions = list(
            s.scalars(select(OutputDecision).where(OutputDecision.request_id == req.id).order_by(OutputDecision.round))
        )
        if role == "checker":
            if not unblinded:
                votes = [v for v in votes if v.reviewer_id == actor.id]
                comments = [
                    c
                    for c in comments
                    if c.round < req.round
                    or c.author_id == actor.id
                    or c.visibility == rules.SHARED
                    and c.author_id not in {r.reviewer_id for r in reviews}
                ]
        else:
            # The team sees what checkers asked to change once a round is decided, never who voted how.
            decided_rounds = {d.round for d in decisions}
            votes = [v for v in votes if v.round in decided_rounds and v.vote == rules.VOTE_CHANGES]
            comments = [c for c in comments if c.visibility == rules.SHARED]
            reviews = []
        return ReviewPicture(unblinded, reviews, votes, comments, decisions)

    def queue(self) -> list[OutputRequest]:
        return list(
            self.session.scalars(
                select(OutputRequest)
                .where(OutputRequest.state.in_(tuple(rules.IN_QUEUE_STATES)))
                .order_by(OutputRequest.last_submitted_at)
            )
        )

    def queue_for(self, actor: Any) -> list[QueueEntry]:
        """The queue as ``actor`` may check it, oldest first, with each request's automated status and
        this round's reviews: the same ``can_check`` answer per request, with the teams, checks, jobs and
        reviews each loaded once for the whole page rather than once per request."""
        s = self.session
        waiting = self.queue()
        teams = perm.teams_of(s, {r.project_id for r in waiting}, include_former=True)
        mine = [r for r in waiting if perm.can_check(s, actor, r, teams=teams)]
        statuses = automated_statuses(s, mine, self.policy.sha256)
        reviews = self._reviewers_of(s, mine)
        return [QueueEntry(r, statuses[r.id], reviews[r.id]) for r in mine]

    def requests_of(self, actor: Any) -> list[OutputRequest]:
        from projects.models import ProjectMember

        projects = select(ProjectMember.project_id).where(
            ProjectMember.user_id == actor.id, ProjectMember.removed_at.is_(None)
        )
        return list(
            self.session.scalars(
                select(OutputRequest)
                .where(
                    (OutputRequest.author_id == actor.id)
                    | OutputRequest.project_id.in_(projects)
                    | OutputRequest.project_id.in_(select(Project.id).where(Project.pi_id == actor.id))
                )
                .order_by(OutputRequest.created_at.desc())
            )
        )

    def workload(self) -> dict[str, int]:
        """Open reviews (claimed, not yet submitted) per checker id."""
        rows = self.session.execute(
            select(OutputReview.reviewer_id, func.count())
            .join(OutputRequest, OutputRequest.id == OutputReview.request_id)
            .where(
                OutputReview.submitted_at.is_(None),
                OutputReview.round == OutputRequest.round,
                OutputRequest.state.in_(tuple(rules.IN_QUEUE_STATES)),
            )
            .group_by(OutputReview.reviewer_id)
        )
        return {uid: int(n) for uid, n in rows}

    def checks_of(self, req: OutputRequest) -> dict[str, OutputCheck]:
        return _checks_by_file(self.session, req)


# --- shared with the check job -------------------------------------------------------------------


@dataclass(frozen=True)
class AutomatedStatus:
    state: str  # "not_started", "running", "done", "failed"
    checked: int
    total: int
    failed_files: list[str]
    reasons: list[str]


@dataclass(frozen=True)
class QueueEntry:
    """One row of a checker's queue."""

    req: OutputRequest
    status: AutomatedStatus
    reviews: list[OutputReview]


def _checks_by_file(s: Session, req: OutputRequest) -> dict[str, OutputCheck]:
    ids = [f.id for f in req.current_files]
    if not ids:
        return {}
    rows = s.scalars(select(OutputCheck).where(OutputCheck.file_id.in_(ids)).order_by(OutputCheck.checked_at))
    return {c.file_id: c for c in rows}


def automated_status(s: Session, req: OutputRequest, policy_sha256: str) -> AutomatedStatus:
    return automated_statuses(s, [req], policy_sha256)[req.id]


def automated_statuses(
    s: Session, reqs: Sequence[OutputRequest], policy_sha256: str
) -> dict[str, AutomatedStatus]:
    """``automated_status`` of each request, in at most two statements whatever their number."""
    submitted = [r for r in reqs if r.state != rules.DRAFT]
    checked: dict[str, set[str]] = {r.id: set() for r in submitted}
    if submitted:
        rows = s.execute(
            select(OutputCheck.request_id, OutputCheck.file_id).where(
                OutputCheck.request_id.in_(list(checked)), OutputCheck.policy_sha256 == policy_sha256
            )
        )
        for request_id, file_id in rows:
            checked[request_id].add(file_id)
    keys = {
        r.id: check_job_key(r.id, [f.sha256 for f in r.current_files], policy_sha256)
        for r in submitted
        if any(f.id not in checked[r.id] for f in r.current_files)
    }
    jobs = (
        {j.idempotency_key: j for j in s.scalars(select(Job).where(Job.idempotency_key.in_(set(keys.values()))))}
        if keys
        else {}
    )
    out = {}
    for req in reqs:
        files = req.current_files
        if req.state == rules.DRAFT:
            out[req.id] = AutomatedStatus("not_started", 0, len(files), [], [])
            continue
        done_ids = checked[req.id]
        failed, reasons = [], []
        unchecked = [f for f in files if f.id not in done_ids]
        job = jobs.get(keys[req.id]) if unchecked else None
        if job is not None and job.state == FAILED:
            failed = [f.id for f in unchecked]
            reasons = [f"{f.name}: {job.last_error or 'failed'} (after {job.attempts} attempts)" for f in unchecked]
        done = sum(1 for f in files if f.id in done_ids)
        if done == len(files):
            state = "done"
        elif failed:
            state = "failed"
        else:
            state = "running"
        out[req.id] = AutomatedStatus(state, done, len(files), failed, reasons)
    return out


def advance_after_checks(
    s: Session, audit: AuditLog, req: OutputRequest, policy_sha256: str, *, request_id: str | None = None
) -> bool:
    """Move a submitted or checking request on once every current file has its verdict (idempotent)."""
    if req.state not in (rules.SUBMITTED, rules.CHECKING):
        return False
    status = automated_status(s, req, policy_sha256)

    def move(target: str, action: str, **detail: Any) -> None:
        before = req.state
        rules.check_transition(before, target)
        req.state, req.state_changed_at = target, utcnow()
        audit.record(
            s,
            action,
            actor_id=None,
            target_type="output_request",
            target_id=req.id,
            project_id=req.project_id,
            request_id=request_id,
            detail={"from": before, "to": target, **detail},
        )

    if req.state == rules.SUBMITTED and (status.checked > 0 or status.state == "done"):
        move(rules.CHECKING, "output.checks_start")
    if status.state == "done" and req.state == rules.CHECKING:
        req.checks_finished_at = utcnow()
        checks = _checks_by_file(s, req)
        move(
            rules.AWAITING_REVIEW,
            "output.checks_done",
            statuses={fid: c.status for fid, c in sorted(checks.items())},
        )
        Outputs._notify(
            s,
            _review_targets(s, req),
            "Automated checks finished: output request ready for review",
            f"Output request {req.id} is ready for review.",
            "output.ready",
            f"output.ready:{req.id}:{req.round}",
        )
        Outputs._notify(
            s,
            [req.author_id],
            "Automated checks of your output request finished",
            f"Output request {req.id}: the automated verdicts are ready; checkers review it next.",
            "output.checked",
            f"output.checked:{req.id}:{req.round}",
        )
        return True
    return False


def _review_targets(s: Session, req: OutputRequest) -> list[str]:
    reviewers = list(
        s.scalars(
            select(OutputReview.reviewer_id).where(OutputReview.request_id == req.id, OutputReview.round == req.round)
        )
    )
    if reviewers:
        return reviewers
    roles = [r.value for r, granted in ROLE_PERMISSIONS.items() if Permission.OUTPUT_REVIEW in granted]
    ids = set(s.scalars(select(UserRole.user_id).where(UserRole.role.in_(roles))))
    return sorted(ids - perm.team_ids(s, req.project_id, include_former=True) - {req.author_id})


def load_ledger(s: Session, project_id: str) -> Any:
    from disclosure.engine import ReleaseLedger

    row = s.get(ProjectReleaseLedger, project_id)
    if row is None or not row.ledger:
        return ReleaseLedger(project_id)
    return ReleaseLedger.from_dict(row.ledger)


def _record_in_ledger(s: Session, req: OutputRequest, checks: dict[str, OutputCheck]) -> int:
    from disclosure.engine import ReleasedAggregate

    ledger = load_ledger(s, req.project_id)
    added = 0
    for f in req.current_files:
        check = checks.get(f.id)
        if check is not None and check.aggregate:
            ledger.record(ReleasedAggregate.from_dict(check.aggregate))
            added += 1
    if added:
        row = s.get(ProjectReleaseLedger, req.project_id, with_for_update=True)
        data = json.loads(json.dumps(ledger.to_dict(), default=str))
        if row is None:
            s.add(ProjectReleaseLedger(project_id=req.project_id, ledger=data))
        else:
            row.ledger, row.updated_at = data, utcnow()
    return added


__all__ = [
    "CHECK_JOB",
    "AutomatedStatus",
    "IncompleteRequest",
    "NotFound",
    "OutputError",
    "OutputPermissionDenied",
    "Outputs",
    "ReviewPicture",
    "SUCCEEDED",
    "advance_after_checks",
    "automated_status",
    "check_job_key",
    "load_ledger",
]


# --- project closure -----------------------------------------------------------------------------


def destroy_unreleased_outputs(session: Session, project_id: str, files: Any = None) -> dict[str, Any]:
    """At data destruction: withdraw the project's open requests and delete the stored copies of every
    file that was never released (a copy another request still needs is kept). Idempotent."""
    from disclosure.models import OutputFile as File

    withdrawn = 0
    for req in session.scalars(select(OutputRequest).where(OutputRequest.project_id == project_id)):
        if (req.state, rules.WITHDRAWN) in rules.TRANSITIONS:
            req.state, req.state_changed_at = rules.WITHDRAWN, utcnow()
            withdrawn += 1
    session.flush()
    released = (rules.RELEASED, rules.REVOKED)
    ours = set(
        session.scalars(
            select(File.sha256)
            .join(OutputRequest, OutputRequest.id == File.request_id)
            .where(OutputRequest.project_id == project_id, OutputRequest.state.not_in(released))
        )
    )
    still_needed = set(
        session.scalars(
            select(File.sha256)
            .join(OutputRequest, OutputRequest.id == File.request_id)
            .where((OutputRequest.project_id != project_id) | OutputRequest.state.in_(released))
        )
    )
    doomed = sorted(ours - still_needed)
    if doomed and files is None:
        from flask import current_app

        files = current_app.extensions["tre.platform"].files
    deleted = sum(1 for sha in doomed if files.delete(sha))
    return {"requests_withdrawn": withdrawn, "files_deleted": deleted}


def _register_closure_hook() -> None:
    from projects.closure import register_destruction_hook

    register_destruction_hook("output-files", destroy_unreleased_outputs)


_register_closure_hook()
