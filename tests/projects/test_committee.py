"""The committee's conflicts of interest against both databases: any member may declare one before the
chair assigns them, the chair then cannot assign them, and nobody else can declare one; the member who
declared, and nobody else, may withdraw it as made in error while the application waits (ADR 0065)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy import func, select

from projects.models import DECLARED_BEFORE_ASSIGNMENT, Project, ReviewAssignment, WithdrawnConflict
from projects.rules import RuleViolation
from projects.services import ProjectPermissionDenied
from tests.projects.factories import World, approved, build_world, complete_draft, make_user, review_rows, submitted
from tre.core.audit import DENIED, SUCCESS, AuditEvent
from tre.core.identity import Identity


@pytest.fixture
def w(app: Any) -> World:
    return build_world(app)


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
    p = submitted(w)

    w.svc.declare_conflict(w.drew, p.id, "I supervised the PI's doctorate")

    [row] = review_rows(w, p)
    assert (row.reviewer_id, row.conflicted, row.assigned) == (w.drew.id, True, False)
    assert row.assigned_by == DECLARED_BEFORE_ASSIGNMENT and row.conflict_reason == "I supervised the PI's doctorate"
    assert w.session.get(Project, p.id).state == "submitted"  # a declaration starts no review
    [event] = _events(w, "project.declare_conflict")
    assert event.actor_id == w.drew.id and event.outcome == SUCCESS
    # The reason stays in the database; the log holds its fingerprint, never the words.
    sha = hashlib.sha256(b"I supervised the PI's doctorate").hexdigest()
    assert event.detail == {"version": 1, "assigned": False, "reason_sha256": sha}


def test_chair_cannot_assign_a_member_who_declared_a_conflict_and_nothing_changes(w: World) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Co-author of the PI")

    with pytest.raises(RuleViolation, match="Drew Dac has declared a conflict of interest on this application"):
        w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])

    assert [(a.reviewer_id, a.assigned) for a in review_rows(w, p)] == [(w.drew.id, False)]  # Dana not assigned either
    assert w.session.get(Project, p.id).state == "submitted"
    [refusal] = _events(w, "project.assign_reviewers", DENIED)
    assert refusal.actor_id == w.chair.id and "conflict of interest" in refusal.detail["reason"]


def test_chair_cannot_reassign_a_reviewer_who_declared_a_conflict_after_assignment(w: World) -> None:
    p = submitted(w)
    w.svc.assign_reviewers(w.chair, p.id, [w.drew.id])
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")

    with pytest.raises(RuleViolation, match="declared a conflict of interest"):
        w.svc.assign_reviewers(w.chair, p.id, [w.drew.id])

    [row] = review_rows(w, p)
    assert row.assigned and row.conflicted


def test_member_who_declared_before_assignment_cannot_vote_or_see_votes(w: World) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "Sound")

    with pytest.raises(ProjectPermissionDenied):
        w.svc.cast_vote(w.drew, p.id, "approve", "Fine")

    assert w.svc.votes_visible_to(w.drew, w.session.get(Project, p.id)) is None


def test_chair_who_declared_a_conflict_before_assignment_cannot_decide(w: World) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.chair, p.id, "The PI is my spouse")
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "Sound")
    w.svc.cast_vote(w.drew, p.id, "approve", "Sound")

    with pytest.raises(ProjectPermissionDenied):
        w.svc.decide(w.chair, p.id, "approved")

    assert w.session.get(Project, p.id).state == "in_review"


def test_a_declaration_counts_as_a_reviewer_nowhere(w: World) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id])

    assert [a.reviewer_id for a in review_rows(w, p) if a.assigned] == [w.dana.id]


# --- attacks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["researcher", "custodian", "output_checker", "administrator"])
def test_nobody_outside_the_committee_declares_a_conflict_and_the_refusal_is_audited(w: World, who: str) -> None:
    p = submitted(w)
    actor = {
        "researcher": w.outsider,
        "custodian": w.custodian,
        "output_checker": make_user(w.app, "olive.checker", ["output_checker"]),
        "administrator": w.admin,
    }[who]

    with pytest.raises(ProjectPermissionDenied):
        w.svc.declare_conflict(actor, p.id, "Let me out of the way of my rival's application")

    assert review_rows(w, p) == []
    [refusal] = _events(w, "project.declare_conflict")
    assert (refusal.actor_id, refusal.outcome, refusal.project_id) == (actor.id, DENIED, p.id)


def test_the_applicant_cannot_declare_a_conflict_on_their_own_application(w: World) -> None:
    p = submitted(w)

    with pytest.raises(ProjectPermissionDenied):
        w.svc.declare_conflict(w.pi, p.id, "Recuse the committee")

    assert review_rows(w, p) == []


def test_a_member_removed_from_the_committee_cannot_declare_a_conflict(w: World) -> None:
    p = submitted(w)
    _identity(w).set_roles(w.admin, w.drew.id, ["researcher"])

    with pytest.raises(ProjectPermissionDenied):
        w.svc.declare_conflict(w.drew, p.id, "Former colleague")

    assert review_rows(w, p) == []
    assert [e.actor_id for e in _events(w, "project.declare_conflict", DENIED)] == [w.drew.id]


def test_a_deactivated_member_cannot_declare_a_conflict(w: World) -> None:
    p = submitted(w)
    _identity(w).set_active(w.admin, w.drew.id, False)

    with pytest.raises(ProjectPermissionDenied):
        w.svc.declare_conflict(w.drew, p.id, "Former colleague")

    assert review_rows(w, p) == []


@pytest.mark.parametrize("state", ["draft", "approved"])
def test_a_declaration_on_an_application_not_under_review_is_refused_and_changes_nothing(
    w: World, state: str
) -> None:
    p = complete_draft(w) if state == "draft" else approved(w)
    before = [(a.reviewer_id, a.conflicted) for a in review_rows(w, p)]

    with pytest.raises(RuleViolation, match="only while the application is waiting for the committee") as refused:
        w.svc.declare_conflict(w.dana, p.id, "Former colleague")

    assert refused.type is RuleViolation  # a rule's refusal, not a permission's
    assert f"this one is {state}" in str(refused.value)
    assert [(a.reviewer_id, a.conflicted) for a in review_rows(w, p)] == before
    assert w.session.get(Project, p.id).state == state
    [refusal] = _events(w, "project.declare_conflict", DENIED)
    assert refusal.actor_id == w.dana.id and "waiting for the committee" in refusal.detail["reason"]


def test_declaring_twice_keeps_one_declaration_with_the_first_reason(w: World) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")

    with pytest.raises(RuleViolation, match="already declared a conflict of interest"):
        w.svc.declare_conflict(w.drew, p.id, "Second thoughts")

    [row] = review_rows(w, p)
    assert row.conflict_reason == "Former colleague"
    count = select(func.count()).select_from(ReviewAssignment).where(ReviewAssignment.reviewer_id == w.drew.id)
    assert w.session.scalar(count) == 1
    assert len(_events(w, "project.declare_conflict", SUCCESS)) == 1


def test_a_declaration_without_a_reason_is_refused_and_changes_nothing(w: World) -> None:
    p = submitted(w)

    with pytest.raises(RuleViolation, match="Describe the conflict of interest"):
        w.svc.declare_conflict(w.drew, p.id, "   ")

    assert review_rows(w, p) == []


# --- withdrawing a declaration made in error ----------------------------------------------------------


def _withdrawn(w: World) -> list[WithdrawnConflict]:
    w.session.expire_all()
    return list(w.session.scalars(select(WithdrawnConflict).order_by(WithdrawnConflict.withdrawn_at)))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_member_withdraws_a_declaration_made_before_assignment_and_the_chair_can_then_assign_them(w: World) -> None:
    p = submitted(w)
    declared = w.svc.declare_conflict(w.drew, p.id, "Co-author of the PI")
    declared_at = declared.conflict_declared_at

    w.svc.withdraw_conflict(w.drew, p.id, "  Wrong application: I meant the asthma study  ")

    assert review_rows(w, p) == []  # the recusal row is gone, so nothing stops the chair
    [kept] = _withdrawn(w)
    assert (kept.reviewer_id, kept.while_assigned, kept.declared_at) == (w.drew.id, False, declared_at)
    assert kept.declared_reason == "Co-author of the PI"
    assert kept.reason == "Wrong application: I meant the asthma study"
    assert kept.withdrawn_at >= kept.declared_at
    assert w.session.get(Project, p.id).state == "submitted"
    w.svc.assign_reviewers(w.chair, p.id, [w.drew.id, w.dana.id])
    w.svc.cast_vote(w.drew, p.id, "approve", "Sound design")
    assert [(a.reviewer_id, a.assigned, a.conflicted) for a in review_rows(w, p)] == [
        (w.drew.id, True, False),
        (w.dana.id, True, False),
    ]


def test_the_audit_log_shows_the_declaration_then_its_withdrawal_with_both_reasons(w: World) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Co-author of the PI")
    w.svc.withdraw_conflict(w.drew, p.id, "Misread the applicants")

    w.session.expire_all()
    trail = list(
        w.session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action.in_(("project.declare_conflict", "project.withdraw_conflict")))
            .order_by(AuditEvent.seq)
        )
    )

    assert [(e.action, e.actor_id, e.outcome, e.project_id) for e in trail] == [
        ("project.declare_conflict", w.drew.id, SUCCESS, p.id),
        ("project.withdraw_conflict", w.drew.id, SUCCESS, p.id),
    ]
    declaration, withdrawal = trail
    [kept] = _withdrawn(w)
    assert declaration.detail["reason_sha256"] == _sha("Co-author of the PI") == _sha(kept.declared_reason)
    assert withdrawal.detail == {
        "version": 1,
        "assigned": False,
        "withdrawal_id": kept.id,
        "declared_reason_sha256": _sha("Co-author of the PI"),
        "reason_sha256": _sha("Misread the applicants"),
    }
    assert "Misread" not in str(withdrawal.detail) and "Co-author" not in str(declaration.detail)


def test_a_reviewer_who_withdraws_a_declaration_made_after_assignment_reviews_again_unanchored(w: World) -> None:
    p = submitted(w)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    w.svc.cast_vote(w.dana, p.id, "approve", "Sound")

    w.svc.withdraw_conflict(w.drew, p.id, "Confused the PI with a namesake")

    [dana_row, drew_row] = review_rows(w, p)
    assert (drew_row.reviewer_id, drew_row.assigned, drew_row.conflicted) == (w.drew.id, True, False)
    assert drew_row.assigned_by == w.chair.id and drew_row.conflict_reason is None
    [kept] = _withdrawn(w)
    assert kept.while_assigned and kept.declared_reason == "Former colleague"
    project = w.session.get(Project, p.id)
    assert project.state == "in_review"
    assert w.svc.votes_visible_to(w.drew, project) is None  # not before their own vote
    w.svc.cast_vote(w.drew, p.id, "reject", "Too many columns")
    assert [v.reviewer_id for v in w.svc.votes_visible_to(w.drew, project) or []] == [w.dana.id, w.drew.id]
    w.svc.decide(w.chair, p.id, "approved")  # drew's vote counts towards the quorum again
    assert w.session.get(Project, p.id).state == "approved"


def test_a_chair_who_withdraws_their_declaration_may_decide_again(w: World) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.chair, p.id, "The PI is my spouse")
    w.svc.withdraw_conflict(w.chair, p.id, "Same surname, not my spouse")
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "Sound")
    w.svc.cast_vote(w.drew, p.id, "approve", "Sound")

    w.svc.decide(w.chair, p.id, "approved")

    assert w.session.get(Project, p.id).state == "approved"


def test_a_member_may_declare_again_after_withdrawing_and_both_withdrawals_are_kept(w: World) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "First")
    w.svc.withdraw_conflict(w.drew, p.id, "Wrong application")
    w.svc.declare_conflict(w.drew, p.id, "Second, for real")

    with pytest.raises(RuleViolation, match="Drew Dac has declared a conflict of interest"):
        w.svc.assign_reviewers(w.chair, p.id, [w.drew.id])
    w.svc.withdraw_conflict(w.drew, p.id, "Wrong again")

    assert [(k.declared_reason, k.reason) for k in _withdrawn(w)] == [
        ("First", "Wrong application"),
        ("Second, for real", "Wrong again"),
    ]
    assert review_rows(w, p) == []


# --- attacks on withdrawal ----------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["another_member", "chair", "administrator", "researcher"])
def test_nobody_withdraws_someone_elses_declaration_and_the_refusal_is_audited(w: World, who: str) -> None:
    p = submitted(w)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    actor = {"another_member": w.dana, "chair": w.chair, "administrator": w.admin, "researcher": w.outsider}[who]

    refused = ProjectPermissionDenied if who in ("administrator", "researcher") else RuleViolation
    with pytest.raises(refused) as raised:
        w.svc.withdraw_conflict(actor, p.id, "Drew is needed on this one")

    if refused is RuleViolation:  # a committee member can only ever reach their own (absent) declaration
        assert raised.type is RuleViolation and "You have not declared a conflict" in str(raised.value)
    drew_row = next(a for a in review_rows(w, p) if a.reviewer_id == w.drew.id)
    assert drew_row.conflicted and drew_row.conflict_reason == "Former colleague"
    assert _withdrawn(w) == []
    [refusal] = _events(w, "project.withdraw_conflict")
    assert (refusal.actor_id, refusal.outcome, refusal.project_id) == (actor.id, DENIED, p.id)


def test_the_applicant_cannot_withdraw_a_declaration_on_their_own_application(w: World) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")

    with pytest.raises(ProjectPermissionDenied):
        w.svc.withdraw_conflict(w.pi, p.id, "Let Drew review it")

    assert [a.reviewer_id for a in review_rows(w, p) if a.conflicted] == [w.drew.id]
    assert _withdrawn(w) == []


@pytest.mark.parametrize("how", ["roles_taken_away", "deactivated"])
def test_a_member_removed_from_the_committee_cannot_withdraw_and_their_recusal_stands(w: World, how: str) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    if how == "roles_taken_away":
        _identity(w).set_roles(w.admin, w.drew.id, ["researcher"])
    else:
        _identity(w).set_active(w.admin, w.drew.id, False)

    with pytest.raises(ProjectPermissionDenied):
        w.svc.withdraw_conflict(w.drew, p.id, "Made in error")

    [row] = review_rows(w, p)
    assert row.conflicted and _withdrawn(w) == []
    assert [e.actor_id for e in _events(w, "project.withdraw_conflict", DENIED)] == [w.drew.id]


def test_withdrawing_twice_does_nothing_the_second_time_and_says_so(w: World) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    w.svc.withdraw_conflict(w.drew, p.id, "Wrong application")

    with pytest.raises(RuleViolation, match="already withdrawn your declaration"):
        w.svc.withdraw_conflict(w.drew, p.id, "Wrong application")

    assert [k.reason for k in _withdrawn(w)] == ["Wrong application"]
    assert review_rows(w, p) == []
    assert len(_events(w, "project.withdraw_conflict", SUCCESS)) == 1
    [refusal] = _events(w, "project.withdraw_conflict", DENIED)
    assert refusal.actor_id == w.drew.id and "already withdrawn" in refusal.detail["reason"]


def test_withdrawing_with_no_declaration_is_refused_with_a_clear_message(w: World) -> None:
    p = submitted(w)

    with pytest.raises(RuleViolation, match="You have not declared a conflict of interest on this application"):
        w.svc.withdraw_conflict(w.drew, p.id, "Just in case")

    assert review_rows(w, p) == [] and _withdrawn(w) == []


def test_a_withdrawal_without_a_reason_is_refused_and_changes_nothing(w: World) -> None:
    p = submitted(w)
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")

    with pytest.raises(RuleViolation, match="Say why your declaration"):
        w.svc.withdraw_conflict(w.drew, p.id, "  \n ")

    [row] = review_rows(w, p)
    assert row.conflicted and _withdrawn(w) == []


@pytest.mark.parametrize("outcome", ["approved", "rejected"])
def test_withdrawing_on_a_decided_application_is_refused_and_changes_nothing(w: World, outcome: str) -> None:
    p = submitted(w)
    dora = make_user(w.app, "dora.dac", ["dac_member"])
    w.svc.declare_conflict(w.drew, p.id, "Former colleague")
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, dora.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "Sound")
    w.svc.cast_vote(dora, p.id, "approve", "Sound")
    w.svc.decide(w.chair, p.id, outcome, public_comment="The committee's view")

    with pytest.raises(RuleViolation, match="only while the application is waiting for the committee") as refused:
        w.svc.withdraw_conflict(w.drew, p.id, "Made in error")

    assert f"this one is {outcome}" in str(refused.value)
    drew_row = next(a for a in review_rows(w, p) if a.reviewer_id == w.drew.id)
    assert drew_row.conflicted and _withdrawn(w) == []
    assert w.session.get(Project, p.id).state == outcome
    [refusal] = _events(w, "project.withdraw_conflict", DENIED)
    assert refusal.actor_id == w.drew.id and "waiting for the committee" in refusal.detail["reason"]
