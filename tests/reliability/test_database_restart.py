"""The database restarts in the middle of a stream of state-changing requests. Runs against a
PRIVATE PostgreSQL cluster (tests/reliability/pg_cluster.py: initdb + pg_ctl into a temporary
folder on a free port), never the shared server. Submissions keep arriving over the API
while the cluster is stopped with ``-m immediate`` (a crash: no clean shutdown) and started again.

What must hold: every request that exists has its ``output.create`` audit event and every such
event names a request that exists (both or neither), the audit chain verifies, requests that got an
error changed nothing, and the app serves again without a restart of its own (pool pre-ping)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from disclosure.models import OutputRequest
from tests.disclosure.factories import SAFE_CSV, World
from tests.reliability.pg_cluster import Cluster
from tests.security.figures import record
from tests.tre.web.test_outputs_api import post_request
from tre.core import migrate
from tre.core.audit import AuditEvent

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_database_crash_mid_stream_leaves_each_change_with_its_audit_event_or_neither(
    tmp_path: Path, cluster: Cluster
) -> None:
    from tests.conftest import make_test_app

    migrate.upgrade(cluster.url)
    app = make_test_app(tmp_path / "instance", cluster.url)
    db = app.extensions["tre.db"]
    try:
        with app.app_context():
            world = World(app)
        bearer = app.extensions["tre.platform"].tokens.issue(
            world.author.id, "tre-api", "output-submit", dt.timedelta(minutes=30), project_id=world.project.id
        )
        outcomes: list[tuple[str, int, str | None]] = []
        unexpected: list[str] = []
        stop = threading.Event()

        def stream() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                key = f"run-{n}"
                try:
                    response = post_request(world, bearer, key=key, files=[(SAFE_CSV, "table.csv")])
                    outcomes.append((key, response.status_code, (response.json or {}).get("id")))
                    if response.status_code not in (201, 503):
                        unexpected.append(response.get_data(as_text=True)[:2000])
                except Exception as exc:  # the test client re-raises nothing; this is belt and braces
                    outcomes.append((key, 599, type(exc).__name__))
                stop.wait(0.02)  # pacing, so the outage is not thousands of requests; not a wait

        sender = threading.Thread(target=stream)
        sender.start()
        _wait_until(lambda: len(outcomes) >= 3, "some submissions before the crash")
        served_before = len(outcomes)
        cluster.crash()
        record("reliability: database crashes injected", 1)
        # Restart only once a submission has met the database down (not after a guessed second).
        _wait_until(lambda: any(status >= 500 for _, status, _ in outcomes[served_before:]),
                    "a submission failed by the crash")
        cluster.start()
        _wait_until(lambda: any(status == 201 for _, status, _ in outcomes[served_before + 1 :]),
                    "a submission served after the restart")
        stop.set()
        sender.join(timeout=60)

        statuses = [status for _, status, _ in outcomes]
        assert served_before > 0 and statuses[:served_before].count(201) == served_before
        failed = [o for o in outcomes if o[1] >= 500]
        assert failed, "the crash should have made some requests fail"
        record("reliability: submissions during the database crash stream", len(outcomes))
        record("reliability: submissions failed by the crash (each changed nothing or committed whole)", len(failed))
        # The outage is answered 503 (try again), never 500: the database went away, the request was sound.
        assert all(status in (201, 503) for status in statuses), (sorted(set(statuses)), unexpected)
        assert statuses[-1] == 201, "the app should serve again without being restarted"

        with db.session_factory() as s:
            requests = {r.id: r.client_key for r in s.scalars(select(OutputRequest))}
            created = {e.target_id for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "output.create"))}
            report = app.extensions["tre.platform"].audit.verify(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        assert set(requests) == created  # each request with its audit event, or neither
        succeeded = {rid for _, status, rid in outcomes if status == 201}
        assert succeeded <= set(requests)
        # A request that failed either changed nothing or committed whole before its reply was lost;
        # its key was never made into a second request.
        keys = list(requests.values())
        assert len(keys) == len(set(keys))
        assert report.ok, report
    finally:
        db.dispose()
