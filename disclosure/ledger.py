"""The project's release ledger: every released aggregate, read back by the differencing check."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from disclosure.models import OutputCheck, OutputRequest, ProjectReleaseLedger
from tre.core.db import utcnow


def load_ledger(s: Session, project_id: str) -> Any:
    from disclosure.engine import ReleaseLedger

    row = s.get(ProjectReleaseLedger, project_id)
    if row is None or not row.ledger:
        return ReleaseLedger(project_id)
    return ReleaseLedger.from_dict(row.ledger)


def record_in_ledger(
    s: Session, req: OutputRequest, checks: dict[str, OutputCheck], remade: dict[str, Any] | None = None
) -> int:
    """Record every released count or sum table. ``remade`` (file id -> aggregate) holds the entries of
    files the re-run reproduced with a known population (ADR 0018); they are recorded instead of the
    submitted file's, whose population may be unknown."""
    from disclosure.engine import ReleasedAggregate

    ledger = load_ledger(s, req.project_id)
    added = 0
    for f in req.current_files:
        check = checks.get(f.id)
        aggregate = (remade or {}).get(f.id) or (check.aggregate if check is not None else None)
        if aggregate:
            ledger.record(ReleasedAggregate.from_dict(aggregate))
            added += 1
    if added:
        row = s.get(ProjectReleaseLedger, req.project_id, with_for_update=True)
        data = json.loads(json.dumps(ledger.to_dict(), default=str))
        if row is None:
            s.add(ProjectReleaseLedger(project_id=req.project_id, ledger=data))
        else:
            row.ledger, row.updated_at = data, utcnow()
    return added
