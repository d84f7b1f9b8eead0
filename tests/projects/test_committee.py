"""The committee's conflicts of interest against both databases: any member may declare one before the
chair assigns them, the chair then cannot assign them, and nobody else can declare one (ADR 0065)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from projects.models import DECLARED_BEFORE_ASSIGNMENT, Project, ReviewAssignment
from projects.rules import RuleViolation
from projects.services import ProjectPermissionDenied
from tests.projects.factories import World, approved, build_world, complete_draft, make_user
from tre.core.audit import DENIED, SUCCESS, AuditEvent
from tre.core.identity import Identity


@pytest.fixture
def w(app: Any) -> World:
    return build_world(app)


def _submitted(w: World) -> Project:
    p = complete_draft(w)
    w.svc.submit(w.pi, p.id)
    return p


def _rows(w: World, p: Project) -> list[ReviewAssignment]:
    w.session.expire_all()
    version = w.svc.current_version(w.session.get(Project, p.id))
    return w.svc.assignments(version)


def _events(w: World, action: str, outcome: str | None = None) -> list[AuditEvent]:
    w.session.expire_all()
    query = select(AuditEvent).where(AuditEvent.action == action)
    if outcome is not None:
        query = query.where(AuditEvent.outcome == outcome)
    return list(w.session.scalars(query.order_by(AuditEvent.seq)))


def _identity(w: World) -> Identity:
    p = w.app.extensions["tre.platform"]
    return Identity(p.db.session, p.keys, p.audit)


def test_unassigned_member_declares_a_conflict_on_a_submitted_application(w: World) -> None:
    p = _submitted(w)

    w.svc.declare_conflict(w.drew, p.id, "I supervised the PI's doctorate")

    [row] = _rows(w, p)
    assert (row.reviewer_id, row.conflicted, row.assigned) == (w.drew.id, True, False)
    assert row.assigned_by == DECLARED_BEFORE_ASSIGNMENT and row.conflict_reason == "I supervised the PI's doctorate"
    assert w.session.get(Project, p.id).state == "submitted"  # a declaration starts no review
    [event] = _events(w, "project.declare_conflict")
    assert event.actor_id == w.drew.id and event.outcome == SUCCESS
    assert event.detail == {"version": 1, "assigned": False}


def test_chair_cannot_assign_a_member_who_declared_a_conflict_and_nothing_changes(w: World) -> None:
    p = _submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Co-author of the PI")

    with pytest.raises(RuleViolation, match="Drew Dac has declared a conflict of interest on this application"):
        w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])

    assert [(a.reviewer_id, a.assigned) for a in _rows(w, p)] == [(w.drew.id, False)]  # Dana not assigned either
    assert w.session.get(Project, p.id).state == "submitted"
    [refusal] = _events(w, "project.assign_reviewers", DENIED)
    assert refusal.actor_id == w.chair.id and "conflict of interest" in refusal.detail["reason"]


def test_chair_cannot_reassign_a_reviewer_who_declared_a_conflict_after_assignment(w: World) -> None:
    p = _submitted(w)
    w.svc.assign_reviewers(w.chair, p.id, [w.drew.id])
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")

    with pytest.raises(RuleViolation, match="declared a conflict of interest"):
        w.svc.assign_reviewers(w.chair, p.id, [w.drew.id])

    [row] = _rows(w, p)
    assert row.assigned and row.conflicted


def test_member_who_declared_before_assignment_cannot_vote_or_see_votes(w: World) -> None:
    p = _submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "Sound")

    with pytest.raises(ProjectPermissionDenied):
        w.svc.cast_vote(w.drew, p.id, "approve", "Fine")

    assert w.svc.votes_visible_to(w.drew, w.session.get(Project, p.id)) is None


def test_chair_who_declared_a_conflict_before_assignment_cannot_decide(w: World) -> None:
    p = _submitted(w)
    w.svc.declare_conflict(w.chair, p.id, "The PI is my spouse")
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "Sound")
    w.svc.cast_vote(w.drew, p.id, "approve", "Sound")

    with pytest.raises(ProjectPermissionDenied):
        w.svc.decide(w.chair, p.id, "approved")

    assert w.session.get(Project, p.id).state == "in_review"


def test_a_declaration_counts_as_a_reviewer_nowhere(w: World) -> None:
    p = _submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id])

    assert [a.reviewer_id for a in _rows(w, p) if a.assigned] == [w.dana.id]


# --- attacks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["researcher", "custodian", "output_checker", "administrator"])
def test_nobody_outside_the_committee_declares_a_conflict_and_the_refusal_is_audited(w: World, who: str) -> None:
    p = _submitted(w)
    actor = {
        "researcher": w.outsider,
        "custodian": w.custodian,
        "output_checker": make_user(w.app, "olive.checker", ["output_checker"]),
        "administrator": w.admin,
    }[who]

    with pytest.raises(ProjectPermissionDenied):
        w.svc.declare_conflict(actor, p.id, "Let me out of the way of my rival's application")

    assert _rows(w, p) == []
    [refusal] = _events(w, "project.declare_conflict")
    assert (refusal.actor_id, refusal.outcome, refusal.project_id) == (actor.id, DENIED, p.id)


def test_the_applicant_cannot_declare_a_conflict_on_their_own_application(w: World) -> None:
    p = _submitted(w)

    with pytest.raises(ProjectPermissionDenied):
        w.svc.declare_conflict(w.pi, p.id, "Recuse the committee")

    assert _rows(w, p) == []


def test_a_member_removed_from_the_committee_cannot_declare_a_conflict(w: World) -> None:
    p = _submitted(w)
    _identity(w).set_roles(w.admin, w.drew.id, ["researcher"])

    with pytest.raises(ProjectPermissionDenied):
        w.svc.declare_conflict(w.drew, p.id, "Former colleague")

    assert _rows(w, p) == []
    assert [e.actor_id for e in _events(w, "project.declare_conflict", DENIED)] == [w.drew.id]


def test_a_deactivated_member_cannot_declare_a_conflict(w: World) -> None:
    p = _submitted(w)
    _identity(w).set_active(w.admin, w.drew.id, False)

    with pytest.raises(ProjectPermissionDenied):
        w.svc.declare_conflict(w.drew, p.id, "Former colleague")

    assert _rows(w, p) == []


@pytest.mark.parametrize("state", ["draft", "approved"])
def test_a_declaration_on_an_application_not_under_review_is_refused_and_changes_nothing(
    w: World, state: str
) -> None:
    p = complete_draft(w) if state == "draft" else approved(w)
    before = [(a.reviewer_id, a.conflicted) for a in _rows(w, p)]

    with pytest.raises(RuleViolation, match="only while the application is waiting for the committee") as refused:
        w.svc.declare_conflict(w.dana, p.id, "Former colleague")

    assert refused.type is RuleViolation  # a rule's refusal, not a permission's
    assert f"this one is {state}" in str(refused.value)
    assert [(a.reviewer_id, a.conflicted) for a in _rows(w, p)] == before
    assert w.session.get(Project, p.id).state == state
    [refusal] = _events(w, "project.declare_conflict", DENIED)
    assert refusal.actor_id == w.dana.id and "waiting for the committee" in refusal.detail["reason"]


def test_declaring_twice_keeps_one_declaration_with_the_first_reason(w: World) -> None:
    p = _submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")

    with pytest.raises(RuleViolation, match="already declared a conflict of interest"):
        w.svc.declare_conflict(w.drew, p.id, "Second thoughts")

    [row] = _rows(w, p)
    assert row.conflict_reason == "Former colleague"
    count = select(func.count()).select_from(ReviewAssignment).where(ReviewAssignment.reviewer_id == w.drew.id)
    assert w.session.scalar(count) == 1
    assert len(_events(w, "project.declare_conflict", SUCCESS)) == 1


def test_a_declaration_without_a_reason_is_refused_and_changes_nothing(w: World) -> None:
    p = _submitted(w)

    with pytest.raises(RuleViolation, match="Describe the conflict of interest"):
        w.svc.declare_conflict(w.drew, p.id, "   ")

    assert _rows(w, p) == []
