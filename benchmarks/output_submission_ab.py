"""The workspace's output submission, old functions against new, alternated in one process.

Run:  python -m benchmarks.output_submission_ab --base DIR [--backend embedded|postgres] [--batch 60]
      [--rounds 12] [--swap MODULE[:CLASS]|PATH|QUALNAME ...]

``DIR`` holds the baseline revision's tree (``git archive <rev> | tar -x -C DIR``). Prepares an instance
as ``benchmarks.request_profile`` does, then sends ``POST /api/v1/outputs/requests`` (the load
benchmark's body) in batches, each batch with either the baseline's source of the swapped functions
(compiled into today's module) or today's, alternating which goes first, and prints the CPU ms per
submission (``time.process_time``) of each batch, their medians and the median of the paired ratios.
The default swaps are ADR 0076's: ``notify_each``, ``OutputsBase._require_gate`` and
``tre.authn._project_still_open_to``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import os
import statistics
import textwrap
import time
from typing import Any

from benchmarks import load
from benchmarks import request_profile as rp

DEFAULT_SWAPS = [
    "tre.core.notifications|tre/core/notifications.py|notify_each",
    "disclosure.kernel:OutputsBase|disclosure/kernel.py|OutputsBase._require_gate",
    "tre.authn|tre/authn.py|_project_still_open_to",
]
# Names the baseline's functions used that today's modules no longer define.
BASELINE_NAMES = {"_GATE_ALLOWED": "tre_outputs_gate_allowed"}


def baseline_function(module: Any, base: str, path: str, qualname: str) -> Any:
    """The baseline's source of ``qualname`` (in ``base/path``), compiled in a copy of ``module``'s names."""
    from sqlalchemy.orm import scoped_session

    source = open(os.path.join(base, path)).read()
    node: Any = ast.parse(source)
    for name in qualname.split("."):
        node = next(n for n in ast.walk(node) if isinstance(n, ast.FunctionDef | ast.ClassDef) and n.name == name)
    names = {**module.__dict__, "scoped_session": scoped_session, **BASELINE_NAMES}
    code = "from __future__ import annotations\n" + textwrap.dedent(ast.get_source_segment(source, node) or "")
    exec(compile(code, path, "exec"), names)  # noqa: S102 - the baseline's own source, from the caller's tree
    return names[qualname.split(".")[-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--backend", choices=["embedded", "postgres"], default="embedded")
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--swap", action="append", default=[])
    args = parser.parse_args()
    args.web_workers, args.repeat, args.top = 0, 1, 0
    postgres = args.backend == "postgres"
    database = load.postgres_database(load.POSTGRES_ADMIN_URL) if postgres else contextlib.nullcontext("")
    with database as url:
        ready = load.prepare(args.backend, args, url or "", "memory://" if url else "")
        os.environ.update({k: v for k, v in ready.env.items() if k.startswith("TRE_")})
        os.environ["TRE_BROKER_URL"] = "memory://"
        os.environ["TRE_LOG_LEVEL"] = "WARNING"
        from sqlalchemy import select

        from tre.app import create_app
        from tre.core.identity import User
        from tre.demo.accounts import DOMAIN

        app = create_app()
        db = app.extensions["tre.db"]
        researcher = db.session.scalar(select(User).where(User.email == f"rita.researcher@{DOMAIN}"))
        token = {"Authorization": f"Bearer {ready.tokens[researcher.email][1]}"}
        send = rp._output_submission(app, app.test_client(), token, researcher.id)
        db.session.remove()
        if send is None:
            raise SystemExit("no project accepted a workspace submission")
        swaps = []
        for spec in args.swap or DEFAULT_SWAPS:
            owner_name, path, qualname = spec.split("|")
            module_name, _, class_name = owner_name.partition(":")
            module = importlib.import_module(module_name)
            owner = getattr(module, class_name) if class_name else module
            attribute = qualname.split(".")[-1]
            swaps.append((owner, attribute, baseline_function(module, args.base, path, qualname),
                          getattr(owner, attribute)))

        def use(which: str) -> None:
            for owner, attribute, old, new in swaps:
                setattr(owner, attribute, old if which == "base" else new)

        for which in ("base", "new"):  # warm both
            use(which)
            for _ in range(10):
                send()
        cpu: dict[str, list[float]] = {"base": [], "new": []}
        for n in range(args.rounds):
            for which in ("base", "new") if n % 2 == 0 else ("new", "base"):
                use(which)
                started = time.process_time()
                for _ in range(args.batch):
                    send()
                cpu[which].append((time.process_time() - started) * 1000 / args.batch)
        use("new")
        db.dispose()
    for which, runs in cpu.items():
        load.log(f"{args.backend} {which}: median {statistics.median(runs):.2f} ms  {[round(x, 2) for x in runs]}")
    ratios = [new / old for old, new in zip(cpu["base"], cpu["new"], strict=True)]
    load.log(f"{args.backend} paired ratio new/base: median {statistics.median(ratios):.3f}  "
             f"{[round(x, 3) for x in ratios]}")


if __name__ == "__main__":
    main()
