"""On the embedded database who is asking reads without the write lock (ADR 0049): a request whose
view sends no statement of its own is answered while a writer holds SQLite's lock, and its read sees
only what was committed. Before, its ``BEGIN IMMEDIATE`` waited behind every writer (here: SQLite's
busy timeout, then 503)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tests.tre.helpers import create_user, identity, sign_in


def _holding_the_write_lock(app: Any) -> sqlite3.Connection:
    path = app.extensions["tre.db"].engine.url.database
    outsider = sqlite3.connect(Path(path), isolation_level=None)
    outsider.execute("BEGIN IMMEDIATE")
    return outsider


def _no_patience(app: Any) -> None:
    """The app's pooled connection gives up on SQLite's lock at once, so the old code failed fast."""
    db = app.extensions["tre.db"]
    with db.engine.connect() as conn:
        conn.connection.dbapi_connection.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]
        conn.rollback()


def test_a_personal_token_is_checked_while_a_writer_holds_the_lock(sqlite_app: Any) -> None:
    person, _ = create_user(sqlite_app, "rita@nhs.example", ["researcher"])
    _, token = identity(sqlite_app).create_personal_token(person, "script", 30)
    client, headers = sqlite_app.test_client(), {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/me", headers=headers).status_code == 200
    _no_patience(sqlite_app)
    outsider = _holding_the_write_lock(sqlite_app)
    try:
        # An uncommitted change is not seen: the read is of the last committed state.
        outsider.execute("UPDATE users SET is_active = 0 WHERE id = ?", (person.id,))
        response = client.get("/api/v1/me", headers=headers)
    finally:
        outsider.execute("ROLLBACK")
        outsider.close()
    assert response.status_code == 200
    assert response.get_json()["email"] == "rita@nhs.example"


def test_a_session_is_checked_while_a_writer_holds_the_lock(sqlite_app: Any) -> None:
    person, secret = create_user(sqlite_app, "rita@nhs.example", ["researcher"])
    client = sqlite_app.test_client()
    sign_in(client, person.email, str(secret))
    assert client.get("/account/password").status_code == 200
    _no_patience(sqlite_app)
    outsider = _holding_the_write_lock(sqlite_app)
    try:
        response = client.get("/account/password")
    finally:
        outsider.execute("ROLLBACK")
        outsider.close()
    assert response.status_code == 200
