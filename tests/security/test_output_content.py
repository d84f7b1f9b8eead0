"""Attacks on an output's content from outside the workspace: every actor × state × route.

The rule (docs/outputs.md, disclosure/visibility.py): outside the workspace, the content of an output
file is shown only to an output checker while the request is theirs to review, and to the team only
as released content of a released, unrevoked request of a project whose access gate is open. Every
other attempt is refused and audited.

One world per backend (SQLite and PostgreSQL, each in a database of its own) holds a request in each
state; every actor asks for its content through every route that serves content (the page, ``?raw=1``,
the API, the release bundle on the web and over the API). Content must come back exactly where the
rule allows, and each refusal must leave a ``denied`` audit event.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select, update

from disclosure import rules
from disclosure.models import OutputRequest
from projects.models import Project, ProjectMember
from tests.disclosure.factories import SAFE_CSV, SMALL_CELL_CSV, active_project, person, run_queued_jobs
from tests.disclosure.factories import outputs as outputs_service
from tests.security.backends import BACKENDS, app_on
from tests.security.figures import record
from tre.core import jobs
from tre.core.audit import AuditEvent
from tre.core.db import transaction, utcnow
from tre.core.identity import Identity

ACTORS = ("author", "member", "removed_member", "other_project", "checker_not_assigned", "auditor", "checker")
TEAM = ("author", "member")
# The states a request can be in when someone asks for its content, each on its own request.
STATES = (
    "draft",
    "submitted",
    "failed_checks",
    "awaiting_review",
    "returned",
    "withdrawn",
    "approved",
    "released",
    "revoked",
    "suspended_under_review",
    "suspended_released",
    "closed_under_review",
    "closed_released",
)
FILE_ROUTES = ("page", "raw", "api")
BUNDLE_ROUTES = ("bundle", "api_bundle")
ROUTES = FILE_ROUTES + BUNDLE_ROUTES
CONTENT_ACTIONS = ("output.view_file", "output.download")


def rule_allows(actor: str, state: str, route: str) -> bool:
    """The rule, written out for the test: who must see the content of a request in ``state``."""
    if route in FILE_ROUTES and actor == "checker":
        return state in {"submitted", "failed_checks", "awaiting_review", "approved"}
    return actor in TEAM and state == "released"


@dataclass
class ContentWorld:
    app: Any
    backend: str
    people: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def _build(app: Any, backend: str) -> ContentWorld:
    jobs.set_dispatcher(None)
    world = ContentWorld(app, backend)
    p = world.people
    p["author"] = person(app, "rita", ["researcher"])
    p["member"] = person(app, "sam", ["researcher"])
    p["removed_member"] = person(app, "lee", ["researcher"])
    p["other_project"] = person(app, "rob", ["researcher"])
    p["checker"] = person(app, "olive", ["output_checker"])
    second = person(app, "oscar", ["output_checker"])
    p["checker_not_assigned"] = person(app, "otto", ["output_checker"])
    p["auditor"] = person(app, "audrey", ["auditor"])
    team = [p["member"], p["removed_member"]]
    main = active_project(app, p["author"], team)
    suspended = active_project(app, p["author"], team, title="Suspended study")
    closed = active_project(app, p["author"], team, title="Closed study")
    active_project(app, p["other_project"], title="Another team's study")
    svc = outputs_service(app)
    author, olive = p["author"], p["checker"]

    def draft(project: Project, content: bytes = SAFE_CSV) -> str:
        req, _ = svc.create_request(author, project.id, "Admissions by region")
        svc.set_group(author, req.id, "tables", "Admissions by region and sex, adults 2020", "Rounded to 5")
        svc.add_file(author, req.id, "table.csv", content, group="tables")
        return req.id

    def checked(project: Project, content: bytes = SAFE_CSV) -> str:
        request_id = draft(project, content)
        svc.submit(author, request_id)
        run_queued_jobs(app)
        svc.claim(olive, request_id)
        return request_id

    def reviewed(project: Project, vote: str = rules.VOTE_APPROVE) -> str:
        request_id = checked(project)
        svc.claim(second, request_id)
        for checker in (olive, second):
            for f in svc._get(svc.session, request_id).current_files:
                svc.vote(checker, request_id, f.id, vote, "Round the counts" if vote != rules.VOTE_APPROVE else "")
            svc.submit_review(checker, request_id)
        return request_id

    def released(project: Project) -> str:
        request_id = reviewed(project)
        svc.consolidate(olive, request_id, rules.OUTCOME_APPROVE)
        svc.release(second, request_id)
        return request_id

    r = world.requests
    r["draft"] = draft(main)
    r["failed_checks"] = checked(main, SMALL_CELL_CSV)
    r["awaiting_review"] = checked(main)
    r["returned"] = reviewed(main, rules.VOTE_CHANGES)
    svc.consolidate(olive, r["returned"], rules.OUTCOME_RETURN, "Round the counts to 5")
    r["withdrawn"] = checked(main)
    svc.withdraw(author, r["withdrawn"])
    r["approved"] = reviewed(main)
    svc.consolidate(olive, r["approved"], rules.OUTCOME_APPROVE)
    r["released"] = released(main)
    r["revoked"] = released(main)
    svc.revoke(second, r["revoked"], "A small cell was missed")
    r["suspended_under_review"] = checked(suspended)
    r["suspended_released"] = released(suspended)
    r["closed_under_review"] = checked(closed)
    r["closed_released"] = released(closed)
    # Submitted last, its automated check left queued: the request stays "submitted".
    r["submitted"] = draft(main)
    svc.submit(author, r["submitted"])
    svc.claim(olive, r["submitted"])

    session = app.extensions["tre.db"].session
    with transaction(session) as s:
        s.execute(
            update(ProjectMember)
            .where(ProjectMember.user_id == p["removed_member"].id)
            .values(removed_at=utcnow(), removed_by=author.id)
        )
        s.execute(update(Project).where(Project.id == suspended.id).values(state="suspended"))
        s.execute(
            update(Project)
            .where(Project.id == closed.id)
            .values(state="closed", closed_at=utcnow(), closure_reason="Study finished")
        )
    session.expire_all()
    states = dict(session.execute(select(OutputRequest.id, OutputRequest.state)).all())
    expected = {
        "failed_checks": rules.AWAITING_REVIEW,
        "suspended_under_review": rules.AWAITING_REVIEW,
        "closed_under_review": rules.AWAITING_REVIEW,
        "suspended_released": rules.RELEASED,
        "closed_released": rules.RELEASED,
    }
    for key, request_id in r.items():
        assert states[request_id] == expected.get(key, key), key
        world.files[key] = svc._get(session, request_id).current_files[0].id
    failed = svc.checks_of(svc._get(session, r["failed_checks"]))
    assert [c.status for c in failed.values()] == ["fail"]

    plat = app.extensions["tre.platform"]
    ident = Identity(plat.db.session, plat.keys, plat.audit)
    for actor, user in p.items():
        _, world.tokens[actor] = ident.create_personal_token(user, "content attack", 30)
    return world


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContentWorld]:
    with app_on(request.param, tmp_path_factory.mktemp(f"content-{request.param}")) as app:
        yield _build(app, request.param)


def _ask(world: ContentWorld, actor: str, state: str, route: str) -> Any:
    client = world.app.test_client()
    file_id, request_id = world.files[state], world.requests[state]
    if route in ("api", "api_bundle"):
        url = f"/api/v1/outputs/files/{file_id}" if route == "api" else f"/api/v1/outputs/requests/{request_id}/bundle"
        return client.get(url, headers={"Authorization": f"Bearer {world.tokens[actor]}"})
    user = world.people[actor]
    with client.session_transaction() as sess:
        now = int(utcnow().timestamp())
        sess.update({"uid": user.id, "epoch": user.session_epoch, "seen": now, "signed_in": now})
    url = {
        "page": f"/outputs/files/{file_id}",
        "raw": f"/outputs/files/{file_id}?raw=1",
        "bundle": f"/outputs/requests/{request_id}/bundle",
    }[route]
    return client.get(url)


def _served_content(route: str, response: Any) -> bool:
    if response.status_code != 200:
        return False
    body = response.get_data()
    if route in BUNDLE_ROUTES:
        return zipfile.ZipFile(io.BytesIO(body)).read("files/tables/table.csv") == SAFE_CSV
    if route == "page":
        return b"North" in body and b"<td" in body
    return body in (SAFE_CSV, SMALL_CELL_CSV)


def _denied_events(world: ContentWorld) -> int:
    session = world.app.extensions["tre.db"].session
    session.expire_all()
    count = session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.action.in_(CONTENT_ACTIONS), AuditEvent.outcome == "denied")
    )
    session.rollback()
    return int(count or 0)


def test_content_is_served_only_where_the_rule_allows_and_every_refusal_is_audited(world: ContentWorld) -> None:
    failures: list[str] = []
    cells = served = 0
    for state in STATES:
        for actor in ACTORS:
            for route in ROUTES:
                before = _denied_events(world)
                response = _ask(world, actor, state, route)
                got = _served_content(route, response)
                want = rule_allows(actor, state, route)
                cells += 1
                served += got
                if got != want:
                    failures.append(
                        f"{actor:<21} {state:<23} {route:<10} -> {response.status_code}, "
                        f"content {'served' if got else 'refused'}, expected {'served' if want else 'refused'}"
                    )
                elif not want:
                    if response.status_code not in (403, 404):
                        failures.append(f"{actor} {state} {route}: refused with {response.status_code}")
                    if _denied_events(world) != before + 1:
                        failures.append(f"{actor} {state} {route}: the refusal was not audited")
                response.close()
    record(f"output content attack cells (actor × state × route) on {world.backend}", cells)
    print(f"output content on {world.backend}: {cells} cells, content served in {served}")
    assert not failures, f"{len(failures)} of {cells} cells differ:\n" + "\n".join(failures)


def _checker_names_and_ids(world: ContentWorld) -> list[str]:
    from tre.core.identity import User

    session = world.app.extensions["tre.db"].session
    checkers = session.scalars(select(User).where(User.email.in_(["olive@nhs.example", "oscar@nhs.example"]))).all()
    session.rollback()
    assert len(checkers) == 2
    return [value for c in checkers for value in (c.id, c.display_name)]


def test_the_team_never_learns_who_voted_how_from_the_bundle_page_or_api(world: ContentWorld) -> None:
    bundle = zipfile.ZipFile(io.BytesIO(_ask(world, "member", "released", "bundle").get_data()))
    records = "\n".join(bundle.read(name).decode() for name in bundle.namelist() if not name.startswith("files/"))
    client = world.app.test_client()
    returned_id = world.requests["returned"]
    api = client.get(
        f"/api/v1/outputs/requests/{returned_id}", headers={"Authorization": f"Bearer {world.tokens['member']}"}
    )
    user = world.people["member"]
    with client.session_transaction() as sess:
        now = int(utcnow().timestamp())
        sess.update({"uid": user.id, "epoch": user.session_epoch, "seen": now, "signed_in": now})
    page = client.get(f"/outputs/requests/{returned_id}")

    assert api.status_code == 200 and page.status_code == 200
    assert "Round the counts" in page.get_data(as_text=True)  # what was asked, without who asked it
    for text in (records, api.get_data(as_text=True), page.get_data(as_text=True)):
        for secret in _checker_names_and_ids(world):
            assert secret not in text
    assert "reviewer_id" not in records and "decided_by" not in records and "released_by" not in records
