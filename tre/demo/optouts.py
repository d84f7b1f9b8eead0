"""A small national data opt-out list for the demo, drawn from the synthetic patients, so a
newcomer's first extract manifest shows rows removed by a list (and which list, which version)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pseudonymisation import nhs_number

DEMO_LIST = "national"
SHARE = 0.02
"""About one patient in fifty opts out in the demo (the real national rate is a little higher)."""


def demo_optout_numbers(data_dir: Path, share: float = SHARE) -> list[str]:
    """Every ``1/share``-th valid NHS number of the synthetic patients: deterministic for a seed."""
    values = pq.read_table(data_dir / "patients.parquet", columns=["nhs_number"]).column("nhs_number").to_pylist()
    valid = [v for v in values if v and nhs_number.is_valid(v)]
    step = max(1, round(1 / share))
    return valid[::step]


def load_demo_optouts(app: Any, data_dir: Path, custodian_email: str) -> int | None:
    """Load the demo's national opt-out list once (skipped when a list of that name exists).
    Returns the count of NHS numbers loaded, or None when skipped."""
    from sqlalchemy import select

    from pseudonymisation.optout_lists import OptOutLists
    from tre.core.identity import User

    p = app.extensions["tre.platform"]
    lists = OptOutLists(p.db.session, p.audit, p.files)
    if lists.current_version(DEMO_LIST) is not None:
        return None
    custodian = p.db.session.scalar(select(User).where(User.email == custodian_email))
    numbers = demo_optout_numbers(data_dir)
    version = lists.load(
        custodian, DEMO_LIST, "\n".join(numbers),
        description="Demo: synthetic patients who opted out of research (national data opt-out)",
    )
    return version.number_count
