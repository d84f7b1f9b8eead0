"""An OMOP CDM v5.4 folder made by the demo generator registers (a dataset per table, roles, rules,
keys and links preset), each table becomes version 1, and a project's extract links its tables."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from projects.kernel import ProjectError, ProjectPermissionDenied
from projects.models import Dataset
from pseudonymisation import omop
from pseudonymisation.models import DatasetDelivery
from pseudonymisation.omop_folders import OmopFolders
from tests.projects.factories import TODAY, build_world, publish_agreement
from tre.demo.omop import write_omop_folder

from .test_deliveries import build, landing


def folders(app: Any) -> OmopFolders:
    p = app.extensions["tre.platform"]
    return OmopFolders(p.db.session, p.audit, landing_dir=p.settings.landing_dir,
                       identifiable_path=p.settings.identifiable_path)


def test_recognise_needs_person_and_ignores_other_files() -> None:
    assert list(omop.recognise(["PERSON.csv", "measurement.parquet", "notes.txt", "concept.csv"])) == [
        "person", "measurement"]
    with pytest.raises(omop.OmopError, match="person"):
        omop.recognise(["measurement.csv"])
    with pytest.raises(omop.OmopError, match="twice"):
        omop.recognise(["person.csv", "person.parquet"])


def test_an_omop_folder_registers_with_presets_and_extracts_linked(onboarding_app: Any) -> None:
    app = onboarding_app
    w = build_world(app)
    write_omop_folder(landing(app) / "cdm", persons=60)

    made = folders(app).register_folder(w.custodian, "cdm", "demo")

    assert [d.name for d in made] == [f"demo_{t}" for t in omop.TABLES]
    with app.extensions["tre.db"].session_factory() as s:
        states = {s.get(Dataset, d.dataset_id).name: (d.state, d.version) for d in s.query(DatasetDelivery)}
        person = s.get(Dataset, made[0].id)
        roles = {c.name: c.role for c in person.columns}
    assert set(states.values()) == {("accepted", 1)}, states
    assert roles["person_id"] == "direct_identifier" and roles["person_source_value"] == "direct_identifier"

    p = w.svc.create_project(w.pi, "Diabetes care")
    w.svc.update_application(
        w.pi, p.id, lay_summary="s", scientific_purpose="s", public_benefit="s", legal_basis="6(1)(e)",
        ethics_reference="IRAS 1", funder="NIHR", start_date=TODAY - dt.timedelta(days=1),
        end_date=TODAY + dt.timedelta(days=30),
    )
    wanted = {"demo_person": ["person_id", "year_of_birth", "person_source_value"],
              "demo_condition_occurrence": ["person_id", "condition_concept_id", "condition_start_date"]}
    for name, cols in wanted.items():
        w.svc.set_dataset_request(w.pi, p.id, next(d.id for d in made if d.name == name), cols, "analysis")
    w.svc.submit(w.pi, p.id)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "fine")
    w.svc.cast_vote(w.drew, p.id, "approve", "fine")
    w.svc.decide(w.chair, p.id, "approved", approved_columns=wanted)
    publish_agreement(w)
    w.svc.activate(w.pi, p.id)

    manifest = build(app, w, p.id)

    assert {n: v["version"] for n, v in manifest["dataset_versions"].items()} == {
        "demo_person": 1, "demo_condition_occurrence": 1}
    root = app.extensions["tre.settings"].extracts_path / p.id
    people = pq.read_table(sorted((root / "demo_person" / "data").glob("*.parquet")))
    conditions = pq.read_table(sorted((root / "demo_condition_occurrence" / "data").glob("*.parquet")))
    assert people.column_names == ["person_id", "year_of_birth"]  # the source value is dropped
    tokens = set(people.column("person_id").to_pylist())
    assert all(t.startswith("L") and not t[1:].isdigit() for t in tokens)
    assert set(conditions.column("person_id").to_pylist()) <= tokens  # linked within the project


def test_the_folders_offered_hold_a_person_table_and_are_not_links(onboarding_app: Any, tmp_path: Path) -> None:
    app = onboarding_app
    w = build_world(app)
    write_omop_folder(landing(app) / "cdm", persons=5)
    (landing(app) / "notes").mkdir()
    (landing(app) / "notes" / "measurement.csv").write_text("measurement_id\n1\n")
    write_omop_folder(tmp_path / "elsewhere", persons=5)
    os.symlink(tmp_path / "elsewhere", landing(app) / "linked")

    found = folders(app).folders_found(w.custodian)

    assert found == ["cdm"]
    with pytest.raises(ProjectPermissionDenied):
        folders(app).folders_found(w.pi)


def test_registration_is_refused_for_a_clash_a_link_and_a_researcher(onboarding_app: Any, tmp_path: Path) -> None:
    app = onboarding_app
    w = build_world(app)
    write_omop_folder(landing(app) / "cdm", persons=20)
    write_omop_folder(tmp_path / "elsewhere", persons=20)
    os.symlink(tmp_path / "elsewhere", landing(app) / "linked")
    folders(app).register_folder(w.custodian, "cdm", "demo")

    with pytest.raises(ProjectError, match="already registered"):
        folders(app).register_folder(w.custodian, "cdm", "demo")
    with pytest.raises(ProjectError, match="links are not followed"):
        folders(app).register_folder(w.custodian, "linked", "other")
    with pytest.raises(ProjectError, match="no .."):
        folders(app).register_folder(w.custodian, "../elsewhere", "other")
    with pytest.raises(ProjectPermissionDenied):
        folders(app).register_folder(w.pi, "cdm", "mine")
    with app.extensions["tre.db"].session_factory() as s:
        assert s.query(Dataset).filter(Dataset.name.like("other_%")).count() == 0
