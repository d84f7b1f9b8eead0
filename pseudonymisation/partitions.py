"""Large extracts fanned out: partitions of one extract built by several workers, then merged.

A partition is a contiguous range of the chunks ``run_extract`` would make of a Parquet source
(chunk ``i`` is always rows ``i * chunk_rows`` up to the next chunk), so a partition writes exactly
the part files and checkpoints the single run would write for those chunks, in the same shared
output folder, under the same names. The merge then does what the end of ``run_extract`` does:
it counts the k-anonymity groups of every part of the *whole* extract, merges the data-quality
and opt-out counts of every chunk, suppresses small groups across all parts, and writes the
manifest. Every step is deterministic, so the extract and its manifest are identical to the ones
one worker makes with the same chunk size; only the chunk size (part of the plan fingerprint)
matters, never how the chunks were spread over workers.

Restarting is the same as for one worker: a partition run again skips the chunks whose part still
matches its checkpoint, and the merge makes any chunk that is still missing itself, so a lost
partition can delay an extract but never change it.

Only Parquet sources are partitioned: their row count and row groups are in the footer, so a worker
reads just its rows. A CSV can only be read from its start, so a CSV source keeps the single path.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pseudonymisation import kanonymity
from pseudonymisation.optouts import OptOutList
from pseudonymisation.pipeline import (
    _PART,
    DEFAULT_CHUNK_ROWS,
    ExtractError,
    ExtractKeys,
    Progress,
    ProgressCallback,
    _chunk_done,
    _chunks,
    _commit_chunk,
    _finalise,
    _Plan,
    _plan_fingerprint,
    _process_chunk,
    _source_format,
    file_sha256,
    run_extract,
)
from pseudonymisation.schema import DatasetSchema


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


def plan_partitions(
    source: str | os.PathLike[str], *, chunk_rows: int = DEFAULT_CHUNK_ROWS, partition_rows: int
) -> list[Partition]:
    """How to split a source over workers; empty means "take the single path".

    A partition holds ``partition_rows`` rounded up to whole chunks. A source that fits in one
    partition, a CSV source, or ``partition_rows <= 0`` (fan-out switched off) is not split.
    """
    if chunk_rows < 1:
        raise ExtractError("chunk_rows must be positive")
    path = Path(source)
    if partition_rows <= 0 or _source_format(path) != "parquet":
        return []
    total_chunks = math.ceil(pq.ParquetFile(path).metadata.num_rows / chunk_rows)
    per = max(1, math.ceil(partition_rows / chunk_rows))
    if total_chunks <= per:
        return []
    return [
        Partition(i, first, min(per, total_chunks - first)) for i, first in enumerate(range(0, total_chunks, per))
    ]


# --------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the three steps share: the plan, its fingerprint and the folders."""

    source: Path
    plan: _Plan
    fingerprint: str
    out: Path
    chunk_rows: int
    k: int
    suppress: bool

    @property
    def work(self) -> Path:
        return self.out / ".work"

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def manifest_path(self) -> Path:
        return self.out / "manifest.json"

    @property
    def run_file(self) -> Path:
        return self.work / "run.json"

    def built(self) -> dict[str, Any] | None:
        """The manifest if this very extract is already built; refuses a different one."""
        if not self.manifest_path.exists():
            return None
        existing = json.loads(self.manifest_path.read_text())
        if existing.get("plan_fingerprint") == self.fingerprint and existing["source"]["sha256"] == file_sha256(
            self.source
        ):
            return existing
        raise ExtractError("the output directory holds a different extract")

    def recorded(self) -> dict[str, Any]:
        if not self.run_file.exists():
            raise ExtractError("this extract was not prepared for partitions (no run record)")
        record = json.loads(self.run_file.read_text())
        if record.get("plan_fingerprint") != self.fingerprint:
            raise ExtractError("the output directory holds a half-built extract of a different plan")
        if "partitions" not in record:
            raise ExtractError("this extract was not prepared for partitions")
        return record


def _run(
    source: str | os.PathLike[str],
    schema: DatasetSchema,
    approved_columns: Sequence[str],
    output_dir: str | os.PathLike[str],
    keys: ExtractKeys,
    *,
    chunk_rows: int,
    optout_lists: Sequence[OptOutList],
    exempt_optout_lists: Collection[str],
    k: int,
    k_quasi_identifiers: Sequence[str] | None,
    suppress_below_k: bool,
) -> _Run:
    if chunk_rows < 1 or k < 1:
        raise ExtractError("chunk_rows and k must be positive")
    path = Path(source)
    if _source_format(path) != "parquet":
        raise ExtractError("only Parquet sources are built in partitions")
    plan = _Plan.build(schema, approved_columns, keys, optout_lists, exempt_optout_lists, k_quasi_identifiers)
    fingerprint = _plan_fingerprint(plan, chunk_rows, k, suppress_below_k)
    return _Run(path, plan, fingerprint, Path(output_dir), chunk_rows, k, suppress_below_k)


def _stat(path: Path) -> dict[str, int]:
    info = path.stat()
    return {"bytes": info.st_size, "mtime_ns": info.st_mtime_ns}


def _write_json_unique(path: Path, data: Any) -> None:
    """Atomic write through a temporary name of its own, safe while other processes write too."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _range_batches(run: _Run, start_row: int, stop_row: int) -> Iterator[pa.RecordBatch]:
    """The source's rows ``start_row`` up to ``stop_row``, reading only the row groups that hold them."""
    handle = pq.ParquetFile(run.source)
    missing = set(run.plan.read_columns) - set(handle.schema_arrow.names)
    if missing:
        raise ExtractError(f"the source lacks columns named in the schema: {sorted(missing)}")
    group_start = 0
    for group in range(handle.num_row_groups):
        group_rows = handle.metadata.row_group(group).num_rows
        group_stop = group_start + group_rows
        if group_stop > start_row and group_start < stop_row:
            table = handle.read_row_group(group, columns=run.plan.read_columns)
            begin = max(start_row - group_start, 0)
            table = table.slice(begin, min(stop_row, group_stop) - group_start - begin)
            yield from table.to_batches(max_chunksize=run.chunk_rows)
        if group_stop >= stop_row:
            return
        group_start = group_stop


def _make_chunks(run: _Run, first_chunk: int, chunks: int, progress: Any = None) -> tuple[int, int]:
    """Make the chunks of a range that are not done yet; returns (made, already done)."""
    made = resumed = 0
    wanted = range(first_chunk, first_chunk + chunks)
    todo = [i for i in wanted if _chunk_done(run.work, run.data, i) is None]
    resumed = chunks - len(todo)
    if todo:
        # Read from the first chunk still to do; chunks done in between are read past, not redone.
        start = todo[0] * run.chunk_rows
        stop = (first_chunk + chunks) * run.chunk_rows
        try:
            tables = _chunks(_range_batches(run, start, stop), run.chunk_rows)
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


# --------------------------------------------------------------------------------------------------
# The three steps


def prepare_partitioned(
    source: str | os.PathLike[str],
    schema: DatasetSchema,
    approved_columns: Sequence[str],
    output_dir: str | os.PathLike[str],
    keys: ExtractKeys,
    partitions: Sequence[Partition],
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    optout_lists: Sequence[OptOutList] = (),
    exempt_optout_lists: Collection[str] = (),
    k: int = 5,
    k_quasi_identifiers: Sequence[str] | None = None,
    suppress_below_k: bool = False,
    project_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> bool:
    """Record the plan, the source's hash and the partitions before any worker starts.

    Returns False when the extract is already built (nothing to fan out). A half-built folder of the
    same plan (for example from an interrupted single run with the same chunk size) is kept: its
    finished chunks count. ``project_id`` and ``progress`` are accepted so that every step takes the
    same options as ``run_extract``.
    """
    run = _run(source, schema, approved_columns, output_dir, keys, chunk_rows=chunk_rows, optout_lists=optout_lists,
               exempt_optout_lists=exempt_optout_lists, k=k, k_quasi_identifiers=k_quasi_identifiers,
               suppress_below_k=suppress_below_k)
    if run.built() is not None:
        return False
    previous = json.loads(run.run_file.read_text()) if run.run_file.exists() else None
    if previous is not None and previous.get("plan_fingerprint") != run.fingerprint:
        raise ExtractError("the output directory holds a half-built extract of a different plan")
    sha = file_sha256(run.source)
    if previous is not None and previous.get("source_sha256") not in (None, sha):
        raise ExtractError("the source changed since the interrupted run; clear the output directory")
    run.work.mkdir(parents=True, exist_ok=True)
    run.data.mkdir(parents=True, exist_ok=True)
    _write_json_unique(run.run_file, {
        "plan_fingerprint": run.fingerprint,
        "source_sha256": sha,
        "source_stat": _stat(run.source),
        "partitions": [p.to_dict() for p in partitions],
    })
    return True


def run_partition(
    source: str | os.PathLike[str],
    schema: DatasetSchema,
    approved_columns: Sequence[str],
    output_dir: str | os.PathLike[str],
    keys: ExtractKeys,
    partition: Partition,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    optout_lists: Sequence[OptOutList] = (),
    exempt_optout_lists: Collection[str] = (),
    k: int = 5,
    k_quasi_identifiers: Sequence[str] | None = None,
    suppress_below_k: bool = False,
    project_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, int]:
    """Build one partition's chunks (skipping those already done). Safe to run again."""
    run = _run(source, schema, approved_columns, output_dir, keys, chunk_rows=chunk_rows, optout_lists=optout_lists,
               exempt_optout_lists=exempt_optout_lists, k=k, k_quasi_identifiers=k_quasi_identifiers,
               suppress_below_k=suppress_below_k)
    if run.built() is not None:
        return {"chunks_made": 0, "chunks_resumed": partition.chunks}
    record = run.recorded()
    if partition.to_dict() not in record["partitions"]:
        raise ExtractError("this partition is not one of the extract's recorded partitions")
    if record["source_stat"] != _stat(run.source):
        raise ExtractError("the source changed since the extract was split; request the extract again")

    def report(done: int, of: int) -> None:
        """Progress within this partition: chunks (and about as many rows) done out of its own."""
        if progress is not None:
            progress(Progress(schema.name, done, done * run.chunk_rows, of * run.chunk_rows, 0))

    made, resumed = _make_chunks(run, partition.first_chunk, partition.chunks, report)
    return {"chunks_made": made, "chunks_resumed": resumed}


def merge_partitions(
    source: str | os.PathLike[str],
    schema: DatasetSchema,
    approved_columns: Sequence[str],
    output_dir: str | os.PathLike[str],
    keys: ExtractKeys,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    optout_lists: Sequence[OptOutList] = (),
    exempt_optout_lists: Collection[str] = (),
    k: int = 5,
    k_quasi_identifiers: Sequence[str] | None = None,
    suppress_below_k: bool = False,
    project_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Assemble the whole extract from its partitions and return the manifest ``run_extract`` would.

    The k-anonymity report, the suppression of small groups and the quality report are computed
    over all parts together, never per partition. Chunks still missing are made here.
    """
    run = _run(source, schema, approved_columns, output_dir, keys, chunk_rows=chunk_rows, optout_lists=optout_lists,
               exempt_optout_lists=exempt_optout_lists, k=k, k_quasi_identifiers=k_quasi_identifiers,
               suppress_below_k=suppress_below_k)
    existing = run.built()
    if existing is not None:
        return existing
    record = run.recorded()
    total_chunks = sum(p["chunks"] for p in record["partitions"])
    _make_chunks(run, 0, total_chunks)  # normally nothing: every partition has finished

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
            progress(Progress(schema.name, index + 1, (index + 1) * chunk_rows, total_chunks * chunk_rows, index + 1))
    source_sha = file_sha256(run.source)
    if source_sha != record["source_sha256"]:
        raise ExtractError("the source changed since the extract was split; clear the output directory")

    counts = kanonymity.merge_counts(partial_counts, quasi)
    manifest = _finalise(run.plan, run.out, chunk_stats, counts, k, suppress_below_k)
    manifest.update(
        {
            "plan_fingerprint": run.fingerprint,
            "project_id": project_id,
            "source": {
                "name": run.source.name,
                "format": "parquet",
                "sha256": source_sha,
                "bytes": run.source.stat().st_size,
            },
            "chunk_rows": chunk_rows,
        }
    )
    _write_json_unique(run.manifest_path, manifest)
    shutil.rmtree(run.work, ignore_errors=True)
    return manifest


def is_partitioned(output_dir: str | os.PathLike[str]) -> bool:
    """Whether a folder holds an extract prepared for partitions and not yet merged."""
    run_file = Path(output_dir) / ".work" / "run.json"
    return run_file.exists() and "partitions" in json.loads(run_file.read_text())


def finish_extract(
    source: str | os.PathLike[str],
    schema: DatasetSchema,
    approved_columns: Sequence[str],
    output_dir: str | os.PathLike[str],
    keys: ExtractKeys,
    **options: Any,
) -> dict[str, Any]:
    """``run_extract`` for a dataset built in one piece, the merge for one built in partitions."""
    if is_partitioned(output_dir):
        return merge_partitions(source, schema, approved_columns, output_dir, keys, **options)
    return run_extract(source, schema, approved_columns, output_dir, keys, **options)


__all__ = [
    "Partition",
    "finish_extract",
    "is_partitioned",
    "merge_partitions",
    "plan_partitions",
    "prepare_partitioned",
    "run_partition",
]
