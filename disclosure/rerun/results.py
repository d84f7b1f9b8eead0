"""What the re-run of a request found, read for the release gate and for the people who may see it.

The gate (``unreproduced_files``): a round submitted with code releases only files its re-run
reproduced, unless the TRE's policy says otherwise; a round without code is not held (it could not be
re-run). The view (``rerun_view``): the checkers see everything (outcome per file, the difference, the
checks on the re-made file, the reason and the log); the author's team sees the state and each file's
outcome only, because a difference or a re-made table is content (ADR 0007).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from disclosure.models import OutputRequest, OutputRerun
from disclosure.rerun.compare import REPRODUCED


def current_rerun(s: Session, req: OutputRequest) -> OutputRerun | None:
    """The re-run of the request's current round, if that round was submitted with code."""
    return s.scalar(select(OutputRerun).where(OutputRerun.request_id == req.id, OutputRerun.round == req.round))


def unreproduced_files(s: Session, req: OutputRequest) -> list[tuple[str, str]]:
    """(file name, why) of each current file the current round's re-run has not reproduced."""
    rerun = current_rerun(s, req)
    if rerun is None:
        return []
    held = []
    for f in req.current_files:
        if rerun.state == "pending":
            held.append((f.name, "its re-run has not finished"))
        elif rerun.state == "failed":
            held.append((f.name, f"the code could not be re-run: {rerun.reason}"))
        else:
            outcome = (rerun.files or {}).get(f.id) or {"outcome": "not_rerun", "difference": "added after the re-run"}
            if outcome.get("outcome") != REPRODUCED:
                held.append((f.name, f"{outcome.get('outcome')}: {outcome.get('difference', '')}".rstrip(": ")))
    return held


def reproduced_aggregates(s: Session, req: OutputRequest) -> dict[str, Any]:
    """File id -> the ledger entry of its re-made table, for each file the re-run reproduced whose
    population the re-run's session knew (dataset and filters): what the ledger should keep."""
    rerun = current_rerun(s, req)
    if rerun is None or rerun.state != "done":
        return {}
    found = {}
    for file_id, outcome in (rerun.files or {}).items():
        aggregate = (outcome.get("check") or {}).get("aggregate")
        population = (aggregate or {}).get("population") or {}
        if outcome.get("outcome") == REPRODUCED and population.get("dataset") and population.get("filters") is not None:
            found[file_id] = aggregate
    return found


def rerun_view(s: Session, req: OutputRequest, role: str) -> dict[str, Any] | None:
    """The re-run as ``role`` ("checker" or "team") may see it; ``None`` when the round carried no code."""
    rerun = current_rerun(s, req)
    if rerun is None:
        return None
    view: dict[str, Any] = {
        "round": rerun.round,
        "state": rerun.state,
        "code_path": rerun.code_path,
        "code_kind": rerun.code_kind,
        "code_sha256": rerun.code_sha256,
        "extract_version": rerun.extract_version,
        "files": {fid: {"name": r.get("name"), "outcome": r.get("outcome")} for fid, r in (rerun.files or {}).items()},
    }
    if role == "checker":
        view.update(
            reason=rerun.reason, log=list(rerun.log or []), files=dict(rerun.files or {}), timings=rerun.timings
        )
    elif rerun.state == "failed":
        view["reason"] = "the code could not be re-run; the output checkers see why"
    return view
