"""Ask for outputs to leave the workspace: the only way out, through the output-checking queue.

Runs inside a workspace with the standard library only (the workspace has no network but the output
API, and nothing here may depend on the control plane's code). The workspace's environment carries
``TRE_OUTPUT_API`` and a project-scoped ``TRE_OUTPUT_TOKEN``; the token never appears in a URL.

    from jupyter.client import submit
    submit(["outputs/table1.csv"], context="Table 1: ...", controls="Counts rounded to 5, <10 suppressed")

    tre-submit outputs/table1.csv --context "..." --controls "..." --title "Table 1"
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REQUESTS_PATH = "/api/v1/outputs/requests"
MAX_FILE_BYTES = 16 * 1024 * 1024
RETRIES = 3  # more tries when the queue is unavailable (503) or cannot be reached, with the same key
MAX_RETRY_WAIT = 30.0  # seconds; the queue's Retry-After is honoured up to this


class SubmitError(Exception):
    """The request was not accepted; the message says why in the researcher's words."""


def _encode_multipart(fields: list[tuple[str, str]], files: list[Path]) -> tuple[bytes, str]:
    boundary = "tre-" + secrets.token_hex(16)
    parts: list[bytes] = []
    for name, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n".encode()
            + value.encode("utf-8")
            + b"\r\n"
        )
    for path in files:
        filename = path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
            + path.read_bytes()
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _checked_files(files: Iterable[str | os.PathLike[str]]) -> list[Path]:
    paths = [Path(item) for item in ([files] if isinstance(files, str | os.PathLike) else files)]
    if not paths:
        raise SubmitError("Name at least one file to submit.")
    for path in paths:
        if not path.is_file():
            raise SubmitError(f"{path} is not a file.")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SubmitError(
                f"{path} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; outputs must be summaries."
            )
    return paths


def submit(
    files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    context: str,
    controls: str,
    title: str | None = None,
    *,
    api: str | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    retries: int = RETRIES,
) -> dict[str, Any]:
    """Send files with their context (what they are) and controls (what disclosure control was applied).

    Returns the queue's answer, e.g. ``{"id": "...", "state": "submitted"}``. Checkers reject requests
    without context and controls, so they are required here rather than discovered days later.
    Every try of one call carries the same ``Idempotency-Key``, so when the queue was unavailable (503)
    or its answer was lost on the way, trying again can never make a second request.
    """
    if not context or not context.strip():
        raise SubmitError("Describe what the outputs are (context) before submitting.")
    if not controls or not controls.strip():
        raise SubmitError("Describe the disclosure controls applied (controls) before submitting.")
    paths = _checked_files(files)
    api = api or os.environ.get("TRE_OUTPUT_API", "")
    token = token or os.environ.get("TRE_OUTPUT_TOKEN", "")
    if not api or not token:
        raise SubmitError(
            "TRE_OUTPUT_API and TRE_OUTPUT_TOKEN are not set: submit from inside a TRE workspace."
        )
    fields = [("context", context.strip()), ("controls", controls.strip())]
    if title:
        fields.insert(0, ("title", title.strip()))
    body, content_type = _encode_multipart(fields, paths)
    request = urllib.request.Request(  # noqa: S310 - the URL comes from the workspace's own environment
        api.rstrip("/") + REQUESTS_PATH,
        data=body,
        method="POST",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": content_type,
            "Accept": "application/json",
            "Idempotency-Key": "tre-submit-" + secrets.token_hex(16),
        },
    )
    for attempt in range(retries + 1):
        try:
            # Bandit B310: the URL is the control plane's, from the workspace's configuration (https or http)
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310  # nosec B310
                answer = json.loads(response.read() or b"{}")
            break
        except urllib.error.HTTPError as error:
            if error.code != 503 or attempt == retries:
                raise SubmitError(_problem(error)) from None
            wait = _retry_after(error, default=2.0**attempt)
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            if attempt == retries:
                raise SubmitError(
                    f"The output queue could not be reached: {getattr(error, 'reason', error)}"
                ) from None
            wait = 2.0**attempt
        time.sleep(min(wait, MAX_RETRY_WAIT))
    if not isinstance(answer, dict) or "id" not in answer:
        raise SubmitError("The output queue gave an answer without a request id.")
    return answer


def _retry_after(error: urllib.error.HTTPError, *, default: float) -> float:
    value = (error.headers.get("Retry-After") or "").strip() if error.headers else ""
    return float(value) if value.isdigit() else default


def _problem(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read() or b"{}")
    except ValueError:
        body = {}
    text = " ".join(str(body[key]) for key in ("title", "detail") if isinstance(body, dict) and body.get(key))
    return f"The output queue refused the request (HTTP {error.code}): {text or error.reason}"


def main(argv: Sequence[str] | None = None) -> int:
    """``tre-submit``: the command-line form of :func:`submit`."""
    parser = argparse.ArgumentParser(
        prog="tre-submit", description="Request release of outputs through the TRE's output checking."
    )
    parser.add_argument(
        "files", nargs="+", help="files to submit (tables, figures, and the data behind them)"
    )
    parser.add_argument("--context", required=True, help="what the outputs are; '@file' reads it from a file")
    parser.add_argument("--controls", required=True, help="disclosure controls applied; '@file' reads a file")
    parser.add_argument("--title", help="a short title for the request")
    args = parser.parse_args(argv)
    try:
        answer = submit(args.files, _text_arg(args.context), _text_arg(args.controls), title=args.title)
    except (SubmitError, OSError) as error:
        print(f"tre-submit: {error}", file=sys.stderr)
        return 1
    print(f"Submitted output request {answer['id']} (state: {answer.get('state', 'unknown')})")
    return 0


def _text_arg(value: str) -> str:
    return Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value


if __name__ == "__main__":
    sys.exit(main())
