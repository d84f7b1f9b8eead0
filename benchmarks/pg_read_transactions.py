"""A read-only request's transaction on PostgreSQL: begun lazily (ADR 0072) against begun at once.

Run:  python -m benchmarks.pg_read_transactions [--blocks 10] [--per-block 2000] [--selects 2]

Needs PostgreSQL on 127.0.0.1:5432 (database ``test``, trust auth); it makes a scratch table and drops it.
Two engines on the same database, one pooled connection each: the project's (``tre.core.db.make_engine``:
autocommit, BEGIN sent only before a statement that is not a plain read) and the baseline, the same
engine asked for READ COMMITTED (psycopg sends BEGIN before the first statement and the session's end
sends COMMIT, as every read request did before ADR 0072, ADR 0052's COMMIT included). Each arm runs
``--per-block`` read transactions of ``--selects`` look-ups by key through an ORM session, as a request's
who-is-asking and view reads are; the arms take turns for ``--blocks`` blocks, so drift in the machine's
speed falls on both. Per arm: the median over blocks of this process's CPU per transaction
(``time.process_time``) and of its PostgreSQL backend's (``/proc/<pid>/stat``, the same machine). The
last line is one JSON object: value is the lazy arm's total (client + backend) CPU per transaction,
baseline the eager arm's, ratio value / baseline (lower is better).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.orm import Session

from tre.core.db import make_engine

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
scratch = MetaData()
rows = Table("bench_read_transactions", scratch, Column("id", Integer, primary_key=True), Column("v", String))
BY_ID = select(rows.c.v).where(rows.c.id == 5)
BY_VALUE = select(rows.c.id).where(rows.c.v == "7")


def _backend_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115 - read once
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Arm:
    def __init__(self, name: str, **engine_options: Any) -> None:
        self.name = name
        self.engine = make_engine(URL, pool_size=1, max_overflow=0, **engine_options)
        with self.engine.connect() as conn:
            self.pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        self.client: list[float] = []
        self.backend: list[float] = []

    def block(self, transactions: int, selects: int) -> None:
        statements = [BY_ID if i % 2 == 0 else BY_VALUE for i in range(selects)]
        cpu, server = time.process_time(), _backend_seconds(self.pid)
        for _ in range(transactions):
            with Session(self.engine) as s:
                for statement in statements:
                    s.execute(statement).first()
                s.commit()
        self.client.append((time.process_time() - cpu) / transactions * 1e6)
        self.backend.append((_backend_seconds(self.pid) - server) / transactions * 1e6)

    def summary(self) -> dict[str, float]:
        client, backend = statistics.median(self.client), statistics.median(self.backend)
        return {"client_us": round(client, 1), "backend_us": round(backend, 1), "total_us": round(client + backend, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--per-block", type=int, default=2000)
    parser.add_argument("--selects", type=int, default=2, help="look-ups per transaction")
    args = parser.parse_args(argv)
    setup = make_engine(URL)
    scratch.drop_all(setup)
    scratch.create_all(setup)
    with setup.begin() as conn:
        conn.execute(rows.insert(), [{"id": i, "v": str(i)} for i in range(100)])
    lazy = Arm("lazy BEGIN (ADR 0072)")
    eager = Arm("BEGIN at once, COMMIT at the end (before)", isolation_level="READ COMMITTED")
    try:
        for arm in (lazy, eager):
            arm.block(max(args.per_block // 4, 1), args.selects)  # warm: statements prepared, caches filled
            arm.client.clear()
            arm.backend.clear()
        for _ in range(args.blocks):
            for arm in (lazy, eager):
                arm.block(args.per_block, args.selects)
        for arm in (lazy, eager):
            print(f"{arm.name}: {arm.summary()} per transaction of {args.selects} selects", flush=True)
        value, baseline = lazy.summary()["total_us"], eager.summary()["total_us"]
        print(json.dumps({
            "benchmark": "pg_read_transactions", "unit": "CPU microseconds per read-only transaction",
            "value": value, "baseline": baseline, "baseline_name": "BEGIN at once and COMMIT (before ADR 0072)",
            "ratio": round(value / baseline, 3), "target": "lower than the baseline",
            "details": {"lazy": lazy.summary(), "eager": eager.summary(), "blocks": args.blocks,
                        "per_block": args.per_block, "selects": args.selects},
        }))
    finally:
        lazy.engine.dispose()
        eager.engine.dispose()
        scratch.drop_all(setup)
        setup.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
