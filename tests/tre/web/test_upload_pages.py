"""The upload pages and their chunk protocol over HTTP: the plain form without JavaScript, the
resumable protocol the page's script speaks (create, PATCH at an offset, GET/HEAD for the offset,
finish), and its refusals as statuses a client can act on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.projects.factories import World, make_user
from tests.pseudonymisation.test_deliveries import write_delivery

from .test_dataset_schema_pages import login
from .test_delivery_pages import _csrf, landing_world, registry_from_landing

CHUNK = 64 * 1024


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    yield from landing_world(tmp_path, upload_chunk_bytes=CHUNK)


_dataset = registry_from_landing


def _big_csv(tmp: Path, rows: int = 4000) -> bytes:
    return write_delivery(tmp / "made" / "big.csv", rows, seed=5).read_bytes()


def _patch(client: Any, url: str, token: str, offset: int, chunk: bytes, digest: str | None = None) -> Any:
    return client.patch(url, data=chunk, headers={
        "X-CSRFToken": token, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
        "Upload-Checksum": f"sha256 {digest or hashlib.sha256(chunk).hexdigest()}"})


def test_the_script_protocol_sends_resumes_and_finishes_a_delivery(w: World, tmp_path: Path) -> None:
    ds = _dataset(w)
    client = login(w.app.test_client(), w.custodian)
    page = client.get(f"/catalogue/datasets/{ds.id}/upload").get_data(as_text=True)
    token = _csrf(page)
    data = _big_csv(tmp_path)

    made = client.post("/catalogue/uploads", json={"dataset_id": ds.id, "file_name": "big.csv", "size": len(data)},
                       headers={"X-CSRFToken": token})
    up = made.get_json()
    first = _patch(client, up["url"], token, 0, data[:CHUNK])
    # The connection dropped after the second chunk was written: the client asks where it stands.
    _patch(client, up["url"], token, CHUNK, data[CHUNK:2 * CHUNK])
    head = client.head(up["url"])
    stale = _patch(client, up["url"], token, CHUNK, data[CHUNK:2 * CHUNK])
    offset = int(head.headers["Upload-Offset"])
    while offset < len(data):
        offset = int(_patch(client, up["url"], token, offset, data[offset:offset + CHUNK]).headers["Upload-Offset"])
    done = client.post(up["finish_url"], headers={"X-CSRFToken": token})
    report = client.get(done.get_json()["next"]).get_data(as_text=True)

    assert 'id="upload-form"' in page and "upload.js" in page and 'role="status"' in page
    assert made.status_code == 201 and up["chunk_bytes"] == CHUNK and up["offset"] == 0
    assert first.status_code == 204 and first.headers["Upload-Offset"] == str(CHUNK)
    assert head.status_code == 200 and head.headers["Upload-Offset"] == str(2 * CHUNK) and not head.data
    assert stale.status_code == 409 and stale.get_json()["offset"] == 2 * CHUNK
    assert done.status_code == 200 and "accepted" in report and "as version 1" in report


def test_the_page_without_javascript_uploads_a_small_file_in_one_request(w: World, tmp_path: Path) -> None:
    ds = _dataset(w)
    client = login(w.app.test_client(), w.custodian)
    page = client.get(f"/catalogue/datasets/{ds.id}/upload").get_data(as_text=True)
    data = _big_csv(tmp_path, rows=3000)  # larger than one chunk: sent in chunks on the server's side

    sent = client.post(f"/catalogue/datasets/{ds.id}/upload", content_type="multipart/form-data", data={
        "csrf_token": _csrf(page), "file": ((tmp_path / "made" / "big.csv").open("rb"), "big.csv"), "delimiter": ""})
    report = client.get(sent.headers["Location"]).get_data(as_text=True)
    tricked = client.post(f"/catalogue/datasets/{ds.id}/upload", content_type="multipart/form-data", data={
        "csrf_token": _csrf(page), "file": ((tmp_path / "made" / "big.csv").open("rb"), "../../etc/cron.csv")})

    assert len(data) > CHUNK
    assert sent.status_code == 302 and "accepted" in report
    assert tricked.status_code == 422 and "own name" in tricked.get_data(as_text=True)


def test_a_new_dataset_is_registered_from_the_page_and_its_schema_page_follows(w: World, tmp_path: Path) -> None:
    client = login(w.app.test_client(), w.custodian)
    page = client.get("/catalogue/new/upload").get_data(as_text=True)
    _big_csv(tmp_path, rows=50)

    sent = client.post("/catalogue/new/upload", content_type="multipart/form-data", data={
        "csrf_token": _csrf(page), "name": "clinic_upload", "title": "Clinic upload", "description": "",
        "sensitivity": "special_category", "file": ((tmp_path / "made" / "big.csv").open("rb"), "clinic.csv")})
    schema = client.get(sent.headers["Location"]).get_data(as_text=True)

    assert sent.status_code == 302 and "/schema" in sent.headers["Location"]
    assert "nhs_number" in schema and "Confirm" in schema


def test_someone_else_cannot_patch_read_or_finish_an_upload_over_http(w: World, tmp_path: Path) -> None:
    ds = _dataset(w)
    owner = login(w.app.test_client(), w.custodian)
    token = _csrf(owner.get(f"/catalogue/datasets/{ds.id}/upload").get_data(as_text=True))
    data = _big_csv(tmp_path, rows=200)
    up = owner.post("/catalogue/uploads", json={"dataset_id": ds.id, "file_name": "big.csv", "size": len(data)},
                    headers={"X-CSRFToken": token}).get_json()
    other = login(w.app.test_client(), make_user(w.app, "otto.custodian", ["data_custodian"]))
    other_token = _csrf(other.get(f"/catalogue/datasets/{ds.id}/deliveries").get_data(as_text=True))
    researcher = login(w.app.test_client(), w.pi)

    patched = _patch(other, up["url"], other_token, 0, data)
    finished = other.post(up["finish_url"], headers={"X-CSRFToken": other_token})
    read = other.get(up["url"])
    by_researcher = researcher.get(up["url"])
    no_csrf = owner.patch(up["url"], data=data, headers={"Upload-Offset": "0",
                                                          "Upload-Checksum": "sha256 " + "0" * 64})
    damaged = _patch(owner, up["url"], token, 0, data, digest="0" * 64)
    oversized = _patch(owner, up["url"], token, 0, data + b"x" * CHUNK)

    assert (patched.status_code, finished.status_code, read.status_code) == (403, 403, 403)
    assert by_researcher.status_code == 403
    assert no_csrf.status_code in (400, 403)
    assert damaged.status_code == 422 and "damaged" in damaged.get_json()["error"]
    assert oversized.status_code == 413
    assert owner.head(up["url"]).headers["Upload-Offset"] == "0"


def test_an_omop_folder_is_reviewed_then_registered_from_its_page(w: World) -> None:
    from projects.models import Dataset
    from tre.demo.omop import write_omop_folder

    write_omop_folder(Path(w.app.extensions["tre.settings"].landing_dir) / "cdm", persons=20)
    client = login(w.app.test_client(), w.custodian)
    page = client.get("/catalogue/omop").get_data(as_text=True)

    review = client.post("/catalogue/omop", data={"csrf_token": _csrf(page), "folder": "cdm", "prefix": "gp",
                                                   "action": "review"})
    text = review.get_data(as_text=True)
    with w.app.extensions["tre.db"].session_factory() as s:
        before = s.query(Dataset).filter(Dataset.name.like("gp_%")).count()
    climbing = client.post("/catalogue/omop", data={"csrf_token": _csrf(page), "folder": "../instance",
                                                     "prefix": "gp", "action": "review"})
    confirmed = client.post("/catalogue/omop", data={"csrf_token": _csrf(text), "folder": "cdm", "prefix": "gp",
                                                      "action": "confirm"})
    with w.app.extensions["tre.db"].session_factory() as s:
        names = sorted(s.scalars(select(Dataset.name).where(Dataset.name.like("gp_%"))))
    researcher = login(w.app.test_client(), w.pi).get("/catalogue/omop")

    assert review.status_code == 200 and before == 0
    assert 'id="table-person"' in text and 'id="table-measurement"' in text
    assert "<code>person_id</code> → <code>gp_person</code>" in text and "Confirm and register 6 tables" in text
    assert climbing.status_code == 422
    assert confirmed.status_code == 302 and len(names) == 6 and "gp_person" in names
    assert researcher.status_code == 403
