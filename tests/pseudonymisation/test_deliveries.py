"""Deliveries and versions: a refresh is checked before anything else, quarantined with its reason
or accepted as the next version; extracts record the versions they read and rebuild byte-identical.
Runs on SQLite and PostgreSQL (the ``database_url`` fixture)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from projects.kernel import ProjectError, ProjectPermissionDenied
from projects.models import Dataset
from pseudonymisation import hash_spill, zone
from pseudonymisation.dataset_schemas import DatasetSchemas
from pseudonymisation.deliveries import Deliveries
from pseudonymisation.delivery_tasks import deliveries_service
from pseudonymisation.models import DatasetDelivery, DatasetVersion, Extract
from pseudonymisation.sealed import is_sealed
from pseudonymisation.tasks import extracts_service
from tests.projects.factories import TODAY, build_world, make_user, publish_agreement
from tre.core.audit import AuditEvent

from .conftest import valid_nhs_numbers

HEADER = ["record_id", "nhs_number", "date_of_birth", "postcode", "diagnosis", "score"]


def write_delivery(path: Path, rows: int, *, seed: int = 3, delimiter: str = ",", header: list[str] | None = None,
                   bad_scores: int = 0, repeat_first: bool = False) -> Path:
    numbers = valid_nhs_numbers(rows, seed=seed)
    lines = [delimiter.join(header or HEADER)]
    for i in range(rows):
        score = "n/a-ish" if i < bad_scores else str(i % 17)
        lines.append(delimiter.join([str(i), numbers[i], f"{1950 + i % 50}-0{1 + i % 9}-15",
                                     ["LS1 4AP", "BD7 1DP", "HX1 2RN"][i % 3], ["E11", "I10", "J45"][i % 3], score]))
    if repeat_first:
        lines.append(lines[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def landing(app: Any) -> Path:
    return Path(app.extensions["tre.settings"].landing_dir)


def service(app: Any) -> Deliveries:
    return deliveries_service(app.extensions["tre.platform"])


def register(app: Any, w: Any) -> Dataset:
    """A registered dataset whose first delivery sets version 1, with a confirmed extract schema."""
    ds = register_registry(app, w, write_delivery(landing(app) / "v1" / "registry.csv", 60))
    service(app).set_rules(w.custodian, ds.id, {"key_columns": ["record_id"]})
    return ds


def register_registry(app: Any, w: Any, first: Path) -> Dataset:
    """The clinic registry registered from ``first``, its extract schema proposed and confirmed."""
    ds = w.svc.register_dataset(
        w.custodian, name="clinic_registry", title="Clinic registry", description="", source_kind="csv",
        source_location=str(first), sensitivity="special_category",
        columns=[{"name": c, "role": "attribute", "data_type": t} for c, t in
                 zip(HEADER, ["integer", "string", "date", "string", "string", "integer"], strict=True)],
    )
    p = app.extensions["tre.platform"]
    schemas = DatasetSchemas(p.db.session, p.audit)
    proposal = schemas.propose(w.custodian, ds.id)
    choices = {c.name: {"role": str(c.role), "rule": str(c.rule)} for c in proposal.columns}
    choices["record_id"] = {"role": "attribute", "rule": "keep"}
    choices["score"] = {"role": "attribute", "rule": "keep"}
    schemas.confirm(w.custodian, ds.id, choices, "nhs_number")
    return ds


def deliver(app: Any, w: Any, ds: Dataset, name: str, **kwargs: Any) -> DatasetDelivery:
    delivery = service(app).receive(w.custodian, ds.id, name, **kwargs)
    with app.extensions["tre.db"].session_factory() as s:
        done = s.get(DatasetDelivery, delivery.id)
        s.expunge(done)
        return done


def versions(app: Any, ds: Dataset) -> list[int]:
    with app.extensions["tre.db"].session_factory() as s:
        return list(s.scalars(select(DatasetVersion.version).where(DatasetVersion.dataset_id == ds.id)
                              .order_by(DatasetVersion.version)))


def events(app: Any, action: str) -> list[AuditEvent]:
    with app.extensions["tre.db"].session_factory() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def test_a_good_delivery_becomes_the_next_version(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)

    first = deliver(app, w, ds, "v1/registry.csv")
    second = deliver(app, w, ds, "v2/registry.csv") if write_delivery(
        landing(app) / "v2" / "registry.csv", 62, seed=4) else None

    assert (first.state, first.version, first.rows) == ("accepted", 1, 60)
    assert second is not None and (second.state, second.version, second.rows) == ("accepted", 2, 62)
    assert versions(app, ds) == [1, 2]
    assert second.report["drift"]["previous_rows"] == 60
    stored = Path(second.stored_path)
    assert stored.is_file() and str(app.extensions["tre.settings"].identifiable_path) in str(stored)
    assert oct(stored.stat().st_mode & 0o777) == oct(0o600)
    # Sealed at rest (ADR 0033): none of the delivery's identifiers can be read from the copy.
    assert is_sealed(stored)
    assert b"LS1 4AP" not in stored.read_bytes() and b"nhs_number" not in stored.read_bytes()
    assert [e.outcome for e in events(app, "dataset.delivery_check")] == ["success", "success"]


@pytest.mark.parametrize(
    ("kind", "make", "check"),
    [
        ("missing column", lambda p: write_delivery(p, 60, header=[*HEADER[:-1], "points"]), "missing_columns"),
        ("wrong types", lambda p: write_delivery(p, 60, bad_scores=5), "wrong_type"),
        ("too few rows", lambda p: write_delivery(p, 20), "too_few_rows"),
        ("duplicate key", lambda p: write_delivery(p, 60, repeat_first=True), "duplicate_keys"),
    ],
)
def test_a_bad_delivery_is_quarantined_with_its_reason_and_changes_nothing(
    onboarding_app: Any, kind: str, make: Any, check: str
) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    deliver(app, w, ds, "v1/registry.csv")
    make(landing(app) / "bad" / "registry.csv")

    bad = deliver(app, w, ds, "bad/registry.csv")

    assert bad.state == "quarantined", kind
    assert bad.version is None
    assert check in {p["check"] for p in bad.problems}
    assert bad.reason
    assert versions(app, ds) == [1]
    with app.extensions["tre.db"].session_factory() as s:
        assert s.get(Dataset, ds.id).row_count == 60
    if check == "missing_columns":
        assert "score" in bad.reason and "renamed" in bad.reason
    if check == "wrong_type":
        assert next(p for p in bad.problems if p["check"] == "wrong_type")["count"] == 5
        assert next(p for p in bad.problems if p["check"] == "wrong_type")["column"] == "score"
    assert [e.outcome for e in events(app, "dataset.delivery_check")][-1] == "failure"


def test_a_quarantine_report_holds_counts_never_values(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    deliver(app, w, ds, "v1/registry.csv")
    source = write_delivery(landing(app) / "bad" / "registry.csv", 60, bad_scores=5, repeat_first=True)

    bad = deliver(app, w, ds, "bad/registry.csv")

    shown = repr(bad.report) + repr(bad.problems) + (bad.reason or "")
    for line in source.read_text().splitlines()[1:]:
        nhs = line.split(",")[1]
        assert nhs not in shown
    assert "n/a-ish" not in shown


def test_custodian_thresholds_fail_a_delivery(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    deliver(app, w, ds, "v1/registry.csv")
    write_delivery(landing(app) / "v2" / "registry.csv", 60, bad_scores=1)
    service(app).set_rules(w.custodian, ds.id, {"key_columns": ["record_id"], "max_type_failure_fraction": 0.0,
                                                "max_missing_fraction": {"postcode": 0.0}})

    bad = deliver(app, w, ds, "v2/registry.csv")

    assert bad.state == "quarantined"
    assert [(p["check"], p["column"], p["count"]) for p in bad.problems] == [("wrong_type", "score", 1)]


def test_a_csv_is_checked_as_it_is_sealed_and_keeps_the_hash_of_the_file_that_landed(onboarding_app: Any) -> None:
    # One read of the landing file (ADR 0034): the version's sha256 is the landed bytes', and the
    # sealed copy holds exactly those bytes, the ones the checks counted.
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    landed = (landing(app) / "v1" / "registry.csv").read_bytes()

    first = deliver(app, w, ds, "v1/registry.csv")

    assert (first.state, first.rows) == ("accepted", 60)
    assert first.source_sha256 == hashlib.sha256(landed).hexdigest() and first.size_bytes == len(landed)
    assert first.report["source"]["bytes"] == len(landed)
    copy = zone.source(first.stored_path, service(app).keys)
    assert zone.plaintext_sha256(copy) == (first.source_sha256, len(landed))
    assert sorted(p.name for p in Path(first.stored_path).parent.iterdir()) == ["registry.csv"]


def test_the_key_check_spills_inside_the_zone_and_leaves_nothing_there(onboarding_app: Any) -> None:
    # ADR 0043: the key hashes go, encrypted, to a private directory of the identifiable zone and are
    # gone when the check ends; a spill a killed worker left a day ago is removed, a fresh one kept.
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    scratch = Path(app.extensions["tre.settings"].identifiable_path) / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    scratch.chmod(0o755)  # widened by hand: put back
    old, fresh = scratch / f"{hash_spill.PREFIX}old", scratch / f"{hash_spill.PREFIX}fresh"
    for left in (old, fresh):
        left.mkdir(mode=0o700)
        (left / "00").write_bytes(b"\0" * 16)
    os.utime(old, (time.time() - 2 * 24 * 3600,) * 2)

    first = deliver(app, w, ds, "v1/registry.csv")

    assert first.state == "accepted" and first.report["uniqueness"]["duplicate_rows"] == 0
    assert oct(scratch.stat().st_mode & 0o777) == oct(0o700)
    assert sorted(p.name for p in scratch.iterdir()) == [fresh.name]


def test_a_delivery_cut_short_mid_row_is_quarantined_and_changes_nothing(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    deliver(app, w, ds, "v1/registry.csv")
    cut = write_delivery(landing(app) / "v2" / "registry.csv", 62, seed=4)
    cut.write_bytes(cut.read_bytes()[:-20])

    bad = deliver(app, w, ds, "v2/registry.csv")

    assert bad.state == "quarantined" and bad.version is None
    assert versions(app, ds) == [1]


def test_an_unreadable_delivery_is_quarantined(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    (landing(app) / "broken.parquet").write_bytes(b"not parquet at all")

    bad = deliver(app, w, ds, "broken.parquet")

    assert bad.state == "quarantined"
    assert versions(app, ds) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../outside.csv", "no .."),
        ("/etc/passwd.csv", "no leading /"),
        ("linked.csv", "links are not followed"),
        ("via/registry.csv", "links are not followed"),
        ("v1/missing.csv", "No such file"),
        ("v1/registry.exe", ".csv"),
    ],
)
def test_a_name_outside_the_landing_folder_is_refused(
    onboarding_app: Any, tmp_path: Path, name: str, message: str
) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    secret = write_delivery(tmp_path / "elsewhere" / "registry.csv", 60)
    os.symlink(secret, landing(app) / "linked.csv")
    os.symlink(secret.parent, landing(app) / "via")
    write_delivery(tmp_path / "outside.csv", 60)

    with pytest.raises(ProjectError, match=message):
        service(app).receive(w.custodian, ds.id, name)

    with app.extensions["tre.db"].session_factory() as s:
        assert s.scalars(select(DatasetDelivery)).all() == []
    assert [e.outcome for e in events(app, "dataset.delivery_receive")] == ["denied"]


def test_another_custodian_and_a_researcher_cannot_deliver_read_or_pin(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    first = deliver(app, w, ds, "v1/registry.csv")
    other = make_user(app, "olga.othercustodian", ["data_custodian"])
    p = approved_project(app, w, ds.id, ["diagnosis"])

    for actor in (other, w.pi):
        with pytest.raises(ProjectPermissionDenied):
            service(app).receive(actor, ds.id, "v1/registry.csv")
        with pytest.raises(ProjectPermissionDenied):
            service(app).get_delivery(actor, first.id)
        with pytest.raises(ProjectPermissionDenied):
            service(app).set_rules(actor, ds.id, {"max_type_failure_fraction": 1.0})
        with pytest.raises(ProjectPermissionDenied):
            service(app).pin(actor, p.id, ds.id, 1)

    assert [e.outcome for e in events(app, "dataset.delivery_receive")] == ["success", "denied", "denied"]
    assert [e.outcome for e in events(app, "dataset.version_pin")] == ["denied", "denied"]
    assert service(app).rules(ds.id).to_dict()["max_type_failure_fraction"] == 0.01


def test_bad_rules_are_refused_and_change_nothing(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)

    for rules, message in [({"max_type_failure_fraction": 2}, "between 0 and 1"),
                           ({"key_columns": ["ward"]}, "ward"),
                           ({"colour": "blue"}, "Unknown"),
                           ({"code_patterns": {"diagnosis": "(["}}, "regular expression")]:
        with pytest.raises(ProjectError, match=message):
            service(app).set_rules(w.custodian, ds.id, rules)

    assert service(app).rules(ds.id).key_columns == ("record_id",)


def test_extract_records_its_versions_and_rebuilds_byte_identical_from_them(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    deliver(app, w, ds, "v1/registry.csv")
    p = approved_project(app, w, ds.id, ["nhs_number", "date_of_birth", "diagnosis", "score"])

    first = build(app, w, p.id)
    write_delivery(landing(app) / "v2" / "registry.csv", 70, seed=9)
    assert deliver(app, w, ds, "v2/registry.csv").version == 2
    second = build(app, w, p.id)
    service(app).pin(w.custodian, p.id, ds.id, 1)
    again = build(app, w, p.id)

    assert first["dataset_versions"]["clinic_registry"]["version"] == 1
    assert second["dataset_versions"]["clinic_registry"]["version"] == 2
    assert second["manifests"]["clinic_registry"]["rows"]["in"] == 70
    assert again["dataset_versions"]["clinic_registry"]["version"] == 1
    assert (again["manifests"]["clinic_registry"]["extract_sha256"]
            == first["manifests"]["clinic_registry"]["extract_sha256"])
    assert (second["manifests"]["clinic_registry"]["extract_sha256"]
            != first["manifests"]["clinic_registry"]["extract_sha256"])
    pins = events(app, "dataset.version_pin")
    assert [(e.outcome, e.project_id, e.detail["version"]) for e in pins] == [("success", p.id, 1)]


def test_a_quarantined_delivery_never_reaches_an_extract(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    deliver(app, w, ds, "v1/registry.csv")
    p = approved_project(app, w, ds.id, ["diagnosis", "score"])
    first = build(app, w, p.id)
    write_delivery(landing(app) / "bad" / "registry.csv", 60, repeat_first=True)

    assert deliver(app, w, ds, "bad/registry.csv").state == "quarantined"
    with app.app_context():
        again = extracts_service(app.extensions["tre.platform"]).request(w.custodian, p.id)

    assert again.manifest == first  # the same plan: the same extract, not a new one


def build(app: Any, w: Any, project_id: str) -> dict[str, Any]:
    with app.app_context():
        extract = extracts_service(app.extensions["tre.platform"]).request(w.custodian, project_id)
    with app.extensions["tre.db"].session_factory() as s:
        done = s.get(Extract, extract.id)
        assert done.state == "succeeded", done.error
        return dict(done.manifest)


def approved_project(app: Any, w: Any, dataset_id: str, columns: list[str]) -> Any:
    p = w.svc.create_project(w.pi, "Clinic outcomes")
    w.svc.update_application(
        w.pi, p.id, lay_summary="s", scientific_purpose="s", public_benefit="s", legal_basis="6(1)(e)",
        ethics_reference="IRAS 1", funder="NIHR", start_date=TODAY - dt.timedelta(days=1),
        end_date=TODAY + dt.timedelta(days=30),
    )
    w.svc.set_dataset_request(w.pi, p.id, dataset_id, columns, "analysis")
    w.svc.submit(w.pi, p.id)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "fine")
    w.svc.cast_vote(w.drew, p.id, "approve", "fine")
    w.svc.decide(w.chair, p.id, "approved", approved_columns={"clinic_registry": columns})
    publish_agreement(w)
    w.svc.activate(w.pi, p.id)
    return p


def test_a_semicolon_windows_encoded_delivery_extracts(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    ds = register(app, w)
    deliver(app, w, ds, "v1/registry.csv")
    path = write_delivery(landing(app) / "v2" / "registry.csv", 60, seed=8, delimiter=";")
    path.write_bytes(path.read_text().replace("J45", "Ärztlich").encode("cp1252"))
    p = approved_project(app, w, ds.id, ["nhs_number", "diagnosis", "score"])

    second = deliver(app, w, ds, "v2/registry.csv")
    manifest = build(app, w, p.id)

    assert second.state == "accepted" and second.report["source"]["dialect"]["encoding"] == "cp1252"
    assert manifest["dataset_versions"]["clinic_registry"]["version"] == 2
    assert manifest["manifests"]["clinic_registry"]["rows"]["in"] == 60
    data = app.extensions["tre.settings"].extracts_path / p.id / "clinic_registry" / "data"
    assert "Ärztlich" in pq.read_table(sorted(data.glob("*.parquet"))).column("diagnosis").to_pylist()
