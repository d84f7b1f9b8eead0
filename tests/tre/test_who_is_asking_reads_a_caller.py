"""Who is asking is read as columns into a ``Caller`` (ADR 0049), not as the ORM ``User`` with its
roles. The old read is kept here as the reference: for every kind of account, each credential's read
gives the same answer as the account loaded as an object. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from flask import g

from tests.tre.helpers import create_user, identity
from tre import authn
from tre.core.db import transaction, utcnow
from tre.core.identity import Caller, User
from tre.core.permissions import Permission


def _reference(app: Any, user_id: str) -> Caller:
    """The old read: the account as an ORM object with its roles, in a session of its own."""
    with app.app_context():
        user = app.extensions["tre.db"].session.get(User, user_id)
        return Caller(
            id=user.id, email=user.email, display_name=user.display_name, is_active=user.is_active,
            mfa_enrolled=user.mfa_enrolled, session_epoch=user.session_epoch,
            token_generation=user.token_generation, locked_until=user.locked_until, role_names=user.role_names,
        )


def _accounts(app: Any) -> list[str]:
    admin, _ = create_user(app, "ada.admin@nhs.example", ["administrator"])
    many, _ = create_user(app, "mo.many@nhs.example", ["researcher", "output_checker", "dac_member", "auditor"])
    none, _ = create_user(app, "nia.none@nhs.example", [])
    not_enrolled, _ = create_user(app, "ned.new@nhs.example", ["researcher"], mfa=False)
    off, _ = create_user(app, "olly.off@nhs.example", ["researcher"])
    identity(app).set_active(admin, off.id, False)
    locked, _ = create_user(app, "lee.locked@nhs.example", ["data_custodian"])
    with app.app_context(), transaction(app.extensions["tre.db"].session) as s:
        person = s.get(User, locked.id)
        person.locked_until = utcnow() + dt.timedelta(minutes=5)
        person.session_epoch = 3
    return [admin.id, many.id, none.id, not_enrolled.id, off.id, locked.id]


def test_a_session_reads_the_same_person_as_the_object_read(app: Any) -> None:
    for user_id in _accounts(app):
        expected = _reference(app, user_id)
        with app.test_request_context("/"):
            found = authn._person(user_id)
            app.extensions["tre.db"].session.remove()
        assert found == expected
    with app.test_request_context("/"):
        assert authn._person("no-such-account") is None
        app.extensions["tre.db"].session.remove()


def test_a_personal_token_reads_the_same_person_as_the_object_read(app: Any) -> None:
    ids = _accounts(app)
    for user_id in (ids[0], ids[1], ids[5]):  # tokens need an active account with MFA
        with app.app_context():
            user = app.extensions["tre.db"].session.get(User, user_id)
        _, token = identity(app).create_personal_token(user, "script", 30)
        expected = _reference(app, user_id)
        with app.test_request_context("/api/v1/me", headers={"Authorization": f"Bearer {token}"}):
            authn.load_current_user()
            assert g.user == expected and g.token_purpose == authn.PERSONAL_PURPOSE
            app.extensions["tre.db"].session.remove()


def test_a_signed_token_reads_the_same_person_as_the_object_read(app: Any) -> None:
    tokens = app.extensions["tre.platform"].tokens
    for user_id in _accounts(app)[:3]:
        expected = _reference(app, user_id)
        token = tokens.issue(user_id, authn.API_AUDIENCE, "api", dt.timedelta(minutes=5))
        with app.test_request_context("/api/v1/me", headers={"Authorization": f"Bearer {token}"}):
            authn.load_current_user()
            assert g.user == expected
            app.extensions["tre.db"].session.remove()


@pytest.mark.parametrize("roles", [["administrator"], ["researcher", "output_checker"], []])
def test_a_callers_permissions_are_its_accounts(app: Any, roles: list[str]) -> None:
    person, _ = create_user(app, "pat@nhs.example", roles)
    expected = _reference(app, person.id)
    with app.app_context():
        user = app.extensions["tre.db"].session.get(User, person.id)
        assert [expected.has(p) for p in Permission] == [user.has(p) for p in Permission]


def test_a_request_without_a_credential_begins_and_commits_no_transaction(app: Any) -> None:
    """Nothing was read, so who-is-asking has no transaction to end (SQLite committed an empty one)."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    commits: list[Session] = []

    def count(session: Session) -> None:
        commits.append(session)

    event.listen(Session, "after_commit", count)
    try:
        client = app.test_client()
        for path in ("/healthz", "/about", "/api/v1/version"):
            assert client.get(path).status_code == 200
    finally:
        event.remove(Session, "after_commit", count)
    assert commits == []
