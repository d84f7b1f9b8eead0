"""An extract built in partitions (in any order, by any number of workers) and merged is the very
extract one worker builds: same parts byte for byte, same manifest, including the whole-extract
k-anonymity, suppression, quality and opt-out counts."""

from __future__ import annotations

import json
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
from pseudonymisation.pipeline import ExtractError, run_extract

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
def options(source: Path) -> dict:
    numbers = [n for n in pc.unique(pq.read_table(source)["nhs_number"]).to_pylist() if n]
    return {
        "chunk_rows": 600,
        "k": 8,
        "suppress_below_k": True,
        "optout_lists": [OptOutList.from_numbers("national", numbers[:10]),
                         OptOutList.from_numbers("gp-restriction", numbers[10:20])],
        "exempt_optout_lists": {"gp-restriction"},
        "project_id": "p-1",
    }


def _partitioned(source: Path, out: Path, keys, options: dict, order=lambda ps: ps) -> dict:
    partitions = plan_partitions(source, chunk_rows=options["chunk_rows"], partition_rows=1500)
    assert prepare_partitioned(source, event_schema(), APPROVED, out, keys, partitions, **options)
    for p in order(partitions):
        run_partition(source, event_schema(), APPROVED, out, keys, p, **options)
    return merge_partitions(source, event_schema(), APPROVED, out, keys, **options)


def test_partitions_cover_every_chunk_once_in_whole_chunks(source: Path) -> None:
    partitions = plan_partitions(source, chunk_rows=600, partition_rows=1500)

    # 5000 rows are 9 chunks of 600; 1500 rows round up to 3 chunks a partition.
    assert partitions == [Partition(0, 0, 3), Partition(1, 3, 3), Partition(2, 6, 3)]


def test_small_sources_csv_sources_and_a_zero_setting_keep_the_single_path(source: Path, tmp_path: Path) -> None:
    csv = tmp_path / "events.csv"
    pacsv.write_csv(make_table(5000), csv)

    assert plan_partitions(source, chunk_rows=600, partition_rows=5000) == []
    assert plan_partitions(source, chunk_rows=600, partition_rows=0) == []
    assert plan_partitions(csv, chunk_rows=600, partition_rows=600) == []


def test_a_partitioned_extract_equals_the_single_worker_extract(source: Path, tmp_path: Path, keys, options) -> None:
    single = run_extract(source, event_schema(), APPROVED, tmp_path / "single", keys, **options)
    merged = _partitioned(source, tmp_path / "fanned", keys, options, order=lambda ps: list(reversed(ps)))

    assert merged == single
    assert _bytes(tmp_path / "fanned") == _bytes(tmp_path / "single")
    assert json.loads((tmp_path / "fanned" / "manifest.json").read_text()) == single
    # The statistics really are over the whole extract: small groups were found and suppressed,
    # opt-outs removed and counted, and invalid numbers rejected.
    assert merged["k_anonymity"]["suppressed_rows"] > 0
    assert merged["k_anonymity"]["after"]["groups_below_k"] == 0
    assert merged["optouts"]["applied"][0]["rows_removed"] > 0
    assert merged["optouts"]["exempt"][0]["rows_not_removed"] > 0
    assert merged["rows"]["rejected"] == 2
    assert not (tmp_path / "fanned" / ".work").exists()


def test_a_partition_lost_midway_is_finished_again_with_the_same_result(
    source: Path, tmp_path: Path, keys, options
) -> None:
    single = run_extract(source, event_schema(), APPROVED, tmp_path / "single", keys, **options)
    out = tmp_path / "fanned"
    partitions = plan_partitions(source, chunk_rows=600, partition_rows=1500)
    prepare_partitioned(source, event_schema(), APPROVED, out, keys, partitions, **options)
    for p in partitions:
        run_partition(source, event_schema(), APPROVED, out, keys, p, **options)
    # A worker died in partition 1: its second chunk's part is torn and its third never written.
    (out / "data" / "part-000004.parquet").write_bytes(b"torn")
    (out / "data" / "part-000005.parquet").unlink()
    (out / ".work" / "chunk-000005.json").unlink()

    again = run_partition(source, event_schema(), APPROVED, out, keys, partitions[1], **options)

    assert again == {"chunks_made": 2, "chunks_resumed": 1}
    assert merge_partitions(source, event_schema(), APPROVED, out, keys, **options) == single
    assert _bytes(out) == _bytes(tmp_path / "single")


def test_the_merge_makes_chunks_no_partition_finished(source: Path, tmp_path: Path, keys, options) -> None:
    single = run_extract(source, event_schema(), APPROVED, tmp_path / "single", keys, **options)
    out = tmp_path / "fanned"
    partitions = plan_partitions(source, chunk_rows=600, partition_rows=1500)
    prepare_partitioned(source, event_schema(), APPROVED, out, keys, partitions, **options)
    run_partition(source, event_schema(), APPROVED, out, keys, partitions[0], **options)

    assert is_partitioned(out)
    assert finish_extract(source, event_schema(), APPROVED, out, keys, **options) == single
    assert not is_partitioned(out)


def test_a_partition_of_another_plan_or_a_changed_source_is_refused(
    source: Path, tmp_path: Path, keys, other_project_keys, options
) -> None:
    out = tmp_path / "fanned"
    partitions = plan_partitions(source, chunk_rows=600, partition_rows=1500)
    prepare_partitioned(source, event_schema(), APPROVED, out, keys, partitions, **options)

    with pytest.raises(ExtractError, match="different plan"):
        run_partition(source, event_schema(), APPROVED, out, other_project_keys, partitions[0], **options)
    with pytest.raises(ExtractError, match="not one of"):
        run_partition(source, event_schema(), APPROVED, out, keys, Partition(7, 21, 3), **options)

    write_parquet(make_table(5000, seed=9), source, row_group_rows=700)
    with pytest.raises(ExtractError, match="source changed"):
        run_partition(source, event_schema(), APPROVED, out, keys, partitions[0], **options)


def test_a_finished_extract_is_not_fanned_out_again(source: Path, tmp_path: Path, keys, options) -> None:
    out = tmp_path / "fanned"
    first = _partitioned(source, out, keys, options)
    partitions = plan_partitions(source, chunk_rows=600, partition_rows=1500)

    assert prepare_partitioned(source, event_schema(), APPROVED, out, keys, partitions, **options) is False
    assert merge_partitions(source, event_schema(), APPROVED, out, keys, **options) == first


def test_partitions_hold_no_identifier_in_their_records(source: Path, tmp_path: Path, keys, options) -> None:
    out = tmp_path / "fanned"
    partitions = plan_partitions(source, chunk_rows=600, partition_rows=1500)
    prepare_partitioned(source, event_schema(), APPROVED, out, keys, partitions, **options)
    run_partition(source, event_schema(), APPROVED, out, keys, partitions[0], **options)

    records = " ".join(p.read_text() for p in (out / ".work").glob("*.json"))
    assert not any(n in records for n in valid_nhs_numbers(400, 1))
