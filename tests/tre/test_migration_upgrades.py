"""A database made at the first schema, full of real data, upgrades one revision at a time to head.

The revisions are read from Alembic's script directory, so every revision added later is walked
too. The data is written by ``tre demo load`` (accounts, projects, a built extract, an opt-out list,
their audit events) with today's code, so at today's head; the database is then downgraded to the
first revision with its data (what a revision's downgrade cannot keep, it removes, and the counts
are taken after that), and upgraded one revision at a time. After each step every table keeps its
rows; at head ``tre audit verify`` passes and a signed-in page shows the data. Downgrading an empty
database to base and up again is tested in ``test_migrations.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy import create_engine, func, inspect, select, table

from tests.conftest import make_test_app
from tests.tre.helpers import sign_in
from tre.cli import main
from tre.core import migrate
from tre.demo.accounts import ACCOUNTS_FILE, DOMAIN
from tre.demo.catalogue import ACTIVE_TITLE


def revisions_in_order() -> list[str]:
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    return [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]


def row_counts(database_url: str) -> dict[str, int]:
    engine = create_engine(database_url)
    try:
        names = [n for n in inspect(engine).get_table_names() if n != "alembic_version"]
        with engine.connect() as conn:
            return {n: conn.scalar(select(func.count()).select_from(table(n))) or 0 for n in names}
    finally:
        engine.dispose()


def tre(args: list[str], instance: Path, database_url: str) -> str:
    env = {
        "TRE_INSTANCE_PATH": str(instance),
        "TRE_DATABASE_URL": database_url,
        "TRE_BROKER_URL": "memory://",
        "TRE_ENVIRONMENT": "test",
    }
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def fill_at_first_revision_and_upgrade(
    database_url: str, instance: Path, fill_at: str | None = None
) -> list[str]:
    """Load the demo at ``fill_at`` (the head today's code writes), take the database down to the
    first revision with its data, then step to head checking row counts."""
    revisions = revisions_in_order()
    migrate.upgrade(database_url, fill_at or revisions[-1])
    tre(["demo", "load", "--patients", "300"], instance, database_url)
    migrate.downgrade(database_url, revisions[0])
    before = row_counts(database_url)
    for name in ("users", "projects", "extracts", "audit_events", "optout_list_versions", "jobs"):
        assert before[name] > 0, f"the demo left {name} empty: nothing to carry through"

    for step in revisions[1:]:
        migrate.upgrade(database_url, step)
        after = row_counts(database_url)
        assert {n: after.get(n) for n in before} == before, f"rows lost or gained upgrading to {step}"
    print(
        f"\nupgrade {' -> '.join(revisions)} on {database_url.split(':')[0]}: "
        f"{sum(before.values())} rows in {len(before)} tables carried"
    )
    return revisions


def test_a_first_schema_database_with_data_upgrades_step_by_step_to_head(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    instance = tmp_path / "instance"
    revisions = fill_at_first_revision_and_upgrade(database_url, instance)
    assert revisions[0] == "0001"

    assert "audit chain intact" in tre(["audit", "verify"], instance, database_url)

    accounts = json.loads((instance / ACCOUNTS_FILE).read_text())
    rita = accounts[f"rita.researcher@{DOMAIN}"]
    app: Any = make_test_app(instance, database_url)
    client = app.test_client()
    signed_in = sign_in(client, rita["email"], rita["totp_secret"], rita["password"])
    assert signed_in.status_code in (302, 303)
    page = client.get("/projects/")
    assert page.status_code == 200
    assert ACTIVE_TITLE in page.get_data(as_text=True)
    app.extensions["tre.db"].session.remove()
    app.extensions["tre.db"].dispose()


SCRATCH_REVISION = """
from alembic import op
import sqlalchemy as sa

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}


def downgrade() -> None:
    pass
"""


def test_the_walk_takes_every_later_revision_and_notices_one_that_loses_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two scratch revisions after the real head (in a copy of the scripts): a harmless new column
    is walked through, and a revision that deletes rows is named as the one that lost them."""
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    head = revisions_in_order()[-1]
    steps = [
        (
            "9001",
            head,
            "    with op.batch_alter_table('users') as b:\n"
            "        b.add_column(sa.Column('scratch_note', sa.Text(), nullable=True))",
        ),
        ("9002", "9001", "    op.execute('DELETE FROM jobs')"),
    ]
    for revision, down, body in steps:
        (scripts / "versions" / f"{revision}_scratch.py").write_text(
            SCRATCH_REVISION.format(revision=revision, down=down, body=body)
        )
    monkeypatch.setattr(migrate, "MIGRATIONS", scripts)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'tre.sqlite'}"

    assert revisions_in_order()[-2:] == ["9001", "9002"]
    with pytest.raises(AssertionError, match="upgrading to 9002"):
        fill_at_first_revision_and_upgrade(url, tmp_path / "instance", fill_at=head)
    engine = create_engine(url)
    columns = [c["name"] for c in inspect(engine).get_columns("users")]
    engine.dispose()
    assert "scratch_note" in columns
