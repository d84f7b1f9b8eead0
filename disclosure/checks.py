"""The automated check: a background job runs the disclosure engine on the files of a request.

One job per submission, keyed by the request, the hash of its files' hashes and the policy, so
submitting twice, resubmitting unchanged files or a redelivered message never checks twice; and
the verdict row is unique per file and policy, so a file already checked is skipped. The
handler's writes commit together with the job's success, exactly once; a worker killed
mid-check leaves nothing behind and the sweeper runs the job again. What the engine is given:

* a CSV with a table specification: the table is re-computed from the project's extract and
  compared with the CSV; without an extract the verdict says the re-computation was not done;
* a CSV without one: the counts are checked as published counts, and the verdict says what cannot
  be seen without the underlying data (contributors, dominance); a column whose header names a
  statistic (``los_median``, ``sd``, ``%``) is judged by its row's count, not as a count (ADR 0060);
* a text file of printed model summaries (statsmodels ``summary()``/``summary2()``, R's ``summary`` of
  ``lm``/``glm``): the regression rules on the residual degrees of freedom and printed residuals read
  from the text, at best *review* (``engine.model_text``, ADR 0063);
* anything else (other text, images): sent to a human with the reason.

A file the engine cannot read as a table with confidence (``engine.published``) gets a *review*
verdict that says why, never a guess; only infrastructure failures make the job retry, then end
FAILED with its reason. Every count or sum table gets a ledger entry of exactly what its file shows
(recorded when released) with its population from the specification; a table whose population is
unknown (no dataset, or filters not captured) is at best *review*.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Text, bindparam, cast, select
from sqlalchemy.orm import Session, lazyload

from disclosure import rules
from disclosure.engine.dpcheck import is_dp_spec
from disclosure.engine.population import validate as validate_filters
from disclosure.models import OutputCheck, OutputFile, OutputRequest
from disclosure.services import CHECK_JOB, advance_after_checks, current_policy, load_ledger
from tre.core.audit import AuditLog
from tre.core.db import new_id, utcnow
from tre.core.jobs import JobContext, PermanentJobError, job_handler
from tre.core.testpoints import reach

_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def extract_location(extracts_root: Path, project_id: str, dataset: str) -> Path | None:
    """Where the project's extract of ``dataset`` lives, if it exists: the extract service writes
    ``<extracts_path>/<project>/<dataset>/data/part-*.parquet``."""
    if not _DATASET.match(dataset or "") or ".." in dataset or not _DATASET.match(project_id or ""):
        return None
    base = extracts_root / project_id
    for candidate in (base / dataset / "data", base / dataset, base / f"{dataset}.parquet"):
        if candidate.is_file():
            return candidate
        if candidate.is_dir() and any(candidate.glob("*.parquet")):
            return candidate
    return None


def _read_extract(location: Path) -> pd.DataFrame:
    if location.is_file():
        return pd.read_parquet(location)
    parts = sorted(location.glob("*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def _compare(published: pd.DataFrame, recomputed: pd.DataFrame) -> dict[str, Any]:
    """Does the CSV show the numbers the re-computation releases? Compared by position, numbers only."""
    from disclosure.engine.tables import numbers

    pub, rec = numbers(published), numbers(recomputed)
    if pub.shape != rec.shape:
        return {
            "matches": False,
            "reason": f"the CSV is {pub.shape[0]}x{pub.shape[1]} but the specification "
            f"gives {rec.shape[0]}x{rec.shape[1]}",
        }
    both_missing = pd.isna(pub) & pd.isna(rec)
    close = abs(pub - rec) <= 1e-6 * (1 + abs(rec))
    mismatched = int((~(both_missing | close)).sum())
    return {
        "matches": mismatched == 0,
        "mismatched_cells": mismatched,
        "reason": "" if mismatched == 0 else f"{mismatched} cell(s) differ from the re-computed release",
    }


def _read_hints(spec: dict[str, Any] | None) -> dict[str, Any]:
    """What the specification says about the file's layout (label columns, dimension names)."""
    if not spec:
        return {}
    dims = list(spec.get("dims") or [])
    n_row = spec.get("n_row_dims")
    if not isinstance(n_row, int) or n_row < 1 or n_row >= len(dims):
        return {}
    hints: dict[str, Any] = {"n_row_dims": n_row, "n_col_dims": len(dims) - n_row}
    if len(dims) - n_row == 1:
        hints["dims"] = dims
    return hints


def _population(spec: dict[str, Any] | None) -> dict[str, Any]:
    """The population the specification states; filters ``None`` (unknown) when it has none to give."""
    if not spec:
        return {"dataset": None, "filters": None}
    filters = spec.get("filters", [])
    if filters is not None:
        try:
            validate_filters(filters)
        except ValueError:
            filters = None
    return {"dataset": spec.get("dataset") or None, "filters": filters}


def _aggregate(output_id: str, table: Any, statistic: str, population: dict[str, Any]) -> dict[str, Any] | None:
    """The ledger entry of exactly what the file shows: its cells, withheld cells and only its own margins."""
    from disclosure.engine import ReleasedAggregate
    from disclosure.engine.labels import jsonable

    if statistic not in ("count", "sum"):
        return None
    n_row, n_col = len(table.row_dims), len(table.col_dims)
    one_way = table.values.shape[1] == 1 and table.row_margin is None
    if one_way:
        n_col = 0  # one column of numbers: its header names the statistic, not a dimension

    def parts(label: Any, n: int) -> tuple:
        values = label if isinstance(label, tuple) else (label,)
        return tuple(jsonable(v) for v in values)[:n] if n else ()

    cells: dict[tuple, float] = {}
    suppressed: set[tuple] = set()
    frame = table.values
    for r, row_label in enumerate(frame.index):
        for c, col_label in enumerate(frame.columns):
            key = parts(row_label, n_row) + parts(col_label, n_col)
            value = frame.iat[r, c]
            if pd.isna(value):
                suppressed.add(key)
            else:
                cells[key] = float(value)
    if table.row_margin is not None:
        for row_label, value in table.row_margin.items():
            if not pd.isna(value):
                cells[parts(row_label, n_row) + (None,) * n_col] = float(value)
    if table.col_margin is not None:
        for col_label, value in table.col_margin.items():
            if not pd.isna(value):
                cells[(None,) * n_row + parts(col_label, n_col)] = float(value)
    if table.grand_total is not None and not pd.isna(table.grand_total):
        cells[(None,) * (n_row + n_col)] = float(table.grand_total)
    dims = tuple(table.row_dims + ([] if one_way else table.col_dims))
    return ReleasedAggregate(output_id, population, dims, statistic, cells, suppressed).to_dict()


def check_content(
    name: str,
    kind: str,
    content: bytes,
    spec: dict[str, Any] | None,
    *,
    policy: Any,
    extracts_root: Path,
    project_id: str,
    output_id: str,
    ledger: Any,
) -> dict[str, Any]:
    """The whole automated check of one file (pure apart from reading the extract)."""
    from disclosure.engine import (
        ReleasedAggregate,
        check_published_counts,
        differencing_audit,
        recompute,
        review_other_file,
    )
    from disclosure.engine.model_text import check_model_text
    from disclosure.engine.population import is_known
    from disclosure.engine.published import UnreadableTable, read_published_table
    from disclosure.engine.published_summary import check_published_summary, is_summary_table

    if kind != "table":
        # A text file of printed model summaries gets the regression rules (ADR 0063); anything else a human.
        model = check_model_text(name, content, policy=policy) if kind == "text" else None
        verdict = model if model is not None else review_other_file(name, policy)
        return {
            "status": verdict["status"],
            "verdict": verdict,
            "recompute": {"status": "not_applicable", "reason": "not a table"},
            "differencing": [],
            "aggregate": None,
        }
    if is_dp_spec(spec):
        return _check_dp_content(content, spec, policy=policy, extracts_root=extracts_root, project_id=project_id)
    population = _population(spec)
    recomputed = None
    record: dict[str, Any]
    if spec is None:
        record = {
            "status": "not_done",
            "reason": "no table specification was given: only the published "
            "counts could be checked, not the data behind them",
        }
    elif not spec.get("dataset"):
        record = {"status": "not_done", "reason": "the table specification names no dataset"}
    elif population["filters"] is None:
        record = {
            "status": "not_done",
            "reason": "the population is unknown: the table was made from a frame whose filters were not "
            "captured, so it cannot be re-computed",
        }
    else:
        location = extract_location(extracts_root, project_id, spec["dataset"])
        if location is None:
            record = {
                "status": "not_done",
                "reason": f"no extract of {spec['dataset']} exists for this project yet: the table "
                "could not be re-computed",
            }
        else:
            try:
                data = _read_extract(location)
                recomputed = recompute(spec, data, policy=policy)
            except (KeyError, ValueError, TypeError) as exc:
                record = {
                    "status": "failed",
                    "reason": f"re-computation failed: {type(exc).__name__}: {exc}"[:500],
                }
            else:
                record = {"status": "done", "dataset": spec["dataset"]}
    try:
        published = read_published_table(content, **_read_hints(spec))
    except UnreadableTable as exc:
        verdict = review_other_file(name, policy)
        verdict["reasons"].append(f"could not be read as a table with confidence: {exc}"[:300])
        return {
            "status": "review",
            "verdict": verdict,
            "recompute": record,
            "differencing": [],
            "aggregate": None,
        }

    if recomputed is not None:
        verdict = recomputed.verdict
        record.update(_compare(published.values, recomputed.table(released=True)))
        if not record["matches"]:
            verdict = {
                **verdict,
                "status": "fail",
                "reasons": [
                    *verdict.get("reasons", []),
                    "the CSV does not match its re-computation: " + record["reason"],
                ],
            }
    ledger_table: Any = published
    notes = published.notes
    if recomputed is None and not spec and is_summary_table(published):
        # Counts beside medians, means, spreads (a Table 1 from plain pandas): each statistic judged by its
        # row's count, and only the table's count column may enter the ledger (ADR 0060).
        summary = check_published_summary(published, policy=policy, mitigation="none")
        verdict, notes, ledger_table = summary.verdict, summary.notes, summary.counts
    elif recomputed is None:
        result = check_published_counts(published.values, policy=policy, mitigation="none")
        verdict = result.verdict
    if notes:
        verdict = {**verdict, "status": "fail", "reasons": [*verdict.get("reasons", []), *notes]}
    statistic = (spec or {}).get("statistic") or "count"
    aggregate = None if ledger_table is None else _aggregate(output_id, ledger_table, statistic, population)
    differencing: list[dict[str, Any]] = []
    if aggregate is not None and population["dataset"]:
        candidate = ReleasedAggregate.from_dict(aggregate)
        differencing = differencing_audit(ledger, candidate, threshold=int(policy.get("differencing", "threshold")))
        if differencing:
            earlier = sorted({f["earlier"] for f in differencing})
            verdict = {
                **verdict,
                "status": "fail",
                "reasons": [
                    *verdict.get("reasons", []),
                    f"differencing: {len(differencing)} group(s) revealed together with earlier release(s) "
                    f"{', '.join(earlier)} of this project",
                ],
            }
    if not is_known(population) and verdict["status"] == "pass":
        verdict = {
            **verdict,
            "status": "review",
            "reasons": [
                *verdict.get("reasons", []),
                "the population is unknown (no dataset or filters not captured): differencing against "
                "earlier releases cannot be proved",
            ],
        }
    return {
        "status": verdict["status"],
        "verdict": verdict,
        "recompute": record,
        "differencing": differencing,
        "aggregate": aggregate,
    }


def _check_dp_content(
    content: bytes, spec: dict[str, Any], *, policy: Any, extracts_root: Path, project_id: str
) -> dict[str, Any]:
    """A differentially private table: its specification checked against what the file shows (and, with
    the extract, against the true values); the epsilon found is what the release will charge. DP files
    go into no differencing ledger: their noise protects them whatever else was released."""
    import io

    from disclosure.engine.dpcheck import check_dp_output
    from disclosure.engine.verdict import criterion, simple_verdict

    data = None
    record: dict[str, Any] = {"status": "not_done", "reason": "no extract of the dataset the specification names"}
    location = extract_location(extracts_root, project_id, spec.get("dataset") or "")
    if location is not None and spec.get("filters") is not None:
        data = _read_extract(location)
        record = {"status": "done", "dataset": spec["dataset"]}
    try:
        dims = spec.get("dims") or []
        published = pd.read_csv(io.BytesIO(content), index_col=list(range(len(dims))) or None)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        published, reason = None, f"the file could not be read as a DP table: {type(exc).__name__}"
    if published is None:
        result = {"status": "fail", "reasons": [reason], "dp": {"epsilon": None}}
    else:
        result = check_dp_output(spec, published, policy, data)
    cap = {"release_cap": policy.get("dp", "release_cap")}
    rule = criterion("dp_release", result["status"], cap, "; ".join(result["reasons"]))
    verdict = simple_verdict("dp_table", policy, [rule], dp=result["dp"])
    if result["status"] == "pass":
        verdict["reasons"] = [f"differentially private: epsilon {result['dp']['epsilon']:g} is charged at release"]
    return {"status": verdict["status"], "verdict": verdict, "recompute": record, "differencing": [], "aggregate": None}


def run_check(
    session: Session,
    audit: AuditLog,
    files: Any,
    extracts_root: Path,
    payload: dict[str, Any],
    *,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Check every current file of the request with one of these contents; write verdicts; move the
    request on. A file already checked under this policy is skipped, so a re-run writes nothing twice."""
    try:
        request_id, policy_sha = payload["request_id"], payload["policy_sha256"]
        wanted = set(payload["sha256s"])
    except (KeyError, TypeError):
        raise PermanentJobError("the check job needs request_id, sha256s and policy_sha256") from None
    policy = current_policy()
    if policy.sha256 != policy_sha:
        raise PermanentJobError("the disclosure policy changed since submission; resubmit to check again")
    # The request alone, locked (``FOR UPDATE`` on PostgreSQL; the job's claim orders workers on SQLite),
    # then its current files as rows of the columns the checks use: its groups and its files as objects
    # (two more reads, the files joined to their groups) were two-fifths of the job's CPU (ADR 0048).
    req = session.execute(_LOCK_REQUEST, {"request_id": request_id}).scalar_one_or_none()
    if req is None:
        raise PermanentJobError("no such output request")
    # Each with its verdict under this policy, if it has one (the verdict was a read of its own, ADR 0058).
    current = session.execute(_CURRENT_FILES, {"request_id": req.id, "policy_sha256": policy.sha256}).all()
    targets = [f for f in current if f.sha256 in wanted]
    written = []
    verdicts: dict[str, str] = {}  # file id -> status, of the targets, under this policy
    if targets:
        ledger = _LazyLedger(session, req.project_id, {f.id for f in targets})
        already = {f.id: f.verdict_status for f in targets if f.verdict_status is not None}
        new_checks: list[dict[str, Any]] = []
        for f in targets:
            if f.id in already:
                continue
            outcome = check_content(
                f.name,
                f.kind,
                files.get(f.sha256),
                f.table_spec,
                policy=policy,
                extracts_root=extracts_root,
                project_id=req.project_id,
                output_id=f.id,
                ledger=ledger,
            )
            if outcome["differencing"]:
                earlier_ids = {finding["earlier"] for finding in outcome["differencing"]}
                requests = dict(
                    session.execute(
                        select(OutputFile.id, OutputFile.request_id).where(OutputFile.id.in_(earlier_ids))
                    ).all()
                )
                for finding in outcome["differencing"]:
                    finding["earlier_request"] = requests.get(finding["earlier"])  # nosec B113 - a dict, not the HTTP library
                    finding["earlier_state"] = (
                        "not yet released" if finding["earlier"] in ledger.pending_ids else "released"
                    )
            if outcome["aggregate"] is not None:
                # The request's next files are audited against this one too (they would leave together).
                from disclosure.engine import ReleasedAggregate

                ledger.add_own(ReleasedAggregate.from_dict(outcome["aggregate"]))
            reach("outputs.check.file_checked")  # checked, request locked, nothing written (ADR 0004)
            new_checks.append(_check_row(f, req, policy, outcome, job_id))
            written.append(f.id)
            verdicts[f.id] = outcome["status"]
            audit.record(
                session,
                "output.check",
                actor_id=None,
                target_type="output_file",
                target_id=f.id,
                project_id=req.project_id,
                detail={
                    "request": req.id,
                    "sha256": f.sha256,
                    "status": outcome["status"],
                    "recompute": outcome["recompute"].get("status"),
                    "policy_sha256": policy.sha256,
                },
            )
        if new_checks:
            # One Core INSERT of every verdict (executemany), not the unit of work: nothing in this
            # transaction uses them as objects (ADR 0058). Sent before the next read, as the unit of work
            # flushed them, so every read after this one sees them.
            session.execute(_INSERT_CHECK, new_checks if len(new_checks) > 1 else new_checks[0])
        verdicts.update(already)
    # What this transaction read and wrote already says whether every current file has its verdict.
    advanced = advance_after_checks(session, audit, req, policy.sha256, verdicts=verdicts, current_files=current)
    return {"checked": written, "state": req.state, "advanced": advanced}


_REQUEST_ALONE = (lazyload(OutputRequest.groups), lazyload(OutputRequest.files))
# The request by its id, locked and read afresh: ``Session.get`` with these options built its statement and
# its cache key again at every call; built once, only the id is bound.
_LOCK_REQUEST = (
    select(OutputRequest)
    .where(OutputRequest.id == bindparam("request_id"))
    .options(*_REQUEST_ALONE)
    .with_for_update()
    .execution_options(populate_existing=True)
)
# A request's current files, in the order its ``current_files`` gives them, as rows (built once).
_VERDICT_STATUS = (
    select(OutputCheck.status)
    .where(OutputCheck.file_id == OutputFile.id, OutputCheck.policy_sha256 == bindparam("policy_sha256"))
    .scalar_subquery()
)  # at most one: a file has one verdict per policy (the unique key)
_CURRENT_FILES = (
    select(
        OutputFile.id,
        OutputFile.name,
        OutputFile.kind,
        OutputFile.sha256,
        OutputFile.table_spec,
        _VERDICT_STATUS.label("verdict_status"),
    )
    .where(OutputFile.request_id == bindparam("request_id"), OutputFile.superseded_at.is_(None))
    .order_by(OutputFile.added_at)
)


class _LazyLedger:
    """What a check audits a table against: the project's release ledger, the in-flight tables of its
    other requests and this request's tables checked before it, in that order. Read from the database
    only when a file first needs it (a table with a known dataset): a plain CSV, a text file or an
    image is never audited against it, and the in-flight tables grow with the requests waiting."""

    def __init__(self, session: Session, project_id: str, skip: set[str]) -> None:
        self._session, self._project_id, self._skip = session, project_id, skip
        self._own: list[Any] = []  # this request's entries added before the ledger was read
        self._ledger: Any = None
        self.pending_ids: set[str] = set()  # output ids of the entries not yet released

    @property
    def entries(self) -> list[Any]:
        if self._ledger is None:
            with self._session.no_autoflush:  # this request's verdicts are skipped anyway: they go out together
                ledger = load_ledger(self._session, self._project_id)
                pending = _pending_aggregates(self._session, self._project_id, self._skip)
            ledger.entries.extend(pending)
            ledger.entries.extend(self._own)
            self.pending_ids |= {e.output_id for e in pending}
            self._ledger, self._own = ledger, []
        return self._ledger.entries  # type: ignore[no-any-return]

    def add_own(self, entry: Any) -> None:
        (self._own if self._ledger is None else self._ledger.entries).append(entry)
        self.pending_ids.add(entry.output_id)


PENDING_STATES = (rules.SUBMITTED, rules.CHECKING, rules.AWAITING_REVIEW, rules.APPROVED, rules.RETURNED)


# Decoded ledger entries of checked tables, by check id. A check row is never changed once written,
# so what its aggregate decodes to can be kept for the life of the worker process: without this
# every check job decoded the JSON of every in-flight table of its project again (a quarter of the
# worker's CPU under the load benchmark, growing with the requests waiting for review).
_DECODED: OrderedDict[str, Any] = OrderedDict()
_DECODED_KEPT = 4096
_DECODED_LOCK = threading.Lock()


def _pending_aggregates(session: Session, project_id: str, skip: set[str]) -> list[Any]:
    """Ledger entries of the project's checked tables that may still be released (their request is in
    flight, not yet released): two requests submitted side by side must not pass each other unaudited."""
    import json

    from disclosure.engine import ReleasedAggregate

    # The aggregate as its JSON text (neither SQLAlchemy nor the driver decodes it): only the rows
    # this process has not decoded before are.
    rows = session.execute(
        select(OutputCheck.id, OutputCheck.file_id, cast(OutputCheck.aggregate, Text))
        .join(OutputRequest, OutputRequest.id == OutputCheck.request_id)
        .join(OutputFile, OutputFile.id == OutputCheck.file_id)
        .where(
            OutputRequest.project_id == project_id,
            OutputRequest.state.in_(PENDING_STATES),
            OutputFile.superseded_at.is_(None),
            OutputCheck.aggregate.is_not(None),
        )
        .order_by(OutputCheck.checked_at, OutputCheck.id)
    ).all()
    seen: set[str] = set()
    out = []
    for check_id, file_id, text in rows:
        if file_id in skip or file_id in seen:
            continue
        with _DECODED_LOCK:
            known = check_id in _DECODED
            entry = _DECODED.get(check_id)
        if not known:
            data = json.loads(text) if text else None
            entry = ReleasedAggregate.from_dict(data) if data else None
            with _DECODED_LOCK:
                _DECODED[check_id] = entry
                while len(_DECODED) > _DECODED_KEPT:
                    _DECODED.popitem(last=False)
        if entry is None:
            continue
        seen.add(file_id)
        out.append(entry)
    return out


def _check_row(
    f: Any,
    req: OutputRequest,
    policy: Any,
    outcome: dict[str, Any],
    job_id: str | None,
) -> dict[str, Any]:
    """The verdict row of file ``f``: every column, as the unit of work filled them in for an
    ``OutputCheck`` (its id and time by their defaults; a table with no ledger entry holds JSON null
    in ``aggregate``, as the object given ``None`` did)."""
    return {
        "id": new_id(),
        "file_id": f.id,
        "request_id": req.id,
        "sha256": f.sha256,
        "policy_sha256": policy.sha256,
        "policy_version": str(policy.version),
        "status": outcome["status"],
        "verdict": _plain(outcome["verdict"]),
        "recompute": _plain(outcome["recompute"]),
        "differencing": _plain(outcome["differencing"]),
        "aggregate": _plain(outcome["aggregate"]) if outcome["aggregate"] is not None else None,
        "job_id": job_id,
        "checked_at": utcnow(),
    }


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (``json.loads(json.dumps(value, default=str))``), without writing the
    text: dicts with string keys, lists, tuples (as lists), strings, numbers, booleans and ``None`` are copied
    as they are, anything else goes through JSON itself (the text was written and read for nothing)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        if all(type(k) is str for k in value):
            return {k: _plain(v) for k, v in value.items()}
    elif kind is list or kind is tuple:
        return [_plain(v) for v in value]
    return json.loads(json.dumps(value, default=str))


_INSERT_CHECK = OutputCheck.__table__.insert()  # a Core insert: no unit of work


@job_handler(CHECK_JOB, queue="checks")
def check_output_file(ctx: JobContext) -> dict[str, Any]:
    from flask import current_app

    platform = current_app.extensions["tre.platform"]
    settings = platform.settings
    extracts_root = Path(getattr(settings, "extracts_path", None) or Path(settings.instance_path) / "extracts")
    # No progress report: the claim already shows the job running, and a report is one more
    # committed transaction between the submission and its verdict.
    return run_check(ctx.session, platform.audit, platform.files, extracts_root, ctx.payload, job_id=ctx.job_id)
