"""Load benchmark: the real service under a mixed load, on the embedded default and on PostgreSQL + Redis.

Run:  python -m benchmarks.load [--seconds 20] [--backend both|embedded|postgres] [--users 16]

For each backend this starts the service as production runs it, on 127.0.0.1 and a free port:
gunicorn with ``infra/production/gunicorn.conf.py`` (same processes and threads on both backends,
so only the database and the broker differ) and one ``tre worker --no-beat`` for every queue (the
periodic scheduler is left out: its jobs are not on the request path). The embedded backend is the
default configuration (SQLite file, Celery on kombu's SQLAlchemy transport); the other is PostgreSQL
(a fresh database, dropped afterwards) and Redis (database 13: the broker and, as in production, the
rate limits' counters), used when they answer on 127.0.0.1:5432 and :6379.

Each instance gets the demo accounts (``tre demo load --patients 2000``); every demo person signs
in over HTTP with password and TOTP (a cookie session for the pages) and gets a personal API token.
This process (not the server) then drives a closed loop of ``--users`` concurrent users, each on its
own keep-alive connection, over a weighted mix of what exists in the app at the time (read from its
URL map): public pages, signed-in pages (account and audit pages, and project and queue pages where
they exist), JSON API reads, API writes (an administrator changing roles, each an audited write), and
output submissions (``POST /api/v1/outputs/requests``) if that route exists and accepts a request.

While the load runs, CPU time is read from /proc every second for the gunicorn processes, the
worker, this client, PostgreSQL, Redis and the whole machine, which names the bottleneck. Requests
per service CPU-second divide the requests answered by the CPU of the service alone: gunicorn, the
worker and, on the PostgreSQL backend, only the PostgreSQL processes serving the run's own database
(its sessions, found in ``pg_stat_activity`` at every look) plus the cluster's shared processes
(postmaster, WAL writer, checkpointer...) in proportion to those sessions' share of all sessions'
CPU. Sessions of other databases on the same server (other people's tests on a shared machine) are
"other", as is the benchmark's own sampling session. Redis serves every database number from one
process, so its CPU is counted whole (an upper bound). Before the load, the service's idle CPU
(``--idle-seconds``, after sign-in and before the mix's probes submit anything) is printed too.

Requests per CPU-second depend on the host as much as on the code, so each backend's report carries a
host yardstick (``host_speed_ms``): the CPU milliseconds of a fixed piece of pure-Python work, timed in
the client alone just before and just after the load, and with a copy on each core at once. Compare
runs on different hosts (or hours) only next to it; compare codes only in runs that take turns.

``--granian-path DIR`` serves the same app with granian's WSGI interface (the same number of
processes, ``GUNICORN_THREADS`` or 8 blocking threads each) instead of gunicorn, to compare web servers
under the mix. granian is not a dependency: ``pip install --target DIR granian`` first.

Traffic never leaves 127.0.0.1. The last line printed is one JSON object (benchmark, value, baseline,
ratio, target, details): value is requests/s on PostgreSQL (embedded when PostgreSQL is unreachable).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO / "infra" / "production" / "gunicorn.conf.py"
# The same settings plus per-request CPU hooks, for --route-cpu (benchmarks/gunicorn_route_cpu.py).
ROUTE_CPU_CONF = REPO / "benchmarks" / "gunicorn_route_cpu.py"
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/13"
# How long gunicorn and the worker may take to start: on the shared 2-core machine under load, five
# gunicorn processes importing the app at once took over 90 s.
READY_SECONDS = 240
QUEUE_NAMES = ("default", "checks", "extracts", "notifications")

# Share of requests per class (classes with nothing to request are left out).
MIX = {"home": 10, "page": 40, "api_read": 33, "write": 10, "output": 7}
# Pages that are not part of a person's ordinary browsing (downloads, sign-in steps, probes). Prometheus's
# scrapes are probes: /metrics ("metrics.") and /metrics/outputs ("outputs_metrics.", which the mix sent
# 4 % of its requests to until 2026-12-07; Prometheus asks it every 15-60 s, not ten times a second).
SKIP_ENDPOINT_PREFIXES = ("static", "metrics.", "outputs_metrics.", "health.", "auth.", "api-docs.")
SKIP_PATH_WORDS = ("export", ".csv", "download", "/jwks", "openapi")

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def log(message: str) -> None:
    print(message, flush=True)


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def tre_command() -> list[str]:
    script = Path(sys.executable).with_name("tre")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tre.cli"]


def clean_environment(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without any TRE_ setting of its own, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(extra)
    return env


def run_step(argv: list[str], env: dict[str, str], what: str, timeout: float = 300) -> None:
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


@dataclass
class Service:
    """gunicorn and a Celery worker started for one backend; stopped by process group."""

    env: dict[str, str]
    port: int
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    config: Path = GUNICORN_CONF
    # A folder holding the granian package: serve with granian instead of gunicorn, as a comparison only
    # (production runs gunicorn; docs/operations.md, "The web server's floor").
    granian_path: str = ""

    def web_argv(self) -> tuple[list[str], dict[str, str]]:
        if not self.granian_path:
            return [sys.executable, "-m", "gunicorn", "--config", str(self.config), "tre.wsgi:app"], self.env
        # gunicorn's settings empty the Prometheus folder at start; granian has no such hook.
        Path(self.env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
        workers = self.env.get("WEB_CONCURRENCY") or str(len(os.sched_getaffinity(0)))
        argv = [sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", workers,
                "--blocking-threads", self.env.get("GUNICORN_THREADS", "8"), "--host", LOOPBACK,
                "--port", str(self.port), "--access-log", "tre.wsgi:app"]
        return argv, {**self.env, "PYTHONPATH": self.granian_path}

    def start(self) -> None:
        web, web_env = self.web_argv()
        # No periodic scheduler: its jobs are not part of the request path being measured.
        worker = [*tre_command(), "worker", "--no-beat", "--concurrency", "2"]
        for name, argv, env in (("web", web, web_env), ("worker", worker, self.env)):
            out = (self.logs / f"{name}.log").open("wb")
            self.procs[name] = subprocess.Popen(  # noqa: S603
                argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            out.close()
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")
            try:
                status, _, _ = request_once(self.port, "GET", "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the service did not become ready in {READY_SECONDS} s:\n{self.tail('web')}")

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)


# --- HTTP (loopback only) --------------------------------------------------------------------------


def connection(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(LOOPBACK, port, timeout=30)


def request_once(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = connection(port)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


class Browser:
    """A cookie jar over single requests, enough to sign in through the pages."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def go(self, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        headers = {"Cookie": self.cookie_header()} if self.cookies else {}
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = connection(self.port)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            for value in resp.msg.get_all("Set-Cookie") or []:
                name, _, rest = value.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
            return resp.status, data.decode(errors="replace")
        finally:
            conn.close()


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token"\s+value="([^"]+)"', html)
    if not match:
        raise RuntimeError("no CSRF token in the form")
    return match.group(1)


def sign_in(port: int, email: str, password: str, totp_secret: str) -> str:
    """Sign in through the pages with password and the current TOTP code; returns the cookie header."""
    import pyotp

    browser = Browser(port)
    _, page = browser.go("GET", "/auth/login")
    status, _ = browser.go(
        "POST", "/auth/login", {"email": email, "password": password, "csrf_token": csrf_from(page), "next": ""}
    )
    if status != 302:
        raise RuntimeError(f"sign-in of {email} answered {status}")
    _, page = browser.go("GET", "/auth/mfa")
    status, _ = browser.go("POST", "/auth/mfa", {"code": pyotp.TOTP(totp_secret).now(), "csrf_token": csrf_from(page)})
    if status != 302:
        raise RuntimeError(f"second factor of {email} answered {status}")
    return browser.cookie_header()


# --- preparing an instance -------------------------------------------------------------------------


@dataclass
class Person:
    email: str
    roles: list[str]
    user_id: str
    token: str
    cookie: str


@dataclass(frozen=True)
class Call:
    cls: str
    label: str
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None = None
    body_factory: Callable[[random.Random], tuple[bytes, str]] | None = None


def issue_tokens(database_url: str, emails: list[str]) -> dict[str, tuple[str, str]]:
    """A personal API token for each account, written as the service stores them: {email: (id, token)}."""
    import datetime as dt

    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    import tre.models  # noqa: F401  (every table, so the mappers are complete)
    from tre.core.db import utcnow
    from tre.core.identity import PersonalApiToken, User
    from tre.core.tokens import new_personal_token

    engine = create_engine(database_url)
    out: dict[str, tuple[str, str]] = {}
    try:
        with Session(engine) as s:
            expires = utcnow() + dt.timedelta(days=1)
            for email in emails:
                user = s.scalar(select(User).where(User.email == email))
                if user is None:
                    continue
                token = new_personal_token()
                s.add(PersonalApiToken(user_id=user.id, name="load benchmark", lookup_prefix=token.lookup_prefix,
                                       token_hash=token.hash, expires_at=expires))
                out[email] = (user.id, token.plaintext)
            s.commit()
    finally:
        engine.dispose()
    return out


def app_routes(env: dict[str, str]) -> list[tuple[str, set[str], list[str], str]]:
    """(rule, methods, argument names, endpoint) for every route of the app as configured for this run."""
    code = (
        "import json\nfrom tre.app import create_app\napp = create_app()\n"
        "print(json.dumps([[r.rule, sorted(r.methods or ()), sorted(r.arguments), r.endpoint] "
        "for r in app.url_map.iter_rules()]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,  # noqa: S603
                          timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"could not read the app's routes:\n{done.stderr[-2000:]}")
    return [(rule, set(methods), args, endpoint) for rule, methods, args, endpoint in
            json.loads(done.stdout.strip().splitlines()[-1])]


def workspace_tokens(env: dict[str, str], pairs: list[tuple[str, str]]) -> list[str]:
    """The token a workspace of each (user id, project id) would hold, signed by this instance's keys."""
    if not pairs:
        return []
    code = (
        "import json, sys\nfrom tre.app import create_app\n"
        "from projects.workspaces import OUTPUT_AUDIENCE, OUTPUT_PURPOSE, OUTPUT_TOKEN_LIFETIME\n"
        "tokens = create_app().extensions['tre.platform'].tokens\n"
        "print(json.dumps([tokens.issue(u, OUTPUT_AUDIENCE, OUTPUT_PURPOSE, OUTPUT_TOKEN_LIFETIME, project_id=p)"
        " for u, p in json.loads(sys.argv[1])]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, json.dumps(pairs)], env=env, cwd=REPO,  # noqa: S603
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"could not issue workspace tokens:\n{done.stderr[-2000:]}")
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def fill(rule: str, values: dict[str, str]) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: values[m.group(1)], rule)


def multipart(fields: list[tuple[str, str]], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "----tre-load-" + uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for filename, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{filename}"\r\n'
            f"Content-Type: text/csv\r\n\r\n".encode() + data + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def output_body(rnd: random.Random) -> tuple[bytes, str]:
    rows = "\n".join(f"{region},{rnd.randint(12, 400)}" for region in ("North", "South", "East", "West"))
    return multipart(
        [("title", "Admissions by region"), ("context", "Counts of admissions by region, 2023"),
         ("controls", "Counts under 10 suppressed; rounded to the nearest 5")],
        [("admissions_by_region.csv", f"region,admissions\n{rows}\n".encode())],
    )


def plan_calls(port: int, env: dict[str, str], people: list[Person], notes: list[str]) -> dict[str, list[Call]]:
    """Every request of the mix that this version of the app answers with success, by class."""
    routes = app_routes(env)
    admin = next(p for p in people if "administrator" in p.roles)
    values = {"user_id": admin.user_id}
    calls: dict[str, list[Call]] = {k: [] for k in MIX}
    candidates = [
        (rule, args) for rule, methods, args, endpoint in sorted(routes)
        if "GET" in methods and not endpoint.startswith(SKIP_ENDPOINT_PREFIXES)
        and not any(word in rule for word in SKIP_PATH_WORDS)
    ]

    def probe(path: str, who: str, headers: tuple[tuple[str, str], ...]) -> tuple[str, str, tuple, int, bytes]:
        status, _, data = request_once(port, "GET", path, None, dict(headers))
        return path, who, headers, status, data

    done_rules: set[str] = set()
    with ThreadPoolExecutor(max_workers=8) as pool:
        # Two rounds: lists answered in the first give the ids (project_id, dataset_id...) for the second.
        for _ in range(2):
            jobs = []
            for rule, args in candidates:
                if rule in done_rules or not set(args) <= set(values):
                    continue
                done_rules.add(rule)
                path = fill(rule, values)
                is_api = path.startswith("/api/")
                identities: list[tuple[str, tuple[tuple[str, str], ...]]] = [("anonymous", ())]
                for person in people:
                    header = ("Authorization", f"Bearer {person.token}") if is_api else ("Cookie", person.cookie)
                    identities.append((person.email.split("@")[0], (header,)))
                jobs += [(rule, pool.submit(probe, path, who, headers)) for who, headers in identities]
            for rule, future in jobs:
                path, who, headers, status, data = future.result()
                is_api = path.startswith("/api/")
                cls = "api_read" if is_api else ("home" if path in ("/", "/about") else "page")
                if status != 200 or not (who != "anonymous" or cls == "home" or is_api):
                    continue
                calls[cls].append(Call(cls, rule, "GET", path, headers))
                listed = re.fullmatch(r"/api/v1/([a-z_]+)s", path)
                if listed and f"{listed.group(1)}_id" not in values:
                    try:
                        items = json.loads(data)
                    except ValueError:
                        continue
                    if isinstance(items, list) and items and isinstance(items[0], dict) and "id" in items[0]:
                        values[f"{listed.group(1)}_id"] = str(items[0]["id"])
    skipped = sorted(rule for rule, _ in candidates if rule not in done_rules)
    if skipped:
        notes.append(f"routes needing ids this benchmark does not make, not exercised: {', '.join(skipped)}")

    # Writes: an administrator changes the roles of accounts made for the run (each one audited).
    admin_auth = (("Authorization", f"Bearer {admin.token}"), ("Content-Type", "application/json"))
    for n in range(32):
        body = json.dumps({"email": f"load{n}-{uuid.uuid4().hex[:6]}@load.tre.example",
                           "display_name": f"Load test {n}", "roles": ["researcher"]}).encode()
        status, _, data = request_once(port, "POST", "/api/v1/users", body, dict(admin_auth))
        if status != 201:
            notes.append(f"could not create accounts for the write mix ({status}): writes left out")
            break
        user_id = json.loads(data)["id"]
        for roles in (["researcher"], ["researcher", "output_checker"]):
            calls["write"].append(Call("write", "PUT /api/v1/users/<id>/roles", "PUT",
                                       f"/api/v1/users/{user_id}/roles", admin_auth,
                                       body=json.dumps({"roles": roles}).encode()))

    # Output submission, as a workspace does it: with the project-scoped token a workspace receives
    # (purpose output-submit), for each researcher and project where the access gate lets them in.
    outputs = [r for r in routes if r[0] == "/api/v1/outputs/requests" and "POST" in r[1]]
    if not outputs:
        notes.append("output submission skipped: POST /api/v1/outputs/requests does not exist in this version")
        return calls
    pairs = []
    for person in people:
        if "researcher" not in person.roles:
            continue
        status, _, data = request_once(port, "GET", "/api/v1/projects", None,
                                       {"Authorization": f"Bearer {person.token}"})
        if status == 200:
            pairs += [(person, str(p["id"])) for p in json.loads(data) if isinstance(p, dict) and "id" in p]
    tokens = workspace_tokens(env, [(person.user_id, project) for person, project in pairs])
    refusals = []
    for (person, _project), token in zip(pairs, tokens, strict=True):
        body, ctype = output_body(random.Random(0))
        headers = (("Authorization", f"Bearer {token}"), ("Accept", "application/json"))
        status, _, data = request_once(port, "POST", "/api/v1/outputs/requests", body,
                                       {**dict(headers), "Content-Type": ctype})
        if 200 <= status < 300:
            calls["output"].append(Call("output", "POST /api/v1/outputs/requests", "POST",
                                        "/api/v1/outputs/requests", headers, body_factory=output_body))
        else:
            refusals.append(f"{person.email.split('@')[0]}: {status} {data[:120].decode(errors='replace')}")
    if not calls["output"]:
        notes.append("output submission skipped: no researcher's workspace token was accepted ("
                     + ("; ".join(refusals) or "no researcher has a project") + ")")
    return calls


# --- CPU accounting from /proc ---------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, command name, CPU ticks used so far)."""
    table: dict[int, tuple[int, str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        rest = raw[raw.rindex(")") + 2 :].split()
        table[int(entry)] = (int(rest[1]), name, int(rest[11]) + int(rest[12]))
    return table


def ancestry(pid: int, table: dict[int, tuple[int, str, int]]) -> Iterator[int]:
    """The process itself, then its parent, grandparent... up to (not including) init, 50 at most."""
    seen = pid
    for _ in range(50):
        yield seen
        parent = table.get(seen, (0, "", 0))[0]
        if parent <= 1:
            return
        seen = parent


def _machine_ticks() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle, sum(fields[:8])


# The benchmark's own PostgreSQL sessions (sampling pg_stat_activity) name themselves, so their
# server processes are counted as the client's work, not the service's.
MEASURING_APPLICATION = "tre-load-measuring"
# Server processes of the whole cluster, serving every database at once.
POSTGRES_SHARED_KINDS = {"checkpointer", "background writer", "walwriter", "autovacuum launcher",
                         "logical replication launcher", "archiver", "startup", "walreceiver", "postmaster"}


def postgres_role(pid: int, activity: dict[int, tuple[str | None, str, str]], database: str,
                  table: dict[int, tuple[int, str, int]]) -> str:
    """What a PostgreSQL server process was doing, for the CPU accounts: ``own`` (a session or
    autovacuum worker of the benchmark's database), ``shared`` (the cluster's own processes, which
    serve every database), ``measuring`` (this benchmark's sampling) or ``elsewhere`` (a session
    of another database: other people's work on a shared server).

    ``activity`` is ``pg_stat_activity`` read after ``table`` (so every server process of the table
    that still lives is in it): pid -> (database, backend type, application name). A process that
    is not in it is the postmaster (its parent is not a PostgreSQL process) or a session that ended
    meanwhile, whose database is unknown: counted as elsewhere, never as the service's."""
    if pid in activity:
        datname, kind, application = activity[pid]
        if application == MEASURING_APPLICATION:
            return "measuring"
        if datname == database:
            return "own"
        if datname is None and kind in POSTGRES_SHARED_KINDS:
            return "shared"
        return "elsewhere"
    parent = table.get(table[pid][0]) if pid in table else None
    if parent is None or not parent[1].startswith("postgres"):
        return "shared"  # the postmaster
    return "elsewhere"


def postgres_engine(database_url: str) -> Any:
    from sqlalchemy import create_engine

    return create_engine(database_url, pool_size=1, max_overflow=0,
                         connect_args={"application_name": MEASURING_APPLICATION})


class CpuSampler(threading.Thread):
    """Adds up, once a second, the CPU each group of processes used since the last look.

    PostgreSQL server processes count for the service only when they serve the benchmark's own
    database (its sessions, read from ``pg_stat_activity`` at each look), plus a share of the
    cluster's shared processes (postmaster, WAL writer, checkpointer, background writer...) in
    proportion to the CPU of the benchmark's sessions among all sessions; sessions of other
    databases on the same server (other people's tests) count as ``other``. Redis is one server
    for every database number, so its CPU is counted whole: an upper bound."""

    def __init__(self, roots: dict[str, int], postgres_url: str = "") -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.used: dict[str, float] = {}
        self.postgres: dict[str, float] = {}
        self.last: dict[int, int] = {}
        self.stop_event = threading.Event()
        self.started_at = 0.0
        self.wall = 0.0
        self.machine_busy = 0
        self.machine_total = 0
        self.postgres_database = ""
        self._pg_engine: Any = None
        self._pg_conn: Any = None
        if postgres_url:  # connected here, before the load: connecting under load took seconds
            from sqlalchemy.engine import make_url

            self.postgres_database = make_url(postgres_url).database or ""
            self._pg_engine = postgres_engine(postgres_url)
            self._pg_conn = self._pg_engine.connect()

    def _group(self, pid: int, table: dict[int, tuple[int, str, int]]) -> str:
        if pid == os.getpid():
            return "client"
        for seen in ancestry(pid, table):
            for group, root in self.roots.items():
                if seen == root:
                    return group
        name = table[pid][1]
        if name.startswith("postgres") or name == "postmaster":
            return "postgresql"
        if name.startswith("redis"):
            return "redis"
        return "other"

    def _activity(self) -> dict[int, tuple[str | None, str, str]]:
        from sqlalchemy import text

        rows = self._pg_conn.execute(
            text("SELECT pid, datname, backend_type, application_name FROM pg_stat_activity")).all()
        self._pg_conn.commit()
        return {int(pid): (datname, kind or "", application or "") for pid, datname, kind, application in rows}

    def _take(self, first: bool) -> None:
        table = _proc_table()
        activity = self._activity() if self._pg_conn is not None else {}
        for pid, (_, _, ticks) in table.items():
            before = self.last.get(pid)
            self.last[pid] = ticks
            if first:
                continue
            delta = ticks - before if before is not None else ticks
            if delta > 0:
                group = self._group(pid, table)
                if group == "postgresql":
                    if self._pg_conn is None:  # the embedded backend: PostgreSQL is other people's
                        group = "other"
                    else:
                        role = postgres_role(pid, activity, self.postgres_database, table)
                        self.postgres[role] = self.postgres.get(role, 0.0) + delta / CLK_TCK
                        continue
                self.used[group] = self.used.get(group, 0.0) + delta / CLK_TCK

    def run(self) -> None:
        try:
            self.started_at = time.monotonic()
            busy0, total0 = _machine_ticks()
            self._take(first=True)
            while not self.stop_event.wait(1.0):
                self._take(first=False)
            self._take(first=False)
            busy1, total1 = _machine_ticks()
            self.wall = time.monotonic() - self.started_at
            self.machine_busy, self.machine_total = busy1 - busy0, total1 - total0
        finally:
            if self._pg_engine is not None:
                self._pg_conn.close()
                self._pg_engine.dispose()

    def summary(self) -> dict[str, Any]:
        cores = os.cpu_count() or 1
        busy_share = self.machine_busy / self.machine_total if self.machine_total else 0.0
        used = dict(self.used)
        accounts = None
        if self._pg_conn is not None:
            share = postgres_shares(self.postgres)
            used["postgresql"] = used.get("postgresql", 0.0) + share["service"]
            used["other"] = used.get("other", 0.0) + share["other"]
            used["client"] = used.get("client", 0.0) + share["client"]
            accounts = {k: round(v / self.wall, 3) for k, v in sorted(self.postgres.items()) if self.wall}
        by_group = {k: round(v / self.wall, 2) for k, v in sorted(used.items()) if self.wall}
        out = {"cores": cores, "machine_busy_percent": round(100 * busy_share, 1),
               "cores_used_by": by_group, "seconds": round(self.wall, 1)}
        if accounts is not None:
            out["postgresql_processes_cores"] = accounts
        return out


def postgres_shares(seconds: dict[str, float]) -> dict[str, float]:
    """PostgreSQL CPU seconds by role (see ``postgres_role``) split between the service, other work
    and the benchmark's client: the shared processes are split in proportion to the sessions' CPU."""
    own, elsewhere = seconds.get("own", 0.0), seconds.get("elsewhere", 0.0)
    shared = seconds.get("shared", 0.0)
    ours = own / (own + elsewhere) if own + elsewhere else 1.0
    return {"service": own + shared * ours, "other": elsewhere + shared * (1 - ours),
            "client": seconds.get("measuring", 0.0)}


class PostgresWaits(threading.Thread):
    """Once a second: how many of this run's PostgreSQL sessions are busy, and what they wait for."""

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True)
        self.database_url = database_url
        self.stop_event = threading.Event()
        self.samples = 0
        self.active = 0
        self.waiting = 0
        self.events: dict[str, int] = {}
        self.queries: dict[str, int] = {}
        # Server sessions (connections) opened for this run's database while the load ran: a pool that
        # keeps fewer connections than a process has threads opens and closes them per request (ADR 0080).
        self.counters: dict[str, int] = {}

    def run(self) -> None:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        engine = postgres_engine(self.database_url)
        name = make_url(self.database_url).database
        query = text(
            "SELECT wait_event_type, wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 70) "
            "FROM pg_stat_activity WHERE datname = :n AND state = 'active' AND application_name <> :m"
        )
        counters = text("SELECT sessions FROM pg_stat_database WHERE datname = :n")
        try:
            with engine.connect() as conn:
                first = conn.execute(counters, {"n": name}).one()
                conn.commit()
                while not self.stop_event.wait(1.0):
                    rows = conn.execute(query, {"n": name, "m": MEASURING_APPLICATION}).all()
                    conn.commit()
                    self.samples += 1
                    self.active += len(rows)
                    for kind, event, sql in rows:
                        if kind == "Lock":
                            self.waiting += 1
                            self.events[f"{kind}:{event}"] = self.events.get(f"{kind}:{event}", 0) + 1
                            self.queries[sql] = self.queries.get(sql, 0) + 1
                conn.execute(text("SELECT pg_stat_clear_snapshot()"))  # read the counters as they are now
                last = conn.execute(counters, {"n": name}).one()
                conn.commit()
                self.counters = {"sessions_opened": int(last[0] - first[0])}
        finally:
            engine.dispose()

    def summary(self) -> dict[str, Any]:
        n = max(self.samples, 1)
        top = sorted(self.queries.items(), key=lambda kv: -kv[1])[:3]
        return {"mean_active_sessions": round(self.active / n, 2), "mean_sessions_waiting_on_locks":
                round(self.waiting / n, 2), "lock_waits": self.events, "waiting_queries": [q for q, _ in top],
                **self.counters}


# --- the load --------------------------------------------------------------------------------------


def drive(port: int, calls: dict[str, list[Call]], users: int, seconds: float, warmup: float,
          max_requests: int, seed: int) -> tuple[list[tuple[str, str, int, float]], float]:
    """Closed loop: each user sends its next request as soon as the last is answered."""
    classes = [c for c in MIX if calls.get(c)]
    weights = [MIX[c] for c in classes]
    results: list[tuple[str, str, int, float]] = []
    budget = itertools.count()
    start = time.perf_counter()
    measure_from = start + warmup
    deadline = measure_from + seconds

    def user(n: int) -> None:
        rnd = random.Random(seed * 1000 + n)
        conn = connection(port)
        while True:
            now = time.perf_counter()
            if now >= deadline:
                break
            if now >= measure_from and next(budget) >= max_requests:
                break
            cls = rnd.choices(classes, weights)[0]
            call = rnd.choice(calls[cls])
            headers = dict(call.headers)
            body = call.body
            if call.body_factory is not None:
                body, headers["Content-Type"] = call.body_factory(rnd)
            t0 = time.perf_counter()
            try:
                conn.request(call.method, call.path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
                if resp.will_close:
                    conn.close()
                    conn = connection(port)
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = connection(port)
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= deadline + 5:
                results.append((cls, call.label, status, t1 - t0))
        conn.close()

    threads = [threading.Thread(target=user, args=(n,), daemon=True) for n in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + warmup + 60)
    measured = max(min(time.perf_counter(), deadline + 5) - measure_from, 1e-9)
    return results, measured


def host_speed_ms(rounds: int = 7) -> float:
    """CPU milliseconds this host takes for a fixed piece of pure-Python work (median of ``rounds``).

    Requests per service CPU-second depend on the host as much as on the code: the same commit has
    measured from about 75 to 235 on different days' 2-core machines, and by a third within one hour
    on one machine (docs/operations.md). This figure, taken in the client just before and just after
    each backend's load, is the yardstick to read them against: a run whose host figure is 30 % higher
    was on a host about 30 % slower for the interpreter-bound work a request is. The work is the kind a
    request does (dictionaries, strings, a JSON round trip, a regular expression), single-threaded."""
    word = re.compile(r"[a-z]+_(\d+)")
    samples: list[float] = []
    for _ in range(rounds):
        started = time.process_time()
        total = 0
        for i in range(1200):
            row = {f"column_{j}": f"value_{i}_{j}" for j in range(20)}
            text = json.dumps(row, sort_keys=True)
            back = json.loads(text)
            total += sum(int(m.group(1)) for m in word.finditer(" ".join(back)))
            total += len("|".join(sorted(back.values())))
        samples.append((time.process_time() - started) * 1000)
        if total < 0:  # never: keeps the work from being optimised away by a future interpreter
            raise AssertionError(total)
    samples.sort()
    return round(samples[len(samples) // 2], 2)


def host_speed_paired_ms() -> float:
    """``host_speed_ms`` with one copy on each of two cores at once (the mean of the two copies' figures).

    Against ``host_speed_ms`` alone it shows what a busy neighbour core costs on this host: under the load
    both cores are busy, and on some hosts the same work then takes far more CPU time (shared caches and
    memory bandwidth), which no change to the code can see in a one-process measurement."""
    code = "from benchmarks.load import host_speed_ms; print(host_speed_ms())"
    copies = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)  # noqa: S603
              for _ in range(2)]
    figures = [float(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in copies]
    return round(sum(figures) / len(figures), 2)


def idle_cpu(roots: dict[str, int], seconds: float) -> dict[str, float]:
    """Cores each of the service's processes used while nobody sent a request (the worker's polling
    and heartbeats, the web processes' housekeeping): what the service costs when there is no load."""
    if seconds <= 0:
        return {}
    sampler = CpuSampler(roots)
    sampler.start()
    time.sleep(seconds)
    sampler.stop_event.set()
    sampler.join()
    return {name: round(sampler.used.get(name, 0.0) / sampler.wall, 3) for name in roots}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def stats(rows: list[tuple[str, str, int, float]], seconds: float) -> dict[str, Any]:
    ok = [r for r in rows if 200 <= r[2] < 400]
    lat = sorted(r[3] for r in ok)
    return {
        "requests": len(rows), "ok": len(ok), "errors": len(rows) - len(ok),
        "server_errors": sum(1 for r in rows if r[2] >= 500 or r[2] == 0),
        "rps": round(len(ok) / seconds, 1),
        "p50_ms": round(1000 * percentile(lat, 0.50), 1), "p90_ms": round(1000 * percentile(lat, 0.90), 1),
        "p99_ms": round(1000 * percentile(lat, 0.99), 1),
    }


def bottleneck(backend: str, cpu: dict[str, Any], by_class: dict[str, Any], locked: int,
               waits: dict[str, Any] | None = None) -> str:
    cores = cpu["cores"]
    used = cpu["cores_used_by"]
    busy = cpu["machine_busy_percent"]
    top = sorted(used.items(), key=lambda kv: -kv[1])
    shares = ", ".join(f"{name} {value:.2f}" for name, value in top if value >= 0.01)
    if busy >= 85:
        verdict = f"CPU: the machine's {cores} cores were {busy:.0f}% busy (cores used: {shares})"
        if top and top[0][0] == "web":
            verdict += "; the gunicorn workers (Python request handling) use the most, so more cores or replicas help"
        elif top and top[0][0] == "client":
            verdict += "; the load generator itself is the largest user: the server could do more on its own cores"
        elif top and top[0][0] == "other":
            verdict += "; other processes on this shared machine took the most"
    else:
        verdict = f"not CPU: the machine was {busy:.0f}% busy (cores used: {shares})"
    write = by_class.get("write")
    read = by_class.get("page") or by_class.get("api_read")
    if backend == "embedded" and write and read and write["p99_ms"] > 2 * read["p99_ms"]:
        verdict += (f"; SQLite's single writer shows: write p99 {write['p99_ms']} ms against read p99 "
                    f"{read['p99_ms']} ms")
    if backend == "embedded":
        verdict += ("; on SQLite every transaction, reads included, starts with BEGIN IMMEDIATE (ADR 0002), so "
                    "all requests of all gunicorn processes take the one database lock in turn")
    if waits and waits["mean_sessions_waiting_on_locks"] >= 0.5:
        top = ", ".join(f"{k} ({v} samples)" for k, v in sorted(waits["lock_waits"].items(), key=lambda kv: -kv[1]))
        verdict += (f"; PostgreSQL: on average {waits['mean_sessions_waiting_on_locks']} of "
                    f"{waits['mean_active_sessions']} busy sessions were waiting on a lock ({top})")
        if any("advisory" in k for k in waits["lock_waits"]):
            verdict += (": audited writes queue for the audit chain's advisory lock (ADR 0003), which each "
                        "holds from inserting its events to its commit")
    if locked:
        verdict += f"; 'database is locked' appeared {locked} times in the server log"
    return verdict


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the loopback PostgreSQL, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"tre_load_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                         {"n": name})
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def clear_redis_queues(url: str) -> None:
    """Remove the Celery keys this run left in its Redis database (and nothing else)."""
    try:
        import redis

        client = redis.Redis.from_url(url)
        keys = [*QUEUE_NAMES, "unacked", "unacked_index", "unacked_mutex"]
        keys += list(client.scan_iter("_kombu.binding.*"))
        client.delete(*keys)
        client.close()
    except Exception as exc:  # noqa: BLE001 - cleaning up must not hide the figures
        log(f"note: could not clear Redis keys of the run: {exc}")


@dataclass
class Prepared:
    """An instance with its schema, demo accounts and API tokens, not yet serving."""

    backend: str
    database_url: str
    broker_url: str
    workdir: Path
    env: dict[str, str]
    port: int
    accounts: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def prepare(backend: str, args: argparse.Namespace, database_url: str, broker_url: str) -> Prepared:
    """``tre init``, ``tre demo load`` and a personal API token per demo person, in a fresh folder."""
    workdir = Path(tempfile.mkdtemp(prefix=f"tre-load-{backend}-"))
    instance = workdir / "instance"
    port = free_port()
    settings = {
        "TRE_INSTANCE_PATH": str(instance), "TRE_HOST": LOOPBACK, "TRE_PORT": str(port),
        "TRE_LOG_FORMAT": "json", "TRE_LOG_LEVEL": "INFO", "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"),
    }
    if database_url:
        settings["TRE_DATABASE_URL"] = database_url
    if broker_url:
        settings["TRE_BROKER_URL"] = broker_url
    if broker_url.startswith("redis://"):
        # As production runs it (infra/production/env.example): the rate limits' counters live in
        # Redis too, shared by every web process, which costs each request one Redis command.
        settings["TRE_RATE_LIMIT_STORAGE_URL"] = broker_url
    if args.web_workers:
        settings["WEB_CONCURRENCY"] = str(args.web_workers)
    ready = Prepared(backend, database_url, broker_url, workdir, clean_environment(settings), port)
    started = time.monotonic()
    run_step([*tre_command(), "init"], ready.env, f"[{backend}] tre init")
    ready.steps["init"] = time.monotonic() - started
    try:
        run_step([*tre_command(), "demo", "load", "--patients", str(args.patients)], ready.env,
                 f"[{backend}] tre demo load")
    except RuntimeError as exc:
        if not (instance / "demo-accounts.json").exists():
            raise
        ready.notes.append(f"tre demo load stopped after the accounts: {str(exc).splitlines()[0]}")
    ready.steps["demo load"] = time.monotonic() - started - ready.steps["init"]
    ready.accounts = json.loads((instance / "demo-accounts.json").read_text())
    ready.tokens = issue_tokens(database_url or f"sqlite:///{instance / 'tre.sqlite'}", list(ready.accounts))
    return ready


def first_error(log_text: str) -> str | None:
    """The message of the first ERROR line of a JSON log, for the notes."""
    for line in log_text.splitlines():
        if '"level": "ERROR"' in line:
            try:
                record = json.loads(line)
            except ValueError:
                return line[:300]
            detail = str(record.get("exc_info", "")).strip().splitlines()
            return f"{record.get('message', '')} {detail[-1] if detail else ''}"[:300]
    return None


def measure(ready: Prepared, args: argparse.Namespace) -> dict[str, Any]:
    """Start the service on a prepared instance, sign everybody in, drive the load, stop it."""
    backend = ready.backend
    route_cpu_dir = ready.workdir / "route-cpu"
    if args.route_cpu:
        route_cpu_dir.mkdir(exist_ok=True)
        ready.env["TRE_BENCH_ROUTE_CPU_DIR"] = str(route_cpu_dir)
    service = Service(ready.env, ready.port, ready.workdir, config=ROUTE_CPU_CONF if args.route_cpu else GUNICORN_CONF,
                      granian_path=args.granian_path)
    window = (0.0, 0.0)
    result: dict[str, Any] = {}
    notes, steps = ready.notes, ready.steps
    try:
        started = time.monotonic()
        service.start()
        steps["start"] = time.monotonic() - started
        people = [
            Person(email, info["roles"], ready.tokens[email][0], ready.tokens[email][1],
                   sign_in(ready.port, email, info["password"], info["totp_secret"]))
            for email, info in ready.accounts.items() if email in ready.tokens
        ]
        steps["sign in"] = time.monotonic() - started - steps["start"]
        # Idle: after sign-in (the worker has long finished starting) and before planning the mix,
        # whose probes submit outputs and so give the worker check jobs.
        roots = {"web": service.procs["web"].pid, "worker": service.procs["worker"].pid}
        idle = idle_cpu(roots, args.idle_seconds)
        calls = plan_calls(ready.port, ready.env, people, notes)
        steps["probe"] = time.monotonic() - started - steps["start"] - steps["sign in"] - max(args.idle_seconds, 0)
        log(f"[{backend}] ready (" + ", ".join(f"{k} {v:.0f} s" for k, v in steps.items())
            + f"): {len(people)} people signed in; requests in the mix: "
            + ", ".join(f"{c} {len(v)}" for c, v in calls.items() if v))
        host_before = {"alone": host_speed_ms(), "two_at_once": host_speed_paired_ms()}
        sampler = CpuSampler(roots, ready.database_url)
        sampler.start()
        waits = PostgresWaits(ready.database_url) if ready.database_url else None
        if waits is not None:
            waits.start()
        wall_start = time.time()
        rows, measured = drive(ready.port, calls, args.users, args.seconds, args.warmup, args.max_requests,
                               args.seed)
        window = (wall_start + args.warmup, wall_start + args.warmup + measured)
        sampler.stop_event.set()
        sampler.join()
        if waits is not None:
            waits.stop_event.set()
            waits.join()
        overall = stats(rows, measured)
        by_class = {c: stats([r for r in rows if r[0] == c], measured) for c in MIX if calls.get(c)}
        by_route = {label: stats([r for r in rows if r[1] == label], measured)
                    for label in sorted({r[1] for r in rows})}
        cpu = sampler.summary()
        cpu["idle_cores_before_load"] = idle
        cpu["host_speed_ms"] = {"before": host_before["alone"], "after": host_speed_ms(),
                                "two_at_once_before": host_before["two_at_once"]}
        # Requests per CPU-second the service itself used (web, worker, database, broker): comparable
        # across runs even when other work shares the machine.
        ours = {"web", "worker", "postgresql", "redis"} if ready.database_url else {"web", "worker"}
        service_cores = sum(v for k, v in cpu["cores_used_by"].items() if k in ours)
        cpu["service_cores"] = round(service_cores, 2)
        cpu["requests_per_service_cpu_second"] = round(overall["rps"] / service_cores, 1) if service_cores else None
        web_log = service.tail("web", 10**8)
        locked = web_log.count("database is locked")
        if overall["server_errors"] and (error := first_error(web_log)):
            notes.append(f"first server error: {error}")
        statuses: dict[str, int] = {}
        for r in rows:
            statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
        result = {
            "backend": backend, "database": "postgresql" if ready.database_url else "sqlite",
            "broker": urlparse(ready.broker_url).scheme if ready.broker_url else "sqla+sqlite",
            "users": args.users, "seconds": round(measured, 1), **overall, "statuses": statuses,
            "by_class": by_class, "by_route": by_route, "cpu": cpu,
            "setup_seconds": {k: round(v) for k, v in steps.items()},
            "postgres_waits": waits.summary() if waits is not None else None,
            "bottleneck": bottleneck(backend, cpu, by_class, locked, waits.summary() if waits else None),
            "notes": notes,
        }
    except BaseException:
        kept = Path(tempfile.gettempdir()) / f"tre-load-logs-{backend}-{os.getpid()}"
        kept.mkdir(exist_ok=True)
        for name in ("web.log", "worker.log"):
            if (ready.workdir / name).exists():
                shutil.copy(ready.workdir / name, kept / name)
        log(f"[{backend}] failed; the server logs are kept in {kept}")
        raise
    finally:
        service.stop()
    if args.route_cpu:
        result["route_cpu"] = route_cpu(route_cpu_dir, window)
    return result


def route_cpu(folder: Path, window: tuple[float, float]) -> dict[str, Any]:
    """Per-route CPU of the web workers in the measured window, from the files the hooks of
    ``benchmarks/gunicorn_route_cpu.py`` wrote at each worker's exit, and the workers' process CPU in
    the same window: the difference is what they spent outside requests (gunicorn's loop, accepting,
    keep-alive polling, parsing request heads)."""
    start, end = window
    routes: dict[str, list[float]] = {}
    collections: dict[int, list[float]] = {}
    process = 0.0
    workers = 0
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        workers += 1
        for ended, route, cpu in record["requests"]:
            if start <= ended <= end:
                routes.setdefault(route, []).append(cpu)
        for ended, generation, cpu in record["collections"]:
            if start <= ended <= end:
                collections.setdefault(generation, []).append(cpu)
        samples = record["process"]
        inside = [cpu for when, cpu in samples if start <= when <= end]
        before = [cpu for when, cpu in samples if when < start]
        after = [cpu for when, cpu in samples if when > end]
        # The process CPU between the samples nearest the window's ends (1 s apart at most).
        first = before[-1] if before else (inside[0] if inside else None)
        last = after[0] if after else (inside[-1] if inside else None)
        if first is not None and last is not None:
            process += last - first
    requests = sum(len(v) for v in routes.values())
    in_requests = sum(sum(v) for v in routes.values())
    table = {
        route: {"requests": len(cpus), "share_percent": round(100 * len(cpus) / requests, 2) if requests else 0.0,
                "cpu_ms_mean": round(1000 * sum(cpus) / len(cpus), 2),
                "cpu_percent_of_requests": round(100 * sum(cpus) / in_requests, 2) if in_requests else 0.0}
        for route, cpus in sorted(routes.items(), key=lambda kv: -sum(kv[1]))
    }
    return {
        "workers": workers, "requests": requests,
        "cpu_seconds_in_requests": round(in_requests, 3),
        "cpu_ms_per_request": round(1000 * in_requests / requests, 2) if requests else None,
        "process_cpu_seconds": round(process, 3),
        "process_cpu_ms_per_request": round(1000 * process / requests, 2) if requests else None,
        "outside_requests_percent": round(100 * (process - in_requests) / process, 1) if process else None,
        "collections": {str(g): {"count": len(v), "cpu_ms": round(1000 * sum(v), 1)}
                        for g, v in sorted(collections.items())},
        "routes": table,
    }


def print_route_cpu(table: dict[str, Any]) -> None:
    log(f"per-route CPU of the web workers in the measured window ({table['workers']} workers, "
        f"{table['requests']} requests): in requests {table['cpu_ms_per_request']} ms per request, "
        f"process {table['process_cpu_ms_per_request']} ms per request, outside requests "
        f"{table['outside_requests_percent']} %; garbage collections {table['collections']}")
    log(f"  {'route':<58} {'req':>6} {'share %':>8} {'CPU ms':>8} {'% of CPU':>9}")
    for route, row in table["routes"].items():
        log(f"  {route[:58]:<58} {row['requests']:>6} {row['share_percent']:>8} {row['cpu_ms_mean']:>8} "
            f"{row['cpu_percent_of_requests']:>9}")


def print_report(result: dict[str, Any]) -> None:
    log(f"\n== {result['backend']}: {result['database']} + {result['broker']}, {result['users']} users, "
        f"{result['seconds']} s ==")
    log(f"{'class':<10} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, s in [("all", result), *result["by_class"].items()]:
        log(f"{name:<10} {s['requests']:>9} {s['rps']:>8} {s['p50_ms']:>8} {s['p90_ms']:>8} {s['p99_ms']:>8} "
            f"{s['errors']:>7}")
    for label, s in result["by_route"].items():
        log(f"  {label:<40} {s['requests']:>7} req  p50 {s['p50_ms']:>7} ms  p99 {s['p99_ms']:>7} ms")
    log(f"statuses: {result['statuses']}")
    log(f"CPU: {result['cpu']}")
    host = result["cpu"]["host_speed_ms"]
    log(f"host yardstick: {host['before']} ms of CPU before the load, {host['after']} ms after, "
        f"{host['two_at_once_before']} ms with a copy on each core (a fixed piece of pure-Python work; "
        "higher is a slower host: see host_speed_ms)")
    if result.get("postgres_waits"):
        log(f"PostgreSQL sessions: {result['postgres_waits']}")
    log(f"bottleneck: {result['bottleneck']}")
    for note in result["notes"]:
        log(f"note: {note}")
    if result.get("route_cpu"):
        print_route_cpu(result["route_cpu"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per backend")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before measuring")
    parser.add_argument("--backend", choices=["both", "embedded", "postgres"], default="both")
    parser.add_argument("--users", type=int, default=16, help="concurrent users (closed loop)")
    parser.add_argument("--max-requests", type=int, default=60_000, help="measured requests per backend, at most")
    parser.add_argument("--patients", type=int, default=2000, help="synthetic patients for the demo data")
    parser.add_argument("--web-workers", type=int, default=0,
                        help="gunicorn processes (default: gunicorn.conf.py's rule, one per CPU)")
    parser.add_argument("--granian-path", default="", metavar="DIR",
                        help="serve with granian from this folder instead of gunicorn, to compare servers "
                             "(granian is not a dependency: pip install --target DIR granian)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", default=REDIS_URL, help="Redis database for the PostgreSQL backend's broker")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="seconds the service's idle CPU is measured before the load (0: not measured)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the embedded instance as the load left it, for read_mix --reuse")
    parser.add_argument("--route-cpu", action="store_true",
                        help="time each request's CPU in the web workers and print it per route "
                             "(gunicorn hooks of benchmarks/gunicorn_route_cpu.py; adds a little CPU)")
    args = parser.parse_args(argv)
    if args.route_cpu and args.granian_path:
        parser.error("--route-cpu times requests with gunicorn's hooks; it cannot be used with --granian-path")

    results: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    wanted = ["embedded"] if args.backend in ("both", "embedded") else []
    if args.backend in ("both", "postgres"):
        if answers(LOOPBACK, 5432) and answers(LOOPBACK, 6379):
            wanted.append("postgres")
        else:
            skipped.append("postgres")
            log("\n!!! POSTGRESQL OR REDIS NOT REACHABLE on 127.0.0.1:5432/6379: postgres backend NOT measured !!!")
    with contextlib.ExitStack() as stack:
        urls = {"embedded": ("", "")}
        if "postgres" in wanted:
            urls["postgres"] = (stack.enter_context(postgres_database(POSTGRES_ADMIN_URL)), args.redis_url)
            stack.callback(clear_redis_queues, args.redis_url)
        # Both instances are prepared at once (no load runs yet); the loads then run one after the other.
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = {name: pool.submit(prepare, name, args, *urls[name]) for name in wanted}
            prepared = {}
            for name, future in futures.items():
                prepared[name] = future.result()
                if args.keep and name == "embedded":
                    continue
                stack.callback(shutil.rmtree, prepared[name].workdir, True)
        for name in wanted:
            results[name] = measure(prepared[name], args)
            print_report(results[name])
            if args.keep and name == "embedded":
                # What the load left (submissions, role changes, audit events, messages), for
                # ``python -m benchmarks.read_mix --reuse DIR``: the replay then sees the grown data.
                ready = prepared[name]
                (ready.workdir / "read_mix.json").write_text(json.dumps(
                    {"env": ready.env, "accounts": ready.accounts, "tokens": ready.tokens}))
                log(f"kept: {ready.workdir}")

    pg, emb = results.get("postgres"), results.get("embedded")
    value = (pg or emb or {}).get("rps")
    baseline = emb["rps"] if emb else None
    summary = {
        "benchmark": "load_mixed_http",
        "unit": "requests/s",
        "value": value,
        "baseline": baseline,
        "ratio": round(value / baseline, 2) if value and baseline else None,
        "target": "postgres >= embedded",
        "details": {
            "value_backend": "postgres" if pg else "embedded",
            "skipped_backends": skipped,
            "mix_weights": MIX,
            **{name: {k: r[k] for k in ("database", "broker", "users", "seconds", "requests", "rps", "p50_ms",
                                         "p99_ms", "errors", "bottleneck", "setup_seconds", "postgres_waits")}
               | {"by_class": {c: {k: s[k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
                               for c, s in r["by_class"].items()},
                  "cores_used_by": r["cpu"]["cores_used_by"],
                  "requests_per_service_cpu_second": r["cpu"]["requests_per_service_cpu_second"],
                  "machine_busy_percent": r["cpu"]["machine_busy_percent"],
                  "host_speed_ms": r["cpu"]["host_speed_ms"]}
               for name, r in results.items()},
        },
    }
    print(json.dumps(summary, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
