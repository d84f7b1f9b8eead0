"""The release bundle: the approved files with their verdicts, the disclosure-control record, the
checkers' decisions and every hash, as one zip built deterministically.

No checker's identity goes in (``decisions.json`` has outcomes and votes, not who decided or voted
how). The same approved request always gives the same bytes (entries sorted, fixed timestamps and
permissions, JSON with sorted keys, no release time inside), so the bundle's sha256 identifies
what was released. ``SHA256SUMS`` lists every entry, and each released file is checked against the
hash the approval bound to before it goes in.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import zipfile
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from disclosure.models import OutputCheck, OutputDecision, OutputRequest, OutputVote
from disclosure.rules import RuleViolation

BUNDLE_SCHEMA = "tre.outputs.bundle/1"
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _json(value: Any) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n").encode()


def public_verdict(verdict: dict[str, Any] | None) -> dict[str, Any] | None:
    """A verdict fit to leave the environment: every criterion and flagged cell, but not the interval
    audit's per-cell bounds on suppressed values (checkers see those inside; they stay inside)."""
    if verdict is None:
        return None
    out = copy.deepcopy(verdict)
    audit = out.get("mitigation", {}).get("suppression", {}).get("audit")
    if isinstance(audit, dict) and "intervals" in audit:
        audit["intervals"] = f"{len(audit['intervals'])} interval(s) checked; bounds withheld"
    return out


def deterministic_zip(entries: dict[str, bytes]) -> bytes:
    """A zip of ``entries`` whose bytes depend only on the names and contents."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, entries[name], compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
    return buffer.getvalue()


def build_bundle(
    s: Session, req: OutputRequest, files: Any, checks: dict[str, OutputCheck], decision: OutputDecision
) -> tuple[bytes, dict[str, Any]]:
    """The bundle's bytes and its manifest (also stored with the release)."""
    entries: dict[str, bytes] = {}
    listed = []
    verdicts: dict[str, Any] = {}
    record_files = []
    groups = {g.id: g for g in req.groups}
    for f in sorted(req.current_files, key=lambda f: (groups[f.group_id].name, f.name)):
        content = files.get(f.sha256)
        if hashlib.sha256(content).hexdigest() != decision.file_hashes.get(f.id):
            raise RuleViolation("A file differs from the one approved: the request cannot be released")
        path = f"files/{groups[f.group_id].name}/{f.name}"
        entries[path] = content
        listed.append({"path": path, "file_id": f.id, "sha256": f.sha256, "bytes": f.size_bytes, "kind": f.kind})
        check = checks.get(f.id)
        verdict = public_verdict(check.verdict) if check else None
        verdicts[path] = verdict
        record_files.append(
            {
                "path": path,
                "sha256": f.sha256,
                "group": groups[f.group_id].name,
                "automated_status": check.status if check else "not_checked",
                "policy": verdict.get("policy") if verdict else None,
                "criteria": verdict.get("criteria", []) if verdict else [],
                "mitigation": verdict.get("mitigation") if verdict else None,
                "recompute": check.recompute if check else None,
                "differencing": check.differencing if check else [],
                "table_spec": f.table_spec,
            }
        )
    decisions = list(
        s.scalars(select(OutputDecision).where(OutputDecision.request_id == req.id).order_by(OutputDecision.round))
    )
    votes = list(s.scalars(select(OutputVote).where(OutputVote.request_id == req.id)))
    current = {f.id for f in req.current_files}
    manifest = {
        "schema": BUNDLE_SCHEMA,
        "request_id": req.id,
        "project_id": req.project_id,
        "author_id": req.author_id,
        "round": req.round,
        "reviews_required": req.reviews_required,
        "files": listed,
    }
    entries["manifest.json"] = _json(manifest)
    entries["verdicts.json"] = _json(verdicts)
    entries["disclosure-control-record.json"] = _json(
        {
            "schema": "tre.outputs.disclosure-control-record/1",
            "request_id": req.id,
            "groups": [{"name": g.name, "context": g.context, "controls": g.controls} for g in req.groups],
            "files": record_files,
        }
    )
    # The team never learns who voted how: the decisions and the final votes carry no checker identity.
    entries["decisions.json"] = _json(
        {
            "decisions": [
                {
                    "round": d.round,
                    "outcome": d.outcome,
                    "decided_at": d.decided_at,
                    "comment": d.comment,
                    "file_hashes": d.file_hashes,
                }
                for d in decisions
            ],
            "final_votes": sorted(
                ({"file_id": v.file_id, "vote": v.vote} for v in votes if v.file_id in current),
                key=lambda v: (v["file_id"], v["vote"]),
            ),
        }
    )
    sums = "".join(f"{hashlib.sha256(entries[n]).hexdigest()}  {n}\n" for n in sorted(entries))
    entries["SHA256SUMS"] = sums.encode()
    return deterministic_zip(entries), manifest
