"""ACRO's records: ``acro.results`` and what ``finalise()`` returns and ``load_records`` reads back.

A record is the session's :class:`disclosure.session.Output` (it already holds uid, status, type,
properties, sdc, command, summary, outcome, comments, exception and timestamp); ``Records`` is the ordered
collection ACRO's notebooks index by key or by position, with ACRO's error messages.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pandas as pd

from disclosure.session import RESULTS_VERSION, TOOL, Output

logger = logging.getLogger("acro")

Record = Output


def _blocked(filename: str, blocked: list[str]) -> bool:
    return os.path.splitext(filename)[1].lower() in blocked


class Records:
    """The session's outputs, in the order they were made."""

    def __init__(self, blocked_extensions: list[str] | None = None) -> None:
        self.results: dict[str, Output] = {}
        self.output_id = 0
        self.blocked_extensions = [ext.lower() for ext in (blocked_extensions or [])]

    # dict protocol, so the session stores its outputs here directly
    def __getitem__(self, key: str) -> Output:
        return self.results[key]

    def __setitem__(self, key: str, value: Output) -> None:
        self.results[key] = value

    def __delitem__(self, key: str) -> None:
        del self.results[key]

    def __contains__(self, key: object) -> bool:
        return key in self.results

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def items(self):
        return self.results.items()

    def values(self):
        return self.results.values()

    def keys(self):
        return self.results.keys()

    def pop(self, key: str) -> Output:
        return self.results.pop(key)

    # ACRO's API
    def add(
        self,
        status: str = "",
        output_type: str = "",
        properties: dict | None = None,
        sdc: dict | None = None,
        fair: dict | None = None,
        command: str = "",
        summary: str = "",
        outcome: pd.DataFrame | None = None,
        output: list | None = None,
        comments: list[str] | None = None,
    ) -> None:
        uid = f"output_{self.output_id}"
        record = Output(
            uid=uid,
            output_type=output_type,
            status=status,
            properties=properties or {},
            command=command,
            summary=summary,
            frames=[],
            verdict={"status": status, "reasons": []},
            sdc=sdc or {},
            outcome=outcome if outcome is not None else pd.DataFrame(),
            comments=list(comments or []),
            fair=fair or {},
        )
        record.output = list(output or [])
        self.results[uid] = record
        self.output_id += 1

    def get(self, key: str) -> Output:
        return self.results[key]

    def get_keys(self) -> list[str]:
        return list(self.results)

    def get_index(self, index: int) -> Output:
        return self.results[list(self.results)[index]]

    def add_custom(self, filename: str, comment: str | None = None) -> bool:
        """False (and nothing added) when the file's extension is blocked."""
        if _blocked(filename, self.blocked_extensions):
            return False
        if os.path.exists(filename):
            self.add(
                status="review",
                output_type="custom",
                command="custom",
                summary="review",
                comments=[comment] if comment else None,
            )
            record = self.get_index(-1)
            record.files = [os.path.normpath(filename)]
        return True

    def remove(self, key: str) -> None:
        if key not in self.results:
            raise ValueError(f"unable to remove {key}, key not found")
        del self.results[key]

    def rename(self, old: str, new: str) -> None:
        if old not in self.results:
            raise ValueError(f"unable to rename {old}, key not found")
        if new in self.results:
            raise ValueError(f"unable to rename, {new} already exists")
        record = self.results.pop(old)
        record.uid = new
        self.results[new] = record

    def add_comments(self, output: str, comment: str) -> None:
        if output not in self.results:
            raise ValueError(f"unable to find {output}, key not found")
        self.results[output].comments.append(comment)

    def add_exception(self, output: str, reason: str) -> None:
        if output not in self.results:
            raise ValueError(f"unable to add exception: {output} not found")
        self.results[output].exception = reason

    def validate_outputs(self) -> None:
        """Ask the researcher why each output that did not pass should be released (ACRO's prompt)."""
        for record in self.results.values():
            if record.status != "pass" and not record.exception:
                logger.info(
                    "\n%s\nThe status of the record above is: %s.\n"
                    "Please explain why an exception should be granted.\n",
                    record,
                    record.status,
                )
                record.exception = input("")

    def finalise_evidence(self, path: str, evidence_store: dict | None = None) -> dict:
        """Federated mode's manifest (evidence.json); a multi-line DoF (a CSV) goes to its own file."""
        os.makedirs(path, exist_ok=True)
        outputs: dict[str, Any] = {}
        for uid, entry in (evidence_store or {}).items():
            dof = entry.get("dof")
            if isinstance(dof, str) and "\n" in dof:
                name = f"{uid}_dof.csv"
                with open(os.path.join(path, name), "w", encoding="utf-8", newline="") as handle:
                    handle.write(dof)
                dof = name
            outputs[uid] = {
                "command": entry.get("command", ""),
                "analysis_names": entry.get("analysis_names", []),
                "variable_types": entry.get("variable_types", {}),
                "dof": dof,
                "interim_tables": {},
            }
        return {"version": RESULTS_VERSION, "tool": TOOL, "outputs": outputs}

    def print(self) -> str:
        text = "".join(f"{record}\n" for record in self.results.values())
        print(text)
        return text


def load_output(path: str, output: list[str]) -> list:
    """The tables an output wrote (CSV files read back), or the names of its other files."""
    if len(output) < 1:
        raise ValueError("error loading output")
    tables = [pd.read_csv(os.path.join(path, name)) for name in output if os.path.splitext(name)[1] == ".csv"]
    return tables if tables else list(output)


def load_records(path: str) -> Records:
    """Read back the records ``finalise(path)`` wrote to ``path/results.json``."""
    with open(os.path.join(path, "results.json"), encoding="utf-8") as handle:
        document = json.load(handle)
    if document.get("version") != RESULTS_VERSION:
        raise ValueError("error loading output")
    records = Records()
    for key, val in document["results"].items():
        names = [f["name"] for f in val["files"]]
        record = Output(
            uid=val["uid"],
            output_type=val["type"],
            status=val["status"],
            properties=val["properties"],
            command=val["command"],
            summary=val.get("acro_summary", val["summary"]),
            viewer_summary=val["summary"] if "acro_summary" in val else "",
            frames=[],
            verdict=val.get("tre_verdict") or {},
            sdc=val["files"][0]["sdc"] if val["files"] else {},
            outcome=pd.DataFrame.from_dict(val["outcome"]),
            spec=val.get("table_spec"),
            comments=list(val["comments"]),
            exception=val["exception"],
            timestamp=val["timestamp"],
            fair=val.get("fair") or {},
        )
        record.output = load_output(path, names) if names else []
        records.results[key] = record
    records.output_id = len(records.results)
    return records
