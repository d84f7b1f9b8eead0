"""The extract pipeline: stream a source in chunks, pseudonymise it, write Parquet and a manifest.

One run reads only the columns a plan needs, a fixed number of rows at a time, so memory follows the
chunk size and not the file size. Each chunk is turned into one part file (``data/part-NNNNNN.parquet``)
and a small checkpoint; a checkpoint is written last, so a chunk either counts as done with a part
whose hash it records, or is done again. A run that was killed therefore resumes where it stopped,
and because every step is deterministic the parts it writes are byte for byte the ones an
uninterrupted run writes. The manifest carries counts, hashes, the transforms, the k-anonymity and
data-quality reports and a key id; never key material and never a value from the data.

The whole module is pure (pyarrow, numpy, cryptography): the control plane calls ``run_extract`` or
``run_linked_extract`` from a background job and records the manifest it returns.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pseudonymisation import generalise, kanonymity, quality, tokens
from pseudonymisation.extract_options import (
    DEFAULT_CHUNK_ROWS,
    ExtractError,
    ExtractKeys,
    ExtractOptions,
    IdentifierInOutput,
    PersonLinks,
)
from pseudonymisation.optouts import OptOutList, apply_optouts
from pseudonymisation.schema import (
    ColumnSpec,
    DatasetSchema,
    InvalidNhsPolicy,
    Role,
    SchemaError,
    TransformKind,
)
from pseudonymisation.sources import SourceFile, as_source, readable

MANIFEST_FORMAT = "tre-extract-manifest/1"
_DATE_TRANSFORMS = frozenset({TransformKind.DOB_YEAR, TransformKind.DOB_AGE_BAND, TransformKind.DATE_SHIFT,
                              TransformKind.DAYS_FROM_INDEX})
_TEXT_TRANSFORMS = _DATE_TRANSFORMS | {TransformKind.MEASUREMENT}
_TOKEN_TRANSFORMS = frozenset({TransformKind.NHS_TOKEN, TransformKind.ID_TOKEN})
_PART = "part-{:06d}.parquet"
_COMPRESSION = "snappy"  # writer options are fixed, so parts are reproducible


def _write_part(table: pa.Table, path: Path, token_columns: Collection[str]) -> None:
    """Write one part. Token columns are random letters: a dictionary, statistics or snappy would
    cost time on them and save nothing, so they get none of the three."""
    names = table.column_names
    pq.write_table(
        table,
        path,
        use_dictionary=[n for n in names if n not in token_columns and not pa.types.is_floating(table[n].type)],
        write_statistics=[n for n in names if n not in token_columns],
        compression={n: "none" if n in token_columns else _COMPRESSION for n in names},
    )


@dataclass(frozen=True)
class Progress:
    dataset: str
    chunks_done: int
    rows_read: int
    total_rows: int | None  # unknown for CSV until the end
    resumed_chunks: int  # chunks found done by an earlier run and not redone


ProgressCallback = Callable[[Progress], None]


# --------------------------------------------------------------------------------------------------
# Small helpers


def file_sha256(path: str | os.PathLike[str] | SourceFile) -> str:
    """The sha256 of a file's content (of a source's plaintext, when it is kept sealed)."""
    digest = hashlib.sha256()
    with (path.open() if isinstance(path, SourceFile) else open(path, "rb")) as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _parquet_rows(source: SourceFile) -> int:
    with readable(source) as raw, pq.ParquetFile(raw) as handle:
        return int(handle.metadata.num_rows)


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write to a temporary name then rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    _write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def _source_format(path: Path | SourceFile) -> str:
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    if suffix in {".csv", ".txt", ".tsv"}:
        return "csv"
    raise ExtractError("a source must be a .parquet or .csv file")


def _batches(
    source: Path | SourceFile, fmt: str, columns: list[str], text_columns: set[str], chunk_rows: int,
    dialect: tuple[str, str, str] = (",", '"', "utf-8"),
) -> Iterator:
    src = as_source(source)
    if fmt == "parquet":
        with readable(src) as raw, pq.ParquetFile(raw) as handle:
            missing = set(columns) - set(handle.schema_arrow.names)
            if missing:
                raise ExtractError(f"the source lacks columns named in the schema: {sorted(missing)}")
            # One row group at a time: iter_batches reads ahead, and its memory grew with the file.
            for group in range(handle.num_row_groups):
                yield from handle.read_row_group(group, columns=columns).to_batches(max_chunksize=chunk_rows)
        return
    delimiter, quote_char, encoding = dialect
    # A plain file is read by Arrow from its path (its own threads, no GIL); a sealed one through
    # its decrypting reader.
    with readable(src) as raw:
        yield from _csv_batches(raw, columns, text_columns, delimiter, quote_char, encoding)


def _csv_batches(
    raw: Any, columns: list[str], text_columns: set[str], delimiter: str, quote_char: str, encoding: str,
) -> Iterator:
    reader = pacsv.open_csv(
        raw,
        read_options=pacsv.ReadOptions(block_size=1 << 24, encoding="utf8" if encoding == "utf-8" else encoding),
        # Without this a quoted value holding a newline is read right only if it does not straddle
        # two blocks; with it, always (and no slower for the one-thread streaming reader).
        parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=quote_char, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            include_columns=columns, column_types={c: pa.string() for c in text_columns}
        ),
    )
    yield from reader


def _chunks(batches: Iterator, chunk_rows: int) -> Iterator[pa.Table]:
    """Regroup batches into tables of exactly ``chunk_rows`` rows (the last may be shorter), so chunk
    boundaries depend only on the source and the chunk size, never on how a reader happened to batch."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        if not pending and batch.num_rows == chunk_rows:
            yield pa.Table.from_batches([batch])  # the usual case for Parquet: no copy needed
            continue
        pending.append(batch)
        held += batch.num_rows
        while held >= chunk_rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, chunk_rows).combine_chunks()
            rest = table.slice(chunk_rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending).combine_chunks()


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


# --------------------------------------------------------------------------------------------------
# One chunk


@dataclass
class _Plan:
    schema: DatasetSchema
    outputs: list[ColumnSpec]
    read_columns: list[str]
    quasi_outputs: list[str]
    keys: ExtractKeys
    optout_lists: Sequence[OptOutList]
    exempt: frozenset[str]
    person_links: PersonLinks | None = None

    @classmethod
    def build(cls, options: ExtractOptions) -> _Plan:
        schema, k_quasi = options.schema, options.k_quasi_identifiers
        outputs = schema.plan(options.approved_columns)
        if not outputs:
            raise SchemaError("no approved column produces output")
        for spec in outputs:
            t = spec.effective_transform
            if t.kind is TransformKind.DOB_AGE_BAND and "reference_date" not in t.params:
                raise SchemaError(f"column {spec.name!r}: an age band needs a reference_date")
        quasi = [c.effective_output_name for c in outputs if c.role is Role.QUASI_IDENTIFIER]
        if k_quasi is not None:
            unknown = set(k_quasi) - set(quasi)
            if unknown:
                raise SchemaError(f"k-anonymity columns are not quasi-identifiers of the extract: {sorted(unknown)}")
            quasi = [q for q in quasi if q in set(k_quasi)]
        links = options.person_links
        read = schema.source_columns(outputs)
        if links is not None:
            if not schema.nhs_number_column or not any(
                c.effective_transform.kind is TransformKind.NHS_TOKEN for c in outputs
            ):
                raise SchemaError("a dataset linked through the person index needs its NHS number tokenised")
            if links.record_id_column not in schema.column_names:
                raise SchemaError("the person index's record id column is not in the schema")
            read = list(dict.fromkeys([*read, links.record_id_column]))
        return cls(schema, outputs, read, quasi, options.keys, options.optout_lists,
                   frozenset(options.exempt_optout_lists), links)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "source": c.name,
                "output": c.effective_output_name,
                "role": str(c.role),
                "transform": c.effective_transform.to_dict(),
            }
            for c in self.outputs
        ]

    @property
    def token_outputs(self) -> frozenset[str]:
        return frozenset(
            c.effective_output_name for c in self.outputs if c.effective_transform.kind is TransformKind.NHS_TOKEN
        )

    def text_columns(self) -> set[str]:
        """Columns read as text from CSV whatever they look like: NHS numbers keep their digits, and a
        date column the extract transforms is read by ``generalise.as_dates`` (ISO or day/month/year,
        ADR 0062), not typed by Arrow from the first block and refused at a later block's first
        day-first or "unknown" value; so is a measurement column, whose first "<5" may come in any block
        (ADR 0066)."""
        text = {c.name for c in self.schema.columns if c.role in {Role.DIRECT_IDENTIFIER, Role.FREE_TEXT}}
        text |= {c.name for c in self.outputs if c.effective_transform.kind in _TEXT_TRANSFORMS}
        if self.person_links is not None:
            text.add(self.person_links.record_id_column)
        return text & set(self.read_columns)


def _transform_column(
    spec: ColumnSpec, table: pa.Table, ps: tokens.Pseudonyms | None, token_column: pa.Array | None, keys: ExtractKeys
):
    t = spec.effective_transform
    values = _column(table, spec.name)
    match t.kind:
        case TransformKind.KEEP:
            return values
        case TransformKind.NHS_TOKEN:
            return token_column
        case TransformKind.DOB_YEAR:
            return generalise.dob_to_year(values)
        case TransformKind.DOB_AGE_BAND:
            reference = dt.date.fromisoformat(t.params["reference_date"])
            return generalise.dob_to_age_band(
                values, reference, int(t.params.get("width", 5)), int(t.params.get("top", 90))
            )
        case TransformKind.DATE_SHIFT:
            assert ps is not None  # the schema refuses a date shift without an NHS number column
            return generalise.shift_dates(values, ps, keys.project_key, int(t.params.get("max_days", 180)))
        case TransformKind.DAYS_FROM_INDEX:
            return generalise.days_from_index(values, _column(table, t.params["index_column"]))
        case TransformKind.POSTCODE_DISTRICT:
            return generalise.postcode_district(values)
        case TransformKind.POSTCODE_SECTOR:
            return generalise.postcode_sector(values)
        case TransformKind.ID_TOKEN:
            namespace = str(t.params.get("namespace", spec.name))
            return generalise.local_id_tokens(values, tokens.derive_subkey(keys.project_key, f"local-id:{namespace}"))
        case TransformKind.MEASUREMENT:
            return generalise.measurements(values)
        case TransformKind.SCRUB_TEXT:
            ids = [_column(table, c) for c in t.params.get("identifier_columns", ())]
            return generalise.scrub_text(values, ids)
    raise SchemaError(f"column {spec.name!r}: transform {t.kind} cannot be applied")  # pragma: no cover


def _process_chunk(plan: _Plan, table: pa.Table, stats: dict[str, Any]) -> pa.Table:
    """Quality counts on the rows as read; then opt-outs, the invalid-number policy, transforms."""
    schema = plan.schema
    stats["rows_in"] = table.num_rows
    parsed = None
    if schema.nhs_number_column:
        parsed = tokens.parse_numbers(_column(table, schema.nhs_number_column))
    acc = quality.QualityAccumulator(
        [c.name for c in plan.outputs], {c.name: c.valid_pattern for c in plan.outputs if c.valid_pattern}
    )
    acc.add(table, parsed.reasons() if parsed is not None else None)
    stats["quality"] = acc.state()
    stats.update(opted_out={}, exempt_would_remove={}, rejected={}, invalid_kept={}, rows_opted_out=0)
    ps = token_column = None
    links: _ChunkLinks | None = None
    if parsed is not None:
        if plan.person_links is not None:
            links = _ChunkLinks.find(plan.person_links, _column(table, plan.person_links.record_id_column))
        indexed = links.indexed if links is not None else np.zeros(len(parsed), dtype=bool)
        opt = apply_optouts(_numbers_for_optouts(parsed, links, plan.keys), plan.optout_lists, plan.exempt)
        stats.update(opted_out=opt.removed_by_list, exempt_would_remove=opt.would_remove_by_exempt_list)
        keep = opt.keep
        # Opted-out rows leave before any token is made for them. A row of the person index has its
        # person's pseudonym, so its own number (missing, invalid) is not the policy's business.
        reasons = tokens.reason_counts(parsed.status[keep & ~indexed])
        if schema.invalid_nhs_policy is InvalidNhsPolicy.REJECT:
            stats["rejected"] = reasons
            keep = keep & ((parsed.status == tokens.Status.VALID) | indexed)
        else:
            stats["invalid_kept"] = reasons
        stats["rows_opted_out"] = opt.removed
        if not keep.all():
            table = table.filter(pa.array(keep))
            parsed = parsed.filter(keep)
            links = links.filter(keep) if links is not None else None
        if links is not None:
            ps = tokens.with_person_blocks(
                tokens.internal_pseudonyms(parsed, plan.keys.linkage_key), np.flatnonzero(links.indexed), links.blocks
            )
            token_column = tokens.project_tokens(ps, plan.keys.project_key) if plan.token_outputs else None
        elif plan.token_outputs:
            token_column, ps = tokens.tokens_and_pseudonyms(parsed, plan.keys.linkage_key, plan.keys.project_key)
        else:
            ps = tokens.internal_pseudonyms(parsed, plan.keys.linkage_key)
    columns = {c.effective_output_name: _transform_column(c, table, ps, token_column, plan.keys) for c in plan.outputs}
    if links is not None:
        columns[LINK_METHOD_COLUMN] = pa.array(links.methods, pa.string())
        columns[MATCH_PROBABILITY_COLUMN] = pa.array(links.probabilities, pa.float64())
        stats["linked_by_method"] = dict(Counter(m for m in links.methods if m is not None))
    out = pa.table(columns)
    _refuse_nhs_numbers(plan, out)
    stats["rows_out"] = out.num_rows
    return out


def _refuse_nhs_numbers(plan: _Plan, out: pa.Table) -> None:
    """The backstop behind the schema's rules (ADR 0068): a column about to be written whose values
    are mostly valid NHS numbers stops the extract, whatever its name, role or rule ("ref", kept).
    Checked on every chunk before its part is written; the message names the column, never a value."""
    for spec in plan.outputs:
        if spec.effective_transform.kind in _TOKEN_TRANSFORMS:
            continue  # letters made from a key, never digits
        if tokens.mostly_valid_numbers(out.column(spec.effective_output_name)):
            raise IdentifierInOutput(
                f"dataset {plan.schema.name!r}: column {spec.name!r} would put NHS numbers in the extract "
                "(most of its values pass the NHS number check digit); its custodian must make it the NHS "
                "number column (tokenised) or drop it"
            )


def _numbers_for_optouts(
    parsed: tokens.ParsedNumbers, links: _ChunkLinks | None, keys: ExtractKeys
) -> tokens.ParsedNumbers:
    """Opt-outs follow the person: a row of the person index whose person holds a trusted NHS number
    is checked against the lists by that number (so a social care record without a number of a
    person who opted out leaves too); every other row by its own number."""
    if links is None or not links.indexed.any():
        return parsed
    digits, has = tokens.person_numbers(links.blocks, keys.linkage_key)
    rows = np.flatnonzero(links.indexed)[has]
    if not rows.size:
        return parsed
    out_digits, status = parsed.digits.copy(), parsed.status.copy()
    out_digits[rows] = digits[has]
    status[rows] = tokens.Status.VALID
    return tokens.ParsedNumbers(out_digits, status, parsed.raw)


LINK_METHOD_COLUMN = "link_method"
MATCH_PROBABILITY_COLUMN = "match_probability"


@dataclass(frozen=True)
class _ChunkLinks:
    """The person index's answer for one chunk's rows (row order)."""

    indexed: np.ndarray  # bool per row
    blocks: np.ndarray  # (indexed rows, 16) person pseudonyms
    methods: list[str | None]
    probabilities: list[float | None]

    @classmethod
    def find(cls, links: PersonLinks, record_ids: pa.Array) -> _ChunkLinks:
        found = [links.records.get(str(r)) if r is not None else None for r in record_ids.to_pylist()]
        blocks = b"".join(e.person_pseudonym for e in found if e is not None)
        return cls(
            np.array([e is not None for e in found], dtype=bool),
            np.frombuffer(blocks, dtype=np.uint8).reshape(-1, tokens.BLOCK_BYTES),
            [e.method if e is not None else None for e in found],
            [e.match_probability if e is not None else None for e in found],
        )

    def filter(self, keep: np.ndarray) -> _ChunkLinks:
        kept_indexed = keep[self.indexed]
        return _ChunkLinks(
            self.indexed[keep],
            self.blocks[kept_indexed],
            [m for m, k in zip(self.methods, keep, strict=True) if k],
            [p for p, k in zip(self.probabilities, keep, strict=True) if k],
        )


# --------------------------------------------------------------------------------------------------
# A whole run


def _plan_fingerprint(plan: _Plan, options: ExtractOptions) -> str:
    spec = {
        "format": MANIFEST_FORMAT,
        "schema": plan.schema.fingerprint(),
        "outputs": plan.describe(),
        "k_quasi_identifiers": plan.quasi_outputs,
        "chunk_rows": options.chunk_rows,
        "optouts": [(o.name, o.fingerprint()) for o in plan.optout_lists],
        "exempt": sorted(plan.exempt),
        "k": options.k,
        "suppress": options.suppress_below_k,
        # Only a delivery's own dialect is named, so extracts of comma-separated UTF-8 keep their fingerprint.
        **({} if options.default_csv_dialect else {"csv_dialect": list(options.csv_dialect)}),
        "key_id": plan.keys.key_id,
        "key_fingerprints": [
            tokens.key_fingerprint(plan.keys.linkage_key),
            tokens.key_fingerprint(plan.keys.project_key),
        ],
    }
    if plan.person_links is not None:  # absent otherwise, so unlinked extracts keep their fingerprint
        spec["person_index"] = [plan.person_links.run_id, plan.person_links.record_id_column]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _built(options: ExtractOptions, fingerprint: str) -> dict[str, Any] | None:
    """The manifest if this very extract is already built in its folder; refuses a different one."""
    manifest_path = options.output_dir / "manifest.json"
    if not manifest_path.exists():
        return None
    existing = json.loads(manifest_path.read_text())
    same_source = existing["source"]["sha256"] == file_sha256(options.source_file)
    if existing.get("plan_fingerprint") == fingerprint and same_source:
        return existing
    raise ExtractError("the output directory holds a different extract")


def _chunk_done(work: Path, data: Path, index: int) -> dict[str, Any] | None:
    """The checkpoint of a chunk if it and its part agree, else None (the chunk must be redone).

    The hash check is what makes an fsync per part unnecessary: a part torn by a crash or a power
    cut no longer matches its checkpoint and is simply made again.
    """
    checkpoint = work / f"chunk-{index:06d}.json"
    part = data / _PART.format(index)
    if not checkpoint.exists() or not part.exists():
        return None
    stats = json.loads(checkpoint.read_text())
    if stats.get("part_sha256") != file_sha256(part):
        return None
    return stats


class _BackgroundHash:
    """Hash the source on another thread while chunks are processed (hashlib releases the GIL)."""

    def __init__(self, source: SourceFile, pool: ThreadPoolExecutor) -> None:
        self._future: Future[str] = pool.submit(file_sha256, source)

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> str:
        return self._future.result()


def _commit_chunk(plan: _Plan, part: Path, checkpoint: Path, result: pa.Table, stats: dict[str, Any]) -> pa.Table:
    """Count the k groups, write a part, then its checkpoint (the commit point); returns the counts.

    Runs on the writer thread, overlapping the next chunk: Arrow releases the GIL while it works."""
    counts = kanonymity.group_counts(result, plan.quasi_outputs)
    _write_atomic(part, lambda p: _write_part(result, p, plan.token_outputs))
    stats["part_sha256"] = file_sha256(part)
    stats["part_rows"] = result.num_rows
    _write_json(checkpoint, stats)
    return counts


def run_extract(options: ExtractOptions, *, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Build (or finish building) one extract and return its manifest (also written as manifest.json).

    Safe to call again after a crash with the same options: finished chunks are kept, the rest are
    made, and the result is identical. Called with different options on a half-built directory it
    refuses rather than mix two plans.
    """
    source, out, chunk_rows, schema = options.source, options.output_dir, options.chunk_rows, options.schema
    fmt = _source_format(source)
    plan = _Plan.build(options)
    plan_fp = _plan_fingerprint(plan, options)

    manifest_path = out / "manifest.json"
    work, data = out / ".work", out / "data"
    existing = _built(options, plan_fp)
    if existing is not None:
        return existing  # already built: a repeated job is a no-op
    run_file = work / "run.json"
    previous = json.loads(run_file.read_text()) if run_file.exists() else None
    if previous is not None and previous.get("plan_fingerprint") != plan_fp:
        raise ExtractError("the output directory holds a half-built extract of a different plan")
    work.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    recorded_sha = previous.get("source_sha256") if previous else None
    _write_json(run_file, {"plan_fingerprint": plan_fp, "source_sha256": recorded_sha})

    def check_source(sha: str) -> None:
        """Parts made from another version of the source must never be mixed with these."""
        nonlocal recorded_sha
        if recorded_sha is not None and recorded_sha != sha:
            raise ExtractError("the source changed since the interrupted run; clear the output directory")
        if recorded_sha is None:
            recorded_sha = sha
            _write_json(run_file, {"plan_fingerprint": plan_fp, "source_sha256": sha})

    total = _parquet_rows(options.source_file) if fmt == "parquet" else None
    chunk_stats: list[dict[str, Any]] = []
    partial_counts: list[pa.Table] = []
    rows_read = resumed = 0
    # One thread hashes the source, one writes parts: both overlap with the next chunk's work.
    with ThreadPoolExecutor(max_workers=1) as hasher, ThreadPoolExecutor(max_workers=1) as writer:
        source_hash = _BackgroundHash(options.source_file, hasher)
        pending: Future[pa.Table] | None = None
        try:
            batches = _batches(options.source_file, fmt, plan.read_columns, plan.text_columns(), chunk_rows,
                               options.csv_dialect)
            for index, table in enumerate(_chunks(batches, chunk_rows)):
                stats = _chunk_done(work, data, index)
                if stats is None:
                    stats = {"index": index}
                    result = _process_chunk(plan, table, stats)
                    if pending is not None:
                        partial_counts.append(pending.result())  # parts commit in order, one at a time
                    part, checkpoint = data / _PART.format(index), work / f"chunk-{index:06d}.json"
                    pending = writer.submit(_commit_chunk, plan, part, checkpoint, result, stats)
                else:
                    resumed += 1
                    done = pq.read_table(data / _PART.format(index), columns=plan.quasi_outputs)
                    partial_counts.append(kanonymity.group_counts(done, plan.quasi_outputs))
                chunk_stats.append(stats)
                if source_hash.done():
                    check_source(source_hash.result())
                rows_read += table.num_rows
                if progress is not None:
                    progress(Progress(schema.name, index + 1, rows_read, total, resumed))
            if pending is not None:
                partial_counts.append(pending.result())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Arrow's messages can quote a cell; ours names only the dataset.
            raise ExtractError(f"dataset {schema.name!r}: the source does not match its schema") from None
        except IdentifierInOutput:
            if pending is not None:
                pending.exception()  # the part under way is written before what was written goes
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
            raise
        source_sha = source_hash.result()
    check_source(source_sha)

    counts = kanonymity.merge_counts(partial_counts, plan.quasi_outputs)
    manifest = _finalise(plan, options, plan_fp, chunk_stats, counts, source_sha)
    _write_json(manifest_path, manifest)
    shutil.rmtree(work, ignore_errors=True)  # checkpoints are only for resuming; the manifest has it all
    return manifest


def _finalise(
    plan: _Plan,
    options: ExtractOptions,
    fingerprint: str,
    chunk_stats: list[dict[str, Any]],
    counts: pa.Table,
    source_sha: str,
) -> dict[str, Any]:
    """The end of every build, single or merged: whole-extract k-anonymity report and suppression,
    merged quality and opt-out counts, and the manifest (returned; the caller writes it)."""
    data, k, suppress = options.output_dir / "data", options.k, options.suppress_below_k
    k_report: dict[str, Any] = {
        "quasi_identifiers": plan.quasi_outputs,
        "before": kanonymity.report(counts, k),
    }
    suppressed_rows = 0
    part_sha = {s["index"]: s["part_sha256"] for s in chunk_stats}
    part_rows = {s["index"]: s["part_rows"] for s in chunk_stats}
    if suppress:
        small = kanonymity.small_group_keys(counts, plan.quasi_outputs, k)
        for stats in chunk_stats:
            part = data / _PART.format(stats["index"])
            kept, removed = kanonymity.suppress(pq.read_table(part), plan.quasi_outputs, small)
            if removed:
                # A crash here leaves a part that no longer matches its checkpoint: the next run
                # remakes that chunk and suppresses it again, reaching the same bytes.
                _write_atomic(part, partial(_write_part, kept, token_columns=plan.token_outputs))
                part_sha[stats["index"]] = file_sha256(part)
                part_rows[stats["index"]] = kept.num_rows
            suppressed_rows += removed
        k_report["after"] = kanonymity.report(kanonymity.suppressed_counts(counts, k), k)
        k_report["suppressed_rows"] = suppressed_rows
    expected = {_PART.format(s["index"]) for s in chunk_stats}
    if {p.name for p in data.glob("part-*.parquet")} - expected:
        raise ExtractError("unexpected part files in the output directory")

    acc = quality.QualityAccumulator(
        [c.name for c in plan.outputs], {c.name: c.valid_pattern for c in plan.outputs if c.valid_pattern}
    )
    rejected: Counter[str] = Counter()
    linked: Counter[str] = Counter()
    invalid_kept: Counter[str] = Counter()
    opted: Counter[str] = Counter()
    exempt: Counter[str] = Counter()
    for stats in chunk_stats:
        acc.merge(stats["quality"])
        rejected.update(stats["rejected"])
        linked.update(stats.get("linked_by_method", {}))
        invalid_kept.update(stats["invalid_kept"])
        opted.update(stats["opted_out"])
        exempt.update(stats["exempt_would_remove"])
    parts = [{"file": f"data/{_PART.format(i)}", "rows": part_rows[i], "sha256": part_sha[i]} for i in sorted(part_sha)]
    extract_digest = hashlib.sha256("".join(p["sha256"] for p in parts).encode()).hexdigest()
    return {
        "format": MANIFEST_FORMAT,
        "dataset": plan.schema.name,
        "key_id": plan.keys.key_id,
        "invalid_nhs_policy": str(plan.schema.invalid_nhs_policy) if plan.schema.nhs_number_column else None,
        "rows": {
            "in": sum(s["rows_in"] for s in chunk_stats),
            "out": sum(p["rows"] for p in parts),
            "opted_out": sum(s["rows_opted_out"] for s in chunk_stats),
            "rejected": sum(rejected.values()),
            "rejected_by_reason": dict(sorted(rejected.items())),
            "kept_in_invalid_namespace_by_reason": dict(sorted(invalid_kept.items())),
            "suppressed_for_k": suppressed_rows,
        },
        "optouts": {
            "applied": [
                {"name": o.name, "list_sha256": o.fingerprint(), "rows_removed": opted[o.name], **_version(o)}
                for o in plan.optout_lists
                if o.name not in plan.exempt
            ],
            "exempt": [
                {"name": o.name, "list_sha256": o.fingerprint(), "rows_not_removed": exempt[o.name], **_version(o)}
                for o in plan.optout_lists
                if o.name in plan.exempt
            ],
        },
        "columns": plan.describe(),
        "output_schema": [{"name": f.name, "type": str(f.type)} for f in _part_schema(data, chunk_stats)],
        "k_anonymity": k_report,
        "quality": acc.report(),
        "parts": parts,
        "extract_sha256": extract_digest,
        "plan_fingerprint": fingerprint,
        "project_id": options.project_id,
        "source": {
            "name": options.source.name,
            "format": _source_format(options.source),
            "sha256": source_sha,
            "bytes": options.source_file.size(),
        },
        "chunk_rows": options.chunk_rows,
        **({"person_index": {
            "run_id": plan.person_links.run_id,
            "rows_linked_by_method": dict(sorted(linked.items())),
            "columns": [LINK_METHOD_COLUMN, MATCH_PROBABILITY_COLUMN],
        }} if plan.person_links is not None else {}),
    }


def _version(optout: OptOutList) -> dict[str, str]:
    return {"version": optout.version} if optout.version else {}


def _part_schema(data: Path, chunk_stats: list[dict[str, Any]]) -> list[pa.Field]:
    if not chunk_stats:
        return []
    return list(pq.read_schema(data / _PART.format(chunk_stats[0]["index"])))


# --------------------------------------------------------------------------------------------------
# Several datasets for one project


def read_patient_ids(extract_dir: str | os.PathLike[str], column: str = "patient_token") -> pa.Array:
    """Distinct non-null tokens of an extract, read part by part (memory follows patients, not rows)."""
    distinct: pa.Array = pa.array([], pa.string())
    for part in sorted((Path(extract_dir) / "data").glob("part-*.parquet")):
        values = pq.read_table(part, columns=[column])[column].combine_chunks().drop_null()
        distinct = pc.unique(pa.concat_arrays([distinct, pc.cast(values, pa.string())]))
    return distinct


def run_linked_extract(
    datasets: Sequence[ExtractOptions],
    output_dir: str | os.PathLike[str],
    *,
    runner: Callable[..., dict[str, Any]] | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Extract several datasets for one project with the same keys, so one patient carries the same
    token in every table, and report the linkage rate between each pair in
    ``output_dir/linkage.json``. Each dataset's options name its own folder (by convention
    ``output_dir/<dataset name>/``); ``runner`` (default ``run_extract``) builds one dataset, and
    ``partitions.finish_extract`` merges partitioned ones."""
    build = runner or run_extract
    names = [d.schema.name for d in datasets]
    if len(set(names)) != len(names):
        raise ExtractError("linked datasets need distinct names")
    if len({d.keys for d in datasets}) > 1:
        raise ExtractError("linked datasets need the same keys")
    out = Path(output_dir)
    manifests = {d.schema.name: build(d, progress=progress) for d in datasets}
    folders = {d.schema.name: d.output_dir for d in datasets}
    tokenised = [
        n for n, m in manifests.items() if any(c["transform"]["kind"] == TransformKind.NHS_TOKEN for c in m["columns"])
    ]
    ids = {}
    for n in tokenised:
        column = next(c["output"] for c in manifests[n]["columns"] if c["transform"]["kind"] == TransformKind.NHS_TOKEN)
        ids[n] = read_patient_ids(folders[n], column)
    linkage = [
        {"left": a, "right": b, **quality.linkage_rate(ids[a], ids[b])}
        for i, a in enumerate(tokenised)
        for b in tokenised[i + 1 :]
    ]
    summary = {
        "format": MANIFEST_FORMAT + "+linked",
        "key_id": datasets[0].keys.key_id if datasets else None,
        "datasets": {
            n: {"extract_sha256": m["extract_sha256"], "rows_out": m["rows"]["out"]} for n, m in manifests.items()
        },
        "linkage": linkage,
    }
    _write_json(out / "linkage.json", summary)
    return {"summary": summary, "manifests": manifests}


__all__ = [
    "DEFAULT_CHUNK_ROWS",
    "ExtractError",
    "ExtractKeys",
    "ExtractOptions",
    "IdentifierInOutput",
    "Progress",
    "file_sha256",
    "read_patient_ids",
    "run_extract",
    "run_linked_extract",
]
