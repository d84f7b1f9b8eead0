"""What one dataset's extract is built from, in one frozen value.

``run_extract``, the partition steps (``prepare_partitioned``, ``run_partition``,
``merge_partitions``) and ``finish_extract`` all take an ``ExtractOptions``: the service builds it
once per dataset and every job of the extract (the single build, each partition, the merge) gets the
same value, so the steps cannot drift apart on an option. Pure: no Flask, SQLAlchemy or Celery.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pseudonymisation import tokens
from pseudonymisation.optouts import OptOutList
from pseudonymisation.schema import DatasetSchema
from pseudonymisation.sources import Opener, SourceFile, plain_open

DEFAULT_CHUNK_ROWS = 1_000_000


class ExtractError(RuntimeError):
    """An extract that cannot run as asked. Messages name columns and chunks, never values."""


class IdentifierInOutput(ExtractError):
    """A column the extract would write holds raw NHS numbers, whatever the schema calls it (ADR 0068).

    A refusal, not a fault: running again gives the same answer, so the extract fails at once."""


@dataclass(frozen=True)
class ExtractKeys:
    """The keys one extract uses. ``repr`` and the manifest show only ``key_id``."""

    linkage_key: bytes = field(repr=False)
    project_key: bytes = field(repr=False)
    key_id: str = ""

    def __post_init__(self) -> None:
        if not self.key_id:
            object.__setattr__(self, "key_id", tokens.key_fingerprint(self.project_key))


@dataclass(frozen=True)
class IndexedRecord:
    """One record of the person index, as an extract needs it: the person's 16-byte pseudonym (the
    block the project token is made from), how the record was linked and how surely."""

    person_pseudonym: bytes = field(repr=False)
    method: str
    match_probability: float | None


@dataclass(frozen=True)
class PersonLinks:
    """The person index for one dataset of an extract: the column holding each row's record id, the
    indexed records by id, and the run they come from. A row found here takes its person's token and
    carries ``link_method`` and ``match_probability``; a row not found keeps its own number's token."""

    record_id_column: str
    run_id: str
    records: Mapping[str, IndexedRecord] = field(repr=False)


@dataclass(frozen=True)
class ExtractOptions:
    """One dataset's extract: the source, its schema and approved columns, where the extract goes,
    the keys, and how it is built.

    Every option that shapes the extract (schema, approved columns, keys, chunk size, opt-out lists
    and exemptions, k and its columns, suppression) is in the plan fingerprint, so steps given
    different options refuse to share a folder. ``k_quasi_identifiers`` (output names) narrows the
    columns the k-anonymity report groups on; by default it is every quasi-identifier in the
    extract. ``staging_dir`` is where a long CSV source is copied (Arrow IPC) before it is split
    over workers: the copy holds source values, identifiers included, so the folder must lie
    outside any folder a workspace mounts. Without it a CSV source is never split.
    """

    source: Path
    schema: DatasetSchema
    approved_columns: Sequence[str]
    output_dir: Path
    keys: ExtractKeys
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    optout_lists: Sequence[OptOutList] = ()
    exempt_optout_lists: Collection[str] = frozenset()
    k: int = 5
    k_quasi_identifiers: Sequence[str] | None = None
    suppress_below_k: bool = False
    project_id: str | None = None
    staging_dir: Path | None = None
    person_links: PersonLinks | None = None
    # How a CSV source is written (a delivery's dialect, sniffed or set by its custodian).
    csv_delimiter: str = ","
    csv_quote_char: str = '"'
    csv_encoding: str = "utf-8"
    # How the source's plaintext is opened: as it is, or through its seal (pseudonymisation.zone).
    source_opener: Opener = plain_open

    @property
    def source_file(self) -> SourceFile:
        return SourceFile(self.source, self.source_opener)

    @property
    def csv_dialect(self) -> tuple[str, str, str]:
        return (self.csv_delimiter, self.csv_quote_char, self.csv_encoding)

    @property
    def default_csv_dialect(self) -> bool:
        return self.csv_dialect == (",", '"', "utf-8")

    def __post_init__(self) -> None:
        if self.chunk_rows < 1 or self.k < 1:
            raise ExtractError("chunk_rows and k must be positive")
        # Copies, so a list the caller changes later cannot change a value already handed out.
        fixed = {
            "source": Path(self.source),
            "output_dir": Path(self.output_dir),
            "approved_columns": tuple(self.approved_columns),
            "optout_lists": tuple(self.optout_lists),
            "exempt_optout_lists": frozenset(self.exempt_optout_lists),
            "k_quasi_identifiers": None if self.k_quasi_identifiers is None else tuple(self.k_quasi_identifiers),
            "staging_dir": None if self.staging_dir is None else Path(self.staging_dir),
        }
        for name, value in fixed.items():
            object.__setattr__(self, name, value)


__all__ = ["DEFAULT_CHUNK_ROWS", "ExtractError", "ExtractKeys", "ExtractOptions", "IndexedRecord", "PersonLinks"]
