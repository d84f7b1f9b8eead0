"""Resumable uploads of a delivery: chunks at their offset with their hash, resumed after a break,
assembled only in the identifiable zone, finished into a delivery (or a newly registered dataset),
and every attack refused and audited. Runs on SQLite and PostgreSQL (the ``database_url`` fixture)."""

from __future__ import annotations

import datetime as dt
import hashlib
import stat
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from projects.kernel import NotFound, ProjectPermissionDenied
from projects.models import Dataset
from pseudonymisation.delivery_tasks import uploads_service
from pseudonymisation.models import DatasetDelivery, DatasetUpload
from pseudonymisation.sealed import is_sealed
from pseudonymisation.uploads import OffsetMismatch, TooLarge, UploadClosed, UploadRefused, Uploads
from pseudonymisation.zone import source as source_in_zone
from tests.projects.factories import build_world, make_user
from tre.core.audit import DENIED, AuditEvent
from tre.core.db import utcnow

from .test_deliveries import HEADER, register, versions, write_delivery

CHUNK = 1000


def plaintext(app: Any, stored: Path) -> bytes:
    """A delivery's copy in the zone, read through its seal."""
    with source_in_zone(stored, app.extensions["tre.platform"].keys).open() as handle:
        return handle.read()


def uploads(app: Any) -> Uploads:
    svc = uploads_service(app.extensions["tre.platform"])
    svc.chunk_bytes = CHUNK
    return svc


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def send(svc: Uploads, actor: Any, upload_id: str, data: bytes, start: int = 0, stop: int | None = None) -> int:
    offset = start
    end = len(data) if stop is None else stop
    while offset < end:
        chunk = data[offset:min(offset + CHUNK, end)]
        offset = svc.append(actor, upload_id, offset, chunk, sha(chunk))
    return offset


def refresh_bytes(app: Any, rows: int = 200, seed: int = 4) -> bytes:
    path = write_delivery(Path(app.extensions["tre.settings"].instance_path) / "made" / "refresh.csv", rows, seed=seed)
    return path.read_bytes()


def delivery_of(app: Any, delivery_id: str) -> DatasetDelivery:
    with app.extensions["tre.db"].session_factory() as s:
        found = s.get(DatasetDelivery, delivery_id)
        assert found is not None
        s.expunge(found)
        return found


def upload_row(app: Any, upload_id: str) -> DatasetUpload:
    with app.extensions["tre.db"].session_factory() as s:
        found = s.get(DatasetUpload, upload_id)
        assert found is not None
        s.expunge(found)
        return found


def refusals(app: Any, action: str) -> list[AuditEvent]:
    with app.extensions["tre.db"].session_factory() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action, AuditEvent.outcome == DENIED)))


def zone(app: Any) -> Path:
    return Path(app.extensions["tre.settings"].identifiable_path)


def test_a_file_sent_in_chunks_lands_only_in_the_zone_and_becomes_the_next_version(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    from .test_deliveries import deliver

    deliver(app, w, ds, "v1/registry.csv")
    data = refresh_bytes(app)
    svc = uploads(app)

    up = svc.create(w.custodian, file_name="refresh.csv", size=len(data), dataset_id=ds.id)
    part = svc.part_path(up)
    halfway = send(svc, w.custodian, up.id, data, stop=2 * CHUNK)
    modes = (stat.S_IMODE(part.stat().st_mode), stat.S_IMODE(part.parent.stat().st_mode),
             stat.S_IMODE(part.parent.parent.stat().st_mode))
    send(svc, w.custodian, up.id, data, start=halfway)
    delivery = delivery_of(app, svc.finish(w.custodian, up.id).id)

    assert halfway == 2 * CHUNK
    assert modes == (0o600, 0o700, 0o700)
    assert part.is_relative_to(zone(app)) and not part.is_relative_to(app.extensions["tre.settings"].landing_dir)
    assert (delivery.state, delivery.origin, delivery.version, delivery.rows) == ("accepted", "upload", 2, 200)
    stored = Path(delivery.stored_path or "")
    assert stored.is_relative_to(zone(app) / "deliveries") and plaintext(app, stored) == data
    assert is_sealed(stored) and data[:40] not in stored.read_bytes()  # sealed at rest (ADR 0033)
    assert delivery.source_sha256 == sha(data) and stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert not part.parent.exists()  # nothing left in the uploads folder
    assert versions(app, ds) == [1, 2]
    assert upload_row(app, up.id).state == "finished"


def test_an_upload_resumes_from_the_offset_the_server_reports_after_a_break(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    data = refresh_bytes(app)
    first = uploads(app)
    up = first.create(w.custodian, file_name="refresh.csv", size=len(data), dataset_id=ds.id)
    send(first, w.custodian, up.id, data, stop=3 * CHUNK)

    # The page was reloaded: a new request, a new service, the same upload.
    again = uploads(app)
    reached = again.status(w.custodian, up.id).upload_offset
    with pytest.raises(OffsetMismatch) as repeated:  # the last chunk sent again after a lost answer
        again.append(w.custodian, up.id, 2 * CHUNK, data[2 * CHUNK:3 * CHUNK], sha(data[2 * CHUNK:3 * CHUNK]))
    send(again, w.custodian, up.id, data, start=reached)
    delivery = delivery_of(app, again.finish(w.custodian, up.id).id)

    assert reached == 3 * CHUNK and repeated.value.offset == 3 * CHUNK
    assert plaintext(app, Path(delivery.stored_path or "")) == data and delivery.state == "accepted"


def test_chunks_out_of_order_oversized_past_the_size_or_damaged_are_refused_and_audited(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    data = refresh_bytes(app)
    svc = uploads(app)
    up = svc.create(w.custodian, file_name="refresh.csv", size=len(data), dataset_id=ds.id)
    send(svc, w.custodian, up.id, data, stop=CHUNK)
    late = data[2 * CHUNK:3 * CHUNK]
    # A refusal rolls the session back, which expires what it loaded: keep what is asked after.
    uid, part = up.id, svc.part_path(up)

    with pytest.raises(OffsetMismatch):
        svc.append(w.custodian, uid, 2 * CHUNK, late, sha(late))  # skips a chunk
    with pytest.raises(OffsetMismatch):
        svc.append(w.custodian, uid, 0, data[:CHUNK], sha(data[:CHUNK]))  # overwrites the start
    with pytest.raises(TooLarge):
        svc.append(w.custodian, uid, CHUNK, data[CHUNK:3 * CHUNK], sha(data[CHUNK:3 * CHUNK]))
    with pytest.raises(UploadRefused, match="damaged"):
        svc.append(w.custodian, uid, CHUNK, data[CHUNK:2 * CHUNK], sha(b"something else"))
    with pytest.raises(UploadRefused, match="64 hexadecimal"):
        svc.append(w.custodian, uid, CHUNK, data[CHUNK:2 * CHUNK], None)
    small = uploads(app).create(w.custodian, file_name="tiny.csv", size=10, dataset_id=ds.id).id
    with pytest.raises(TooLarge, match="past the size"):
        svc.append(w.custodian, small, 0, b"x" * 11, sha(b"x" * 11))
    with pytest.raises(UploadRefused, match="bytes have arrived"):
        svc.finish(w.custodian, uid)
    svc.max_bytes = 10_000
    with pytest.raises(TooLarge):
        svc.create(w.custodian, file_name="huge.csv", size=10_001, dataset_id=ds.id)

    assert upload_row(app, uid).upload_offset == CHUNK
    assert part.read_bytes()[:CHUNK] == data[:CHUNK]
    assert len(refusals(app, "dataset.upload_chunk")) == 6
    assert len(refusals(app, "dataset.upload_finish")) == 1
    assert len(refusals(app, "dataset.upload_create")) == 1


@pytest.mark.parametrize("name", ["../refresh.csv", "a/refresh.csv", "C:\\fakepath\\refresh.csv", ".refresh.csv",
                                  "refresh.exe", "re\x00fresh.csv", "/etc/passwd.csv", "", "line\nbreak.csv"])
def test_a_file_name_with_a_path_trick_is_refused(onboarding_app: Any, name: str) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)

    with pytest.raises(UploadRefused):
        uploads(app).create(w.custodian, file_name=name, size=100, dataset_id=ds.id)

    assert list((zone(app) / "uploads").iterdir()) == [] if (zone(app) / "uploads").exists() else True
    assert len(refusals(app, "dataset.upload_create")) == 1


def test_nobody_else_may_add_to_read_or_finish_someone_elses_upload(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    other_custodian = make_user(app, "otto.custodian", ["data_custodian"])
    data = refresh_bytes(app)
    svc = uploads(app)
    up = svc.create(w.custodian, file_name="refresh.csv", size=len(data), dataset_id=ds.id)
    send(svc, w.custodian, up.id, data, stop=len(data) - 10)
    tail, uid = data[-10:], up.id

    for intruder in (other_custodian, w.pi, w.admin):
        with pytest.raises(ProjectPermissionDenied):
            svc.append(intruder, uid, len(data) - 10, tail, sha(tail))
        with pytest.raises(ProjectPermissionDenied):
            svc.finish(intruder, uid)
        with pytest.raises(ProjectPermissionDenied):
            svc.status(intruder, uid)
    with pytest.raises(ProjectPermissionDenied):  # another custodian cannot start one into this dataset
        svc.create(other_custodian, file_name="mine.csv", size=10, dataset_id=ds.id)
    with pytest.raises(NotFound):
        svc.append(w.custodian, "0" * 32, 0, tail, sha(tail))

    assert upload_row(app, uid).upload_offset == len(data) - 10
    assert len(refusals(app, "dataset.upload_chunk")) == 4  # three intruders and the unknown id
    assert len(refusals(app, "dataset.upload_finish")) == 3
    assert len(refusals(app, "dataset.upload_read")) == 3
    assert len(refusals(app, "dataset.upload_create")) == 1


def test_a_finished_upload_cannot_be_patched_or_finished_again(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    data = refresh_bytes(app)
    svc = uploads(app)
    up = svc.create(w.custodian, file_name="refresh.csv", size=len(data), dataset_id=ds.id)
    send(svc, w.custodian, up.id, data)
    uid, delivery_id = up.id, svc.finish(w.custodian, up.id).id

    with pytest.raises(UploadRefused, match="finished"):
        svc.append(w.custodian, uid, len(data) - 10, data[-10:], sha(data[-10:]))
    with pytest.raises(UploadRefused, match="finished"):
        svc.finish(w.custodian, uid)

    assert plaintext(app, Path(delivery_of(app, delivery_id).stored_path or "")) == data
    assert len(refusals(app, "dataset.upload_chunk")) == 1 and len(refusals(app, "dataset.upload_finish")) == 1


def test_an_abandoned_upload_expires_and_its_bytes_are_removed(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    data = refresh_bytes(app)
    svc = uploads(app)
    idle = svc.create(w.custodian, file_name="refresh.csv", size=len(data), dataset_id=ds.id)
    busy = svc.create(w.custodian, file_name="other.csv", size=len(data), dataset_id=ds.id)
    send(svc, w.custodian, idle.id, data, stop=CHUNK)
    idle_id, busy_id = idle.id, busy.id
    db = app.extensions["tre.db"]
    with db.session_factory() as s:
        s.execute(update(DatasetUpload).where(DatasetUpload.id == idle_id)
                  .values(expires_at=utcnow() - dt.timedelta(minutes=1)))
        s.commit()

    with pytest.raises(UploadClosed):  # past its expiry, even before the sweep
        svc.append(w.custodian, idle_id, CHUNK, data[CHUNK:2 * CHUNK], sha(data[CHUNK:2 * CHUNK]))
    expired = svc.expire_idle()
    with pytest.raises(UploadClosed):
        svc.finish(w.custodian, idle_id)

    assert expired == 1
    assert upload_row(app, idle_id).state == "expired" and upload_row(app, busy_id).state == "open"
    assert not (zone(app) / "uploads" / idle_id).exists() and (zone(app) / "uploads" / busy_id).exists()
    with db.session_factory() as s:
        swept = s.scalars(select(AuditEvent).where(AuditEvent.action == "dataset.upload_expire")).all()
    assert len(swept) == 1 and swept[0].detail["upload"] == idle_id
    assert len(refusals(app, "dataset.upload_chunk")) == 1 and len(refusals(app, "dataset.upload_finish")) == 1


def test_a_new_dataset_is_registered_from_the_uploaded_file_with_its_columns(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    data = refresh_bytes(app, rows=40)
    svc = uploads(app)

    up = svc.create(w.custodian, file_name="clinic.csv", size=len(data),
                    register={"name": "clinic_upload", "title": "Clinic upload", "sensitivity": "special_category"})
    send(svc, w.custodian, up.id, data)
    delivery = delivery_of(app, svc.finish(w.custodian, up.id).id)
    with app.extensions["tre.db"].session_factory() as s:
        ds = s.scalar(select(Dataset).where(Dataset.name == "clinic_upload"))
        assert ds is not None
        columns = [(c.name, c.role) for c in ds.columns]
        location = ds.source_location
    with pytest.raises(UploadRefused, match="already registered"):
        svc.create(w.custodian, file_name="clinic.csv", size=len(data), register={"name": "clinic_upload",
                                                                                  "title": "Again"})

    with pytest.raises(UploadRefused, match="short name"):  # refused before any byte is sent
        svc.create(w.custodian, file_name="clinic.csv", size=len(data), register={"name": "Clinic Upload!",
                                                                                  "title": "Bad name"})

    assert columns == [(c, "direct_identifier") for c in HEADER]
    assert (delivery.state, delivery.version, delivery.rows) == ("accepted", 1, 40)
    assert location == delivery.stored_path and Path(location).is_relative_to(zone(app))


def test_a_file_unlike_the_hash_the_browser_declared_fails_its_check(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    data = refresh_bytes(app)
    svc = uploads(app)

    up = svc.create(w.custodian, file_name="refresh.csv", size=len(data), dataset_id=ds.id, sha256=sha(b"other"))
    send(svc, w.custodian, up.id, data)
    delivery = delivery_of(app, svc.finish(w.custodian, up.id).id)

    assert delivery.state == "failed" and "SHA-256 differs" in (delivery.reason or "")
    assert versions(app, ds) == []
