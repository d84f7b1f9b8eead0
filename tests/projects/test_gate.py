"""The access gate against both databases: it opens only when everything holds, closes when anything
lapses, and every refusal through ``require_access`` is audited with its reasons."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from projects.gate import (
    AccessRefused,
    allowed_earlier,
    ask_gate,
    check_access,
    check_team_access,
    current_agreement,
    gather_facts,
    gather_team_facts,
    remember_allowed,
    require_access,
)
from tests.projects.factories import (
    TODAY,
    World,
    approved,
    build_world,
    make_user,
    publish_agreement,
    ready_for_access,
)
from tests.statements import count_statements
from tre.core.audit import AuditEvent
from tre.core.db import transaction, utcnow


@pytest.fixture
def w(app: Any) -> World:
    return build_world(app)


def _at(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)


def test_gate_opens_for_a_signed_trained_member_of_an_active_project(w: World) -> None:
    p = ready_for_access(w)

    decision = check_access(w.session, w.member.id, p.id)

    assert decision.allowed and decision.reasons == []


def test_gate_stays_shut_for_an_approved_project_until_it_is_active(w: World) -> None:
    p = approved(w)

    assert "project_not_active" in check_access(w.session, w.pi.id, p.id).reasons


def test_gate_refuses_someone_outside_the_team(w: World) -> None:
    p = ready_for_access(w)

    assert "not_a_member" in check_access(w.session, w.outsider.id, p.id).reasons


def test_gate_closes_when_training_expires(w: World) -> None:
    p = ready_for_access(w)
    expiry = w.svc.training_expiry(w.member.id)

    assert check_access(w.session, w.member.id, p.id, now=_at(expiry)).allowed
    later = check_access(w.session, w.member.id, p.id, now=_at(expiry + dt.timedelta(days=1)))
    assert not later.allowed and "training_missing_or_expired" in later.reasons


def test_gate_closes_when_a_new_agreement_version_is_published_until_re_signed(w: World) -> None:
    p = ready_for_access(w)

    new = publish_agreement(w, "Version two: outputs must be checked before release.")

    assert check_access(w.session, w.member.id, p.id).reasons == ["agreement_not_signed"]
    w.svc.sign_agreement(w.member, p.id, new.content_hash, w.member.display_name)
    assert check_access(w.session, w.member.id, p.id).allowed


def test_gate_closes_when_the_project_is_suspended(w: World) -> None:
    p = ready_for_access(w)

    w.svc.suspend(w.chair, p.id, "Investigation")

    assert check_access(w.session, w.pi.id, p.id).reasons == ["project_suspended"]


def test_gate_closes_after_the_end_date_and_before_the_start_date(w: World) -> None:
    p = ready_for_access(w)

    assert (
        "after_end_date"
        in check_access(w.session, w.pi.id, p.id, now=_at(p.end_date + dt.timedelta(days=1))).reasons
    )
    assert (
        "before_start_date"
        in check_access(w.session, w.pi.id, p.id, now=_at(p.start_date - dt.timedelta(days=1))).reasons
    )


def test_gate_closes_for_a_removed_member(w: World) -> None:
    p = ready_for_access(w)

    w.svc.remove_member(w.pi, p.id, w.member.id)

    assert check_access(w.session, w.member.id, p.id).reasons == ["not_a_member"]


def test_gate_closes_without_mfa_or_for_an_inactive_account(w: World) -> None:
    p = ready_for_access(w)
    with transaction(w.session):
        w.member.mfa_enrolled_at = None
        w.pi.is_active = False

    assert check_access(w.session, w.member.id, p.id).reasons == ["mfa_not_enrolled"]
    assert check_access(w.session, w.pi.id, p.id).reasons == ["user_inactive"]


def test_gate_answers_for_unknown_people_and_projects(w: World) -> None:
    p = ready_for_access(w)

    assert check_access(w.session, "nobody", p.id).reasons == ["user_unknown"]
    assert check_access(w.session, w.pi.id, "nothing").reasons == ["project_unknown"]


def test_require_access_raises_and_audits_the_refusal_with_its_reasons(w: World) -> None:
    p = approved(w)

    with pytest.raises(AccessRefused, match="not active") as refused:
        require_access(w.session, w.audit, w.member.id, p.id, purpose="workspace")

    assert "project_not_active" in refused.value.decision.reasons
    event = w.session.scalars(select(AuditEvent).where(AuditEvent.action == "gate.check")).one()
    assert event.outcome == "denied" and event.project_id == p.id and event.actor_id == w.member.id
    assert "project_not_active" in event.detail["reasons"] and event.detail["purpose"] == "workspace"


def test_ask_gate_records_an_allowed_answer_too(w: World) -> None:
    p = ready_for_access(w)

    decision = ask_gate(w.session, w.audit, w.pi.id, p.id, purpose="extract")

    assert decision.allowed
    event = w.session.scalars(select(AuditEvent).where(AuditEvent.action == "gate.check")).one()
    assert event.outcome == "success" and event.detail["reasons"] == []


def test_gate_uses_the_latest_of_several_training_records(w: World) -> None:
    p = ready_for_access(w)
    w.svc.record_training(
        w.admin, w.member.id, TODAY - dt.timedelta(days=800), TODAY - dt.timedelta(days=435)
    )

    assert check_access(w.session, w.member.id, p.id, now=utcnow()).allowed


def test_team_answers_equal_the_gate_asked_for_each_person_in_every_situation(w: World) -> None:
    p = ready_for_access(w)
    # The member signs the next version and the PI does not; others never joined, one is inactive.
    new = publish_agreement(w, "Version two: outputs must be checked before release.")
    w.svc.sign_agreement(w.member, p.id, new.content_hash, w.member.display_name)
    with transaction(w.session):
        w.drew.is_active = False
    people = [w.pi.id, w.member.id, w.dana.id, w.drew.id, w.outsider.id, "nobody"]

    for now in (utcnow(), _at(p.end_date + dt.timedelta(days=1)), _at(TODAY + dt.timedelta(days=400))):
        team = check_team_access(w.session, p.id, people, now=now)

        assert team == {person: check_access(w.session, person, p.id, now=now) for person in people}
    assert check_team_access(w.session, "nothing", [w.pi.id]) == {w.pi.id: check_access(w.session, w.pi.id, "nothing")}


def test_team_facts_equal_the_facts_gathered_for_each_person_in_one_statement(w: World) -> None:
    """The team's facts (the page shows who signed and whose training runs until when beside each
    answer) are those of the one-person read, whatever the mix; with the agreement given, they are one
    statement for the whole team (it was four: people, memberships, signatures, training)."""
    p = ready_for_access(w)
    new = publish_agreement(w, "Version two: outputs must be checked before release.")
    w.svc.sign_agreement(w.member, p.id, new.content_hash, w.member.display_name)
    w.svc.record_training(w.admin, w.dana.id, TODAY - dt.timedelta(days=800), TODAY - dt.timedelta(days=435))
    with transaction(w.session):
        w.drew.is_active = False
    people = [w.pi.id, w.member.id, w.dana.id, w.drew.id, w.outsider.id, "nobody"]
    template = current_agreement(w.session)
    gather_team_facts(w.session, p.id, people)  # the project itself, loaded once per session

    statements, team = count_statements(w.app, lambda: gather_team_facts(w.session, p.id, people, template=template))

    assert team == {person: gather_facts(w.session, person, p.id) for person in people}
    assert team[w.member.id].current_agreement_signed and not team[w.pi.id].current_agreement_signed
    assert team[w.pi.id].training_expires_on is not None and not team["nobody"].user_exists
    assert statements == 1
    for project_id in ("nothing", ""):
        assert gather_team_facts(w.session, project_id, people) == {
            person: gather_facts(w.session, person, project_id) for person in people
        }


def test_team_answers_take_the_same_statements_for_two_people_or_ten(w: World) -> None:
    p = ready_for_access(w)
    two = [w.pi.id, w.member.id]
    ten = two + [make_user(w.app, f"extra{n}", ["researcher"]).id for n in range(8)]
    w.session.commit()
    check_team_access(w.session, p.id, ten)  # the project itself, loaded once per session

    with_two, _ = count_statements(w.app, lambda: check_team_access(w.session, p.id, two))
    with_ten, answers = count_statements(w.app, lambda: check_team_access(w.session, p.id, ten))

    assert with_ten == with_two
    assert [person for person, decision in answers.items() if decision.allowed] == sorted(two)


def test_an_allowed_answer_is_remembered_for_its_transaction_only(w: World) -> None:
    p = ready_for_access(w)
    s = w.session

    assert check_access(s, w.member.id, p.id).allowed
    remember_allowed(s, w.member.id, p.id)
    asked_again = allowed_earlier(s, w.member.id, p.id)
    someone_else = allowed_earlier(s, w.outsider.id, p.id)
    s.commit()
    check_access(s, w.outsider.id, p.id)  # a read: the next transaction begins
    after_the_commit = allowed_earlier(s, w.member.id, p.id)
    remember_allowed(s, w.member.id, p.id)
    s.rollback()
    check_access(s, w.outsider.id, p.id)
    after_a_rollback = allowed_earlier(s, w.member.id, p.id)

    assert asked_again and not someone_else
    assert not after_the_commit and not after_a_rollback
