"""The pure rules: the lifecycle table tested whole, submission completeness, columns, votes, gate."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from projects import rules
from projects.rules import (
    IllegalTransition,
    RuleViolation,
    check_approved_columns,
    check_conflict_declaration,
    check_quorum,
    check_requested_columns,
    check_transition,
    check_vote,
    gate_reasons,
    missing_for_submission,
)

TODAY = dt.date(2026, 6, 1)

EXPECTED_ALLOWED = {
    ("draft", "submitted"),
    ("submitted", "in_review"),
    ("in_review", "approved"),
    ("in_review", "changes_requested"),
    ("in_review", "rejected"),
    ("changes_requested", "submitted"),
    ("approved", "active"),
    ("active", "suspended"),
    ("suspended", "active"),
    ("approved", "closed"),
    ("active", "closed"),
    ("suspended", "closed"),
    ("closed", "data_destroyed"),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(rules.STATES, repeat=2)))
def test_transition_is_allowed_exactly_when_the_table_says_so(current: str, target: str) -> None:
    if (current, target) in EXPECTED_ALLOWED:
        assert check_transition(current, target)
    else:
        with pytest.raises(IllegalTransition, match="cannot become"):
            check_transition(current, target)


def test_transition_table_is_the_documented_lifecycle() -> None:
    assert set(rules.TRANSITIONS) == EXPECTED_ALLOWED


def test_illegal_transition_error_says_what_is_possible_instead() -> None:
    with pytest.raises(IllegalTransition) as refused:
        check_transition("draft", "active")

    assert "draft cannot become active" in str(refused.value)
    assert "submitted" in str(refused.value)


def test_terminal_states_allow_no_transition() -> None:
    for state in rules.TERMINAL_STATES:
        assert rules.allowed_targets(state) == []


def test_unknown_state_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="Unknown"):
        check_transition("draft", "archived")


def test_mermaid_diagram_has_one_arrow_per_transition() -> None:
    diagram = rules.mermaid_diagram()

    arrows = [line for line in diagram.splitlines() if "-->" in line and "[*]" not in line]
    assert len(arrows) == len(rules.TRANSITIONS)
    assert "    in_review --> approved: approve" in diagram


def _complete() -> dict:
    return {
        "title": "T",
        "lay_summary": "L",
        "scientific_purpose": "S",
        "public_benefit": "B",
        "legal_basis": "6(1)(e)",
        "ethics_reference": "IRAS 1",
        "start_date": TODAY,
        "end_date": TODAY + dt.timedelta(days=30),
        "datasets": [{"name": "admissions", "columns": ["nhs_number"], "justification": "linkage"}],
        "members": [],
    }


def test_complete_application_lacks_nothing() -> None:
    assert missing_for_submission(_complete(), TODAY) == []


def test_incomplete_application_names_each_missing_thing() -> None:
    app = _complete() | {"lay_summary": " ", "end_date": None, "datasets": []}

    problems = missing_for_submission(app, TODAY)

    assert problems == ["Enter a lay summary", "Enter the end date", "Choose at least one dataset"]


def test_dataset_without_columns_or_reasons_is_named() -> None:
    app = _complete() | {"datasets": [{"name": "gp_events", "columns": [], "justification": ""}]}

    problems = missing_for_submission(app, TODAY)

    assert "Choose the columns you need from gp_events" in problems
    assert "Explain why you need each column of gp_events" in problems


def test_end_before_start_or_in_the_past_is_refused() -> None:
    backwards = _complete() | {"end_date": TODAY - dt.timedelta(days=1)}

    problems = missing_for_submission(backwards, TODAY)

    assert "The end date must be after the start date" in problems
    assert "The end date is in the past" in problems


def test_project_longer_than_five_years_is_refused() -> None:
    long = _complete() | {"end_date": TODAY + dt.timedelta(days=366 * 5 + 1)}

    assert any("5 years" in p for p in missing_for_submission(long, TODAY))


def test_requested_columns_come_back_in_dataset_order_and_unknown_names_are_refused() -> None:
    assert check_requested_columns(["c", "a"], ["a", "b", "c"]) == ["a", "c"]
    with pytest.raises(RuleViolation, match="not in the dataset: z"):
        check_requested_columns(["a", "z"], ["a", "b"])


def test_chair_may_approve_fewer_columns_but_never_more() -> None:
    requested = {"admissions": ["nhs_number", "date_of_birth", "diagnosis"]}

    assert check_approved_columns(requested, {"admissions": ["diagnosis", "nhs_number"]}) == {
        "admissions": ["nhs_number", "diagnosis"]
    }
    with pytest.raises(RuleViolation, match="not asked for"):
        check_approved_columns(requested, {"admissions": ["postcode"]})
    with pytest.raises(RuleViolation, match="did not ask"):
        check_approved_columns(requested, {"gp_events": ["code"]})
    with pytest.raises(RuleViolation, match="at least one column"):
        check_approved_columns(requested, {"admissions": []})


@pytest.mark.parametrize("rationale", ["", "   "])
def test_vote_without_rationale_is_refused(rationale: str) -> None:
    with pytest.raises(RuleViolation, match="reasons"):
        check_vote("approve", rationale)


def test_vote_with_unknown_choice_is_refused() -> None:
    with pytest.raises(RuleViolation):
        check_vote("abstain", "no view")


@pytest.mark.parametrize("state", sorted(rules.STATE_LABELS))
def test_a_conflict_may_be_declared_only_while_the_application_waits_for_the_committee(state: str) -> None:
    if state in ("submitted", "in_review"):
        check_conflict_declaration(state, "Former colleague")
    else:
        label = rules.STATE_LABELS[state].lower()
        with pytest.raises(RuleViolation, match=f"waiting for the committee .*; this one is {label}$"):
            check_conflict_declaration(state, "Former colleague")


@pytest.mark.parametrize("reason", ["", "  \n "])
def test_a_conflict_without_a_description_is_refused(reason: str) -> None:
    with pytest.raises(RuleViolation, match="Describe the conflict"):
        check_conflict_declaration("submitted", reason)


def test_quorum_refuses_until_enough_votes() -> None:
    with pytest.raises(RuleViolation, match="1 of 2"):
        check_quorum(1, 2)
    check_quorum(2, 2)


def test_rejection_without_a_public_comment_is_refused() -> None:
    with pytest.raises(RuleViolation, match="why"):
        rules.check_decision("rejected", "", "")


def _facts(**changes: object) -> rules.GateFacts:
    base = dict(
        user_exists=True,
        user_active=True,
        mfa_enrolled=True,
        project_exists=True,
        project_state="active",
        start_date=TODAY,
        end_date=TODAY + dt.timedelta(days=10),
        active_member=True,
        agreement_published=True,
        current_agreement_signed=True,
        training_expires_on=TODAY,
    )
    base.update(changes)
    return rules.GateFacts(**base)  # type: ignore[arg-type]


def test_gate_allows_when_every_condition_holds_including_the_last_day_of_training() -> None:
    assert gate_reasons(_facts(), TODAY) == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"user_active": False}, "user_inactive"),
        ({"mfa_enrolled": False}, "mfa_not_enrolled"),
        ({"project_state": "suspended"}, "project_suspended"),
        ({"project_state": "approved"}, "project_not_active"),
        ({"start_date": TODAY + dt.timedelta(days=1)}, "before_start_date"),
        ({"end_date": TODAY - dt.timedelta(days=1)}, "after_end_date"),
        ({"active_member": False}, "not_a_member"),
        ({"agreement_published": False}, "no_agreement_published"),
        ({"current_agreement_signed": False}, "agreement_not_signed"),
        ({"training_expires_on": TODAY - dt.timedelta(days=1)}, "training_missing_or_expired"),
        ({"training_expires_on": None}, "training_missing_or_expired"),
    ],
)
def test_gate_refuses_with_the_reason_for_each_failed_condition(changes: dict, reason: str) -> None:
    assert gate_reasons(_facts(**changes), TODAY) == [reason]


def test_gate_reports_every_reason_at_once() -> None:
    reasons = gate_reasons(_facts(mfa_enrolled=False, active_member=False, training_expires_on=None), TODAY)

    assert reasons == ["mfa_not_enrolled", "not_a_member", "training_missing_or_expired"]


def test_every_gate_reason_has_a_message() -> None:
    assert set(rules.GATE_REASONS) >= {
        "user_unknown",
        "project_unknown",
        "agreement_not_signed",
        "training_missing_or_expired",
    }
