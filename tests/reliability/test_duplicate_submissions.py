"""The workspace sends the same submission twice at the same moment (a retry racing the original,
from two threads, same Idempotency-Key): one request is made, with one set of files, one audit
event and one check job, and both callers are told its id. Runs on SQLite and on PostgreSQL.

The race is made, not hoped for: the first submission holds just after writing its request row,
uncommitted, until the second is about to write. On PostgreSQL the second has then looked for the
key, not found it, and is sending its own row: it always takes the losing path, where the unique
key settles the race. On SQLite every write transaction begins IMMEDIATE, so the second is waiting
for the first's lock: it begins once the first has committed, and finds its request."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import event, func, select

from disclosure.models import OutputFile, OutputRequest
from tests.disclosure.factories import SAFE_CSV, World
from tests.security.figures import record
from tests.tre.web.test_outputs_api import post_request, token
from tre.core import jobs
from tre.core.audit import AuditEvent

pytestmark = pytest.mark.integration

ROUNDS = 5


@pytest.fixture
def world(app: Any) -> Any:
    with app.app_context():
        return World(app)


class Overlap:
    """Holds the first transaction that writes a request row, just after the write, until a second
    one is about to write its own, or (SQLite) to begin writing at all (SQLAlchemy events on the
    app's engine, the test's only hook)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.first: int | None = None
        self.first_holds, self.second_writes, self.go_on = threading.Event(), threading.Event(), threading.Event()
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    @staticmethod
    def _writes_request(statement: str) -> bool:
        return statement.lstrip().upper().startswith("INSERT INTO OUTPUT_REQUESTS ")

    def _before(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self._begin(_conn, _cursor, statement)
        if not self._writes_request(statement):
            return
        if self.first is None:
            self.first = threading.get_ident()
        elif threading.get_ident() != self.first:
            self.second_writes.set()

    def _begin(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.strip().upper() == "BEGIN IMMEDIATE" and self.first_holds.is_set():
            if threading.get_ident() != self.first:
                self.second_writes.set()  # it waits for the first's write lock from here

    def _after(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self._writes_request(statement) and threading.get_ident() == self.first and not self.first_holds.is_set():
            self.first_holds.set()
            assert self.go_on.wait(timeout=60), "the test never let the first submission go on"

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)


def test_the_same_submission_sent_twice_at_once_creates_one_request(world: World) -> None:
    bearer = token(world, world.author)
    results: dict[str, list[Any]] = {}

    for round_ in range(ROUNDS):
        key = f"workspace-run-{round_}"
        responses: list[Any] = []
        overlap = Overlap(world.app.extensions["tre.db"].engine)

        def send(key: str = key, responses: list[Any] = responses) -> None:
            responses.append(post_request(world, bearer, key=key, files=[(SAFE_CSV, "table.csv")]))

        first, second = threading.Thread(target=send), threading.Thread(target=send)
        try:
            first.start()
            assert overlap.first_holds.wait(timeout=60), "the first submission never wrote its request"
            second.start()
            assert overlap.second_writes.wait(timeout=60), "the second submission never tried to write"
        finally:
            overlap.go_on.set()
            first.join(timeout=60)
            second.join(timeout=60)
            overlap.remove()
        results[key] = responses
        record("reliability: duplicate submissions sent concurrently", 1)

    session = world.session
    session.rollback()
    for key, (a, b) in results.items():
        assert sorted((a.status_code, b.status_code)) == [200, 201], (key, a.get_data(as_text=True),
                                                                    b.get_data(as_text=True))
        assert a.json["id"] == b.json["id"]
    count = lambda model, *where: int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # noqa: E731
    assert count(OutputRequest) == ROUNDS
    assert count(OutputFile) == ROUNDS
    assert count(AuditEvent, AuditEvent.action == "output.create") == ROUNDS
    assert count(jobs.Job, jobs.Job.kind == "outputs.check") == ROUNDS
    assert world.app.extensions["tre.platform"].audit.verify(
        session.scalars(select(AuditEvent).order_by(AuditEvent.seq))
    ).ok
