"""The workspace sends the same submission twice at the same moment (a retry racing the original,
from two threads, same Idempotency-Key): one request is made, with one set of files, one audit
event and one check job, and both callers are told its id. Runs on SQLite and on PostgreSQL, where
the two transactions really overlap and the unique key settles the race."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import func, select

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


def test_the_same_submission_sent_twice_at_once_creates_one_request(world: World) -> None:
    bearer = token(world, world.author)
    results: dict[str, list[Any]] = {}

    for round_ in range(ROUNDS):
        key = f"workspace-run-{round_}"
        barrier = threading.Barrier(2)
        responses: list[Any] = []

        def send(key: str = key, barrier: threading.Barrier = barrier, responses: list[Any] = responses) -> None:
            barrier.wait()
            responses.append(post_request(world, bearer, key=key, files=[(SAFE_CSV, "table.csv")]))

        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
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
