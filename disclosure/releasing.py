"""Content leaving the queue: release an approved request as its bundle, download it, revoke it, and
view one file's content."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from disclosure import rules
from disclosure.budget import charge_release
from disclosure.kernel import NotFound, OutputsBase, _Denied
from disclosure.ledger import record_in_ledger
from disclosure.models import OutputDecision, OutputFile, OutputRelease, OutputRequest, OutputRerun
from disclosure.progress import _checks_by_file
from disclosure.rerun.code import code_cells, language_of, notebook_without_outputs
from disclosure.rerun.results import current_rerun, reproduced_aggregates, unreproduced_files
from disclosure.rules import RuleViolation
from disclosure.visibility import (
    CHECKER,
    PROJECT_CLOSED_REASONS,
    TEAM,
    ContentAccess,
    content_access,
    content_access_to_files,
)
from projects.gate import check_access
from projects.rules import GATE_REASONS
from tre.core.db import utcnow


class Releasing(OutputsBase):
    def release(self, actor: Any, request_id: str) -> OutputRelease:
        """Build the bundle of an approved request, store it and open it to the project's team."""
        from disclosure.release import build_bundle

        with self._tx("output.release", actor, request_id) as s:
            req = self._get(s, request_id, lock=True)
            self._require_checker(s, actor, req, "output.release")
            self._require_project_open(s, actor, req, "output.release")
            rules.check_transition(req.state, rules.RELEASED)
            decision = s.scalar(
                select(OutputDecision).where(OutputDecision.request_id == req.id, OutputDecision.round == req.round)
            )
            current = {f.id: f.sha256 for f in req.current_files}
            if decision is None or decision.outcome != rules.OUTCOME_APPROVE or decision.file_hashes != current:
                raise RuleViolation("The files differ from the ones approved: the request cannot be released")
            if not self.release_unreproduced:
                held = unreproduced_files(s, req)
                if held:
                    raise RuleViolation(
                        "The re-run of this request's code did not reproduce "
                        + "; ".join(f"{name} ({why})" for name, why in held)
                        + ": the TRE's policy releases only reproduced files"
                    )
            checks = _checks_by_file(s, req)
            charge_release(s, self.audit, req, checks, actor.id)  # DP files spend the project's privacy budget
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
            added = record_in_ledger(s, req, checks, reproduced_aggregates(s, req))
            req.released_at = utcnow()
            self._move(s, req, rules.RELEASED, actor, "output.release", bundle_sha256=sha, ledger_entries=added)
            self._tell_team(s, req, "Your approved outputs are released and can be downloaded", "output.released")
        return release

    def download(self, actor: Any, request_id: str) -> tuple[bytes, OutputRelease]:
        """The released bundle, for the project's team while the gate lets them in; every download and
        every refusal is recorded."""
        with self._tx() as s:
            req = self._get(s, request_id)
            access = self._require_content(s, actor, req, None, "output.download")
            release = s.scalar(select(OutputRelease).where(OutputRelease.request_id == req.id))
            if access.as_ != TEAM or release is None:
                raise _Denied(
                    "output.download",
                    actor.id,
                    req,
                    "not released",
                    "Only the project's team downloads released outputs",
                )
            data = self.files.get(release.bundle_sha256)
            self._record(s, "output.download", actor, req, bundle_sha256=release.bundle_sha256)
        return data, release

    def revoke(self, actor: Any, request_id: str, reason: str) -> OutputRelease:
        reason = (reason or "").strip()
        with self._tx("output.revoke", actor, request_id) as s:
            req = self._revocable(s, actor, request_id, lock=True)
            if not reason:
                raise RuleViolation("Give the reason for revoking the release")
            release = s.scalar(select(OutputRelease).where(OutputRelease.request_id == req.id))
            assert release is not None
            release.revoked_at, release.revoked_by, release.revoke_reason = utcnow(), actor.id, reason[:2000]
            self._move(s, req, rules.REVOKED, actor, "output.revoke")
            self._tell_team(s, req, "A release of your outputs was revoked", "output.revoked")
        return release

    def release_to_revoke(self, actor: Any, request_id: str) -> OutputRequest:
        """The released request ``revoke`` would revoke, checked as it checks (a refusal is audited the
        same way), for its confirmation page; changes nothing."""
        with self._tx("output.revoke", actor, request_id) as s:
            return self._revocable(s, actor, request_id, lock=False)

    def _revocable(self, s: Session, actor: Any, request_id: str, *, lock: bool) -> OutputRequest:
        req = self._get(s, request_id, lock=lock)
        self._require_checker(s, actor, req, "output.revoke")
        rules.check_transition(req.state, rules.REVOKED)
        return req

    def view_file(self, actor: Any, file_id: str) -> tuple[OutputFile, bytes]:
        """A file's bytes, for whoever ``disclosure.visibility`` lets see it now; each view and each
        refusal is recorded."""
        with self._tx() as s:
            f = s.get(OutputFile, file_id)
            if f is None:
                raise NotFound("No such file")
            req = self._get(s, f.request_id)
            access = self._require_content(s, actor, req, f, "output.view_file")
            data = self.files.get(f.sha256)
            self._record(s, "output.view_file", actor, req, file_id=f.id, sha256=f.sha256, seen_as=access.as_)
        return f, data

    def view_code(self, actor: Any, request_id: str) -> tuple[OutputRerun, bytes]:
        """The code the request's current round was sent with, without any notebook cell outputs, for
        the request's checkers only (``disclosure.visibility``'s checker rule: eligible, holding a review
        place, while they review it). The code is not an output: it is never released to the team, who
        have it in their workspace (ADR 0029). Each view and each refusal is recorded."""
        with self._tx() as s:
            req = self._get(s, request_id)
            access = self._require_content(s, actor, req, None, "output.view_code")
            if access.as_ != CHECKER:
                raise _Denied(
                    "output.view_code",
                    getattr(actor, "id", None),
                    req,
                    "code: not a checker of this request",
                    "The code a request was sent with is shown only to its output checkers",
                )
            rerun = current_rerun(s, req)
            if rerun is None:
                raise NotFound("This request was sent without its code")
            data = self.files.get(rerun.code_sha256)
            if rerun.code_kind == "notebook":  # code stored before outputs were stripped on arrival
                data = notebook_without_outputs(data)
            self._record(s, "output.view_code", actor, req, sha256=rerun.code_sha256, seen_as=access.as_)
        return rerun, data

    def code_for_review(self, actor: Any, req: OutputRequest) -> dict[str, Any] | None:
        """The code as the checker's review page shows it (numbered cells of text, never outputs), when
        ``actor`` may see it now (see ``view_code``); ``None`` otherwise, recording nothing for those who
        may not (the page is not a request for the code)."""
        if current_rerun(self.session, req) is None:
            return None
        if content_access(self.session, actor, req, None).as_ != CHECKER:
            return None
        rerun, data = self.view_code(actor, req.id)
        return {"path": rerun.code_path, "kind": rerun.code_kind, "language": language_of(rerun.code_path, data),
                "cells": code_cells(rerun.code_kind, data)}

    def content_visible(self, actor: Any, req: OutputRequest) -> dict[str, bool]:
        """For each current file, whether ``actor`` may see its content now (a page's links; changes nothing)."""
        files = req.current_files
        answers = content_access_to_files(self.session, actor, req, files)
        return {f.id: answers[f.id].allowed for f in files}

    def _require_content(
        self, s: Session, actor: Any, req: OutputRequest, file: OutputFile | None, action: str
    ) -> ContentAccess:
        access = content_access(s, actor, req, file)
        if not access.allowed:
            raise _Denied(action, getattr(actor, "id", None), req, access.reason, access.message)
        return access

    def _require_project_open(self, s: Session, actor: Any, req: OutputRequest, action: str) -> None:
        """Nothing leaves a project that is suspended, closed or outside its dates (the access gate's
        answer about the project; a checker is not a member, so the rest of the answer is not theirs)."""
        closed = sorted(set(check_access(s, actor.id, req.project_id).reasons) & PROJECT_CLOSED_REASONS)
        if closed:
            raise _Denied(
                action,
                actor.id,
                req,
                "access gate: " + ",".join(closed),
                "Nothing can be released from this project now: " + "; ".join(GATE_REASONS[r] for r in closed),
            )
