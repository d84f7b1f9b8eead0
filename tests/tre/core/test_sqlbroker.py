"""The embedded broker's transport: a message published on a SQLite broker wakes a waiting consumer
at once; the message itself still travels (and stays) in the broker's table; and with wake-ups off,
or on a broker that is not a local file, it behaves as kombu's transport does."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from tre.core import sqlbroker, wakeup

# Consumers here poll once an hour: only a wake-up can deliver within a test's lifetime.
HOUR = 3600.0
NEVER = 60.0


class _SignallingListener(wakeup.Listener):
    """A listener that says when its consumer has looked, found nothing and begun to wait."""

    waiting = threading.Event()
    outcomes: list[bool] = []

    def wait(self, timeout: float) -> bool:
        type(self).waiting.set()
        woken = super().wait(timeout)
        type(self).outcomes.append(woken)
        return woken


class _Transport(sqlbroker.Transport):
    Listener = _SignallingListener


def _connection(url: str, *, wakeups: bool = True, transport: Any = _Transport) -> Connection:
    settings = sqlbroker.celery_settings(url, wakeups=wakeups, poll_seconds=HOUR)
    return Connection(
        settings["broker_url"], transport=transport, transport_options=settings["broker_transport_options"]
    )


@pytest.fixture
def broker_url(tmp_path: Path) -> str:
    return f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"


QUEUE = Queue("checks", Exchange("checks", type="direct"), routing_key="checks")


def test_the_wakeup_folder_sits_beside_a_sqlite_broker_file_and_nowhere_else(tmp_path: Path) -> None:
    assert sqlbroker.wakeup_folder(f"sqlite:///{tmp_path / 'broker.sqlite'}") == tmp_path / "broker.sqlite.wake"
    assert sqlbroker.wakeup_folder("sqlite://") is None
    assert sqlbroker.wakeup_folder("sqlite:///:memory:") is None
    assert sqlbroker.wakeup_folder("postgresql+psycopg://tre@db.example/broker") is None
    assert sqlbroker.wakeup_folder("not a url") is None


def test_only_sqla_broker_urls_get_the_embedded_transport() -> None:
    with pytest.raises(ValueError, match="sqla"):
        sqlbroker.celery_settings("redis://127.0.0.1:6379/0", wakeups=True, poll_seconds=1.0)
    settings = sqlbroker.celery_settings("sqla+sqlite:////srv/tre/broker.sqlite", wakeups=True, poll_seconds=0.5)
    assert settings["broker_url"] == "sqlite:////srv/tre/broker.sqlite"
    assert settings["broker_transport"] == sqlbroker.TRANSPORT
    assert settings["broker_transport_options"] == {"polling_interval": 0.5, "wakeups": True}


def test_a_message_published_while_a_consumer_waits_wakes_it_long_before_its_next_poll(broker_url: str) -> None:
    received: list[Any] = []
    failures: list[BaseException] = []
    _SignallingListener.waiting.clear()
    _SignallingListener.outcomes.clear()
    with _connection(broker_url) as consumer_conn, _connection(broker_url) as producer_conn:
        consumer = consumer_conn.Consumer(
            QUEUE, callbacks=[lambda body, message: (received.append(body), message.ack())]
        )
        consumer.consume()

        def consume() -> None:
            try:
                consumer_conn.drain_events(timeout=NEVER)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                failures.append(exc)

        thread = threading.Thread(target=consume)
        thread.start()
        # The consumer has looked at an empty queue and is waiting: its next poll is an hour away.
        assert _SignallingListener.waiting.wait(NEVER)
        producer_conn.Producer().publish({"job": "j1"}, exchange=QUEUE.exchange, routing_key="checks",
                                         declare=[QUEUE])
        thread.join(NEVER + 5)
        consumer.cancel()
    assert failures == []
    assert received == [{"job": "j1"}]
    assert _SignallingListener.outcomes == [True]  # woken by the publish, not by its wait running out


def test_a_poke_with_no_message_behind_it_delivers_nothing(broker_url: str, tmp_path: Path) -> None:
    """A spurious or forged poke costs one empty look; the consumer delivers only what the table holds."""
    received: list[Any] = []
    with _connection(broker_url) as conn:
        consumer = conn.Consumer(QUEUE, callbacks=[lambda body, message: received.append(body)])
        consumer.consume()
        transport = conn.transport
        listener = transport._listening()
        assert listener is not None
        assert wakeup.poke(tmp_path / "broker.sqlite.wake") == 1
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.05)
        consumer.cancel()
    assert received == []


def test_the_message_is_kept_in_the_broker_table_until_a_consumer_takes_it(broker_url: str) -> None:
    """Nothing rides on the poke: published with no consumer listening, the message waits in the table
    and the next consumer to look gets it."""
    with _connection(broker_url) as producer_conn:
        producer_conn.Producer().publish({"job": "j2"}, exchange=QUEUE.exchange, routing_key="checks",
                                         declare=[QUEUE])
    received: list[Any] = []
    with _connection(broker_url) as conn:
        consumer = conn.Consumer(QUEUE, callbacks=[lambda body, message: (received.append(body), message.ack())])
        consumer.consume()
        conn.drain_events(timeout=NEVER)
        consumer.cancel()
    assert received == [{"job": "j2"}]


def test_acknowledging_a_message_wakes_the_consumer_to_look_for_the_next(broker_url: str) -> None:
    """A worker at its prefetch limit looks for more only after an ack: the ack must not wait a poll."""
    with _connection(broker_url) as producer_conn:
        producer_conn.Producer().publish({"job": "j3"}, exchange=QUEUE.exchange, routing_key="checks",
                                         declare=[QUEUE])
    taken: list[Any] = []
    with _connection(broker_url) as conn:
        consumer = conn.Consumer(QUEUE, callbacks=[lambda body, message: taken.append(message)])
        consumer.qos(prefetch_count=1)  # one message in hand is the limit
        consumer.consume()
        conn.drain_events(timeout=NEVER)
        from queue import Empty

        with pytest.raises(Empty):
            conn.default_channel.drain_events()  # the worker's next look: held back by the limit
        listener = conn.transport._listener
        assert listener is not None and listener.wait(0) is False
        taken[0].ack()
        assert listener.wait(NEVER) is True
        consumer.cancel()


def test_an_acknowledgement_below_the_prefetch_limit_does_not_wake_the_consumer(broker_url: str) -> None:
    """Below its limit the consumer is looking already (each publish pokes it): a nudge at every ack
    only cost it a look that found nothing (ADR 0077)."""
    with _connection(broker_url) as producer_conn:
        producer_conn.Producer().publish({"job": "j4"}, exchange=QUEUE.exchange, routing_key="checks",
                                         declare=[QUEUE])
    taken: list[Any] = []
    with _connection(broker_url) as conn:
        consumer = conn.Consumer(QUEUE, callbacks=[lambda body, message: taken.append(message)])
        consumer.qos(prefetch_count=2)
        consumer.consume()
        conn.drain_events(timeout=NEVER)
        listener = conn.transport._listener
        assert listener is not None and listener.wait(0) is False
        taken[0].ack()
        assert listener.wait(0) is False
        consumer.cancel()


def test_after_taking_the_only_visible_message_the_next_look_reads_nothing_and_a_later_one_is_found(
    broker_url: str,
) -> None:
    """The read that found one message in all the queues is still true once it is taken: the next look
    sends no statement; a message published after that read pokes the consumer, whose wait then ends at
    once, and the look after the wait finds it."""
    from queue import Empty

    from sqlalchemy import event

    taken: list[Any] = []
    with _connection(broker_url) as conn, _connection(broker_url) as producer_conn:
        producer = producer_conn.Producer()
        producer.publish({"job": "first"}, exchange=QUEUE.exchange, routing_key="checks", declare=[QUEUE])
        consumer = conn.Consumer(QUEUE, callbacks=[lambda body, message: taken.append(body)])
        consumer.consume()
        conn.drain_events(timeout=NEVER)
        channel = conn.default_channel
        sent: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            sent.append(" ".join(statement.split()).split(" ")[0].upper())

        producer.publish({"job": "second"}, exchange=QUEUE.exchange, routing_key="checks")
        engine = channel.session.get_bind()  # the producer's too (kombu keeps one engine per URL)
        event.listen(engine, "before_cursor_execute", seen)
        try:
            with pytest.raises(Empty):
                channel.drain_events()  # the look straight after: no read
            assert sent == []
            conn.drain_events(timeout=NEVER)  # waits (the poke is already there), then looks
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        consumer.cancel()

    assert taken == [{"job": "first"}, {"job": "second"}]
    assert sent[0] == "SELECT"


def test_with_two_messages_visible_the_look_after_taking_one_reads_again(broker_url: str) -> None:
    from sqlalchemy import event

    taken: list[Any] = []
    with _connection(broker_url) as conn, _connection(broker_url) as producer_conn:
        producer = producer_conn.Producer()
        for job in ("first", "second"):
            producer.publish({"job": job}, exchange=QUEUE.exchange, routing_key="checks", declare=[QUEUE])
        consumer = conn.Consumer(QUEUE, callbacks=[lambda body, message: taken.append(body)])
        consumer.consume()
        conn.drain_events(timeout=NEVER)
        channel = conn.default_channel
        sent: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            sent.append(" ".join(statement.split()).split(" ")[0].upper())

        engine = channel.session.get_bind()
        event.listen(engine, "before_cursor_execute", seen)
        try:
            channel.drain_events()  # no wait in between: the second is found by reading
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        consumer.cancel()

    assert taken == [{"job": "first"}, {"job": "second"}]
    assert sent[0] == "SELECT"


def test_closing_the_connection_removes_the_consumers_socket(broker_url: str, tmp_path: Path) -> None:
    with _connection(broker_url) as conn:
        conn.Consumer(QUEUE).consume()
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.01)
        assert len(list((tmp_path / "broker.sqlite.wake").iterdir())) == 1
    assert list((tmp_path / "broker.sqlite.wake").iterdir()) == []


def test_with_wakeups_off_no_folder_is_made_and_consumers_poll(broker_url: str, tmp_path: Path) -> None:
    with _connection(broker_url, wakeups=False) as conn:
        conn.Producer().publish({"job": "j4"}, exchange=QUEUE.exchange, routing_key="checks", declare=[QUEUE])
        received: list[Any] = []
        consumer = conn.Consumer(QUEUE, callbacks=[lambda body, message: (received.append(body), message.ack())])
        consumer.consume()
        conn.drain_events(timeout=NEVER)
        consumer.cancel()
        assert conn.transport.wakeup_folder is None
    assert received == [{"job": "j4"}]
    assert not (tmp_path / "broker.sqlite.wake").exists()


def test_the_transport_keeps_its_own_options_away_from_the_database_engine(broker_url: str) -> None:
    """kombu hands a SQLAlchemy transport's options to create_engine, which refuses unknown ones."""
    with _connection(broker_url, transport=sqlbroker.TRANSPORT) as conn:
        conn.Producer().publish({"job": "j5"}, exchange=QUEUE.exchange, routing_key="checks", declare=[QUEUE])
        assert isinstance(conn.transport, sqlbroker.Transport)


def _statements_of_one_look(connection: Connection, queue: str) -> tuple[list[str], Any]:
    """The statements a channel sends to look into ``queue`` once, and what the look returned."""
    from queue import Empty

    from sqlalchemy import event

    channel = connection.default_channel
    channel._get_or_create(queue)  # the queue's row exists, as after the first declaration
    sent: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        sent.append(" ".join(statement.split()).split(" ")[0].upper())

    engine = channel.session.get_bind()
    channel._queue_id(queue)  # learnt once per channel
    event.listen(engine, "before_cursor_execute", seen)
    try:
        try:
            got = channel._get(queue)
        except Empty:
            got = None
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    return sent, got


def test_a_look_into_an_empty_queue_is_one_read_and_takes_no_write_lock(broker_url: str) -> None:
    with _connection(broker_url) as conn:
        sent, got = _statements_of_one_look(conn, "checks")

    assert got is None
    assert sent == ["SELECT"]  # kombu's look: the queue's row, BEGIN IMMEDIATE, a locked SELECT, then a commit


def test_a_look_into_a_queue_with_a_message_claims_it_once(broker_url: str) -> None:
    from queue import Empty

    with _connection(broker_url) as consumer_conn, _connection(broker_url) as producer_conn:
        producer_conn.default_channel._put("checks", {"body": "job-1"})
        sent, got = _statements_of_one_look(consumer_conn, "checks")
        with pytest.raises(Empty):
            consumer_conn.default_channel._get("checks")  # claimed: invisible to the next look

    assert got == {"body": "job-1"}
    # Budget (ADR 0048): the plain read that saw a message, then the claim under the broker file's
    # write lock as one UPDATE ... RETURNING. kombu's claim was five: that read, the queue's row, the
    # BEGIN IMMEDIATE, a locked SELECT of the message and the ORM's UPDATE.
    assert sent == ["SELECT", "BEGIN", "UPDATE"]


def test_a_publish_is_one_insert_and_a_claim_leaves_the_row_as_kombu_did(broker_url: str) -> None:
    """The message row keeps kombu's layout and life: inserted visible at version 1 with no timestamp,
    claimed oldest first, and a claimed row made invisible with its version moved on and its timestamp
    set, as kombu's ORM update did."""
    from sqlalchemy import event, select

    with _connection(broker_url) as consumer_conn, _connection(broker_url) as producer_conn:
        producer = producer_conn.default_channel
        producer._queue_id("checks")  # learnt once per channel
        sent: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            sent.append(" ".join(statement.split()).split(" ")[0].upper())

        engine = producer.session.get_bind()
        event.listen(engine, "before_cursor_execute", seen)
        try:
            producer._put("checks", {"body": "first"})
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        producer._put("checks", {"body": "second"})
        message = producer.message_cls.__table__
        before = producer.session.execute(select(message).order_by(message.c.id)).all()
        producer.session.commit()
        assert producer._size("checks") == 2

        consumer = consumer_conn.default_channel
        assert consumer._get("checks") == {"body": "first"}
        after = consumer.session.execute(select(message).order_by(message.c.id)).all()
        consumer.session.commit()
        assert consumer._get("checks") == {"body": "second"}
        assert producer._size("checks") == 2  # kombu counts claimed messages too

    assert sent == ["INSERT"]  # kombu's publish also read the queue's row
    assert [(r.visible, r.version, r.timestamp) for r in before] == [(True, 1, None), (True, 1, None)]
    assert [r.payload for r in after] == [r.payload for r in before]
    assert (after[0].visible, after[0].version) == (False, 2) and after[0].timestamp is not None
    assert (after[1].visible, after[1].version, after[1].timestamp) == (True, 1, None)


def test_a_look_into_every_queue_of_a_worker_is_one_read_whatever_their_number(broker_url: str) -> None:
    """A worker takes four queues: one look into all of them is one plain read, not one per queue, and
    a message in any of them is still found and delivered once."""
    from queue import Empty

    from sqlalchemy import event

    names = ("default", "checks", "extracts", "notifications")
    queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in names]
    taken: list[Any] = []
    with _connection(broker_url) as conn, _connection(broker_url) as producer_conn:
        consumer = conn.Consumer(queues, callbacks=[lambda body, message: taken.append(body)])
        consumer.consume()
        channel = conn.default_channel
        sent: list[str] = []

        def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            sent.append(" ".join(statement.split()).split(" ")[0].upper())

        engine = channel.session.get_bind()
        event.listen(engine, "before_cursor_execute", seen)
        try:
            with pytest.raises(Empty):
                channel.drain_events()
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        producer_conn.Producer().publish({"job": "j9"}, exchange=queues[2].exchange, routing_key="extracts",
                                         declare=[queues[2]])
        conn.drain_events(timeout=NEVER)
        with pytest.raises(Empty):
            channel.drain_events()  # taken: nothing more in any queue
        consumer.cancel()

    assert sent == ["SELECT"]
    assert taken == [{"job": "j9"}]


def test_a_sqlite_broker_file_keeps_a_write_ahead_log(broker_url: str) -> None:
    """Every publish, claim and acknowledgement commits: with the rollback journal each created, synced
    and deleted a journal file (ADR 0048)."""
    from sqlalchemy import text

    with _connection(broker_url) as conn:
        channel = conn.default_channel
        channel._put("checks", {"body": "job-1"})
        mode = channel.session.execute(text("PRAGMA journal_mode")).scalar()
        channel.session.commit()
        assert channel._get("checks") == {"body": "job-1"}

    assert mode == "wal"
