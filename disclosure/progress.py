"""Where a request's automated checks are: the check job's key, each file's verdict so far, and the
move on to human review once every current file has one (shared by the services and the check job)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, literal, select, union_all
from sqlalchemy.orm import Session

from disclosure import rules
from disclosure.models import OutputCheck, OutputFile, OutputRequest, OutputReview
from projects.models import Project, ProjectMember
from tre.core.audit import AuditLog
from tre.core.db import utcnow
from tre.core.identity import User, UserRole
from tre.core.jobs import FAILED, Job
from tre.core.notifications import Notice, notify_each, notify_users
from tre.core.permissions import ROLE_PERMISSIONS, Permission

CHECK_JOB = "outputs.check"
RERUN_JOB = "outputs.rerun"  # re-runs the code a round was submitted with (disclosure/rerun, ADR 0018)


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


@dataclass(frozen=True)
class AutomatedStatus:
    state: str  # "not_started", "running", "done", "failed"
    checked: int
    total: int
    failed_files: list[str]
    reasons: list[str]


def _checks_by_file(s: Session, req: OutputRequest) -> dict[str, OutputCheck]:
    ids = [f.id for f in req.current_files]
    if not ids:
        return {}
    rows = s.scalars(select(OutputCheck).where(OutputCheck.file_id.in_(ids)).order_by(OutputCheck.checked_at))
    return {c.file_id: c for c in rows}


def automated_status(s: Session, req: OutputRequest, policy_sha256: str) -> AutomatedStatus:
    return automated_statuses(s, [req], policy_sha256)[req.id]


def automated_statuses(s: Session, reqs: Sequence[OutputRequest], policy_sha256: str) -> dict[str, AutomatedStatus]:
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
    return {
        req.id: status_of(req, checked.get(req.id, set()), jobs.get(keys[req.id]) if req.id in keys else None)
        for req in reqs
    }


def status_of(req: OutputRequest, checked_file_ids: set[str], job: Job | None) -> AutomatedStatus:
    """Where the checks of ``req`` are, given the ids of its files that have a verdict under the
    current policy and its check job (``None``: none found); reads nothing."""
    return _status(req.state, req.current_files, checked_file_ids, job)


def _status(request_state: str, files: Sequence[Any], checked_file_ids: set[str], job: Any) -> AutomatedStatus:
    """``status_of`` from a request's state, its current files (anything with ``id`` and ``name``, in
    the order they were added) and its check job (anything with ``state``, ``last_error`` and
    ``attempts``): objects or rows alike."""
    if request_state == rules.DRAFT:
        return AutomatedStatus("not_started", 0, len(files), [], [])
    failed, reasons = [], []
    unchecked = [f for f in files if f.id not in checked_file_ids]
    if unchecked and job is not None and job.state == FAILED:
        failed = [f.id for f in unchecked]
        reasons = [f"{f.name}: {job.last_error or 'failed'} (after {job.attempts} attempts)" for f in unchecked]
    done = len(files) - len(unchecked)
    if not unchecked:
        state = "done"
    elif failed:
        state = "failed"
    else:
        state = "running"
    return AutomatedStatus(state, done, len(files), failed, reasons)


def queued_statuses(s: Session, reqs: Sequence[Any], policy_sha256: str) -> dict[str, AutomatedStatus]:
    """``automated_statuses`` of requests read as rows, not objects: each row has the request's ``id``
    and ``state``, ``files`` (how many current files it has) and ``checked`` (how many of them have a
    verdict under ``policy_sha256``). A request whose every file is checked is done from its row; the
    current files and check jobs of the others are read in two statements whatever their number, and
    none when every request is checked."""
    out: dict[str, AutomatedStatus] = {}
    pending: dict[str, Any] = {}
    for r in reqs:
        if r.state == rules.DRAFT:
            out[r.id] = AutomatedStatus("not_started", 0, r.files, [], [])
        elif r.checked >= r.files:
            out[r.id] = AutomatedStatus("done", r.files, r.files, [], [])
        else:
            pending[r.id] = r
    if not pending:
        return out
    files: dict[str, list[Any]] = {rid: [] for rid in pending}
    checked: dict[str, set[str]] = {rid: set() for rid in pending}
    verdict = (
        select(OutputCheck.id)
        .where(
            OutputCheck.file_id == OutputFile.id,
            OutputCheck.request_id == OutputFile.request_id,
            OutputCheck.policy_sha256 == policy_sha256,
        )
        .exists()
    )
    for f in s.execute(
        select(OutputFile.request_id, OutputFile.id, OutputFile.name, OutputFile.sha256, verdict.label("has_verdict"))
        .where(OutputFile.request_id.in_(list(pending)), OutputFile.superseded_at.is_(None))
        .order_by(OutputFile.added_at)
    ):
        files[f.request_id].append(f)
        if f.has_verdict:
            checked[f.request_id].add(f.id)
    keys = {rid: check_job_key(rid, [f.sha256 for f in files[rid]], policy_sha256) for rid in pending}
    jobs = {
        j.idempotency_key: j
        for j in s.execute(
            select(Job.idempotency_key, Job.state, Job.last_error, Job.attempts).where(
                Job.idempotency_key.in_(set(keys.values()))
            )
        )
    }
    for rid, r in pending.items():
        out[rid] = _status(r.state, files[rid], checked[rid], jobs.get(keys[rid]))
    return out


def advance_after_checks(
    s: Session,
    audit: AuditLog,
    req: OutputRequest,
    policy_sha256: str,
    *,
    request_id: str | None = None,
    verdicts: dict[str, str] | None = None,
    current_files: Sequence[Any] | None = None,
) -> bool:
    """Move a submitted or checking request on once every current file has its verdict (idempotent).

    ``verdicts``: file id -> status of the verdicts under this policy the caller has just read or
    written in this transaction (the check job); when they cover every current file nothing is read
    again, otherwise the request's verdicts are read as usual. ``current_files``: the request's current
    files as the caller read them in this transaction (anything with ``id`` and ``name``, in the order
    they were added), so that its ``files`` need not be loaded when the verdicts cover them."""
    if req.state not in (rules.SUBMITTED, rules.CHECKING):
        return False
    files = req.current_files if current_files is None else current_files
    known = verdicts is not None and all(f.id in verdicts for f in files)
    if known:
        assert verdicts is not None
        status = _status(req.state, files, {f.id for f in files}, None)
    else:
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
        if known:
            assert verdicts is not None
            statuses = {f.id: verdicts[f.id] for f in files}
        else:
            with s.no_autoflush:  # the verdicts are flushed; the request's two moves go out as one UPDATE
                statuses = {fid: c.status for fid, c in _checks_by_file(s, req).items()}
        move(rules.AWAITING_REVIEW, "output.checks_done", statuses=dict(sorted(statuses.items())))
        # Who is told and their accounts (checkers and author) in one statement (ADR 0058). The notices'
        # keys name this round, and a round moves from checking to review once (a resubmission is a new
        # round), under the request's lock: they are new, so they are not looked up (the outbox's unique
        # key would still fail the transaction if one were taken). The check job's (``known``) reads no
        # table it changed: its request's moves are not flushed for it but go out with the notices at
        # commit, one flush, not two (the autoflush was most of this read's CPU).
        if known:
            with s.no_autoflush:
                targets, accounts = _review_targets_and_accounts(s, req)
        else:
            targets, accounts = _review_targets_and_accounts(s, req)
        notify_each(s, [
            Notice(
                targets,
                "Automated checks finished: output request ready for review",
                f"Output request {req.id} is ready for review.",
                "output.ready",
                f"output.ready:{req.id}:{req.round}",
            ),
            Notice(
                [req.author_id],
                "Automated checks of your output request finished",
                f"Output request {req.id}: the automated verdicts are ready; checkers review it next.",
                "output.checked",
                f"output.checked:{req.id}:{req.round}",
            ),
        ], new_keys=True, accounts=accounts)
        return True
    return False


def _review_targets(s: Session, req: OutputRequest) -> list[str]:
    """Who is told a request is ready for review: the round's reviewers if it has any, otherwise every
    eligible checker (``eligible_checkers``)."""
    return _review_targets_and_accounts(s, req)[0]


def _review_targets_and_accounts(s: Session, req: OutputRequest) -> tuple[list[str], dict[str, str]]:
    """``_review_targets`` and the email of each active account among them and the request's author, in
    one statement: the reviewers, the eligible checkers only where the round has none, and the author,
    each with its email when the account is active (the reviewers and checkers were one statement and
    their accounts and the author's a second, ADR 0058)."""
    rows = s.execute(
        _REVIEW_TARGETS,
        {"request_id": req.id, "round": req.round, "project_id": req.project_id, "author_id": req.author_id},
    ).all()
    accounts = {user_id: email for user_id, _, email in rows if email is not None}
    reviewers = [user_id for user_id, who, _ in rows if who == _REVIEWER]
    if reviewers:
        return reviewers, accounts
    return sorted({user_id for user_id, who, _ in rows if who == _CHECKER}), accounts


def _eligible_checkers_statement() -> Any:
    roles = [r.value for r, granted in ROLE_PERMISSIONS.items() if Permission.OUTPUT_REVIEW in granted]
    project_id = bindparam("project_id")
    members = select(ProjectMember.user_id).where(ProjectMember.project_id == project_id)  # former ones too
    pi = select(Project.pi_id).where(Project.id == project_id, Project.pi_id.is_not(None))
    return select(UserRole.user_id).where(
        UserRole.role.in_(roles),
        UserRole.user_id != bindparam("author_id"),
        UserRole.user_id.not_in(members),
        UserRole.user_id.not_in(pi),
    )


_ELIGIBLE_CHECKERS = _eligible_checkers_statement()  # built once: SQLAlchemy keeps its cache key


_REVIEWER, _CHECKER, _AUTHOR = 1, 0, 2  # what a row of ``_REVIEW_TARGETS`` is


def _review_targets_statement() -> Any:
    in_round = (OutputReview.request_id == bindparam("request_id"), OutputReview.round == bindparam("round"))

    def active_email(user_id: Any) -> Any:  # an inactive account is told nothing (as ``notify_each`` reads)
        return select(User.email).where(User.id == user_id, User.is_active.is_(True)).scalar_subquery()

    reviewers = select(
        OutputReview.reviewer_id.label("user_id"), literal(_REVIEWER).label("who"),
        active_email(OutputReview.reviewer_id).label("email"),
    ).where(*in_round)
    eligible = (
        _eligible_checkers_statement()
        .add_columns(literal(_CHECKER).label("who"), active_email(UserRole.user_id).label("email"))
        .where(~select(OutputReview.id).where(*in_round).exists())
    )
    author = select(User.id.label("user_id"), literal(_AUTHOR).label("who"), User.email.label("email")).where(
        User.id == bindparam("author_id"), User.is_active.is_(True)
    )
    return union_all(reviewers, eligible, author)


_REVIEW_TARGETS = _review_targets_statement()  # the round's reviewers, else the eligible checkers; the author


def eligible_checkers(s: Session, req: OutputRequest) -> list[str]:
    """Everyone whose role reviews outputs, but not the author nor anyone who is or ever was on the
    project's team (its PI included): one statement."""
    return sorted(set(s.scalars(_ELIGIBLE_CHECKERS, {"project_id": req.project_id, "author_id": req.author_id})))


def notify(
    s: Session, user_ids: Sequence[str], subject: str, body: str, topic: str, dedupe: str, *, new_keys: bool = False
) -> None:
    notify_users(s, user_ids, subject=subject, body=body, topic=topic, dedupe_key=dedupe, new_keys=new_keys)
