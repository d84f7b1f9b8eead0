"""The embedded broker: kombu's SQLAlchemy transport, with a wake-up signal instead of a blind sleep.

kombu's transport keeps messages in a database table and a consumer that finds every queue empty
sleeps its polling interval (one second) before looking again, so a job waited half a second on
average, and up to a second, before a worker even saw its message. Here, when the broker is a
SQLite file (so every producer and consumer is on this machine):

* a producer, once the message row has committed, pokes the wake-up folder beside the broker file
  (``tre.core.wakeup``);
* a consumer, instead of sleeping, waits on its own socket in that folder, for at most the polling
  interval (``TRE_BROKER_POLL_MS``), and looks again as soon as it is poked; it also pokes itself when it
  acknowledges or rejects a message, because a worker at its prefetch limit looks for the next
  message only after one of those;
* messages are still stored, claimed and acknowledged exactly as before: the broker's table (and
  behind it the jobs table, ADR 0001) is what is true. A poke that is lost or late costs at most
  one polling interval; a spurious one costs one empty look.

Any other SQLAlchemy broker (``sqla+postgresql://``) polls as kombu does. ADR 0017 says why.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import sqlalchemy as kombu_sqla
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from sqlalchemy import bindparam, create_engine, event, func, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tre.core import wakeup

log = logging.getLogger(__name__)

TRANSPORT = "tre.core.sqlbroker:Transport"
URL_PREFIX = "sqla+"
# Options this transport reads; kombu's channel hands every other option to create_engine.
OPTIONS = ("polling_interval", "wakeups")
# kombu's own options that are not create_engine's.
_KOMBU_OPTIONS = (
    "queue_tablename", "message_tablename", "callback", "errback", "max_retries",
    "interval_start", "interval_step", "interval_max", "retry_errors",
)


def wakeup_folder(engine_url: str) -> Path | None:
    """Where the wake-up sockets of the broker at ``engine_url`` live: beside its SQLite file.
    None for anything that is not a SQLite file (another machine may hold its consumers)."""
    try:
        url = make_url(engine_url)
    except Exception:  # noqa: BLE001 - not a URL we can place on this machine: no wake-ups
        return None
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:"):
        return None
    path = Path(url.database).absolute()
    return path.with_name(path.name + ".wake")


def celery_settings(broker_url: str, *, wakeups: bool, poll_seconds: float) -> dict[str, Any]:
    """The Celery settings that use this transport for a ``sqla+...`` broker URL."""
    if not broker_url.startswith(URL_PREFIX):
        raise ValueError("the embedded transport serves sqla+ broker URLs only")
    return {
        # With its own transport named, kombu keeps the rest of the URL whole as the engine URL,
        # exactly as it does after splitting "sqla+" off.
        "broker_url": broker_url[len(URL_PREFIX):],
        "broker_transport": TRANSPORT,
        "broker_transport_options": {"polling_interval": poll_seconds, "wakeups": wakeups},
    }


def _sqlite_journal(dbapi_connection: Any, _record: Any) -> None:
    """A SQLite broker file keeps a write-ahead log, as the embedded database does (``tre.core.db``):
    a commit appends to the log and syncs it once, where the rollback journal created, synced and
    deleted a journal file for every publish, claim and acknowledgement (ADR 0048). ``synchronous``
    stays FULL: a commit is durable when it returns, as before."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:  # another connection holds the file: it keeps its journal
        log.warning("broker file kept its journal mode (%s)", exc)
    finally:
        cursor.close()


class Channel(kombu_sqla.Channel):
    connection: Transport
    # During one look (``_poll``): the names of the queues that held a visible message when it began.
    _tre_waiting: set[str] | None = None
    # The last look's read saw one visible message in all these queues and the look took it: until this
    # consumer next waits on its wake-up socket, a look would find only what was published after that read,
    # and every such publish pokes the socket (ADR 0077).
    _tre_drained: bool = False
    # The consumer's last look found it at its prefetch limit (or consuming nothing), so it took no message.
    _tre_held_back: bool = True

    def _engine_from_config(self) -> Any:
        conninfo = self.connection.client
        options = {
            key: value
            for key, value in conninfo.transport_options.items()
            if key not in OPTIONS and key not in _KOMBU_OPTIONS
        }
        engine = create_engine(conninfo.hostname, **options)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_journal)
        return engine

    def _queue_id(self, queue: str) -> int:
        """The queue's row id, looked up (or created) once per channel: kombu never deletes a queue
        row, and its own ``_get`` looked it up again at every look into every queue."""
        ids: dict[str, int] = self.__dict__.setdefault("_tre_queue_ids", {})
        if queue not in ids:
            ids[queue] = int(self._get_or_create(queue).id)
        return ids[queue]

    def _statement(self, name: str) -> Any:
        """The broker's statements, built once per channel (the message class is the channel's):
        SQLAlchemy keeps a statement object's cache key, so a look no longer builds and keys a
        statement. They are Core statements on kombu's own tables, whose layout is unchanged."""
        built: dict[str, Any] = self.__dict__.setdefault("_tre_statements", {})
        if name not in built:
            built[name] = self._build(name)
        return built[name]

    def _build(self, name: str) -> Any:
        message = self.message_cls.__table__
        queue_id = bindparam("queue_id")
        if name == "waiting":  # which queues hold a visible message, and how many each
            queue = self.queue_cls.__table__
            return (
                select(queue.c.name, func.count())
                .join(message, message.c.queue_id == queue.c.id)
                .where(message.c.visible.is_(True))
                .group_by(queue.c.name)
            )
        if name == "one":  # whether one queue does
            return select(message.c.id).where(message.c.queue_id == queue_id, message.c.visible.is_(True)).limit(1)
        if name == "claim":  # (its bound name is not the column's: an UPDATE reserves those)
            queue_id = bindparam("claim_queue_id")
            # kombu's claim in one statement: its oldest visible message (the same order, locked on
            # PostgreSQL), made invisible with the row's version moved on and its timestamp set as the
            # ORM's update did, and its payload returned. ``visible`` is asked again outside the
            # subquery: a consumer that waited on the row's lock finds it taken and claims nothing.
            oldest = (
                select(message.c.id)
                .where(message.c.queue_id == queue_id, message.c.visible.is_(True))
                .order_by(message.c.timestamp, message.c.id)
                .limit(1)
                .with_for_update()
                .scalar_subquery()
            )
            return (
                update(message)
                .where(message.c.id == oldest, message.c.visible.is_(True))
                .values(visible=False, version=message.c.version + 1)
                .returning(message.c.payload)
            )
        if name == "put":
            return insert(message)  # the columns given are the values; the rest take their defaults
        if name == "size":
            return select(func.count()).select_from(message).where(message.c.queue_id == queue_id)
        raise KeyError(name)

    def _poll(self, cycle: Any, callback: Any, timeout: float | None = None) -> Any:
        """One look into every queue this consumer takes: a single read says which of them hold a
        visible message, and only those are claimed from. Before, each queue cost its own read and
        commit (four per look, and the worker looks again after every message it acknowledges).

        A look straight after one whose read saw a single visible message, and took it, reads nothing
        (ADR 0077): every message committed after that read was followed by a poke, which waits in
        this consumer's socket and ends the wait that follows this empty look at once. Without a
        wake-up socket every look reads, as before."""
        if self._tre_drained:
            self._tre_drained = False
            raise Empty()
        session = self.session
        try:
            visible: dict[str, int] = {name: count for name, count in session.execute(self._statement("waiting"))}
        finally:
            session.commit()  # end the read: no snapshot held while the worker waits
        self._tre_waiting = set(visible)
        try:
            delivered = super()._poll(cycle, callback, timeout=timeout)
        finally:
            self._tre_waiting = None
        self._tre_drained = sum(visible.values()) == 1 and self.connection.listens()
        return delivered

    def _get(self, queue: str) -> Any:
        """Claim the queue's oldest visible message, as kombu does, but only after a plain read has
        seen one (the look's read, in ``_poll``; otherwise this queue's own): an empty queue costs no
        queue look-up, no write transaction (``BEGIN IMMEDIATE`` on SQLite, which takes the broker
        file's write lock from producers) with a locked ``SELECT``, and no commit. A message committed
        after the read is not missed: its producer pokes after the commit, and the consumer looks
        again (or at the next poll)."""
        if self._tre_waiting is not None:
            if queue not in self._tre_waiting:
                raise Empty()
        else:
            session = self.session
            try:
                waiting = session.execute(self._statement("one"), {"queue_id": self._queue_id(queue)}).first()
            finally:
                session.commit()  # end the read: no snapshot held while the worker waits
            if waiting is None:
                raise Empty()
        return self._claim(queue)

    def _claim(self, queue: str) -> Any:
        """kombu's locked claim (``BEGIN IMMEDIATE`` on SQLite, ``FOR UPDATE`` elsewhere) as one
        ``UPDATE ... RETURNING``, not an ORM look-up of the queue, a locked ORM read and a flush of the
        message object; another consumer may win it (Empty). A database without ``RETURNING`` in an
        ``UPDATE`` is claimed from by kombu's own code."""
        session = self.session
        if not session.get_bind().dialect.update_returning:
            return super()._get(queue)
        queue_id = self._queue_id(queue)
        if session.get_bind().name == "sqlite":
            session.execute(text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            payload = session.execute(self._statement("claim"), {"claim_queue_id": queue_id}).scalar()
        finally:
            session.commit()
        if payload is None:
            raise Empty()
        return loads(bytes_to_str(payload))

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """kombu's ``_put`` as one Core ``INSERT`` (the queue's id known once per channel, no message
        object), committed (or raised) when this returns; then the consumers are poked."""
        session = self.session
        queue_id = self._queue_id(queue)
        session.execute(self._statement("put"), {"queue_id": queue_id, "payload": dumps(payload)})
        try:
            session.commit()
        except OperationalError:
            session.rollback()  # the publish fails and can be retried, as in kombu's own
            raise
        self.connection.wake_consumers()

    def _size(self, queue: str) -> int:
        """How many messages the queue holds (visible or not, as kombu counts them), in one read."""
        session = self.session
        try:
            return int(session.execute(self._statement("size"), {"queue_id": self._queue_id(queue)}).scalar_one())
        finally:
            session.commit()

    def drain_events(self, timeout: float | None = None, callback: Any = None) -> Any:
        # Said before the limit is asked (an ack may come from another thread meanwhile): see ``basic_ack``.
        self._tre_held_back = True
        if self._consumers and self.qos.can_consume():
            self._tre_held_back = False
        return super().drain_events(timeout=timeout, callback=callback)

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        """Acknowledge, and wake this consumer if its last look was held back by its prefetch limit: it
        looked for no message since. Otherwise it is looking already (woken by each publish), and a nudge
        cost it a look that found nothing after every job (ADR 0077)."""
        super().basic_ack(delivery_tag, multiple=multiple)
        if self._tre_held_back:
            self.connection.wake_self()

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue=requeue)
        self.connection.wake_self()  # a message put back must be looked for at once


class Transport(kombu_sqla.Transport):
    """kombu's SQLAlchemy transport whose consumers wait on a wake-up socket, not a sleep."""

    Channel = Channel
    Listener = wakeup.Listener

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        enabled = client.transport_options.get("wakeups", True)
        self.wakeup_folder = wakeup_folder(client.hostname) if enabled else None
        self._listener: wakeup.Listener | None = None
        self._listener_failed = False

    def wake_consumers(self) -> None:
        if self.wakeup_folder is not None:
            wakeup.poke(self.wakeup_folder)

    def wake_self(self) -> None:
        if self._listener is not None:
            self._listener.nudge()

    def listens(self) -> bool:
        """Whether this consumer waits on a wake-up socket (so every publish pokes it)."""
        return self._listener is not None

    def _listening(self) -> wakeup.Listener | None:
        """This consumer's socket, bound before its first look so no poke can fall between them."""
        if self._listener is None and self.wakeup_folder is not None and not self._listener_failed:
            try:
                self._listener = self.Listener(self.wakeup_folder)
            except OSError as exc:
                self._listener_failed = True
                log.warning("broker wake-ups unavailable (%s): polling every %.2f s",
                            type(exc).__name__, self.polling_interval)
        return self._listener

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        listener = self._listening()
        if listener is None:
            return super().drain_events(connection, timeout=timeout)
        started = monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            wait = self.polling_interval or 0.0
            if timeout is not None:
                left = timeout - (monotonic() - started)
                if left <= 0:
                    raise TimeoutError()
                wait = min(wait, left)
            listener.wait(wait)
            for channel in self.channels:  # a wait ends what the last read said (``Channel._poll``)
                channel._tre_drained = False

    def close_connection(self, connection: Any) -> None:
        try:
            super().close_connection(connection)
        finally:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
