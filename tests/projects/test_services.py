"""The use cases against both databases: application, review with recusal, decision, agreements, training."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from projects.models import ApplicationVersion, ApprovedColumn, Project, Vote
from projects.rules import IllegalTransition, RuleViolation
from projects.services import (
    IncompleteApplication,
    NotFound,
    ProjectPermissionDenied,
    approved_columns,
    approved_columns_of,
    approved_datasets,
    approved_datasets_of,
)
from tests.projects.factories import (
    TODAY,
    World,
    approved,
    build_world,
    complete_draft,
    in_review,
    publish_agreement,
    voted,
)
from tre.core.audit import AuditEvent
from tre.core.db import transaction
from tre.core.notifications import OutboxMessage


@pytest.fixture
def w(app: Any) -> World:
    return build_world(app)


def _events(w: World, action: str) -> list[AuditEvent]:
    return list(w.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_draft_saves_incomplete_and_submission_lists_what_is_missing(w: World) -> None:
    p = w.svc.create_project(w.pi, "A draft")

    with pytest.raises(IncompleteApplication) as refused:
        w.svc.submit(w.pi, p.id)

    assert "Enter a lay summary" in refused.value.problems
    assert "Choose at least one dataset" in refused.value.problems
    assert w.session.get(Project, p.id).state == "draft"


def test_submission_freezes_a_version_and_notifies_the_chair(w: World) -> None:
    p = complete_draft(w)

    version = w.svc.submit(w.pi, p.id)

    assert version.number == 1 and p.state == "submitted"
    assert version.content["datasets"][0]["columns"] == ["nhs_number", "date_of_birth", "diagnosis"]
    assert version.content["start_date"] == (TODAY - dt.timedelta(days=1)).isoformat()
    outbox = w.session.scalars(
        select(OutboxMessage).where(OutboxMessage.topic == "application.submitted")
    ).all()
    assert [m.recipient_id for m in outbox] == [w.chair.id]


def test_only_the_principal_investigator_edits_and_a_refusal_is_audited(w: World) -> None:
    p = complete_draft(w)

    with pytest.raises(ProjectPermissionDenied):
        w.svc.update_application(w.member, p.id, title="Hijacked")

    assert w.session.get(Project, p.id).title == "Readmissions after heart failure"
    denied = _events(w, "project.update")
    assert [e.outcome for e in denied if e.actor_id == w.member.id] == ["denied"]


def test_requesting_a_column_the_dataset_lacks_is_refused(w: World) -> None:
    p = w.svc.create_project(w.pi, "P")

    with pytest.raises(RuleViolation, match="not in the dataset"):
        w.svc.set_dataset_request(w.pi, p.id, w.dataset_id, ["nhs_number", "salary"], "why")


def test_submitted_application_cannot_be_edited(w: World) -> None:
    p = complete_draft(w)
    w.svc.submit(w.pi, p.id)

    with pytest.raises(RuleViolation, match="cannot be changed"):
        w.svc.update_application(w.pi, p.id, lay_summary="changed")


def test_assigning_reviewers_starts_the_review_and_notifies_them(w: World) -> None:
    p = in_review(w)

    assert p.state == "in_review"
    topics = w.session.scalars(
        select(OutboxMessage.recipient_id).where(OutboxMessage.topic == "application.assigned")
    )
    assert set(topics) == {w.dana.id, w.drew.id}


def test_a_team_member_cannot_be_assigned_as_reviewer(w: World) -> None:
    p = complete_draft(w)
    w.svc.submit(w.pi, p.id)

    with pytest.raises(RuleViolation, match="committee"):
        w.svc.assign_reviewers(w.chair, p.id, [w.member.id])


def test_conflicted_reviewer_cannot_vote_or_see_votes(w: World) -> None:
    p = in_review(w)
    w.svc.declare_conflict(w.drew, p.id, "I co-authored with the PI last year")
    w.svc.cast_vote(w.dana, p.id, "approve", "Good")

    with pytest.raises(ProjectPermissionDenied):
        w.svc.cast_vote(w.drew, p.id, "reject", "No")

    assert w.svc.votes_visible_to(w.drew, p) is None
    assert [v.reviewer_id for v in w.svc.votes_visible_to(w.chair, p)] == [w.dana.id]


def test_reviewer_sees_others_votes_only_after_voting(w: World) -> None:
    p = in_review(w)
    w.svc.cast_vote(w.dana, p.id, "approve", "Good")

    assert w.svc.votes_visible_to(w.drew, p) is None
    w.svc.cast_vote(w.drew, p.id, "changes_needed", "Justify postcode")
    assert len(w.svc.votes_visible_to(w.drew, p)) == 2


def test_unassigned_committee_member_cannot_vote(w: World) -> None:
    p = complete_draft(w)
    w.svc.submit(w.pi, p.id)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id])

    with pytest.raises(ProjectPermissionDenied):
        w.svc.cast_vote(w.drew, p.id, "approve", "Fine")


def test_second_vote_by_the_same_reviewer_is_refused(w: World) -> None:
    p = in_review(w)
    w.svc.cast_vote(w.dana, p.id, "approve", "Good")

    with pytest.raises(RuleViolation, match="already voted"):
        w.svc.cast_vote(w.dana, p.id, "reject", "Changed my mind")


def test_database_refuses_two_votes_per_reviewer_per_version(w: World) -> None:
    p = in_review(w)
    w.svc.cast_vote(w.dana, p.id, "approve", "Good")
    version_id = w.svc.current_version(p).id

    w.session.add(Vote(version_id=version_id, reviewer_id=w.dana.id, choice="reject", rationale="again"))
    with pytest.raises(IntegrityError):
        w.session.flush()
    w.session.rollback()


def test_database_refuses_a_vote_without_rationale(w: World) -> None:
    p = in_review(w)
    version_id = w.svc.current_version(p).id

    w.session.add(Vote(version_id=version_id, reviewer_id=w.dana.id, choice="approve", rationale="  "))
    with pytest.raises(IntegrityError):
        w.session.flush()
    w.session.rollback()


def test_decision_before_quorum_is_refused(w: World) -> None:
    p = in_review(w)
    w.svc.declare_conflict(w.drew, p.id, "Conflict")
    w.svc.cast_vote(w.dana, p.id, "approve", "Good")

    with pytest.raises(RuleViolation, match="quorum: 1 of 2"):
        w.svc.decide(w.chair, p.id, "approved")

    assert w.session.get(Project, p.id).state == "in_review"


def test_chairs_own_vote_does_not_count_towards_the_quorum_of_their_decision(w: World) -> None:
    p = in_review(w)
    w.svc.declare_conflict(w.drew, p.id, "Conflict")
    w.svc.cast_vote(w.dana, p.id, "approve", "Good")
    w.svc.assign_reviewers(w.chair, p.id, [w.chair.id])
    w.svc.cast_vote(w.chair, p.id, "approve_with_conditions", "Round outputs")

    with pytest.raises(RuleViolation, match="quorum: 1 of 2"):
        w.svc.decide(w.chair, p.id, "approved")

    assert w.session.get(Project, p.id).state == "in_review"
    [refusal] = _events(w, "project.decide")
    assert refusal.outcome == "denied" and refusal.actor_id == w.chair.id and "quorum" in refusal.detail["reason"]


def test_chairs_vote_is_kept_and_another_reviewer_completes_the_quorum(w: World) -> None:
    p = in_review(w)
    w.svc.assign_reviewers(w.chair, p.id, [w.chair.id])
    w.svc.cast_vote(w.chair, p.id, "approve", "Fine")
    w.svc.cast_vote(w.dana, p.id, "approve", "Good")
    w.svc.cast_vote(w.drew, p.id, "approve", "Good")

    decision = w.svc.decide(w.chair, p.id, "approved")

    assert decision.outcome == "approved"
    assert _events(w, "project.approve")[0].detail["votes"] == 2


@pytest.mark.parametrize("who", ["reviewer", "chair"])
def test_vote_or_decision_on_an_active_project_is_refused_and_audited(w: World, who: str) -> None:
    from tests.projects.factories import ready_for_access

    p = ready_for_access(w)
    assert w.session.get(Project, p.id).state == "active"
    action = "project.vote" if who == "reviewer" else "project.decide"
    before = len(_events(w, action))

    with pytest.raises(RuleViolation):
        if who == "reviewer":
            w.svc.cast_vote(w.dana, p.id, "reject", "Changed my mind")
        else:
            w.svc.decide(w.chair, p.id, "rejected", public_comment="No")

    refusals = _events(w, action)[before:]
    assert [(e.outcome, e.project_id) for e in refusals] == [("denied", p.id)]
    assert w.session.get(Project, p.id).state == "active"


@pytest.mark.parametrize(
    "title",
    ["Heart failure\r\nBcc: everyone@example.org", "Line\nbreak", "Tab\there", "Bell\x07", "Evil\u202etxt.exe",
     "Para\u2029graph", "Zero\u200bwidth"],
    ids=["crlf-header", "lf", "tab", "control", "rtl-override", "paragraph-separator", "zero-width"],
)
def test_project_title_with_line_breaks_or_control_characters_is_refused(w: World, title: str) -> None:
    with pytest.raises(RuleViolation, match="one line"):
        w.svc.create_project(w.pi, title)
    p = w.svc.create_project(w.pi, "A fine title")
    for field in ("title", "funder", "ethics_reference"):
        with pytest.raises(RuleViolation, match="one line"):
            w.svc.update_application(w.pi, p.id, **{field: title})

    assert w.session.get(Project, p.id).title == "A fine title"


def test_dataset_and_agreement_titles_are_one_line(w: World) -> None:
    with pytest.raises(RuleViolation, match="one line"):
        w.svc.publish_agreement(w.admin, "Agreement\r\nX-Header: 1", "Text")
    with pytest.raises(RuleViolation, match="one line"):
        w.svc.register_dataset(
            w.custodian, name="other", title="Other\ndata", description="d", source_kind="parquet",
            source_location="/data/o.parquet", sensitivity="low", columns=[],
        )


def test_approval_with_fewer_columns_stores_the_approved_list(w: World) -> None:
    p = voted(w)

    w.svc.decide(
        w.chair,
        p.id,
        "approved",
        conditions="Round to 5",
        approved_columns={"admissions": ["nhs_number", "diagnosis"]},
    )

    assert approved_columns(w.session, p.id) == {"admissions": ["nhs_number", "diagnosis"]}
    [ds] = approved_datasets(w.session, p.id)
    assert ds.source_location == "/data/admissions.parquet" and ds.columns == ["nhs_number", "diagnosis"]
    event = _events(w, "project.approve")[0]
    assert event.detail["approved_columns"] == {"admissions": 2}
    assert event.detail["requested_columns"] == {"admissions": 3}


def test_approved_columns_read_as_columns_answer_as_the_approved_datasets_do(w: World) -> None:
    given_out_of_order = approved(w, {"admissions": ["diagnosis", "nhs_number"]})
    everything = approved(w)
    renamed_since = approved(w, {"admissions": ["nhs_number"]})
    with transaction(w.session) as s:  # an approved name the dataset no longer has
        kept = select(ApprovedColumn.decision_id).where(ApprovedColumn.project_id == renamed_since.id)
        decision_id = s.scalars(kept).one()
        s.add(ApprovedColumn(project_id=renamed_since.id, dataset_id=w.dataset_id, column_name="gone",
                             decision_id=decision_id))
    ids = [given_out_of_order.id, everything.id, renamed_since.id, complete_draft(w).id]

    by_columns = approved_columns_of(w.session, ids)

    by_datasets = approved_datasets_of(w.session, ids)
    assert by_columns == {p: {d.name: d.columns for d in datasets} for p, datasets in by_datasets.items()}
    assert by_columns[given_out_of_order.id] == {"admissions": ["nhs_number", "diagnosis"]}  # the dataset's order
    assert by_columns[renamed_since.id] == {"admissions": ["nhs_number"]}
    assert set(by_columns) == set(ids[:3])  # a draft has none
    assert approved_columns(w.session, everything.id) == by_columns[everything.id]


def test_approving_a_column_that_was_not_requested_is_refused(w: World) -> None:
    p = voted(w)

    with pytest.raises(RuleViolation, match="not asked for"):
        w.svc.decide(w.chair, p.id, "approved", approved_columns={"admissions": ["postcode"]})

    assert approved_columns(w.session, p.id) == {}
    assert w.session.get(Project, p.id).state == "in_review"


def test_only_the_chair_decides(w: World) -> None:
    p = voted(w)

    with pytest.raises(ProjectPermissionDenied):
        w.svc.decide(w.dana, p.id, "approved")


def test_changes_requested_then_resubmitted_makes_a_new_version_with_fresh_votes(w: World) -> None:
    p = voted(w)
    w.svc.decide(w.chair, p.id, "changes_requested", public_comment="Drop date of birth")
    w.svc.set_dataset_request(w.pi, p.id, w.dataset_id, ["nhs_number", "diagnosis"], "linkage; outcome")

    version = w.svc.submit(w.pi, p.id)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id])

    assert version.number == 2 and p.state == "in_review"
    count = w.session.scalar(
        select(func.count()).select_from(ApplicationVersion).where(ApplicationVersion.project_id == p.id)
    )
    assert count == 2
    assert w.svc.votes_visible_to(w.chair, p) == []
    w.svc.cast_vote(w.dana, p.id, "approve", "Better now")  # a new vote on the new version is allowed


def test_rejected_project_can_never_move_again(w: World) -> None:
    p = voted(w)
    w.svc.decide(w.chair, p.id, "rejected", public_comment="Not in the public interest")

    with pytest.raises(IllegalTransition):
        w.svc.submit(w.pi, p.id)


def test_activation_needs_approval(w: World) -> None:
    p = complete_draft(w)

    with pytest.raises(IllegalTransition):
        w.svc.activate(w.pi, p.id)


def test_suspend_and_reinstate_are_for_the_chair(w: World) -> None:
    p = approved(w)
    w.svc.activate(w.pi, p.id)

    with pytest.raises(ProjectPermissionDenied):
        w.svc.suspend(w.pi, p.id, "self")
    w.svc.suspend(w.chair, p.id, "Breach under investigation")
    assert p.state == "suspended"
    w.svc.reinstate(w.chair, p.id)
    assert p.state == "active"


def test_extension_goes_back_through_the_chair(w: World) -> None:
    p = approved(w)
    new_end = p.end_date + dt.timedelta(days=90)

    ext = w.svc.request_extension(w.pi, p.id, new_end, "Recruitment slower than planned")
    assert p.end_date != new_end
    w.svc.decide_extension(w.chair, ext.id, grant=True)

    assert w.session.get(Project, p.id).end_date == new_end


def test_signature_requires_the_current_version_hash_and_the_signers_name(w: World) -> None:
    p = approved(w)
    template = publish_agreement(w)

    with pytest.raises(RuleViolation, match="changed since"):
        w.svc.sign_agreement(w.pi, p.id, "0" * 64, w.pi.display_name)
    with pytest.raises(RuleViolation, match="full name"):
        w.svc.sign_agreement(w.pi, p.id, template.content_hash, "Someone Else")
    sig = w.svc.sign_agreement(w.pi, p.id, template.content_hash, "  rita   PATEL ")

    assert sig.content_hash == template.content_hash and sig.user_id == w.pi.id


def test_outsider_cannot_sign_or_view(w: World) -> None:
    p = approved(w)
    template = publish_agreement(w)

    with pytest.raises(ProjectPermissionDenied):
        w.svc.sign_agreement(w.outsider, p.id, template.content_hash, w.outsider.display_name)
    with pytest.raises(ProjectPermissionDenied):
        w.svc.get_project(w.outsider, p.id)


def test_new_agreement_version_gets_a_new_hash_and_notifies_members(w: World) -> None:
    p = approved(w)
    first = publish_agreement(w)

    second = publish_agreement(w, "Revised text with a new clause.")

    assert second.version == first.version + 1 and second.content_hash != first.content_hash
    due = w.session.scalars(select(OutboxMessage.recipient_id).where(OutboxMessage.topic == "agreement.due"))
    assert {w.pi.id, w.member.id} <= set(due)
    assert p.state == "approved"


def test_training_is_recorded_by_administrators_only(w: World) -> None:
    with pytest.raises(ProjectPermissionDenied):
        w.svc.record_training(w.pi, w.pi.id, TODAY, TODAY + dt.timedelta(days=365))

    w.svc.record_training(w.admin, w.pi.id, TODAY, TODAY + dt.timedelta(days=365), reference="ONS-123")

    assert w.svc.training_expiry(w.pi.id) == TODAY + dt.timedelta(days=365)


def test_training_expiring_before_completion_is_refused(w: World) -> None:
    with pytest.raises(RuleViolation, match="after the completion"):
        w.svc.record_training(w.admin, w.pi.id, TODAY, TODAY - dt.timedelta(days=1))


def test_unknown_project_is_not_found(w: World) -> None:
    with pytest.raises(NotFound):
        w.svc.get_project(w.chair, "nope")


def test_audit_details_hold_ids_and_codes_but_no_names_or_emails(w: World) -> None:
    approved(w)

    for event in w.session.scalars(select(AuditEvent)):
        text = str(event.detail)
        for person in (w.pi, w.member, w.chair, w.dana):
            assert person.email not in text and person.display_name not in text


def test_catalogue_refuses_a_column_without_a_role(w: World) -> None:
    with pytest.raises(RuleViolation, match="role"):
        w.svc.register_dataset(
            w.custodian,
            name="gp",
            title="GP",
            description="",
            source_kind="csv",
            source_location="/x.csv",
            sensitivity="high",
            columns=[{"name": "a", "role": "secret"}],
        )


def test_only_custodians_register_datasets(w: World) -> None:
    with pytest.raises(ProjectPermissionDenied):
        w.svc.register_dataset(
            w.pi,
            name="gp",
            title="GP",
            description="",
            source_kind="csv",
            source_location="/x.csv",
            sensitivity="high",
            columns=[{"name": "a", "role": "attribute"}],
        )


def test_training_import_adds_every_record_or_none(w: World) -> None:
    good = f"email,completed_on,expires_on,reference\n{w.pi.email},{TODAY},{TODAY + dt.timedelta(days=365)},C-1\n"
    bad = good + f"nobody@nhs.example,{TODAY},{TODAY + dt.timedelta(days=365)}\n{w.member.email},yesterday,x\n"

    with pytest.raises(RuleViolation) as refused:
        w.svc.import_training(w.admin, bad)
    assert "Line 4: write dates" in str(refused.value) and "No account for nobody@nhs.example" in str(refused.value)
    assert w.svc.training_expiry(w.pi.id) is None

    assert w.svc.import_training(w.admin, good) == 1
    assert w.svc.training_expiry(w.pi.id) == TODAY + dt.timedelta(days=365)
