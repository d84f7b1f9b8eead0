"""Logging: structured JSON lines (or plain text on one machine), each carrying the request or job
id, and a last-line-of-defence filter that masks anything shaped like a secret or an identifier.

Code should never log secrets or identifiers in the first place; the filter exists for the day
somebody forgets (an exception message quoting a value, a library logging a header).
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("tre_request_id", default=None)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("tre_job_id", default=None)

MASK = "[redacted]"
_PATTERNS = [
    # JSON web tokens (three base64url parts, the first a JSON header).
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
    # Our personal API tokens.
    re.compile(r"trepat_[A-Za-z0-9_-]+"),
    # Bearer credentials in any header dump.
    re.compile(r"(?i)(bearer\s+)[^\s'\"]+"),
    # OAuth / OpenID Connect fields (client_secret=..., "access_token": "...", code_verifier: ...).
    re.compile(
        r"(?i)((?:client_secret|code_verifier|access_token|refresh_token|id_token)[\"']?)(\s*[=:]\s*[\"']?)[^\s,;'\"&}]+"
    ),
    # key=value pairs whose key says they are secret.
    re.compile(r"(?i)\b(password|passwd|secret|token|api[_-]?key|totp)(\s*[=:]\s*)[^\s,;'\"&]+"),
    # Ten digits as an NHS number is written (3-3-4 or run together), not inside a longer number.
    re.compile(r"(?<![A-Za-z0-9])\d{3}[ -]?\d{3}[ -]?\d{4}(?![A-Za-z0-9])"),
]


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
        elif pattern.groups == 1:
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
        else:
            text = pattern.sub(MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets and identifiers in the final message and any exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info:
            # Render the traceback now so it can be cleaned, then drop the live exception.
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.request_id = request_id_var.get()
        record.job_id = job_id_var.get()
        return True


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(
            f"{k}={v}" for k, v in (("request", getattr(record, "request_id", None)),
                                    ("job", getattr(record, "job_id", None))) if v
        )
        base = super().format(record)
        return f"{base} [{ids}]" if ids else base


def configure(level: str = "INFO", fmt: str = "text", stream: Any = None) -> None:
    """Install one handler on the root logger; safe to call more than once."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_tre", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._tre = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(job_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(_Text("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
