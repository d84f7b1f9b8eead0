"""The author's use cases: create a request, fill its groups and files, submit or resubmit it,
withdraw it."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from disclosure import permissions as perm
from disclosure import rules
from disclosure.kernel import DEFAULT_GROUP, IncompleteRequest, NotFound, OutputError, OutputsBase, _Denied
from disclosure.models import OutputFile, OutputGroup, OutputRequest, OutputRerun
from disclosure.progress import CHECK_JOB, RERUN_JOB, advance_after_checks, check_job_key
from disclosure.rerun.code import CODE_REQUIRED, CodeRefused, SubmittedCode, check_code
from disclosure.rules import RuleViolation
from projects.models import Project
from tre.core.db import new_id, utcnow
from tre.core.jobs import enqueue

# The columns of a new request, its groups and its files, in the table's order: each row is inserted
# with every value set (ADR 0057), as the unit of work would have written it.
_REQUEST_COLUMNS = tuple(c.key for c in OutputRequest.__table__.columns)
_GROUP_COLUMNS = tuple(c.key for c in OutputGroup.__table__.columns)
_FILE_COLUMNS = tuple(c.key for c in OutputFile.__table__.columns)
_INSERT_REQUEST = OutputRequest.__table__.insert()  # Core inserts: no unit of work
_INSERT_GROUPS = OutputGroup.__table__.insert()
_INSERT_FILES = OutputFile.__table__.insert()


def _insert_new(s: Session, req: OutputRequest) -> None:
    """Insert a request made in this transaction, with its groups and files, by Core instead of the unit
    of work (ADR 0057): on PostgreSQL one statement (``_one_insert``: the foreign keys are checked at
    the statement's end), elsewhere one ``INSERT`` per table, parents first. The objects stay out of
    the session: nothing later in the transaction reads them back as objects, and the caller answers
    from them as they are. The values the unit of work would have filled in at its flush (the times of
    creation and of adding a file, the rows' request) are set here, at the same point of the
    transaction: its end."""
    req.created_at = utcnow()
    for group in req.groups:
        group.request_id = req.id
    for f in req.files:  # a clock reading each, in order, as the flush took them: files are read back by it
        f.request_id, f.added_at = req.id, utcnow()
    request_row = {column: getattr(req, column) for column in _REQUEST_COLUMNS}
    group_rows = [{column: getattr(g, column) for column in _GROUP_COLUMNS} for g in req.groups]
    file_rows = [{column: getattr(f, column) for column in _FILE_COLUMNS} for f in req.files]
    if group_rows and file_rows and s.get_bind().dialect.name == "postgresql":
        s.execute(_one_insert(len(group_rows), len(file_rows)), _numbered(request_row, group_rows, file_rows))
        return
    s.execute(_INSERT_REQUEST, request_row)
    if group_rows:
        s.execute(_INSERT_GROUPS, group_rows)
    if file_rows:
        s.execute(_INSERT_FILES, file_rows)


@functools.cache
def _one_insert(groups: int, files: int) -> Any:
    """PostgreSQL's single statement for a request with ``groups`` groups and ``files`` files, built once
    per shape: every row but the last file's a one-row ``INSERT`` in a common table expression, each
    value a bound parameter (``_numbered`` names them). One-row inserts, because SQLAlchemy caches no
    compiled multi-row ``VALUES`` of bound parameters, and compiling each time costs more than it saves."""

    def row(insert: Any, columns: tuple[str, ...], name: str) -> Any:
        table = insert.table
        return insert.values({c: bindparam(f"{name}_{c}", type_=table.c[c].type) for c in columns})

    ctes = [row(_INSERT_REQUEST, _REQUEST_COLUMNS, "r0").cte("r0")]
    ctes += [row(_INSERT_GROUPS, _GROUP_COLUMNS, f"g{i}").cte(f"g{i}") for i in range(groups)]
    ctes += [row(_INSERT_FILES, _FILE_COLUMNS, f"f{i}").cte(f"f{i}") for i in range(files - 1)]
    return row(_INSERT_FILES, _FILE_COLUMNS, f"f{files - 1}").add_cte(*ctes)


def _numbered(request: dict[str, Any], groups: list[dict[str, Any]], files: list[dict[str, Any]]) -> dict[str, Any]:
    params = {f"r0_{c}": v for c, v in request.items()}
    for prefix, rows in (("g", groups), ("f", files)):
        for i, row in enumerate(rows):
            params.update({f"{prefix}{i}_{c}": v for c, v in row.items()})
    return params


class _CodeMissing(Exception):
    """A workspace submission without code under a policy that requires it (refused, then audited)."""


class Authoring(OutputsBase):
    def create_request(
        self, actor: Any, project_id: str, title: str, *, client_key: str | None = None
    ) -> tuple[OutputRequest, bool]:
        """A new draft request (or, for a repeated ``client_key``, the one it already made)."""
        title = self._clean_title(title, client_key)
        with self._tx() as s:
            return self._create(s, actor, project_id, title, client_key)

    @staticmethod
    def _clean_title(title: str, client_key: str | None) -> str:
        title = (title or "").strip()
        if len(title) > 200:
            raise OutputError("The title may be 200 characters at most")
        if client_key is not None and not (0 < len(client_key) <= 200):
            raise OutputError("The Idempotency-Key must be 1 to 200 characters")
        return title

    def _create(
        self, s: Session, actor: Any, project_id: str, title: str, client_key: str | None, *, add: bool = True
    ) -> tuple[OutputRequest, bool]:
        """The new draft (or the one a repeated ``client_key`` made). ``add=False``: a new request without
        a ``client_key`` is not added to the session; the caller inserts it (``_insert_new``)."""
        if not perm.can_submit(actor):
            raise _Denied("output.create", getattr(actor, "id", None), None, "missing permission")
        if not project_id:
            raise NotFound("No such project")
        if client_key is not None:
            existing = s.scalar(
                select(OutputRequest).where(
                    OutputRequest.project_id == project_id, OutputRequest.client_key == client_key
                )
            )
            if existing is not None:
                if existing.author_id != actor.id:
                    raise _Denied("output.create", actor.id, existing, "idempotency key of another author")
                return existing, False
        self._require_gate_to_create(s, actor, project_id)
        req = OutputRequest(
            # Its id and first state set here, not by the INSERT's defaults: nothing needs it flushed
            # before the use case is done with it (a workspace submission: one INSERT, no UPDATE).
            id=new_id(),
            project_id=project_id,
            author_id=actor.id,
            title=title,
            state=rules.DRAFT,
            round=1,
            client_key=client_key,
            reviews_required=self.reviews_required,
            groups=[],  # a new request has none: so adding some loads nothing
            files=[],
        )
        if client_key is None:  # nothing unique to collide with: no savepoint, no flush needed
            if add:
                s.add(req)
            self._record(s, "output.create", actor, req, reviews_required=req.reviews_required)
            return req, True
        try:
            with s.begin_nested():
                s.add(req)
                s.flush()
        except IntegrityError:
            # The same Idempotency-Key arrived twice at once and the other transaction won.
            existing = s.scalar(
                select(OutputRequest).where(
                    OutputRequest.project_id == project_id, OutputRequest.client_key == client_key
                )
            )
            if existing is None or client_key is None:
                raise
            if existing.author_id != actor.id:
                raise _Denied("output.create", actor.id, existing, "idempotency key of another author") from None
            return existing, False
        self._record(s, "output.create", actor, req, reviews_required=req.reviews_required)
        return req, True

    def _require_gate_to_create(self, s: Session, actor: Any, project_id: str) -> None:
        """The gate, asked before a request is made. It lets no one into a project that does not exist,
        so only a refusal asks whether the project exists (no such project: not found, as before the
        gate was asked; otherwise the audited refusal)."""
        try:
            self._require_gate(s, actor, None, project_id, "output.create")
        except _Denied:
            # Only whether it exists: loading the project would also load its team and datasets.
            if s.scalar(select(Project.id).where(Project.id == project_id)) is None:
                raise NotFound("No such project") from None
            raise

    def submit_from_workspace(
        self, actor: Any, project_id: str, title: str, **kwargs: Any
    ) -> tuple[OutputRequest, bool]:
        """Create, fill and submit a request in one transaction (see ``_submit_from_workspace``); under
        a policy that requires code (TRE_RERUN_REQUIRE_CODE), one sent without it is refused, audited,
        and leaves nothing behind. (A repeated ``client_key`` still answers with the request it made.)"""
        try:
            return self._submit_from_workspace(actor, project_id, title, **kwargs)
        except _CodeMissing:
            self._record_rule_refusal("output.submit", actor, None, CODE_REQUIRED, project_id=project_id)
            raise OutputError(CODE_REQUIRED) from None

    def _submit_from_workspace(
        self,
        actor: Any,
        project_id: str,
        title: str,
        *,
        client_key: str | None,
        groups: Sequence[tuple[str, str, str]],
        files: Sequence[tuple[str, bytes, str, Any]],
        code: tuple[str, bytes, str | None] | None = None,
    ) -> tuple[OutputRequest, bool]:
        """Create, fill and submit a request in one transaction (the workspace API): all or nothing.

        ``groups`` are (name, context, controls); ``files`` are (name, content, group, table spec);
        ``code`` is (path in the home, content, extract version) of the notebook or script that made
        them, re-run by a job (ADR 0018). The same ``client_key`` again returns the request it made,
        changing nothing.
        """
        import disclosure.checks  # noqa: F401  (registers the check job's handler)
        import disclosure.rerun.jobs  # noqa: F401  (registers the re-run job's handler)

        title = self._clean_title(title, client_key)
        checked = [self._check_upload(name, content, spec) for name, content, _g, spec in files]
        accepted_code = self._check_code(code)
        with self._tx() as s:
            req, created = self._create(s, actor, project_id, title, client_key, add=False)
            if not created:
                return req, False
            if self.require_code and accepted_code is None:
                raise _CodeMissing
            for name, context, controls in groups:
                self._set_group(s, actor, req, name, context, controls)
            for (_n, content, group, _s), (accepted, spec) in zip(files, checked, strict=True):
                self._add_file(s, actor, req, accepted, spec, content, group)
            self._submit(s, actor, req, accepted_code, new=True)
            if inspect(req).transient:  # made without a client_key: not in the session (ADR 0057)
                _insert_new(s, req)
            self._attach_code(s, actor, req, accepted_code)
        return req, True

    @staticmethod
    def _check_code(code: tuple[str, bytes, str | None] | None) -> SubmittedCode | None:
        if code is None:
            return None
        try:
            return check_code(*code)
        except CodeRefused as exc:
            raise OutputError(str(exc)) from None

    def _attach_code(self, s: Session, actor: Any, req: OutputRequest, code: SubmittedCode | None) -> None:
        """Keep the code of this round (in the encrypted store, like a file) and queue its re-run."""
        if code is None:
            return
        sha256 = self.files.put(code.content)
        rerun = OutputRerun(
            request_id=req.id,
            round=req.round,
            code_path=code.path,
            code_kind=code.kind,
            code_sha256=sha256,
            code_bytes=len(code.content),
            extract_version=code.extract_version,
        )
        s.add(rerun)
        s.flush()
        self._record(
            s,
            "output.code",
            actor,
            req,
            round=req.round,
            code_sha256=sha256,
            code_kind=code.kind,
            extract_version=code.extract_version,
        )
        enqueue(s, RERUN_JOB, {"rerun_id": rerun.id}, idempotency_key=f"{RERUN_JOB}:{req.id}:{req.round}")

    def resubmit_from_workspace(
        self,
        actor: Any,
        project_id: str,
        request_id: str,
        *,
        groups: Sequence[tuple[str, str | None, str | None]],
        files: Sequence[tuple[str, bytes, str, Any]],
        remove: Sequence[str] = (),
        code: tuple[str, bytes, str | None] | None = None,
    ) -> tuple[OutputRequest, bool]:
        """Change a returned request from its workspace and resubmit it, in one transaction.

        ``files`` replace the current files of the same name (or join the request); ``remove`` names
        current files to drop; ``groups`` (name, context, controls) change a group's text (``None``
        keeps it). An empty group name means the group of the file replaced, else the first group.
        Files come only this way, from the workspace: nothing else uploads them. Sent again after it
        succeeded (the same files are current and the request is back in the queue), it changes
        nothing and answers ``False``. ``code``, when sent, is re-run for the new round (a round sent
        without code is not re-run).
        """
        import disclosure.checks  # noqa: F401  (registers the check job's handler)
        import disclosure.rerun.jobs  # noqa: F401  (registers the re-run job's handler)

        checked = [self._check_upload(name, content, spec) for name, content, _g, spec in files]
        accepted_code = self._check_code(code)
        with self._tx("output.resubmit", actor, request_id) as s:
            req = self._get(s, request_id, lock=True)
            if req.project_id != project_id:
                raise NotFound("No such output request")
            self._require_author(s, actor, req, "output.resubmit")
            if req.state != rules.RETURNED and self._already_resubmitted(req, checked, files, remove):
                return req, False
            if req.state != rules.RETURNED:
                raise RuleViolation("Only a request returned for changes can be changed and resubmitted")
            first = req.groups[0].name if req.groups else DEFAULT_GROUP
            for name, context, controls in groups:
                name = name or first
                existing = next((grp for grp in req.groups if grp.name == name), None)
                keep = (existing.context, existing.controls) if existing is not None else ("", "")
                context = keep[0] if context is None else context
                controls = keep[1] if controls is None else controls
                self._set_group(s, actor, req, name, context, controls)
            for name in remove:
                gone = [f for f in req.current_files if f.name == name]
                if not gone:
                    raise NotFound(f"No current file named {name} in this request")
                for f in gone:
                    f.superseded_at, f.superseded_in_round = utcnow(), req.round
                    self._record(s, "output.remove_file", actor, req, file_id=f.id)
            groups_by_id = {grp.id: grp.name for grp in req.groups}
            for (_n, content, group, _s), (accepted, spec) in zip(files, checked, strict=True):
                if not group:  # the group of the file it replaces, else the request's first
                    same = next((f for f in req.current_files if f.name == accepted.name), None)
                    group = groups_by_id[same.group_id] if same is not None else first
                self._add_file(s, actor, req, accepted, spec, content, group)
            self._submit(s, actor, req, accepted_code)
            self._attach_code(s, actor, req, accepted_code)
        return req, True

    @staticmethod
    def _already_resubmitted(
        req: OutputRequest,
        checked: Sequence[tuple[rules.AcceptedFile, Any]],
        files: Sequence[tuple[str, bytes, str, Any]],
        remove: Sequence[str],
    ) -> bool:
        if req.state not in (rules.SUBMITTED, rules.CHECKING, rules.AWAITING_REVIEW) or req.round < 2:
            return False
        current = {f.name: f.sha256 for f in req.current_files}
        sent = {
            accepted.name: hashlib.sha256(content).hexdigest()
            for (accepted, _spec), (_n, content, _g, _s) in zip(checked, files, strict=True)
        }
        return all(current.get(name) == sha for name, sha in sent.items()) and not set(remove) & set(current)

    def set_group(self, actor: Any, request_id: str, name: str, context: str, controls: str) -> OutputGroup:
        """Create a group or change its context and controls."""
        with self._tx("output.group", actor, request_id) as s:
            req = self._get(s, request_id, lock=True)
            return self._set_group(s, actor, req, name, context, controls)

    def _set_group(
        self, s: Session, actor: Any, req: OutputRequest, name: str, context: str, controls: str
    ) -> OutputGroup:
        name = (name or "").strip() or DEFAULT_GROUP
        if len(name) > 100:
            raise RuleViolation("A group name may be 100 characters at most")
        if len(context or "") > rules.MAX_TEXT or len(controls or "") > rules.MAX_TEXT:
            raise RuleViolation(f"Context and controls may be {rules.MAX_TEXT} characters at most")
        self._require_author(s, actor, req, "output.group")
        self._editable(req)
        context, controls = (context or "").strip(), (controls or "").strip()
        group = self._group(s, req, name, create=True, context=context, controls=controls)
        group.context, group.controls = context, controls
        self._record(s, "output.group", actor, req, group_id=group.id)
        return group

    @staticmethod
    def _editable(req: OutputRequest) -> None:
        if req.state not in rules.EDITABLE_STATES:
            raise RuleViolation(
                f"A request that is {rules.STATE_LABELS[req.state].lower()} cannot be changed; "
                "only a draft or a returned request can"
            )

    @staticmethod
    def _group(s: Session, req: OutputRequest, name: str, *, create: bool, **fields: str) -> OutputGroup:
        group = next((g for g in req.groups if g.name == name), None)
        if group is None:
            if not create:
                raise NotFound("No such group")
            # Its id and defaults set here: the row goes out with the transaction's next flush.
            values = {"context": "", "controls": "", **fields}
            group = OutputGroup(id=new_id(), name=name, position=len(req.groups), **values)
            req.groups.append(group)
        return group

    def _check_upload(self, name: str, content: bytes, table_spec: Any) -> tuple[rules.AcceptedFile, Any]:
        try:
            accepted = rules.check_file(name, content, self.max_file_bytes)
            spec = rules.check_table_spec(table_spec)
        except RuleViolation as exc:
            raise OutputError(str(exc)) from None
        if spec is not None and accepted.kind != "table":
            raise OutputError(f"{accepted.name}: only a CSV table can carry a table specification")
        return accepted, spec

    def add_file(
        self,
        actor: Any,
        request_id: str,
        name: str,
        content: bytes,
        *,
        group: str = DEFAULT_GROUP,
        table_spec: Any = None,
    ) -> OutputFile:
        """Copy a file into the encrypted store now; a file of the same name replaces the current one."""
        accepted, spec = self._check_upload(name, content, table_spec)
        with self._tx("output.add_file", actor, request_id) as s:
            req = self._get(s, request_id, lock=True)
            return self._add_file(s, actor, req, accepted, spec, content, group)

    def _add_file(
        self,
        s: Session,
        actor: Any,
        req: OutputRequest,
        accepted: rules.AcceptedFile,
        spec: Any,
        content: bytes,
        group: str,
    ) -> OutputFile:
        self._require_author(s, actor, req, "output.add_file")
        self._editable(req)
        self._require_gate(s, actor, req, req.project_id, "output.add_file")
        current = [f for f in req.current_files if f.name == accepted.name]
        if len(req.current_files) - len(current) >= rules.MAX_FILES_PER_REQUEST:
            raise RuleViolation(f"A request may hold {rules.MAX_FILES_PER_REQUEST} files at most")
        # Content-addressed, so storing inside the transaction is safe: a copy left unused is harmless.
        sha256 = self.files.put(content)
        grp = self._group(s, req, (group or "").strip() or DEFAULT_GROUP, create=True)
        for old in current:
            if old.sha256 == sha256 and old.group_id == grp.id and old.table_spec == spec:
                return old  # the same file again: nothing changes
            old.superseded_at, old.superseded_in_round = utcnow(), req.round
        f = OutputFile(
            id=new_id(),  # known now: the row goes out with the transaction's next flush
            group_id=grp.id,
            name=accepted.name,
            kind=accepted.kind,
            content_type=accepted.content_type,
            sha256=sha256,
            size_bytes=len(content),
            table_spec=spec,
            added_by=actor.id,
            added_in_round=req.round,
        )
        req.files.append(f)
        self._record(
            s,
            "output.add_file",
            actor,
            req,
            file_id=f.id,
            sha256=sha256,
            kind=f.kind,
            replaces=[o.id for o in current],
            has_table_spec=spec is not None,
        )
        return f

    def remove_file(self, actor: Any, request_id: str, file_id: str) -> None:
        with self._tx("output.remove_file", actor, request_id) as s:
            req, f = self._removable_file(s, actor, request_id, file_id, lock=True)
            f.superseded_at, f.superseded_in_round = utcnow(), req.round
            self._record(s, "output.remove_file", actor, req, file_id=f.id)

    def file_to_remove(self, actor: Any, request_id: str, file_id: str) -> tuple[OutputRequest, OutputFile]:
        """What ``remove_file`` would remove, checked as it checks (a refusal is audited the same way),
        for its confirmation page; changes nothing."""
        with self._tx("output.remove_file", actor, request_id) as s:
            return self._removable_file(s, actor, request_id, file_id, lock=False)

    def _removable_file(
        self, s: Session, actor: Any, request_id: str, file_id: str, *, lock: bool
    ) -> tuple[OutputRequest, OutputFile]:
        req = self._get(s, request_id, lock=lock)
        self._require_author(s, actor, req, "output.remove_file")
        self._editable(req)
        f = s.get(OutputFile, file_id)
        if f is None or f.request_id != req.id or f.superseded_at is not None:
            raise NotFound("No such file in this request")
        return req, f

    def missing_for_submission(self, req: OutputRequest) -> list[str]:
        files = req.current_files
        counts = {g.id: sum(1 for f in files if f.group_id == g.id) for g in req.groups}
        facts = [rules.GroupFacts(g.name, g.context, g.controls, counts[g.id]) for g in req.groups]
        return rules.missing_for_submission(req.title, facts, len(files))

    def submit(self, actor: Any, request_id: str) -> OutputRequest:
        """Submit (or resubmit after a return): the automated checks start in the background."""
        import disclosure.checks  # noqa: F401  (registers the check job's handler)

        with self._tx("output.submit", actor, request_id) as s:
            req = self._get(s, request_id, lock=True)
            self._submit(s, actor, req)
        return req

    def _submit(
        self, s: Session, actor: Any, req: OutputRequest, code: SubmittedCode | None = None, *, new: bool = False
    ) -> None:
        """Submit ``req`` inside the caller's transaction. ``new``: the request was created in this
        transaction, so its files are new rows (no verdict, no check job, no reviewer can exist yet)."""
        self._require_author(s, actor, req, "output.submit")
        if req.state not in (rules.DRAFT, rules.RETURNED):
            rules.check_transition(req.state, rules.SUBMITTED)
        if self.require_code and code is None:  # the TRE's policy: no release without the code that made it
            raise RuleViolation(CODE_REQUIRED)
        problems = self.missing_for_submission(req)
        if problems:
            raise IncompleteRequest(problems)
        self._require_gate(s, actor, req, req.project_id, "output.submit")
        resubmission = req.state == rules.RETURNED
        now = utcnow()
        if resubmission:
            req.round += 1
        req.submitted_at = req.submitted_at or now
        req.last_submitted_at = now
        req.checks_finished_at = None
        self._move(
            s,
            req,
            rules.SUBMITTED,
            actor,
            "output.resubmit" if resubmission else "output.submit",
            round=req.round,
            files={f.id: f.sha256 for f in req.current_files},
        )
        policy = self.policy
        shas = sorted({f.sha256 for f in req.current_files})
        enqueue(
            s,
            CHECK_JOB,
            {"request_id": req.id, "sha256s": shas, "policy_sha256": policy.sha256},
            idempotency_key=check_job_key(req.id, shas, policy.sha256),
            new_key=new,
        )
        if not new:  # files kept from an earlier round may already carry their verdicts
            advance_after_checks(s, self.audit, req, policy.sha256, request_id=self.request_id)
        self._tell_checkers(s, req, "Output request submitted for checking", "output.submitted", new=new)

    def withdraw(self, actor: Any, request_id: str) -> OutputRequest:
        with self._tx("output.withdraw", actor, request_id) as s:
            req = self._withdrawable(s, actor, request_id, lock=True)
            self._move(s, req, rules.WITHDRAWN, actor, "output.withdraw")
            if req.submitted_at is not None:
                self._tell_checkers(s, req, "Output request withdrawn by its author", "output.withdrawn")
        return req

    def request_to_withdraw(self, actor: Any, request_id: str) -> OutputRequest:
        """The request ``withdraw`` would withdraw, checked as it checks, for its confirmation page;
        changes nothing."""
        with self._tx("output.withdraw", actor, request_id) as s:
            return self._withdrawable(s, actor, request_id, lock=False)

    def _withdrawable(self, s: Session, actor: Any, request_id: str, *, lock: bool) -> OutputRequest:
        req = self._get(s, request_id, lock=lock)
        self._require_author(s, actor, req, "output.withdraw")
        rules.check_transition(req.state, rules.WITHDRAWN)
        return req
