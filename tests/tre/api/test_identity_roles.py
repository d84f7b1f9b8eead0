"""Changing an account's roles over the API: the reply says what the change's own transaction wrote."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.tre.helpers import create_user


def _admin_headers(app: Any, admin: Any) -> dict[str, str]:
    bearer = app.extensions["tre.platform"].tokens.issue(admin.id, "tre-api", "api", dt.timedelta(minutes=5))
    return {"Authorization": f"Bearer {bearer}"}


def test_role_change_reply_lists_grants_asked_earlier_that_still_wait(app: Any) -> None:
    admin, _ = create_user(app, "ada.admin@nhs.example", ["administrator"])
    person, _ = create_user(app, "rex.researcher@nhs.example", ["researcher"])
    client, headers = app.test_client(), _admin_headers(app, admin)
    asked = client.put(f"/api/v1/users/{person.id}/roles", headers=headers,
                       json={"roles": ["researcher", "output_checker"]})

    changed = client.put(f"/api/v1/users/{person.id}/roles", headers=headers, json={"roles": ["researcher", "auditor"]})

    waiting = client.get("/api/v1/role-grants", headers=headers)
    assert asked.status_code == 200 and asked.json["awaiting_second_administrator"] == ["output_checker"]
    assert changed.status_code == 200 and changed.json["roles"] == ["researcher"]
    assert changed.json["awaiting_second_administrator"] == ["auditor", "output_checker"]
    assert sorted(g["role"] for g in waiting.json if g["user_id"] == person.id) == ["auditor", "output_checker"]
