"""The rules of governed re-identification: *may this happen now?* Plain Python, no database.

A request moves only along ``TRANSITIONS``: two approvals from people other than the requester
approve it, one rejection rejects it, and the requester receives the identifiers once
(``fulfilled``). Every step also needs the request's project to be active, so a project that is
suspended, closed or destroyed has no re-identification at all, whatever the request's state.
"""

from __future__ import annotations

from tre.core import statemachine

PENDING, APPROVED, REJECTED, FULFILLED = "pending", "approved", "rejected", "fulfilled"
STATES: tuple[str, ...] = (PENDING, APPROVED, REJECTED, FULFILLED)
STATE_LABELS = {PENDING: "waiting for approval", APPROVED: "approved", REJECTED: "rejected", FULFILLED: "fulfilled"}

# (from, to) -> the name of the step. Nothing else moves a request.
TRANSITIONS: dict[tuple[str, str], str] = {
    (PENDING, APPROVED): "second approval",
    (PENDING, REJECTED): "reject",
    (APPROVED, FULFILLED): "identifiers given",
}

REQUIRED_APPROVALS = 2
PROJECT_STATE_REQUIRED = "active"


class ReidentificationRefused(Exception):
    """Something that may not happen now; the message is safe to show to the person."""


def check_transition(current: str, target: str) -> str:
    step = TRANSITIONS.get((current, target))
    if step is None:
        raise ReidentificationRefused(
            f"A re-identification request that is {STATE_LABELS.get(current, current)} cannot become "
            f"{STATE_LABELS.get(target, target)}"
        )
    return step


def check_project_active(project_state: str | None) -> None:
    if project_state is None:
        raise ReidentificationRefused("No such project")
    if project_state != PROJECT_STATE_REQUIRED:
        raise ReidentificationRefused("Re-identification is possible only while the project is active")


def state_after_decisions(decisions: list[str]) -> str:
    """Where a pending request goes once these decisions are recorded (it may stay pending)."""
    if "reject" in decisions:
        return REJECTED
    if decisions.count("approve") >= REQUIRED_APPROVALS:
        return APPROVED
    return PENDING


def mermaid_diagram() -> str:
    """The request's lifecycle as a Mermaid state diagram, generated from ``TRANSITIONS``."""
    return statemachine.mermaid_diagram(TRANSITIONS, STATES, PENDING)
