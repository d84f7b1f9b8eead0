"""Secrets: distinctive canary values for a password (set by reset link, then changed on the account
page), a TOTP secret and recovery code, a reset link,
a personal API token, NHS numbers on an opt-out list and one re-identified, the master key and a
wrapped key's plaintext are used in a realistic journey; afterwards none of them may appear in any
log record (raw or as emitted), any URL requested or ``Location`` returned, any task dispatched,
the session cookie, any row of any table (jobs' payloads and results, audit details, broker tables
if any) or any page other roles view afterwards. A self-check proves the harness catches a canary that does leak."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import flask
import pyarrow.parquet as pq
import pyotp
from sqlalchemy import inspect, select, text

from pseudonymisation import nhs_number
from pseudonymisation.services import LINKAGE, _key
from pseudonymisation.tasks import extracts_service
from tests.projects.factories import make_user
from tests.pseudonymisation.test_optout_lists import _active_project, _patients_in_both
from tests.security.figures import record
from tests.tre.helpers import csrf_token
from tests.tre.web.test_projects_pages import login
from tre.core import jobs, logs
from tre.core.audit import AuditEvent
from tre.core.roles import RoleGrant
from tre.demo import synthetic

# Not built on Casey's name or address, or the password policy would refuse them.
PASSWORD = "Sentinel-Pw-Tangerine-Lighthouse-9041"
WRONG_PASSWORD = "Sentinel-Wrong-Pw-Marmalade-5527"
NEW_PASSWORD = "Sentinel-New-Pw-Quince-Harbour-3317"
EMAIL = "casey.canary@nhs.example"


def _valid_number(first_nine: str) -> str:
    digit = nhs_number.check_digit(first_nine)
    assert digit is not None, first_nine
    return first_nine + str(digit)


def _number_forms(n: str) -> list[str]:
    return [n, f"{n[:3]} {n[3:6]} {n[6:]}", f"{n[:3]}-{n[3:6]}-{n[6:]}"]


def _key_forms(key: bytes) -> list[str]:
    std = base64.b64encode(key).decode()
    url = base64.urlsafe_b64encode(key).decode()
    return [key.hex(), key.hex().upper(), std, std.rstrip("="), url, url.rstrip("=")]


class Harness:
    """Everything the journey leaves behind that someone other than the secret's owner could see."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.raw: list[str] = []
        self.emitted = io.StringIO()
        self.urls: list[str] = []
        self.locations: list[str] = []
        self.pages: list[str] = []
        self.cookies: list[str] = []
        self.dispatched: list[str] = []
        self.watch_pages = False

    def start(self) -> None:
        logs.configure("DEBUG", "json", stream=self.emitted)
        harness = self

        class Raw(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                parts = [record.name, str(record.msg), record.getMessage()]
                if record.exc_info:
                    parts.append(logging.Formatter().formatException(record.exc_info))
                if record.exc_text:
                    parts.append(record.exc_text)
                harness.raw.append(" ".join(parts))

        self.raw_handler = Raw(logging.DEBUG)
        # First, so it sees each record before the redacting filter of the real handler rewrites it.
        logging.getLogger().handlers.insert(0, self.raw_handler)
        flask.request_started.connect(self._started, self.app)
        flask.request_finished.connect(self._finished, self.app)
        self.real_dispatch = jobs._dispatcher

        def dispatch(job_id: str, queue: str) -> None:
            self.dispatched.append(json.dumps({"args": [job_id], "queue": queue}))
            assert self.real_dispatch is not None
            self.real_dispatch(job_id, queue)

        jobs.set_dispatcher(dispatch)

    def stop(self) -> None:
        jobs.set_dispatcher(self.real_dispatch)
        flask.request_started.disconnect(self._started, self.app)
        flask.request_finished.disconnect(self._finished, self.app)
        logging.getLogger().removeHandler(self.raw_handler)
        logs.configure("INFO", "text")

    def _started(self, sender: Any, **extra: Any) -> None:
        self.urls.append(flask.request.url)
        self.urls.append(flask.request.full_path)

    def _finished(self, sender: Any, response: Any, **extra: Any) -> None:
        location = response.headers.get("Location")
        if location:
            self.locations.append(location)
        # The session cookie is signed, not encrypted: whatever it holds, the browser can read.
        self.cookies.append(json.dumps(dict(flask.session), default=str))
        if self.watch_pages and not response.direct_passthrough:
            self.pages.append(response.get_data(as_text=True))

    def database(self) -> tuple[list[str], list[bytes], dict[str, int]]:
        """Every value of every row of every table (the broker's too, if it keeps any here)."""
        texts: list[str] = []
        blobs: list[bytes] = []
        counts: dict[str, int] = {}
        engine = self.app.extensions["tre.db"].engine
        with engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()  # noqa: S608 (names from the schema)
                counts[table] = len(rows)
                for row in rows:
                    for value in row:
                        if isinstance(value, bytes | memoryview):
                            blobs.append(bytes(value))
                        elif value is not None:
                            texts.append(value if isinstance(value, str) else json.dumps(value, default=str))
        return texts, blobs, counts

    def findings(self, canaries: dict[str, list[str]], raw_keys: dict[str, bytes]) -> list[str]:
        texts, blobs, _ = self.database()
        places = {
            "raw log record": self.raw,
            "emitted log": [self.emitted.getvalue()],
            "URL requested": self.urls,
            "Location header": self.locations,
            "task dispatched": self.dispatched,
            "session cookie": self.cookies,
            "database row": texts,
            "page viewed afterwards": self.pages,
        }
        found = []
        for name, forms in canaries.items():
            for where, items in places.items():
                for item in items:
                    if any(form in item for form in forms):
                        found.append(f"{name} in {where}: {item[:200]!r}")
                        break
            for blob in blobs:
                if any(form.encode() in blob for form in forms):
                    found.append(f"{name} in a binary column")
                    break
        for name, key in raw_keys.items():
            if any(key in blob for blob in blobs):
                found.append(f"{name} in clear in a binary column")
        return found


def _post(client: Any, path: str, data: dict[str, Any], *, token_from: str, **kwargs: Any) -> Any:
    return client.post(path, data={**data, "csrf_token": csrf_token(client, token_from)}, **kwargs)


def _mono(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}">([^<]+)<', page)
    assert match, f"no #{element_id} on the page"
    return match.group(1).strip()


def test_canary_secrets_and_nhs_numbers_never_reach_logs_tasks_urls_tables_or_other_peoples_pages(
    sqlite_app: Any, tmp_path: Path
) -> None:
    app = sqlite_app
    demo = tmp_path / "demo"
    synthetic.generate(demo, patients=200, seed=23)
    w, project = _active_project(app, demo)
    auditor = make_user(app, "audrey.auditor", ["auditor"])
    harness = Harness(app)
    harness.start()
    try:
        admin, casey, chair = app.test_client(), app.test_client(), app.test_client()

        # An administrator adds a custodian and issues a single-use reset link.
        login(admin, w.admin)
        made = _post(
            admin,
            "/admin/users/new",
            {"email": EMAIL, "display_name": "Casey Canary", "roles": ["data_custodian"]},
            token_from="/admin/users/new",
        )
        assert made.status_code == 302, made.get_data(as_text=True)
        user_path = made.headers["Location"]
        user_id = user_path.rstrip("/").rsplit("/", 1)[-1]
        # A second administrator approves the custodian role (separation of duties, ADR 0010).
        second = app.test_client()
        login(second, make_user(app, "ada.second", ["administrator"]))
        grant = app.extensions["tre.db"].session.scalar(select(RoleGrant.id).where(RoleGrant.user_id == user_id))
        approved = _post(second, f"/admin/role-grants/{grant}/decision", {"approve": "1"}, token_from=user_path)
        assert approved.status_code == 302, approved.get_data(as_text=True)
        link_page = _post(admin, f"/admin/users/{user_id}/reset-link", {}, token_from=user_path)
        link = re.search(r"#token=([A-Za-z0-9_.\-~]+)", link_page.get_data(as_text=True))
        assert link, "no reset link on the page"
        reset_token = link.group(1)

        # Casey sets the canary password with it, signs in, enrols a second factor.
        done = _post(casey, "/auth/reset", {"token": reset_token, "password": PASSWORD}, token_from="/auth/reset")
        assert done.status_code == 200 and "Password changed" in done.get_data(as_text=True)
        _post(casey, "/auth/login", {"email": EMAIL, "password": WRONG_PASSWORD}, token_from="/auth/login")
        _post(casey, "/auth/login", {"email": EMAIL, "password": PASSWORD}, token_from="/auth/login")
        enrol = casey.get("/auth/mfa/enrol").get_data(as_text=True)
        totp_secret = _mono(enrol, "totp-secret")
        codes_page = _post(
            casey, "/auth/mfa/enrol", {"code": pyotp.TOTP(totp_secret).now()}, token_from="/auth/mfa/enrol"
        ).get_data(as_text=True)
        recovery = re.findall(r"<li>([^<]+)</li>", codes_page.split('id="recovery-codes"', 1)[1].split("</ul>")[0])
        assert len(recovery) >= 2

        # Signs out, and back in with a recovery code.
        _post(casey, "/auth/logout", {}, token_from="/account/")
        _post(casey, "/auth/login", {"email": EMAIL, "password": PASSWORD}, token_from="/auth/login")
        back = _post(casey, "/auth/mfa", {"code": recovery[0]}, token_from="/auth/mfa")
        assert back.status_code == 302
        assert casey.get("/account/").status_code == 200

        # Changes the password on the account page: first with a wrong current password, then properly.
        later_code = pyotp.TOTP(totp_secret).at(int(time.time()) + 30)
        change = {"code": later_code, "password": NEW_PASSWORD, "password_again": NEW_PASSWORD}
        wrong = _post(casey, "/account/password", {**change, "current_password": WRONG_PASSWORD},
                      token_from="/account/password")
        assert wrong.status_code == 400
        changed = _post(casey, "/account/password", {**change, "current_password": PASSWORD},
                        token_from="/account/password")
        assert changed.status_code == 302, changed.get_data(as_text=True)
        assert casey.get("/account/").status_code == 200

        # Creates a personal API token on the account page (after the change, which ends older ones).
        token_page = _post(
            casey, "/account/tokens", {"name": "canary script", "days": "7"}, token_from="/account/"
        ).get_data(as_text=True)
        api_token = _mono(token_page, "new-token")
        bearer = {"Authorization": f"Bearer {api_token}"}
        assert casey.get("/api/v1/me", headers=bearer).status_code == 200

        # Loads an opt-out list: two real patients of the source and two further valid numbers.
        opted_out = _patients_in_both(demo, 2) + [_valid_number("981726354"), _valid_number("402918375")]
        csv = "nhs_number\n" + "\n".join(_number_forms(n)[i % 2] for i, n in enumerate(opted_out)) + "\n"
        loaded = _post(
            casey,
            "/extracts/optouts",
            {"name": "national", "dataset": "", "description": "NDOP", "file": (io.BytesIO(csv.encode()), "ndop.csv")},
            token_from="/extracts/optouts",
            content_type="multipart/form-data",
            follow_redirects=True,
        )
        assert "Loaded national version 1: 4 NHS numbers" in loaded.get_data(as_text=True)

        # The extract is built (jobs run with the list in force); Casey asks to re-identify one token
        # over the API, two others approve, and Casey receives the NHS number.
        with app.app_context():
            service = extracts_service(app.extensions["tre.platform"])
            extract = service.request(w.custodian, project.id)
        data = app.extensions["tre.settings"].extracts_path / project.id / "patients" / "data"
        table = pq.read_table(sorted(data.glob("*.parquet")))
        patient_token = next(t for t in table.column("patient_token").to_pylist() if t and t.startswith("T"))
        asked = casey.post(
            "/api/v1/reidentifications",
            headers=bearer,
            json={"project_id": project.id, "tokens": [patient_token], "purpose": "Recall a patient for urgent care."},
        )
        assert asked.status_code in (200, 201), asked.get_data(as_text=True)
        request_id = asked.get_json()["id"]
        with app.app_context():
            service.decide_reidentification(w.chair, request_id, "approve", "Clinical need confirmed")
            service.decide_reidentification(w.custodian, request_id, "approve", "Agreed")
        fulfilled = casey.post(f"/api/v1/reidentifications/{request_id}/identifiers", headers=bearer)
        assert fulfilled.status_code == 200, fulfilled.get_data(as_text=True)
        reidentified = fulfilled.get_json()[0]["nhs_number"]
        assert nhs_number.is_valid(reidentified)

        # Keys: the master key and the plaintext of wrapped keys, through the key provider.
        keys = app.extensions["tre.platform"].keys
        with app.extensions["tre.db"].session_factory() as s:
            linkage_key = _key(s, keys, LINKAGE, create=False)
            project_key = _key(s, keys, f"project:{project.id}", create=False)
        masters = {f"master key v{v}": keys._keyring().key(v) for v in keys.versions}
        fresh_key, _wrapped = keys.new_wrapped_key("canary.test")

        # Afterwards other people look at everything they may see.
        harness.watch_pages = True
        login(admin, w.admin)
        for path in ("/admin/users", user_path):
            assert admin.get(path).status_code == 200
        login(chair, auditor)
        for path in ("/audit/", f"/audit/?person={EMAIL}", "/audit/?action=reidentify", "/audit/export.csv"):
            assert chair.get(path).status_code == 200, path
        login(chair, w.custodian)
        for path in ("/extracts/optouts", "/extracts/optouts/national", f"/extracts/{project.id}/manifest"):
            assert chair.get(path).status_code == 200, path
        login(chair, w.pi)
        assert chair.get(f"/projects/{project.id}").status_code == 200
        harness.watch_pages = False

        canaries: dict[str, list[str]] = {
            "password": [PASSWORD],
            "wrong password": [WRONG_PASSWORD],
            "new password": [NEW_PASSWORD],
            "reset token": [reset_token],
            "TOTP secret": [totp_secret],
            **{f"recovery code {i}": [c] for i, c in enumerate(recovery)},
            # The secret part after ``trepat_<lookup>_``: it may itself hold "_", so split twice only.
            "personal API token": [api_token, api_token.split("_", 2)[2]],
            **{f"opted-out NHS number {i}": _number_forms(n) for i, n in enumerate(opted_out)},
            "re-identified NHS number": _number_forms(reidentified),
        }
        raw_keys = {**masters, "linkage key": linkage_key, "project key": project_key, "fresh data key": fresh_key}
        canaries.update({name: _key_forms(key) for name, key in raw_keys.items()})

        leaks = harness.findings(canaries, raw_keys)

        # Counted before the self-check adds its own records.
        _, _, rows = harness.database()
        audit_events = list(app.extensions["tre.db"].session.scalars(select(AuditEvent)))
        job_rows = rows.get("jobs", 0)
        assert extract.job_id and job_rows >= 1 and audit_events
        places = (
            len(harness.raw)
            + len(harness.urls)
            + len(harness.locations)
            + len(harness.dispatched)
            + len(harness.cookies)
            + sum(rows.values())
            + len(harness.pages)
        )

        # Self-check: a canary that does leak is caught, raw and as emitted, in a URL and in a table.
        logging.getLogger("tre.selfcheck").warning("oops %s", PASSWORD)
        logging.getLogger("tre.selfcheck").warning("oops %s", _number_forms(opted_out[0])[1])
        casey.get(f"/healthz?leak={WRONG_PASSWORD}")
        with app.extensions["tre.db"].session_factory() as s:
            jobs.enqueue(s, "kernel.selftest", {"sleep": 0, "note": totp_secret})
            s.commit()
        caught = harness.findings(canaries, raw_keys)
        assert any(f.startswith("password in raw log record") for f in caught)
        assert any(f.startswith("password in emitted log") for f in caught)
        assert any(f.startswith("opted-out NHS number 0 in raw log record") for f in caught)
        assert not any(f.startswith("opted-out NHS number 0 in emitted log") for f in caught)  # masked
        assert any(f.startswith("wrong password in URL requested") for f in caught)
        assert any(f.startswith("TOTP secret in database row") for f in caught)
    finally:
        harness.stop()

    record("secrets: canary values planted (each searched in every form)", len(canaries))
    record("secrets: places searched (log records, URLs, Locations, tasks, cookies, table rows, pages)", places)
    record("secrets: audit events and job rows searched", len(audit_events) + job_rows)
    record("secrets: canaries found where they must not be", len(leaks))
    assert leaks == []
