"""At a project's data destruction: its unreleased output files go too."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from disclosure import rules
from disclosure.models import OutputRequest
from tre.core.db import utcnow


def destroy_unreleased_outputs(session: Session, project_id: str, files: Any = None) -> dict[str, Any]:
    """At data destruction: withdraw the project's open requests and delete the stored copies of every
    file that was never released (a copy another request still needs is kept). Idempotent."""
    from disclosure.models import OutputFile as File

    withdrawn = 0
    for req in session.scalars(select(OutputRequest).where(OutputRequest.project_id == project_id)):
        if (req.state, rules.WITHDRAWN) in rules.TRANSITIONS:
            req.state, req.state_changed_at = rules.WITHDRAWN, utcnow()
            withdrawn += 1
    session.flush()
    released = (rules.RELEASED, rules.REVOKED)
    ours = set(
        session.scalars(
            select(File.sha256)
            .join(OutputRequest, OutputRequest.id == File.request_id)
            .where(OutputRequest.project_id == project_id, OutputRequest.state.not_in(released))
        )
    )
    still_needed = set(
        session.scalars(
            select(File.sha256)
            .join(OutputRequest, OutputRequest.id == File.request_id)
            .where((OutputRequest.project_id != project_id) | OutputRequest.state.in_(released))
        )
    )
    doomed = sorted(ours - still_needed)
    if doomed and files is None:
        from flask import current_app

        files = current_app.extensions["tre.platform"].files
    deleted = sum(1 for sha in doomed if files.delete(sha))
    return {"requests_withdrawn": withdrawn, "files_deleted": deleted}


def _register_closure_hook() -> None:
    from projects.closure import register_destruction_hook

    register_destruction_hook("output-files", destroy_unreleased_outputs)


_register_closure_hook()
