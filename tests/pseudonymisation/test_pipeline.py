import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pseudonymisation import tokens
from pseudonymisation.optouts import OptOutList
from pseudonymisation.pipeline import (
    ExtractError,
    ExtractOptions,
    IdentifierInOutput,
    run_extract,
    run_linked_extract,
)
from pseudonymisation.schema import (
    ColumnSpec,
    DatasetSchema,
    InvalidNhsPolicy,
    Role,
    Transform,
    TransformKind,
)

from .conftest import ALL_COLUMNS, event_schema, make_table, write_parquet

REPO = Path(__file__).resolve().parents[2]
APPROVED = ["nhs_number", "date_of_birth", "postcode", "sex", "code", "value"]


def extract_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


def with_bad_numbers(table: pa.Table) -> pa.Table:
    numbers = table["nhs_number"].to_pylist()
    numbers[3], numbers[7], numbers[11] = "9434765918", None, "not-a-number"
    return table.set_column(0, "nhs_number", pa.array(numbers))


@pytest.fixture
def source(tmp_path) -> Path:
    return write_parquet(make_table(5000), tmp_path / "events.parquet")


def test_extract_writes_only_approved_columns_with_tokens(source, tmp_path, keys):
    options = ExtractOptions(source, event_schema(), ["nhs_number", "postcode", "value"], tmp_path / "out", keys)
    manifest = run_extract(options)

    table = pq.read_table(tmp_path / "out" / "data")
    assert table.column_names == ["patient_token", "postcode", "value"]
    assert all(t.startswith("T") for t in table["patient_token"].to_pylist())
    assert set(table["postcode"].to_pylist()) <= {"LS1", "M1", "SW1A", "B33", "CR2"}
    assert manifest["rows"]["in"] == manifest["rows"]["out"] == 5000


def test_extract_and_manifest_hold_no_nhs_number_and_no_key_material(source, tmp_path, keys):
    run_extract(ExtractOptions(source, event_schema(), ALL_COLUMNS, tmp_path / "out", keys, chunk_rows=1000))

    numbers = set(pq.read_table(source)["nhs_number"].to_pylist())
    written = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert not any(n.encode() in written for n in numbers)
    for secret in (keys.linkage_key, keys.project_key):
        assert secret not in written and secret.hex().encode() not in written
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["key_id"] == "project-42/v1"


def test_manifest_lists_rejected_rows_by_reason(tmp_path, keys):
    source = write_parquet(with_bad_numbers(make_table(100)), tmp_path / "s.parquet")

    manifest = run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", keys))

    assert manifest["rows"]["rejected_by_reason"] == {
        "nhs_number_bad_check_digit": 1,
        "nhs_number_invalid_format": 1,
        "nhs_number_missing": 1,
    }
    assert manifest["rows"]["out"] == 97
    assert manifest["quality"]["invalid_nhs_numbers"]["nhs_number_missing"] == 1


def test_separate_namespace_policy_keeps_invalid_rows_under_marked_tokens(tmp_path, keys):
    source = write_parquet(with_bad_numbers(make_table(100)), tmp_path / "s.parquet")
    schema = event_schema(InvalidNhsPolicy.SEPARATE_NAMESPACE)

    manifest = run_extract(ExtractOptions(source, schema, APPROVED, tmp_path / "out", keys))

    result = pq.read_table(tmp_path / "out" / "data")["patient_token"].to_pylist()
    assert manifest["rows"]["out"] == 100 and manifest["rows"]["rejected"] == 0
    assert manifest["rows"]["kept_in_invalid_namespace_by_reason"]["nhs_number_bad_check_digit"] == 1
    assert result[3].startswith(tokens.INVALID_TOKEN_PREFIX) and result[11].startswith("INVALID-")
    assert result[7] is None
    assert sum(t.startswith("T") for t in result if t) == 97


def test_opted_out_patients_are_removed_and_counted(source, tmp_path, keys):
    numbers = pq.read_table(source)["nhs_number"].to_pylist()
    national = OptOutList.from_numbers("national", numbers[:1])
    local = OptOutList.from_numbers("gp-restriction", numbers[1:2])
    expected_gone = sum(n in {numbers[0]} for n in numbers)

    options = ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", keys,
                             optout_lists=[national, local], exempt_optout_lists={"gp-restriction"})
    manifest = run_extract(options)

    assert manifest["rows"]["opted_out"] == expected_gone
    assert manifest["optouts"]["applied"] == [
        {"name": "national", "list_sha256": national.fingerprint(), "rows_removed": expected_gone}
    ]
    assert manifest["optouts"]["exempt"][0]["name"] == "gp-restriction"
    assert manifest["optouts"]["exempt"][0]["rows_not_removed"] > 0
    gone = tokens.tokenise(pa.array(numbers[:1]), keys.linkage_key, keys.project_key)[0].as_py()
    assert gone not in pq.read_table(tmp_path / "out" / "data")["patient_token"].to_pylist()


def test_a_crashed_extract_resumes_and_is_identical(source, tmp_path, keys):
    run_extract(ExtractOptions(source, event_schema(), ALL_COLUMNS, tmp_path / "clean", keys, chunk_rows=700))

    def crash_after_third_chunk(progress):
        if progress.chunks_done == 3:
            raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        run_extract(ExtractOptions(source, event_schema(), ALL_COLUMNS, tmp_path / "out", keys, chunk_rows=700),
                    progress=crash_after_third_chunk)
    seen = []
    manifest = run_extract(ExtractOptions(source, event_schema(), ALL_COLUMNS, tmp_path / "out", keys, chunk_rows=700),
                           progress=seen.append)

    assert seen[-1].resumed_chunks == 3
    assert extract_bytes(tmp_path / "out") == extract_bytes(tmp_path / "clean")
    assert manifest == json.loads((tmp_path / "clean" / "manifest.json").read_text())
    assert not (tmp_path / "out" / ".work").exists()


def test_a_half_written_part_is_redone(source, tmp_path, keys):
    def crash(progress):
        if progress.chunks_done == 2:
            raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", keys, chunk_rows=1000),
                    progress=crash)
    (tmp_path / "out" / "data" / "part-000001.parquet").write_bytes(b"torn")
    run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "clean", keys, chunk_rows=1000))

    run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", keys, chunk_rows=1000))

    assert extract_bytes(tmp_path / "out") == extract_bytes(tmp_path / "clean")


KILLABLE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from conftest import event_schema, ALL_COLUMNS
    from pseudonymisation.pipeline import ExtractKeys, ExtractOptions, run_extract
    def hold(progress):
        if progress.chunks_done == 3:
            print("chunk 3 done", flush=True)  # tell the test, then hold here until it kills us
            sys.stdin.read()
    keys = ExtractKeys(bytes(range(32)), bytes(range(100, 132)), "project-42/v1")
    options = ExtractOptions(Path(sys.argv[1]), event_schema(), ALL_COLUMNS, Path(sys.argv[2]), keys, chunk_rows=700)
    run_extract(options, progress=hold)
    """
)


def test_an_extract_killed_with_sigkill_resumes_and_is_identical(source, tmp_path, keys):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, str(source), str(out), str(Path(__file__).parent)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        # The child holds after chunk 3 while its stdin stays open: killed there, not after a guess.
        assert proc.stdout.readline() == "chunk 3 done\n", "the extract process never reached chunk 3"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.stdin.close()  # a child not killed (the test failed) goes on and ends
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()

    run_extract(ExtractOptions(source, event_schema(), ALL_COLUMNS, out, keys, chunk_rows=700))
    run_extract(ExtractOptions(source, event_schema(), ALL_COLUMNS, tmp_path / "clean", keys, chunk_rows=700))

    assert extract_bytes(out) == extract_bytes(tmp_path / "clean")
    assert (out / "manifest.json").read_bytes() == (tmp_path / "clean" / "manifest.json").read_bytes()


def test_running_a_finished_extract_again_changes_nothing(source, tmp_path, keys):
    first = run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", keys))
    before = extract_bytes(tmp_path / "out")

    second = run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", keys))

    assert first == second and extract_bytes(tmp_path / "out") == before


def test_a_different_plan_on_the_same_directory_is_refused(source, tmp_path, keys, other_project_keys):
    run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", keys))

    with pytest.raises(ExtractError, match="different extract"):
        run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", other_project_keys))


def test_a_half_built_directory_of_another_plan_is_refused(source, tmp_path, keys):
    def crash(progress):
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", keys, chunk_rows=1000),
                    progress=crash)

    with pytest.raises(ExtractError, match="half-built"):
        run_extract(ExtractOptions(source, event_schema(), ["sex"], tmp_path / "out", keys, chunk_rows=1000))


def test_a_source_changed_since_the_interrupted_run_is_refused(tmp_path, keys):
    source = write_parquet(make_table(3000), tmp_path / "s.parquet")

    def crash(progress):
        if progress.chunks_done == 2:
            raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", keys, chunk_rows=1000),
                    progress=crash)
    write_parquet(make_table(3000, seed=5), source)

    with pytest.raises(ExtractError, match="source changed"):
        run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", keys, chunk_rows=1000))


def test_free_text_approved_for_scrubbing_loses_the_patients_identifiers(tmp_path, keys):
    table = pa.table(
        {
            "nhs_number": ["9434765919", "9434765870"],
            "surname": ["Okonkwo", "Llewellyn"],
            "note": ["Mr Okonkwo rang from 07700 900123", "Seen; Llewellyn well, NHS 943 476 5870"],
        }
    )
    source = write_parquet(table, tmp_path / "notes.parquet")
    schema = DatasetSchema(
        "notes",
        nhs_number_column="nhs_number",
        columns=(
            ColumnSpec("nhs_number", Role.DIRECT_IDENTIFIER, Transform(TransformKind.NHS_TOKEN)),
            ColumnSpec("surname", Role.DIRECT_IDENTIFIER),
            ColumnSpec(
                "note",
                Role.FREE_TEXT,
                Transform(TransformKind.SCRUB_TEXT, {"identifier_columns": ["surname", "nhs_number"]}),
            ),
        ),
    )

    run_extract(ExtractOptions(source, schema, ["nhs_number", "surname", "note"], tmp_path / "out", keys))

    out = pq.read_table(tmp_path / "out" / "data")
    assert out.column_names == ["patient_token", "note"]
    notes = " ".join(out["note"].to_pylist())
    for leaked in ["Okonkwo", "Llewellyn", "07700", "943 476 5870"]:
        assert leaked not in notes


def test_two_projects_extracts_share_no_token(source, tmp_path, keys, other_project_keys):
    run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "a", keys))
    run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "b", other_project_keys))

    a = set(pq.read_table(tmp_path / "a" / "data")["patient_token"].to_pylist())
    b = set(pq.read_table(tmp_path / "b" / "data")["patient_token"].to_pylist())
    assert a and b and a.isdisjoint(b)


def test_linked_datasets_give_a_patient_the_same_token_in_every_table(tmp_path, keys):
    events = make_table(2000, patients=50, seed=1)
    # A second table holding 30 of the same 50 patients and 20 others.
    others = make_table(600, patients=20, seed=9)
    shared = events.filter(
        pa.compute.is_in(events["nhs_number"], value_set=pa.array(sorted(set(events["nhs_number"].to_pylist()))[:30]))
    )
    labs = pa.concat_tables([shared, others])
    a = write_parquet(events, tmp_path / "events.parquet")
    b = write_parquet(labs, tmp_path / "labs.parquet")

    result = run_linked_extract(
        [
            ExtractOptions(a, event_schema(name="events"), ALL_COLUMNS, tmp_path / "out" / "events", keys),
            ExtractOptions(b, event_schema(name="labs"), ALL_COLUMNS, tmp_path / "out" / "labs", keys),
        ],
        tmp_path / "out",
    )

    [link] = result["summary"]["linkage"]
    assert link["left_patients"] == 50 and link["right_patients"] == 50
    assert link["matched_patients"] == 30
    events_out = pq.read_table(tmp_path / "out" / "events" / "data")
    labs_out = pq.read_table(tmp_path / "out" / "labs" / "data")
    # The same patient has the same token and the same date shift in both tables.
    first = events_out.slice(0, 1)
    token = first["patient_token"][0].as_py()
    source_row = events.slice(0, 1)
    lab_rows = labs_out.filter(pa.compute.equal(labs_out["patient_token"], token))
    if lab_rows.num_rows:
        src_labs = labs.filter(pa.compute.equal(labs["nhs_number"], source_row["nhs_number"][0]))
        shift = first["event_date"][0].as_py() - source_row["event_date"][0].as_py()
        assert lab_rows["event_date"][0].as_py() - src_labs["event_date"][0].as_py() == shift
    assert (tmp_path / "out" / "linkage.json").exists()


def test_a_csv_source_gives_the_same_tokens_as_parquet(tmp_path, keys):
    table = make_table(500)
    pq_source = write_parquet(table, tmp_path / "s.parquet")
    csv_source = tmp_path / "s.csv"
    pacsv.write_csv(table, csv_source)

    run_extract(ExtractOptions(pq_source, event_schema(), ["nhs_number", "postcode"], tmp_path / "p", keys))
    run_extract(ExtractOptions(csv_source, event_schema(), ["nhs_number", "postcode"], tmp_path / "c", keys))

    assert pq.read_table(tmp_path / "p" / "data").equals(pq.read_table(tmp_path / "c" / "data"))


def test_a_csv_with_day_first_dates_gives_the_bands_and_shifts_of_its_dates(tmp_path, keys):
    # NHS exports write dd/mm/yyyy: the extract reads them day first, as it reads ISO dates (ADR 0062).
    table = make_table(500)
    pq_source = write_parquet(table, tmp_path / "s.parquet")
    written = table
    for name, spelling in (("date_of_birth", "%d/%m/%Y"), ("event_date", "%d.%m.%Y")):
        text = pc.strftime(table.column(name), format=spelling)
        written = written.set_column(written.schema.get_field_index(name), name, text)
    csv_source = tmp_path / "s.csv"
    pacsv.write_csv(written, csv_source)
    approved = ["nhs_number", "date_of_birth", "event_date"]

    run_extract(ExtractOptions(pq_source, event_schema(), approved, tmp_path / "p", keys))
    run_extract(ExtractOptions(csv_source, event_schema(), approved, tmp_path / "c", keys))

    from_csv = pq.read_table(tmp_path / "c" / "data")
    assert from_csv.column("age_band").null_count == from_csv.column("event_date").null_count == 0
    assert from_csv.equals(pq.read_table(tmp_path / "p" / "data"))


def test_a_csv_whose_dates_turn_day_first_after_the_first_block_is_read_whole(tmp_path, keys):
    # Typed from its first 16 MiB block (ISO dates alone) a date column refused the first day-first
    # or "unknown" value of a later block, and the extract failed.
    table = make_table(40)
    dates = [d.isoformat() if i < 20 else (d.strftime("%d/%m/%Y") if i % 2 else "unknown")
             for i, d in enumerate(table.column("date_of_birth").to_pylist())]
    table = table.set_column(table.schema.get_field_index("date_of_birth"), "date_of_birth", pa.array(dates))
    table = table.set_column(table.schema.get_field_index("note"), "note", pa.array(["x" * (1 << 20)] * 40))
    csv_source = tmp_path / "s.csv"
    pacsv.write_csv(table, csv_source)
    assert csv_source.stat().st_size > 2 * (1 << 24)

    manifest = run_extract(ExtractOptions(csv_source, event_schema(), ["nhs_number", "date_of_birth"],
                                          tmp_path / "c", keys))

    bands = pq.read_table(tmp_path / "c" / "data").column("age_band")
    assert manifest["rows"]["in"] == 40
    assert bands.null_count == 10  # the ten "unknown"; every day-first date has its band


def _measurement_schema() -> DatasetSchema:
    base = event_schema()
    value = ColumnSpec("value", Role.ATTRIBUTE, Transform(TransformKind.MEASUREMENT))
    return DatasetSchema(base.name, tuple(value if c.name == "value" else c for c in base.columns),
                         nhs_number_column=base.nhs_number_column)


def test_a_measurement_keeps_censored_values_with_their_marker_and_empties_missing_words(tmp_path, keys):
    # A lab export (ADR 0066): numbers, "<5", "> 120", "NR", "not recorded", a blood pressure, a typo.
    table = make_table(8)
    written = ["48", "< 5", "> 120", "NR", "not recorded", "120 / 80", "5.0", "see notes"]
    table = table.set_column(table.schema.get_field_index("value"), "value", pa.array(written))
    csv_source = tmp_path / "labs.csv"
    pacsv.write_csv(table, csv_source)

    run_extract(ExtractOptions(csv_source, _measurement_schema(), ["nhs_number", "value"], tmp_path / "c", keys))

    assert pq.read_table(tmp_path / "c" / "data").column("value").to_pylist() == [
        "48", "<5", ">120", None, None, "120/80", "5.0", None]


def test_a_csv_whose_measurements_gain_markers_after_the_first_block_is_read_whole(tmp_path, keys):
    # Typed from its first 16 MiB block (numbers alone) the column would refuse a later block's "<5".
    table = make_table(40)
    values = [str(i) if i < 20 else ("<5" if i % 2 else "NR") for i in range(40)]
    table = table.set_column(table.schema.get_field_index("value"), "value", pa.array(values))
    table = table.set_column(table.schema.get_field_index("note"), "note", pa.array(["x" * (1 << 20)] * 40))
    csv_source = tmp_path / "s.csv"
    pacsv.write_csv(table, csv_source)
    assert csv_source.stat().st_size > 2 * (1 << 24)

    manifest = run_extract(ExtractOptions(csv_source, _measurement_schema(), ["nhs_number", "value"],
                                          tmp_path / "c", keys))

    kept = pq.read_table(tmp_path / "c" / "data").column("value").to_pylist()
    assert manifest["rows"]["in"] == 40
    assert kept[:20] == [str(i) for i in range(20)] and kept[20:] == [None, "<5"] * 10  # "NR" is missing


def test_a_csv_whose_quoted_newlines_straddle_the_readers_blocks_is_read_whole(tmp_path, keys):
    # About 21 MB: more than one of the reader's 16 MiB blocks, every note forty lines long, so the
    # block's last newline is inside a note (a reader not told of such newlines fails here).
    table = make_table(40_000, patients=500)
    table = table.set_column(table.schema.get_field_index("note"), "note",
                             pa.array([f"note {i}" + "\nline of it" * 40 for i in range(table.num_rows)]))
    pq_source = write_parquet(table, tmp_path / "s.parquet", row_group_rows=20_000)
    csv_source = tmp_path / "s.csv"
    pacsv.write_csv(table, csv_source)
    assert csv_source.stat().st_size > 1 << 24

    from_csv = run_extract(ExtractOptions(csv_source, event_schema(), ["nhs_number", "code"], tmp_path / "c", keys))
    run_extract(ExtractOptions(pq_source, event_schema(), ["nhs_number", "code"], tmp_path / "p", keys))

    assert from_csv["rows"]["in"] == 40_000
    assert pq.read_table(tmp_path / "c" / "data").equals(pq.read_table(tmp_path / "p" / "data"))


def test_suppression_brings_the_extract_to_k(source, tmp_path, keys):
    approved = ["nhs_number", "date_of_birth", "postcode", "sex"]

    options = ExtractOptions(source, event_schema(), approved, tmp_path / "out", keys, chunk_rows=900, k=150,
                             suppress_below_k=True)
    manifest = run_extract(options)

    report = manifest["k_anonymity"]
    assert report["before"]["smallest_group"] < 150
    assert report["after"]["smallest_group"] >= 150
    assert manifest["rows"]["suppressed_for_k"] == report["before"]["rows_in_groups_below_k"] > 0
    assert manifest["rows"]["out"] == 5000 - manifest["rows"]["suppressed_for_k"]
    assert pq.read_table(tmp_path / "out" / "data").num_rows == manifest["rows"]["out"]


def test_progress_reports_every_chunk_with_the_total(source, tmp_path, keys):
    seen = []

    run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", keys, chunk_rows=2000),
                progress=seen.append)

    assert [(p.chunks_done, p.rows_read, p.total_rows) for p in seen] == [
        (1, 2000, 5000),
        (2, 4000, 5000),
        (3, 5000, 5000),
    ]


def test_a_source_missing_a_schema_column_is_refused_by_name(tmp_path, keys):
    source = write_parquet(make_table(10).drop_columns(["postcode"]), tmp_path / "s.parquet")

    with pytest.raises(ExtractError, match="postcode"):
        run_extract(ExtractOptions(source, event_schema(), APPROVED, tmp_path / "out", keys))


MEASURE = textwrap.dedent(
    """
    import sys, tracemalloc
    from pathlib import Path
    import pyarrow as pa
    sys.path.insert(0, sys.argv[3])
    from conftest import event_schema
    from pseudonymisation.pipeline import ExtractKeys, ExtractOptions, run_extract
    keys = ExtractKeys(bytes(range(32)), bytes(range(100, 132)), "k")
    tracemalloc.start()
    approved = ["nhs_number", "date_of_birth", "postcode", "sex", "code", "value"]
    run_extract(ExtractOptions(Path(sys.argv[1]), event_schema(), approved, Path(sys.argv[2]), keys, chunk_rows=2000))
    print(tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory())
    """
)


def peak_bytes(source: Path, out: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(source), str(out), str(Path(__file__).parent)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_follows_the_chunk_size_not_the_file_size(tmp_path):
    large_table = make_table(200_000, patients=2000)
    small = write_parquet(large_table.slice(0, 20_000), tmp_path / "small.parquet", row_group_rows=2000)
    large = write_parquet(large_table, tmp_path / "large.parquet", row_group_rows=2000)

    small_peak = peak_bytes(small, tmp_path / "a")
    large_peak = peak_bytes(large, tmp_path / "b")

    # Ten times the rows; holding the large file in memory would add at least its decoded size.
    assert large_peak - small_peak < large_table.nbytes / 2, (small_peak, large_peak, large_table.nbytes)


# --- a column of NHS numbers under another name never reaches an extract (ADR 0068) --------------


def _with_ref(table: pa.Table, ref: list) -> pa.Table:
    return table.append_column("ref", pa.array(ref))


def _ref_schema() -> DatasetSchema:
    base = event_schema()
    return DatasetSchema(base.name, (*base.columns, ColumnSpec("ref", Role.ATTRIBUTE)),
                         nhs_number_column=base.nhs_number_column)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_column_of_nhs_numbers_kept_under_another_name_is_refused_and_nothing_is_written(tmp_path, keys, fmt):
    table = make_table(300)
    table = _with_ref(table, table["nhs_number"].to_pylist())  # a custodian's copy, headed "ref", kept
    src = tmp_path / f"events.{fmt}"
    write_parquet(table, src) if fmt == "parquet" else pacsv.write_csv(table, src)
    out = tmp_path / "out"

    with pytest.raises(IdentifierInOutput, match="column 'ref' would put NHS numbers in the extract") as refused:
        run_extract(ExtractOptions(src, _ref_schema(), ["nhs_number", "sex", "ref"], out, keys, chunk_rows=100))

    assert not any(n in str(refused.value) for n in set(table["nhs_number"].to_pylist()))
    assert _files(out) == []


def test_nhs_numbers_that_start_in_a_later_chunk_remove_the_parts_already_written(tmp_path, keys):
    table = make_table(300)
    numbers = table["nhs_number"].to_pylist()
    src = write_parquet(_with_ref(table, [f"R{i:05d}" for i in range(100)] + numbers[100:]), tmp_path / "e.parquet")
    out = tmp_path / "out"

    with pytest.raises(IdentifierInOutput, match="'ref'"):
        run_extract(ExtractOptions(src, _ref_schema(), ["nhs_number", "ref"], out, keys, chunk_rows=100))

    assert _files(out) == []


def test_ten_digit_numbers_that_fail_the_check_digit_are_not_taken_for_nhs_numbers(tmp_path, keys):
    table = make_table(200)
    ids = [n[:9] + str((int(n[9]) + 1) % 10) for n in table["nhs_number"].to_pylist()]
    src = write_parquet(_with_ref(table, ids), tmp_path / "e.parquet")

    manifest = run_extract(ExtractOptions(src, _ref_schema(), ["nhs_number", "ref"], tmp_path / "out", keys))

    assert manifest["rows"]["out"] == 200
