"""Benchmark: automated output-check latency, from submission to verdict, with a real worker.

Run:  python -m benchmarks.output_check_latency [--requests 10] [--rows 200000] [--files typical|load]

For each backend — the embedded default (SQLite + kombu's SQLAlchemy broker) and, when reachable,
PostgreSQL + Redis — it builds a fresh instance, starts a real Celery worker (with its sweeper),
and submits ``--requests`` typical output requests one after another. A typical request holds
three files: a count table with its table specification (re-computed from a Parquet extract of
``--rows`` rows), a plain CSV of counts and a text file. Latency is the wall time from the
submitting transaction's commit to the request reaching ``awaiting_review`` (every verdict
written), read by polling the database every 20 ms.

Baseline: the same three checks run in-process with no queue (``disclosure.checks.check_content``),
so ``ratio`` is what the queue, the worker hand-off and the database add on top of the engine.
The embedded default is also measured with its wake-ups off (``TRE_BROKER_WAKEUPS=0``: kombu's
transport as it comes, a consumer that finds nothing sleeps its polling interval), in the same run,
as ``embedded_polling``; ``speedup_vs_polling`` is that median over the default's (ADR 0017).
Each backend's line splits the median into the hand-off (commit to the job's claim by a worker,
read from the job row), the job (claim to success) and the rest (this script noticing, every 20 ms),
and gives the CPU the worker's processes used per request (from /proc), which against the job's
wall time shows how much of it was waiting for a CPU on a shared machine.
``--files load`` submits instead the load benchmark's output (``benchmarks.load``): one plain CSV of
counts by region, never audited against the ledger, the kind 7 % of that mix submits. Each backend's
line then also gives the worker's CPU per check: its processes' CPU over the submissions, less what
the idle worker (polling, the sweeper, beat) used in as long a time measured just before, per
submission, beside the named baseline ``in_process_check_cpu_s``: the CPU of the same checks run in
this process with no queue (``check_content``; the database work of the job is not in it).
The last line printed is one JSON object (benchmark, value, baseline, ratio, target, ...).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SPEC = {
    "dataset": "admissions",
    "filters": [],
    "dims": ["region", "sex"],
    "n_row_dims": 1,
    "statistic": "count",
    "value": None,
    "person": "pid",
}
PLAIN = b"age_band,female,male\n18-39,120,98\n40-64,240,231\n65+,310,287\n"
LOAD_CSV = b"region,admissions\nNorth,120\nSouth,98\nEast,240\nWest,231\n"  # benchmarks.load's shape
NOTES = b"Logistic regression of readmission on deprivation decile; 4,210 admissions; OR 1.12 (1.05-1.19)."
POSTGRES_URL = os.environ.get("TRE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TRE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


def extract(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(20261123)
    return pd.DataFrame(
        {
            "region": rng.choice(["North", "South", "East", "West", "Central"], rows),
            "sex": rng.choice(["F", "M"], rows),
            "pid": rng.integers(0, max(rows // 2, 1), rows),
        }
    )


def reachable(url: str) -> bool:
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url.replace("postgresql+psycopg", "postgresql"))
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), timeout=1):
            return True
    except OSError:
        return False


def fresh_postgres() -> tuple[str, Any]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"tre_bench_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()

    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False), drop


def setup_instance(
    instance: Path, database_url: str, broker_url: str, frame: pd.DataFrame, wakeups: bool
) -> tuple[Any, Any, Any]:
    """Schema, an author on an active project whose gate is open, and the project's extract."""
    from projects.models import AgreementSignature, AgreementTemplate, Project, ProjectMember, TrainingRecord
    from tre.app import create_app
    from tre.core import migrate
    from tre.core.db import transaction, utcnow
    from tre.core.identity import Identity

    migrate.upgrade(database_url)
    app = create_app(
        {
            "TRE_SETTINGS": {
                "instance_path": instance,
                "database_url": database_url,
                "broker_url": broker_url,
                "broker_wakeups": wakeups,
            }
        }
    )
    p = app.extensions["tre.platform"]
    ident = Identity(p.db.session, p.keys, p.audit)
    author = ident.create_user(None, "bench.author@nhs.example", "Bench Author", ["researcher"], bootstrap=True)
    s = p.db.session
    today = utcnow().date()
    with transaction(s):
        author.mfa_enrolled_at = utcnow()
        body = "Benchmark agreement"
        template = AgreementTemplate(
            version=1, title="Agreement", body=body, content_hash=hashlib.sha256(body.encode()).hexdigest()
        )
        project = Project(
            title="Benchmark",
            state="active",
            pi_id=author.id,
            start_date=today - dt.timedelta(days=1),
            end_date=today + dt.timedelta(days=30),
        )
        s.add_all([template, project])
        s.flush()
        s.add(
            ProjectMember(project_id=project.id, user_id=author.id, role="principal_investigator", added_by=author.id)
        )
        s.add(
            AgreementSignature(
                template_id=template.id,
                project_id=project.id,
                user_id=author.id,
                content_hash=template.content_hash,
                signed_name="Bench Author",
            )
        )
        s.add(
            TrainingRecord(
                user_id=author.id,
                course="safe_researcher",
                completed_on=today,
                expires_on=today + dt.timedelta(days=30),
            )
        )
    folder = instance / "extracts" / project.id / "admissions" / "data"
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "part-00000.parquet")
    return app, author, project


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tre.worker",
        "worker",
        "--beat",
        "--schedule",
        str(Path(env["TRE_INSTANCE_PATH"]) / "beat-schedule"),
        "--concurrency",
        "2",
        "-Q",
        "default,checks,extracts,notifications",
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def table_csv(frame: pd.DataFrame) -> bytes:
    from disclosure.engine import default_policy, recompute

    return recompute(SPEC, frame, policy=default_policy()).table(released=True).to_csv().encode()


def wait(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def run_backend(
    name: str,
    database_url: str,
    broker_url: str,
    frame: pd.DataFrame,
    requests: int,
    *,
    wakeups: bool = True,
    files: str = "typical",
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"tre-bench-{name}-") as tmp:
        instance = Path(tmp) / "instance"
        instance.mkdir()
        app, author, project = setup_instance(instance, database_url, broker_url, frame, wakeups)
        db = app.extensions["tre.db"]
        env = dict(
            os.environ,
            TRE_INSTANCE_PATH=str(instance),
            TRE_DATABASE_URL=database_url,
            TRE_BROKER_URL=broker_url,
            TRE_LOG_LEVEL="WARNING",
            TRE_BROKER_WAKEUPS="1" if wakeups else "0",
        )
        log = Path(tmp) / "worker.log"
        worker = start_worker(env, log)
        try:
            latencies, parts, cpu, idle_per_s, wall = measure(
                app, db, author, project, frame, requests, name, lambda: group_cpu_seconds(worker.pid), files
            )
        except Exception:
            print(log.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
            db.dispose()
    return {
        "median_s": statistics.median(latencies),
        "p90_s": percentile(latencies, 90),
        "p95_s": percentile(latencies, 95),
        "max_s": max(latencies),
        "median_handoff_s": statistics.median(p[0] for p in parts),
        "median_job_s": statistics.median(p[1] for p in parts),
        "median_rest_s": statistics.median(p[2] for p in parts),
        "worker_cpu_per_request_s": cpu / requests,
        "worker_idle_cpu_per_s": idle_per_s,
        "worker_cpu_per_check_s": max(cpu - idle_per_s * wall, 0.0) / requests,
        "requests": requests,
    }


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process in the process group, in seconds (Linux: /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # after pid and comm: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def percentile(values: list[float], pct: int) -> float:
    """Nearest rank: the smallest value with at least ``pct`` per cent of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-pct * len(ordered) // 100))
    return ordered[rank - 1]


def _wall(moment: dt.datetime) -> float:
    """A stored UTC time as seconds since the epoch (SQLite gives it back without its zone)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def measure(
    app: Any,
    db: Any,
    author: Any,
    project: Any,
    frame: pd.DataFrame,
    requests: int,
    name: str,
    worker_cpu: Any,
    files: str = "typical",
    idle_seconds: float = 3.0,
) -> tuple[list[float], list[tuple[float, float, float]], float, float, float]:
    from sqlalchemy import select

    from disclosure.models import OutputRequest
    from disclosure.services import CHECK_JOB, Outputs
    from tre.core import jobs
    from tre.core.db import transaction

    with transaction(db.session) as s:
        warm = jobs.enqueue(s, "kernel.selftest", {}).id

    def warmed() -> bool:
        with db.session_factory() as s2:
            return s2.get(jobs.Job, warm).state == jobs.SUCCEEDED

    if not wait(warmed, 120):
        raise RuntimeError(f"{name}: the worker did not start")
    svc = Outputs.from_platform(app.extensions["tre.platform"])
    table = table_csv(frame)
    latencies, parts = [], []
    time.sleep(1.0)  # the warm-up job's acknowledgement and look settle
    idle_before, idle_started = worker_cpu(), time.perf_counter()
    time.sleep(idle_seconds)
    idle_per_s = (worker_cpu() - idle_before) / (time.perf_counter() - idle_started)
    cpu_before, wall_started = worker_cpu(), time.perf_counter()
    for i in range(requests):
        req, _ = svc.create_request(author, project.id, f"Typical request {i}")
        svc.set_group(author, req.id, "outputs", "Admissions by region and sex", "Small cells suppressed")
        if files == "load":
            content = LOAD_CSV + f"# run {i}\n".encode()
            svc.add_file(author, req.id, "admissions_by_region.csv", content, group="outputs")
        else:
            svc.add_file(author, req.id, "table.csv", table, group="outputs", table_spec=SPEC)
            svc.add_file(author, req.id, "age.csv", PLAIN + f"# run {i}\n".encode(), group="outputs")
            svc.add_file(author, req.id, "model.txt", NOTES + f" run {i}".encode(), group="outputs")
        svc.submit(author, req.id)  # returns after the commit that sends the jobs
        started, committed = time.perf_counter(), time.time()

        def done(request_id: str = req.id) -> bool:
            with db.session_factory() as s2:
                return s2.get(OutputRequest, request_id).state == "awaiting_review"

        if not wait(done, 300):
            raise RuntimeError(f"{name}: request {i} got no verdict in 300 s")
        latencies.append(time.perf_counter() - started)
        with db.session_factory() as s2:
            job = s2.scalars(
                select(jobs.Job).where(jobs.Job.kind == CHECK_JOB, jobs.Job.idempotency_key.contains(req.id))
            ).one()
            claimed, finished = _wall(job.started_at), _wall(job.finished_at)
        handoff, work = claimed - committed, finished - claimed
        parts.append((handoff, work, latencies[-1] - handoff - work))
    cpu = worker_cpu() - cpu_before
    return latencies, parts, cpu, idle_per_s, time.perf_counter() - wall_started


def in_process_baseline(frame: pd.DataFrame, repeats: int = 5, files: str = "typical") -> tuple[float, float]:
    """Median wall time and median CPU time of one submission's checks run in this process."""
    from disclosure.checks import check_content
    from disclosure.engine import ReleaseLedger, default_policy

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "p" / "admissions" / "data"
        folder.mkdir(parents=True)
        frame.to_parquet(folder / "part-00000.parquet")
        table = table_csv(frame)
        times, cpus = [], []
        checks = (
            [("admissions_by_region.csv", "table", LOAD_CSV, None)]
            if files == "load"
            else [
                ("table.csv", "table", table, SPEC),
                ("age.csv", "table", PLAIN, None),
                ("model.txt", "text", NOTES, None),
            ]
        )
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            for name, kind, content, spec in checks:
                check_content(
                    name,
                    kind,
                    content,
                    spec,
                    policy=default_policy(),
                    extracts_root=root,
                    project_id="p",
                    output_id=name,
                    ledger=ReleaseLedger("p"),
                )
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    return statistics.median(times), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--skip-polling", action="store_true", help="do not measure the wake-ups-off comparison")
    parser.add_argument(
        "--files",
        choices=("typical", "load"),
        default="typical",
        help="typical: three files, one re-computed from the extract; load: benchmarks.load's one plain CSV",
    )
    args = parser.parse_args()
    frame = extract(args.rows)
    baseline, baseline_cpu = in_process_baseline(frame, repeats=5 if args.files == "typical" else 50, files=args.files)
    cpu_ms = baseline_cpu * 1000
    print(f"in-process checks ({args.files}): {baseline:.4f} s, {cpu_ms:.2f} ms CPU (in_process_check_cpu_s)")
    results: dict[str, Any] = {}
    runs = [("embedded", True)] + ([] if args.skip_polling else [("embedded_polling", False)])
    for key, wakeups in runs:
        with tempfile.TemporaryDirectory(prefix="tre-bench-embedded-") as tmp:
            results[key] = run_backend(
                key,
                f"sqlite:///{tmp}/tre.sqlite",
                f"sqla+sqlite:///{tmp}/broker.sqlite",
                frame,
                args.requests,
                wakeups=wakeups,
                files=args.files,
            )
        label = "wake-ups" if wakeups else "wake-ups off, polling only"
        print(f"embedded (SQLite + SQLAlchemy broker, {label}): {json.dumps(rounded(results[key]))}")
    if reachable(POSTGRES_URL) and reachable(REDIS_URL):
        url, drop = fresh_postgres()
        try:
            results["postgresql_redis"] = run_backend(
                "postgresql+redis", url, REDIS_URL, frame, args.requests, files=args.files
            )
        finally:
            drop()
        print(f"PostgreSQL + Redis: {json.dumps(rounded(results['postgresql_redis']))}")
    else:
        print("PostgreSQL + Redis NOT REACHABLE: not measured")
    embedded = results["embedded"]
    value = embedded["median_s"]
    pg = results.get("postgresql_redis")
    polling = results.get("embedded_polling")
    print(
        json.dumps(
            {
                "benchmark": "output_check_latency",
                "value": round(value, 3),
                "unit": "seconds, median submission-to-verdict, embedded default",
                "baseline": round(baseline, 3),
                "baseline_is": f"the same checks ({args.files}) in-process, no queue",
                "ratio": round(value / baseline, 2),
                "target": "embedded median <= 0.3 s and p95 <= 0.5 s; PostgreSQL + Redis p95 <= 0.2 s",
                "embedded_p95_s": round(embedded["p95_s"], 3),
                "embedded_polling_median_s": round(polling["median_s"], 3) if polling else None,
                "speedup_vs_polling": round(polling["median_s"] / value, 2) if polling else None,
                "postgresql_redis_median_s": round(pg["median_s"], 3) if pg else None,
                "postgresql_redis_p95_s": round(pg["p95_s"], 3) if pg else None,
                "targets_met": {
                    "embedded_median": value <= 0.3,
                    "embedded_p95": embedded["p95_s"] <= 0.5,
                    "postgresql_redis_p95": pg["p95_s"] <= 0.2 if pg else None,
                },
                "in_process_check_cpu_s": round(baseline_cpu, 4),
                "embedded_worker_cpu_per_check_s": round(embedded["worker_cpu_per_check_s"], 4),
                "postgresql_redis_worker_cpu_per_check_s": round(pg["worker_cpu_per_check_s"], 4) if pg else None,
                "files": args.files,
                "rows": args.rows,
                "requests": args.requests,
            }
        )
    )


def rounded(result: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}


if __name__ == "__main__":
    main()
