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
from tre.ratelimits import CLEAN_FOR_SECONDS, ENDPOINT_LIMITS, FAILED_AUTHENTICATION_LIMIT

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


class _TrustClock:
    """The clock by which an app's failed-authentication limit trusts an address's clean answer."""

    def __init__(self, *apps: Any) -> None:
        self.now = 1000.0
        for app in apps:
            app.extensions["tre.failed_authentication_limit"].clock = lambda: self.now

    def past_trust(self) -> None:
        self.now += CLEAN_FOR_SECONDS + 0.001


def _two_processes(tmp_path: Path) -> tuple[Any, Any, _TrustClock]:
    """Two apps of one instance (two web processes) counting in the test Redis, on one trust clock."""
    require_backend("redis", REDIS_URL)
    instance = tmp_path / f"shared-{uuid.uuid4().hex[:8]}"
    first = _app(instance, rate_limit_storage_url=REDIS_URL)
    second = _app(instance, rate_limit_storage_url=REDIS_URL)
    return first, second, _TrustClock(first, second)


def test_failed_authentications_in_redis_count_across_processes_at_one_command_a_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, clock = _two_processes(tmp_path)
    valid, wrong = _valid_bearer(first), {"Authorization": "Bearer garbage"}
    client_a, client_b = first.test_client(), second.test_client()
    commands = _RedisCommands(monkeypatch)
    for client in (client_a, client_b):  # each process's first request opens its connection
        assert client.get("/api/v1/version", headers=valid).status_code == 200
    clock.past_trust()
    tested = commands.during(lambda: client_a.get("/api/v1/version", headers=valid).status_code)
    trusted = commands.during(lambda: client_a.get("/api/v1/me", headers=valid).status_code)
    clock.past_trust()
    asked_again = commands.during(lambda: client_a.get("/api/v1/me", headers=valid).status_code)
    refused = commands.during(lambda: client_b.get("/api/v1/me", headers=wrong).status_code)
    after_refusal = commands.during(lambda: client_b.get("/api/v1/me", headers=valid).status_code)
    # Within the trust, an answered request sends nothing; past it, one test. A refused credential
    # counts (one command) and makes the next request from that address ask again.
    assert (tested, trusted, asked_again) == ((200, 1), (200, 0), (200, 1))
    assert (refused, after_refusal) == ((401, 2), (200, 1))

    failures = [(client_a if n % 2 else client_b).get("/api/v1/me", headers=wrong).status_code
                for n in range(FAILURES_ALLOWED - 1)]
    assert failures == [401] * (FAILURES_ALLOWED - 1)
    # Each process refused a credential since its last test, so each asks the shared count.
    assert client_a.get("/api/v1/me", headers=valid).status_code == 429
    assert client_b.get("/api/v1/version", headers=valid).status_code == 429
    for application in (first, second):
        application.extensions["tre.db"].dispose()


def test_a_process_that_trusted_an_address_lets_through_at_most_one_request_past_the_limit(
    tmp_path: Path,
) -> None:
    # The attack: a flood of wrong credentials sent to one process while another process still
    # trusts the address's last clean answer. The trusting process lets one request through; if it
    # fails it counts and the trust is gone, so the next one is refused, however fast they come.
    trusting, flooded, clock = _two_processes(tmp_path)
    valid, wrong = _valid_bearer(trusting), {"Authorization": "Bearer garbage"}
    quiet, loud = trusting.test_client(), flooded.test_client()
    assert quiet.get("/api/v1/me", headers=valid).status_code == 200  # trusted from now on

    flood = [loud.get("/api/v1/me", headers=wrong).status_code for _ in range(FAILURES_ALLOWED)]
    slipped = quiet.get("/api/v1/me", headers=wrong).status_code
    after = [quiet.get("/api/v1/me", headers=wrong).status_code for _ in range(3)]

    assert flood == [401] * FAILURES_ALLOWED and loud.get("/api/v1/version").status_code == 429
    assert (slipped, after) == (401, [429, 429, 429])
    clock.past_trust()
    assert quiet.get("/api/v1/me", headers=valid).status_code == 429
    for application in (trusting, flooded):
        application.extensions["tre.db"].dispose()


STORAGES = ["memory", "redis"]


def _app_on(tmp_path: Path, storage: str, **settings: Any) -> Any:
    """An app counting its limits in memory or in the test Redis, under an instance path of its own
    (so its keys meet no other test's)."""
    if storage == "redis":
        require_backend("redis", REDIS_URL)
        settings["rate_limit_storage_url"] = REDIS_URL
    return _app(tmp_path / f"{storage}-{uuid.uuid4().hex[:8]}", **settings)


class _Clock:
    """The clock the `limits` storages read (both take each entry's time from Python's clock), set by
    the test; everything else keeps the real one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, now: float) -> None:
        import types

        import limits.storage.memory
        import limits.storage.redis

        self.now = now
        fake = types.SimpleNamespace(time=lambda: self.now)
        for module in (limits.storage.memory, limits.storage.redis):
            monkeypatch.setattr(module, "time", fake)


@pytest.mark.parametrize("storage", STORAGES)
def test_a_flood_of_bad_credentials_closes_every_route_to_that_address_only(tmp_path: Path, storage: str) -> None:
    app = _app_on(tmp_path, storage)
    valid, wrong = _valid_bearer(app), {"Authorization": "Bearer garbage"}
    attacker, bystander = app.test_client(), app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    bystander.environ_base["REMOTE_ADDR"] = "192.0.2.8"
    failures = [attacker.get("/api/v1/me", headers=wrong).status_code for _ in range(FAILURES_ALLOWED)]

    refused = [attacker.get(path, headers=valid) for path in ("/api/v1/me", "/api/v1/version", "/healthz", "/")]
    more = [attacker.get("/api/v1/me", headers=wrong).status_code for _ in range(3)]

    assert failures == [401] * FAILURES_ALLOWED
    assert [r.status_code for r in refused] == [429] * 4 and more == [429] * 3
    assert all(1 <= int(r.headers["Retry-After"]) <= 60 for r in refused)
    assert bystander.get("/api/v1/me", headers=valid).status_code == 200
    assert bystander.get("/api/v1/me", headers=wrong).status_code == 401
    events = _events(app, "auth.rate_limited")
    assert len(events) == 1 and events[0].detail["client"] == "192.0.2.7"
    assert events[0].detail["limit"] == "60 per 1 minute"
    app.extensions["tre.db"].dispose()


@pytest.mark.parametrize("storage", STORAGES)
def test_failed_authentications_are_counted_in_a_moving_window(
    tmp_path: Path, storage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fixed window would let a new window's limit follow the old one's at once: twice the limit
    # across the edge. The moving window counts the failures of the last 60 seconds, whenever.
    app = _app_on(tmp_path, storage)
    valid, wrong = _valid_bearer(app), {"Authorization": "Bearer garbage"}
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    start = float(int(dt.datetime.now(dt.UTC).timestamp()))
    clock = _Clock(monkeypatch, start)
    first = client.get("/api/v1/me", headers=wrong).status_code
    clock.now = start + 59
    burst = [client.get("/api/v1/me", headers=wrong).status_code for _ in range(FAILURES_ALLOWED - 1)]

    clock.now = start + 61  # the first failure has left the window; the other 59 have not
    one_more = client.get("/api/v1/me", headers=wrong).status_code
    then_valid = client.get("/api/v1/me", headers=valid).status_code
    clock.now = start + 59 + 61  # only the last failure is younger than a minute
    later = client.get("/api/v1/me", headers=valid).status_code

    assert [first, *burst, one_more] == [401] * (FAILURES_ALLOWED + 1)
    assert (then_valid, later) == (429, 200)
    app.extensions["tre.db"].dispose()


@pytest.mark.parametrize("storage", STORAGES)
def test_an_endpoint_limit_counts_posts_only_and_leaves_other_routes_open(tmp_path: Path, storage: str) -> None:
    app = _app_on(tmp_path, storage)
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = f"203.0.113.{uuid.uuid4().int % 250 + 1}"
    token = csrf_token(client, "/auth/reset")
    answers = [_reset_attempt(client, token) for _ in range(RESETS_ALLOWED)]

    refused = client.post("/auth/reset", data={"token": "x", "password": "x", "csrf_token": token})

    assert set(answers) == {400} and refused.status_code == 429 and "Retry-After" in refused.headers
    assert [client.get(path).status_code for path in ("/auth/reset", "/auth/login", "/healthz")] == [200, 200, 200]
    assert _reset_attempt(client, token) == 429
    assert len(_events(app, "auth.rate_limited")) == 1
    app.extensions["tre.db"].dispose()


def test_with_limits_off_bad_credentials_are_never_cut_off(tmp_path: Path) -> None:
    app = _app(tmp_path, rate_limits=False)
    client = app.test_client()

    answers = {client.get("/api/v1/me", headers={"Authorization": "Bearer garbage"}).status_code
               for _ in range(FAILURES_ALLOWED + 5)}

    assert answers == {401}
    app.extensions["tre.db"].dispose()


def test_flask_limiters_evaluation_runs_only_for_a_post_it_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its evaluation (resolving, filtering and scoping limits) found nothing to do on any other
    # route but cost a third of /healthz's CPU (ADR 0056); the application-wide limit is tested
    # without it.
    from flask_limiter import Limiter

    entered: list[str | None] = []
    evaluate = Limiter._check_request_limit

    def spy(limiter: Any, *args: Any, **kwargs: Any) -> None:
        from flask import request

        entered.append(request.endpoint)
        evaluate(limiter, *args, **kwargs)

    monkeypatch.setattr(Limiter, "_check_request_limit", spy)
    app = _app(tmp_path)
    valid = _valid_bearer(app)
    client = app.test_client()
    token = csrf_token(client, "/auth/reset")
    entered.clear()
    for path in ("/healthz", "/api/v1/version", "/api/v1/me", "/about", "/auth/login", "/auth/reset"):
        assert client.get(path, headers=valid if path.startswith("/api/") else {}).status_code == 200
    assert client.get("/no-such-page").status_code == 404
    assert entered == []

    _reset_attempt(client, token)

    assert entered and set(entered) == {"auth.reset"}
    app.extensions["tre.db"].dispose()


def test_no_limit_is_parsed_while_answering_a_request_it_does_not_decorate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from limits import RateLimitItem

    app = _app(tmp_path)
    valid = _valid_bearer(app)
    client = app.test_client()
    client.get("/healthz")
    parsed: list[str] = []
    make = RateLimitItem.__init__

    def spy(item: Any, *args: Any, **kwargs: Any) -> None:
        parsed.append(type(item).__name__)
        make(item, *args, **kwargs)

    monkeypatch.setattr(RateLimitItem, "__init__", spy)

    statuses = [client.get(path, headers=valid).status_code for path in ("/healthz", "/api/v1/version") * 10]
    statuses.append(client.get("/api/v1/me", headers={"Authorization": "Bearer garbage"}).status_code)

    assert statuses == [200] * 20 + [401] and parsed == []
    app.extensions["tre.db"].dispose()
