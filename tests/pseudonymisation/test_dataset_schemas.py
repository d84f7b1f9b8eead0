"""The custodian confirms a proposed schema and sets the extract schema; then an extract builds."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from projects.kernel import ProjectError, ProjectPermissionDenied
from projects.models import Dataset
from pseudonymisation import dataset_schemas, nhs_number, profiling
from pseudonymisation.dataset_schemas import DatasetSchemas, SourceUnreadable
from pseudonymisation.models import Extract
from pseudonymisation.proposal_cache import ProposalCache
from pseudonymisation.services import ExtractServiceError
from pseudonymisation.tasks import extracts_service
from tests.projects.factories import TODAY, build_world, make_user, publish_agreement
from tre.core.audit import AuditEvent

from .conftest import valid_nhs_numbers

COLUMNS = ["nhs_number", "forename", "date_of_birth", "postcode", "diagnosis", "notes"]


def _messy_csv(path: Path, rows: int = 60) -> Path:
    numbers = valid_nhs_numbers(rows, seed=11)
    names = ["Amira", "Ben", "Cleo", "Dev", "Ewa", "Finn", "Gita", "Hugo", "Iris", "Jack"]
    lines = [",".join(COLUMNS)]
    for i in range(rows):
        nhs = "" if i % 15 == 0 else (f"{numbers[i][:3]} {numbers[i][3:6]} {numbers[i][6:]}" if i % 4 else numbers[i])
        note = f'"Reviewed, stable.\nFollow up {i} weeks; patient reports improvement overall today"' if i % 3 else ""
        lines.append(",".join([nhs, names[i % 10] + "x" * (i // 10), f"{1950 + i % 50}-0{1 + i % 9}-15",
                               ["LS1 4AP", "bd7 1dp", "HX12RN"][i % 3], ["E11", "I10", "J45"][i % 3], note]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _register(app: Any, w: Any, source: Path, *, custodian: Any = None) -> Dataset:
    # Registered as the new user did: every column called an attribute, no extract schema.
    return w.svc.register_dataset(
        custodian or w.custodian, name="clinic_registry", title="Clinic registry", description="Messy CSV",
        source_kind="csv", source_location=str(source), sensitivity="special_category",
        columns=[{"name": c, "role": "attribute"} for c in COLUMNS],
    )


def _service(app: Any) -> DatasetSchemas:
    p = app.extensions["tre.platform"]
    return DatasetSchemas(p.db.session, p.audit)


def _choices(proposal: Any) -> dict[str, dict[str, str]]:
    return {c.name: {"role": str(c.role), "rule": str(c.rule)} for c in proposal.columns}


def _events(app: Any, action: str) -> list[AuditEvent]:
    with app.extensions["tre.db"].session_factory() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_custodian_confirms_the_proposal_and_an_extract_builds(app: Any, tmp_path: Path) -> None:
    w = build_world(app)
    ds = _register(app, w, _messy_csv(tmp_path / "clinic.csv"))
    svc = _service(app)

    proposal = svc.propose(w.custodian, ds.id)
    svc.confirm(w.custodian, ds.id, _choices(proposal), proposal.nhs_number_column, row_count=proposal.row_count)

    with app.extensions["tre.db"].session_factory() as s:
        stored = s.get(Dataset, ds.id)
        assert stored.row_count == 60
        assert stored.schema_spec["nhs_number_column"] == "nhs_number"
        assert {c.name: c.role for c in stored.columns}["forename"] == "direct_identifier"
    p = _approved_project(app, w, ds.id, ["nhs_number", "date_of_birth", "postcode", "diagnosis", "forename"])
    with app.app_context():
        extract = extracts_service(app.extensions["tre.platform"]).request(w.custodian, p.id)
    with app.extensions["tre.db"].session_factory() as s:
        done = s.get(Extract, extract.id)
        assert done.state == "succeeded", done.error
    data = app.extensions["tre.settings"].extracts_path / p.id / "clinic_registry" / "data"
    table = pq.read_table(sorted(data.glob("*.parquet")))
    assert set(table.column_names) == {"patient_token", "date_of_birth", "postcode", "diagnosis"}
    assert table.num_rows == 56  # four rows without an NHS number are rejected
    assert not any(nhs_number.is_valid(t) for t in table.column("patient_token").to_pylist())
    assert set(table.column("postcode").to_pylist()) == {"LS1", "BD7", "HX1"}
    assert all("-" in band or band == "90+" for band in table.column("date_of_birth").to_pylist())
    assert [e.outcome for e in _events(app, "dataset.schema_confirm")] == ["success"]


def test_build_is_refused_before_the_schema_is_confirmed(app: Any, tmp_path: Path) -> None:
    w = build_world(app)
    ds = _register(app, w, _messy_csv(tmp_path / "clinic.csv"))
    p = _approved_project(app, w, ds.id, ["diagnosis"])

    with pytest.raises(ExtractServiceError, match="no extract schema"):
        extracts_service(app.extensions["tre.platform"]).request(w.custodian, p.id)


def test_confirm_refuses_unknown_columns_and_changes_nothing(app: Any, tmp_path: Path) -> None:
    w = build_world(app)
    ds = _register(app, w, _messy_csv(tmp_path / "clinic.csv"))
    svc = _service(app)
    choices = _choices(svc.propose(w.custodian, ds.id)) | {"ward": {"role": "attribute", "rule": "keep"}}

    with pytest.raises(ProjectError, match="not in the dataset: ward"):
        svc.confirm(w.custodian, ds.id, choices, "nhs_number")

    _assert_unchanged(app, ds.id)
    refusals = _events(app, "dataset.schema_confirm")
    assert [e.outcome for e in refusals] == ["denied"]
    assert "ward" in refusals[0].detail["reason"]


@pytest.mark.parametrize(
    ("column", "choice", "message"),
    [
        ("postcode", {"role": "quasi_identifier", "rule": "scramble"}, "choose a rule"),
        ("postcode", {"role": "secret", "rule": "keep"}, "choose a role"),
        ("forename", {"role": "direct_identifier", "rule": "keep"}, "cannot take the keep"),
        ("postcode", {"role": "quasi_identifier", "rule": "days_from_index"}, "choose a rule"),
    ],
)
def test_confirm_refuses_a_bad_rule_or_role_and_changes_nothing(
    app: Any, tmp_path: Path, column: str, choice: dict[str, str], message: str
) -> None:
    w = build_world(app)
    ds = _register(app, w, _messy_csv(tmp_path / "clinic.csv"))
    svc = _service(app)
    choices = _choices(svc.propose(w.custodian, ds.id)) | {column: choice}

    with pytest.raises(ProjectError, match=message):
        svc.confirm(w.custodian, ds.id, choices, "nhs_number")

    _assert_unchanged(app, ds.id)


def test_confirm_refuses_a_missing_column(app: Any, tmp_path: Path) -> None:
    w = build_world(app)
    ds = _register(app, w, _messy_csv(tmp_path / "clinic.csv"))
    svc = _service(app)
    choices = _choices(svc.propose(w.custodian, ds.id))
    del choices["notes"]

    with pytest.raises(ProjectError, match="missing: notes"):
        svc.confirm(w.custodian, ds.id, choices, "nhs_number")
    _assert_unchanged(app, ds.id)


def test_another_custodian_and_a_researcher_cannot_see_or_set_the_schema(app: Any, tmp_path: Path) -> None:
    w = build_world(app)
    ds = _register(app, w, _messy_csv(tmp_path / "clinic.csv"))
    svc = _service(app)
    choices = _choices(svc.propose(w.custodian, ds.id))
    other = make_user(app, "olga.othercustodian", ["data_custodian"])

    for actor in (other, w.pi):
        with pytest.raises(ProjectPermissionDenied):
            svc.propose(actor, ds.id)
        with pytest.raises(ProjectPermissionDenied):
            svc.confirm(actor, ds.id, choices, "nhs_number")

    _assert_unchanged(app, ds.id)
    assert [e.outcome for e in _events(app, "dataset.schema_confirm")] == ["denied", "denied"]
    assert [e.outcome for e in _events(app, "dataset.profile")] == ["success", "denied", "denied"]


def test_preview_shows_no_identifier_from_the_source(app: Any, tmp_path: Path) -> None:
    w = build_world(app)
    source = _messy_csv(tmp_path / "clinic.csv")
    ds = _register(app, w, source)
    svc = _service(app)
    proposal = svc.propose(w.custodian, ds.id)

    shown = svc.preview(w.custodian, ds.id, _choices(proposal), proposal.nhs_number_column)

    assert shown["columns"] == ["patient_token", "date_of_birth", "postcode", "diagnosis"]
    text = json.dumps(shown)
    for row in list(csv.DictReader(source.read_text().splitlines(keepends=True)))[:5]:
        for value in (row["nhs_number"], row["forename"], row["date_of_birth"], row["postcode"]):
            assert not value or value not in text
    assert [e.outcome for e in _events(app, "dataset.schema_preview")] == ["success"]


def _assert_unchanged(app: Any, dataset_id: str) -> None:
    with app.extensions["tre.db"].session_factory() as s:
        ds = s.get(Dataset, dataset_id)
        assert ds.schema_spec == {}
        assert {c.role for c in ds.columns} == {"attribute"}


def _approved_project(app: Any, w: Any, dataset_id: str, columns: list[str]) -> Any:
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


def test_confirm_refuses_to_extract_a_column_the_source_lacks(app: Any, tmp_path: Path) -> None:
    w = build_world(app)
    source = _messy_csv(tmp_path / "clinic.csv")
    ds = w.svc.register_dataset(
        w.custodian, name="clinic_registry", title="Clinic registry", description="", source_kind="csv",
        source_location=str(source), sensitivity="special_category",
        columns=[{"name": c, "role": "attribute"} for c in [*COLUMNS, "ward"]],
    )
    svc = _service(app)
    choices = _choices(svc.propose(w.custodian, ds.id))

    with pytest.raises(ProjectError, match="Not in the source.*: ward"):
        svc.confirm(w.custodian, ds.id, choices | {"ward": {"role": "attribute", "rule": "keep"}}, "nhs_number")
    svc.confirm(w.custodian, ds.id, choices | {"ward": {"role": "attribute", "rule": "drop"}}, "nhs_number")

    with app.extensions["tre.db"].session_factory() as s:
        assert s.get(Dataset, ds.id).schema_spec["columns"][-1] == {
            "name": "ward", "role": "attribute", "transform": {"kind": "drop", "params": {}}}


# --- the proposal is read once per source file and day (ADR 0069) ---------------------------------


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each read of a source's rows by the profiler (its batch reader, wrapped to count)."""
    seen: list[str] = []
    batches = profiling._batches

    def counted(source: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(source.name)
        return batches(source, *args, **kwargs)

    monkeypatch.setattr(profiling, "_batches", counted)
    return seen


def _cached_service(app: Any) -> DatasetSchemas:
    p = app.extensions["tre.platform"]
    return DatasetSchemas(p.db.session, p.audit, proposals=ProposalCache())


def test_a_second_proposal_does_not_read_the_source_again_and_is_audited(
    app: Any, tmp_path: Path, reads: list[str]
) -> None:
    w = build_world(app)
    ds = _register(app, w, _messy_csv(tmp_path / "clinic.csv"))
    svc = _cached_service(app)

    first = svc.propose(w.custodian, ds.id)
    second = svc.propose(w.custodian, ds.id)

    assert reads == ["clinic.csv"]
    assert second == first
    assert second.to_dict() == first.to_dict()
    events = _events(app, "dataset.profile")
    assert [(e.outcome, e.detail["cached"], e.detail["rows"]) for e in events] == [
        ("success", False, 60), ("success", True, 60)]


def test_a_source_replaced_at_the_same_path_is_proposed_afresh(app: Any, tmp_path: Path, reads: list[str]) -> None:
    w = build_world(app)
    source = _messy_csv(tmp_path / "clinic.csv")
    ds = _register(app, w, source)
    svc = _cached_service(app)
    assert svc.propose(w.custodian, ds.id).row_count == 60

    _messy_csv(tmp_path / "refreshed.csv", rows=40).replace(source)  # a delivery's refresh
    proposal = svc.propose(w.custodian, ds.id)

    assert proposal.row_count == 40
    assert proposal.columns[0].counts["rows"] == 40
    assert len(reads) == 2
    assert [e.detail["cached"] for e in _events(app, "dataset.profile")] == [False, False]


def test_another_day_reads_the_source_again(
    app: Any, tmp_path: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = build_world(app)
    source = _messy_csv(tmp_path / "clinic.csv")
    ds = _register(app, w, source)
    svc = _cached_service(app)
    day = dt.datetime(1975, 6, 1, 12, tzinfo=dt.UTC)
    monkeypatch.setattr(dataset_schemas, "utcnow", lambda: day)
    svc.propose(w.custodian, ds.id)
    svc.propose(w.custodian, ds.id)

    monkeypatch.setattr(dataset_schemas, "utcnow", lambda: day + dt.timedelta(days=1))
    proposal = svc.propose(w.custodian, ds.id)

    assert len(reads) == 2
    assert proposal == profiling.propose(source, today=dt.date(1975, 6, 2))


def test_an_unreadable_source_fails_every_time_and_nothing_is_kept(
    app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = build_world(app)
    source = tmp_path / "clinic.csv"
    source.write_text(",".join(COLUMNS) + "\n" + "1,2,3,4,5,6\n" * 3 + "1,2,3\n")  # a row short
    ds = _register(app, w, source)
    cache = ProposalCache()
    p = app.extensions["tre.platform"]
    svc = DatasetSchemas(p.db.session, p.audit, proposals=cache)
    sniffs: list[str] = []
    sniff = profiling.sniff_csv

    def counted(path: Any) -> Any:
        sniffs.append(path.name)
        return sniff(path)

    monkeypatch.setattr(profiling, "sniff_csv", counted)

    for _ in range(2):
        with pytest.raises(SourceUnreadable):
            svc.propose(w.custodian, ds.id)

    assert sniffs == ["clinic.csv", "clinic.csv"]  # the source opened afresh each time
    assert len(cache) == 0


def test_a_cached_proposal_is_still_refused_and_audited_for_those_not_permitted(
    app: Any, tmp_path: Path, reads: list[str]
) -> None:
    w = build_world(app)
    ds = _register(app, w, _messy_csv(tmp_path / "clinic.csv"))
    svc = _cached_service(app)
    svc.propose(w.custodian, ds.id)  # now kept
    other = make_user(app, "olga.othercustodian", ["data_custodian"])

    for actor in (other, w.pi, other):
        with pytest.raises(ProjectPermissionDenied):
            svc.propose(actor, ds.id)

    assert reads == ["clinic.csv"]
    events = _events(app, "dataset.profile")
    assert [(e.outcome, e.actor_id) for e in events] == [
        ("success", w.custodian.id), ("denied", other.id), ("denied", w.pi.id), ("denied", other.id)]
    assert all("rows" not in e.detail for e in events[1:])
