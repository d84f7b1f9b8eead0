"""The code that arrives with an output request: what is accepted, and what of it a checker is shown (pure).

A notebook (``.ipynb``, nbformat 4 JSON, with the Python 3 or the R kernel) or a script (``.py`` or
``.R``), at most ``MAX_CODE_BYTES``, named by its path relative to the workspace home (the re-run puts
it at the same place, so its relative paths still work); the extract version is the digest
``jupyter.client.extract_version`` computes.

A notebook's cell outputs never leave the workspace with its code: they may hold anything the kernel
printed (rows of the extract, unchecked tables), so ``check_code`` keeps only what re-runs the
notebook, its cells' source, and drops outputs, execution counts, attachments and any metadata but the
kernel's (ADR 0029). The checker reads the code as text (``code_cells``), never as HTML.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

MAX_CODE_BYTES = 4 * 1024 * 1024
_VERSION = re.compile(r"^[0-9a-f]{64}$")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_. -]{0,99}$")
# Kernel name -> language: the kernels the workspace runtime has, and so the ones a re-run can start.
KERNELS = {"python3": "python", "ir": "r"}
SCRIPT_LANGUAGES = {".py": "python", ".r": "r"}
# The only notebook-level metadata kept: what says which kernel runs it.
_NOTEBOOK_METADATA = ("kernelspec", "language_info")


# What a researcher is told when the TRE requires code (TRE_RERUN_REQUIRE_CODE) and none came.
CODE_REQUIRED = (
    "This TRE releases outputs only with the code that made them: submit from the notebook (JupyterLab's "
    "Submit for output checking), or send the notebook or script with tre-submit --code NOTEBOOK"
)


class CodeRefused(ValueError):
    """The code cannot be accepted; the message says why in the researcher's words."""


@dataclass(frozen=True)
class SubmittedCode:
    path: str
    kind: str  # notebook | script
    content: bytes  # a notebook without its outputs
    extract_version: str | None
    language: str = "python"  # python | r


def language_of(path: str, content: bytes) -> str:
    """The language a re-run runs the code in: a script's by its suffix, a notebook's by its kernel."""
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in SCRIPT_LANGUAGES:
        return SCRIPT_LANGUAGES[suffix]
    try:
        notebook = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "python"
    return KERNELS.get(kernel_name(notebook) or "python3", "python")


def kernel_name(notebook: Any) -> str | None:
    spec = (notebook.get("metadata") or {}).get("kernelspec") if isinstance(notebook, dict) else None
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) else None


def strip_outputs(notebook: dict[str, Any]) -> dict[str, Any]:
    """The notebook as a re-run needs it and a checker may read it: each cell's type, id and source;
    no outputs, execution counts, attachments or metadata beyond the kernel's."""
    found = notebook.get("metadata")
    metadata: dict[str, Any] = found if isinstance(found, dict) else {}
    cells = []
    for cell in notebook.get("cells") or []:
        if not isinstance(cell, dict):
            continue
        kept: dict[str, Any] = {
            "cell_type": cell.get("cell_type", "code"),
            "metadata": {},
            "source": cell.get("source", ""),
        }
        if isinstance(cell.get("id"), str):
            kept["id"] = cell["id"]
        if kept["cell_type"] == "code":
            kept.update(execution_count=None, outputs=[])
        cells.append(kept)
    return {
        "nbformat": 4,
        "nbformat_minor": notebook.get("nbformat_minor", 5),
        "metadata": {key: metadata[key] for key in _NOTEBOOK_METADATA if key in metadata},
        "cells": cells,
    }


def check_code(path: str, content: bytes, extract_version: str | None) -> SubmittedCode:
    """Accept the code or raise ``CodeRefused`` saying why; nothing about it is guessed."""
    raw = (path or "").strip().replace("\\", "/")
    parts = PurePosixPath(raw).parts
    if not raw or raw.startswith("/") or not parts or len(raw) > 300 or not all(_PART.match(p) for p in parts):
        raise CodeRefused(
            "The code's path must be relative to the workspace home, without '..' (e.g. analysis/table1.ipynb)"
        )
    suffix = PurePosixPath(raw).suffix.lower()
    if suffix not in (".ipynb", *SCRIPT_LANGUAGES):
        raise CodeRefused("The code must be a notebook (.ipynb), a Python script (.py) or an R script (.R)")
    if not content:
        raise CodeRefused("The code file is empty")
    if len(content) > MAX_CODE_BYTES:
        raise CodeRefused(f"The code may be {MAX_CODE_BYTES // (1024 * 1024)} MB at most; clear the notebook's outputs")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise CodeRefused("The code must be UTF-8 text") from None
    kind = "notebook" if suffix == ".ipynb" else "script"
    if kind == "notebook":
        try:
            notebook = json.loads(text)
        except ValueError:
            raise CodeRefused("The notebook is not valid JSON") from None
        cells = notebook.get("cells") if isinstance(notebook, dict) else None
        if not isinstance(cells, list) or notebook.get("nbformat") != 4:
            raise CodeRefused("The notebook must be a Jupyter notebook in format 4")
        if (kernel_name(notebook) or "python3") not in KERNELS:
            raise CodeRefused("The notebook's kernel must be Python 3 or R: a re-run has no other")
        content = notebook_without_outputs(content)  # unchanged notebooks keep their bytes (and digest)
    version = (extract_version or "").strip() or None
    if version is not None and not _VERSION.match(version):
        raise CodeRefused("The extract version must be the 64-character digest tre-submit sends")
    return SubmittedCode(raw, kind, content, version, language_of(raw, content))


def notebook_without_outputs(content: bytes) -> bytes:
    """A stored notebook's bytes without outputs (unchanged when it has none, or cannot be read)."""
    try:
        notebook = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return content
    if not isinstance(notebook, dict):
        return content
    stripped = strip_outputs(notebook)
    return content if stripped == notebook else (json.dumps(stripped, indent=1, ensure_ascii=False) + "\n").encode()


def code_cells(kind: str, content: bytes) -> list[dict[str, Any]]:
    """The code as a checker reads it: numbered cells of text (type and source), never outputs.

    A script is one code cell. Markdown is shown as its text, not rendered. Outputs are left out even
    of code stored before ``check_code`` stripped them."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return [{"number": 1, "type": "unreadable", "source": "(not UTF-8 text)"}]
    if kind != "notebook":
        return [{"number": 1, "type": "code", "source": text}]
    try:
        notebook = json.loads(text)
    except ValueError:
        return [{"number": 1, "type": "unreadable", "source": "(not a readable notebook)"}]
    cells = []
    for number, cell in enumerate(strip_outputs(notebook if isinstance(notebook, dict) else {})["cells"], start=1):
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(str(part) for part in source)
        cells.append({"number": number, "type": str(cell.get("cell_type", "code")), "source": str(source)})
    return cells
