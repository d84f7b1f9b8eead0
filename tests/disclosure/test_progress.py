"""Who is told that a request's automated checks are done (``disclosure.progress``)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from disclosure import rules
from disclosure.models import OutputRequest, OutputReview
from disclosure.progress import _review_targets_and_accounts, eligible_checkers
from tests.disclosure.factories import SAFE_CSV, World, checkers_of_every_kind
from tre.core.db import transaction
from tre.core.identity import User
from tre.core.notifications import OutboxMessage


@pytest.fixture
def world(app: Any) -> Any:
    with app.app_context():
        yield World(app)


def _former_reads(s: Any, req: OutputRequest) -> tuple[list[str], dict[str, str]]:
    """What the check job read before ADR 0058, kept as the reference: the round's reviewers (by
    claim), else ``eligible_checkers``; then the active accounts of those and of the author."""
    reviewers = list(
        s.scalars(
            select(OutputReview.reviewer_id)
            .where(OutputReview.request_id == req.id, OutputReview.round == req.round)
            .order_by(OutputReview.claimed_at)
        )
    )
    targets = reviewers or eligible_checkers(s, req)
    everyone = [*targets, req.author_id]
    accounts = dict(s.execute(select(User.id, User.email).where(User.id.in_(everyone), User.is_active.is_(True))).all())
    return targets, accounts


def test_the_checkers_and_accounts_told_are_those_the_former_reads_chose(world: World) -> None:
    checkers_of_every_kind(world)
    req = world.submitted(content=SAFE_CSV)
    s = world.session

    targets, accounts = _review_targets_and_accounts(s, req)

    assert (targets, accounts) == _former_reads(s, req)
    assert world.colleague.id not in targets and req.author_id in accounts


def test_the_rounds_reviewers_and_their_active_accounts_are_told_when_it_has_reviewers(world: World) -> None:
    checkers_of_every_kind(world)
    req = world.submitted(content=SAFE_CSV)
    with transaction(world.session) as s:
        s.add(OutputReview(request_id=req.id, round=req.round, reviewer_id=world.oscar.id, assigned_by="x"))
        s.get(User, world.oscar.id).is_active = False
    s = world.session
    s.expire_all()
    req = s.get(OutputRequest, req.id)

    targets, accounts = _review_targets_and_accounts(s, req)

    assert targets == [world.oscar.id]
    assert (targets, accounts) == _former_reads(s, req)
    assert world.oscar.id not in accounts  # an inactive reviewer is told nothing


def test_the_check_job_tells_the_active_eligible_checkers_and_the_author_once_each(world: World) -> None:
    checkers_of_every_kind(world)

    req = world.submitted(content=SAFE_CSV)

    assert req.state == rules.AWAITING_REVIEW
    s = world.session
    targets, accounts = _former_reads(s, req)
    told = s.execute(
        select(OutboxMessage.topic, OutboxMessage.recipient_id, OutboxMessage.recipient_email, OutboxMessage.dedupe_key)
        .where(OutboxMessage.topic.in_(["output.ready", "output.checked"]))
        .order_by(OutboxMessage.topic, OutboxMessage.recipient_id)
    ).all()
    expected = sorted(
        [("output.ready", uid, accounts[uid], f"output.ready:{req.id}:1:{uid}") for uid in targets if uid in accounts]
        + [("output.checked", req.author_id, accounts[req.author_id], f"output.checked:{req.id}:1:{req.author_id}")]
    )
    assert [tuple(row) for row in told] == expected
