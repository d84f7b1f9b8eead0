"""Tokens carry a purpose and reach only the routes its row of the purpose table names; every token
of a person dies with a password or MFA reset or a deactivation (and stays dead after
reactivation); a project-bound token dies with its project. ADR 0010. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from sqlalchemy import select

from projects.models import Project
from tests.disclosure.factories import World, platform
from tests.tre.helpers import PASSWORD, create_user, identity, next_code
from tre.access import EVERY_API_ROUTE, HUB_SERVICE, PUBLIC, TOKEN_PURPOSES, declared_access, purpose_allows
from tre.core.audit import AuditEvent
from tre.core.db import transaction, utcnow
from tre.core.identity import PersonalApiToken, User

WORKSPACE_ROUTES = {
    "outputs_api.submit_from_workspace", "outputs_api.resubmit_from_workspace", "outputs_api.request_status",
}


def _api_rules(app: Any) -> list[Any]:
    """Every API route that needs a person (not public, not JupyterHub's service secret)."""
    return [
        rule for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/") and declared_access(app, rule.endpoint) not in (PUBLIC, HUB_SERVICE)
    ]


def _jwt(app: Any, user: User, purpose: str, project_id: str | None = None) -> str:
    return str(platform(app).tokens.issue(user.id, "tre-api", purpose, dt.timedelta(minutes=10), project_id=project_id))


def _call(app: Any, rule: Any, bearer: str) -> Any:
    path = re.sub(r"<[^>]+>", "no-such-id", rule.rule)
    method = sorted(rule.methods - {"HEAD", "OPTIONS"})[0]
    return app.test_client().open(path, method=method, headers={"Authorization": f"Bearer {bearer}"}, json={})


def test_purpose_table_answers_for_every_route_and_purpose(sqlite_app: Any) -> None:
    endpoints = [rule.endpoint for rule in _api_rules(sqlite_app)]
    assert WORKSPACE_ROUTES <= set(endpoints)
    for purpose, allowed in TOKEN_PURPOSES.items():
        for endpoint in endpoints:
            expected = allowed == EVERY_API_ROUTE or endpoint in allowed
            assert purpose_allows(purpose, endpoint) is expected, (purpose, endpoint)
    # A purpose missing from the table (the hub's login token, a made-up one) reaches nothing.
    for purpose in ("hub-login", "output-submit ", "", "API"):
        assert not any(purpose_allows(purpose, e) for e in endpoints)


def test_workspace_token_is_refused_on_every_other_api_route(app: Any) -> None:
    world = World(app)
    bearer = _jwt(app, world.author, "output-submit", world.project.id)
    reached = {}
    for rule in _api_rules(app):
        if rule.endpoint in WORKSPACE_ROUTES:
            continue
        reached[rule.endpoint] = _call(app, rule, bearer).status_code

    assert reached and set(reached.values()) == {403}, {k: v for k, v in reached.items() if v != 403}
    denied = platform(app).db.session.scalars(select(AuditEvent).where(AuditEvent.action == "access.denied")).all()
    assert len(denied) == len(reached)
    assert all("output-submit" in e.detail["reason"] for e in denied)


def test_workspace_token_cannot_create_projects_or_list_them(app: Any) -> None:
    """The red team's attack: the 12-hour workspace token used as the person on the whole API."""
    world = World(app)
    headers = {"Authorization": f"Bearer {_jwt(app, world.author, 'output-submit', world.project.id)}"}
    client = app.test_client()

    created = client.post("/api/v1/projects", headers=headers, json={"title": "Mine", "summary": "x"})
    extended = client.post(
        f"/api/v1/projects/{world.project.id}/extensions", headers=headers,
        json={"new_end_date": "2030-01-01", "reason": "more time"},
    )
    listed = client.get("/api/v1/projects", headers=headers)

    assert (created.status_code, extended.status_code, listed.status_code) == (403, 403, 403)
    s = platform(app).db.session
    assert s.scalars(select(Project).where(Project.title == "Mine")).all() == []


def _personal_token(app: Any, user: User) -> str:
    _, plaintext = identity(app).create_personal_token(user, "script", 30)
    return plaintext


def _me(app: Any, bearer: str) -> int:
    return int(app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {bearer}"}).status_code)


def _reset(app: Any, admin: User, user: User) -> None:
    link = identity(app).issue_reset_link(admin, user.id)
    identity(app).reset_password(link, "marmalade otter violin cascade")


def _deactivate_and_reactivate(app: Any, admin: User, user: User) -> None:
    identity(app).set_active(admin, user.id, False)
    identity(app).set_active(admin, user.id, True)


def _change_password(app: Any, admin: User, user: User, secret: str) -> None:
    identity(app).change_password(user.id, PASSWORD, next_code(secret), "marmalade otter violin cascade")


@pytest.mark.parametrize("event", [_reset, _deactivate_and_reactivate, _change_password])
def test_every_token_of_a_person_dies_with_a_reset_or_deactivation_and_stays_dead(app: Any, event: Any) -> None:
    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])
    user, secret = create_user(app, "rita@nhs.example", ["researcher"])
    jwt_token, personal = _jwt(app, user, "api"), _personal_token(app, user)
    assert (_me(app, jwt_token), _me(app, personal)) == (200, 200)

    if event is _change_password:
        event(app, admin, user, secret)
    else:
        event(app, admin, user)

    assert (_me(app, jwt_token), _me(app, personal)) == (401, 401)
    s = platform(app).db.session
    s.expire_all()
    assert all(t.revoked_at is not None for t in s.scalars(select(PersonalApiToken)))
    reasons = [e.detail["reason"] for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "auth.refused"))]
    assert reasons == ["token superseded", "personal token revoked"]


def test_a_token_minted_after_a_reset_works(app: Any) -> None:
    admin, _ = create_user(app, "adam@nhs.example", ["administrator"])
    user, _ = create_user(app, "rita@nhs.example", ["researcher"])
    identity(app).set_active(admin, user.id, False)
    identity(app).set_active(admin, user.id, True)

    assert _me(app, _jwt(app, user, "api")) == 200


@pytest.mark.parametrize("state", ["suspended", "closed"])
def test_project_bound_token_dies_when_its_project_ends(app: Any, state: str) -> None:
    world = World(app)
    bearer = _jwt(app, world.author, "output-submit", world.project.id)
    status = f"/api/v1/outputs/requests/{world.submitted().id}"
    s = platform(app).db.session
    s.commit()
    client = app.test_client()
    assert client.get(status, headers={"Authorization": f"Bearer {bearer}"}).status_code == 200

    with transaction(s):
        project = s.get(Project, world.project.id)
        project.state = state
        if state == "closed":
            project.closed_at, project.closure_reason = utcnow(), "ended early"

    assert client.get(status, headers={"Authorization": f"Bearer {bearer}"}).status_code == 401
