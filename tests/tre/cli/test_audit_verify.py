"""``tre audit verify`` as an operator runs it: events cut off the end of the chain are reported
(against the signed checkpoint), and a head kept elsewhere can be checked with --expect."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from tests.conftest import make_test_app
from tests.full_instance import environment
from tre.core.db import transaction


def _tre(args: list[str], instance: Path, database_url: str) -> Any:
    from tre.cli import main

    return CliRunner().invoke(main, args, env=environment(instance, database_url), catch_exceptions=False)


@pytest.fixture
def instance(tmp_path: Path, database_url: str) -> Path:
    """An initialised instance with 40 audit events written by the service."""
    path = tmp_path / "instance"
    assert _tre(["init"], path, database_url).exit_code == 0
    app = make_test_app(path, database_url)
    db, audit = app.extensions["tre.db"], app.extensions["tre.platform"].audit
    for i in range(40):
        with transaction(db.session) as s:
            audit.record(s, "thing.happened", actor_id=f"user{i}")
    db.session.remove()
    db.dispose()
    return path


def _delete_last(database_url: str, n: int) -> None:
    """An attacker with database access drops the append-only triggers and cuts the end off."""
    from sqlalchemy import create_engine

    engine = create_engine(database_url)
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_events_no_delete"))
        else:
            conn.execute(text("DROP TRIGGER audit_events_no_update_or_delete ON audit_events"))
        last = conn.execute(text("SELECT max(seq) FROM audit_events")).scalar()
        conn.execute(text("DELETE FROM audit_events WHERE seq > :seq"), {"seq": last - n})
    engine.dispose()


def test_verify_reports_the_last_25_events_deleted(instance: Path, database_url: str) -> None:
    assert _tre(["audit", "verify"], instance, database_url).exit_code == 0
    _delete_last(database_url, 25)

    result = _tre(["audit", "verify"], instance, database_url)

    assert result.exit_code == 1
    assert "AUDIT CHAIN BROKEN" in result.output and "truncated" in result.output


def test_verify_prints_a_head_that_expect_checks_later(instance: Path, database_url: str) -> None:
    intact = _tre(["audit", "verify"], instance, database_url)
    head = re.search(r"--expect\): (\d+:[0-9a-f]{64})", intact.output)
    assert intact.exit_code == 0 and "matched" in intact.output and head

    assert _tre(["audit", "verify", "--expect", head.group(1)], instance, database_url).exit_code == 0
    (instance / "audit-checkpoint.json").unlink()  # the attacker also removes the checkpoint
    _delete_last(database_url, 1)

    result = _tre(["audit", "verify", "--expect", head.group(1)], instance, database_url)

    assert result.exit_code == 1 and "anchored event is missing" in result.output
