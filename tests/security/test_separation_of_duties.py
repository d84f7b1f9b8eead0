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


# --- roles that touch data need a second administrator (ADR 0010) -------------------------------------

DATA_ROLES = ["data_custodian", "dac_chair", "output_checker", "auditor"]


def _roles(app: Any, user_id: str) -> list[str]:
    from sqlalchemy import select

    s = app.extensions["tre.db"].session
    s.expire_all()
    return sorted(s.scalars(select(UserRole.role).where(UserRole.user_id == user_id)))


@pytest.mark.parametrize("role", [*DATA_ROLES, "linkage_officer"])
def test_administrator_cannot_grant_themselves_a_role_that_touches_data(app: Any, role: str) -> None:
    from sqlalchemy import select

    from tests.tre.helpers import create_user, identity
    from tre.core.audit import AuditEvent
    from tre.core.identity import PermissionDenied
    from tre.core.roles import RoleGrant

    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])
    ident = identity(app)

    ident.set_roles(admin, admin.id, ["administrator", role])

    assert _roles(app, admin.id) == ["administrator"]
    [grant] = ident.pending_role_grants(admin, admin.id)
    assert grant.role == role
    with pytest.raises(PermissionDenied, match="second administrator"):
        ident.decide_role_grant(admin, grant.id, approve=True)
    assert _roles(app, admin.id) == ["administrator"]
    s = app.extensions["tre.db"].session
    events = s.scalars(select(AuditEvent).where(AuditEvent.action.like("user.role_grant%"))).all()
    assert [(e.action, e.outcome) for e in events] == [
        ("user.role_grant_request", "success"), ("user.role_grant_approve", "denied"),
    ]
    assert s.get(RoleGrant, grant.id).state == "pending"  # type: ignore[union-attr]


def test_a_second_administrator_approves_a_requested_role(app: Any) -> None:
    from tests.tre.helpers import create_user, identity

    adam, _ = create_user(app, "adam@nhs.example", ["administrator"])
    ada, _ = create_user(app, "ada@nhs.example", ["administrator"])
    rita, _ = create_user(app, "rita@nhs.example", ["researcher"])
    ident = identity(app)
    ident.set_roles(adam, rita.id, ["researcher", "output_checker"])
    assert _roles(app, rita.id) == ["researcher"]

    [grant] = ident.pending_role_grants(ada)
    ident.decide_role_grant(ada, grant.id, approve=True)

    assert _roles(app, rita.id) == ["output_checker", "researcher"]
    assert ident.pending_role_grants(ada) == []


def test_two_administrators_cannot_approve_each_others_self_grants_into_one_person(app: Any) -> None:
    """The person receiving a role never approves it, even when someone else asked for it."""
    from tests.tre.helpers import create_user, identity
    from tre.core.identity import PermissionDenied

    adam, _ = create_user(app, "adam@nhs.example", ["administrator"])
    ada, _ = create_user(app, "ada@nhs.example", ["administrator"])
    ident = identity(app)
    ident.set_roles(ada, adam.id, ["administrator", "auditor"])
    [grant] = ident.pending_role_grants(adam)

    with pytest.raises(PermissionDenied, match="yourself"):
        ident.decide_role_grant(adam, grant.id, approve=True)
    assert _roles(app, adam.id) == ["administrator"]


def test_an_administrator_creating_an_account_with_a_data_role_only_requests_it(app: Any) -> None:
    from tests.tre.helpers import create_user, identity

    adam, _ = create_user(app, "adam@nhs.example", ["administrator"])
    ident = identity(app)

    user = ident.create_user(adam, "cara@nhs.example", "Cara", ["researcher", "data_custodian"])

    assert _roles(app, user.id) == ["researcher"]
    assert [g.role for g in ident.pending_role_grants(adam, user.id)] == ["data_custodian"]


def test_self_granted_role_over_the_api_reaches_no_data(app: Any) -> None:
    """The red team's attack: an administrator gives themselves the custodian, chair, checker and
    auditor roles (200) and then reads the opt-out lists and the output queue."""
    import datetime as dt

    from tests.tre.helpers import create_user

    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])
    bearer = app.extensions["tre.platform"].tokens.issue(admin.id, "tre-api", "api", dt.timedelta(minutes=5))
    headers = {"Authorization": f"Bearer {bearer}"}
    client = app.test_client()

    granted = client.put(f"/api/v1/users/{admin.id}/roles", headers=headers,
                         json={"roles": ["administrator", *DATA_ROLES]})

    assert granted.status_code == 200 and granted.json["roles"] == ["administrator"]
    assert sorted(granted.json["awaiting_second_administrator"]) == sorted(DATA_ROLES)
    assert client.get("/api/v1/optout-lists", headers=headers).status_code == 403
    assert client.get("/api/v1/outputs/queue", headers=headers).status_code == 403
