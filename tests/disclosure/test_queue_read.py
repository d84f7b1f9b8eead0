"""The checkers' queue read as columns (ADR 0042) answers what the object read answered: for requests
in every automated-check state, with one file, several, superseded ones and none, on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, select

from disclosure import permissions as perm
from disclosure import rules
from disclosure.models import OutputCheck, OutputFile, OutputRequest
from disclosure.services import automated_statuses
from tests.disclosure.factories import SAFE_CSV, World, outputs, run_queued_jobs
from tre.core import jobs
from tre.core.db import transaction, utcnow


@pytest.fixture
def world(app: Any) -> Any:
    with app.app_context():
        yield World(app)


def _two_files(world: World) -> Any:
    req = world.draft(content=SAFE_CSV)
    world.svc.add_file(world.author, req.id, "second.csv", SAFE_CSV.replace(b"25", b"26"), group="tables")
    return req


def _varied_queue(world: World) -> dict[str, str]:
    """Requests waiting in each check state the queue can show; their ids by what they are."""
    s = world.session
    done = world.submitted(content=SAFE_CSV)
    world.svc.claim(world.oscar, done.id)
    partly = _two_files(world)
    world.svc.submit(world.author, partly.id)
    superseded = _two_files(world)
    world.svc.submit(world.author, superseded.id)
    run_queued_jobs(world.app)
    running = world.draft(content=SAFE_CSV)
    world.svc.submit(world.author, running.id)
    failed = _two_files(world)
    world.svc.submit(world.author, failed.id)
    with transaction(s):
        # One of two files lost its verdict (a policy change would look the same to the queue).
        first = s.scalars(select(OutputFile.id).where(OutputFile.request_id == partly.id)).first()
        s.execute(delete(OutputCheck).where(OutputCheck.file_id == first))
        # One of two files withdrawn from the current round: only the other counts.
        old = s.scalars(select(OutputFile).where(OutputFile.request_id == superseded.id)).first()
        assert old is not None
        old.superseded_at, old.superseded_in_round = utcnow(), 1
        job = s.scalars(select(jobs.Job).where(jobs.Job.idempotency_key.contains(failed.id))).one()
        job.state, job.attempts, job.last_error = jobs.FAILED, 3, "worker lost during attempt 3"
        job.finished_at = job.created_at
        empty = OutputRequest(
            project_id=world.project.id,
            author_id=world.author.id,
            title="",
            state=rules.SUBMITTED,
            submitted_at=utcnow(),
            last_submitted_at=utcnow(),
        )
        s.add(empty)
    world.draft(content=SAFE_CSV)  # a draft is not in the queue
    return {"done": done.id, "partly": partly.id, "superseded": superseded.id, "running": running.id,
            "failed": failed.id, "empty": empty.id}


def _as_objects(world: World, actor: Any) -> list[tuple[Any, ...]]:
    """What the queue answered when it loaded each waiting request and its files as objects."""
    s = world.session
    s.expire_all()
    svc = world.svc
    waiting = list(
        s.scalars(
            select(OutputRequest)
            .where(OutputRequest.state.in_(tuple(rules.IN_QUEUE_STATES)))
            .order_by(OutputRequest.last_submitted_at)
        )
    )
    mine = [r for r in waiting if perm.can_check(s, actor, r)]
    statuses = automated_statuses(s, mine, svc.policy.sha256)
    reviews = svc._reviewers_of(s, mine)
    return [
        (r.id, r.title, r.state, r.round, r.reviews_required, r.last_submitted_at, statuses[r.id],
         [(v.reviewer_id, v.submitted_at) for v in reviews[r.id]])
        for r in mine
    ]


def _as_columns(world: World, actor: Any) -> list[tuple[Any, ...]]:
    world.session.expire_all()
    return [
        (e.req.id, e.req.title, e.req.state, e.req.round, e.req.reviews_required, e.req.last_submitted_at,
         e.status, [(v.reviewer_id, v.submitted_at) for v in e.reviews])
        for e in outputs(world.app).queue_for(actor)
    ]


def test_queue_read_as_columns_answers_as_the_object_read_did(world: World) -> None:
    ids = _varied_queue(world)

    answer = _as_columns(world, world.olive)

    assert answer == _as_objects(world, world.olive)
    by_id = {row[0]: row[6] for row in answer}
    seen = {kind: (by_id[i].state, by_id[i].checked, by_id[i].total) for kind, i in ids.items()}
    assert seen == {
        "done": ("done", 1, 1),
        "partly": ("running", 1, 2),
        "superseded": ("done", 1, 1),
        "running": ("running", 0, 1),
        "failed": ("failed", 0, 2),
        "empty": ("done", 0, 0),
    }
    assert len(by_id[ids["failed"]].failed_files) == 2
    assert "worker lost" in by_id[ids["failed"]].reasons[0]


def test_queue_read_as_columns_leaves_out_what_the_checker_may_not_check(world: World) -> None:
    _varied_queue(world)

    assert _as_columns(world, world.author) == _as_objects(world, world.author) == []
    assert [row[0] for row in _as_columns(world, world.oscar)] == [row[0] for row in _as_objects(world, world.olive)]


def test_the_queues_verdict_test_reads_the_files_own_request_not_the_whole_table() -> None:
    # Two levels down SQLAlchemy does not correlate on its own: the check was joined to every row of
    # output_requests, so each file's test scanned the table (3 ms a read with 170 requests waiting).
    from sqlalchemy.dialects import postgresql, sqlite

    from disclosure.queries import _QUEUE

    for dialect in (postgresql.dialect(), sqlite.dialect()):
        sql = " ".join(str(_QUEUE.compile(dialect=dialect)).split())
        exists = sql[sql.index("EXISTS (") :]
        assert exists.startswith("EXISTS (SELECT output_checks.id FROM output_checks WHERE")
        assert sql.count("FROM output_requests") == 1  # the queue's own rows only
