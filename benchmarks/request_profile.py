"""Where a request spends its CPU: the hot routes profiled in process, with their SQL statements.

Run:  python -m benchmarks.request_profile [--backend embedded|postgres] [--repeat 200] [--top 15]

Prepares an instance as ``benchmarks.load`` does (``tre init``, ``tre demo load``, personal API tokens),
then, in this process, sends each hot request ``--repeat`` times through the app's WSGI stack (the
Flask test client: no sockets, no gunicorn) under cProfile: the home page and a project page as a
signed-in researcher, an API read (``GET /api/v1/projects``) and an audited API write (an
administrator's ``PUT /api/v1/users/<id>/roles``) and, where the researcher has a project the gate lets
them into, a workspace's output submission (``POST /api/v1/outputs/requests``). For each it prints
the CPU milliseconds per request (``time.process_time``, profiler off), the statements per request,
and the functions with the most cumulative time (profiler on, so those shares are inflated alike).
The last line is one JSON object; its baseline is the API read, the cheapest route, so ``ratio``
says how many API reads a home page costs.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import load

SHOWN: list[str] = []  # with --show-sql, each statement of one request of every route


def _statements(app: Any, action: Callable[[], Any]) -> tuple[int, Any]:
    from sqlalchemy import event

    engine = app.extensions["tre.db"].engine
    seen = 0

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal seen
        seen += 1
        SHOWN.append(" ".join(statement.split())[:150])

    event.listen(engine, "before_cursor_execute", count)
    try:
        result = action()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return seen, result


def _signed_in_client(app: Any, user: Any) -> Any:
    """A test client holding the session a finished sign-in (password and TOTP) leaves behind."""
    from tre.core.db import utcnow

    client = app.test_client()
    now = int(utcnow().timestamp())
    with client.session_transaction() as session:
        session.update({"uid": user.id, "epoch": user.session_epoch, "seen": now, "signed_in": now})
        session.permanent = True
    return client


def profile_route(app: Any, name: str, send: Callable[[], Any], repeat: int, top: int,
                  callers: str = "") -> dict[str, Any]:
    for _ in range(5):  # warm caches (templates, statement cache, the first connection)
        response = send()
        if response.status_code >= 400:
            raise RuntimeError(f"{name} answered {response.status_code}: {response.get_data(as_text=True)[:300]}")
    SHOWN.clear()
    statements, _ = _statements(app, send)
    shown = list(SHOWN)
    started = time.process_time()
    for _ in range(repeat):
        send()
    cpu_ms = (time.process_time() - started) * 1000 / repeat
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeat):
        send()
    profiler.disable()
    if callers:  # who calls the functions matching this pattern, and how often per request
        load.log(f"\n-- {name}: callers of {callers!r} over {repeat} requests --")
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_callers(callers)
    table = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = sorted(((ct, f"{Path(file).name}:{line}({func})") for (file, line, func), (_, _, _, ct, _) in table.items()
                   if func not in {"<built-in method builtins.exec>", "<module>"}), reverse=True)
    interesting = [(ct * 1000 / repeat, where) for ct, where in rows[:top]]
    own = sorted(((tt, f"{Path(file).name}:{line}({func})") for (file, line, func), (_, _, tt, _, _) in table.items()),
                 reverse=True)
    interesting += [(tt * 1000 / repeat, "self: " + where) for tt, where in own[:top]]
    return {"route": name, "cpu_ms": round(cpu_ms, 2), "statements": statements, "sql": shown,
            "top_cumulative_ms": [(round(ms, 2), where) for ms, where in interesting]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["embedded", "postgres"], default="embedded")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--show-sql", action="store_true", help="print the statements of one request of each")
    parser.add_argument("--path", action="append", default=[], metavar="PATH",
                        help="also profile GET PATH (an /api/ path with the researcher's API token, any other "
                             "as the signed-in researcher); {dataset} and {project} stand for the first "
                             "dataset's id (by name) and the researcher's project; repeatable")
    parser.add_argument("--as", dest="as_person", default="", metavar="EMAIL",
                        help="send the --path requests as this demo account (default the researcher)")
    parser.add_argument("--callers", default="", metavar="REGEX",
                        help="also print the callers of the functions matching REGEX (pstats' print_callers)")
    args = parser.parse_args()
    args.web_workers = 0

    postgres = args.backend == "postgres"
    database = load.postgres_database(load.POSTGRES_ADMIN_URL) if postgres else contextlib.nullcontext("")
    with database as url:
        ready = load.prepare(args.backend, args, url or "", "memory://" if url else "")
        os.environ.update({k: v for k, v in ready.env.items() if k.startswith("TRE_")})
        os.environ["TRE_BROKER_URL"] = "memory://"
        os.environ["TRE_LOG_LEVEL"] = "WARNING"
        from sqlalchemy import select

        from projects.models import Project
        from tre.app import create_app
        from tre.core.identity import User
        from tre.demo.accounts import DOMAIN

        app = create_app()
        db = app.extensions["tre.db"]
        people = {email: db.session.scalar(select(User).where(User.email == email)) for email in ready.accounts}
        admin_email = next(e for e, info in ready.accounts.items() if "administrator" in info["roles"])
        researcher = people[f"rita.researcher@{DOMAIN}"]
        project = db.session.scalar(select(Project).where(Project.pi_id == researcher.id).limit(1))
        target = people[f"rob.other@{DOMAIN}"]
        page_client = _signed_in_client(app, researcher)
        researcher_id = researcher.id
        project_id, target_id, reader_email = project.id, target.id, researcher.email
        db.session.remove()
        api_client = app.test_client()
        admin_token = {"Authorization": f"Bearer {ready.tokens[admin_email][1]}"}
        reader_token = {"Authorization": f"Bearer {ready.tokens[reader_email][1]}"}
        flip = iter(range(10**9))

        def write() -> Any:
            roles = ["researcher"] if next(flip) % 2 else ["researcher", "output_checker"]
            return api_client.put(f"/api/v1/users/{target_id}/roles", json={"roles": roles}, headers=admin_token)

        submit = _output_submission(app, api_client, reader_token, researcher_id)

        routes: list[tuple[str, Callable[[], Any]]] = [
            ("home page GET /", lambda: page_client.get("/")),
            ("project page GET /projects/<id>", lambda: page_client.get(f"/projects/{project_id}")),
            ("API read GET /api/v1/projects", lambda: api_client.get("/api/v1/projects", headers=reader_token)),
            ("audited write PUT /api/v1/users/<id>/roles", write),
        ]
        if submit is not None:
            routes.append(("output submission POST /api/v1/outputs/requests", submit))
        path_token, path_client = reader_token, page_client
        if args.as_person:
            path_token = {"Authorization": f"Bearer {ready.tokens[args.as_person][1]}"}
            path_client = _signed_in_client(app, db.session.scalar(select(User).where(User.email == args.as_person)))
            db.session.remove()
        from projects.models import Dataset

        first_dataset = db.session.scalar(select(Dataset.id).order_by(Dataset.name).limit(1)) or ""
        db.session.remove()
        for path in (p.replace("{dataset}", first_dataset).replace("{project}", project_id) for p in args.path):
            if path.startswith("/api/"):
                routes.append((f"GET {path}", lambda p=path: api_client.get(p, headers=path_token)))
            else:
                routes.append((f"GET {path}", lambda p=path: path_client.get(p)))
        results = [profile_route(app, name, send, args.repeat, args.top, args.callers) for name, send in routes]
        db.dispose()

    for result in results:
        load.log(f"\n== {result['route']}: {result['cpu_ms']} ms CPU per request, {result['statements']} statements ==")
        for ms, where in result["top_cumulative_ms"]:
            load.log(f"  {ms:>7.2f} ms  {where}")
        if args.show_sql:
            for statement in result["sql"]:
                load.log(f"  SQL  {statement}")
    baseline = results[2]["cpu_ms"]
    load.log(json.dumps({
        "benchmark": "request_profile", "backend": args.backend, "value": results[0]["cpu_ms"],
        "baseline": baseline, "baseline_name": "API read CPU ms per request",
        "ratio": round(results[0]["cpu_ms"] / baseline, 2) if baseline else None,
        "details": {r["route"]: {"cpu_ms": r["cpu_ms"], "statements": r["statements"]} for r in results},
    }))


def _output_submission(app: Any, client: Any, reader_token: dict[str, str], user_id: str) -> Callable[[], Any] | None:
    """A workspace's submission, as the load benchmark sends it: the researcher's first project whose
    workspace token the service accepts; ``None`` when none is."""
    import random

    from projects.workspaces import OUTPUT_AUDIENCE, OUTPUT_PURPOSE, OUTPUT_TOKEN_LIFETIME

    tokens = app.extensions["tre.platform"].tokens
    for listed in client.get("/api/v1/projects", headers=reader_token).get_json() or []:
        token = tokens.issue(user_id, OUTPUT_AUDIENCE, OUTPUT_PURPOSE, OUTPUT_TOKEN_LIFETIME, project_id=listed["id"])
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        rnd = random.Random(0)

        def send(headers: dict[str, str] = headers, rnd: random.Random = rnd) -> Any:
            body, ctype = load.output_body(rnd)
            return client.post("/api/v1/outputs/requests", data=body, headers={**headers, "Content-Type": ctype})

        if send().status_code < 300:
            return send
    load.log("output submission not profiled: no project of the researcher accepted a workspace submission")
    return None


if __name__ == "__main__":
    main()
