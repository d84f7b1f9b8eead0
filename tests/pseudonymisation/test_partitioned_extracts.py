"""The extract service fans a long source out into partition jobs and a merge job, carrying the same
opt-out lists and exemptions as the single job, and the result is the single job's result."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from pseudonymisation.models import Extract
from pseudonymisation.services import BUILD_JOB, MERGE_JOB, PARTITION_JOB
from pseudonymisation.tasks import extracts_service
from tests.conftest import make_test_app
from tests.pseudonymisation.test_optout_lists import _active_project, _build, _lists, _patients_in_both
from tre.core import jobs
from tre.core.db import utcnow
from tre.demo import synthetic


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fan-out-demo")
    synthetic.generate(out, patients=400, seed=11)
    return out


@pytest.fixture(scope="module")
def demo_csv(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same demo tables as CSV files."""
    out = tmp_path_factory.mktemp("fan-out-demo-csv")
    shutil.copy(demo_data / "datasets.json", out)
    for table in ("patients", "admissions"):
        pacsv.write_csv(pq.read_table(demo_data / f"{table}.parquet"), out / f"{table}.csv")
    return out


@pytest.fixture
def fan_app(tmp_path: Path, database_url: str) -> Iterator[Any]:
    """Chunks of 40 rows and partitions of 100 (three chunks): both demo tables split into partitions."""
    from tre.models import metadata

    application = make_test_app(tmp_path / "instance", database_url,
                                extract_chunk_rows=40, extract_partition_rows=100)
    db = application.extensions["tre.db"]
    metadata.create_all(db.engine)
    yield application
    db.session.remove()
    db.dispose()


def _jobs(app: Any, kind: str) -> list[jobs.Job]:
    with app.extensions["tre.db"].session_factory() as s:
        found = list(s.scalars(select(jobs.Job).where(jobs.Job.kind == kind)))
        s.expunge_all()
        return found


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _build_again_on_the_single_path(app: Any, w: Any, project_id: str, fanned: Extract) -> Extract:
    """The same request on the single path (partitions off), with the same keys and lists."""
    platform = app.extensions["tre.platform"]
    platform.settings = dataclasses.replace(platform.settings, extract_partition_rows=0)
    with platform.db.session_factory() as s:
        first = s.get(Extract, fanned.id)
        assert first is not None
        first.state, first.finished_at = "failed", utcnow()  # so that asking again builds anew
        s.commit()
    single = _build(app, w, project_id)
    assert single.id != fanned.id
    return single


def test_a_fanned_out_extract_with_opt_outs_equals_the_single_job_extract(fan_app: Any, demo_data: Path) -> None:
    app = fan_app
    w, p = _active_project(app, demo_data)
    opted = _patients_in_both(demo_data, 5)
    _lists(app).load(w.custodian, "national", "\n".join(opted))
    _lists(app).load(w.custodian, "trust-objections", "\n".join(opted[:3]), dataset="spells")
    w.svc.set_optout_exemption(w.chair, p.id, "trust-objections", "Section 251 support, CAG 21/CAG/0001")
    folder = app.extensions["tre.settings"].extracts_path / p.id

    fanned = _build(app, w, p.id)
    fanned_files = _folder_bytes(folder)

    partitions = _jobs(app, PARTITION_JOB)
    assert len(partitions) > 2 and {j.payload["dataset"] for j in partitions} == {"patients", "spells"}
    assert all(j.state == jobs.SUCCEEDED for j in partitions)
    (merge,) = _jobs(app, MERGE_JOB)
    assert merge.state == jobs.SUCCEEDED
    assert _jobs(app, BUILD_JOB)[0].result == {"fanned_out": True}

    single = _build_again_on_the_single_path(app, w, p.id, fanned)
    assert len(_jobs(app, PARTITION_JOB)) == len(partitions)  # no new partitions: one job built it

    assert fanned.manifest == single.manifest
    single_files = _folder_bytes(folder)
    assert fanned_files.pop(".extract-id") != single_files.pop(".extract-id")  # the folder's owner marker
    assert fanned_files == single_files  # every part, manifest.json and linkage.json
    # The lists really applied: national removed rows in both tables, the exempt one removed none.
    for table in ("patients", "spells"):
        (national,) = [e for e in fanned.manifest["optouts"][table] if e["name"] == "national"]
        assert national["status"] == "applied" and national["rows_removed"] > 0
    (trust,) = [e for e in fanned.manifest["optouts"]["spells"] if e["name"] == "trust-objections"]
    assert trust["status"] == "skipped: the project is exempt" and trust["rows_not_removed"] > 0


def test_csv_sources_are_fanned_out_too_and_their_copies_removed(fan_app: Any, demo_csv: Path) -> None:
    app = fan_app
    w, p = _active_project(app, demo_csv, fmt="csv")
    extracts = app.extensions["tre.settings"].extracts_path

    fanned = _build(app, w, p.id)
    fanned_files = _folder_bytes(extracts / p.id)

    partitions = _jobs(app, PARTITION_JOB)
    assert len(partitions) > 2 and {j.payload["dataset"] for j in partitions} == {"patients", "spells"}
    assert {m["source"]["format"] for m in fanned.manifest["manifests"].values()} == {"csv"}
    # The Arrow copies of the CSV sources (raw values) lived beside the project's folder,
    # never in it, and are gone once the extract is merged.
    assert not [f for f in fanned_files if "source." in f]
    assert not [f for f in (extracts / ".staging").rglob("*") if f.is_file()]
    assert (extracts / ".staging").stat().st_mode & 0o777 == 0o700

    single = _build_again_on_the_single_path(app, w, p.id, fanned)
    assert fanned.manifest == single.manifest
    single_files = _folder_bytes(extracts / p.id)
    fanned_files.pop(".extract-id"), single_files.pop(".extract-id")
    assert fanned_files == single_files


def test_a_small_extract_keeps_the_single_job(fan_app: Any, demo_data: Path) -> None:
    app = fan_app
    platform = app.extensions["tre.platform"]
    platform.settings = dataclasses.replace(platform.settings, extract_partition_rows=1_000_000)
    w, p = _active_project(app, demo_data)

    extract = _build(app, w, p.id)

    assert _jobs(app, PARTITION_JOB) == [] and _jobs(app, MERGE_JOB) == []
    assert sorted(extract.manifest["manifests"]) == ["patients", "spells"]


def test_extract_build_wait_runs_the_partitions_and_the_merge_in_the_command(
    sqlite_app: Any, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from tre.cli import main

    w, p = _active_project(sqlite_app, demo_data)
    settings = sqlite_app.extensions["tre.settings"]
    for name, value in {"TRE_INSTANCE_PATH": str(settings.instance_path), "TRE_DATABASE_URL": settings.database_url,
                        "TRE_BROKER_URL": "memory://", "TRE_EXTRACT_CHUNK_ROWS": "40",
                        "TRE_EXTRACT_PARTITION_ROWS": "100"}.items():
        monkeypatch.setenv(name, value)
    # The command builds its own app, which installs its own job dispatcher: the test's comes back after.
    monkeypatch.setattr(jobs, "_dispatcher", jobs._dispatcher)

    built = CliRunner().invoke(main, ["extract", "build", p.id, "--as", w.custodian.email, "--wait"])

    assert built.exit_code == 0, built.output
    assert built.output.count(f"{PARTITION_JOB} job") == len(_jobs(sqlite_app, PARTITION_JOB)) > 2
    assert f"{MERGE_JOB} job" in built.output
    assert built.output.rstrip().endswith("succeeded")
    with sqlite_app.extensions["tre.db"].session_factory() as s:
        (extract,) = s.scalars(select(Extract))
        assert extract.state == "succeeded" and sorted(extract.manifest["manifests"]) == ["patients", "spells"]


def test_a_partition_that_fails_for_good_fails_the_extract_which_may_be_asked_for_again(
    fan_app: Any, demo_data: Path
) -> None:
    import os

    app = fan_app
    w, p = _active_project(app, demo_data)
    db = app.extensions["tre.db"]
    jobs.set_dispatcher(None)  # this test runs each job itself
    with app.app_context():
        first = extracts_service(app.extensions["tre.platform"]).request(w.custodian, p.id)
        assert jobs.run_job(db, first.job_id, lease_seconds=30) == jobs.SUCCEEDED
        partition = _jobs(app, PARTITION_JOB)[0]
        # The source is rewritten after the split: its partitions must not mix two versions.
        source = demo_data / "patients.parquet"
        os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 1_000_000_000))
        outcomes = [jobs.run_job(db, partition.id, lease_seconds=30) for _ in range(partition.max_attempts)]

    assert outcomes == ["retry"] * (partition.max_attempts - 1) + [jobs.FAILED]
    with db.session_factory() as s:
        failed = s.get(Extract, first.id)
        assert failed is not None and failed.state == "failed" and failed.finished_at is not None
        assert "source changed" in (failed.error or "")
    with app.app_context():
        again = extracts_service(app.extensions["tre.platform"]).request(w.custodian, p.id)
    assert again.id != first.id and again.state == "queued"


def test_an_extract_whose_worker_died_in_its_last_attempt_is_marked_failed_by_the_sweeper(
    fan_app: Any, demo_data: Path
) -> None:
    from sqlalchemy import update

    app = fan_app
    w, p = _active_project(app, demo_data)
    db = app.extensions["tre.db"]
    jobs.set_dispatcher(None)  # nothing runs: this test plays the worker that dies
    with app.app_context():
        extract = extracts_service(app.extensions["tre.platform"]).request(w.custodian, p.id)
    with db.session_factory() as s:
        job = s.get(jobs.Job, extract.job_id)
        assert job is not None
        s.execute(update(jobs.Job).where(jobs.Job.id == job.id).values(
            state=jobs.RUNNING, attempts=job.max_attempts, lease_owner="dead-worker",
            lease_expires_at=utcnow() - dt.timedelta(seconds=1)))
        s.execute(update(Extract).where(Extract.id == extract.id).values(state="running"))
        s.commit()

    with app.app_context():
        jobs.sweep(db, requeue_after_seconds=60)

    with db.session_factory() as s:
        failed = s.get(Extract, extract.id)
        assert failed is not None and failed.state == "failed"
        assert "worker lost during attempt" in (failed.error or "")
    with app.app_context():
        again = extracts_service(app.extensions["tre.platform"]).request(w.custodian, p.id)
    assert again.id != extract.id and again.state == "queued"


def test_a_partition_refused_for_nhs_numbers_fails_the_extract_and_leaves_no_part_of_it(
    fan_app: Any, demo_data: Path, tmp_path: Path
) -> None:
    # The first partitions are clean and written; a later one meets NHS numbers kept under "ref" (ADR 0068).
    from tests.pseudonymisation.test_services import _active_project as _patients_project
    from tests.pseudonymisation.test_services import _with_ref_column

    app = fan_app
    source, spec = _with_ref_column(demo_data, tmp_path)
    table = pq.read_table(source)
    numbers = table["ref"].to_pylist()
    ref = [f"R{i:05d}" for i in range(200)] + numbers[200:]
    pq.write_table(table.set_column(table.schema.get_field_index("ref"), "ref", pa.array(ref)), source)
    w, p = _patients_project(app, demo_data, spec=spec, source=source, approved=["nhs_number", "sex", "ref"])

    with app.app_context():
        extract = extracts_service(app.extensions["tre.platform"]).request(w.custodian, p.id)

    with app.extensions["tre.db"].session_factory() as s:
        failed = s.get(Extract, extract.id)
        assert failed is not None and failed.state == "failed"
        assert "column 'ref' would put NHS numbers in the extract" in (failed.error or "")
    partitions = _jobs(app, PARTITION_JOB)
    assert len(partitions) > 2 and partitions[0].state == jobs.SUCCEEDED  # it had written its parts
    assert not _jobs(app, MERGE_JOB)
    folder = app.extensions["tre.settings"].extracts_path / p.id
    assert not folder.exists() or not [f for f in folder.rglob("*") if f.is_file()]
