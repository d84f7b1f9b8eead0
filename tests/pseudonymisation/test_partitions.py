"""An extract built in partitions (in any order, by any number of workers) and merged is the very
extract one worker builds: same parts byte for byte, same manifest, including the whole-extract
k-anonymity, suppression, quality and opt-out counts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pseudonymisation.optouts import OptOutList
from pseudonymisation.partitions import (
    Partition,
    finish_extract,
    is_partitioned,
    merge_partitions,
    plan_partitions,
    prepare_partitioned,
    run_partition,
)
from pseudonymisation.pipeline import ExtractError, ExtractOptions, run_extract
from pseudonymisation.schema import ColumnSpec, Role, Transform, TransformKind

from .conftest import event_schema, make_table, valid_nhs_numbers, write_parquet

APPROVED = ["nhs_number", "date_of_birth", "postcode", "sex", "event_date", "code", "value"]


def _bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    table = make_table(5000, patients=400)
    numbers = table["nhs_number"].to_pylist()
    numbers[5], numbers[17] = "0000000001", None  # invalid and missing numbers are counted too
    table = table.set_column(0, "nhs_number", pa.array(numbers))
    # Row groups of 700 rows: partitions and chunks (600 rows) cut across them.
    return write_parquet(table, tmp_path / "events.parquet", row_group_rows=700)


@pytest.fixture
def options(source: Path, tmp_path: Path, keys) -> ExtractOptions:
    """The partitioned extract goes to ``fanned/``; ``single(options)`` is the same in one piece."""
    numbers = [n for n in pc.unique(pq.read_table(source)["nhs_number"]).to_pylist() if n]
    return ExtractOptions(
        source, event_schema(), APPROVED, tmp_path / "fanned", keys,
        chunk_rows=600,
        k=8,
        suppress_below_k=True,
        optout_lists=[OptOutList.from_numbers("national", numbers[:10]),
                      OptOutList.from_numbers("gp-restriction", numbers[10:20])],
        exempt_optout_lists={"gp-restriction"},
        project_id="p-1",
        staging_dir=tmp_path / "staging",
    )


def single(options: ExtractOptions) -> dict:
    return run_extract(replace(options, output_dir=options.output_dir.parent / "single"))


def _partitioned(options: ExtractOptions, order=lambda ps: ps) -> dict:
    partitions = plan_partitions(options, partition_rows=1500)
    assert prepare_partitioned(options, partitions)
    for p in order(partitions):
        run_partition(options, p)
    return merge_partitions(options)


def test_partitions_cover_every_chunk_once_in_whole_chunks(options: ExtractOptions) -> None:
    partitions = plan_partitions(options, partition_rows=1500)

    # 5000 rows are 9 chunks of 600; 1500 rows round up to 3 chunks a partition.
    assert partitions == [Partition(0, 0, 3), Partition(1, 3, 3), Partition(2, 6, 3)]


def test_small_sources_a_zero_setting_and_csv_without_staging_keep_the_single_path(
    options: ExtractOptions, tmp_path: Path
) -> None:
    csv = tmp_path / "events.csv"
    pacsv.write_csv(make_table(5000), csv)

    assert plan_partitions(options, partition_rows=5000) == []
    assert plan_partitions(options, partition_rows=0) == []
    assert plan_partitions(replace(options, source=csv, staging_dir=None), partition_rows=600) == []


def test_a_partitioned_extract_equals_the_single_worker_extract(tmp_path: Path, options) -> None:
    one = single(options)
    merged = _partitioned(options, order=lambda ps: list(reversed(ps)))

    assert merged == one
    assert _bytes(tmp_path / "fanned") == _bytes(tmp_path / "single")
    assert json.loads((tmp_path / "fanned" / "manifest.json").read_text()) == one
    # The statistics really are over the whole extract: small groups were found and suppressed,
    # opt-outs removed and counted, and invalid numbers rejected.
    assert merged["k_anonymity"]["suppressed_rows"] > 0
    assert merged["k_anonymity"]["after"]["groups_below_k"] == 0
    assert merged["optouts"]["applied"][0]["rows_removed"] > 0
    assert merged["optouts"]["exempt"][0]["rows_not_removed"] > 0
    assert merged["rows"]["rejected"] == 2
    assert not (tmp_path / "fanned" / ".work").exists()


def test_a_partition_lost_midway_is_finished_again_with_the_same_result(tmp_path: Path, options) -> None:
    one = single(options)
    out = options.output_dir
    partitions = plan_partitions(options, partition_rows=1500)
    prepare_partitioned(options, partitions)
    for p in partitions:
        run_partition(options, p)
    # A worker died in partition 1: its second chunk's part is torn and its third never written.
    (out / "data" / "part-000004.parquet").write_bytes(b"torn")
    (out / "data" / "part-000005.parquet").unlink()
    (out / ".work" / "chunk-000005.json").unlink()

    again = run_partition(options, partitions[1])

    assert again == {"chunks_made": 2, "chunks_resumed": 1}
    assert merge_partitions(options) == one
    assert _bytes(out) == _bytes(tmp_path / "single")


def test_the_merge_makes_chunks_no_partition_finished(options) -> None:
    one = single(options)
    partitions = plan_partitions(options, partition_rows=1500)
    prepare_partitioned(options, partitions)
    run_partition(options, partitions[0])

    assert is_partitioned(options.output_dir)
    assert finish_extract(options) == one
    assert not is_partitioned(options.output_dir)


def test_a_partition_of_another_plan_or_a_changed_source_is_refused(
    source: Path, other_project_keys, options
) -> None:
    partitions = plan_partitions(options, partition_rows=1500)
    prepare_partitioned(options, partitions)

    with pytest.raises(ExtractError, match="different plan"):
        run_partition(replace(options, keys=other_project_keys), partitions[0])
    with pytest.raises(ExtractError, match="not one of"):
        run_partition(options, Partition(7, 21, 3))

    write_parquet(make_table(5000, seed=9), source, row_group_rows=700)
    with pytest.raises(ExtractError, match="source changed"):
        run_partition(options, partitions[0])


def test_a_finished_extract_is_not_fanned_out_again(options) -> None:
    first = _partitioned(options)
    partitions = plan_partitions(options, partition_rows=1500)

    assert prepare_partitioned(options, partitions) is False
    assert merge_partitions(options) == first


def test_partitions_hold_no_identifier_in_their_records(options) -> None:
    out = options.output_dir
    partitions = plan_partitions(options, partition_rows=1500)
    prepare_partitioned(options, partitions)
    run_partition(options, partitions[0])

    records = " ".join(p.read_text() for p in (out / ".work").glob("*.json"))
    assert not any(n in records for n in valid_nhs_numbers(400, 1))


# --------------------------------------------------------------------------------------------------
# CSV sources: copied once to an Arrow file outside the extract folder, then split like Parquet


@pytest.fixture
def csv_options(options: ExtractOptions, source: Path, tmp_path: Path) -> ExtractOptions:
    """The same rows as a CSV whose free-text notes hold quoted newlines, commas and quotes."""
    table = pq.read_table(source)
    notes = [f'seen, "urgent"\nrecall {i}\r\nend' if i % 3 else f"plain {i}" for i in range(table.num_rows)]
    table = table.set_column(table.schema.get_field_index("note"), "note", pa.array(notes))
    csv = tmp_path / "events.csv"
    pacsv.write_csv(table, csv)
    assert b'"\n' not in csv.read_bytes().split(b"\n", 1)[0]  # the header is one line; values span lines
    schema = event_schema()
    scrubbed = ColumnSpec("note", Role.FREE_TEXT, Transform(TransformKind.SCRUB_TEXT))
    schema = replace(schema, columns=tuple(scrubbed if c.name == "note" else c for c in schema.columns))
    # k on age band, district and sex: some groups are small, most rows stay to be looked at.
    return replace(options, source=csv, schema=schema, approved_columns=(*APPROVED, "note"),
                   k=40, k_quasi_identifiers=("age_band", "postcode", "sex"))


def test_a_partitioned_csv_extract_equals_the_single_worker_extract(tmp_path: Path, csv_options) -> None:
    one = single(csv_options)
    partitions = plan_partitions(csv_options, partition_rows=1500)
    assert csv_options.staging_dir is not None
    staged = sorted(p.name for p in csv_options.staging_dir.iterdir())
    mode = csv_options.staging_dir.stat().st_mode & 0o777

    merged = _partitioned(csv_options, order=lambda ps: list(reversed(ps)))

    assert len(partitions) == 3 and staged == ["source.arrow", "source.json"]
    assert mode == 0o700  # the copy holds identifiers: only the workers' account may enter
    assert merged == one
    assert merged["source"]["format"] == "csv" and merged["rows"]["in"] == 5000
    assert _bytes(tmp_path / "fanned") == _bytes(tmp_path / "single")
    # The notes with newlines in them arrived whole, one row each.
    notes = pq.read_table(tmp_path / "fanned" / "data", columns=["note"])["note"].to_pylist()
    assert sum(n is not None and n.startswith('seen, "urgent"\nrecall') and n.endswith("\r\nend") for n in notes) > 2000
    assert merged["k_anonymity"]["suppressed_rows"] > 0
    assert merged["optouts"]["applied"][0]["rows_removed"] > 0
    assert merged["rows"]["rejected"] == 2
    # The copy of the source (raw identifiers) is gone, and it never was in the extract's folder.
    assert not csv_options.staging_dir.exists()
    assert not list((tmp_path / "fanned").rglob("source.*"))


def test_a_csv_short_enough_for_one_partition_keeps_no_copy(csv_options) -> None:
    assert plan_partitions(csv_options, partition_rows=10_000) == []
    assert csv_options.staging_dir is not None and not csv_options.staging_dir.exists()


def test_a_csv_partition_is_resumed_and_a_changed_csv_is_refused(tmp_path: Path, csv_options) -> None:
    one = single(csv_options)
    partitions = plan_partitions(csv_options, partition_rows=1500)
    prepare_partitioned(csv_options, partitions)
    run_partition(csv_options, partitions[0])
    (csv_options.output_dir / "data" / "part-000001.parquet").write_bytes(b"torn")

    assert run_partition(csv_options, partitions[0]) == {"chunks_made": 1, "chunks_resumed": 2}
    assert finish_extract(csv_options) == one

    out = tmp_path / "again"
    again = replace(csv_options, output_dir=out)
    prepare_partitioned(again, plan_partitions(again, partition_rows=1500))
    with csv_options.source.open("a") as handle:
        handle.write("\n")  # any change to the file after the split
    with pytest.raises(ExtractError, match="source changed"):
        run_partition(again, partitions[1])
