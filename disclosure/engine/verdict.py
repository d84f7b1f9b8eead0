"""Verdict vocabulary shared by every output type.

A verdict is a JSON-serialisable dict. Every verdict carries ``schema``, ``output_type``, ``status``
(``pass`` / ``review`` / ``fail``), ``policy`` (name, version, sha256), ``criteria`` (one entry per rule
applied, with its parameters: a machine-readable record of the
documented process SATRE 3.3.03 asks for) and ``reasons``. Tables
add ``cells`` (flagged or mitigated cells addressed by label) and ``mitigation``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from disclosure.engine.policy import Policy

SCHEMA = "tre.disclosure.verdict/1"
_ORDER = {"pass": 0, "review": 1, "fail": 2}


def combine_status(statuses: Iterable[str]) -> str:
    """The worst of several statuses ("pass" when there are none)."""
    worst = "pass"
    for s in statuses:
        if s not in _ORDER:
            raise ValueError(f"unknown status {s!r}")
        if _ORDER[s] > _ORDER[worst]:
            worst = s
    return worst


def criterion(
    rule: str, status: str, parameters: dict | None = None, reason: str = "", **details: Any
) -> dict[str, Any]:
    """One applied rule's record."""
    entry = {"rule": rule, "parameters": parameters or {}, "status": status, "reason": reason}
    entry.update(details)
    return entry


def simple_verdict(output_type: str, policy: Policy, criteria: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Verdict of a non-table output: its status is the worst criterion's."""
    status = combine_status(c["status"] for c in criteria)
    reasons = [f"{c['rule']}: {c['reason']}" for c in criteria if c["status"] != "pass" and c["reason"]]
    verdict = {
        "schema": SCHEMA,
        "output_type": output_type,
        "status": status,
        "policy": policy.identity(),
        "criteria": criteria,
        "reasons": reasons,
    }
    verdict.update(extra)
    return verdict


def review_other_file(name: str, policy: Policy) -> dict[str, Any]:
    """Any file the engine cannot analyse goes to a human, saying why."""
    return simple_verdict(
        "other",
        policy,
        [
            criterion(
                "unrecognised_output",
                "review",
                {},
                f"{name}: no automated check exists for this kind of file",
            )
        ],
        file=name,
    )
