"""Identity services: accounts, roles, changing one's password, recovery codes, and their refusals,
on both databases."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import pyotp
import pytest
from sqlalchemy import select

from tests.tre.helpers import PASSWORD, create_user, identity, next_code
from tre.core.audit import AuditEvent
from tre.core.db import transaction
from tre.core.identity import (
    MAX_FAILED_LOGINS,
    AuthenticationFailed,
    IdentityError,
    PermissionDenied,
    RecoveryCode,
    User,
    UserRole,
)


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
    # auditor and output_checker wait for a second administrator (tre/core/roles.py).
    assert roles in ([], ["researcher"])


# --- changing one's own password --------------------------------------------------------------------


def test_changing_ones_password_needs_the_current_one_and_a_code_and_ends_every_session(app: Any) -> None:
    user, secret = create_user(app, "rita@nhs.example", ["researcher"])
    assert secret
    epoch = user.session_epoch
    new = "marmalade otter violin cascade"

    changed = identity(app).change_password(user.id, PASSWORD, next_code(secret), new)

    assert changed.session_epoch == epoch + 1
    assert identity(app).authenticate("rita@nhs.example", new).id == user.id
    with pytest.raises(AuthenticationFailed):
        identity(app).authenticate("rita@nhs.example", PASSWORD)
    db = app.extensions["tre.db"]
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "auth.password_change"))
    assert event is not None and event.outcome == "success" and event.actor_id == user.id
    recorded = json.dumps(event.detail)
    assert new not in recorded and PASSWORD not in recorded


@pytest.mark.parametrize("wrong", ["password", "code"])
def test_a_wrong_current_password_or_code_changes_nothing_and_counts_towards_lockout(app: Any, wrong: str) -> None:
    user, secret = create_user(app, "rita@nhs.example", ["researcher"])
    assert secret
    current = "not the password at all" if wrong == "password" else PASSWORD
    code = "000000" if wrong == "code" else next_code(secret)

    for _ in range(MAX_FAILED_LOGINS):
        with pytest.raises(AuthenticationFailed, match="current password and a correct security code"):
            identity(app).change_password(user.id, current, code, "marmalade otter violin cascade")

    with pytest.raises(AuthenticationFailed, match="locked"):
        identity(app).change_password(user.id, PASSWORD, next_code(secret), "marmalade otter violin cascade")
    db = app.extensions["tre.db"]
    db.session.expire_all()
    stored = db.session.get(User, user.id)
    assert stored is not None and stored.session_epoch == user.session_epoch
    failures = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "auth.password_change", AuditEvent.outcome == "failure")
    ).all()
    assert len(failures) == MAX_FAILED_LOGINS
    assert all("marmalade" not in json.dumps(e.detail) for e in failures)


@pytest.mark.parametrize(
    ("new", "message"),
    [
        (PASSWORD, "not the one you have now"),
        ("short", "at least 12"),
        ("qwerty123456", "harder to guess"),
        ("Rita-quartz-lamp-77", "must not contain your name"),
    ],
)
def test_a_refused_new_password_keeps_the_old_one_and_the_sessions(app: Any, new: str, message: str) -> None:
    user, secret = create_user(app, "rita@nhs.example", ["researcher"])
    assert secret

    with pytest.raises(IdentityError, match=message):
        identity(app).change_password(user.id, PASSWORD, next_code(secret), new)

    assert identity(app).authenticate("rita@nhs.example", PASSWORD).session_epoch == user.session_epoch
    # The code was not spent by the refused change, and no failure was counted.
    assert identity(app).change_password(user.id, PASSWORD, next_code(secret), "marmalade otter violin cascade")


# --- recovery codes ---------------------------------------------------------------------------------


def test_recovery_codes_are_stored_with_a_salted_password_hash_and_work_once(app: Any) -> None:
    user, _ = create_user(app, "rita@nhs.example", ["researcher"], mfa=False)
    ident = identity(app)
    secret = ident.start_mfa_enrolment(user)
    codes = ident.finish_mfa_enrolment(user.id, secret, pyotp.TOTP(secret).now())

    db = app.extensions["tre.db"]
    stored = [r.code_hash for r in db.session.scalars(select(RecoveryCode).where(RecoveryCode.user_id == user.id))]
    assert len(stored) == len(codes) == 10
    assert all(h.startswith("$argon2id$") for h in stored)
    assert len(set(stored)) == len(stored)
    assert not any(hashlib.sha256(c.encode()).hexdigest() in stored for c in codes)
    assert ident.verify_second_factor(user.id, codes[3].upper()).id == user.id
    with pytest.raises(AuthenticationFailed):
        ident.verify_second_factor(user.id, codes[3])


def test_recovery_codes_stored_as_sha256_before_the_change_still_work_once(app: Any) -> None:
    user, _ = create_user(app, "rita@nhs.example", ["researcher"])
    legacy = "a1b2c3-d4e5f6"
    db = app.extensions["tre.db"]
    with transaction(db.session) as s:
        s.add(RecoveryCode(user_id=user.id, code_hash=hashlib.sha256(legacy.encode()).hexdigest()))

    assert identity(app).verify_second_factor(user.id, legacy).id == user.id
    with pytest.raises(AuthenticationFailed):
        identity(app).verify_second_factor(user.id, legacy)


# --- lockout and enumeration ------------------------------------------------------------------------


def test_wrong_codes_between_right_passwords_lock_the_account(app: Any) -> None:
    """The red team's bypass: password, 4 wrong codes, password again... must end in a lock."""
    user, secret = create_user(app, "rita@nhs.example", ["researcher"])
    assert secret
    ident = identity(app)
    ident.authenticate("rita@nhs.example", PASSWORD)
    for _ in range(MAX_FAILED_LOGINS - 1):
        with pytest.raises(AuthenticationFailed, match="not correct"):
            ident.verify_second_factor(user.id, "000000")

    ident.authenticate("rita@nhs.example", PASSWORD)  # the right password does not clear the count
    with pytest.raises(AuthenticationFailed, match="not correct"):
        ident.verify_second_factor(user.id, "000000")

    with pytest.raises(AuthenticationFailed):
        ident.authenticate("rita@nhs.example", PASSWORD)
    with pytest.raises(AuthenticationFailed, match="locked"):
        ident.verify_second_factor(user.id, next_code(secret))
    db = app.extensions["tre.db"]
    db.session.expire_all()
    assert db.session.get(User, user.id).locked_until is not None  # type: ignore[union-attr]


def test_only_a_completed_second_factor_clears_the_failure_count(app: Any) -> None:
    user, secret = create_user(app, "rita@nhs.example", ["researcher"])
    assert secret
    ident = identity(app)
    with pytest.raises(AuthenticationFailed):
        ident.authenticate("rita@nhs.example", "not the password at all")

    assert ident.authenticate("rita@nhs.example", PASSWORD).failed_login_count == 1
    assert ident.verify_second_factor(user.id, next_code(secret)).failed_login_count == 0


def test_a_locked_account_answers_exactly_as_an_unknown_one(app: Any) -> None:
    create_user(app, "rita@nhs.example", ["researcher"])
    ident = identity(app)
    for _ in range(MAX_FAILED_LOGINS):
        with pytest.raises(AuthenticationFailed):
            ident.authenticate("rita@nhs.example", "not the password at all")

    answers = []
    for email, password in (("rita@nhs.example", PASSWORD), ("nobody@nhs.example", PASSWORD), ("not-an-email", "x")):
        with pytest.raises(AuthenticationFailed) as refused:
            ident.authenticate(email, password)
        answers.append((type(refused.value), str(refused.value)))

    assert len(set(answers)) == 1
    db = app.extensions["tre.db"]
    events = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "auth.login"))
    outcomes = [e.detail["reason"] for e in events]
    assert outcomes[-3:] == ["account locked", "unknown account or no password", "unknown account or no password"]


# --- look-alike accounts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("email", "name", "message"),
    [
        ("\u0430dam@nhs.example", "Adam Again", "look-alike letter"),  # Cyrillic a
        ("adam@nhs.\u0435xample", "Adam Again", "look-alike letter"),  # Cyrillic e in the domain
        ("adam\u202e@nhs.example", "Adam Again", "right-to-left"),  # right-to-left override
        ("ad\u200bam@nhs.example", "Adam Again", "invisible"),  # zero-width space
        ("eve@nhs.example", "\u0410dam Smith", "look-alike letters"),  # Cyrillic A in a Latin name
        ("eve@nhs.example", "Adam\u202e htimS", "right-to-left"),
        ("eve@nhs.example", "Adam\x00Smith", "invisible"),
    ],
)
def test_look_alike_accounts_are_refused_with_a_clear_error(app: Any, email: str, name: str, message: str) -> None:
    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])

    with pytest.raises(IdentityError, match=message):
        identity(app).create_user(admin, email, name, ["researcher"])

    db = app.extensions["tre.db"]
    assert [u.email for u in db.session.scalars(select(User))] == ["adam@nhs.example"]


def test_full_width_letters_are_the_same_address_not_a_second_account(app: Any) -> None:
    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])

    with pytest.raises(IdentityError, match="already exists"):
        identity(app).create_user(admin, "\uff41\uff44\uff41\uff4d@nhs.example", "Adam Again", ["researcher"])


def test_names_in_one_other_alphabet_are_welcome(app: Any) -> None:
    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])

    user = identity(app).create_user(admin, "zoya@nhs.example", "\u0417\u043e\u044f  Nguy\u1ec5n", ["researcher"])

    assert user.display_name == "\u0417\u043e\u044f Nguy\u1ec5n"


def test_a_role_change_that_keeps_the_granted_roles_leaves_the_account_untouched(app: Any) -> None:
    """ADR 0051: asking again for the roles an account holds (the dual-control one only requested)
    does not replace its role collection, so no flush of the transaction has the account to examine;
    a real change still replaces it, and what was asked, granted and audited is as before."""
    from sqlalchemy import event

    from tre.core.roles import request_roles

    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])
    target, _ = create_user(app, "rita@nhs.example", ["researcher"])
    p = app.extensions["tre.platform"]
    flushed_with_the_account: list[bool] = []
    with p.db.session_factory() as s, s.begin():
        event.listen(s, "before_flush", lambda session, *_: flushed_with_the_account.append(user in session.dirty))
        actor, user = s.get(User, admin.id), s.get(User, target.id)
        unchanged = request_roles(s, p.audit, actor, user, ["researcher", "auditor"], None)
        s.flush()
        untouched = not any(flushed_with_the_account)
        changed = request_roles(s, p.audit, actor, user, ["auditor"], None)  # the researcher's role goes

    assert (unchanged.granted, unchanged.asked, unchanged.awaiting) == (["researcher"], ["auditor"], ["auditor"])
    assert untouched
    assert (changed.granted, changed.asked, changed.awaiting) == ([], ["auditor"], ["auditor"])
    with p.db.session_factory() as s:
        assert s.scalars(select(UserRole.role).where(UserRole.user_id == target.id)).all() == []


def test_a_role_change_builds_no_statement_of_its_own(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """ADR 0054: the pending grants' statement is built once per process, not per role change; it still
    finds the roles already asked for, so asking twice makes one grant."""
    import tre.core.roles

    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])
    target, _ = create_user(app, "rita@nhs.example", ["researcher"])

    def no_new_statements(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("a statement built for one role change")

    monkeypatch.setattr(tre.core.roles, "select", no_new_statements)
    first = identity(app).change_roles(admin, target.id, ["researcher", "auditor"])
    again = identity(app).change_roles(admin, target.id, ["researcher", "auditor"])

    assert first.awaiting_second_administrator == again.awaiting_second_administrator == ["auditor"]
    with app.extensions["tre.db"].session_factory() as s:
        from tre.core.roles import RoleGrant

        assert s.scalars(select(RoleGrant.role).where(RoleGrant.user_id == target.id)).all() == ["auditor"]
