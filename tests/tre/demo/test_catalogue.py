"""Demo catalogue: the synthetic tables are registered and the demo projects set up, once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from projects.gate import check_access
from projects.models import Dataset, Project
from projects.services import approved_columns
from tre.core.identity import Identity, User
from tre.demo import synthetic
from tre.demo.accounts import load_accounts
from tre.demo.catalogue import ACTIVE_TITLE, QUEUED_TITLE, register_demo_datasets


def test_demo_datasets_and_projects_are_registered_once(sqlite_app: Any, tmp_path: Path) -> None:
    p = sqlite_app.extensions["tre.platform"]
    load_accounts(Identity(p.db.session, p.keys, p.audit), tmp_path)
    synthetic.generate(tmp_path / "data", patients=200, progress=False)

    added = register_demo_datasets(sqlite_app, tmp_path / "data")
    again = register_demo_datasets(sqlite_app, tmp_path / "data")

    s = p.db.session
    assert added == 4 and again == 0
    assert s.scalar(select(func.count()).select_from(Dataset)) == 4
    active = s.scalar(select(Project).where(Project.title == ACTIVE_TITLE))
    queued = s.scalar(select(Project).where(Project.title == QUEUED_TITLE))
    assert active.state == "active" and queued.state == "submitted"
    assert "postcode" not in approved_columns(s, active.id)["patients"]
    for email in ("rita.researcher@demo.tre.example", "sam.scientist@demo.tre.example"):
        user = s.scalar(select(User).where(User.email == email))
        assert check_access(s, user.id, active.id).allowed
    rob = s.scalar(select(User).where(User.email == "rob.other@demo.tre.example"))
    assert not check_access(s, rob.id, active.id).allowed
