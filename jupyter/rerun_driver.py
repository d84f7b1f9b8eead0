"""Runs inside a re-run sandbox with the workspace runtime's Python (jupyter/rerun.py binds it in).

    driver.py run KIND CODE STATUS      execute a notebook (nbclient, with its kernel: Python 3 or R), a
                                        Python script (runpy) or an R script (the runtime's R) in its folder
    driver.py fingerprint DIR...        print each image's decoded pixels' digest (Pillow) as JSON

and, in a Kubernetes re-run pod (jupyter/rerun_kubernetes.py; the two halves run in two containers, one
after the other, so nothing the code started is alive when its files are collected):

    driver.py job-run KIND CODE_PATH    (init container) put the code in the home, check the extract's
                                        version, run it as ``run`` does; always exits 0: the status says
    driver.py job-collect CODE_PATH     (second container, the home read-only) report, the re-made files
                                        and the images' digests, to the re-run's out/ folder

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
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp")


def _status(path: str, **fields: object) -> None:
    Path(path).write_text(json.dumps(fields), encoding="utf-8")


# What R and libcurl say instead of an errno, for the failures a re-run explains (no network, no file).
_R_PHRASES = (
    ("Could not resolve host", "EAI_NONAME"),
    ("Couldn't resolve host", "EAI_NONAME"),
    ("Failed to connect", "ECONNREFUSED"),
    ("Couldn't connect to server", "ECONNREFUSED"),
    ("cannot be opened", "ECONNREFUSED"),  # socketConnection: "host:port cannot be opened"
    ("cannot open URL", "ENETUNREACH"),
)


def _errno_name(value: object) -> str:
    """The errno's symbolic name of an OSError (ENETUNREACH, ENOENT...): says what failed, holds no data.

    R reports no errno, only the C library's message (``cannot open file 'x': No such file or
    directory``): the message is matched to its errno here, and only the name goes on."""
    number = getattr(value, "errno", None)
    if number is None:
        found = re.match(r"^\[Errno (\d+)\]", str(value or ""))
        number = int(found.group(1)) if found else None
    if isinstance(number, int):
        return errno.errorcode.get(number, "")
    return _errno_in_message(str(value or ""))


def _errno_in_message(message: str) -> str:
    for code in (errno.ENOENT, errno.EACCES, errno.EROFS, errno.EPERM, errno.ENETUNREACH, errno.ECONNREFUSED,
                 errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
        if os.strerror(code) in message:
            return errno.errorcode[code]
    return next((name for phrase, name in _R_PHRASES if phrase in message), "")


def _code_line(source: str, lineno: int | None) -> str:
    lines = source.splitlines()
    if lineno is None or not 0 < lineno <= len(lines):
        return ""
    return lines[lineno - 1].strip()[:200]


# The kernels a re-run may start: the runtime's own (disclosure/rerun/code.py accepts no other).
KERNELS = ("python3", "ir")


def run_notebook(code: str, status: str) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    notebook = nbformat.read(code, as_version=4)
    kernel = ((notebook.get("metadata") or {}).get("kernelspec") or {}).get("name") or "python3"
    if kernel not in KERNELS:
        _status(status, status="failed", error="UnknownKernel", line="")
        return 1
    client = NotebookClient(
        notebook,
        timeout=None,  # the wall-time limit is the sandbox's, outside
        kernel_name=kernel,
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


# Runs an R script expression by expression, as Rscript would (visible values printed), with the "tre"
# functions attached as in the R kernel. On an error it writes, to a file in the sandbox's private /tmp,
# the condition's class, the first line of the expression that raised and the messages (the error's and
# the warnings before it): the driver keeps the class, the line of *code* and an errno name, never them.
R_RUNNER = r"""
args <- commandArgs(trailingOnly = TRUE)
tre_r <- args[[1]]; code <- args[[2]]; report <- args[[3]]
if (file.exists(tre_r)) sys.source(tre_r, envir = attach(NULL, name = "tre"))
say <- function(class, line, messages) {
  messages <- gsub("[\t\n\r]", " ", messages)
  writeLines(c(paste0("error\t", class), paste0("line\t", line), paste0("message\t", messages)), report)
  quit(save = "no", status = 1)
}
exprs <- tryCatch(parse(code, keep.source = TRUE), error = function(e) say("SyntaxError", NA, character()))
refs <- attr(exprs, "srcref")
seen <- character()
for (i in seq_along(exprs)) {
  failed <- tryCatch(
    withCallingHandlers({
      result <- withVisible(eval(exprs[[i]], envir = globalenv()))
      if (result$visible) print(result$value)
      NULL
    }, warning = function(w) {
      seen <<- utils::tail(c(seen, conditionMessage(w)), 20)
      invokeRestart("muffleWarning")
    }),
    error = function(e) e
  )
  if (!is.null(failed)) {
    say(class(failed)[[1]], if (is.null(refs)) NA else refs[[i]][[1]], c(conditionMessage(failed), seen))
  }
}
writeLines("ok", report)
"""


def _r_program() -> tuple[str, dict[str, str], str]:
    """R's executable, its environment and the "tre" functions' file, from the runtime's R kernel spec
    (the build writes it: the same R and the same functions a workspace's R kernel has)."""
    spec_path = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "ir" / "kernel.json"
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    return spec["argv"][0], dict(spec.get("env") or {}), str(Path(sys.prefix) / "share" / "tre" / "R" / "tre.R")


def run_r_script(code: str, status: str) -> int:
    import subprocess  # nosec B404 - the runtime's R, an argv list, no shell
    import tempfile

    source = Path(code).read_text(encoding="utf-8")
    try:
        r_binary, r_env, tre_r = _r_program()
    except (OSError, ValueError, KeyError, IndexError):
        _status(status, status="failed", error="RNotInstalled", line="")
        return 1
    with tempfile.TemporaryDirectory() as scratch:  # the sandbox's private /tmp
        runner, report = Path(scratch) / "runner.R", Path(scratch) / "report"
        runner.write_text(R_RUNNER, encoding="utf-8")
        done = subprocess.run(  # noqa: S603  # nosec B603
            [r_binary, "--no-save", "--no-restore", "--slave", "-f", str(runner), "--args", tre_r, code, str(report)],
            env={**os.environ, **r_env},
            stdin=subprocess.DEVNULL,
            check=False,
        )
        lines = report.read_text(encoding="utf-8").splitlines() if report.exists() else []
    if lines == ["ok"] and done.returncode == 0:
        _status(status, status="ok")
        return 0
    fields: dict[str, Any] = {"error": "", "line": "", "messages": []}
    for line in lines:
        key, _, value = line.partition("\t")
        if key == "message":
            fields["messages"].append(value)
        elif key in ("error", "line"):
            fields[key] = value
    if not lines:  # R itself died (a limit's signal): die of the same, so the sandbox's exit status says which
        _status(status, status="failed", error="", line="")
        if done.returncode < 0:
            signal.raise_signal(signal.Signals(-done.returncode))
        return 1
    lineno = int(fields["line"]) if fields["line"].isdigit() else None
    found = next((name for m in fields["messages"] if (name := _errno_in_message(m))), "")
    error = fields["error"] or "RError"
    if any("cannot allocate" in m for m in fields["messages"]):  # R's own out-of-memory error
        error = "MemoryError"
    _status(status, status="failed", error=error, errno=found, line=_code_line(source, lineno))
    return 1


def fingerprints(folders: list[str]) -> dict[str, dict[str, object]]:
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
    return answer


def fingerprint(folders: list[str]) -> int:
    json.dump(fingerprints(folders), sys.stdout)
    return 0


def collect(home: Path, code_path: str) -> dict[str, str]:
    """Every regular file the code wrote in its home (path relative to it -> sha256), links not followed,
    hidden ones (``.cache``, ``.ipynb_checkpoints``) left out."""
    made: dict[str, str] = {}
    for path in sorted(home.rglob("*")):
        relative = path.relative_to(home).as_posix()
        hidden = any(part.startswith(".") for part in path.relative_to(home).parts)  # caches, checkpoints
        if hidden or path.is_symlink() or not path.is_file() or relative == code_path:
            continue
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        made[relative] = digest.hexdigest()
    return made


# The Kubernetes pod's folders (infra/production/kubernetes/rerun/job-template.yaml).
POD_HOME = "/home/tre-rerun"
POD_IN = "/opt/tre-rerun/in"  # the code ("code") and the submitted images (submitted/), read-only
POD_OUT = "/opt/tre-rerun/out"  # report.json and made/, written only by job-collect
POD_STATUS = ".tre-rerun/status.json"  # in the home; hidden, so never collected as an output


def job_run(kind: str, code_path: str) -> int:
    import shutil
    import subprocess  # nosec B404 - this driver again, an argv list, no shell

    home = Path(os.environ.get("HOME") or POD_HOME)
    status = home / POD_STATUS
    status.parent.mkdir(parents=True, exist_ok=True)
    extract = os.environ.get("TRE_EXTRACT_DIR") or ""
    recorded = os.environ.get("EXTRACT_VERSION") or ""
    if recorded and extract:
        from jupyter.client import extract_version  # the runtime has the client

        if extract_version(extract) != recorded:
            _status(str(status), status="failed", error="ExtractChanged", line="")
            return 0
    target = home / code_path
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(POD_IN) / "code", target)
    (home / "outputs").mkdir(exist_ok=True)
    if extract and not (home / "extract").exists():
        (home / "extract").symlink_to(extract)
    done = subprocess.run(  # noqa: S603  # nosec B603
        [sys.executable, os.path.abspath(__file__), "run", kind, str(target), str(status)],
        stdin=subprocess.DEVNULL,
        check=False,
    )
    try:
        fields = json.loads(status.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        fields = {}
    _status(str(status), **{**(fields if isinstance(fields, dict) else {}), "exit": done.returncode})
    return 0


def job_collect(code_path: str) -> int:
    import shutil

    home, out = Path(os.environ.get("HOME") or POD_HOME), Path(POD_OUT)
    for leftover in out.iterdir():  # whatever the code may have put there is not trusted
        shutil.rmtree(leftover) if leftover.is_dir() and not leftover.is_symlink() else leftover.unlink()
    try:
        status = json.loads((home / POD_STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        status = {}
    made = collect(home, code_path)
    for relative in made:
        destination = out / "made" / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(home / relative, destination, follow_symlinks=False)
    prints = fingerprints([str(home), str(Path(POD_IN) / "submitted")])
    report = {"status": status if isinstance(status, dict) else {}, "files": made, "prints": prints}
    (out / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "run":
        kind, code, status = argv[1:]
        os.chdir(os.path.dirname(os.path.abspath(code)))
        if kind == "notebook":
            return run_notebook(code, status)
        return run_r_script(code, status) if code.lower().endswith(".r") else run_script(code, status)
    if len(argv) >= 2 and argv[0] == "fingerprint":
        return fingerprint(argv[1:])
    if len(argv) == 3 and argv[0] == "job-run":
        return job_run(argv[1], argv[2])
    if len(argv) == 2 and argv[0] == "job-collect":
        return job_collect(argv[1])
    print("usage: driver.py run KIND CODE STATUS | fingerprint DIR... | job-run KIND CODE_PATH | job-collect CODE_PATH",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
