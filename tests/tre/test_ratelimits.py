"""Rate limits on the ways in, counted per client address (ProxyFix only for trusted proxies), in
memory or in a shared Redis; a refusal is 429 and audited once per client, limit and window."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import REDIS_URL, make_test_app, require_backend
from tests.tre.helpers import create_user, csrf_token
from tre.authn import API_AUDIENCE
from tre.core.audit import AuditEvent
from tre.ratelimits import ENDPOINT_LIMITS, FAILED_AUTHENTICATION_LIMIT

RESETS_ALLOWED = int(ENDPOINT_LIMITS["auth.reset"].split()[0])
FAILURES_ALLOWED = int(FAILED_AUTHENTICATION_LIMIT.split()[0])


def _app(tmp_path: Path, **settings: Any) -> Any:
    from tre.models import metadata

    settings.setdefault("rate_limits", True)
    application = make_test_app(tmp_path / "instance", f"sqlite:///{tmp_path / 'tre.sqlite'}", **settings)
    metadata.create_all(application.extensions["tre.db"].engine)
    return application


@pytest.fixture
def limited_app(tmp_path: Path) -> Iterator[Any]:
    application = _app(tmp_path)
    yield application
    application.extensions["tre.db"].dispose()


def _reset_attempt(client: Any, token: str, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    data = {"token": "not-a-real-link", "password": "x", "csrf_token": token}
    return int(client.post("/auth/reset", data=data, headers=headers).status_code)


def _events(app: Any, action: str) -> list[AuditEvent]:
    db = app.extensions["tre.db"]
    db.session.expire_all()
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_reset_attempts_past_the_limit_get_429_audited_once(limited_app: Any) -> None:
    client = limited_app.test_client()
    token = csrf_token(client, "/auth/reset")
    answers = [_reset_attempt(client, token) for _ in range(RESETS_ALLOWED)]

    refused = [_reset_attempt(client, token) for _ in range(3)]

    assert set(answers) == {400} and refused == [429, 429, 429]
    events = _events(limited_app, "auth.rate_limited")
    assert len(events) == 1
    assert events[0].target_id == "auth.reset" and events[0].detail["client"] == "127.0.0.1"
    assert client.get("/auth/reset").status_code == 200  # the page itself is not limited


def test_forwarded_for_is_ignored_without_trusted_proxies(limited_app: Any) -> None:
    client = limited_app.test_client()
    token = csrf_token(client, "/auth/reset")
    for n in range(RESETS_ALLOWED):
        _reset_attempt(client, token, forwarded_for=f"10.0.0.{n}")

    assert _reset_attempt(client, token, forwarded_for="10.9.9.9") == 429


def test_a_trusted_proxys_forwarded_address_is_the_client(tmp_path: Path) -> None:
    app = _app(tmp_path, trusted_proxies=1)
    client = app.test_client()
    token = csrf_token(client, "/auth/reset")
    for _ in range(RESETS_ALLOWED):
        _reset_attempt(client, token, forwarded_for="10.0.0.1")

    assert _reset_attempt(client, token, forwarded_for="10.0.0.1") == 429
    assert _reset_attempt(client, token, forwarded_for="10.0.0.2") == 400
    assert _events(app, "auth.rate_limited")[0].detail["client"] == "10.0.0.1"
    app.extensions["tre.db"].dispose()


def test_a_flood_of_bad_credentials_is_cut_off_and_bounded_in_the_audit_log(limited_app: Any) -> None:
    client = limited_app.test_client()
    headers = {"Authorization": "Bearer garbage"}
    answers = [client.get("/api/v1/me", headers=headers).status_code for _ in range(FAILURES_ALLOWED + 5)]

    assert answers[:FAILURES_ALLOWED] == [401] * FAILURES_ALLOWED
    assert answers[FAILURES_ALLOWED:] == [429] * 5
    assert len(_events(limited_app, "auth.refused")) == FAILURES_ALLOWED
    assert len(_events(limited_app, "auth.rate_limited")) == 1


def test_counters_in_redis_are_shared_by_every_process_of_an_instance(tmp_path: Path) -> None:
    require_backend("redis", REDIS_URL)
    instance = tmp_path / f"shared-{uuid.uuid4().hex[:8]}"
    first = _app(instance, rate_limit_storage_url=REDIS_URL)
    second = _app(instance, rate_limit_storage_url=REDIS_URL)
    client_a, client_b = first.test_client(), second.test_client()
    token_a, token_b = csrf_token(client_a, "/auth/reset"), csrf_token(client_b, "/auth/reset")
    for n in range(RESETS_ALLOWED):
        _reset_attempt(client_a if n % 2 else client_b, token_a if n % 2 else token_b)

    assert _reset_attempt(client_a, token_a) == 429
    assert _reset_attempt(client_b, token_b) == 429
    for application in (first, second):
        application.extensions["tre.db"].dispose()


def test_a_refusal_says_when_to_come_back_and_other_answers_say_nothing_of_limits(limited_app: Any) -> None:
    client = limited_app.test_client()
    token = csrf_token(client, "/auth/reset")
    for _ in range(RESETS_ALLOWED):
        _reset_attempt(client, token)

    refused = client.post("/auth/reset", data={"token": "x", "password": "x", "csrf_token": token})
    page = client.get("/auth/reset")

    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "Too many attempts" in refused.get_data(as_text=True)
    assert "Retry-After" not in page.headers and "X-RateLimit-Limit" not in page.headers


def test_limits_can_be_turned_off_for_a_load_rig(tmp_path: Path) -> None:
    app = _app(tmp_path, rate_limits=False)
    client = app.test_client()
    token = csrf_token(client, "/auth/reset")

    assert {_reset_attempt(client, token) for _ in range(RESETS_ALLOWED + 2)} == {400}
    app.extensions["tre.db"].dispose()


def _valid_bearer(app: Any) -> dict[str, str]:
    user, _ = create_user(app, f"limited-{uuid.uuid4().hex[:8]}@example.org", ["researcher"])
    token = app.extensions["tre.platform"].tokens.issue(user.id, API_AUDIENCE, "api", dt.timedelta(minutes=10))
    return {"Authorization": f"Bearer {token}"}


def test_past_the_failed_authentication_limit_every_route_refuses_even_a_valid_credential(limited_app: Any) -> None:
    valid, wrong = _valid_bearer(limited_app), {"Authorization": "Bearer garbage"}
    client = limited_app.test_client()
    token = csrf_token(client, "/auth/login")
    assert client.get("/api/v1/me", headers=valid).status_code == 200
    failures = [client.get("/api/v1/me", headers=wrong).status_code for _ in range(FAILURES_ALLOWED)]

    assert failures == [401] * FAILURES_ALLOWED
    assert [client.get(path, headers=valid).status_code for path in ("/api/v1/me", "/api/v1/version")] == [429, 429]
    assert [client.get(path).status_code for path in ("/", "/about", "/auth/login")] == [429, 429, 429]
    assert client.post("/auth/login", data={"email": "x", "password": "x", "csrf_token": token}).status_code == 429


class _RedisCommands:
    """Counts the commands this process sends to Redis, on every redis-py connection (a real Redis
    answers them; nothing of the limiter is replaced)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.connection import AbstractConnection

        self.sent: list[Any] = []
        send = AbstractConnection.send_packed_command

        def counted(connection: Any, command: Any, *args: Any, **kwargs: Any) -> None:
            self.sent.append(command)
            send(connection, command, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)

    def during(self, action: Any) -> tuple[Any, int]:
        self.sent.clear()
        result = action()
        return result, len(self.sent)


def test_failed_authentications_in_redis_count_across_processes_at_one_command_a_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_backend("redis", REDIS_URL)
    instance = tmp_path / f"shared-{uuid.uuid4().hex[:8]}"
    first = _app(instance, rate_limit_storage_url=REDIS_URL)
    second = _app(instance, rate_limit_storage_url=REDIS_URL)
    valid, wrong = _valid_bearer(first), {"Authorization": "Bearer garbage"}
    client_a, client_b = first.test_client(), second.test_client()
    commands = _RedisCommands(monkeypatch)
    for client in (client_a, client_b):  # each process's first request opens its connection
        assert client.get("/api/v1/version", headers=valid).status_code == 200

    answered, sent_answered = commands.during(lambda: client_a.get("/api/v1/me", headers=valid))
    refused, sent_refused = commands.during(lambda: client_b.get("/api/v1/me", headers=wrong))
    # An answered request tests the limit (one round trip); a refused credential also counts one.
    assert (answered.status_code, sent_answered) == (200, 1)
    assert (refused.status_code, sent_refused) == (401, 2)

    failures = [(client_a if n % 2 else client_b).get("/api/v1/me", headers=wrong).status_code
                for n in range(FAILURES_ALLOWED - 1)]
    assert failures == [401] * (FAILURES_ALLOWED - 1)
    assert client_a.get("/api/v1/me", headers=valid).status_code == 429
    assert client_b.get("/api/v1/version", headers=valid).status_code == 429
    for application in (first, second):
        application.extensions["tre.db"].dispose()
