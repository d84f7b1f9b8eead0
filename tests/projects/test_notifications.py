"""The outbox: messages are written once per dedupe key, kept without a mail server, sent by SMTP with one."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

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
