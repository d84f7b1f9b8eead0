"""ACRO's ``finalise(path, "xlsx")``: one workbook, a description sheet and one sheet per output."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd


def write_workbook(records: Any, filename: str) -> None:
    """Needs openpyxl (not a project dependency): without it the caller gets a clear ImportError."""
    try:
        import openpyxl  # noqa: F401
    except ImportError as exc:
        raise ImportError("finalise(ext='xlsx') needs openpyxl; use ext='json' or install openpyxl") from exc
    os.makedirs(os.path.dirname(filename) or ".", exist_ok=True)
    shown = [(uid, out) for uid, out in records.items() if out.output_type != "custom"]
    with pd.ExcelWriter(filename, engine="openpyxl") as writer:
        pd.DataFrame(
            {
                "Sheet": [u for u, _ in shown],
                "Command": [o.command for _, o in shown],
                "Summary": [o.summary for _, o in shown],
            }
        ).to_excel(writer, sheet_name="description", index=False)
        for uid, out in shown:
            pd.DataFrame([out.command, out.summary], index=["Command", "Summary"]).to_excel(writer, sheet_name=uid)
            if out.outcome is not None and not out.outcome.empty:
                out.outcome.to_excel(writer, sheet_name=uid, startrow=4)
            for table in out.frames:
                table.to_excel(writer, sheet_name=uid, startrow=1 + writer.sheets[uid].max_row)
