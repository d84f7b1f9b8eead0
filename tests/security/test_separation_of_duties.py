"""Separation of duties beyond the services' own tests: holding the right role never lets an author
check their own work, and one checker cannot fill both review places."""

from __future__ import annotations

from typing import Any

import pytest

from disclosure.services import OutputError, OutputPermissionDenied
from tests.disclosure.factories import World
from tre.core.db import transaction
from tre.core.identity import UserRole


@pytest.fixture
def world(app: Any) -> World:  # SQLite and, when reachable, PostgreSQL (tests/conftest.py)
    return World(app)


def test_author_who_is_also_an_output_checker_cannot_claim_their_own_request(world: World) -> None:
    req = world.submitted()
    with transaction(world.session):
        world.session.add(UserRole(user_id=world.author.id, role="output_checker"))
    world.session.expire_all()

    with pytest.raises(OutputPermissionDenied):
        world.svc.claim(world.author, req.id)


def test_one_checker_alone_cannot_approve_or_release_when_the_policy_says_two(world: World) -> None:
    req = world.submitted()
    world.svc.claim(world.olive, req.id)
    with pytest.raises(OutputError, match="already holds a review"):
        world.svc.claim(world.olive, req.id)  # no second place for the same checker
    for f in world.refresh(req).current_files:
        world.svc.vote(world.olive, req.id, f.id, "approve", "")
    world.svc.submit_review(world.olive, req.id)

    with pytest.raises((OutputError, OutputPermissionDenied)):
        world.svc.consolidate(world.olive, req.id, "approve")
    with pytest.raises((OutputError, OutputPermissionDenied)):
        world.svc.release(world.olive, req.id)
    assert world.refresh(req).state not in ("approved", "released")
