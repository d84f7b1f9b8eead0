"""Content leaving the queue: release an approved request as its bundle, download it, revoke it, and
view one file's content."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from disclosure import permissions as perm
from disclosure import rules
from disclosure.kernel import NotFound, OutputsBase, _Denied
from disclosure.ledger import record_in_ledger
from disclosure.models import OutputDecision, OutputFile, OutputRelease
from disclosure.progress import _checks_by_file
from disclosure.rules import RuleViolation
from tre.core.db import utcnow


class Releasing(OutputsBase):
    def release(self, actor: Any, request_id: str) -> OutputRelease:
        """Build the bundle of an approved request, store it and open it to the project's team."""
        from disclosure.release import build_bundle

        with self._tx() as s:
            req = self._get(s, request_id, lock=True)
            self._require_checker(s, actor, req, "output.release")
            rules.check_transition(req.state, rules.RELEASED)
            decision = s.scalar(
                select(OutputDecision).where(OutputDecision.request_id == req.id, OutputDecision.round == req.round)
            )
            current = {f.id: f.sha256 for f in req.current_files}
            if decision is None or decision.outcome != rules.OUTCOME_APPROVE or decision.file_hashes != current:
                raise RuleViolation("The files differ from the ones approved: the request cannot be released")
            checks = _checks_by_file(s, req)
            bundle, manifest = build_bundle(s, req, self.files, checks, decision)
            sha = self.files.put(bundle)
            release = OutputRelease(
                request_id=req.id,
                project_id=req.project_id,
                bundle_sha256=sha,
                bundle_bytes=len(bundle),
                manifest=manifest,
                released_by=actor.id,
            )
            s.add(release)
            added = record_in_ledger(s, req, checks)
            req.released_at = utcnow()
            self._move(s, req, rules.RELEASED, actor, "output.release", bundle_sha256=sha, ledger_entries=added)
            self._tell_team(s, req, "Your approved outputs are released and can be downloaded", "output.released")
        return release

    def download(self, actor: Any, request_id: str) -> tuple[bytes, OutputRelease]:
        """The released bundle, for the project's team only; every download is recorded."""
        with self._tx() as s:
            req = self._get(s, request_id)
            if not perm.can_download(s, actor, req):
                raise _Denied(
                    "output.download",
                    getattr(actor, "id", None),
                    req,
                    "not on the project's team",
                    "Only the project's team may download its released outputs",
                )
            release = s.scalar(select(OutputRelease).where(OutputRelease.request_id == req.id))
            if req.state != rules.RELEASED or release is None or release.revoked_at is not None:
                raise RuleViolation("Only released outputs that have not been revoked can be downloaded")
            data = self.files.get(release.bundle_sha256)
            self._record(s, "output.download", actor, req, bundle_sha256=release.bundle_sha256)
        return data, release

    def revoke(self, actor: Any, request_id: str, reason: str) -> OutputRelease:
        reason = (reason or "").strip()
        with self._tx() as s:
            req = self._get(s, request_id, lock=True)
            self._require_checker(s, actor, req, "output.revoke")
            if not reason:
                raise RuleViolation("Give the reason for revoking the release")
            rules.check_transition(req.state, rules.REVOKED)
            release = s.scalar(select(OutputRelease).where(OutputRelease.request_id == req.id))
            assert release is not None
            release.revoked_at, release.revoked_by, release.revoke_reason = utcnow(), actor.id, reason[:2000]
            self._move(s, req, rules.REVOKED, actor, "output.revoke")
            self._tell_team(s, req, "A release of your outputs was revoked", "output.revoked")
        return release

    def view_file(self, actor: Any, file_id: str) -> tuple[OutputFile, bytes]:
        """A file's bytes for a checker or the project's team; each view is recorded."""
        with self._tx() as s:
            f = s.get(OutputFile, file_id)
            if f is None:
                raise NotFound("No such file")
            req = self._get(s, f.request_id)
            if not (perm.can_check(s, actor, req) or perm.can_view_as_team(s, actor, req)):
                raise _Denied("output.view_file", getattr(actor, "id", None), req, "neither checker nor team")
            data = self.files.get(f.sha256)
            self._record(s, "output.view_file", actor, req, file_id=f.id, sha256=f.sha256)
        return f, data
