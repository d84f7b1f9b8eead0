"""Ask for outputs to leave the workspace: the only way out, through the output-checking queue.

Runs inside a workspace with the standard library only (the workspace has no network but the output
API, and nothing here may depend on the control plane's code). The workspace's environment carries
``TRE_OUTPUT_API`` and a project-scoped ``TRE_OUTPUT_TOKEN``; the token never appears in a URL.

    from jupyter.client import submit
    submit(["outputs/table1.csv"], context="Table 1: ...", controls="Counts rounded to 5, <10 suppressed")

    tre-submit outputs/table1.csv --context "..." --controls "..." --title "Table 1"

A table made by the disclosure session (``Session.finalise`` or R's ``tre_finalise``) carries its
specification (dataset, filters, dimensions, statistic: its population) in the ``results.json`` beside
it; every submission sends the specifications of the files it sends, so the checks re-compute the
table and the release ledger records its population (docs/outputs.md).

A request the checkers returned for changes is changed and resubmitted from here too (files come
only from the workspace):

    from jupyter.client import resubmit
    resubmit(request_id, ["outputs/table1.csv"], controls="Counts rounded to 5")

    tre-submit --resubmit REQUEST_ID outputs/table1.csv --remove old_table.csv
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
import urllib.parse
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
            raise SubmitError(f"{path} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; outputs must be summaries.")
    return paths


def table_specs_for(paths: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """The table specifications the disclosure session wrote for these files, keyed by the name sent.

    ``finalise`` writes ``results.json`` beside the tables (ACRO's schema, with our ``table_spec`` per
    output). A file with no such entry, an unreadable ``results.json`` or a ``null`` specification sends
    none: the queue then checks the file as a published table of unknown population (review at best).
    """
    specs: dict[str, dict[str, Any]] = {}
    documents: dict[Path, Any] = {}
    for path in paths:
        folder = path.resolve().parent
        if folder not in documents:
            try:
                documents[folder] = json.loads((folder / "results.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                documents[folder] = None
        results = documents[folder].get("results") if isinstance(documents[folder], dict) else None
        for output in results.values() if isinstance(results, dict) else ():
            spec = output.get("table_spec") if isinstance(output, dict) else None
            names = {f.get("name") for f in output.get("files", []) if isinstance(f, dict)} if spec else set()
            if isinstance(spec, dict) and path.name in names and path.suffix.lower() == ".csv":
                specs[path.name] = spec
    return specs


def _specs_field(paths: list[Path], table_specs: dict[str, Any] | None) -> list[tuple[str, str]]:
    specs = table_specs_for(paths) if table_specs is None else dict(table_specs)
    return [("table_specs", json.dumps(specs))] if specs else []


def submit(
    files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    context: str,
    controls: str,
    title: str | None = None,
    *,
    table_specs: dict[str, Any] | None = None,
    api: str | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    retries: int = RETRIES,
) -> dict[str, Any]:
    """Send files with their context (what they are) and controls (what disclosure control was applied).

    Returns the queue's answer, e.g. ``{"id": "...", "state": "submitted"}``. Checkers reject requests
    without context and controls, so they are required here rather than discovered days later.
    Every try of one call carries the same ``Idempotency-Key``, so when the queue was unavailable (503)
    or its answer was lost on the way, trying again can never make a second request. ``table_specs``
    (file name -> specification) defaults to what the disclosure session wrote beside the files
    (:func:`table_specs_for`); ``{}`` sends none.
    """
    if not context or not context.strip():
        raise SubmitError("Describe what the outputs are (context) before submitting.")
    if not controls or not controls.strip():
        raise SubmitError("Describe the disclosure controls applied (controls) before submitting.")
    paths = _checked_files(files)
    fields = [("context", context.strip()), ("controls", controls.strip()), *_specs_field(paths, table_specs)]
    if title:
        fields.insert(0, ("title", title.strip()))
    return _send(REQUESTS_PATH, fields, paths, api=api, token=token, timeout=timeout, retries=retries)


def resubmit(
    request_id: str,
    files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str] = (),
    *,
    context: str | None = None,
    controls: str | None = None,
    remove: Sequence[str] = (),
    group: str | None = None,
    table_specs: dict[str, Any] | None = None,
    api: str | None = None,
    token: str | None = None,
    timeout: float = 60.0,
    retries: int = RETRIES,
) -> dict[str, Any]:
    """Change a request the checkers returned for changes, from this workspace, and resubmit it.

    ``files`` replace the request's files of the same name (or join it); ``remove`` names files to
    drop; ``context`` and ``controls``, when given, replace the group's. Files reach a request only
    this way or with :func:`submit`: nothing outside the workspace can send them.
    """
    if not request_id or not request_id.strip():
        raise SubmitError("Name the returned request to resubmit.")
    paths = _checked_files(files) if files not in ((), [], None) else []
    fields: list[tuple[str, str]] = []
    for name, value in (("group", group), ("context", context), ("controls", controls)):
        if value is not None:
            fields.append((name, value.strip()))
    if remove:
        fields.append(("remove", json.dumps(list(remove))))
    if not paths and not fields:
        raise SubmitError("Send at least one changed file, a file to remove, or new context or controls.")
    fields.extend(_specs_field(paths, table_specs) if paths else [])
    path = f"{REQUESTS_PATH}/{urllib.parse.quote(request_id.strip(), safe='')}/resubmission"
    return _send(path, fields, paths, api=api, token=token, timeout=timeout, retries=retries)


def request_status(
    request_id: str, *, api: str | None = None, token: str | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """A request of this project as the queue shows its team: state, files, the checkers' shared comments."""
    if not request_id or not request_id.strip():
        raise SubmitError("Name the output request.")
    api, token = _endpoint(api, token)
    request = urllib.request.Request(  # noqa: S310 - the URL comes from the workspace's own environment
        f"{api.rstrip('/')}{REQUESTS_PATH}/{urllib.parse.quote(request_id.strip(), safe='')}",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310  # nosec B310
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        raise SubmitError(_problem(error)) from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise SubmitError(f"The output queue could not be reached: {getattr(error, 'reason', error)}") from None
    if not isinstance(answer, dict) or "id" not in answer:
        raise SubmitError("The output queue gave an answer without a request id.")
    return answer


def _endpoint(api: str | None, token: str | None) -> tuple[str, str]:
    api = api or os.environ.get("TRE_OUTPUT_API", "")
    token = token or os.environ.get("TRE_OUTPUT_TOKEN", "")
    if not api or not token:
        raise SubmitError("TRE_OUTPUT_API and TRE_OUTPUT_TOKEN are not set: submit from inside a TRE workspace.")
    return api, token


def _send(
    path: str,
    fields: list[tuple[str, str]],
    paths: list[Path],
    *,
    api: str | None,
    token: str | None,
    timeout: float,
    retries: int,
) -> dict[str, Any]:
    api, token = _endpoint(api, token)
    body, content_type = _encode_multipart(fields, paths)
    request = urllib.request.Request(  # noqa: S310 - the URL comes from the workspace's own environment
        api.rstrip("/") + path,
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
                raise SubmitError(f"The output queue could not be reached: {getattr(error, 'reason', error)}") from None
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
    """``tre-submit``: the command-line form of :func:`submit` and, with ``--resubmit``, :func:`resubmit`."""
    parser = argparse.ArgumentParser(
        prog="tre-submit", description="Request release of outputs through the TRE's output checking."
    )
    parser.add_argument("files", nargs="*", help="files to submit (tables, figures, and the data behind them)")
    parser.add_argument("--context", help="what the outputs are; '@file' reads it from a file")
    parser.add_argument("--controls", help="disclosure controls applied; '@file' reads a file")
    parser.add_argument("--title", help="a short title for the request")
    parser.add_argument(
        "--resubmit", metavar="REQUEST_ID", help="change a request returned for changes and resubmit it"
    )
    parser.add_argument("--remove", action="append", default=[], metavar="NAME", help="with --resubmit: drop a file")
    parser.add_argument("--group", help="with --resubmit: the group of the files sent")
    args = parser.parse_args(argv)
    context = _text_arg(args.context) if args.context is not None else None
    controls = _text_arg(args.controls) if args.controls is not None else None
    try:
        if args.resubmit:
            answer = resubmit(
                args.resubmit, args.files, context=context, controls=controls, remove=args.remove, group=args.group
            )
            print(f"Resubmitted output request {answer['id']} (state: {answer.get('state', 'unknown')})")
            return 0
        if not args.files or context is None or controls is None:
            parser.error("give the files, --context and --controls (or --resubmit REQUEST_ID)")
        answer = submit(args.files, context, controls, title=args.title)
    except (SubmitError, OSError) as error:
        print(f"tre-submit: {error}", file=sys.stderr)
        return 1
    print(f"Submitted output request {answer['id']} (state: {answer.get('state', 'unknown')})")
    return 0


def _text_arg(value: str) -> str:
    return Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value


if __name__ == "__main__":
    sys.exit(main())
