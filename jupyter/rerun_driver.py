"""Runs inside a re-run sandbox with the workspace runtime's Python (jupyter/rerun.py binds it in).

    driver.py run KIND CODE STATUS      execute a notebook (nbclient) or a script (runpy) in its folder
    driver.py fingerprint DIR...        print each image's decoded pixels' digest (Pillow) as JSON

``run`` writes STATUS, a JSON object that holds no data: ``ok``, or the exception's *type*, the cell's
number and the line of code that raised (code, never values, printed output or tracebacks' values).
Standard library at import; nbclient and Pillow are imported only when needed (the runtime has them).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import runpy
import sys
import traceback
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")


def _status(path: str, **fields: object) -> None:
    Path(path).write_text(json.dumps(fields), encoding="utf-8")


def _errno_name(value: object) -> str:
    """The errno's symbolic name of an OSError (ENETUNREACH, ENOENT...): says what failed, holds no data."""
    number = getattr(value, "errno", None)
    if number is None:
        found = re.match(r"^\[Errno (\d+)\]", str(value or ""))
        number = int(found.group(1)) if found else None
    return errno.errorcode.get(number, "") if isinstance(number, int) else ""


def _code_line(source: str, lineno: int | None) -> str:
    lines = source.splitlines()
    if lineno is None or not 0 < lineno <= len(lines):
        return ""
    return lines[lineno - 1].strip()[:200]


def run_notebook(code: str, status: str) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    notebook = nbformat.read(code, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=None,  # the wall-time limit is the sandbox's, outside
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": os.path.dirname(os.path.abspath(code))}},
    )
    try:
        client.execute()
    except CellExecutionError as error:
        cell = _failed_cell(notebook)
        _status(
            status,
            status="failed",
            error=str(getattr(error, "ename", "") or "CellExecutionError"),
            errno=_errno_name(getattr(error, "evalue", "")),
            cell=cell,
        )
        return 1
    except DeadKernelError:
        _status(status, status="failed", error="DeadKernelError", cell=_failed_cell(notebook))
        return 1
    _status(status, status="ok", cells=len(notebook.cells))
    return 0


def _failed_cell(notebook: object) -> int | None:
    """The number (1-based, code cells counted with the others) of the first cell with an error output."""
    for number, cell in enumerate(getattr(notebook, "cells", []), start=1):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if output.get("output_type") == "error":
                return number
    return None


def run_script(code: str, status: str) -> int:
    source = Path(code).read_text(encoding="utf-8")
    try:
        runpy.run_path(code, run_name="__main__")
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            _status(status, status="failed", error="SystemExit", line="")
            return 1
    except BaseException as error:  # noqa: BLE001 - the researcher's code may raise anything
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == code]
        lineno = frames[-1].lineno if frames else None
        name, code_line = type(error).__name__, _code_line(source, lineno)
        _status(status, status="failed", error=name, errno=_errno_name(error), line=code_line)
        return 1
    _status(status, status="ok")
    return 0


def fingerprint(folders: list[str]) -> int:
    from PIL import Image

    answer: dict[str, dict[str, object]] = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as image:
                    rgba = image.convert("RGBA")
                    answer[str(path)] = {
                        "width": rgba.width,
                        "height": rgba.height,
                        "pixels_sha256": hashlib.sha256(rgba.tobytes()).hexdigest(),
                    }
            except Exception as error:  # noqa: BLE001 - an unreadable image is reported, not fatal
                answer[str(path)] = {"error": type(error).__name__}
    json.dump(answer, sys.stdout)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "run":
        kind, code, status = argv[1:]
        os.chdir(os.path.dirname(os.path.abspath(code)))
        return run_notebook(code, status) if kind == "notebook" else run_script(code, status)
    if len(argv) >= 2 and argv[0] == "fingerprint":
        return fingerprint(argv[1:])
    print("usage: driver.py run KIND CODE STATUS | fingerprint DIR...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
