"""The changes between two versions of a text (an agreement), for a page: words added and removed.

Pure. ``changes`` splits both texts into words and the spaces and line breaks between them, compares
them with ``difflib``, and returns runs of ``("same" | "added" | "removed", text)``; the page shows
added runs as ``<ins>`` and removed ones as ``<del>`` with their meaning in words, so a change is never
told by colour alone."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

_TOKENS = re.compile(r"\s+|[^\s]+")


@dataclass(frozen=True)
class Change:
    kind: str  # "same", "added", "removed"
    text: str


def changes(old: str, new: str) -> list[Change]:
    a, b = _TOKENS.findall(old or ""), _TOKENS.findall(new or "")
    out: list[Change] = []

    def put(kind: str, parts: list[str]) -> None:
        text = "".join(parts)
        if not text:
            return
        if out and out[-1].kind == kind:
            out[-1] = Change(kind, out[-1].text + text)
        else:
            out.append(Change(kind, text))

    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            put("same", b[j1:j2])
        else:
            put("removed", a[i1:i2])
            put("added", b[j1:j2])
    return out


def changed(parts: list[Change]) -> bool:
    return any(p.kind != "same" for p in parts)
