"""The demo loads a small national opt-out list from its synthetic patients, once, so the demo
project's extract manifest shows patients removed by it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from projects.models import Project
from pseudonymisation.models import Extract
from tre.core.identity import Identity
from tre.demo import synthetic
from tre.demo.accounts import DOMAIN, load_accounts
from tre.demo.catalogue import ACTIVE_TITLE, register_demo_datasets
from tre.demo.commands import _build_demo_extracts
from tre.demo.optouts import demo_optout_numbers, load_demo_optouts


def test_the_demo_extract_manifest_shows_rows_removed_by_the_national_list(sqlite_app: Any, tmp_path: Path) -> None:
    p = sqlite_app.extensions["tre.platform"]
    load_accounts(Identity(p.db.session, p.keys, p.audit), tmp_path)
    data = tmp_path / "data"
    synthetic.generate(data, patients=500, progress=False)
    register_demo_datasets(sqlite_app, data)

    loaded = load_demo_optouts(sqlite_app, data, f"cara.custodian@{DOMAIN}")
    again = load_demo_optouts(sqlite_app, data, f"cara.custodian@{DOMAIN}")
    with sqlite_app.app_context():
        _build_demo_extracts(sqlite_app)

    assert loaded == len(demo_optout_numbers(data)) > 0 and again is None
    s = p.db.session
    project = s.scalar(select(Project).where(Project.title == ACTIVE_TITLE))
    extract = s.scalar(select(Extract).where(Extract.project_id == project.id))
    assert extract.state == "succeeded"
    (entry,) = extract.manifest["optouts"]["patients"]
    assert entry["name"] == "national" and entry["status"] == "applied" and entry["rows_removed"] > 0
    assert extract.manifest["manifests"]["patients"]["rows"]["opted_out"] == entry["rows_removed"]
