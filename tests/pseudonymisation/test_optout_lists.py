"""Opt-out lists in the control plane: custodians load them (validated whole, stored encrypted,
versioned, audited), the committee exempts a project's legal basis from a named list, and the
extract service applies the lists in force to each dataset and says so in the manifest."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from projects.models import Dataset, OptOutExemption
from projects.services import ProjectPermissionDenied, RuleViolation
from pseudonymisation import nhs_number, tokens
from pseudonymisation.models import Extract, OptOutListVersion
from pseudonymisation.optout_lists import OptOutError, OptOutLists, UploadRefused
from pseudonymisation.services import LINKAGE, _key
from pseudonymisation.tasks import extracts_service
from tests.projects.factories import TODAY, build_world, make_user, publish_agreement
from tre.core import jobs
from tre.core.audit import AuditEvent
from tre.core.db import Base
from tre.demo import synthetic


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("optout-demo")
    synthetic.generate(out, patients=400, seed=11)
    return out


def _spec(demo_data: Path, name: str) -> dict[str, Any]:
    catalogue = json.loads((demo_data / "datasets.json").read_text())
    return next(t for t in catalogue["tables"] if t["name"] == name)


APPROVED = {
    "patients": ["nhs_number", "date_of_birth", "sex"],
    "spells": ["nhs_number", "admission_date", "primary_diagnosis"],
}
SOURCE = {"patients": "patients", "spells": "admissions"}  # the factories' world already has "admissions"


def _active_project(app: Any, demo_data: Path, fmt: str = "parquet") -> Any:
    """A world with the demo's patients and admissions catalogued and one active project approved for both."""
    w = build_world(app)
    for name in APPROVED:
        spec = dict(_spec(demo_data, SOURCE[name]), name=name)
        w.svc.register_dataset(
            w.custodian, name=name, title=name.title(), description=name, source_kind=fmt,
            source_location=str(demo_data / f"{SOURCE[name]}.{fmt}"), sensitivity="special_category",
            columns=[{"name": c["name"], "role": c["role"], "description": c["description"],
                      "sensitivity": c["sensitivity"]} for c in spec["columns"]],
            schema_spec=spec,
        )
    p = w.svc.create_project(w.pi, "Readmissions and opt-outs")
    w.svc.update_application(
        w.pi, p.id, lay_summary="s", scientific_purpose="s", public_benefit="s",
        legal_basis="Section 251 support (CAG 21/CAG/0001) and UK GDPR 6(1)(e), 9(2)(j)",
        ethics_reference="IRAS 2", funder="NIHR", start_date=TODAY - dt.timedelta(days=1),
        end_date=TODAY + dt.timedelta(days=30),
    )
    for name, cols in APPROVED.items():
        ds_id = app.extensions["tre.db"].session.scalar(select(Dataset.id).where(Dataset.name == name))
        w.svc.set_dataset_request(w.pi, p.id, ds_id, cols, "analysis")
    w.svc.submit(w.pi, p.id)
    w.svc.assign_reviewers(w.chair, p.id, [w.dana.id, w.drew.id])
    w.svc.cast_vote(w.dana, p.id, "approve", "fine")
    w.svc.cast_vote(w.drew, p.id, "approve", "fine")
    w.svc.decide(w.chair, p.id, "approved")
    publish_agreement(w)
    w.svc.activate(w.pi, p.id)
    return w, p


def _lists(app: Any) -> OptOutLists:
    p = app.extensions["tre.platform"]
    return OptOutLists(p.db.session, p.audit, p.files)


def _source_numbers(demo_data: Path, table: str) -> list[str]:
    path = demo_data / f"{SOURCE.get(table, table)}.parquet"
    values = pq.read_table(path, columns=["nhs_number"]).column("nhs_number").to_pylist()
    return [v for v in values if v and nhs_number.is_valid(v)]


def _patients_in_both(demo_data: Path, count: int) -> list[str]:
    """Valid numbers of patients who have admissions, so a list can hit both tables."""
    admitted = set(_source_numbers(demo_data, "spells"))
    return sorted(n for n in set(_source_numbers(demo_data, "patients")) if n in admitted)[:count]


def _rows_of(demo_data: Path, table: str, numbers: list[str]) -> int:
    wanted = set(numbers)
    return sum(1 for n in _source_numbers(demo_data, table) if n in wanted)


def _build(app: Any, w: Any, project_id: str) -> Extract:
    with app.app_context():
        extract = extracts_service(app.extensions["tre.platform"]).request(w.custodian, project_id)
    with app.extensions["tre.db"].session_factory() as s:
        done = s.get(Extract, extract.id)
        assert done is not None
        assert done.state == "succeeded", done.error
        s.expunge(done)
        return done


def _tokens_of(app: Any, project_id: str, numbers: list[str]) -> set[str]:
    """The tokens these patients would carry in this project's extract."""
    p = app.extensions["tre.platform"]
    with p.db.session_factory() as s:
        linkage = _key(s, p.keys, LINKAGE, create=False)
        project_key = _key(s, p.keys, f"project:{project_id}", create=False)
    column, _ = tokens.tokens_and_pseudonyms(tokens.parse_numbers(pa.array(numbers)), linkage, project_key)
    return set(column.to_pylist())


def _extract_tokens(app: Any, project_id: str, table: str) -> set[str]:
    folder = app.extensions["tre.settings"].extracts_path / project_id / table / "data"
    return set(pq.read_table(sorted(folder.glob("*.parquet"))).column("patient_token").to_pylist())


def _audit_actions(app: Any, action: str) -> list[AuditEvent]:
    # The service's own session: on SQLite a read it has begun holds the write lock until it ends.
    s = app.extensions["tre.db"].session
    return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


# --- loading lists ---------------------------------------------------------------------------------


def test_an_upload_with_an_invalid_line_is_refused_whole_and_changes_nothing(app: Any) -> None:
    w = build_world(app)
    upload = "nhs_number\n943 476 5919\n9434765918\n12345\n\n943-476-5870\n"

    with pytest.raises(UploadRefused) as refused:
        _lists(app).load(w.custodian, "national", upload)

    message = str(refused.value)
    assert "line 3: the check digit is wrong" in message and "line 4: not ten digits" in message
    assert "9434765918" not in message and "12345" not in message
    with app.extensions["tre.db"].session_factory() as s:
        assert s.scalars(select(OptOutListVersion)).all() == []
    assert _audit_actions(app, "optout.load") == []


def test_an_upload_of_no_numbers_is_refused(app: Any) -> None:
    w = build_world(app)

    with pytest.raises(OptOutError, match="no NHS numbers"):
        _lists(app).load(w.custodian, "national", "nhs_number\n# nothing yet\n")


def test_someone_without_the_custodian_role_cannot_load_a_list_and_the_refusal_is_audited(app: Any) -> None:
    w = build_world(app)

    for person in (w.pi, w.chair, w.admin):
        with pytest.raises(OptOutError, match="permission"):
            _lists(app).load(person, "national", "9434765919\n")

    with app.extensions["tre.db"].session_factory() as s:
        assert s.scalars(select(OptOutListVersion)).all() == []
    assert [e.outcome for e in _audit_actions(app, "optout.load")] == ["denied"] * 3


def test_a_new_upload_replaces_the_version_in_force_and_keeps_its_counts(app: Any) -> None:
    w = build_world(app)
    lists = _lists(app)

    first = lists.load(w.custodian, "national", "9434765919\n943 476 5919\n")
    second = lists.load(w.custodian, "national", "9434765919\n9434765870\n")

    assert (first.version, first.number_count, first.duplicates) == (1, 1, 1)
    assert (second.version, second.number_count, second.duplicates) == (2, 2, 0)
    assert second.fingerprint != first.fingerprint
    assert [v.version for v in lists.current()] == [2]
    assert [v.version for v in lists.history("national")] == [2, 1]
    events = _audit_actions(app, "optout.load")
    assert [e.detail["version"] for e in events] == [1, 2]
    assert events[1].detail["numbers"] == 2


def test_two_custodians_loading_the_same_version_at_once_keep_one_and_the_other_is_told(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = build_world(app)
    lists = _lists(app)
    lists.load(w.custodian, "national", "9434765919\n")
    # The second upload read "no version yet" just before the first committed: it also makes version 1.
    monkeypatch.setattr(OptOutLists, "current_version", lambda self, name: None)

    with pytest.raises(OptOutError, match="at the same time"):
        lists.load(w.custodian, "national", "9434765870\n")

    assert [(v.version, v.number_count) for v in w.session.scalars(select(OptOutListVersion))] == [(1, 1)]


def test_a_list_keeps_the_scope_it_was_first_loaded_with(app: Any) -> None:
    w = build_world(app)
    lists = _lists(app)
    lists.load(w.custodian, "national", "9434765919\n")

    with pytest.raises(OptOutError, match="scope"):
        lists.load(w.custodian, "national", "9434765919\n", dataset="admissions")
    with pytest.raises(OptOutError, match="No such dataset"):
        lists.load(w.custodian, "local", "9434765919\n", dataset="no_such_dataset")


def test_no_nhs_number_of_a_list_is_kept_or_logged_in_clear(
    app: Any, demo_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w, _ = _active_project(app, demo_data)
    numbers = _source_numbers(demo_data, "patients")[:3]
    caplog.set_level(logging.DEBUG)

    version = _lists(app).load(w.custodian, "local-objections", "\n".join(numbers), dataset="patients")

    spaced = [nhs_number.format_spaced(n) for n in numbers]
    with app.extensions["tre.db"].session_factory() as s:
        everything = "".join(
            repr(row) for table in Base.metadata.sorted_tables for row in s.execute(table.select()).all()
        )
    for n in numbers + spaced:
        assert n not in everything
        assert n not in caplog.text
    files = app.extensions["tre.settings"].instance_path / "files"
    stored = b"".join(f.read_bytes() for f in files.rglob("*") if f.is_file())
    assert not any(n.encode() in stored for n in numbers)
    # The list can be read back only through the key provider, and matches what was loaded.
    assert sorted(_lists(app).read(version).numbers.to_pylist()) == sorted(numbers)


# --- the committee's exemption ---------------------------------------------------------------------


def test_only_the_chair_exempts_a_project_and_the_decision_is_recorded_and_audited(
    app: Any, demo_data: Path
) -> None:
    w, p = _active_project(app, demo_data)

    for person in (w.custodian, w.dana, w.pi):
        with pytest.raises(ProjectPermissionDenied):
            w.svc.set_optout_exemption(person, p.id, "national", "Section 251 support, CAG 21/CAG/0001")
    with pytest.raises(RuleViolation, match="Say which part"):
        w.svc.set_optout_exemption(w.chair, p.id, "national", "s251")

    w.svc.set_optout_exemption(w.chair, p.id, "national", "Section 251 support, CAG 21/CAG/0001")

    (exemption,) = w.svc.optout_exemptions(p)
    assert (exemption.list_name, exemption.decided_by) == ("national", w.chair.id)
    # Three permission refusals and the chair's refused basis (a rule's refusal is audited too).
    assert [e.outcome for e in _audit_actions(app, "project.optout_exempt")] == ["denied"] * 4 + ["success"]
    w.svc.revoke_optout_exemption(w.chair, p.id, "national")
    assert w.svc.optout_exemptions(p) == []
    assert len(_audit_actions(app, "project.optout_revoke")) == 1


def test_a_project_without_a_recorded_legal_basis_cannot_be_exempted(app: Any) -> None:
    w = build_world(app)
    p = w.svc.create_project(w.pi, "No basis yet")

    with pytest.raises(RuleViolation):
        w.svc.set_optout_exemption(w.chair, p.id, "national", "Section 251 support, CAG 21/CAG/0001")
    with app.extensions["tre.db"].session_factory() as s:
        assert s.scalars(select(OptOutExemption)).all() == []


# --- extracts ----------------------------------------------------------------------------------------


def test_an_extract_built_after_a_list_is_loaded_lacks_those_patients_and_counts_them(
    app: Any, demo_data: Path
) -> None:
    w, p = _active_project(app, demo_data)
    opted = _patients_in_both(demo_data, 5)
    version = _lists(app).load(w.custodian, "national", "\n".join(opted))

    extract = _build(app, w, p.id)

    gone = _tokens_of(app, p.id, opted)
    for table in ("patients", "spells"):
        assert not gone & _extract_tokens(app, p.id, table)
        pipeline = extract.manifest["manifests"][table]
        assert pipeline["rows"]["opted_out"] == _rows_of(demo_data, table, opted) > 0
        (entry,) = extract.manifest["optouts"][table]
        assert entry["name"] == "national" and entry["version"] == version.version
        assert entry["fingerprint"] == version.fingerprint
        assert entry["status"] == "applied"
        assert entry["rows_removed"] == pipeline["rows"]["opted_out"]
    # The salted fingerprint is what the pipeline's own manifest (in the workspace) shows.
    assert extract.manifest["manifests"]["patients"]["optouts"]["applied"][0]["list_sha256"] == version.fingerprint


def test_an_exempt_project_keeps_the_patients_and_its_manifest_says_why(app: Any, demo_data: Path) -> None:
    w, p = _active_project(app, demo_data)
    opted = _patients_in_both(demo_data, 5)
    _lists(app).load(w.custodian, "national", "\n".join(opted))
    w.svc.set_optout_exemption(w.chair, p.id, "national", "Section 251 support, CAG 21/CAG/0001")

    extract = _build(app, w, p.id)

    kept = _tokens_of(app, p.id, opted)
    assert kept <= _extract_tokens(app, p.id, "patients")
    (entry,) = extract.manifest["optouts"]["patients"]
    assert entry["status"] == "skipped: the project is exempt"
    assert entry["exempt"]["basis"] == "Section 251 support, CAG 21/CAG/0001"
    assert entry["exempt"]["decided_by"] == w.chair.id
    assert entry["rows_not_removed"] == _rows_of(demo_data, "patients", opted)
    assert extract.manifest["manifests"]["patients"]["rows"]["opted_out"] == 0


def test_a_per_source_restriction_applies_only_to_its_dataset(app: Any, demo_data: Path) -> None:
    w, p = _active_project(app, demo_data)
    opted = _patients_in_both(demo_data, 5)
    _lists(app).load(w.custodian, "trust-objections", "\n".join(opted), dataset="spells")

    extract = _build(app, w, p.id)

    gone = _tokens_of(app, p.id, opted)
    assert not gone & _extract_tokens(app, p.id, "spells")
    assert gone <= _extract_tokens(app, p.id, "patients")
    assert extract.manifest["optouts"]["patients"] == []
    (entry,) = extract.manifest["optouts"]["spells"]
    assert entry["scope"] == "dataset" and entry["rows_removed"] == _rows_of(demo_data, "spells", opted)


def test_a_new_list_version_makes_the_next_request_a_new_extract_that_replaces_the_old(
    app: Any, demo_data: Path
) -> None:
    w, p = _active_project(app, demo_data)
    before = _build(app, w, p.id)
    assert before.manifest["optouts"] == {"patients": [], "spells": []}
    opted = _patients_in_both(demo_data, 3)

    _lists(app).load(w.custodian, "national", "\n".join(opted))
    after = _build(app, w, p.id)

    assert after.id != before.id
    assert not _tokens_of(app, p.id, opted) & _extract_tokens(app, p.id, "patients")
    assert after.manifest["manifests"]["patients"]["rows"]["opted_out"] == _rows_of(demo_data, "patients", opted)


def test_any_custodian_may_load_the_next_version_of_a_list(app: Any) -> None:
    w = build_world(app)
    other = make_user(app, "cal.custodian", ["data_custodian"])
    _lists(app).load(w.custodian, "national", "9434765919\n")

    assert [v.name for v in _lists(app).current()] == ["national"]
    replaced = _lists(app).load(other, "national", "9434765870\n")
    assert replaced.version == 2 and replaced.loaded_by == other.id


# --- the command line and the manifest page -------------------------------------------------------------


def test_the_cli_loads_a_list_and_the_manifest_command_and_page_say_what_it_removed(
    sqlite_app: Any, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from tests.tre.web.test_projects_pages import login
    from tre.cli import main

    w, p = _active_project(sqlite_app, demo_data)
    dispatcher = jobs._dispatcher
    opted = _patients_in_both(demo_data, 4)
    upload = tmp_path / "ndop.csv"
    upload.write_text("nhs_number\n" + "\n".join(opted) + "\n")
    settings = sqlite_app.extensions["tre.settings"]
    monkeypatch.setenv("TRE_INSTANCE_PATH", str(settings.instance_path))
    monkeypatch.setenv("TRE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("TRE_BROKER_URL", "memory://")
    runner = CliRunner()
    # Each command builds its own app, which installs its own job dispatcher: the test's comes back after.
    monkeypatch.setattr(jobs, "_dispatcher", jobs._dispatcher)

    loaded = runner.invoke(main, ["optout", "load", "national", str(upload), "--as", w.custodian.email])
    assert loaded.exit_code == 0, loaded.output
    assert "national version 1: 4 NHS numbers" in loaded.output
    assert not any(n in loaded.output for n in opted)
    bad = tmp_path / "bad.txt"
    bad.write_text(opted[0] + "\n12345\n")
    refused = runner.invoke(main, ["optout", "load", "national", str(bad), "--as", w.custodian.email])
    assert refused.exit_code != 0 and "line 2: not ten digits" in refused.output
    jobs.set_dispatcher(dispatcher)
    _build(sqlite_app, w, p.id)
    page = login(sqlite_app.test_client(), w.custodian).get(f"/extracts/{p.id}/manifest").get_data(as_text=True)
    shown = runner.invoke(main, ["extract", "manifest", p.id, "--optouts"])

    removed = _rows_of(demo_data, "patients", opted)
    assert f"Applied: {removed:,} rows removed" in page
    assert shown.exit_code == 0, shown.output
    assert "patients: national v1" in shown.output and f"applied, {removed:,} rows removed" in shown.output
