"""The output services' shared plumbing: the errors they raise, the audited refusal (``_Denied``), one
transaction per use case (``_tx``), the audit record, the state move, the permission checks and the
notifications. The use cases themselves live in ``authoring``, ``reviewing``, ``releasing`` and
``queries``; ``disclosure.services.Outputs`` puts them together."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from sqlalchemy import select
from sqlalchemy.orm import Session

from disclosure import permissions as perm
from disclosure import rules
from disclosure.models import OutputRequest, OutputReview
from disclosure.progress import _ELIGIBLE_CHECKERS, current_policy, eligible_checkers, notify
from disclosure.rules import RuleViolation
from projects.gate import allowed_earlier, check_access, remember_allowed
from tre.core.audit import DENIED, AuditLog
from tre.core.db import transaction, utcnow
from tre.core.identity import User
from tre.core.notifications import notify_users

DEFAULT_GROUP = "outputs"
# The eligible checkers (``disclosure.progress``'s statement) who are active, with their email: built
# once, so SQLAlchemy keeps its cache key.
_ACTIVE_CHECKERS_WITH_EMAIL = select(User.id, User.email).where(
    User.id.in_(_ELIGIBLE_CHECKERS), User.is_active.is_(True)
)




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


@dataclass
class OutputsBase:
    session: Session
    audit: AuditLog
    files: Any
    reviews_required: int = rules.DEFAULT_REVIEWS_REQUIRED
    request_id: str | None = None
    max_file_bytes: int = rules.MAX_FILE_BYTES
    # Whether a file its re-run did not reproduce may be released (TRE_RERUN_RELEASE_UNREPRODUCED, ADR 0018).
    release_unreproduced: bool = False
    # Whether every submission must carry the code that made its files (TRE_RERUN_REQUIRE_CODE, ADR 0029).
    require_code: bool = False
    _policy: Any = field(default=None, repr=False)

    @classmethod
    def from_platform(cls, platform: Any, request_id: str | None = None) -> Self:
        settings = platform.settings
        return cls(
            platform.db.session,
            platform.audit,
            platform.files,
            reviews_required=rules.reviews_required(getattr(settings, "output_reviews_required", 2)),
            request_id=request_id,
            max_file_bytes=min(rules.MAX_FILE_BYTES, int(settings.max_upload_bytes)),
            release_unreproduced=bool(getattr(settings, "rerun_release_unreproduced", False)),
            require_code=bool(getattr(settings, "rerun_require_code", False)),
        )

    @property
    def policy(self) -> Any:
        if self._policy is None:
            self._policy = current_policy()
        return self._policy

    @contextlib.contextmanager
    def _tx(self, action: str | None = None, actor: Any = None, request_id: str | None = None) -> Iterator[Session]:
        """One use case's transaction. A permission refusal (``_Denied``) is recorded as a ``denied``
        event; so is a rule's refusal (``RuleViolation``, e.g. claiming a released request) when the use
        case names its ``action``, ``actor`` and request. Either way nothing else of it is kept."""
        try:
            with transaction(self.session) as s:
                yield s
        except RuleViolation as exc:
            if action is not None:
                self._record_rule_refusal(action, actor, request_id, str(exc))
            raise OutputError(str(exc)) from None
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

    def _record_rule_refusal(
        self, action: str, actor: Any, request_id: str | None, message: str, project_id: str | None = None
    ) -> None:
        with transaction(self.session) as s:
            req = s.get(OutputRequest, request_id) if request_id else None
            self.audit.record(
                s,
                action,
                actor_id=getattr(actor, "id", None),
                outcome=DENIED,
                target_type="output_request" if req else None,
                target_id=req.id if req else None,
                project_id=req.project_id if req else project_id,
                request_id=self.request_id,
                detail={"reason": "rule", "rule": message[:300]},
            )

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
        # A use case that asks again for the same person and project within one transaction (creating a
        # request, adding its files, submitting it) gets the answer the gate gave at the first ask in
        # that transaction, the sign-in's ask for a project's token included (on PostgreSQL the view
        # carries on in the sign-in's transaction; on SQLite that one is committed first, so the view
        # asks again). Nothing is kept past the transaction (ADR 0038, ADR 0076).
        if allowed_earlier(s, actor.id, project_id):
            return
        decision = check_access(s, actor.id, project_id)
        if decision.allowed:
            remember_allowed(s, actor.id, project_id)  # the gate's read began it, when it is the first
            return
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

    _notify = staticmethod(notify)

    def _eligible_checkers(self, s: Session, req: OutputRequest) -> list[str]:
        """Everyone whose role reviews outputs, but not the author nor anyone who is or ever was on the
        project's team (its PI included): one statement."""
        return eligible_checkers(s, req)

    def _eligible_checkers_accounts(self, s: Session, req: OutputRequest) -> dict[str, str]:
        """``_eligible_checkers`` who are active, with their email (what a notice to them needs), in
        one statement: the checkers' read and the notice's read of their accounts, together."""
        params = {"project_id": req.project_id, "author_id": req.author_id}
        return {uid: email for uid, email in s.execute(_ACTIVE_CHECKERS_WITH_EMAIL, params)}

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

    def _tell_checkers(self, s: Session, req: OutputRequest, subject: str, topic: str, *, new: bool = False) -> None:
        """Tell the request's reviewers of this round or, when none has claimed it, every eligible checker.
        ``new``: the request was created in this transaction, so it can have no reviewer yet, and no
        message can hold a key that names it."""
        if new:  # every eligible checker, with their accounts, in one statement
            accounts = self._eligible_checkers_accounts(s, req)
            notify_users(
                s,
                sorted(accounts),
                subject=subject,
                body=f"Output request {req.id}: {subject.lower()}.",
                topic=topic,
                dedupe_key=f"{topic}:{req.id}:{req.round}",
                new_keys=True,
                accounts=accounts,
            )
            return
        reviewers = [r.reviewer_id for r in self._reviewers(s, req)]
        targets = reviewers or self._eligible_checkers(s, req)
        self._notify(
            s,
            targets,
            subject,
            f"Output request {req.id}: {subject.lower()}.",
            topic,
            f"{topic}:{req.id}:{req.round}",
            new_keys=new,
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
