"""Governed re-identification under attack: refusals audited, nothing for a project that is not
active, and two fulfilments at once give the identifiers once (a row lock on PostgreSQL)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import event, select, text

from pseudonymisation import reidentification_rules as reid
from pseudonymisation.models import ReidentificationRequest
from pseudonymisation.services import ExtractServiceError
from pseudonymisation.tasks import extracts_service
from tests.projects.factories import build_world, make_user, ready_for_access
from tests.pseudonymisation.test_services import _active_project, _service, demo_data  # noqa: F401 - fixture
from tre.core.audit import AuditEvent

PURPOSE = "Recall a patient for urgent clinical care."


def _refusals(app: Any, action: str) -> list[AuditEvent]:
    with app.extensions["tre.db"].session_factory() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action, AuditEvent.outcome == "denied")))


def test_transition_table_is_the_only_way_a_request_moves() -> None:
    assert reid.check_transition(reid.APPROVED, reid.FULFILLED)
    for current, target in [(reid.FULFILLED, reid.FULFILLED), (reid.REJECTED, reid.APPROVED),
                            (reid.PENDING, reid.FULFILLED)]:
        with pytest.raises(reid.ReidentificationRefused):
            reid.check_transition(current, target)
    assert reid.mermaid_diagram().count("-->") == len(reid.TRANSITIONS) + 1 + 2  # start, two final states


def test_request_without_permission_is_refused_and_audited(app: Any) -> None:
    w = build_world(app)
    p = ready_for_access(w)

    with pytest.raises(ExtractServiceError, match="permission"):
        _service(app).request_reidentification(w.pi, p.id, ["T1"], PURPOSE)

    assert [e.actor_id for e in _refusals(app, "reidentify.request")] == [w.pi.id]


def test_approval_without_permission_and_of_an_unknown_request_are_refused_and_audited(app: Any) -> None:
    w = build_world(app)
    svc = _service(app)

    with pytest.raises(ExtractServiceError, match="permission"):
        svc.decide_reidentification(w.pi, "no-such-request", "approve", "Looks fine")
    with pytest.raises(ExtractServiceError, match="No such request"):
        svc.decide_reidentification(w.custodian, "no-such-request", "approve", "Looks fine")
    with pytest.raises(ExtractServiceError, match="No such request"):
        svc.fulfil_reidentification(w.custodian, "no-such-request")

    assert len(_refusals(app, "reidentify.decide")) == 2
    assert len(_refusals(app, "reidentify.fulfil")) == 1


def test_request_for_a_closed_project_is_refused_and_audited(app: Any) -> None:
    w = build_world(app)
    p = ready_for_access(w)
    w.svc.close(w.chair, p.id, "Study finished")

    with pytest.raises(ExtractServiceError, match="only while the project is active"):
        _service(app).request_reidentification(w.custodian, p.id, ["T1"], PURPOSE)

    [refusal] = _refusals(app, "reidentify.request")
    assert refusal.project_id == p.id
    with app.extensions["tre.db"].session_factory() as s:
        assert s.scalar(select(ReidentificationRequest.id)) is None


def test_request_made_before_closure_cannot_be_approved_or_fulfilled_after_it(app: Any) -> None:
    w = build_world(app)
    p = ready_for_access(w)
    svc = _service(app)
    second = make_user(app, "cal.custodian", ["data_custodian"])
    req = svc.request_reidentification(w.custodian, p.id, ["T1"], PURPOSE)
    req_id = req.id
    svc.decide_reidentification(w.chair, req_id, "approve", "Clinical need confirmed")
    w.svc.close(w.chair, p.id, "Study finished")

    with pytest.raises(ExtractServiceError, match="only while the project is active"):
        svc.decide_reidentification(second, req_id, "approve", "Agreed")

    assert len(_refusals(app, "reidentify.decide")) == 1
    w.session.remove()  # the test's own reads must not hold SQLite's write lock
    with app.extensions["tre.db"].session_factory() as s:
        assert s.get(ReidentificationRequest, req_id).state == reid.PENDING


def test_approved_request_is_not_fulfilled_once_its_project_is_suspended(app: Any) -> None:
    w = build_world(app)
    p = ready_for_access(w)
    svc = _service(app)
    second = make_user(app, "cal.custodian", ["data_custodian"])
    req = svc.request_reidentification(w.custodian, p.id, ["T1"], PURPOSE)
    svc.decide_reidentification(w.chair, req.id, "approve", "Clinical need confirmed")
    svc.decide_reidentification(second, req.id, "approve", "Agreed")
    w.svc.suspend(w.chair, p.id, "Breach under investigation")

    with pytest.raises(ExtractServiceError, match="only while the project is active"):
        svc.fulfil_reidentification(w.custodian, req.id)

    assert len(_refusals(app, "reidentify.fulfil")) == 1


@pytest.fixture
def postgres_app(app: Any) -> Any:
    if app.extensions["tre.db"].engine.dialect.name != "postgresql":
        pytest.skip("the row lock is PostgreSQL's; SQLite transactions already run one at a time")
    return app


def test_two_fulfilments_at_once_give_the_identifiers_once(postgres_app: Any, demo_data: Path) -> None:  # noqa: F811
    app = postgres_app
    w, p = _active_project(app, demo_data)
    with app.app_context():
        _service(app).request(w.custodian, p.id)
    data = app.extensions["tre.settings"].extracts_path / p.id / "patients" / "data"
    token = next(t for t in pq.read_table(sorted(data.glob("*.parquet"))).column("patient_token").to_pylist()
                 if t and t.startswith("T"))
    svc = _service(app)
    second = make_user(app, "cal.custodian", ["data_custodian"])
    req = svc.request_reidentification(w.custodian, p.id, [token], PURPOSE)
    svc.decide_reidentification(w.chair, req.id, "approve", "Clinical need confirmed")
    svc.decide_reidentification(second, req.id, "approve", "Agreed")
    requester_id = w.custodian.id

    db = app.extensions["tre.db"]
    platform = app.extensions["tre.platform"]
    first_holds_row = threading.Event()
    second_read_or_waits = threading.Event()
    second_pid: list[int] = []
    results: dict[str, Any] = {}

    def fulfil(name: str, on_connection: Any) -> None:
        session = db.session_factory()
        try:
            on_connection(session)
            from tre.core.identity import User

            actor = session.get(User, requester_id)
            results[name] = extracts_service(platform, session).fulfil_reidentification(actor, req.id)
        except ExtractServiceError as refused:
            results[name] = refused
        finally:
            session.close()

    def first_hooks(session: Any) -> None:
        # Once the first has read the request (holding its lock), let the second try, and commit
        # only after the second has read it too, or is seen waiting for the lock.
        @event.listens_for(session, "do_orm_execute")
        def after_reading(state: Any) -> None:
            if state.is_select and state.bind_mapper is not None and \
                    state.bind_mapper.class_ is ReidentificationRequest and not first_holds_row.is_set():
                result = state.invoke_statement()
                first_holds_row.set()
                _wait_until_second_reads_or_waits(db, second_pid, second_read_or_waits)
                return result
            return None

    def second_hooks(session: Any) -> None:
        first_holds_row.wait()
        connection = session.connection()
        second_pid.append(connection.connection.dbapi_connection.info.backend_pid)

        @event.listens_for(connection, "after_cursor_execute")
        def read(*_: Any) -> None:
            second_read_or_waits.set()

    threads = [threading.Thread(target=fulfil, args=("first", first_hooks)),
               threading.Thread(target=fulfil, args=("second", second_hooks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    given = [r for r in results.values() if isinstance(r, list)]
    refused = [r for r in results.values() if isinstance(r, ExtractServiceError)]
    assert len(given) == 1 and len(refused) == 1, results
    assert "already fulfilled" in str(refused[0])
    assert len(_refusals(app, "reidentify.fulfil")) == 1


def _wait_until_second_reads_or_waits(db: Any, second_pid: list[int], read: threading.Event) -> None:
    """Block until the second fulfilment has read the request (no lock: the attack succeeds) or is
    waiting on a lock in PostgreSQL (the lock holds). Checks pg_stat_activity between waits on the
    event, so it returns as soon as either is true."""
    with db.engine.connect() as conn:
        while not read.wait(0.02):
            if second_pid and conn.execute(
                text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": second_pid[0]},
            ).scalar():
                return
            conn.rollback()


def test_docs_show_the_diagram_of_the_transition_table() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "pseudonymisation" / "tokens.md").read_text()

    assert f"```mermaid\n{reid.mermaid_diagram()}```" in docs
