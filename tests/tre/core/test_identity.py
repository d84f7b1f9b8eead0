"""Identity services: accounts, roles and their refusals, on both databases."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import select

from tests.tre.helpers import create_user, identity
from tre.core.audit import AuditEvent
from tre.core.identity import IdentityError, PermissionDenied, User, UserRole


def test_non_administrator_cannot_create_accounts_and_the_refusal_is_audited(app: Any) -> None:
    researcher, _ = create_user(app, "rita@nhs.example", ["researcher"])

    with pytest.raises(PermissionDenied):
        identity(app).create_user(researcher, "x@nhs.example", "X", ["auditor"])

    db = app.extensions["tre.db"]
    assert db.session.scalar(select(User).where(User.email == "x@nhs.example")) is None
    denied = db.session.scalars(select(AuditEvent).where(AuditEvent.outcome == "denied")).all()
    assert [e.action for e in denied] == ["user.create"]


@pytest.mark.parametrize(
    ("email", "name", "roles", "message"),
    [
        ("not-an-email", "X", ["auditor"], "email address"),
        ("x@nhs.example", "", ["auditor"], "name"),
        ("x@nhs.example", "X", ["emperor"], "Unknown role"),
    ],
)
def test_bad_account_details_get_a_clear_error_and_change_nothing(
    app: Any, email: str, name: str, roles: list[str], message: str
) -> None:
    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])

    with pytest.raises(IdentityError, match=message):
        identity(app).create_user(admin, email, name, roles)

    db = app.extensions["tre.db"]
    assert len(db.session.scalars(select(User)).all()) == 1


def test_email_is_unique_whatever_its_case(app: Any) -> None:
    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])

    with pytest.raises(IdentityError, match="already exists"):
        identity(app).create_user(admin, "ADAM@nhs.example", "Adam Again", ["auditor"])


def test_administrator_cannot_remove_their_own_administrator_role(app: Any) -> None:
    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])

    with pytest.raises(IdentityError, match="own administrator"):
        identity(app).set_roles(admin, admin.id, ["auditor"])


def test_two_administrators_changing_roles_at_once_both_finish_without_error(app: Any) -> None:
    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])
    other, _ = create_user(app, "ada@nhs.example", ["administrator"])
    target, _ = create_user(app, "rita@nhs.example", ["researcher"])
    p = app.extensions["tre.platform"]
    errors: list[BaseException] = []

    def change(actor_id: str, roles: list[str]) -> None:
        from tre.core.identity import Identity

        with p.db.session_factory() as s:
            try:
                actor = s.get(User, actor_id)
                Identity(s, p.keys, p.audit).set_roles(actor, target.id, roles)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=change, args=(a.id, r)) for a, r in
               ((admin, ["auditor"]), (other, ["output_checker", "researcher"]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    with p.db.session_factory() as s:
        roles = sorted(r.role for r in s.scalars(select(UserRole).where(UserRole.user_id == target.id)))
    assert roles in (["auditor"], ["output_checker", "researcher"])
