"""The person index service: built as a job from the catalogued sources, kept per record with its
method and probability, the same for the same inputs, and feeding the project tokens, so one person's
records in two datasets share a project's token whether or not each carries an NHS number."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from pseudonymisation import linkage
from pseudonymisation.person_index import LinkagePermissionDenied, LinkageServiceError
from pseudonymisation.person_index_models import LinkageRun, PersonIndexEntry
from pseudonymisation.tasks import extracts_service, person_index_service
from tests.projects.factories import TODAY, build_world, publish_agreement
from tre.core.audit import AuditEvent
from tre.demo import linkage_sources

PEOPLE = 400
SOURCES = ("hospital", "social_care")
APPROVED = ["nhs_number", "date_of_birth", "sex", "seen_on"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[linkage_sources.LinkableSources, dict[str, Path]]:
    made = linkage_sources.generate(PEOPLE, seed=5)
    made.tables = {n: t for n, t in made.tables.items() if n in SOURCES}
    made.truth = {k: v for k, v in made.truth.items() if k[0] in SOURCES}
    return made, linkage_sources.write(made, tmp_path_factory.mktemp("linkable"))


def _register(app: Any, w: Any, paths: dict[str, Path]) -> None:
    for name, path in sorted(paths.items()):
        spec = linkage_sources.schema_spec(name)
        w.svc.register_dataset(
            w.custodian, name=name, title=name.title(), description=name, source_kind="parquet",
            source_location=str(path), sensitivity="special_category",
            columns=[{"name": c["name"], "role": c["role"], "description": c["name"],
                      "sensitivity": "special_category"} for c in spec["columns"]],
            schema_spec=spec,
        )


def _active_project(app: Any, w: Any, publish: bool = True) -> Any:
    from projects.models import Dataset

    s = app.extensions["tre.db"].session
    p = w.svc.create_project(w.pi, "Social care and admissions")
    w.svc.update_application(
        w.pi, p.id, lay_summary="s", scientific_purpose="s", public_benefit="s", legal_basis="6(1)(e)",
        ethics_reference="IRAS 1", funder="NIHR", start_date=TODAY - dt.timedelta(days=1),
        end_date=TODAY + dt.timedelta(days=30),
    )
    for name in SOURCES:
        dataset_id = s.scalar(select(Dataset.id).where(Dataset.name == name))
        w.svc.set_dataset_request(w.pi, p.id, dataset_id, APPROVED, "analysis")
    w.svc.submit(w.pi, p.id)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "fine")
    w.svc.cast_vote(w.drew, p.id, "approve", "fine")
    w.svc.decide(w.chair, p.id, "approved")
    if publish:  # a second project of the same world signs the agreement already published
        publish_agreement(w)
    w.svc.activate(w.pi, p.id)
    return p


def _world(app: Any, paths: dict[str, Path]) -> Any:
    w = build_world(app)
    _register(app, w, paths)
    return w


def _entries(app: Any, run_id: str) -> dict[tuple[str, str], tuple[int, bytes, str, float | None]]:
    with app.extensions["tre.db"].session_factory() as s:
        return {
            (e.source, e.record_id): (e.person_id, bytes(e.person_pseudonym), e.method, e.match_probability)
            for e in s.scalars(select(PersonIndexEntry).where(PersonIndexEntry.run_id == run_id))
        }


def test_person_index_links_records_with_and_without_numbers_and_keeps_method_and_probability(
    app: Any, generated: Any
) -> None:
    made, paths = generated
    w = _world(app, paths)
    with app.app_context():
        run = person_index_service(app.extensions["tre.platform"]).request_run(w.custodian)

    with app.extensions["tre.db"].session_factory() as s:
        done = s.get(LinkageRun, run.id)
        assert done is not None and done.state == "succeeded", done.error
        quality = done.quality
    entries = _entries(app, run.id)
    assert set(entries) == set(made.truth)
    methods = Counter(m for _, _, m, _ in entries.values())
    assert methods["deterministic"] > 0 and methods["probabilistic"] > 0
    assert all((p is None) == (m == "singleton") for _, _, m, p in entries.values())
    # Social care records without a number whose person is in hospital data join that person.
    hospital_person = {made.truth[k]: entries[k][0] for k in entries if k[0] == "hospital"}
    unnumbered = [k for k, row in zip(made.tables["social_care"].column("record_id").to_pylist(),
                                      made.tables["social_care"].column("nhs_number").to_pylist(), strict=True)
                  if row is None for k in [("social_care", k)] if made.truth[k] in hospital_person]
    joined = [k for k in unnumbered if entries[k][0] == hospital_person[made.truth[k]]]
    assert unnumbered and len(joined) >= 0.9 * len(unnumbered)
    assert set(quality["sources"]) == set(SOURCES)
    assert 0 < quality["sources"]["social_care"]["match_rate"] <= 1
    # An estimate on few people, where a wrong number counts against the linkage: loose floors.
    assert quality["estimated"]["precision"] >= 0.9 and quality["estimated"]["recall"] >= 0.85
    assert sum(b["pairs"] for b in quality["match_weight_histogram"]) > 0


def test_person_index_changed_linkage_model_makes_a_new_run_for_the_same_sources(
    app: Any, generated: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, paths = generated
    w = _world(app, paths)
    platform = app.extensions["tre.platform"]
    with app.app_context():
        first = person_index_service(platform).request_run(w.custodian)
        monkeypatch.setattr(linkage, "MODEL_VERSION", linkage.MODEL_VERSION + 1)
        newer = person_index_service(platform).request_run(w.custodian)
    assert newer.id != first.id
    assert newer.inputs_sha256 != first.inputs_sha256


def test_person_index_same_inputs_give_one_run_and_a_rebuild_gives_the_same_index(app: Any, generated: Any) -> None:
    _, paths = generated
    w = _world(app, paths)
    platform = app.extensions["tre.platform"]
    with app.app_context():
        first = person_index_service(platform).request_run(w.custodian)
        again = person_index_service(platform).request_run(w.custodian)
    assert again.id == first.id

    db = app.extensions["tre.db"]
    with db.session_factory() as s:
        second = LinkageRun(inputs_sha256="rebuild", settings=s.get(LinkageRun, first.id).settings)
        s.add(second)
        s.commit()
        person_index_service(platform, s).build(second.id)
        s.commit()
    assert _entries(app, second.id) == _entries(app, first.id)


def test_person_index_run_refused_to_a_researcher_and_the_refusal_audited(app: Any, generated: Any) -> None:
    _, paths = generated
    w = _world(app, paths)
    with app.app_context(), pytest.raises(LinkagePermissionDenied):
        person_index_service(app.extensions["tre.platform"]).request_run(w.pi)
    with app.extensions["tre.db"].session_factory() as s:
        assert s.scalar(select(func.count()).select_from(LinkageRun)) == 0
        denied = s.scalars(select(AuditEvent).where(AuditEvent.action == "linkage.request")).all()
        assert [e.outcome for e in denied] == ["denied"]


def test_person_index_with_no_linked_dataset_is_refused_and_changes_nothing(app: Any) -> None:
    w = build_world(app)
    with app.app_context(), pytest.raises(LinkageServiceError, match="linkage columns"):
        person_index_service(app.extensions["tre.platform"]).request_run(w.custodian)
    with app.extensions["tre.db"].session_factory() as s:
        assert s.scalar(select(func.count()).select_from(LinkageRun)) == 0


def test_person_without_number_in_social_care_shares_the_hospital_token_in_a_project_extract(
    app: Any, generated: Any
) -> None:
    made, paths = generated
    w = _world(app, paths)
    p = _active_project(app, w)
    platform = app.extensions["tre.platform"]
    with app.app_context():
        run = person_index_service(platform).request_run(w.custodian)
        extract = extracts_service(platform).request(w.custodian, p.id)

    with app.extensions["tre.db"].session_factory() as s:
        from pseudonymisation.models import Extract

        done = s.get(Extract, extract.id)
        assert done is not None and done.state == "succeeded", done.error
        manifest = done.manifest
    folder = app.extensions["tre.settings"].extracts_path / p.id
    hospital = pq.read_table(sorted((folder / "hospital" / "data").glob("*.parquet")))
    social = pq.read_table(sorted((folder / "social_care" / "data").glob("*.parquet")))
    assert {"patient_token", "link_method", "match_probability"} <= set(social.column_names)
    assert "record_id" not in social.column_names and "nhs_number" not in social.column_names

    # Rows come out in source order (every social care row is kept: the index links even those
    # without a number), so the generator's truth says whose each row is.
    entries = _entries(app, run.id)
    social_ids = made.tables["social_care"].column("record_id").to_pylist()
    social_numbers = made.tables["social_care"].column("nhs_number").to_pylist()
    assert social.num_rows == len(social_ids)
    hospital_ids = made.tables["hospital"].column("record_id").to_pylist()
    hospital_of = {made.truth[("hospital", r)]: r for r in hospital_ids}
    hospital_token = dict(zip(hospital_ids, hospital.column("patient_token").to_pylist(), strict=True))
    checked = 0
    for rid, number, token, method in zip(social_ids, social_numbers, social.column("patient_token").to_pylist(),
                                          social.column("link_method").to_pylist(), strict=True):
        twin = hospital_of.get(made.truth[("social_care", rid)])
        if number is None and twin is not None and entries[("social_care", rid)][0] == entries[("hospital", twin)][0]:
            assert method == "probabilistic"
            assert token == hospital_token[twin]  # one person, one token, with or without a number
            checked += 1
    assert checked >= 10
    assert manifest["linkage"]["run_id"] == run.id
    assert set(manifest["linkage"]["sources"]) == set(SOURCES)
    assert manifest["linkage"]["estimated"]["precision"] is not None
    assert manifest["manifests"]["social_care"]["person_index"]["rows_linked_by_method"]["probabilistic"] > 0


def test_person_index_reads_a_source_sealed_in_the_zone_as_its_plain_copy(
    app: Any, generated: Any, tmp_path: Path
) -> None:
    """A dataset registered from an upload points at its copy in the zone, sealed (ADR 0033): the index
    reads it through its seal and links exactly as from the plain file."""
    import os

    from projects.models import Dataset
    from pseudonymisation import zone

    _, paths = generated
    w = _world(app, paths)
    platform = app.extensions["tre.platform"]
    with app.app_context():
        plain_run = person_index_service(platform).request_run(w.custodian)
    name = sorted(paths)[0]
    sealed_copy = tmp_path / "zone" / f"{name}.parquet"
    zone.seal_into_zone(os.open(paths[name], os.O_RDONLY), sealed_copy, platform.keys, max_bytes=1 << 32)

    db = app.extensions["tre.db"]
    with db.session_factory() as s:
        s.scalar(select(Dataset).where(Dataset.name == name)).source_location = str(sealed_copy)
        run = LinkageRun(inputs_sha256="sealed", settings=s.get(LinkageRun, plain_run.id).settings)
        s.add(run)
        s.commit()
        person_index_service(platform, s).build(run.id)
        s.commit()
    assert _entries(app, run.id) == _entries(app, plain_run.id)
