"""The app as a person and a program meet it: pages, error responses, health, the API document."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from tre.access import ATTR, declared_access, public


def test_home_page_is_styled_with_the_nhs_frontend_and_names_each_kind_of_user(client: Any) -> None:
    response = client.get("/")

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "nhsuk-frontend.min.css" in page
    for audience in ("I am a researcher", "I sit on the data access committee", "I check outputs"):
        assert audience in page


def test_static_toolkit_assets_are_served_locally(client: Any) -> None:
    for path in ("/static/nhsuk/nhsuk-frontend.min.css", "/static/nhsuk/logo.svg", "/static/swagger/swagger-ui.css"):
        response = client.get(path)
        response.close()
        assert response.status_code == 200, path


def test_unknown_page_gets_the_styled_404_page(client: Any) -> None:
    response = client.get("/no-such-page")

    assert response.status_code == 404
    assert "Page not found" in response.get_data(as_text=True)


def test_unexpected_error_page_leaks_no_exception_text(sqlite_app: Flask) -> None:
    @sqlite_app.get("/explode")
    @public
    def explode() -> str:
        raise RuntimeError("secret-canary-1234 SELECT * FROM users")

    sqlite_app.config["PROPAGATE_EXCEPTIONS"] = False
    response = sqlite_app.test_client().get("/explode")

    body = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "secret-canary-1234" not in body and "SELECT" not in body and "Traceback" not in body
    assert "Sorry, there is a problem with the service" in body


def test_api_errors_are_problem_json(client: Any) -> None:
    response = client.get("/api/v1/no-such-thing")

    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == 404


def test_api_route_needing_a_permission_refuses_anonymous_callers(client: Any) -> None:
    response = client.get("/api/v1/jobs/abc")

    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"


def test_route_declaring_nothing_is_refused_to_everyone(sqlite_app: Flask) -> None:
    @sqlite_app.get("/forgotten")
    def forgotten() -> str:
        return "should never be served"

    response = sqlite_app.test_client().get("/forgotten")

    assert response.status_code == 403


def test_every_route_declares_who_may_reach_it(sqlite_app: Flask) -> None:
    undeclared = [
        rule.rule
        for rule in sqlite_app.url_map.iter_rules()
        if declared_access(sqlite_app, rule.endpoint) is None
    ]
    assert undeclared == []


def test_health_and_readiness_report_ok_when_database_and_broker_answer(client: Any) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readiness_names_the_database_when_it_is_down(tmp_path: Any) -> None:
    from tests.conftest import make_test_app

    app = make_test_app(tmp_path / "inst", f"sqlite:///{tmp_path / 'missing' / 'no.sqlite'}")
    response = app.test_client().get("/readyz")

    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] == "unavailable"


def test_openapi_document_describes_the_api_and_its_docs_page_is_served(client: Any) -> None:
    spec = client.get("/api/openapi.json").get_json()

    assert spec["openapi"].startswith("3.")
    assert "/api/v1/version" in spec["paths"]
    assert "/api/v1/jobs/{job_id}" in spec["paths"]
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and "/static/swagger/swagger-ui-bundle.js" in docs.get_data(as_text=True)


def test_responses_carry_security_headers_and_a_request_id(client: Any) -> None:
    response = client.get("/")

    assert response.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"].split("script-src")[1].split(";")[0]
    assert response.headers["X-Request-Id"]


@pytest.mark.parametrize("incoming", ["abc\nforged log line", "x" * 200])
def test_request_id_from_a_caller_is_replaced_when_not_plain(client: Any, incoming: str) -> None:
    response = client.get("/healthz", headers={"X-Request-Id": incoming.replace("\n", "")})
    assert response.headers["X-Request-Id"] != incoming


def test_access_marker_attribute_name_is_stable() -> None:
    # Other packages mark class-based views with this attribute; renaming it would open routes.
    assert ATTR == "__tre_access__"


def _route_that_reads_the_database(app: Flask, path: str) -> None:
    from sqlalchemy import text

    @app.get(path, endpoint=path)
    @public
    def reads() -> str:
        return str(app.extensions["tre.db"].session.execute(text("SELECT count(*) FROM no_such_table")).scalar())


@pytest.mark.parametrize("path", ["/reads-the-database", "/api/v1/reads-the-database"])
def test_a_database_that_cannot_be_reached_is_answered_503_with_retry_after_and_no_detail(
    tmp_path: Any, path: str
) -> None:
    import socket

    from tests.conftest import make_test_app

    with socket.socket() as s:  # a port nothing listens on: the connection is refused, as when the server is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = make_test_app(tmp_path / "inst", f"postgresql+psycopg://postgres@127.0.0.1:{port}/tre")
    _route_that_reads_the_database(app, path)

    response = app.test_client().get(path)

    body = response.get_data(as_text=True)
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert "Sorry, the service is unavailable" in body
    assert "no_such_table" not in body and "psycopg" not in body and str(port) not in body
    assert response.mimetype == ("application/problem+json" if path.startswith("/api/") else "text/html")


def test_a_database_error_that_is_not_an_outage_stays_a_500_without_the_sql(sqlite_app: Flask) -> None:
    _route_that_reads_the_database(sqlite_app, "/reads-the-database")

    response = sqlite_app.test_client().get("/reads-the-database")

    body = response.get_data(as_text=True)
    assert response.status_code == 500 and "Retry-After" not in response.headers
    assert "no_such_table" not in body and "SELECT" not in body and "Traceback" not in body


def test_security_headers_come_once_in_a_fixed_order_and_a_views_own_header_is_kept(client: Any) -> None:
    page = client.get("/about", headers={"X-Request-Id": "abc123"})
    static = client.get("/static/tre.css")
    docs = client.get("/api/docs")

    names = [name for name, _ in page.headers]
    assert names[names.index("X-Content-Type-Options"):] == [
        "X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Content-Security-Policy",
        "Cache-Control", "X-Request-Id", "Vary",
    ]
    assert page.headers["X-Request-Id"] == "abc123" and page.headers["Cache-Control"] == "no-store"
    assert static.headers.getlist("Cache-Control") == ["no-cache"]  # send_file's own, not replaced
    assert len(static.headers.getlist("Content-Security-Policy")) == 1
    assert "script-src 'self' 'unsafe-inline';" in docs.headers["Content-Security-Policy"]
    assert "'unsafe-inline';" not in page.headers["Content-Security-Policy"].split("script-src")[1].split(";")[0] + ";"
    static.close()


def test_the_session_signer_is_built_once_per_secret_key(sqlite_app: Flask, monkeypatch: Any) -> None:
    from flask.sessions import SecureCookieSessionInterface

    built: list[object] = []
    original = SecureCookieSessionInterface.get_signing_serializer

    def counting(self: Any, app: Flask) -> Any:
        built.append(app.secret_key)
        return original(self, app)

    monkeypatch.setattr(SecureCookieSessionInterface, "get_signing_serializer", counting)
    sqlite_app.secret_key = "a key no request has used yet"
    client = sqlite_app.test_client()
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert built == ["a key no request has used yet"]

    sqlite_app.secret_key = "another key for the next request"
    assert client.get("/healthz").status_code == 200
    assert built[-1] == "another key for the next request" and len(built) == 2
