"""The outbox: messages are written once per dedupe key, kept without a mail server, sent by SMTP with one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from tests.statements import count_statements
from tre.core import notifications
from tre.core.notifications import OutboxMessage, notify, send_pending


def _write(session: Any, key: str | None = None) -> Any:
    message = notify(
        session,
        recipient_id="u1",
        recipient_email="a@nhs.example",
        subject="Hello",
        body="Body",
        topic="test",
        dedupe_key=key,
    )
    session.commit()
    return message


def test_same_dedupe_key_writes_one_message(sqlite_app: Any) -> None:
    session = sqlite_app.extensions["tre.db"].session

    first, second = _write(session, "k1"), _write(session, "k1")

    assert first is not None and second is None
    assert len(session.scalars(select(OutboxMessage)).all()) == 1


def test_without_a_mail_server_messages_are_kept_in_the_outbox(sqlite_app: Any) -> None:
    session = sqlite_app.extensions["tre.db"].session
    _write(session)

    sent = send_pending(session, SimpleNamespace(smtp_host=""))

    assert sent == 0 and session.scalars(select(OutboxMessage.state)).one() == "kept"


def test_with_a_mail_server_pending_messages_are_sent_once(sqlite_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    delivered: list[Any] = []

    class FakeSMTP:
        def __init__(self, host: str, port: int, timeout: int) -> None:
            assert (host, port) == ("mail.nhs.example", 2525)

        def __enter__(self) -> FakeSMTP:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def send_message(self, message: Any) -> None:
            delivered.append(message)

    monkeypatch.setattr(notifications.smtplib, "SMTP", FakeSMTP)
    session = sqlite_app.extensions["tre.db"].session
    _write(session)
    settings = SimpleNamespace(smtp_host="mail.nhs.example", smtp_port=2525, mail_from="tre@nhs.example")

    assert send_pending(session, settings) == 1
    assert send_pending(session, settings) == 0
    assert delivered[0]["To"] == "a@nhs.example" and delivered[0]["From"] == "tre@nhs.example"
    assert session.scalars(select(OutboxMessage.state)).one() == "sent"


def _people(app: Any, count: int, prefix: str) -> list[str]:
    from tests.disclosure.factories import person

    return [person(app, f"{prefix}{n}", ["researcher"]).id for n in range(count)]


def test_notify_users_writes_once_to_each_active_person_and_skips_keys_already_used(sqlite_app: Any) -> None:
    from tre.core.identity import User

    session = sqlite_app.extensions["tre.db"].session
    with sqlite_app.app_context():
        ada, bea, cy = _people(sqlite_app, 3, "pat")
        session.get(User, cy).is_active = False
        notify(session, recipient_id=bea, recipient_email="b@nhs.example", subject="S", body="B", topic="t",
               dedupe_key=f"k:{bea}")
        session.commit()

        written = notifications.notify_users(session, [ada, bea, ada, cy, "no-such-id"], subject="S", body="B",
                                             topic="t", dedupe_key="k")
        session.commit()

        assert [m.recipient_id for m in written] == [ada]
        assert written[0].recipient_email == "pat0@nhs.example" and written[0].dedupe_key == f"k:{ada}"
        rows = session.execute(select(OutboxMessage.recipient_id, OutboxMessage.dedupe_key)).all()
        assert sorted(rows) == sorted([(bea, f"k:{bea}"), (ada, f"k:{ada}")])


def test_notifying_many_people_takes_no_more_statements_than_notifying_two(app: Any) -> None:
    session = app.extensions["tre.db"].session
    with app.app_context():
        few, many = _people(app, 2, "few"), _people(app, 12, "many")

        def write(ids: list[str], key: str) -> Any:
            return lambda: (notifications.notify_users(session, ids, subject="S", body="B", topic="t",
                                                       dedupe_key=key), session.commit())

        statements = (count_statements(app, write(few, "a"))[0], count_statements(app, write(many, "b"))[0])

        assert statements[0] == statements[1]
        assert len(session.scalars(select(OutboxMessage)).all()) == 14


def test_several_notices_go_out_in_two_queries_and_a_shared_key_is_used_once(app: Any) -> None:
    from tests.tre.helpers import create_user
    from tre.core.db import transaction
    from tre.core.notifications import Notice, notify_each

    ann, _ = create_user(app, "ann.checker@nhs.example", ["researcher"])
    bob, _ = create_user(app, "bob.author@nhs.example", ["researcher"])
    db = app.extensions["tre.db"]

    def send() -> list[Any]:
        with transaction(db.session) as s:
            return notify_each(s, [
                Notice([ann.id, bob.id], "Ready", "Ready for review", "output.ready", "output.ready:r1:1"),
                Notice([bob.id], "Checked", "Your request was checked", "output.checked", "output.checked:r1:1"),
                Notice([ann.id], "Ready again", "Ready for review", "output.ready", "output.ready:r1:1"),
            ])

    statements, sent = count_statements(app, send)
    again = send()

    with db.session_factory() as s:
        stored = sorted((m.recipient_id == ann.id, m.topic, m.subject) for m in s.query(OutboxMessage))
    assert len(sent) == 3 and again == []
    assert stored == [
        (False, "output.checked", "Checked"), (False, "output.ready", "Ready"), (True, "output.ready", "Ready")
    ]
    assert statements <= 4  # (SQLite's BEGIN,) the accounts, the keys, and one insert of every message


def test_messages_with_new_keys_are_inserted_at_once_with_the_values_the_unit_of_work_gave(app: Any) -> None:
    session = app.extensions["tre.db"].session
    with app.app_context():
        ada, bea = _people(app, 2, "new")
        with session.no_autoflush:  # nothing left for a flush: the rows are in the table already
            written = notifications.notify_users(session, [ada, bea], subject="S", body="B", topic="t",
                                                 dedupe_key="fresh:r1:1", new_keys=True,
                                                 accounts={ada: "ada@nhs.example", bea: "bea@nhs.example"})
            rows = session.execute(select(OutboxMessage.id, OutboxMessage.recipient_id, OutboxMessage.dedupe_key,
                                          OutboxMessage.state, OutboxMessage.attempts, OutboxMessage.created_at,
                                          OutboxMessage.sent_at)).all()
        assert not session.new  # no object of them waits in the session
        session.commit()

    assert sorted((r.recipient_id, r.dedupe_key, r.state, r.attempts, r.sent_at) for r in rows) == sorted([
        (ada, f"fresh:r1:1:{ada}", "pending", 0, None), (bea, f"fresh:r1:1:{bea}", "pending", 0, None)
    ])
    assert all(r.created_at is not None for r in rows)
    ids = {r.recipient_id: r.id for r in rows}
    assert [(m.id, m.recipient_email) for m in written] == [(ids[ada], "ada@nhs.example"),
                                                            (ids[bea], "bea@nhs.example")]
