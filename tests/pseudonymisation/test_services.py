"""The extract service end to end: approved columns only, keys wrapped, restartable job,
crypto-shredding at closure, and re-identification only with two other people's approval."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from projects.closure import run_destruction
from pseudonymisation import nhs_number
from pseudonymisation.models import Extract, WrappedKey
from pseudonymisation.services import ExtractServiceError
from pseudonymisation.tasks import extracts_service
from tests.projects.factories import TODAY, build_world, make_user, publish_agreement
from tre.core import jobs
from tre.core.audit import FAILURE, AuditEvent
from tre.demo import synthetic


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    synthetic.generate(out, patients=600, seed=7)
    return out


def _patients_schema(demo_data: Path) -> dict[str, Any]:
    catalogue = json.loads((demo_data / "datasets.json").read_text())
    return next(t for t in catalogue["tables"] if t["name"] == "patients")


def _active_project(
    app: Any, demo_data: Path, *, spec: dict[str, Any] | None = None, source: Path | None = None,
    approved: list[str] | None = None,
) -> Any:
    """An active project approved for the demo patients (or for ``source`` under ``spec``)."""
    w = build_world(app)
    spec = spec or _patients_schema(demo_data)
    w.svc.register_dataset(
        w.custodian, name="patients", title="Patients", description="Demographics", source_kind="parquet",
        source_location=str(source or demo_data / "patients.parquet"), sensitivity="special_category",
        columns=[{"name": c["name"], "role": c["role"], "description": c.get("description", ""),
                  "sensitivity": c.get("sensitivity", "special_category")} for c in spec["columns"]],
        schema_spec=spec,
    )
    p = w.svc.create_project(w.pi, "Diabetes and deprivation")
    w.svc.update_application(
        w.pi, p.id, lay_summary="s", scientific_purpose="s", public_benefit="s", legal_basis="6(1)(e)",
        ethics_reference="IRAS 1", funder="NIHR", start_date=TODAY - dt.timedelta(days=1),
        end_date=TODAY + dt.timedelta(days=30),
    )
    w.svc.set_dataset_request(w.pi, p.id, _dataset_id(app, "patients"),
                              approved or ["nhs_number", "date_of_birth", "postcode", "sex", "given_name"], "analysis")
    w.svc.submit(w.pi, p.id)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "fine")
    w.svc.cast_vote(w.drew, p.id, "approve", "fine")
    # The chair approves fewer columns than asked: no names.
    w.svc.decide(w.chair, p.id, "approved",
                 approved_columns={"patients": approved or ["nhs_number", "date_of_birth", "postcode", "sex"]})
    publish_agreement(w)
    w.svc.activate(w.pi, p.id)
    return w, p


def _dataset_id(app: Any, name: str) -> str:
    from projects.models import Dataset

    return app.extensions["tre.db"].session.scalar(select(Dataset.id).where(Dataset.name == name))


def _service(app: Any) -> Any:
    return extracts_service(app.extensions["tre.platform"])


def test_extract_holds_only_approved_columns_with_tokens_and_generalised_values(
    app: Any, demo_data: Path
) -> None:
    w, p = _active_project(app, demo_data)
    with app.app_context():
        extract = _service(app).request(w.custodian, p.id)

    db = app.extensions["tre.db"]
    with db.session_factory() as s:
        done = s.get(Extract, extract.id)
        assert done is not None and done.state == "succeeded"
        key = s.get(WrappedKey, f"project:{p.id}")
        assert key is not None and key.wrapped is not None
        assert key.wrapped not in json.dumps(done.manifest).encode()
    data = app.extensions["tre.settings"].extracts_path / p.id / "patients" / "data"
    table = pq.read_table(sorted(data.glob("*.parquet")))
    assert set(table.column_names) == {"patient_token", "date_of_birth", "postcode", "sex"}
    tokens = table.column("patient_token").to_pylist()
    assert tokens and not any(nhs_number.is_valid(t) for t in tokens if t)
    assert all(len(pc) <= 4 for pc in table.column("postcode").to_pylist() if pc)  # districts, not full postcodes


def test_extract_is_refused_for_a_project_that_is_not_active(app: Any, demo_data: Path) -> None:
    w, p = _active_project(app, demo_data)
    w.svc.suspend(w.chair, p.id, "Paused by the committee")

    with pytest.raises(ExtractServiceError, match="active project"):
        _service(app).request(w.custodian, p.id)


def test_asking_twice_for_the_same_plan_builds_one_extract(app: Any, demo_data: Path) -> None:
    w, p = _active_project(app, demo_data)
    jobs.set_dispatcher(None)
    first = _service(app).request(w.custodian, p.id)
    second = _service(app).request(w.custodian, p.id)

    assert first.id == second.id
    with app.extensions["tre.db"].session_factory() as s:
        assert len(s.scalars(select(jobs.Job).where(jobs.Job.kind == "extracts.build")).all()) == 1


def test_closure_deletes_the_extract_and_shreds_the_project_key(app: Any, demo_data: Path) -> None:
    w, p = _active_project(app, demo_data)
    with app.app_context():
        _service(app).request(w.custodian, p.id)
        w.svc.close(w.chair, p.id, "Study finished")
        platform = app.extensions["tre.platform"]
        run_destruction(platform.db.session, platform.audit, p.id)

    assert not (app.extensions["tre.settings"].extracts_path / p.id).exists()
    with app.extensions["tre.db"].session_factory() as s:
        key = s.get(WrappedKey, f"project:{p.id}")
        assert key is not None and key.wrapped is None and key.destroyed_at is not None


def test_reidentification_needs_two_approvers_other_than_the_requester(app: Any, demo_data: Path) -> None:
    w, p = _active_project(app, demo_data)
    with app.app_context():
        _service(app).request(w.custodian, p.id)
    data = app.extensions["tre.settings"].extracts_path / p.id / "patients" / "data"
    table = pq.read_table(sorted(data.glob("*.parquet")))
    token = next(t for t in table.column("patient_token").to_pylist() if t and t.startswith("T"))
    svc = _service(app)
    second_custodian = make_user(app, "cal.custodian", ["data_custodian"])

    req = svc.request_reidentification(w.custodian, p.id, [token], "Recall a patient for urgent clinical care.")
    with pytest.raises(ExtractServiceError, match="cannot approve their own"):
        svc.decide_reidentification(w.custodian, req.id, "approve", "I asked for it")
    svc.decide_reidentification(w.chair, req.id, "approve", "Clinical need confirmed")
    with pytest.raises(ExtractServiceError, match="not approved"):
        svc.fulfil_reidentification(w.custodian, req.id)
    svc.decide_reidentification(second_custodian, req.id, "approve", "Agreed")

    found = svc.fulfil_reidentification(w.custodian, req.id)

    source = pq.read_table(_patients_source(app)).column("nhs_number").to_pylist()
    assert found[0]["nhs_number"] in source
    with pytest.raises(ExtractServiceError):
        svc.fulfil_reidentification(w.custodian, req.id)  # once only


def _patients_source(app: Any) -> str:
    from projects.models import Dataset

    return app.extensions["tre.db"].session.scalar(select(Dataset.source_location).where(Dataset.name == "patients"))


# --- raw NHS numbers never reach an extract by a custodian's mistake (ADR 0068) -------------------


def _with_ref_column(demo_data: Path, out: Path) -> tuple[Path, dict[str, Any]]:
    """The demo patients with a copy of the NHS number headed "ref", which the schema keeps."""
    table = pq.read_table(demo_data / "patients.parquet")
    source = out / "patients_with_ref.parquet"
    pq.write_table(table.append_column("ref", table["nhs_number"]), source)
    spec = _patients_schema(demo_data)
    spec = spec | {"columns": [*spec["columns"], {"name": "ref", "role": "attribute"}]}
    return source, spec


def test_an_extract_keeping_nhs_numbers_under_an_innocent_name_fails_at_once_and_writes_nothing(
    app: Any, demo_data: Path, tmp_path: Path
) -> None:
    source, spec = _with_ref_column(demo_data, tmp_path)
    w, p = _active_project(app, demo_data, spec=spec, source=source, approved=["nhs_number", "sex", "ref"])

    with app.app_context():
        extract = _service(app).request(w.custodian, p.id)

    db = app.extensions["tre.db"]
    numbers = [n for n in pq.read_table(source)["nhs_number"].to_pylist() if n]
    with db.session_factory() as s:
        failed = s.get(Extract, extract.id)
        assert failed is not None and failed.state == "failed" and failed.manifest is None
        assert "column 'ref' would put NHS numbers in the extract" in (failed.error or "")
        job = s.get(jobs.Job, failed.job_id)
        assert job is not None and job.state == jobs.FAILED and job.attempts == 1  # refused, not retried
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "extract.build",
                                                    AuditEvent.target_id == extract.id)).all()
        assert [e.outcome for e in events] == [FAILURE]
        assert "'ref'" in events[0].detail["reason"]
        said = json.dumps([failed.error, job.last_error, [e.detail for e in events]])
    assert not any(n in said for n in numbers)
    folder = app.extensions["tre.settings"].extracts_path / p.id
    assert not folder.exists() or not [f for f in folder.rglob("*") if f.is_file()]


def test_an_extract_from_a_stored_schema_keeping_the_nhs_number_raw_is_refused(app: Any, demo_data: Path) -> None:
    # Confirmed before ADR 0068: loading it must not crash, and no extract is built from it.
    spec = _patients_schema(demo_data)
    spec = spec | {"columns": [c | {"role": "attribute", "transform": {"kind": "keep"}} if c["name"] == "nhs_number"
                               else c for c in spec["columns"]]}
    w, p = _active_project(app, demo_data, spec=spec)

    with app.app_context(), pytest.raises(ExtractServiceError, match=(
        "The extract schema of the dataset patients must be corrected by its custodian: column 'nhs_number' "
        "holds the NHS number")):
        _service(app).request(w.custodian, p.id)

    with app.extensions["tre.db"].session_factory() as s:
        assert s.scalars(select(Extract).where(Extract.project_id == p.id)).all() == []
