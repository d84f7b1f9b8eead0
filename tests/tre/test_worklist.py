"""The researcher's worklist read as columns in one statement answers as the former read of objects did.

Issue 26 replaced loading each open project as an object plus four statements (the current agreement
template, the person's signatures, their training, the returned output counts) with one statement.
``_former_researcher_projects`` is the former read, kept here only to compare the two answers over the
cases that change what a project waits for: each state, signed or not, a signature of an agreement
since replaced, training in date or lapsed, returned outputs, a removed member, a person with none.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import func, select

from disclosure import rules as output_rules
from disclosure.models import OutputRequest
from projects.gate import current_agreement, training_expiry
from projects.models import AgreementSignature, Project, ProjectMember
from tests.projects.factories import (
    TODAY,
    approved,
    build_world,
    complete_draft,
    in_review,
    publish_agreement,
    ready_for_access,
)
from tests.statements import count_statements
from tre import worklist
from tre.core.db import utcnow


def _former_researcher_projects(session: Any, user: Any, *, today: dt.date) -> list[worklist.ResearchProject]:
    projects = list(
        session.scalars(
            select(Project)
            .join(ProjectMember, ProjectMember.project_id == Project.id)
            .where(
                ProjectMember.user_id == user.id,
                ProjectMember.removed_at.is_(None),
                Project.state.in_(worklist._OPEN_PROJECT_STATES),
            )
            .order_by(Project.state_changed_at)
        ).unique()
    )
    if not projects:
        return []
    ids = [p.id for p in projects]
    template = current_agreement(session)
    signed: set[str] = set()
    if template is not None:
        signed = set(
            session.scalars(
                select(AgreementSignature.project_id).where(
                    AgreementSignature.user_id == user.id,
                    AgreementSignature.template_id == template.id,
                    AgreementSignature.content_hash == template.content_hash,
                    AgreementSignature.project_id.in_(ids),
                )
            )
        )
    expires = training_expiry(session, user.id)
    returned = dict(
        session.execute(
            select(OutputRequest.project_id, func.count())
            .where(OutputRequest.project_id.in_(ids), OutputRequest.state == output_rules.RETURNED)
            .group_by(OutputRequest.project_id)
        ).all()
    )
    trained = expires is not None and expires >= today
    return [
        worklist.ResearchProject(
            p, worklist._waits_for(p, trained=trained, signed=p.id in signed), p.state_changed_at, returned.get(p.id, 0)
        )
        for p in projects
    ]


def _plain(rows: list[worklist.ResearchProject]) -> list[tuple[Any, ...]]:
    return [(r.project.id, r.project.title, r.project.state, r.waits_for, r.since, r.returned_outputs) for r in rows]


def _returned(w: Any, project: Project, author: Any, title: str) -> None:
    at = utcnow()
    w.session.add(
        OutputRequest(
            project_id=project.id,
            author_id=author.id,
            title=title,
            state=output_rules.RETURNED,
            submitted_at=at,
            last_submitted_at=at,
        )
    )
    w.session.commit()


def test_researcher_projects_read_in_one_statement_answer_as_the_former_read(app: Any) -> None:
    """On SQLite and PostgreSQL."""
    w = build_world(app)
    people = (w.pi, w.member, w.outsider)
    later = TODAY + dt.timedelta(days=400)  # every training record has lapsed by then
    seen: list[list[tuple[Any, ...]]] = []

    def same_answers() -> None:
        w.session.expire_all()
        for person in people:
            for today in (TODAY, later):
                new = _plain(worklist.researcher_projects(w.session, person, today=today))
                assert new == _plain(_former_researcher_projects(w.session, person, today=today))
                seen.append(new)

    same_answers()  # nobody has a project, and no agreement is published
    draft = complete_draft(w)
    in_review(w)
    waiting = approved(w)  # no agreement published yet: never signed
    same_answers()
    ready = ready_for_access(w)  # publishes the agreement; the PI and the member sign it for this one
    _returned(w, ready, w.member, "Table 1")
    _returned(w, ready, w.pi, "Table 2")
    _returned(w, waiting, w.pi, "Table 3")
    same_answers()
    w.svc.remove_member(w.pi, draft.id, w.member.id)
    publish_agreement(w, "A second version: every signature above is now of a replaced agreement.")
    same_answers()

    # The comparison covered what it is about: signed and not, trained and not, returned outputs.
    rows = [row for answer in seen for row in answer]
    assert any(row[3] == [] for row in rows)  # ready: signed and trained, nothing waits
    assert any("your signature on the current data access agreement" in row[3] for row in rows)
    assert any(row[0] == ready.id and "your safe researcher training" in " ".join(row[3]) for row in rows)
    assert {row[5] for row in rows} >= {0, 1, 2}


def test_researcher_projects_is_one_statement_whatever_the_number_of_projects(app: Any) -> None:
    """One statement (SQLite adds the BEGIN of the session's transaction); the former read sent five."""
    w = build_world(app)
    ready_for_access(w)

    def read() -> Any:
        w.session.rollback()
        return worklist.researcher_projects(w.session, w.pi, today=TODAY)

    with_one, _ = count_statements(app, read)
    for _ in range(3):
        complete_draft(w)
    with_four, rows = count_statements(app, read)

    assert len(rows) == 4 and with_four == with_one
    assert with_four <= {"sqlite": 2, "postgresql": 1}[app.extensions["tre.db"].engine.dialect.name]


def test_home_page_is_byte_identical_with_the_former_read(app: Any, monkeypatch: Any) -> None:
    """The researcher's home page rendered from the one-statement read and from the former read."""
    w = build_world(app)
    complete_draft(w)
    approved(w)
    ready = ready_for_access(w)
    _returned(w, ready, w.member, "Table 1")
    client = app.test_client()
    with client.session_transaction() as session:
        session["uid"] = w.member.id
        session["epoch"] = w.member.session_epoch
        session["seen"] = session["signed_in"] = int(utcnow().timestamp())

    # The CSRF token is signed with the second it was made in: two renderings a second apart differ there.
    def page() -> bytes:
        return re.sub(rb'name="csrf_token" value="[^"]*"', b'name="csrf_token"', client.get("/").get_data())

    new = page()
    monkeypatch.setattr(worklist, "researcher_projects", _former_researcher_projects)
    former = page()

    assert new.count(b"data-project=") == 3 and b"returned to you for changes" in new
    assert new == former


def test_a_checker_sees_which_waiting_requests_they_hold_a_review_place_on(app: Any) -> None:
    from tests.disclosure.factories import SAFE_CSV, World

    with app.app_context():
        w = World(app)
        claimed = w.submitted(content=SAFE_CSV)
        waiting = w.submitted(content=SAFE_CSV)
        w.svc.claim(w.oscar, claimed.id)
        w.session.commit()

        oscar = {item.request.id: item.held for item in worklist.awaiting_check(w.session, w.oscar)}
        olive = {item.request.id: item.held for item in worklist.awaiting_check(w.session, w.olive)}
        statements, _ = count_statements(app, lambda: worklist.awaiting_check(w.session, w.oscar))

    assert oscar == {claimed.id: True, waiting.id: False}
    assert olive == {claimed.id: False, waiting.id: False}
    assert statements <= 4


def test_a_checkers_shortlist_keeps_every_held_request_then_the_oldest_in_queue_order() -> None:
    held = [False, True, False, False, True, False]
    items = [worklist.CheckerItem(n, "P", utcnow(), place) for n, place in enumerate(held)]

    def numbers(limit: int) -> list[int]:
        return [item.request for item in worklist.checker_shortlist(items, limit)]

    assert numbers(4) == [0, 1, 2, 4]
    assert numbers(2) == [1, 4]  # a checker's own places are never cut, even beyond the limit
    assert numbers(1) == [1, 4]
    assert numbers(10) == [0, 1, 2, 3, 4, 5]
