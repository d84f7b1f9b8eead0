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

The code that made the files goes with them (``code=``, ``--code``): the notebook or script, and the
version of the project's extract it read, so the output queue can re-run it with no network and compare
what it makes with what was sent (docs/outputs.md, ADR 0018):

    submit(["outputs/table1.csv"], context="...", controls="...", code="analysis/table1.ipynb")

    tre-submit outputs/table1.csv --code analysis/table1.ipynb --context "..." --controls "..."

A request the checkers returned for changes is changed and resubmitted from here too (files come
only from the workspace):

    from jupyter.client import resubmit
    resubmit(request_id, ["outputs/table1.csv"], controls="Counts rounded to 5")

    tre-submit --resubmit REQUEST_ID outputs/table1.csv --remove old_table.csv
"""

from __future__ import annotations

import argparse
import hashlib
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
MAX_CODE_BYTES = 4 * 1024 * 1024  # a notebook with its outputs cleared is far smaller
CODE_SUFFIXES = (".ipynb", ".py", ".r")
RETRIES = 3  # more tries when the queue is unavailable (503) or cannot be reached, with the same key
MAX_RETRY_WAIT = 30.0  # seconds; the queue's Retry-After is honoured up to this


class SubmitError(Exception):
    """The request was not accepted; the message says why in the researcher's words."""


def _encode_multipart(fields: list[tuple[str, str]], files: list[Path], code: Path | None = None) -> tuple[bytes, str]:
    boundary = "tre-" + secrets.token_hex(16)
    parts: list[bytes] = []
    named = [("files", path) for path in files] + ([("code", code)] if code is not None else [])
    for name, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n".encode()
            + value.encode("utf-8")
            + b"\r\n"
        )
    for field, path in named:
        filename = path.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
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


def extract_version(extract_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The version of the project's extract this workspace reads: a digest of each dataset's manifest.

    The extract service writes ``<extract>/<dataset>/manifest.json`` (row counts, hashes of the parts);
    a rebuilt extract has new manifests, so the same digest means the same data. ``None`` when there is
    no extract (or no manifest in it).
    """
    root = Path(extract_dir or os.environ.get("TRE_EXTRACT_DIR", "") or "")
    if not str(root) or not root.is_dir():
        return None
    digest = hashlib.sha256()
    found = False
    for manifest in sorted(root.glob("*/manifest.json")):
        digest.update(manifest.parent.name.encode() + b"\0" + hashlib.sha256(manifest.read_bytes()).digest())
        found = True
    return digest.hexdigest() if found else None


def _code_fields(code: str | os.PathLike[str] | None, version: str | None) -> tuple[list[tuple[str, str]], Path | None]:
    """The form fields and the file that carry the code: its path relative to the home (where a re-run
    puts it, so its relative paths still work) and the extract version it read."""
    if code is None:
        return [], None
    path = Path(code)
    if not path.is_file():
        raise SubmitError(f"{path} (the code that made the outputs) is not a file.")
    if path.suffix.lower() not in CODE_SUFFIXES:
        raise SubmitError(f"{path}: the code must be a notebook (.ipynb), a Python script (.py) or an R script (.R).")
    if path.stat().st_size > MAX_CODE_BYTES:
        raise SubmitError(f"{path} is larger than {MAX_CODE_BYTES // (1024 * 1024)} MB; clear its outputs first.")
    real, home = path.resolve(), Path(os.environ.get("HOME") or Path.cwd()).resolve()
    relative = real.relative_to(home).as_posix() if real.is_relative_to(home) else real.name
    fields = [("code_path", relative)]
    version = version if version is not None else extract_version()
    if version:
        fields.append(("extract_version", version))
    return fields, path


def submit(
    files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    context: str,
    controls: str,
    title: str | None = None,
    *,
    table_specs: dict[str, Any] | None = None,
    code: str | os.PathLike[str] | None = None,
    extract_version: str | None = None,
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
    ``code`` is the notebook or script that made the files; the queue re-runs it
    (``extract_version`` defaults to the version of ``TRE_EXTRACT_DIR`` now).
    """
    if not context or not context.strip():
        raise SubmitError("Describe what the outputs are (context) before submitting.")
    if not controls or not controls.strip():
        raise SubmitError("Describe the disclosure controls applied (controls) before submitting.")
    paths = _checked_files(files)
    fields = [("context", context.strip()), ("controls", controls.strip()), *_specs_field(paths, table_specs)]
    if title:
        fields.insert(0, ("title", title.strip()))
    extra, code_file = _code_fields(code, extract_version)
    return _send(
        REQUESTS_PATH, fields + extra, paths, api=api, token=token, timeout=timeout, retries=retries, code=code_file
    )


def resubmit(
    request_id: str,
    files: Iterable[str | os.PathLike[str]] | str | os.PathLike[str] = (),
    *,
    context: str | None = None,
    controls: str | None = None,
    remove: Sequence[str] = (),
    group: str | None = None,
    table_specs: dict[str, Any] | None = None,
    code: str | os.PathLike[str] | None = None,
    extract_version: str | None = None,
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
    extra, code_file = _code_fields(code, extract_version)
    fields += extra
    if not paths and not fields:
        raise SubmitError("Send at least one changed file, a file to remove, or new context or controls.")
    fields.extend(_specs_field(paths, table_specs) if paths else [])
    path = f"{REQUESTS_PATH}/{urllib.parse.quote(request_id.strip(), safe='')}/resubmission"
    return _send(path, fields, paths, api=api, token=token, timeout=timeout, retries=retries, code=code_file)


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
    code: Path | None = None,
) -> dict[str, Any]:
    api, token = _endpoint(api, token)
    body, content_type = _encode_multipart(fields, paths, code)
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
    parser.add_argument(
        "--code", metavar="NOTEBOOK", help="the notebook (.ipynb) or script (.py, .R) that made the files: it is re-run"
    )
    args = parser.parse_args(argv)
    context = _text_arg(args.context) if args.context is not None else None
    controls = _text_arg(args.controls) if args.controls is not None else None
    try:
        if args.resubmit:
            answer = resubmit(
                args.resubmit,
                args.files,
                context=context,
                controls=controls,
                remove=args.remove,
                group=args.group,
                code=args.code,
            )
            print(f"Resubmitted output request {answer['id']} (state: {answer.get('state', 'unknown')})")
            return 0
        if not args.files or context is None or controls is None:
            parser.error("give the files, --context and --controls (or --resubmit REQUEST_ID)")
        answer = submit(args.files, context, controls, title=args.title, code=args.code)
    except (SubmitError, OSError) as error:
        print(f"tre-submit: {error}", file=sys.stderr)
        return 1
    print(f"Submitted output request {answer['id']} (state: {answer.get('state', 'unknown')})")
    return 0


def _text_arg(value: str) -> str:
    return Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value


if __name__ == "__main__":
    sys.exit(main())
