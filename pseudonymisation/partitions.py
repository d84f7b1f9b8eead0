"""Large extracts fanned out: partitions of one extract built by several workers, then merged.

A partition is a contiguous range of the chunks ``run_extract`` would make of a source (chunk ``i``
is always rows ``i * chunk_rows`` up to the next chunk), so a partition writes exactly the part
files and checkpoints the single run would write for those chunks, in the same shared output folder,
under the same names. The merge then does what the end of ``run_extract`` does: it counts the
k-anonymity groups of every part of the *whole* extract, merges the data-quality and opt-out counts
of every chunk, suppresses small groups across all parts, and writes the manifest. Every step is
deterministic, so the extract and its manifest are identical to the ones one worker makes with the
same options; only the chunk size (part of the plan fingerprint) matters, never how the chunks were
spread over workers.

Restarting is the same as for one worker: a partition run again skips the chunks whose part still
matches its checkpoint, and the merge makes any chunk that is still missing itself, so a lost
partition can delay an extract but never change it.

A Parquet source is read in place: its row count and row groups are in the footer, so a worker
reads just its rows. A CSV source has neither, and where a row ends can only be known by reading
from the start (a quoted value may hold a newline), so it is first copied once, with the very reader
and options the single path uses, to an Arrow IPC file in the options' staging folder; the
partitions read that copy. Arrow's own file format keeps every column type the CSV reader inferred
(Parquet would not: it has no seconds unit for timestamps and times), so every chunk holds the same
values either way. The copy holds source values, so the staging folder lies outside every extract
folder and is removed by the merge.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pseudonymisation import kanonymity
from pseudonymisation.extract_options import ExtractError, ExtractOptions
from pseudonymisation.pipeline import (
    _PART,
    Progress,
    ProgressCallback,
    _batches,
    _built,
    _chunk_done,
    _chunks,
    _commit_chunk,
    _finalise,
    _parquet_rows,
    _Plan,
    _plan_fingerprint,
    _process_chunk,
    _source_format,
    file_sha256,
    run_extract,
)
from pseudonymisation.sources import readable

_STAGED = "source.arrow"
_STAGED_RECORD = "source.json"


@dataclass(frozen=True)
class Partition:
    """Chunks ``first_chunk`` up to ``first_chunk + chunks`` of one source."""

    index: int
    first_chunk: int
    chunks: int

    def to_dict(self) -> dict[str, int]:
        return {"index": self.index, "first_chunk": self.first_chunk, "chunks": self.chunks}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Partition:
        return cls(int(data["index"]), int(data["first_chunk"]), int(data["chunks"]))


def plan_partitions(options: ExtractOptions, *, partition_rows: int) -> list[Partition]:
    """How to split a source over workers; empty means "take the single path".

    A partition holds ``partition_rows`` rounded up to whole chunks. A source that fits in one
    partition, ``partition_rows <= 0`` (fan-out switched off), and a CSV source without a staging
    folder are not split. A CSV source's rows are counted by making its Arrow copy; a copy that is
    not needed after all is removed at once.
    """
    if partition_rows <= 0:
        return []
    if _source_format(options.source) == "csv":
        if options.staging_dir is None:
            return []
        total_rows = sum(_stage_csv(options, _Plan.build(options)))
    else:
        total_rows = _parquet_rows(options.source_file)
    total_chunks = math.ceil(total_rows / options.chunk_rows)
    per = max(1, math.ceil(partition_rows / options.chunk_rows))
    if total_chunks <= per:
        _unstage(options)
        return []
    return [
        Partition(i, first, min(per, total_chunks - first)) for i, first in enumerate(range(0, total_chunks, per))
    ]


# --------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the three steps share: the options, the plan and its fingerprint."""

    options: ExtractOptions
    plan: _Plan
    fingerprint: str

    @property
    def is_csv(self) -> bool:
        return _source_format(self.options.source) == "csv"

    @property
    def readable(self) -> Path:
        """What the partitions read: the Parquet source itself, or a CSV source's Arrow copy."""
        if not self.is_csv:
            return self.options.source
        assert self.options.staging_dir is not None  # _run refuses a CSV source without one
        return self.options.staging_dir / _STAGED

    @property
    def work(self) -> Path:
        return self.options.output_dir / ".work"

    @property
    def data(self) -> Path:
        return self.options.output_dir / "data"

    @property
    def manifest_path(self) -> Path:
        return self.options.output_dir / "manifest.json"

    @property
    def run_file(self) -> Path:
        return self.work / "run.json"

    def built(self) -> dict[str, Any] | None:
        """The manifest if this very extract is already built; refuses a different one."""
        return _built(self.options, self.fingerprint)

    def recorded(self) -> dict[str, Any]:
        if not self.run_file.exists():
            raise ExtractError("this extract was not prepared for partitions (no run record)")
        record = json.loads(self.run_file.read_text())
        if record.get("plan_fingerprint") != self.fingerprint:
            raise ExtractError("the output directory holds a half-built extract of a different plan")
        if "partitions" not in record:
            raise ExtractError("this extract was not prepared for partitions")
        return record


def _run(options: ExtractOptions) -> _Run:
    if _source_format(options.source) == "csv" and options.staging_dir is None:
        raise ExtractError("a CSV source is built in partitions only with a staging folder")
    plan = _Plan.build(options)
    return _Run(options, plan, _plan_fingerprint(plan, options))


def _stat(path: Path) -> dict[str, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return {"bytes": info.st_size, "mtime_ns": info.st_mtime_ns}


def _write_json_unique(path: Path, data: Any) -> None:
    """Atomic write through a temporary name of its own, safe while other processes write too."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# A CSV source's Arrow copy


def _stage_csv(options: ExtractOptions, plan: _Plan) -> list[int]:
    """Copy the columns the plan reads from a CSV source to ``staging_dir/source.arrow`` (kept if an
    earlier call made it from the same file) and return the copy's batch lengths.

    The copy is read with ``pipeline._batches``, the single path's own reader, so quoting, newlines
    inside quoted values and the types inferred from the first block are the same by construction;
    the batches are written as they came, in Arrow's own format.
    """
    assert options.staging_dir is not None
    staging = options.staging_dir
    staged, record_path = staging / _STAGED, staging / _STAGED_RECORD
    made_from = {
        "source_stat": _stat(options.source),
        "columns": plan.read_columns,
        "text_columns": sorted(plan.text_columns()),
    }
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("made_from") == made_from and record.get("staged_stat") == _stat(staged):
            return [int(n) for n in record["batch_rows"]]
    # Only the extract workers' own account may enter: the copy holds identifiers, and the extracts
    # root is passable (0711) for the workspaces that read their project's folder.
    staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging.chmod(0o700)
    tmp = staging / f"{_STAGED}.{uuid.uuid4().hex}.tmp"
    batch_rows: list[int] = []
    try:
        batches = _batches(options.source_file, "csv", plan.read_columns, plan.text_columns(), options.chunk_rows,
                           options.csv_dialect)
        writer: pa.ipc.RecordBatchFileWriter | None = None
        try:
            for batch in batches:
                if writer is None:
                    tmp.touch(mode=0o600)
                    writer = pa.ipc.new_file(tmp, batch.schema, options=pa.ipc.IpcWriteOptions(compression="lz4"))
                writer.write_batch(batch)
                batch_rows.append(batch.num_rows)
        finally:
            if writer is not None:
                writer.close()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        tmp.unlink(missing_ok=True)
        raise ExtractError(f"dataset {plan.schema.name!r}: the source does not match its schema") from None
    if not batch_rows:  # a header and no rows: nothing to split, nothing kept
        tmp.unlink(missing_ok=True)
        return []
    os.replace(tmp, staged)
    _write_json_unique(record_path, {"made_from": made_from, "staged_stat": _stat(staged), "batch_rows": batch_rows})
    return batch_rows


def _unstage(options: ExtractOptions) -> None:
    """Remove a CSV source's Arrow copy (it holds source values) once no step needs it."""
    if options.staging_dir is None or not options.staging_dir.exists():
        return
    for name in (_STAGED_RECORD, _STAGED):
        (options.staging_dir / name).unlink(missing_ok=True)
    for leftover in options.staging_dir.glob(f"{_STAGED}.*.tmp"):
        leftover.unlink(missing_ok=True)
    try:
        options.staging_dir.rmdir()
    except OSError:
        pass  # not empty: something else lives there, leave it


# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _groups(run: _Run) -> Iterator[tuple[list[int], Callable[[int], pa.Table]]]:
    """The rows of each group the readable file is stored in, and how to read one group."""
    if not run.is_csv:
        with readable(run.options.source_file) as raw, pq.ParquetFile(raw) as handle:
            missing = set(run.plan.read_columns) - set(handle.schema_arrow.names)
            if missing:
                raise ExtractError(f"the source lacks columns named in the schema: {sorted(missing)}")
            sizes = [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)]
            yield sizes, lambda g: handle.read_row_group(g, columns=run.plan.read_columns)
        return
    assert run.options.staging_dir is not None
    record_path = run.options.staging_dir / _STAGED_RECORD
    if not record_path.exists() or not run.readable.exists():
        raise ExtractError("the copy of the CSV source is gone; request the extract again")
    sizes = [int(n) for n in json.loads(record_path.read_text())["batch_rows"]]  # no batch decompressed to count
    reader = pa.ipc.open_file(pa.memory_map(str(run.readable)))
    yield sizes, lambda g: pa.Table.from_batches([reader.get_batch(g)])


def _range_batches(run: _Run, start_row: int, stop_row: int) -> Iterator[pa.RecordBatch]:
    """The source's rows ``start_row`` up to ``stop_row``, reading only the groups that hold them."""
    with _groups(run) as (sizes, read):
        group_start = 0
        for group, group_rows in enumerate(sizes):
            group_stop = group_start + group_rows
            if group_stop > start_row and group_start < stop_row:
                table = read(group)
                begin = max(start_row - group_start, 0)
                table = table.slice(begin, min(stop_row, group_stop) - group_start - begin)
                yield from table.to_batches(max_chunksize=run.options.chunk_rows)
            if group_stop >= stop_row:
                return
            group_start = group_stop


def _make_chunks(
    run: _Run, record: dict[str, Any], first_chunk: int, chunks: int, progress: Any = None
) -> tuple[int, int]:
    """Make the chunks of a range that are not done yet; returns (made, already done)."""
    made = resumed = 0
    chunk_rows = run.options.chunk_rows
    wanted = range(first_chunk, first_chunk + chunks)
    todo = [i for i in wanted if _chunk_done(run.work, run.data, i) is None]
    resumed = chunks - len(todo)
    if todo:
        _check_unchanged(run, record)
        # Read from the first chunk still to do; chunks done in between are read past, not redone.
        start = todo[0] * chunk_rows
        stop = (first_chunk + chunks) * chunk_rows
        try:
            tables = _chunks(_range_batches(run, start, stop), chunk_rows)
            for index, table in enumerate(tables, start=todo[0]):
                if index in todo:
                    stats: dict[str, Any] = {"index": index}
                    result = _process_chunk(run.plan, table, stats)
                    part, checkpoint = run.data / _PART.format(index), run.work / f"chunk-{index:06d}.json"
                    _commit_chunk(run.plan, part, checkpoint, result, stats)
                    made += 1
                if progress is not None:
                    progress(index - first_chunk + 1, chunks)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise ExtractError(f"dataset {run.plan.schema.name!r}: the source does not match its schema") from None
    return made, resumed


def _check_unchanged(run: _Run, record: dict[str, Any]) -> None:
    """The source (and a CSV source's copy) must be the files the extract was split from."""
    if record["source_stat"] != _stat(run.options.source) or record["read_stat"] != _stat(run.readable):
        raise ExtractError("the source changed since the extract was split; request the extract again")


# --------------------------------------------------------------------------------------------------
# The three steps


def prepare_partitioned(options: ExtractOptions, partitions: Sequence[Partition]) -> bool:
    """Record the plan, the source's hash and the partitions before any worker starts.

    Returns False when the extract is already built (nothing to fan out). A half-built folder of the
    same plan (for example from an interrupted single run with the same chunk size) is kept: its
    finished chunks count. A CSV source's Arrow copy is made here if ``plan_partitions`` has not
    made it already.
    """
    run = _run(options)
    if run.built() is not None:
        return False
    previous = json.loads(run.run_file.read_text()) if run.run_file.exists() else None
    if previous is not None and previous.get("plan_fingerprint") != run.fingerprint:
        raise ExtractError("the output directory holds a half-built extract of a different plan")
    sha = file_sha256(options.source_file)
    if previous is not None and previous.get("source_sha256") not in (None, sha):
        raise ExtractError("the source changed since the interrupted run; clear the output directory")
    if run.is_csv:
        _stage_csv(options, run.plan)  # normally made already by plan_partitions
    run.work.mkdir(parents=True, exist_ok=True)
    run.data.mkdir(parents=True, exist_ok=True)
    _write_json_unique(run.run_file, {
        "plan_fingerprint": run.fingerprint,
        "source_sha256": sha,
        "source_stat": _stat(options.source),
        "read_stat": _stat(run.readable),
        "partitions": [p.to_dict() for p in partitions],
    })
    return True


def run_partition(
    options: ExtractOptions, partition: Partition, *, progress: ProgressCallback | None = None
) -> dict[str, int]:
    """Build one partition's chunks (skipping those already done). Safe to run again."""
    run = _run(options)
    if run.built() is not None:
        return {"chunks_made": 0, "chunks_resumed": partition.chunks}
    record = run.recorded()
    if partition.to_dict() not in record["partitions"]:
        raise ExtractError("this partition is not one of the extract's recorded partitions")
    _check_unchanged(run, record)
    chunk_rows = options.chunk_rows

    def report(done: int, of: int) -> None:
        """Progress within this partition: chunks (and about as many rows) done out of its own."""
        if progress is not None:
            progress(Progress(options.schema.name, done, done * chunk_rows, of * chunk_rows, 0))

    made, resumed = _make_chunks(run, record, partition.first_chunk, partition.chunks, report)
    return {"chunks_made": made, "chunks_resumed": resumed}


def merge_partitions(options: ExtractOptions, *, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Assemble the whole extract from its partitions and return the manifest ``run_extract`` would.

    The k-anonymity report, the suppression of small groups and the quality report are computed
    over all parts together, never per partition. Chunks still missing are made here.
    """
    run = _run(options)
    existing = run.built()
    if existing is not None:
        return existing
    record = run.recorded()
    total_chunks = sum(p["chunks"] for p in record["partitions"])
    chunk_rows = options.chunk_rows
    _make_chunks(run, record, 0, total_chunks)  # normally nothing: every partition has finished

    chunk_stats: list[dict[str, Any]] = []
    partial_counts: list[pa.Table] = []
    quasi = run.plan.quasi_outputs
    for index in range(total_chunks):
        stats = _chunk_done(run.work, run.data, index)
        if stats is None:
            raise ExtractError(f"chunk {index} changed while the extract was being merged")
        chunk_stats.append(stats)
        part = pq.read_table(run.data / _PART.format(index), columns=quasi)
        partial_counts.append(kanonymity.group_counts(part, quasi))
        if progress is not None:
            progress(Progress(options.schema.name, index + 1, (index + 1) * chunk_rows, total_chunks * chunk_rows,
                              index + 1))
    source_sha = file_sha256(options.source_file)
    if source_sha != record["source_sha256"]:
        raise ExtractError("the source changed since the extract was split; clear the output directory")

    counts = kanonymity.merge_counts(partial_counts, quasi)
    manifest = _finalise(run.plan, options, run.fingerprint, chunk_stats, counts, source_sha)
    _write_json_unique(run.manifest_path, manifest)
    shutil.rmtree(run.work, ignore_errors=True)
    _unstage(options)
    return manifest


def is_partitioned(output_dir: str | os.PathLike[str]) -> bool:
    """Whether a folder holds an extract prepared for partitions and not yet merged."""
    run_file = Path(output_dir) / ".work" / "run.json"
    return run_file.exists() and "partitions" in json.loads(run_file.read_text())


def finish_extract(options: ExtractOptions, *, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """``run_extract`` for a dataset built in one piece, the merge for one built in partitions."""
    if is_partitioned(options.output_dir):
        return merge_partitions(options, progress=progress)
    return run_extract(options, progress=progress)


__all__ = [
    "Partition",
    "finish_extract",
    "is_partitioned",
    "merge_partitions",
    "plan_partitions",
    "prepare_partitioned",
    "run_partition",
]
