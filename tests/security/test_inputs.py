"""Hostile input: every attack gets a clear 4xx (problem+json on the API, a message on the pages) and
changes nothing. "Nothing" is measured: the row count of every table (the audit log apart: a refusal
may be recorded, as a denial, never as a success) and the files in the encrypted file store, before
and after each attack.

Covered: bodies over the upload limit, malformed JSON, malformed CSV/Parquet (output files and
opt-out lists), path traversal in uploaded file names, archives and a zip bomb, HTML and script in
the researcher's text that DAC members and output checkers read, and SQL metacharacters in the
audit search and in identifiers in URLs. Other files already cover single cases (the refused .zip
and .html in tests/tre/web/test_outputs*.py, the escaped context and CSV cells); this suite runs the
whole catalogue of attacks with counts.

The catalogue runs on SQLite and, when reachable, on PostgreSQL. The world is built once per backend,
in a database of its own, and put back to its built state before each test
(``tests/security/backends.py``), so every attack meets the same world.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from tests.disclosure.factories import SAFE_CSV, no_broker, run_queued_jobs
from tests.disclosure.factories import World as OutputsWorld
from tests.projects.factories import World, build_world, complete_draft, make_user
from tests.security.backends import BACKENDS, DatabaseSnapshot, app_on, database_internals
from tests.security.figures import record
from tests.tre.web.test_projects_pages import login, token
from tre.authn import API_AUDIENCE
from tre.core.audit import DENIED, AuditEvent

LIMIT = 64 * 1024  # the upload limit of this suite's app, so oversized bodies stay small


class Site:
    """A projects world and an outputs world in one app, with an auditor, and ways in as each person."""

    def __init__(self, app: Any, backend: str, folder: Path) -> None:
        self.app = app
        self.backend = backend
        self.folder = folder
        with app.app_context():
            self.w: World = build_world(app)
            self.out = OutputsWorld(app)
            self.auditor = make_user(app, "audrey.auditor", ["auditor"])
        self.built = DatabaseSnapshot(app)
        self.built.take()

    def attacks(self, n: int) -> None:
        record(f"inputs: attacks tried on {self.backend}", n)

    @property
    def platform(self) -> Any:
        return self.app.extensions["tre.platform"]

    def page_client(self, user: Any) -> Any:
        return login(self.app.test_client(), user)

    def bearer(self, user: Any, *, purpose: str = "api", project_id: str | None = None) -> dict[str, str]:
        audience = "tre-api" if purpose == "output-submit" else API_AUDIENCE
        tok = self.platform.tokens.issue(user.id, audience, purpose, dt.timedelta(minutes=10), project_id=project_id)
        return {"Authorization": f"Bearer {tok}"}

    def workspace(self) -> dict[str, str]:
        return self.bearer(self.out.author, purpose="output-submit", project_id=self.out.project.id)

    def snapshot(self) -> dict[str, int]:
        """Rows in every table, successful audit events, and stored files."""
        from tre.models import metadata

        session = self.platform.db.session
        session.rollback()
        counts = {
            table.name: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in metadata.sorted_tables
            if table.name != AuditEvent.__tablename__
        }
        counts["audit events other than denials"] = int(
            session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.outcome != DENIED)) or 0
        )
        store = Path(self.app.extensions["tre.settings"].instance_path) / "files"
        counts["stored files"] = sum(1 for p in store.rglob("*") if p.is_file()) if store.exists() else 0
        session.rollback()
        return counts


@pytest.fixture(scope="module", params=BACKENDS)
def built_site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp(f"inputs-{request.param}")
    with app_on(request.param, folder, max_upload_bytes=LIMIT) as app:
        yield Site(app, request.param, folder)


@pytest.fixture
def site(built_site: Site) -> Site:
    """The world as built, whatever the test before did to it."""
    built_site.built.restore()
    no_broker()  # jobs stay queued until a test runs them, as when the world was built
    return built_site


def assert_problem(response: Any, *statuses: int) -> dict[str, Any]:
    assert response.status_code in statuses, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/problem+json", response.mimetype
    assert not database_internals(response.get_data(as_text=True))
    body = response.get_json()
    assert body["status"] == response.status_code and body["title"]
    return body


def submit(site: Site, files: list[tuple[bytes, str]], **fields: str) -> Any:
    data: dict[str, Any] = {
        "title": "Admissions",
        "group": "tables",
        "context": "Admissions by region",
        "controls": "None applied",
        "files": [(io.BytesIO(content), name) for content, name in files],
        **fields,
    }
    return site.app.test_client().post(
        "/api/v1/outputs/requests", headers=site.workspace(), data=data, content_type="multipart/form-data"
    )


def upload_page(site: Site, request_id: str, content: bytes, name: str) -> Any:
    """Replace a file of a request from the workspace: since files come only from workspaces, the
    resubmission API is the one way a file reaches a request after it was first sent."""
    return site.app.test_client().post(
        f"/api/v1/outputs/requests/{request_id}/resubmission",
        headers=site.workspace(),
        data={"files": [(io.BytesIO(content), name)], "group": "tables"},
        content_type="multipart/form-data",
    )


def load_optouts_page(site: Site, content: bytes, name: str = "list.csv") -> Any:
    client = site.page_client(site.w.custodian)
    return client.post(
        "/extracts/optouts",
        data={"name": "national", "dataset": "", "description": "d", "file": (io.BytesIO(content), name),
              "csrf_token": token(client, "/extracts/optouts")},
        content_type="multipart/form-data",
    )


def parquet_bytes() -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"nhs_number": ["9434765919"], "count": [3]}), sink)
    return sink.getvalue()


def zip_bomb() -> bytes:
    """About 20 KB on the wire, 20 MB when opened (1000:1)."""
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("table.csv", b"0" * (20 * 1024 * 1024))
    return sink.getvalue()


def tar_bytes() -> bytes:
    sink = io.BytesIO()
    with tarfile.open(fileobj=sink, mode="w") as archive:
        info = tarfile.TarInfo("table.csv")
        info.size = len(SAFE_CSV)
        archive.addfile(info, io.BytesIO(SAFE_CSV))
    return sink.getvalue()


# --- oversized bodies ---------------------------------------------------------------------------------

OVER = b"a,b\n" + b"1,2\n" * (LIMIT // 4 + 10)


def test_bodies_over_the_upload_limit_are_refused_with_413_and_change_nothing(site: Site) -> None:
    draft_id = site.out.draft(content=SAFE_CSV).id
    before = site.snapshot()

    api_output = submit(site, [(OVER, "big.csv")])
    api_optout = site.app.test_client().post(
        "/api/v1/optout-lists", headers=site.bearer(site.w.custodian),
        json={"name": "national", "numbers": "9434765919\n" * (LIMIT // 11 + 10)},
    )
    page_output = upload_page(site, draft_id, OVER, "big.csv")
    page_optout = load_optouts_page(site, OVER)
    site.attacks(4)

    assert_problem(api_output, 413)
    assert_problem(api_optout, 413)
    assert_problem(page_output, 413)
    assert page_optout.status_code == 413
    assert "The file is too large" in page_optout.get_data(as_text=True)
    assert site.snapshot() == before


def test_a_file_over_the_output_limit_inside_an_accepted_body_is_refused_by_the_service(site: Site) -> None:
    # Body under MAX_CONTENT_LENGTH only once the service's own per-file limit is below it.
    from disclosure.services import Outputs

    svc = Outputs.from_platform(site.platform)
    svc.max_file_bytes = 1024
    draft_id = site.out.draft(content=SAFE_CSV).id
    before = site.snapshot()

    with pytest.raises(Exception, match="larger than"):
        svc.add_file(site.out.author, draft_id, "t.csv", b"a,b\n" + b"1,2\n" * 400, group="tables")
    site.attacks(1)

    assert site.snapshot() == before


# --- malformed JSON on the API -----------------------------------------------------------------------

MALFORMED_JSON = [
    ("truncated", b'{"name": "national", "numbers": ', "application/json"),
    ("not an object", b'["national", "9434765919"]', "application/json"),
    ("null", b"null", "application/json"),
    ("wrong types", b'{"name": 7, "numbers": {"a": 1}}', "application/json"),
    ("not UTF-8", b'{"name": "\xff\xfe", "numbers": "1"}', "application/json"),
    ("deeply nested", b"[" * 5000 + b"]" * 5000, "application/json"),
    ("huge number", b'{"name": "national", "numbers": 1e999999}', "application/json"),
    ("not JSON at all", b"name=national&numbers=9434765919", "text/plain"),
]


@pytest.mark.parametrize(("case", "body", "content_type"), MALFORMED_JSON, ids=[c[0] for c in MALFORMED_JSON])
def test_malformed_json_gets_a_problem_and_changes_nothing(
    site: Site, case: str, body: bytes, content_type: str
) -> None:
    request_id = site.out.submitted(content=SAFE_CSV).id
    site.out.svc.claim(site.out.olive, request_id)
    client = site.app.test_client()
    before = site.snapshot()

    responses = [
        client.post("/api/v1/optout-lists", data=body, content_type=content_type,
                    headers=site.bearer(site.w.custodian)),
        client.post(f"/api/v1/outputs/requests/{request_id}/comments", data=body, content_type=content_type,
                    headers=site.bearer(site.out.olive)),
        client.post(f"/api/v1/outputs/requests/{request_id}/votes", data=body, content_type=content_type,
                    headers=site.bearer(site.out.olive)),
    ]
    site.attacks(len(responses))

    for response in responses:
        assert_problem(response, 400, 415, 422)
    assert site.snapshot() == before


def test_malformed_table_specification_in_a_submission_is_refused_and_changes_nothing(site: Site) -> None:
    before = site.snapshot()

    responses = [
        submit(site, [(SAFE_CSV, "t.csv")], table_specs="{not json"),
        submit(site, [(SAFE_CSV, "t.csv")], table_specs='["t.csv"]'),
        submit(site, [(SAFE_CSV, "t.csv")], table_specs=json.dumps({"t.csv": {"dataset": "../../etc", "dims": ["a"]}})),
    ]
    site.attacks(len(responses))

    for response in responses:
        assert_problem(response, 400, 422)
    assert site.snapshot() == before


# --- malformed CSV and Parquet -----------------------------------------------------------------------

BAD_OUTPUT_FILES = [
    ("not UTF-8", b"region,count\n\xff\xfe\xfa,12\n", "table.csv"),
    ("UTF-16 with NULs", "region,count\nNorth,12\n".encode("utf-16"), "table.csv"),
    ("Parquet by name", parquet_bytes(), "table.parquet"),
    ("Parquet named as CSV", parquet_bytes(), "table.csv"),
    ("empty", b"", "table.csv"),
    ("PNG that is not one", b"GIF89a....", "figure.png"),
]


@pytest.mark.parametrize(("case", "content", "name"), BAD_OUTPUT_FILES, ids=[c[0] for c in BAD_OUTPUT_FILES])
def test_malformed_output_files_are_refused_on_the_api_and_the_page_and_change_nothing(
    site: Site, case: str, content: bytes, name: str
) -> None:
    draft_id = site.out.draft(content=SAFE_CSV).id
    before = site.snapshot()

    api = submit(site, [(SAFE_CSV, "ok.csv"), (content, name)])
    page = upload_page(site, draft_id, content, name)
    site.attacks(2)

    assert_problem(api, 422)
    assert_problem(page, 422)
    assert site.snapshot() == before


BAD_OPTOUT_FILES = [
    ("binary", bytes(range(256)) * 4),
    ("Parquet", parquet_bytes()),
    ("header only", b"nhs_number\n"),
    ("one bad line among good", b"9434765919\n9434765918\n"),
    ("CSV whose first column is names", b"name,nhs_number\nJo Bloggs,9434765919\n"),
    ("formula injection", b"=HYPERLINK(\"http://evil\")\n"),
]


@pytest.mark.parametrize(("case", "content"), BAD_OPTOUT_FILES, ids=[c[0] for c in BAD_OPTOUT_FILES])
def test_malformed_opt_out_lists_are_refused_whole_and_change_nothing(site: Site, case: str, content: bytes) -> None:
    before = site.snapshot()

    page = load_optouts_page(site, content)
    api = site.app.test_client().post(
        "/api/v1/optout-lists", headers=site.bearer(site.w.custodian),
        json={"name": "national", "numbers": content.decode("latin-1")},
    )
    site.attacks(2)

    assert page.status_code in (200, 400, 422)
    text = page.get_data(as_text=True)
    assert "Loaded national" not in text and "nhsuk-error" in text
    assert_problem(api, 422)
    assert site.snapshot() == before


# --- path traversal in file names ----------------------------------------------------------------------

HOSTILE_NAMES = [
    "../../etc/passwd.csv",
    "../table.csv",
    "/etc/passwd.csv",
    "..\\..\\windows\\win.csv",
    "C:\\temp\\table.csv",
    "table.csv\x00.png",
    "..",
    ".hidden.csv",
    "folder/table.csv",
    "%2e%2e%2ftable.csv",
    "table.csv\n.txt",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_file_names_with_paths_are_refused_and_nothing_is_written_anywhere(site: Site, name: str) -> None:
    draft_id = site.out.draft(content=SAFE_CSV).id
    before = site.snapshot()
    everything_before = {p for p in site.folder.rglob("*") if p.is_file()}

    api = submit(site, [(SAFE_CSV, name)])
    page = upload_page(site, draft_id, SAFE_CSV, name)
    site.attacks(2)

    body = assert_problem(api, 422)
    # A name werkzeug cannot parse arrives as no file at all; the rest are refused by name.
    assert "name" in body["detail"] or "Attach at least one file" in body["detail"]
    assert_problem(page, 422)
    assert site.snapshot() == before
    # Only the SQLite journal may have come and gone; no file appeared anywhere in the site's folder.
    after = {p for p in site.folder.rglob("*") if p.is_file() and not p.name.endswith(("-journal", "-wal", "-shm"))}
    assert after <= everything_before


# --- archives and zip bombs ------------------------------------------------------------------------------

ARCHIVES = [
    ("zip bomb", zip_bomb(), "tables.zip"),
    ("zip bomb named as CSV", zip_bomb(), "tables.csv"),
    ("zip bomb named as text", zip_bomb(), "notes.txt"),
    ("gzip", gzip.compress(b"0" * 1_000_000), "table.csv.gz"),
    ("gzip named as CSV", gzip.compress(SAFE_CSV), "table.csv"),
    ("tar", tar_bytes(), "tables.tar"),
    ("7z magic", b"7z\xbc\xaf\x27\x1c" + b"\x00" * 64, "tables.7z"),
]


@pytest.mark.parametrize(("case", "content", "name"), ARCHIVES, ids=[c[0] for c in ARCHIVES])
def test_archives_and_zip_bombs_are_refused_by_type_without_being_opened(
    site: Site, case: str, content: bytes, name: str
) -> None:
    draft_id = site.out.draft(content=SAFE_CSV).id
    before = site.snapshot()

    api = submit(site, [(content, name)])
    page = upload_page(site, draft_id, content, name)
    optout = load_optouts_page(site, content, name)
    site.attacks(3)

    body = assert_problem(api, 422)
    assert "archive" in body["detail"] or "not accepted" in body["detail"] or "UTF-8" in body["detail"]
    assert_problem(page, 422)
    assert "Loaded national" not in optout.get_data(as_text=True)
    assert site.snapshot() == before


# --- HTML and script in the researcher's text, shown to others ----------------------------------------

SCRIPT = '<script>alert("x")</script>'
IMG = "<img src=x onerror=alert(1)>"
ESCAPED = ("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;", "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;")


def _escaped_everywhere(body: str) -> None:
    assert SCRIPT not in body and IMG not in body and "<script>alert" not in body
    assert any(e in body for e in ESCAPED), "the researcher's text should be shown, escaped"
    assert "&lt;img src=x onerror=alert(1)&gt;" in body


def test_application_text_is_escaped_on_every_page_the_committee_reads(site: Site) -> None:
    w = site.w
    p = complete_draft(w)
    project_id = p.id
    w.svc.update_application(
        w.pi, p.id, title=f"Readmissions {SCRIPT}", lay_summary=f"Lay {SCRIPT} {IMG}",
        scientific_purpose=f"Purpose {IMG} {SCRIPT}", public_benefit=f"Benefit {SCRIPT} {IMG}",
    )
    w.svc.set_dataset_request(w.pi, p.id, w.dataset_id, ["nhs_number", "diagnosis"], f"Need {SCRIPT} {IMG}")
    w.svc.submit(w.pi, p.id)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])

    pages = {
        "reviewer": site.page_client(w.dana).get(f"/dac/{project_id}"),
        "chair": site.page_client(w.chair).get(f"/dac/{project_id}"),
        "chair decides": site.page_client(w.chair).get(f"/dac/{project_id}/decide"),
    }
    site.attacks(len(pages))

    for who, response in pages.items():
        assert response.status_code == 200, who
        _escaped_everywhere(response.get_data(as_text=True))


def test_output_request_text_is_escaped_on_every_page_the_checkers_read(site: Site) -> None:
    out = site.out
    req, _ = out.svc.create_request(out.author, out.project.id, f"Title {SCRIPT} {IMG}")
    out.svc.set_group(out.author, req.id, "tables", f"Context {SCRIPT} {IMG}", f"Controls {IMG} {SCRIPT}")
    out.svc.add_file(out.author, req.id, "table.csv", SAFE_CSV, group="tables")
    out.svc.submit(out.author, req.id)
    run_queued_jobs(site.app)
    out.svc.claim(out.olive, req.id)
    file_id = out.refresh(req).current_files[0].id
    out.svc.vote(out.olive, req.id, file_id, "changes_requested", f"Round {SCRIPT} {IMG}")
    request_id = req.id
    olive = site.page_client(out.olive)

    pages = {
        "queue": olive.get("/outputs/queue"),
        "request": olive.get(f"/outputs/requests/{request_id}"),
    }
    site.attacks(len(pages))

    queue = pages.pop("queue")
    assert queue.status_code == 200
    assert SCRIPT not in queue.get_data(as_text=True) and IMG not in queue.get_data(as_text=True)
    for who, response in pages.items():
        assert response.status_code == 200, who
        _escaped_everywhere(response.get_data(as_text=True))


def test_output_request_text_is_returned_as_data_not_markup_on_the_api(site: Site) -> None:
    out = site.out
    req, _ = out.svc.create_request(out.author, out.project.id, f"Title {SCRIPT}")
    out.svc.set_group(out.author, req.id, "tables", f"Context {SCRIPT}", "None")
    out.svc.add_file(out.author, req.id, "table.csv", SAFE_CSV, group="tables")
    out.svc.submit(out.author, req.id)
    run_queued_jobs(site.app)
    request_id = req.id

    response = site.app.test_client().get(
        f"/api/v1/outputs/requests/{request_id}/checker-view", headers=site.bearer(out.olive)
    )
    site.attacks(1)

    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json()["title"] == f"Title {SCRIPT}"  # the exact text, for the client to escape


# --- SQL metacharacters -------------------------------------------------------------------------------

SQL = [
    "' OR '1'='1",
    "'; DROP TABLE audit_events; --",
    '" OR 1=1 --',
    "%",
    "_",
    "\\",
    "project.%",
    "1) UNION SELECT * FROM users --",
]


@pytest.mark.parametrize("payload", SQL)
def test_sql_metacharacters_in_the_audit_search_find_nothing_and_break_nothing(site: Site, payload: str) -> None:
    client = site.page_client(site.auditor)
    before = site.snapshot()
    events_before = int(site.platform.db.session.scalar(select(func.count()).select_from(AuditEvent)) or 0)
    site.platform.db.session.rollback()

    pages = [client.get("/audit/", query_string={field: payload}) for field in ("person", "project", "action",
                                                                                  "outcome")]
    dates = [client.get("/audit/", query_string={field: payload}) for field in ("start", "end")]
    export = client.get("/audit/export.csv", query_string={"action": payload})
    site.attacks(len(pages) + len(dates) + 1)

    for page in pages + dates + [export]:
        assert not database_internals(page.get_data(as_text=True))
    for page in pages:
        assert page.status_code == 200
    for page in dates:
        assert page.status_code == 400 and "YYYY-MM-DD" in page.get_data(as_text=True)
    assert export.status_code == 200
    assert export.get_data(as_text=True).strip().count("\n") == 0  # the header line only: nothing matched
    session = site.platform.db.session
    searches = session.scalars(select(AuditEvent).where(AuditEvent.action == "audit.search")).all()
    found = {k: e.detail["rows"] for e in searches for k in e.detail["filters"] if k in ("person", "project",
                                                                                         "action", "outcome")}
    assert found == {"person": 0, "project": 0, "action": 0, "outcome": 0}  # no filter matched anything
    # The only new audit events are the searches themselves: nothing dropped, nothing else changed.
    assert int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0) > events_before
    after = site.snapshot()
    assert {k: v for k, v in after.items() if k != "audit events other than denials"} == {
        k: v for k, v in before.items() if k != "audit events other than denials"
    }
    assert site.platform.audit.verify(session.scalars(select(AuditEvent).order_by(AuditEvent.seq))).ok


@pytest.mark.parametrize("payload", ["' OR 1=1 --", "1; DROP TABLE projects", "%", "..%2f..%2fetc"])
def test_sql_metacharacters_as_identifiers_in_urls_are_not_found(site: Site, payload: str) -> None:
    from urllib.parse import quote

    before = site.snapshot()
    ident = quote(payload, safe="")
    responses = {
        "catalogue": site.page_client(site.w.pi).get(f"/catalogue/datasets/{ident}"),
        "dac": site.page_client(site.w.chair).get(f"/dac/{ident}"),
        "outputs": site.page_client(site.out.olive).get(f"/outputs/requests/{ident}"),
        "api project": site.app.test_client().get(f"/api/v1/projects/{ident}", headers=site.bearer(site.w.pi)),
        "api output": site.app.test_client().get(
            f"/api/v1/outputs/requests/{ident}/checker-view", headers=site.bearer(site.out.olive)
        ),
    }
    site.attacks(len(responses))

    for where, response in responses.items():
        assert response.status_code == 404, (where, response.status_code)
        assert not database_internals(response.get_data(as_text=True)), where
        if where.startswith("api"):
            assert_problem(response, 404)
    assert site.snapshot() == before
