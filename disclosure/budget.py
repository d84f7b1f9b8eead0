"""Each project's privacy budget in the database: its total, set by the DAC in one audited call, and the
ledger of spends (DP files released) and refunds from which what is left is derived.

Spending happens only inside a release's transaction (``charge_release``): the budget row is locked
first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already holds the write
lock), then the entries are summed, so two releases side by side are serialised and never both spend
the last of it. A release that would overspend raises ``RuleViolation`` with the amounts, and the
release's own transaction records nothing but the refusal. Revoking a release refunds nothing: the
noisy answers were seen.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from disclosure.engine.dp import BudgetExceeded, PrivacyBudget
from disclosure.engine.dpcheck import is_dp_spec
from disclosure.kernel import OutputError, OutputPermissionDenied
from disclosure.models import OutputCheck, OutputRequest, PrivacyBudgetEntry, ProjectPrivacyBudget
from disclosure.progress import current_policy
from disclosure.rules import RuleViolation
from projects.models import Project
from tre.core.audit import DENIED, AuditLog
from tre.core.db import transaction, utcnow
from tre.core.permissions import Permission, has_permission
from tre.core.testpoints import reach

MAX_TOTAL_EPSILON = 100.0  # a typing slip (1000 for 10.0) is refused, not stored


@dataclass(frozen=True)
class BudgetState:
    project_id: str
    total: float
    spent: float
    refunded: float
    set_by: str | None

    @property
    def remaining(self) -> float:
        return self.total - self.spent + self.refunded


def default_total() -> float:
    return float(current_policy().get("dp", "project_budget"))


def budget_state(s: Session, project_id: str) -> BudgetState:
    """The project's budget as the rows say now (changes nothing)."""
    row = s.get(ProjectPrivacyBudget, project_id)
    sums = dict(
        s.execute(
            select(PrivacyBudgetEntry.kind, func.coalesce(func.sum(PrivacyBudgetEntry.epsilon), 0.0))
            .where(PrivacyBudgetEntry.project_id == project_id)
            .group_by(PrivacyBudgetEntry.kind)
        ).all()
    )
    return BudgetState(
        project_id,
        float(row.total_epsilon) if row else default_total(),
        float(sums.get("spend", 0.0)),
        float(sums.get("refund", 0.0)),
        row.set_by if row else None,
    )


def _locked_row(s: Session, project_id: str) -> ProjectPrivacyBudget:
    """The project's budget row, locked for this transaction; created at the policy's default if the DAC
    never set one (a concurrent creation loses the insert and locks the winner's row)."""
    row = s.get(ProjectPrivacyBudget, project_id, with_for_update=True, populate_existing=True)
    if row is not None:
        return row
    try:
        with s.begin_nested():
            s.add(ProjectPrivacyBudget(project_id=project_id, total_epsilon=default_total(), set_by=None))
    except IntegrityError:
        pass
    row = s.get(ProjectPrivacyBudget, project_id, with_for_update=True, populate_existing=True)
    assert row is not None
    return row


def dp_spends(req: OutputRequest, checks: dict[str, OutputCheck]) -> list[tuple[str, float]]:
    """(file id, epsilon) of each DP file of the request, from its automated check (the larger of the
    stated and the re-derived epsilon); a DP file whose check found no epsilon cannot be charged, so it
    cannot be released."""
    spends = []
    for f in req.current_files:
        if not is_dp_spec(f.table_spec):
            continue
        check = checks.get(f.id)
        dp = (check.verdict or {}).get("dp") if check is not None else None
        epsilon = (dp or {}).get("epsilon")
        if not isinstance(epsilon, int | float) or not math.isfinite(epsilon) or epsilon <= 0:
            raise RuleViolation(
                f"{f.name} is a differentially private output without a checked epsilon: it cannot be released"
            )
        spends.append((f.id, float(epsilon)))
    return spends


def charge_release(
    s: Session, audit: AuditLog, req: OutputRequest, checks: dict[str, OutputCheck], actor_id: str
) -> float:
    """Charge the project's budget for the request's DP files inside the release's transaction, with one
    ``privacy_budget.spend`` audit event; raise ``RuleViolation`` ("this release needs epsilon 0.5; the
    project has 0.2 left") when it would overspend. Returns the epsilon spent."""
    spends = dp_spends(req, checks)
    if not spends:
        return 0.0
    needed = sum(e for _, e in spends)
    _locked_row(s, req.project_id)
    reach("outputs.dp.budget_locked")  # budget row locked and about to be summed (ADR 0004)
    state = budget_state(s, req.project_id)
    budget = PrivacyBudget(req.project_id, state.total, [{"epsilon": state.spent - state.refunded}])
    try:
        budget.charge(needed, req.id, "release")
    except BudgetExceeded:
        raise RuleViolation(
            f"this release needs epsilon {needed:g}; the project has {max(state.remaining, 0.0):g} left "
            f"of its {state.total:g}: nothing was released"
        ) from None
    for file_id, epsilon in spends:
        s.add(
            PrivacyBudgetEntry(
                project_id=req.project_id,
                kind="spend",
                epsilon=epsilon,
                request_id=req.id,
                file_id=file_id,
                actor_id=actor_id,
            )
        )
    audit.record(
        s,
        "privacy_budget.spend",
        actor_id=actor_id,
        target_type="output_request",
        target_id=req.id,
        project_id=req.project_id,
        detail={"epsilon": needed, "files": [f for f, _ in spends], "remaining": state.remaining - needed},
    )
    s.flush()
    return needed


@dataclass
class PrivacyBudgets:
    """The DAC's use cases on a project's budget: set its total, refund a spend. Each one checks the
    permission, writes its audit event and commits, or changes nothing; a refusal is audited."""

    session: Session
    audit: AuditLog

    @classmethod
    def from_platform(cls, platform: Any) -> PrivacyBudgets:
        return cls(platform.db.session, platform.audit)

    def state(self, project_id: str) -> BudgetState:
        return budget_state(self.session, project_id)

    def set_total(self, actor: Any, project_id: str, total_epsilon: float, reason: str) -> BudgetState:
        reason = (reason or "").strip()
        self._require(actor, project_id, "privacy_budget.set")
        try:
            total = float(total_epsilon)
        except (TypeError, ValueError):
            total = float("nan")
        with self._refusals("privacy_budget.set", actor, project_id):
            if not math.isfinite(total) or total < 0 or total > MAX_TOTAL_EPSILON:
                raise RuleViolation(f"The total epsilon must be a number from 0 to {MAX_TOTAL_EPSILON:g}")
            if not reason:
                raise RuleViolation("Give the reason for setting the privacy budget")
            with transaction(self.session) as s:
                if s.get(Project, project_id) is None:
                    raise RuleViolation("No such project")
                row = _locked_row(s, project_id)
                state = budget_state(s, project_id)
                if total < state.spent - state.refunded - 1e-12:
                    raise RuleViolation(
                        f"The project has already spent epsilon {state.spent - state.refunded:g}: "
                        "the total cannot be set below it"
                    )
                before = row.total_epsilon
                row.total_epsilon, row.set_by, row.set_at, row.reason = total, actor.id, utcnow(), reason[:2000]
                self._event(s, "privacy_budget.set", actor, project_id, before=before, total=total)
        return self.state(project_id)

    def refund(self, actor: Any, project_id: str, epsilon: float, reason: str) -> BudgetState:
        """Give back privacy loss (a correction: e.g. a spend recorded for a file that never left)."""
        reason = (reason or "").strip()
        self._require(actor, project_id, "privacy_budget.refund")
        with self._refusals("privacy_budget.refund", actor, project_id):
            if not isinstance(epsilon, int | float) or not math.isfinite(epsilon) or epsilon <= 0:
                raise RuleViolation("A refund is a positive epsilon")
            if not reason:
                raise RuleViolation("Give the reason for the refund")
            with transaction(self.session) as s:
                if s.get(Project, project_id) is None:
                    raise RuleViolation("No such project")
                _locked_row(s, project_id)
                state = budget_state(s, project_id)
                if epsilon > state.spent - state.refunded + 1e-12:
                    raise RuleViolation("A refund cannot give back more than the project has spent")
                s.add(
                    PrivacyBudgetEntry(
                        project_id=project_id, kind="refund", epsilon=float(epsilon), actor_id=actor.id, reason=reason
                    )
                )
                self._event(s, "privacy_budget.refund", actor, project_id, epsilon=float(epsilon))
        return self.state(project_id)

    # --- plumbing -------------------------------------------------------------------------------------
    def _require(self, actor: Any, project_id: str, action: str) -> None:
        if not has_permission(actor, Permission.APPLICATION_DECIDE):
            with transaction(self.session) as s:
                self.audit.record(
                    s,
                    action,
                    actor_id=getattr(actor, "id", None),
                    outcome=DENIED,
                    target_type="project",
                    target_id=project_id,
                    project_id=project_id,
                    detail={"reason": "not the DAC"},
                )
            raise OutputPermissionDenied("Only the data access committee sets or refunds a project's privacy budget")

    @contextlib.contextmanager
    def _refusals(self, action: str, actor: Any, project_id: str) -> Iterator[None]:
        """A rule's refusal inside is recorded as a ``denied`` event and raised as ``OutputError``."""
        try:
            yield
        except RuleViolation as exc:
            with transaction(self.session) as s:
                self.audit.record(
                    s,
                    action,
                    actor_id=actor.id,
                    outcome=DENIED,
                    target_type="project",
                    target_id=project_id,
                    project_id=project_id,
                    detail={"reason": "rule", "rule": str(exc)[:300]},
                )
            raise OutputError(str(exc)) from None

    def _event(self, s: Session, action: str, actor: Any, project_id: str, **detail: Any) -> None:
        self.audit.record(
            s,
            action,
            actor_id=actor.id,
            target_type="project",
            target_id=project_id,
            project_id=project_id,
            detail=detail,
        )
