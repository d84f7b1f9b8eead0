"""The code that arrives with an output request: what is accepted (pure).

A notebook (``.ipynb``, nbformat 4 JSON) or a Python script (``.py``), at most ``MAX_CODE_BYTES``, named
by its path relative to the workspace home (the re-run puts it at the same place, so its relative paths
still work); the extract version is the digest ``jupyter.client.extract_version`` computes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

MAX_CODE_BYTES = 4 * 1024 * 1024
_VERSION = re.compile(r"^[0-9a-f]{64}$")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_. -]{0,99}$")


class CodeRefused(ValueError):
    """The code cannot be accepted; the message says why in the researcher's words."""


@dataclass(frozen=True)
class SubmittedCode:
    path: str
    kind: str  # notebook | script
    content: bytes
    extract_version: str | None


def check_code(path: str, content: bytes, extract_version: str | None) -> SubmittedCode:
    """Accept the code or raise ``CodeRefused`` saying why; nothing about it is guessed."""
    raw = (path or "").strip().replace("\\", "/")
    parts = PurePosixPath(raw).parts
    if not raw or raw.startswith("/") or not parts or len(raw) > 300 or not all(_PART.match(p) for p in parts):
        raise CodeRefused(
            "The code's path must be relative to the workspace home, without '..' (e.g. analysis/table1.ipynb)"
        )
    suffix = PurePosixPath(raw).suffix.lower()
    if suffix not in (".ipynb", ".py"):
        raise CodeRefused("The code must be a notebook (.ipynb) or a Python script (.py)")
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
    version = (extract_version or "").strip() or None
    if version is not None and not _VERSION.match(version):
        raise CodeRefused("The extract version must be the 64-character digest tre-submit sends")
    return SubmittedCode(raw, kind, content, version)
