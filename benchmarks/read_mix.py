"""The read side of the load mix in one process: CPU milliseconds and statements per route.

Run:  python -m benchmarks.read_mix [--backend embedded|postgres] [--repeat 20] [--profile FILE]

Prepares an instance as ``benchmarks.load`` does (``tre init``, ``tre demo load``, a personal API token
per demo person), then finds, as the load benchmark's planner does, every GET route that some demo
person (or anyone, for the public pages) is answered 200 with: the home class (``/``, ``/about``),
signed-in pages (a cookie session per person) and JSON API reads (each person's personal token). Each
(route, person) call is then sent ``--repeat`` times through the app's WSGI stack (the Flask test
client: no sockets, no gunicorn), and for every route this prints CPU milliseconds per call
(``time.process_time``) and statements per call, with the mix-weighted mean per class and over the
read side (home 10, page 40, API read 33: the weights of ``benchmarks.load.MIX``). Because both are
measured in one process with nothing else in it, they compare before and after a change on a shared
machine far better than requests per second do. ``--profile`` writes a cProfile of the whole replay.

The last line is one JSON object: value is the weighted CPU ms per read call; baseline is the
framework's floor in the same run (``GET /healthz``, no statement), so ratio says how many floors a
read costs.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import random
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks import load

READ_CLASSES = ("home", "page", "api_read")


def _signed_in_client(app: Any, user_id: str, epoch: int) -> Any:
    from tre.core.db import utcnow

    client = app.test_client()
    now = int(utcnow().timestamp())
    with client.session_transaction() as session:
        session.update({"uid": user_id, "epoch": epoch, "seen": now, "signed_in": now})
        session.permanent = True
    return client


ReadCall = tuple[str, str, str, Any, dict[str, str]]


def plan(app: Any, people: dict[str, tuple[str, int, str]], admin_id: str) -> list[ReadCall]:
    """(class, rule, path, client, headers) for every read the load benchmark's planner would keep."""
    values: dict[str, str] = {"user_id": admin_id}
    anonymous = app.test_client()
    clients = {email: _signed_in_client(app, uid, epoch) for email, (uid, epoch, _) in people.items()}
    candidates = sorted(
        (rule.rule, sorted(rule.arguments), rule.endpoint) for rule in app.url_map.iter_rules()
        if "GET" in (rule.methods or ()) and not rule.endpoint.startswith(load.SKIP_ENDPOINT_PREFIXES)
        and not any(word in rule.rule for word in load.SKIP_PATH_WORDS)
    )
    calls: list[ReadCall] = []
    done: set[str] = set()
    for _ in range(2):
        for rule, args, _endpoint in candidates:
            if rule in done or not set(args) <= set(values):
                continue
            done.add(rule)
            path = load.fill(rule, values)
            is_api = path.startswith("/api/")
            cls = "api_read" if is_api else ("home" if path in ("/", "/about") else "page")
            identities: list[tuple[Any, dict[str, str]]] = [(anonymous, {})] if (cls == "home" or is_api) else []
            for email, (_, _, token) in people.items():
                identities.append((anonymous, {"Authorization": f"Bearer {token}"}) if is_api else (clients[email], {}))
            for client, headers in identities:
                response = client.get(path, headers=headers)
                if response.status_code != 200:
                    continue
                calls.append((cls, rule, path, client, headers))
                listed = re.fullmatch(r"/api/v1/([a-z_]+)s", path)
                if listed and f"{listed.group(1)}_id" not in values:
                    try:
                        items = json.loads(response.get_data())
                    except ValueError:
                        continue
                    if isinstance(items, list) and items and isinstance(items[0], dict) and "id" in items[0]:
                        values[f"{listed.group(1)}_id"] = str(items[0]["id"])
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["embedded", "postgres"], default="embedded")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--profile", default="", help="write a cProfile of the replay to this file")
    parser.add_argument("--reuse", default="", help="a folder an earlier --keep run prepared (embedded only)")
    parser.add_argument("--keep", action="store_true", help="keep the prepared folder and print its path")
    parser.add_argument("--interleave", action="store_true",
                        help="each round sends every call once in a random order (as a mixed load does) "
                             "instead of repeating each call back to back")
    args = parser.parse_args()
    args.web_workers = 0

    postgres = args.backend == "postgres"
    database = load.postgres_database(load.POSTGRES_ADMIN_URL) if postgres else contextlib.nullcontext("")
    with database as url:
        if args.reuse:
            kept = json.loads((Path(args.reuse) / "read_mix.json").read_text())
            env, accounts, tokens = kept["env"], kept["accounts"], kept["tokens"]
        else:
            ready = load.prepare(args.backend, args, url or "", "memory://" if url else "")
            env, accounts, tokens = ready.env, ready.accounts, ready.tokens
            if args.keep:
                (ready.workdir / "read_mix.json").write_text(json.dumps(
                    {"env": env, "accounts": accounts, "tokens": tokens}))
                load.log(f"kept: {ready.workdir}")
        os.environ.update({k: v for k, v in env.items() if k.startswith("TRE_")})
        os.environ["TRE_BROKER_URL"] = "memory://"
        os.environ["TRE_LOG_LEVEL"] = "WARNING"
        from sqlalchemy import event, select

        from tre.app import create_app
        from tre.core.identity import User

        app = create_app()
        db = app.extensions["tre.db"]
        people: dict[str, tuple[str, int, str]] = {}
        for email, (uid, token) in tokens.items():
            epoch = db.session.scalar(select(User.session_epoch).where(User.id == uid))
            people[email] = (uid, int(epoch or 0), token)
        db.session.remove()
        admin_email = next(e for e, info in accounts.items() if "administrator" in info["roles"])
        calls = plan(app, people, tokens[admin_email][0])
        floor_client = app.test_client()

        engine = db.engine
        seen = 0

        def count(*_args: Any) -> None:
            nonlocal seen
            seen += 1

        for _cls, _rule, path, client, headers in calls:  # warm: templates, statement caches
            client.get(path, headers=headers)
        by_rule: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        event.listen(engine, "before_cursor_execute", count)
        for cls, rule, path, client, headers in calls:
            seen = 0
            client.get(path, headers=headers)
            by_rule[(cls, rule)][1] += seen
            by_rule[(cls, rule)][2] += 1
        event.remove(engine, "before_cursor_execute", count)
        profiler = cProfile.Profile() if args.profile else None
        if args.interleave:
            # As the live workers see them: every call once per round, in a new random order each
            # round, so no route follows itself (caches of the CPU, SQLite's pages and SQLAlchemy's
            # statements are as warm as a mixed load leaves them); each call timed on its own.
            order = list(range(len(calls)))
            shuffler = random.Random(1)
            if profiler:
                profiler.enable()
            for _ in range(args.repeat):
                shuffler.shuffle(order)
                for i in order:
                    cls, rule, path, client, headers = calls[i]
                    started = time.process_time()
                    client.get(path, headers=headers)
                    by_rule[(cls, rule)][0] += (time.process_time() - started) * 1000 / args.repeat
            if profiler:
                profiler.disable()
        for cls, rule, path, client, headers in calls if not args.interleave else ():
            started = time.process_time()
            if profiler:
                profiler.enable()
            for _ in range(args.repeat):
                client.get(path, headers=headers)
            if profiler:
                profiler.disable()
            by_rule[(cls, rule)][0] += (time.process_time() - started) * 1000 / args.repeat
        if profiler:
            profiler.dump_stats(args.profile)
        started = time.process_time()
        for _ in range(args.repeat * 20):
            floor_client.get("/healthz")
        floor = (time.process_time() - started) * 1000 / (args.repeat * 20)
        db.dispose()

    per_class: dict[str, list[float]] = {c: [0.0, 0.0, 0.0] for c in READ_CLASSES}
    for (cls, rule), (cpu, statements, n) in sorted(by_rule.items(), key=lambda kv: -kv[1][0] / kv[1][2]):
        load.log(f"{cls:9} {cpu / n:7.2f} ms {statements / n:6.1f} st  x{int(n):3}  {rule}")
        per_class[cls][0] += cpu
        per_class[cls][1] += statements
        per_class[cls][2] += n
    weights = {c: load.MIX[c] for c in READ_CLASSES if per_class[c][2]}
    total = sum(weights.values())
    mean_cpu = sum(weights[c] * per_class[c][0] / per_class[c][2] for c in weights) / total
    mean_st = sum(weights[c] * per_class[c][1] / per_class[c][2] for c in weights) / total
    for c in weights:
        cpu, statements, n = per_class[c]
        load.log(f"class {c}: {cpu / n:.2f} ms CPU, {statements / n:.1f} statements per call ({int(n)} calls)")
    load.log(f"floor GET /healthz: {floor:.2f} ms")
    load.log(json.dumps({
        "benchmark": "read_mix", "backend": args.backend, "value": round(mean_cpu, 2),
        "baseline": round(floor, 3), "baseline_name": "GET /healthz CPU ms", "ratio": round(mean_cpu / floor, 2),
        "details": {"statements_per_read": round(mean_st, 2),
                    "classes": {c: {"cpu_ms": round(per_class[c][0] / per_class[c][2], 2),
                                    "statements": round(per_class[c][1] / per_class[c][2], 2),
                                    "calls": int(per_class[c][2])} for c in weights}},
    }))


if __name__ == "__main__":
    main()
