"""The re-run job: run the code a round of an output request was submitted with, compare, check.

For one ``OutputRerun`` row (one round that carried code) the job

1. writes the code and the submitted images into a scratch folder of its own
   (``<instance>/reruns/<rerun id>``, emptied first, so a killed attempt leaves nothing the next one trusts);
2. runs ``python -m jupyter.rerun`` (the sandbox: no network, the workspace runtime, the project's extract
   read-only at the recorded version, CPU, memory, disk and wall-time limits from the settings); that
   process dies with the worker (``PR_SET_PDEATHSIG``), and its tmpfs with it;
3. matches each current file of the request with the file of the same name the re-run made and compares
   them (``disclosure.rerun.compare``); and runs the automated disclosure checks (``disclosure.checks``)
   on each **re-made** table, with the population (dataset and filters) the session recorded for it in the
   re-run's ``results.json``, against the project's release ledger and the tables still in flight, so the
   differencing audit sees tables on filtered cohorts that were submitted without a specification;
4. writes the outcome, per file, and its audit event, in the job's own transaction (committed with the
   job's success, exactly once). A worker killed before that writes nothing; the sweeper runs the job
   again.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import shutil
import signal
import subprocess  # nosec B404 - our own module, argv list, no shell
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from disclosure.models import OutputRequest, OutputRerun
from disclosure.progress import RERUN_JOB
from disclosure.rerun.compare import DIFFERS, NOT_RERUN, REPRODUCED, Tolerance, compare_file, find_remade
from tre.core.audit import AuditLog
from tre.core.db import utcnow
from tre.core.jobs import JobContext, PermanentJobError, job_handler
from tre.core.testpoints import reach

PR_SET_PDEATHSIG = 1
RUNNER_GRACE_SECONDS = 60  # beyond the wall-time limit, for the sandbox to start and the images to be read


def limits_from(settings: Any) -> dict[str, int]:
    return {
        "cpu_seconds": int(getattr(settings, "rerun_cpu_seconds", 600)),
        "memory_bytes": int(getattr(settings, "rerun_memory_mb", 4096)) * 1024 * 1024,
        "disk_bytes": int(getattr(settings, "rerun_disk_mb", 1024)) * 1024 * 1024,
        "wall_seconds": int(getattr(settings, "rerun_wall_seconds", 900)),
    }


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# The launchers (TRE_RERUN_LAUNCHER): the same plan in, the same answer out (ADR 0029).
LAUNCHERS = {"local": "jupyter.rerun", "kubernetes": "jupyter.rerun_kubernetes"}


def cluster_from(settings: Any) -> dict[str, Any]:
    """The Kubernetes launcher's settings (TRE_RERUN_K8S_*)."""
    return {
        "namespace": str(getattr(settings, "rerun_k8s_namespace", "tre")),
        "image": str(getattr(settings, "rerun_k8s_image", "")),
        "work_dir": str(getattr(settings, "rerun_k8s_work_dir", "")),
        "work_claim": str(getattr(settings, "rerun_k8s_work_claim", "tre-rerun-work")),
        "extracts_claim": str(getattr(settings, "rerun_k8s_extracts_claim", "tre-extracts")),
        "start_seconds": int(getattr(settings, "rerun_k8s_start_seconds", 300)),
    }


def run_sandbox(plan: dict[str, Any]) -> dict[str, Any]:
    """Run the launcher's module (``jupyter.rerun``, or ``jupyter.rerun_kubernetes`` when the plan says
    ``launcher: kubernetes``) with ``plan``; its answer. A runner that cannot answer is an
    infrastructure failure (the job retries, then ends FAILED with the reason)."""
    module = LAUNCHERS.get(str(plan.get("launcher") or "local"))
    if module is None:
        raise PermanentJobError(f"no re-run launcher {plan.get('launcher')!r} (TRE_RERUN_LAUNCHER: local, kubernetes)")
    start = int((plan.get("kubernetes") or {}).get("start_seconds", 0)) if module != LAUNCHERS["local"] else 0
    timeout = int(plan["limits"]["wall_seconds"]) + start + RUNNER_GRACE_SECONDS
    completed = subprocess.run(  # noqa: S603  # nosec B603 - our interpreter and module, no shell
        [sys.executable, "-m", module],
        input=json.dumps(plan).encode(),
        capture_output=True,
        timeout=timeout,
        check=False,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, before exec
    )
    try:
        answer = json.loads(completed.stdout or b"{}")
    except ValueError:
        answer = {}
    if completed.returncode != 0 or not isinstance(answer, dict) or "status" not in answer:
        raise RuntimeError(f"the re-run runner ended with status {completed.returncode} and no answer")
    return answer


def _results_specs(made_dir: Path, made: dict[str, str]) -> dict[str, Any]:
    """File name -> table specification, from every ``results.json`` the re-run's session wrote."""
    specs: dict[str, Any] = {}
    for path in made:
        if Path(path).name != "results.json":
            continue
        try:
            document = json.loads((made_dir / path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        results = document.get("results") if isinstance(document, dict) else None
        for output in (results or {}).values():
            if not isinstance(output, dict):
                continue
            for entry in output.get("files") or []:
                name = entry.get("name") if isinstance(entry, dict) else None
                if isinstance(name, str) and output.get("table_spec"):
                    specs[name] = output["table_spec"]
    return specs


def run_rerun(
    session: Session,
    audit: AuditLog,
    files: Any,
    settings: Any,
    payload: dict[str, Any],
    *,
    job_id: str | None = None,
    progress: Any = None,
    sandbox: Any = run_sandbox,
) -> dict[str, Any]:
    report = progress or (lambda fraction, message: None)
    rerun_id = payload.get("rerun_id") if isinstance(payload, dict) else None
    rerun = session.get(OutputRerun, rerun_id) if rerun_id else None
    if rerun is None:
        raise PermanentJobError("no such re-run")
    if rerun.state != "pending":
        return {"state": rerun.state, "already": True}
    req = session.get(OutputRequest, rerun.request_id)
    if req is None:
        raise PermanentJobError("no such output request")
    instance = Path(settings.instance_path)
    extracts_root = Path(getattr(settings, "extracts_path", None) or instance / "extracts")
    extract = extracts_root / req.project_id
    work = instance / "reruns" / rerun.id
    project_id = req.project_id
    current = [(f.id, f.name, f.kind, f.sha256) for f in req.current_files]
    code = (rerun.code_sha256, rerun.code_path, rerun.code_kind, rerun.extract_version)
    # Nothing is written until the code has run: end the read transaction, so no lock is held for the
    # minutes a re-run may take (on SQLite a transaction would block every writer, the job's lease too).
    session.rollback()
    try:
        if work.exists():
            shutil.rmtree(work)  # a killed attempt's leftovers: never trusted
        (work / "submitted").mkdir(parents=True)
        code_file = work / "code"
        code_file.write_bytes(files.get(code[0]))
        for _id, name, kind, sha in current:
            if kind == "image":
                (work / "submitted" / name).write_bytes(files.get(sha))
        plan = {
            "runtime": str(getattr(settings, "workspace_runtime", "/opt/tre-workspace")),
            "work": str(work),
            "code_file": str(code_file),
            "code_path": code[1],
            "kind": code[2],
            "extract": str(extract) if extract.is_dir() else "",
            "extract_version": code[3],
            "limits": limits_from(settings),
            "rerun_id": rerun_id,
            "project_id": project_id,
            "launcher": str(getattr(settings, "rerun_launcher", "local")),
        }
        if plan["launcher"] == "kubernetes":
            plan["kubernetes"] = cluster_from(settings)
        report(0.1, "re-running the code")
        answer = sandbox(plan)
        reach("outputs.rerun.ran")  # the code ran, nothing written (ADR 0004)
        report(0.7, "comparing and checking the re-made files")
        rerun = session.get(OutputRerun, rerun_id, with_for_update=True, populate_existing=True)
        if rerun is None or rerun.state != "pending":
            return {"state": getattr(rerun, "state", "gone"), "already": True}
        made = answer.get("files") or {}
        results: dict[str, Any] = {}
        if answer.get("status") == "done":
            results = _compare_and_check(
                session, answer, work / "made", made, current, files, project_id, extracts_root
            )
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    req = session.get(OutputRequest, rerun.request_id)
    assert req is not None
    rerun.state = "done" if answer.get("status") == "done" else "failed"
    rerun.reason = str(answer.get("reason") or "")[:2000] if rerun.state == "failed" else ""
    if rerun.state == "failed" and not rerun.reason.strip():
        rerun.reason = "the re-run did not finish"
    rerun.log = [str(line)[:300] for line in (answer.get("log") or [])][:50]
    rerun.files = results
    rerun.timings = {k: round(float(v), 3) for k, v in (answer.get("timings") or {}).items()}
    rerun.job_id = job_id
    rerun.finished_at = utcnow()
    counts = {key: sum(1 for r in results.values() if r["outcome"] == key) for key in (REPRODUCED, DIFFERS, NOT_RERUN)}
    audit.record(
        session,
        "output.rerun",
        actor_id=None,
        target_type="output_request",
        target_id=req.id,
        project_id=req.project_id,
        detail={"round": rerun.round, "state": rerun.state, **counts},
    )
    session.flush()
    return {"state": rerun.state, **counts}


def _compare_and_check(
    session: Session,
    answer: dict[str, Any],
    made_dir: Path,
    made: dict[str, str],
    current: list[tuple[str, str, str, str]],
    files: Any,
    project_id: str,
    extracts_root: Path,
) -> dict[str, Any]:
    """Each current file against its re-made twin; each re-made table through the automated checks with
    the population its session recorded, audited against the ledger and the tables still in flight."""
    from disclosure.checks import _pending_aggregates, check_content
    from disclosure.engine import ReleasedAggregate
    from disclosure.progress import current_policy
    from disclosure.services import load_ledger

    specs = _results_specs(made_dir, made)
    policy = current_policy()
    ledger = load_ledger(session, project_id)
    ledger.entries.extend(_pending_aggregates(session, project_id, {fid for fid, *_ in current}))
    images = answer.get("images") or {}
    results: dict[str, Any] = {}
    for file_id, name, kind, sha in current:
        path, why = find_remade(name, made)
        if path is None:
            results[file_id] = {"name": name, "outcome": NOT_RERUN, "difference": why}
            continue
        remade = (made_dir / path).read_bytes()
        outcome = compare_file(
            kind,
            files.get(sha),
            remade,
            submitted_pixels=(images.get("submitted") or {}).get(name),
            remade_pixels=(images.get("rerun") or {}).get(path),
            tolerance=Tolerance(),
        )
        outcome.update(name=name, remade_path=path)
        if kind == "table":
            spec = specs.get(Path(path).name)
            checked = check_content(
                name,
                "table",
                remade,
                spec,
                policy=policy,
                extracts_root=extracts_root,
                project_id=project_id,
                output_id=file_id,
                ledger=ledger,
            )
            aggregate = checked["aggregate"]
            outcome["check"] = json.loads(
                json.dumps(
                    {
                        "status": checked["status"],
                        "reasons": list(checked["verdict"].get("reasons", [])),
                        "population": (aggregate or {}).get("population")
                        or {"dataset": (spec or {}).get("dataset"), "filters": None},
                        "differencing": checked["differencing"],
                        "aggregate": aggregate,
                    },
                    default=str,
                )
            )
            if aggregate is not None:  # the request's next files are audited against this one too
                ledger.entries.append(ReleasedAggregate.from_dict(aggregate))
        results[file_id] = outcome
    return results


@job_handler(RERUN_JOB, queue="checks")
def rerun_output_request(ctx: JobContext) -> dict[str, Any]:
    from flask import current_app

    platform = current_app.extensions["tre.platform"]
    ctx.report_progress(0.05, "preparing the re-run")
    return run_rerun(
        ctx.session,
        platform.audit,
        platform.files,
        platform.settings,
        ctx.payload,
        job_id=ctx.job_id,
        progress=ctx.report_progress,
    )
