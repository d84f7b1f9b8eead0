"""Error responses that say what went wrong to the person, and nothing about the system.

Pages get an NHS-styled error page; the API gets ``application/problem+json`` (RFC 9457). No
stack trace, exception text, SQL or identifier ever reaches a response: unexpected errors are
logged server-side with a request id that the response repeats so support can find the log line.
When the database has gone away (a crash, a restart, a failover) the answer is 503 with
``Retry-After``: the transaction was rolled back, so the same request may simply be sent again
(with the same ``Idempotency-Key`` where the API takes one).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, g, jsonify, make_response, render_template, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import BadRequest, Gone, HTTPException, InternalServerError, ServiceUnavailable

from tre.core.db import database_unavailable
from tre.core.filestore import StoredFileNotFound

# Messages we choose for each status; werkzeug's own descriptions are fine to show but generic.
TITLES = {
    400: "Bad request",
    401: "You need to sign in",
    403: "You do not have access to this page",
    404: "Page not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "The file has been deleted",
    413: "The file is too large",
    422: "Check your answers",
    429: "Too many attempts",
    500: "Sorry, there is a problem with the service",
    503: "Sorry, the service is unavailable",
}


def wants_problem_json() -> bool:
    return request.path.startswith("/api/")


def problem(status: int, detail: str | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": TITLES.get(status, "Error"),
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if g.get("request_id"):
        body["request_id"] = g.request_id
    body.update(extra)
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def handle_http_exception(error: HTTPException) -> Response | tuple[str, int]:
    status = error.code or 500
    if status >= 500:
        detail = None
    else:
        # Validation errors from the API layer carry structured messages; keep them. A refusal
        # raised with flask-smorest's abort(message=...) keeps its own words too (tre.api.refuse).
        data = getattr(error, "data", None)
        message = data.get("message") if isinstance(data, dict) else None
        if isinstance(message, str):
            detail = message
        else:
            detail = error.description if isinstance(error.description, str) else None
    if wants_problem_json():
        extra: dict[str, Any] = {}
        data = getattr(error, "data", None)
        if isinstance(data, dict) and "messages" in data:
            extra["errors"] = data["messages"]
        return problem(status, detail, **extra)
    template = f"errors/{status}.html" if status in (400, 401, 403, 404, 500) else "errors/generic.html"
    return (
        render_template(template, status=status, title=TITLES.get(status, "Error"), detail=detail),
        status,
    )


def handle_unexpected(error: Exception) -> Response | tuple[str, int]:
    from flask import current_app

    current_app.logger.exception("unhandled error in request %s", g.get("request_id", "-"))
    return handle_http_exception(InternalServerError())


RETRY_AFTER_SECONDS = 5


def handle_database_error(error: DBAPIError) -> Response:
    from flask import current_app

    if not database_unavailable(error):
        return make_response(handle_unexpected(error))
    # The driver's class only: the statement and its parameters stay out of the log.
    current_app.logger.warning(
        "database unavailable in request %s (%s)", g.get("request_id", "-"), type(error.orig).__name__
    )
    g.user = None  # the page must not load the person's details from the database that is down
    response = make_response(handle_http_exception(ServiceUnavailable()))
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def handle_recursion(error: RecursionError) -> Response | tuple[str, int]:
    """JSON nested thousands deep makes the decoder (``json.loads`` in webargs) recurse past the
    limit: that is a bad request, not a fault of the service. Any other recursion is unexpected."""
    if "decoding a JSON" in str(error):
        return handle_http_exception(BadRequest("The JSON body is nested too deeply"))
    return handle_unexpected(error)


def handle_deleted_file(error: StoredFileNotFound) -> Response | tuple[str, int]:
    """A stored file whose record outlived it (deleted when the project's data was destroyed):
    410 Gone, with what happened, never 500."""
    return handle_http_exception(Gone(DELETED_FILE))


DELETED_FILE = "This file no longer exists: it was deleted, for example when its project's data was destroyed."


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(StoredFileNotFound, handle_deleted_file)
    app.register_error_handler(RecursionError, handle_recursion)
    app.register_error_handler(DBAPIError, handle_database_error)
    app.register_error_handler(Exception, handle_unexpected)
