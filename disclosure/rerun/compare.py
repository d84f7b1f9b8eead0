"""Does a re-made file equal the one submitted? (pure: bytes and decoded-pixel digests in, a verdict out)

* tables (CSV): cell by cell, same shape; numbers equal within ``|a - b| <= abs_tol + rel_tol * |b|``
  (default 1e-9 and 1e-6: the last digits a different summation order may change, nothing a reader
  could see), any other cell as text, exactly;
* images: by content, the decoded pixels (RGBA, width and height) exactly, so a PNG written again with
  other metadata or compression is the same image, and a changed pixel is not;
* anything else: byte for byte.

The outcome is ``reproduced``, ``differs`` (with ``difference``, said for the checker) or ``not_rerun``
(the re-run made no such file, or the image could not be decoded).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

REPRODUCED, DIFFERS, NOT_RERUN = "reproduced", "differs", "not_rerun"


@dataclass(frozen=True)
class Tolerance:
    rel: float = 1e-6
    abs: float = 1e-9

    def close(self, a: float, b: float) -> bool:
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= self.abs + self.rel * abs(b)


def find_remade(name: str, made: dict[str, str]) -> tuple[str | None, str]:
    """The re-made file standing for a submitted file ``name`` (matched by file name): its path, or a reason."""
    candidates = sorted(path for path in made if PurePosixPath(path).name == name)
    if not candidates:
        return None, f"the re-run made no file named {name}"
    if len(candidates) > 1:
        in_outputs = [path for path in candidates if path.startswith("outputs/")]
        if len(in_outputs) != 1:
            return None, f"the re-run made {len(candidates)} files named {name}: which one was submitted is unclear"
        return in_outputs[0], ""
    return candidates[0], ""


def _number(text: str) -> float | None:
    value = text.strip()
    if value == "":
        return math.nan
    try:
        return float(value)
    except ValueError:
        return None


def compare_tables(submitted: bytes, remade: bytes, tolerance: Tolerance = Tolerance()) -> dict[str, Any]:
    try:
        left = list(csv.reader(io.StringIO(submitted.decode("utf-8-sig"))))
        right = list(csv.reader(io.StringIO(remade.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error):
        return compare_bytes(submitted, remade)
    if len(left) != len(right) or any(len(a) != len(b) for a, b in zip(left, right, strict=True)):
        return {
            "outcome": DIFFERS,
            "how": "table",
            "difference": f"the table's shape differs: {len(left)} rows submitted, {len(right)} re-made"
            + ("" if len(left) != len(right) else " (a row has another number of columns)"),
        }
    cells: list[dict[str, Any]] = []
    count = 0
    largest = 0.0
    for r, (row_a, row_b) in enumerate(zip(left, right, strict=True)):
        for c, (a, b) in enumerate(zip(row_a, row_b, strict=True)):
            x, y = _number(a), _number(b)
            same = tolerance.close(x, y) if x is not None and y is not None else a.strip() == b.strip()
            if same:
                continue
            count += 1
            if x is not None and y is not None and not (math.isnan(x) or math.isnan(y)):
                largest = max(largest, abs(x - y))
            if len(cells) < 20:
                label = row_a[0] if row_a else ""
                header = left[0][c] if left and c < len(left[0]) else str(c)
                cells.append(
                    {"row": r, "column": c, "row_label": label, "column_label": header, "submitted": a, "rerun": b}
                )
    if not count:
        return {"outcome": REPRODUCED, "how": "table", "tolerance": {"rel": tolerance.rel, "abs": tolerance.abs}}
    return {
        "outcome": DIFFERS,
        "how": "table",
        "difference": f"{count} cell(s) differ beyond the tolerance"
        + (f"; the largest numeric difference is {largest:g}" if largest else ""),
        "cells": cells,
        "tolerance": {"rel": tolerance.rel, "abs": tolerance.abs},
    }


def compare_images(submitted: dict[str, Any] | None, remade: dict[str, Any] | None) -> dict[str, Any]:
    """Compare the decoded-pixel digests of two images (made in the sandbox by ``jupyter.rerun``)."""
    if not submitted or not remade or "error" in submitted or "error" in remade:
        which = "submitted" if not submitted or "error" in submitted else "re-made"
        return {"outcome": NOT_RERUN, "how": "image", "difference": f"the {which} image could not be decoded"}
    size = lambda p: f"{p['width']}x{p['height']}"  # noqa: E731
    if size(submitted) != size(remade):
        return {
            "outcome": DIFFERS,
            "how": "image",
            "difference": f"the image is {size(submitted)} submitted but {size(remade)} re-made",
        }
    if submitted["pixels_sha256"] != remade["pixels_sha256"]:
        return {"outcome": DIFFERS, "how": "image", "difference": f"the pixels differ ({size(submitted)} both)"}
    return {"outcome": REPRODUCED, "how": "image"}


def compare_bytes(submitted: bytes, remade: bytes) -> dict[str, Any]:
    if submitted == remade:
        return {"outcome": REPRODUCED, "how": "bytes"}
    return {
        "outcome": DIFFERS,
        "how": "bytes",
        "difference": f"the bytes differ ({len(submitted)} submitted, {len(remade)} re-made; sha256 "
        f"{hashlib.sha256(submitted).hexdigest()[:12]} against {hashlib.sha256(remade).hexdigest()[:12]})",
    }


def compare_file(
    kind: str,
    submitted: bytes,
    remade: bytes,
    *,
    submitted_pixels: dict[str, Any] | None = None,
    remade_pixels: dict[str, Any] | None = None,
    tolerance: Tolerance = Tolerance(),
) -> dict[str, Any]:
    """One submitted file against its re-made counterpart, by the file's kind (table, image, text)."""
    if kind == "table":
        return compare_tables(submitted, remade, tolerance)
    if kind == "image":
        return compare_images(submitted_pixels, remade_pixels)
    return compare_bytes(submitted, remade)
