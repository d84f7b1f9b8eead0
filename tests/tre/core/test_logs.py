"""Logs carry request ids and never a password, token, key or NHS number."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from tests.tre.helpers import PASSWORD, create_user, csrf_token, sign_in
from tre.core import logs


@pytest.fixture
def captured() -> Any:
    stream = io.StringIO()
    logs.configure("DEBUG", "json", stream=stream)
    yield stream
    logs.configure("INFO", "text")


@pytest.mark.parametrize(
    "secret",
    [
        "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        "trepat_0123456789ab_canarysecretvalue",
        "943 476 5919",
        "9434765919",
    ],
)
def test_log_filter_masks_secret_shaped_values(captured: io.StringIO, secret: str) -> None:
    logging.getLogger("tre.test").warning("something mentioned %s in passing", secret)

    assert secret not in captured.getvalue()
    assert logs.MASK in captured.getvalue()


def test_log_filter_masks_secrets_inside_exception_tracebacks(captured: io.StringIO) -> None:
    try:
        raise ValueError("password=hunter2-canary for 943-476-5919")
    except ValueError:
        logging.getLogger("tre.test").exception("it failed")

    out = captured.getvalue()
    assert "hunter2-canary" not in out and "943-476-5919" not in out
    assert "ValueError" in out


def test_log_filter_leaves_ordinary_ids_alone(captured: io.StringIO) -> None:
    logging.getLogger("tre.test").info("job 3f2a9c1234567890abcdef0123456789 finished in 12 s")

    assert "3f2a9c1234567890abcdef0123456789" in captured.getvalue()


def test_json_log_lines_carry_the_request_id(sqlite_app: Any, client: Any, captured: io.StringIO) -> None:
    sqlite_app.logger.setLevel(logging.DEBUG)

    @sqlite_app.get("/log-something")
    def log_something() -> str:
        sqlite_app.logger.info("hello from a request")
        return "ok"

    log_something.__tre_access__ = "public"  # type: ignore[attr-defined]
    client.get("/log-something", headers={"X-Request-Id": "abc123"})

    lines = [json.loads(line) for line in captured.getvalue().splitlines() if "hello from a request" in line]
    assert lines and lines[0]["request_id"] == "abc123"


def test_canary_credentials_used_in_a_session_never_reach_the_logs(
    sqlite_app: Any, client: Any, captured: io.StringIO
) -> None:
    _, secret = create_user(sqlite_app, "canary@nhs.example", ["administrator"])
    assert secret
    token = csrf_token(client, "/auth/login")
    client.post(
        "/auth/login", data={"email": "canary@nhs.example", "password": "wrong-canary-password-77", "csrf_token": token}
    )
    sign_in(client, "canary@nhs.example", secret)
    client.get("/api/v1/me", headers={"Authorization": "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."})

    out = captured.getvalue()
    for canary in ("wrong-canary-password-77", PASSWORD, secret, "eyJhbGciOiJub25lIn0"):
        assert canary not in out
