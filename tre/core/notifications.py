"""Email notifications through an outbox table.

A service adds a message in its own transaction (so a rolled-back change sends nothing); a job
sends pending messages by SMTP when ``TRE_SMTP_HOST`` is set. In the embedded setup there is no
mail server: messages stay in the outbox and people read them on the messages page. A
``dedupe_key`` makes reminders idempotent (the same reminder is written once). ``notify_users``
writes one message to many people in a constant number of statements, however many they are.
"""

from __future__ import annotations

import datetime as dt
import logging
import smtplib
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from typing import Any, NamedTuple

from sqlalchemy import CheckConstraint, Index, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from tre.core.db import Base, new_id, utcnow
from tre.core.identity import User

log = logging.getLogger(__name__)

PENDING, SENT, FAILED, KEPT = "pending", "sent", "failed", "kept"
OUTBOX_STATES = (PENDING, SENT, FAILED, KEPT)


class OutboxMessage(Base):
    __tablename__ = "outbox_messages"
    __table_args__ = (
        CheckConstraint(f"state IN {OUTBOX_STATES!r}", name="state_known"),
        CheckConstraint("(state = 'sent') = (sent_at IS NOT NULL)", name="sent_when_sent"),
        Index("ix_outbox_messages_recipient_time", "recipient_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    recipient_id: Mapped[str] = mapped_column(String(32))
    recipient_email: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    topic: Mapped[str] = mapped_column(String(50))
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    state: Mapped[str] = mapped_column(String(20), default=PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None]


def notify(
    session: Session,
    *,
    recipient_id: str,
    recipient_email: str,
    subject: str,
    body: str,
    topic: str,
    dedupe_key: str | None = None,
) -> OutboxMessage | None:
    """Add a message in the caller's transaction; returns None when ``dedupe_key`` was already used."""
    if dedupe_key is not None:
        if session.scalar(select(OutboxMessage.id).where(OutboxMessage.dedupe_key == dedupe_key)) is not None:
            return None
    message = OutboxMessage(
        recipient_id=recipient_id,
        recipient_email=recipient_email,
        subject=subject[:200],
        body=body,
        topic=topic[:50],
        dedupe_key=dedupe_key,
    )
    session.add(message)
    return message


class Notice(NamedTuple):
    """One message for each of ``user_ids`` (see ``notify_users``)."""

    user_ids: Sequence[str]
    subject: str
    body: str
    topic: str
    dedupe_key: str | None = None


def notify_users(
    session: Session,
    user_ids: Sequence[str],
    *,
    subject: str,
    body: str,
    topic: str,
    dedupe_key: str | None = None,
    new_keys: bool = False,
    accounts: Mapping[str, str] | None = None,
) -> list[OutboxMessage]:
    """Add the same message for each active account among ``user_ids`` (in their order, each once),
    in the caller's transaction; unknown and inactive accounts are skipped.

    With ``dedupe_key``, each person's key is ``{dedupe_key}:{user id}`` and a key already used is
    skipped. One query for the accounts and one for the keys, and the messages go in together at
    the next flush: on a database server each statement is a round trip, and a loop of them per
    person (every output checker, on each submission) cost seconds under load.

    ``new_keys``: the caller knows no message can hold these keys yet (the key names a row made in
    its own transaction, e.g. a request submitted in it), so they are not looked up; the keys' unique
    constraint still fails the transaction if that was a mistake. The messages then go in at once, by
    one Core insert, and stay out of the session (ADR 0076).

    ``accounts``: the caller read, in this transaction, the email of each active account among
    ``user_ids`` (id to email; an id missing from it is skipped as inactive), in the statement that
    chose them, so they are not read again.
    """
    return notify_each(
        session, [Notice(user_ids, subject, body, topic, dedupe_key)], new_keys=new_keys, accounts=accounts
    )


def notify_each(
    session: Session,
    notices: Sequence[Notice],
    *,
    new_keys: bool = False,
    accounts: Mapping[str, str] | None = None,
) -> list[OutboxMessage]:
    """``notify_users`` for several notices at once, still in two queries whatever their number (the
    check job tells the checkers and the author in one go). A key that two notices would both use is
    used once, by the first, as if they had been sent one after the other. ``new_keys`` as in
    ``notify_users``: one query, for the accounts; with ``accounts`` (as in ``notify_users``) as well,
    none."""
    wanted = [(notice, list(dict.fromkeys(notice.user_ids))) for notice in notices]
    everyone = list(dict.fromkeys(uid for _, ids in wanted for uid in ids))
    if not everyone:
        return []
    if accounts is not None:
        emails: Mapping[str, str] = accounts
    else:
        active = select(User.id, User.email).where(User.id.in_(everyone), User.is_active.is_(True))
        emails = {uid: email for uid, email in session.execute(active)}
    keyed = [
        {uid: f"{notice.dedupe_key}:{uid}" for uid in ids} if notice.dedupe_key is not None else {}
        for notice, ids in wanted
    ]
    used: set[str | None] = set()
    all_keys = [key for keys in keyed for key in keys.values()]
    if all_keys and not new_keys:
        taken = select(OutboxMessage.dedupe_key).where(OutboxMessage.dedupe_key.in_(list(dict.fromkeys(all_keys))))
        used.update(session.scalars(taken))
    messages = []
    for (notice, ids), keys in zip(wanted, keyed, strict=True):
        for uid in ids:
            key = keys.get(uid)
            if uid not in emails or (key is not None and key in used):
                continue
            messages.append(OutboxMessage(
                recipient_id=uid,
                recipient_email=emails[uid],
                subject=notice.subject[:200],
                body=notice.body,
                topic=notice.topic[:50],
                dedupe_key=key,
            ))
            if key is not None:
                used.add(key)
    if new_keys and messages:
        # Keys no row can hold yet: the messages go in now by one Core INSERT of every row, not at the
        # next flush by the unit of work (ADR 0076), each with the values its flush would have given
        # it. They stay out of the session, as nothing reads them back as objects in the transaction.
        for message in messages:
            message.id, message.state, message.attempts, message.created_at = new_id(), PENDING, 0, utcnow()
        session.execute(_INSERT_MESSAGES, [{c: getattr(m, c) for c in _NEW_MESSAGE_COLUMNS} for m in messages])
        return messages
    session.add_all(messages)
    return messages


# The columns a new message is inserted with; ``sent_at`` is left out, so it is SQL NULL as the unit of
# work leaves it.
_NEW_MESSAGE_COLUMNS = ("id", "recipient_id", "recipient_email", "subject", "body", "topic", "dedupe_key",
                        "state", "attempts", "created_at")
_INSERT_MESSAGES = OutboxMessage.__table__.insert()  # a Core insert: no unit of work


def send_pending(session: Session, settings: Any, *, limit: int = 100) -> int:
    """Send pending messages by SMTP; without a mail server configured, keep them in the outbox."""
    host = getattr(settings, "smtp_host", "")
    pending = session.scalars(
        select(OutboxMessage)
        .where(OutboxMessage.state == PENDING)
        .order_by(OutboxMessage.created_at)
        .limit(limit)
    ).all()
    if not host:
        for message in pending:
            message.state = KEPT
        session.commit()
        return 0
    sent = 0
    with smtplib.SMTP(host, int(getattr(settings, "smtp_port", 25)), timeout=30) as smtp:
        if getattr(settings, "smtp_starttls", False):
            smtp.starttls()
        for message in pending:
            email = EmailMessage()
            email["From"] = getattr(settings, "mail_from", "tre@localhost")
            email["To"] = message.recipient_email
            email["Subject"] = message.subject
            email.set_content(message.body)
            message.attempts += 1
            try:
                smtp.send_message(email)
            except smtplib.SMTPException:
                log.warning("could not send outbox message %s", message.id)
                if message.attempts >= 5:
                    message.state = FAILED
                continue
            message.state = SENT
            message.sent_at = utcnow()
            sent += 1
            session.commit()
    session.commit()
    return sent
