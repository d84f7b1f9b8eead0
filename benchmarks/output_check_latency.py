"""Benchmark: automated output-check latency, from submission to verdict, with a real worker.

Run:  python -m benchmarks.output_check_latency [--requests 10] [--rows 200000]

For each backend — the embedded default (SQLite + kombu's SQLAlchemy broker) and, when reachable,
PostgreSQL + Redis — it builds a fresh instance, starts a real Celery worker (with its sweeper),
and submits ``--requests`` typical output requests one after another. A typical request holds
three files: a count table with its table specification (re-computed from a Parquet extract of
``--rows`` rows), a plain CSV of counts and a text file. Latency is the wall time from the
submitting transaction's commit to the request reaching ``awaiting_review`` (every verdict
written), read by polling the database every 20 ms.

Baseline: the same three checks run in-process with no queue (``disclosure.checks.check_content``),
so ``ratio`` is what the queue, the worker hand-off and the database add on top of the engine.
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


def setup_instance(instance: Path, database_url: str, broker_url: str, frame: pd.DataFrame) -> tuple[Any, Any, Any]:
    """Schema, an author on an active project whose gate is open, and the project's extract."""
    from projects.models import AgreementSignature, AgreementTemplate, Project, ProjectMember, TrainingRecord
    from tre.app import create_app
    from tre.core import migrate
    from tre.core.db import transaction, utcnow
    from tre.core.identity import Identity

    migrate.upgrade(database_url)
    app = create_app(
        {"TRE_SETTINGS": {"instance_path": instance, "database_url": database_url, "broker_url": broker_url}}
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


def run_backend(name: str, database_url: str, broker_url: str, frame: pd.DataFrame, requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"tre-bench-{name}-") as tmp:
        instance = Path(tmp) / "instance"
        instance.mkdir()
        app, author, project = setup_instance(instance, database_url, broker_url, frame)
        db = app.extensions["tre.db"]
        env = dict(
            os.environ,
            TRE_INSTANCE_PATH=str(instance),
            TRE_DATABASE_URL=database_url,
            TRE_BROKER_URL=broker_url,
            TRE_LOG_LEVEL="WARNING",
        )
        log = Path(tmp) / "worker.log"
        worker = start_worker(env, log)
        try:
            latencies = measure(app, db, author, project, frame, requests, name)
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
    ordered = sorted(latencies)
    return {
        "median_s": statistics.median(ordered),
        "p90_s": ordered[int(0.9 * (len(ordered) - 1))],
        "max_s": ordered[-1],
        "requests": requests,
    }


def measure(app: Any, db: Any, author: Any, project: Any, frame: pd.DataFrame, requests: int, name: str) -> list[float]:
    from disclosure.models import OutputRequest
    from disclosure.services import Outputs
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
    latencies = []
    for i in range(requests):
        req, _ = svc.create_request(author, project.id, f"Typical request {i}")
        svc.set_group(author, req.id, "outputs", "Admissions by region and sex", "Small cells suppressed")
        svc.add_file(author, req.id, "table.csv", table, group="outputs", table_spec=SPEC)
        svc.add_file(author, req.id, "age.csv", PLAIN + f"# run {i}\n".encode(), group="outputs")
        svc.add_file(author, req.id, "model.txt", NOTES + f" run {i}".encode(), group="outputs")
        svc.submit(author, req.id)  # returns after the commit that sends the jobs
        started = time.perf_counter()

        def done(request_id: str = req.id) -> bool:
            with db.session_factory() as s2:
                return s2.get(OutputRequest, request_id).state == "awaiting_review"

        if not wait(done, 300):
            raise RuntimeError(f"{name}: request {i} got no verdict in 300 s")
        latencies.append(time.perf_counter() - started)
    return latencies


def in_process_baseline(frame: pd.DataFrame, repeats: int = 5) -> float:
    from disclosure.checks import check_content
    from disclosure.engine import ReleaseLedger, default_policy

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "p" / "admissions" / "data"
        folder.mkdir(parents=True)
        frame.to_parquet(folder / "part-00000.parquet")
        table = table_csv(frame)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for name, kind, content, spec in (
                ("table.csv", "table", table, SPEC),
                ("age.csv", "table", PLAIN, None),
                ("model.txt", "text", NOTES, None),
            ):
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
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    frame = extract(args.rows)
    baseline = in_process_baseline(frame)
    print(f"in-process engine, 3 files: {baseline:.3f} s")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tre-bench-embedded-") as tmp:
        results["embedded"] = run_backend(
            "embedded", f"sqlite:///{tmp}/tre.sqlite", f"sqla+sqlite:///{tmp}/broker.sqlite", frame, args.requests
        )
    print(f"embedded (SQLite + SQLAlchemy broker): {json.dumps(results['embedded'])}")
    if reachable(POSTGRES_URL) and reachable(REDIS_URL):
        url, drop = fresh_postgres()
        try:
            results["postgresql_redis"] = run_backend("postgresql+redis", url, REDIS_URL, frame, args.requests)
        finally:
            drop()
        print(f"PostgreSQL + Redis: {json.dumps(results['postgresql_redis'])}")
    else:
        print("PostgreSQL + Redis NOT REACHABLE: not measured")
    value = results["embedded"]["median_s"]
    print(
        json.dumps(
            {
                "benchmark": "output_check_latency",
                "value": round(value, 3),
                "unit": "seconds, median submission-to-verdict, embedded default",
                "baseline": round(baseline, 3),
                "baseline_is": "the same three checks in-process, no queue",
                "ratio": round(value / baseline, 2),
                "target": "value <= 5 s on the embedded default",
                "postgresql_redis_median_s": round(results["postgresql_redis"]["median_s"], 3)
                if "postgresql_redis" in results
                else None,
                "rows": args.rows,
                "requests": args.requests,
            }
        )
    )


if __name__ == "__main__":
    main()
