"""CPU of an audited commit on PostgreSQL: the audit chain's code at a baseline revision against now.

Run:  python -m benchmarks.audit_commit [--baseline REV] [--commits 300] [--rounds 6] [--events 1]

In one process, on a fresh database of the loopback PostgreSQL, it commits ``--commits`` audited
transactions (each records ``--events`` events, as a role change records one and a submission four)
with ``tre.core.audit`` as it was at ``--baseline`` and as it is now, alternating in rounds. The
baseline's module is loaded from git and uses today's table; only one module's session hooks are
listening at a time. It prints, per code path, the median over rounds of the client's CPU per commit
(``time.process_time``) and of the PostgreSQL backend's (``/proc/<pg_backend_pid()>/stat``, when the
server runs on this machine), and the ratio now / baseline.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from benchmarks import load

HOOKS = ("before_commit", "after_commit", "after_soft_rollback", "after_transaction_end")
HOOK_FUNCTIONS = ("_write_before_commit", "_checkpoint_after_commit", "_discard_after_rollback",
                  "_forget_when_transaction_ends")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def baseline_module(rev: str) -> types.ModuleType:
    """``tre/core/audit.py`` at ``rev``, sharing today's ``AuditEvent`` (one table, one mapper)."""
    source = subprocess.run(["git", "show", f"{rev}:tre/core/audit.py"], check=True, capture_output=True,
                            text=True).stdout
    start, end = source.index("class AuditEvent(Base):"), source.index("def _canonical(")
    source = source[:start] + "from tre.core.audit import AuditEvent  # noqa: E402\n\n\n" + source[end:]
    module = types.ModuleType("tre_core_audit_baseline")
    module.__file__ = "<baseline tre/core/audit.py>"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own file at a revision
    return module


def listen_only(active: types.ModuleType, modules: list[types.ModuleType]) -> None:
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    for module in modules:
        for hook, name in zip(HOOKS, HOOK_FUNCTIONS, strict=True):
            fn = getattr(module, name)
            if event.contains(Session, hook, fn):
                event.remove(Session, hook, fn)
    for hook, name in zip(HOOKS, HOOK_FUNCTIONS, strict=True):
        event.listen(Session, hook, getattr(active, name))


def backend_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision of the code to compare with")
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--events", type=int, default=1, help="events recorded per transaction")
    args = parser.parse_args()

    from sqlalchemy import text

    from tre.core import audit
    from tre.core.db import Database
    from tre.models import metadata

    old = baseline_module(args.baseline)
    modules = {"baseline": old, "now": audit}
    with load.postgres_database(load.POSTGRES_ADMIN_URL) as url, tempfile.TemporaryDirectory() as folder:
        db = Database(url)
        metadata.create_all(db.engine)
        key = b"k" * 32
        logs = {name: m.AuditLog(key, m.CheckpointFile(Path(folder) / "cp.json", b"c" * 32))
                for name, m in modules.items()}
        session = db.session_factory()
        pid = int(session.scalar(text("SELECT pg_backend_pid()")))
        session.commit()
        client: dict[str, list[float]] = {name: [] for name in modules}
        server: dict[str, list[float]] = {name: [] for name in modules}

        def block(name: str, n: int) -> tuple[float, float | None]:
            listen_only(modules[name], list(modules.values()))
            log = logs[name]
            srv0, cpu0 = backend_cpu(pid), time.process_time()
            for i in range(n):
                for j in range(args.events):
                    log.record(session, "thing.happened", actor_id=f"user{i}", target_type="user",
                               target_id=f"t{j}", project_id="p1", request_id="r1", detail={"roles": ["a", "b"]})
                session.commit()
            cpu, srv1 = time.process_time() - cpu0, backend_cpu(pid)
            return cpu / n, (srv1 - srv0) / n if srv0 is not None and srv1 is not None else None

        for name in modules:  # warm up: prepared statements, caches
            block(name, 50)
        for r in range(args.rounds):
            for name in (("baseline", "now") if r % 2 == 0 else ("now", "baseline")):
                cpu, srv = block(name, args.commits)
                client[name].append(cpu)
                if srv is not None:
                    server[name].append(srv)
        session.close()
        with db.session_factory() as s:
            report = logs["now"].verify(audit.iter_events(s))
        assert report.ok, report.problem
        db.dispose()

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.3f} ms" if values else "n/a"

    print(f"{args.rounds} rounds of {args.commits} commits, {args.events} event(s) each; medians per commit")
    for name in modules:
        print(f"  {name:9} client CPU {ms(client[name])}   PostgreSQL backend CPU {ms(server[name])}")
    print(f"  ratio now/baseline: client {statistics.median(client['now']) / statistics.median(client['baseline']):.3f}"
          + (f", backend {statistics.median(server['now']) / statistics.median(server['baseline']):.3f}"
             if server["now"] and server["baseline"] else ""))


if __name__ == "__main__":
    main()
