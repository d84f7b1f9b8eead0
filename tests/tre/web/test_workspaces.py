"""The "Open workspace" button hands a single-use token to the hub in a POST, after the gate."""

from __future__ import annotations

import re
from typing import Any

import pyotp

from tests.projects.factories import build_world, ready_for_access
from tests.tre.helpers import PASSWORD, csrf_token, next_code
from tre.core.identity import Identity, User


def _sign_in(client: Any, user: Any, app: Any) -> None:
    """The projects factories make accounts without passwords: give one by a reset link, enrol MFA, sign in."""
    p = app.extensions["tre.platform"]
    ident = Identity(p.db.session, p.keys, p.audit)
    admin = ident.create_user(None, f"admin-{user.id[:6]}@nhs.example", "Admin", ["administrator"], PASSWORD,
                              bootstrap=True)
    ident.reset_password(ident.issue_reset_link(admin, user.id), PASSWORD)
    secret = ident.start_mfa_enrolment(p.db.session.get(User, user.id))
    ident.finish_mfa_enrolment(user.id, secret, pyotp.TOTP(secret).now())
    client.post("/auth/login", data={"email": user.email, "password": PASSWORD,
                                     "csrf_token": csrf_token(client, "/auth/login")})
    client.post("/auth/mfa", data={"code": next_code(secret), "csrf_token": csrf_token(client, "/auth/mfa")})


def test_member_with_access_gets_a_post_form_to_the_hub_with_a_token(sqlite_app: Any, client: Any) -> None:
    world = build_world(sqlite_app)
    project = ready_for_access(world)
    _sign_in(client, world.member, sqlite_app)

    page = client.get(f"/projects/{project.id}").get_data(as_text=True)
    assert 'id="open-workspace"' in page
    response = client.post(f"/projects/{project.id}/workspace",
                           data={"csrf_token": csrf_token(client, f"/projects/{project.id}")})

    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'action="http://127.0.0.1:8000/hub/tre-login"' in body and 'method="post"' in body
    assert re.search(r'name="token" value="eyJ[^"]+"', body)
    assert "form-action 'self' http://127.0.0.1:8000" in response.headers["Content-Security-Policy"]


def test_outsider_is_refused_a_workspace_token_with_the_gate_reasons(sqlite_app: Any, client: Any) -> None:
    world = build_world(sqlite_app)
    project = ready_for_access(world)
    _sign_in(client, world.outsider, sqlite_app)

    response = client.post(f"/projects/{project.id}/workspace",
                           data={"csrf_token": csrf_token(client, "/")}, follow_redirects=False)

    assert response.status_code == 302
    assert "eyJ" not in response.get_data(as_text=True)
