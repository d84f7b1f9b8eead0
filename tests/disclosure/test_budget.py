"""The DP route through the output queue, on SQLite and PostgreSQL: a DP file is checked at submission,
the project's privacy budget is charged at release (never before), a release that would overspend is
refused and audited, the budget survives a restart, and only the DAC sets or refunds it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from disclosure import rules
from disclosure.budget import PrivacyBudgets, budget_state
from disclosure.models import OutputCheck, OutputRelease, PrivacyBudgetEntry
from disclosure.services import OutputError, OutputPermissionDenied
from disclosure.session import Session
from tests.disclosure.factories import World, person, platform
from tests.disclosure.test_checks import extract_frame, write_extract
from tre.core.audit import DENIED, AuditEvent

REGIONS = ["North", "South", "East", "West"]


@pytest.fixture
def world(app: Any) -> Any:
    with app.app_context():
        yield World(app)


def dp_output(spent: float, **edit: Any) -> tuple[bytes, dict[str, Any]]:
    """A DP count table made by the researcher's session from the extract: (CSV bytes, its spec)."""
    session = Session(person="pid")
    frame = session.use(extract_frame(), "admissions")
    session.dp_count(frame, ["region"], {"region": REGIONS}, spent)
    with tempfile.TemporaryDirectory() as folder:
        document = session.finalise(folder)
        content = (Path(folder) / "output_0_0.csv").read_bytes()
    spec = {**document["results"]["output_0"]["table_spec"], **edit}
    return content, spec


def dac(world: World) -> Any:
    return person(world.app, "dora", ["dac_chair"])


def budgets(world: World) -> PrivacyBudgets:
    return PrivacyBudgets.from_platform(platform(world.app))


def test_dp_file_is_checked_at_submission_and_charges_nothing_until_release(world: World) -> None:
    write_extract(world.app, world.project.id)
    content, spec = dp_output(0.5)

    req = world.approved(content=content, spec=spec)

    check = world.session.scalar(select(OutputCheck).where(OutputCheck.request_id == req.id))
    assert check.status == "pass"
    assert check.verdict["dp"]["epsilon"] == pytest.approx(0.5)
    assert budget_state(world.session, world.project.id).spent == 0.0
    world.svc.release(world.olive, req.id)
    state = budget_state(world.session, world.project.id)
    assert state.spent == pytest.approx(0.5)
    assert state.remaining == pytest.approx(state.total - 0.5)
    spend = world.session.scalar(select(AuditEvent).where(AuditEvent.action == "privacy_budget.spend"))
    assert spend.detail["epsilon"] == pytest.approx(0.5)


def test_release_that_would_overspend_is_refused_audited_and_releases_nothing(world: World) -> None:
    budgets(world).set_total(dac(world), world.project.id, 0.2, "pilot study: small budget")
    content, spec = dp_output(0.5)
    req = world.approved(content=content, spec=spec)

    with pytest.raises(OutputError, match="this release needs epsilon 0.5; the project has 0.2 left"):
        world.svc.release(world.olive, req.id)

    assert world.refresh(req).state == rules.APPROVED
    assert world.session.scalar(select(func.count()).select_from(OutputRelease)) == 0
    assert world.session.scalar(select(func.count()).select_from(PrivacyBudgetEntry)) == 0
    refusal = world.session.scalar(
        select(AuditEvent).where(AuditEvent.action == "output.release", AuditEvent.outcome == DENIED)
    )
    assert "the project has 0.2 left" in refusal.detail["rule"]


def test_revoking_a_release_refunds_nothing(world: World) -> None:
    content, spec = dp_output(1.0)
    req = world.released(content=content, spec=spec)

    world.svc.revoke(world.olive, req.id, "Published in error")

    assert budget_state(world.session, world.project.id).spent == pytest.approx(1.0)


def test_budget_survives_a_restart_of_the_app(world: World, tmp_path: Path, database_url: str) -> None:
    from tests.conftest import make_test_app

    budgets(world).set_total(dac(world), world.project.id, 3.0, "agreed with the DAC")
    content, spec = dp_output(1.0)
    world.released(content=content, spec=spec)
    world.session.commit()  # end the test's read transaction: on SQLite it holds the write lock
    platform(world.app).db.dispose()  # the first app is gone

    again = make_test_app(tmp_path / "again", database_url)
    try:
        with again.app_context():
            state = budget_state(platform(again).db.session, world.project.id)
    finally:
        platform(again).db.session.remove()
        platform(again).db.dispose()
    assert (state.total, state.spent, state.remaining) == pytest.approx((3.0, 1.0, 2.0))


def test_a_fresh_project_starts_at_the_policy_default(world: World) -> None:
    from disclosure.progress import current_policy

    state = budget_state(world.session, world.project.id)
    assert state.total == current_policy().get("dp", "project_budget")
    assert state.set_by is None


def test_researcher_cannot_raise_or_reset_the_budget_and_is_audited(world: World) -> None:
    budgets(world).set_total(dac(world), world.project.id, 1.0, "small")
    content, spec = dp_output(1.0)
    world.released(content=content, spec=spec)

    for attempt in (
        lambda: budgets(world).set_total(world.author, world.project.id, 50.0, "more please"),
        lambda: budgets(world).refund(world.author, world.project.id, 1.0, "start again"),
        lambda: budgets(world).set_total(world.olive, world.project.id, 50.0, "checker"),
    ):
        with pytest.raises(OutputPermissionDenied):
            attempt()

    state = budget_state(world.session, world.project.id)
    assert (state.total, state.remaining) == pytest.approx((1.0, 0.0))
    denied = world.session.scalars(
        select(AuditEvent.action).where(AuditEvent.outcome == DENIED, AuditEvent.project_id == world.project.id)
    ).all()
    assert sorted(denied) == ["privacy_budget.refund", "privacy_budget.set", "privacy_budget.set"]


def test_dac_cannot_set_the_total_below_what_was_spent_nor_refund_more_than_spent(world: World) -> None:
    content, spec = dp_output(1.0)
    world.released(content=content, spec=spec)
    chair = dac(world)

    with pytest.raises(OutputError, match="already spent epsilon 1"):
        budgets(world).set_total(chair, world.project.id, 0.5, "tighter")
    with pytest.raises(OutputError, match="more than the project has spent"):
        budgets(world).refund(chair, world.project.id, 2.0, "mistake")
    state = budgets(world).refund(chair, world.project.id, 1.0, "the file never left: bundle was empty")

    assert state.remaining == pytest.approx(state.total)
    assert sorted(world.session.scalars(select(PrivacyBudgetEntry.kind))) == ["refund", "spend"]


def test_dp_file_with_a_forged_smaller_epsilon_fails_its_check(world: World) -> None:
    write_extract(world.app, world.project.id)
    content, spec = dp_output(1.0, epsilon=0.1)

    req = world.submitted(content=content, spec=spec)

    check = world.session.scalar(select(OutputCheck).where(OutputCheck.request_id == req.id))
    assert check.status == "fail"
    assert "implies epsilon 1" in " ".join(check.verdict["reasons"])
    assert check.verdict["dp"]["epsilon"] == pytest.approx(1.0)  # what a release would charge


def test_dp_spec_without_bounds_is_refused_at_upload(world: World) -> None:
    content, spec = dp_output(1.0)
    req, _ = world.svc.create_request(world.author, world.project.id, "DP")
    world.svc.set_group(world.author, req.id, "tables", "context", "controls")

    with pytest.raises(OutputError, match="bounds"):
        world.svc.add_file(
            world.author,
            req.id,
            "t.csv",
            content,
            group="tables",
            table_spec={**spec, "statistic": "sum", "value": "cost", "bounds": None},
        )
    assert world.refresh(req).files == []


def test_dp_output_over_the_per_release_cap_fails_its_check(world: World) -> None:
    content, spec = dp_output(3.0)

    req = world.submitted(content=content, spec=spec)

    check = world.session.scalar(select(OutputCheck).where(OutputCheck.request_id == req.id))
    assert check.status == "fail"
    assert "at most epsilon 2" in " ".join(check.verdict["reasons"])


def test_two_releases_side_by_side_never_overspend(
    world: World, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first release holds with the budget row locked and the budget not yet summed (a test point);
    the second is sent then, and may only read the budget after the first commits: one is refused."""
    import threading

    from sqlalchemy import text

    from disclosure.services import Outputs
    from tre.core.testpoints import Barrier

    point = "outputs.dp.budget_locked"
    budgets(world).set_total(dac(world), world.project.id, 0.8, "room for one release of 0.5")
    first = world.approved(content=dp_output(0.5)[0], spec=dp_output(0.5)[1])
    second = world.approved(content=dp_output(0.5)[0], spec=dp_output(0.5)[1])
    world.session.commit()  # end the test's read transaction: on SQLite it holds the write lock
    barrier = Barrier(tmp_path / "testpoints")
    monkeypatch.setenv("TRE_TESTPOINTS", str(barrier.folder))
    barrier.arm(point)
    outcomes: dict[str, str] = {}

    def release(name: str, checker: Any, request_id: str) -> None:
        with world.app.app_context():
            try:
                Outputs.from_platform(platform(world.app)).release(checker, request_id)
                outcomes[name] = "released"
            except OutputError as exc:
                outcomes[name] = str(exc)
            finally:
                platform(world.app).db.session.remove()

    a = threading.Thread(target=release, args=("first", world.olive, first.id))
    a.start()
    barrier.wait_reached(point, timeout=120)
    b = threading.Thread(target=release, args=("second", world.otto, second.id))
    b.start()
    if database_url.startswith("postgresql"):
        # Go on once the second release waits on a lock (or, were nothing locked, has finished).
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        # pg_stat_activity is a snapshot taken once per transaction: each look is its own transaction,
        # or a first look made before the second release reached the lock would be read forever.
        with platform(world.app).db.engine.connect() as conn:
            while b.is_alive() and not conn.execute(waiting).scalar():
                conn.rollback()
                threading.Event().wait(0.02)
    barrier.release(point)
    a.join()
    b.join()

    world.session.expire_all()
    state = budget_state(world.session, world.project.id)
    assert state.spent == pytest.approx(0.5)
    assert state.remaining >= 0
    assert outcomes["first"] == "released"
    assert "this release needs epsilon 0.5; the project has 0.3 left" in outcomes["second"]


def test_dp_file_whose_check_found_no_epsilon_cannot_be_released_even_when_approved(world: World) -> None:
    _, spec = dp_output(0.5)
    noise_hidden = b"region,estimate\nNorth,40\nSouth,50\nEast,45\nWest,22\n"
    req = world.approved(content=noise_hidden, spec=spec)

    with pytest.raises(OutputError, match="without a checked epsilon"):
        world.svc.release(world.olive, req.id)

    assert world.refresh(req).state == rules.APPROVED
    assert budget_state(world.session, world.project.id).spent == 0.0
