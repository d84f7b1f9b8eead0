"""The person index core: which records from several sources are the same person.

Pure: records in, one person per record out, with how each was linked and how sure the link is. No
Flask, no SQLAlchemy, no database of the control plane (import-linter enforces); the job that stores
the index and the token scheme that reads it are the edges' business.

Two stages (docs/pseudonymisation/linkage.md, ADR 0015):

1. **Deterministic.** Records whose NHS number passes the modulus-11 check (``nhs_number.is_valid``)
   are grouped by that number. A record whose number *conflicts* with the rest of its group (its name
   differs from the group's, and so does its date of birth or sex) is treated as if
   it had no number: a mistyped or borrowed number must not pull a stranger into someone's record.
2. **Probabilistic.** Every record goes through a Splink model on the DuckDB backend: comparisons on
   first name and surname (with swapped names and term-frequency adjustments for common names), date
   of birth, sex and postcode; the u probabilities estimated by random sampling, the m probabilities
   by expectation maximisation, no labels. Scored pairs at or above ``threshold`` join clusters,
   strongest first, except that two clusters holding different valid NHS numbers are never joined
   (two valid, non-conflicting numbers are two people).

The work per record is done by column (ADR 0040): ``linkage_cleaning`` cleans in one DuckDB query,
``linkage_anchors`` is stage 1 as one query, and ``linkage_clusters`` joins people with a union-find
that loops over the pairs that can join, not over the records.

Never logs an identifier: this module logs only counts, and Splink's own logger is held at WARNING
for the run (its INFO and DEBUG messages carry SQL, which may in future carry literal values).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd
import splink.comparison_library as cl
from splink import DuckDBAPI, Linker, SettingsCreator, block_on
from splink.blocking_rule_library import CustomRule
from splink.internals.exceptions import EMTrainingException

from pseudonymisation import linkage_anchors, linkage_cleaning, linkage_clusters

_log = logging.getLogger(__name__)

# Bumped whenever the model's comparisons, blocking rules or training change, so the person index
# does not take a run built by the old model for one of the same sources (ADR 0035). 2: blocking on
# the transposed date of birth, EM's second session on first name and surname.
MODEL_VERSION = 2

Method = Literal["deterministic", "probabilistic", "clerical", "singleton"]
Backend = Literal["duckdb", "spark"]
METHODS: tuple[Method, ...] = ("deterministic", "probabilistic", "clerical", "singleton")


class TooFewToTrain(ValueError):
    """The input holds too few comparable pairs for expectation maximisation: link whole sources."""


@dataclass(frozen=True)
class Record:
    """One source's record of a person. Any identifier may be missing (None or blank)."""

    source: str
    record_id: str
    nhs_number: str | None
    first_name: str | None
    surname: str | None
    date_of_birth: date | str | None
    sex: str | None
    postcode: str | None


@dataclass(frozen=True)
class Link:
    """Where one record landed: its person, how it got there and how sure the link is.

    ``match_probability`` is 1.0 for a deterministic link or a linkage officer's (``clerical``), the
    probability of the strongest accepted pair touching the record for a probabilistic one, and None
    for a singleton (linked to nobody). ``anchored`` says the record's own valid NHS number was
    trusted (not missing, invalid or conflicting with the rest of its number's group).
    """

    source: str
    record_id: str
    person_id: int
    method: Method
    match_probability: float | None
    anchored: bool = False


@dataclass(frozen=True)
class LinkageSettings:
    """The knobs a custodian may turn; defaults are the ones ADR 0015 argues for."""

    threshold: float = 0.95
    u_max_pairs: float = 2e6
    seed: int = 20
    em_max_iterations: int = 25
    # DuckDB threads; None lets DuckDB choose. Rounding the probabilities (below) keeps the index
    # the same from run to run whatever the thread count.
    threads: int | None = None
    probability_decimals: int = 9
    # Pairs scored in [review_floor, threshold) are the uncertain band a linkage officer reviews.
    review_floor: float = 0.5
    # Pairs below this probability are not even counted in the match weight distribution.
    histogram_floor: float = 0.001
    # DuckDB's memory ceiling (e.g. "12GB"; None: DuckDB's 80% of the machine) and where it spills
    # the scored pairs beyond it (None: DuckDB's choice).
    duckdb_memory_limit: str | None = None
    duckdb_temp_directory: str | None = None
    # Where Splink runs the model: "duckdb" (one machine, in process) or "spark" (Splink's Spark
    # backend; pyspark is the optional ``spark`` extra). Same model, same clusters (ADR 0031).
    backend: Backend = "duckdb"
    # The Spark master when the core starts the session itself: "local[2]" runs Spark in this
    # process's JVM on two cores; a cluster's URL for a larger deployment. An active session wins.
    spark_master: str = "local[2]"
    # Where Spark writes Splink's intermediate tables (parquet) to cut their lineage; None keeps
    # them in Spark's memory (enough in local mode).
    spark_checkpoint_dir: str | None = None


Decision = Literal["match", "no_match"]
BACKENDS: tuple[Backend, ...] = ("duckdb", "spark")
RecordKey = tuple[str, str]


@dataclass(frozen=True)
class Candidate:
    """A pair in the uncertain band: scored at or above ``review_floor`` but below the threshold.
    ``left`` sorts before ``right``; no identifier other than the record keys is carried."""

    left: RecordKey
    right: RecordKey
    match_probability: float
    match_weight: float


@dataclass(frozen=True)
class LinkageResult:
    """One run of the core: a link per record (input order), the uncertain band, and the counts of
    scored pairs per whole match weight (``{weight: pairs}``, pairs at or above ``histogram_floor``)."""

    links: list[Link]
    candidates: list[Candidate]
    weight_histogram: dict[int, int]
    model: dict[str, Any] | None = None  # the model used (trained here unless one was given)


def train(records: Sequence[Record], settings: LinkageSettings | None = None) -> dict[str, Any]:
    """Train the probabilistic model on whole sources and return it (Splink's settings with the
    trained m, u and prior: rules and numbers, no record's values), for ``link(..., model=)``."""
    settings = settings or LinkageSettings()
    with duckdb_connection(settings) as connection:
        prepared = linkage_cleaning.prepare(records, connection)
    _, model, _ = _probabilistic_edges(prepared.splink_frame(), settings, None)
    return model


def link(
    records: Sequence[Record], settings: LinkageSettings | None = None, model: dict[str, Any] | None = None
) -> list[Link]:
    """One ``Link`` per record, in the order given; the same input always gives the same output.

    Without ``model`` the model is trained on ``records`` (whole sources); with one from ``train``,
    it is used as it is, so a small batch can be linked with a model trained on the whole.
    """
    return link_records(records, settings, model).links


def link_records(
    records: Sequence[Record],
    settings: LinkageSettings | None = None,
    model: dict[str, Any] | None = None,
    decisions: Mapping[frozenset[RecordKey], Decision] | None = None,
) -> LinkageResult:
    """``link`` with what the person index keeps besides the links: the uncertain band and the match
    weight distribution. ``decisions`` are a linkage officer's earlier verdicts on pairs: a ``match``
    joins the two records' people (unless they hold two different valid NHS numbers), a ``no_match``
    keeps the two records in different people whatever path of scored pairs might join them.

    The work per record runs in DuckDB or as whole-array operations (ADR 0040): cleaning
    (``linkage_cleaning``), the deterministic stage (``linkage_anchors``), Splink, and the clustering
    (``linkage_clusters``), whose loop runs per joining pair."""
    settings = settings or LinkageSettings()
    with duckdb_connection(settings) as connection:
        prepared = linkage_cleaning.prepare(records, connection)
        anchored = linkage_anchors.anchors(prepared.table, connection)
    _log.info("%d records carry a valid NHS number; %d of them conflict with their group",
              anchored.numbered, anchored.conflicting)
    count = len(prepared)
    order = prepared.order
    used: dict[str, Any] | None
    if count > 1:
        scored, used, histogram = _probabilistic_edges(prepared.splink_frame(), settings, model)
    else:
        scored, used, histogram = _Scored.empty(), model, {}

    named = {key for pair in (decisions or {}) for key in pair}
    position: dict[RecordKey, int] = {}
    if named:  # the positions of the records a decision names: a pass over the records only then
        for p, i in enumerate(order.tolist()):
            key = (records[i].source, records[i].record_id)
            if key in named:
                position[key] = p
    forced: list[tuple[int, int]] = []
    refused: set[tuple[int, int]] = set()
    decided: set[tuple[int, int]] = set()
    for pair, verdict in sorted((decisions or {}).items(), key=lambda d: sorted(d[0])):
        ends = sorted(position[k] for k in pair if k in position)
        if len(ends) != 2:
            continue  # a decision about a record no longer in the input
        decided.add((ends[0], ends[1]))
        if verdict == "match":
            forced.append((ends[0], ends[1]))
        else:
            refused.add((ends[0], ends[1]))
    low, high = np.minimum(scored.left, scored.right), np.maximum(scored.left, scored.right)
    accept = scored.probability >= settings.threshold
    if refused:
        accept &= np.fromiter(((a, b) not in refused for a, b in zip(low.tolist(), high.tolist(), strict=True)),
                              dtype=bool, count=len(low))
    clusters = linkage_clusters.cluster(anchored.codes, scored.probability[accept], scored.left[accept],
                                        scored.right[accept], settings.threshold, forced, sorted(refused))
    person = clusters.person
    band = np.flatnonzero((scored.probability >= settings.review_floor) & (scored.probability < settings.threshold)
                          & (person[low] != person[high]))
    band = band[np.lexsort((high[band], low[band], -scored.probability[band]))]
    candidates = [
        Candidate((records[order[a]].source, records[order[a]].record_id),
                  (records[order[b]].source, records[order[b]].record_id), p, w)
        for p, w, a, b in zip(scored.probability[band].tolist(), scored.weight[band].tolist(), low[band].tolist(),
                              high[band].tolist(), strict=True)
        if (a, b) not in decided
    ]

    links = _links(records, prepared, anchored.codes, clusters)
    methods = np.bincount(clusters.method, minlength=len(METHODS))
    _log.info(
        "linked %d records into %d people: %d deterministic, %d probabilistic, %d singleton, %d in review band",
        count, int(person.max()) if count else 0, methods[linkage_clusters.DETERMINISTIC],
        methods[linkage_clusters.PROBABILISTIC], methods[linkage_clusters.SINGLETON], len(candidates),
    )
    return LinkageResult(links, candidates, dict(sorted(histogram.items())), used)


def _links(
    records: Sequence[Record], prepared: linkage_cleaning.Prepared, codes: np.ndarray,
    clusters: linkage_clusters.Clusters,
) -> list[Link]:
    """One Link per record, in the input's order (the arrays are in the cleaned table's)."""
    position = np.empty(len(prepared), dtype=np.int64)
    position[prepared.order] = np.arange(len(prepared), dtype=np.int64)
    probability = clusters.probability[position].astype(object)
    probability[clusters.method[position] == linkage_clusters.SINGLETON] = None
    method = np.asarray(METHODS, dtype=object)[clusters.method[position]]
    return [
        Link(r.source, r.record_id, p, m, q, a)
        for r, p, m, q, a in zip(records, clusters.person[position].tolist(), method.tolist(), probability.tolist(),
                                 (codes[position] >= 0).tolist(), strict=True)
    ]


def estimate_quality(
    records: Sequence[Record], settings: LinkageSettings | None = None, model: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Precision and recall of the probabilistic stage, estimated without labels: the records that
    carry a valid NHS number are linked again with their numbers hidden, and the pairs that finds are
    compared with the pairs their numbers make. Returns counts and ratios only (no identifier).

    An estimate, not the truth: records with numbers are cleaner than records without, and a wrong
    but valid number counts against the linkage here when it is the number that is wrong. Pass the
    ``model`` the run used (``LinkageResult.model``): the numbered records alone are often too few
    pairs to train on.
    """
    settings = settings or LinkageSettings()
    with duckdb_connection(settings) as connection:
        prepared = linkage_cleaning.prepare(records, connection)
    numbers = prepared.table.column("nhs_number").to_pylist()
    row_of = np.empty(len(prepared), dtype=np.int64)
    row_of[prepared.order] = np.arange(len(prepared), dtype=np.int64)
    numbered = linkage_cleaning.numbered_positions(prepared).tolist()
    truth_groups: dict[str, list[RecordKey]] = defaultdict(list)
    for i in numbered:
        truth_groups[numbers[row_of[i]]].append((records[i].source, records[i].record_id))
    hidden = [
        Record(r.source, r.record_id, None, r.first_name, r.surname, r.date_of_birth, r.sex, r.postcode)
        for r in (records[i] for i in numbered)
    ]
    if len(hidden) < 2:
        return {"records": len(hidden), "true_pairs": 0, "found_pairs": 0, "precision": None, "recall": None}
    found_groups: dict[int, list[RecordKey]] = defaultdict(list)
    for lk in link_records(hidden, settings, model).links:
        found_groups[lk.person_id].append((lk.source, lk.record_id))
    actual, predicted = _pairs(truth_groups.values()), _pairs(found_groups.values())
    both = len(actual & predicted)
    return {
        "records": len(hidden),
        "true_pairs": len(actual),
        "found_pairs": len(predicted),
        "precision": round(both / len(predicted), 6) if predicted else None,
        "recall": round(both / len(actual), 6) if actual else None,
    }


def _pairs(groups: Iterable[list[RecordKey]]) -> set[tuple[RecordKey, RecordKey]]:
    out: set[tuple[RecordKey, RecordKey]] = set()
    for members in groups:
        ordered = sorted(members)
        out.update((a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:])
    return out


# --- stage 2: probabilistic (Splink on DuckDB) ---------------------------------------------------

def _train(linker: Any, settings: LinkageSettings, count: int) -> None:
    """u by seeded random sampling, m by EM blocked on date of birth, then on first name and surname:
    no labels. Each session's pairs grow with the records per date of birth or per full name (about
    65 and 30 million at 1M x 1M), not with the records per surname (billions: ADR 0035)."""
    try:
        linker.training.estimate_u_using_random_sampling(max_pairs=settings.u_max_pairs, seed=settings.seed)
        linker.training.estimate_parameters_using_expectation_maximisation(block_on("date_of_birth"))
        linker.training.estimate_parameters_using_expectation_maximisation(block_on("first_name", "surname"))
    except (EMTrainingException, ValueError) as error:
        # Splink's messages name rules and levels, never values; ours names only the count.
        raise TooFewToTrain(f"{count} records are too few to train the linkage model without labels") from error


def _prior(frame: pd.DataFrame) -> float:
    """The chance two random records match, from pairs agreeing exactly on name and date of birth.

    Those exact pairs are taken to find 70% of the true ones (typos, swaps and transposed dates hide
    the rest). The same estimate as Splink's own, computed here so that an input with no exact pair
    (a small batch, one source) still gets a usable prior: at least one pair in all of them.
    """
    n = len(frame)
    all_pairs = n * (n - 1) / 2
    keyed = frame.dropna(subset=["first_name", "surname", "date_of_birth"])
    sizes = keyed.groupby(["first_name", "surname", "date_of_birth"]).size()
    exact_pairs = float((sizes * (sizes - 1) / 2).sum())
    return min(max(exact_pairs / 0.7, 1.0) / all_pairs, 0.5)


@contextlib.contextmanager
def _quiet_splink() -> Iterator[None]:
    splink_logger = logging.getLogger("splink")
    before = splink_logger.level
    splink_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        splink_logger.setLevel(before)


def splink_frame(records: Sequence[Record], settings: LinkageSettings | None = None) -> pd.DataFrame:
    """The table Splink links: one row per cleaned record, in (source, record id) order, ``unique_id``
    its position; public so that the benchmark gives plain Splink the same table."""
    with duckdb_connection(settings or LinkageSettings()) as connection:
        return linkage_cleaning.prepare(records, connection).splink_frame()


def splink_settings(frame: pd.DataFrame, settings: LinkageSettings) -> SettingsCreator:
    """The Splink model the core uses (comparisons, blocking, prior), untrained; public so that the
    benchmark can run plain Splink on exactly the same model."""
    return SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            cl.ForenameSurnameComparison("first_name", "surname", forename_surname_concat_col_name="full_name"),
            cl.DateOfBirthComparison("date_of_birth", input_is_string=True),
            cl.ExactMatch("sex"),
            cl.PostcodeComparison("postcode"),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("date_of_birth"),
            block_on("surname", "first_name"),
            block_on("postcode"),
            # Day and month swapped (the one date error the others miss when the name and postcode
            # differ too): pairs grow with the records per date, not per surname prefix and year of
            # birth (that rule scored about 500 million pairs at 1M x 1M: ADR 0035).
            CustomRule("l.date_of_birth = r.date_of_birth_transposed"),
        ],
        retain_matching_columns=False,
        retain_intermediate_calculation_columns=False,
        max_iterations=settings.em_max_iterations,
        probability_two_random_records_match=_prior(frame),
    )


def train_linker(linker: Any, settings: LinkageSettings, count: int) -> None:
    """Train a Splink linker as the core does (u by sampling, m by EM twice); for the benchmark."""
    _train(linker, settings, count)


@dataclass(frozen=True)
class _Scored:
    """Scored pairs as columns: probability and match weight (rounded), and the two records' positions."""

    probability: np.ndarray
    weight: np.ndarray
    left: np.ndarray
    right: np.ndarray

    @classmethod
    def empty(cls) -> _Scored:
        return cls(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


def _rounded(values: Any, decimals: int) -> np.ndarray:
    # Python's round (correctly rounded), not numpy's (scale, round, unscale), which differs in the
    # last digit for some values: the index must be the same whichever way it was computed.
    return np.array([round(v, decimals) for v in np.asarray(values, dtype=np.float64).tolist()], dtype=np.float64)


def _probabilistic_edges(
    frame: pd.DataFrame, settings: LinkageSettings, trained: dict[str, Any] | None
) -> tuple[_Scored, dict[str, Any], dict[int, int]]:
    """Scored pairs at or above the lower of the review floor and the threshold, the model, and the
    count of pairs per whole match weight (pairs at or above the histogram floor). The pairs below the
    review floor stay in the backend: at a million records they are the most of the hundreds of
    millions scored, and only their counts are kept."""
    model = splink_settings(frame, settings)
    if trained is not None and trained.get("sql_dialect", settings.backend) != settings.backend:
        # The saved model's comparisons are SQL of the backend it was trained on (DuckDB quotes
        # names as Spark quotes strings): train it again on this backend rather than misread it.
        raise ValueError(f"the model was trained on {trained['sql_dialect']}; train it on {settings.backend}")
    with _quiet_splink(), splink_backend(settings) as db_api:
        linker = Linker(register_frame(db_api, frame, settings), dict(trained) if trained is not None else model,
                        log_level=None)
        if trained is None:
            _train(linker, settings, len(frame))
        floor = min(settings.histogram_floor, settings.review_floor, settings.threshold)
        predictions = linker.inference.predict(threshold_match_probability=floor)
        decimals = settings.probability_decimals
        table = predictions.physical_name
        counted = linker.misc.query_sql(
            f"select cast(floor(round(match_weight, {decimals})) as bigint) as w, count(*) as n "  # noqa: S608  # nosec B608 - numbers only
            f"from {table} group by 1", output_type="pandas")
        keep = min(settings.review_floor, settings.threshold) - 10.0 ** -decimals  # rounding below may lift a pair
        kept = linker.misc.query_sql(
            "select match_probability, match_weight, unique_id_l, unique_id_r "  # noqa: S608  # nosec B608
            f"from {table} where match_probability >= {keep!r}", output_type="pandas")
        result = linker.misc.save_model_to_json()
        predictions.drop_table_from_database_and_remove_from_cache()
    histogram = {int(w): int(n) for w, n in zip(counted["w"].tolist(), counted["n"].tolist(), strict=True)}
    scored = _Scored(
        _rounded(kept["match_probability"], decimals), _rounded(kept["match_weight"], decimals),
        kept["unique_id_l"].to_numpy(dtype=np.int64), kept["unique_id_r"].to_numpy(dtype=np.int64),
    )
    _log.info("%d candidate pairs scored, %d kept, %d at or above the threshold", sum(histogram.values()),
              len(scored.probability), int((scored.probability >= settings.threshold).sum()))
    return scored, result, histogram


@contextlib.contextmanager
def duckdb_connection(settings: LinkageSettings) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the settings' threads, memory ceiling and spill folder, closed afterwards."""
    connection = duckdb.connect(":memory:")
    try:
        if settings.threads is not None:
            connection.execute(f"SET threads = {int(settings.threads)}")
        if settings.duckdb_memory_limit is not None:
            connection.execute(f"SET memory_limit = '{_duckdb_size(settings.duckdb_memory_limit)}'")
        if settings.duckdb_temp_directory is not None:
            quoted = settings.duckdb_temp_directory.replace("'", "''")
            connection.execute(f"SET temp_directory = '{quoted}'")
        yield connection
    finally:
        connection.close()


@contextlib.contextmanager
def splink_backend(settings: LinkageSettings) -> Iterator[Any]:
    """Splink's database API for ``settings.backend``: an in-memory DuckDB closed afterwards, or Spark
    (the active session, else one the core starts with ``spark_master`` and Splink's similarity jar;
    left running, since a JVM is slow to start and one process links many times). Public so that the
    benchmark runs plain Splink on the same backend."""
    if settings.backend == "duckdb":
        with duckdb_connection(settings) as connection:
            yield DuckDBAPI(connection)
    elif settings.backend == "spark":
        from splink.backends.spark import SparkAPI  # pyspark is optional: imported only when chosen

        spark = spark_session(settings)
        if settings.spark_checkpoint_dir is not None:
            spark.sparkContext.setCheckpointDir(settings.spark_checkpoint_dir)
        yield SparkAPI(spark_session=spark,
                       break_lineage_method="parquet" if settings.spark_checkpoint_dir else "persist")
    else:
        raise ValueError(f"unknown linkage backend {settings.backend!r}: choose one of {', '.join(BACKENDS)}")


_SIZE = re.compile(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)


def _duckdb_size(text: str) -> str:
    if not _SIZE.fullmatch(text.strip()):
        raise ValueError("duckdb_memory_limit must be a size such as 12GB")
    return text.strip()


def spark_session(settings: LinkageSettings) -> Any:
    """The active Spark session, or a new one on ``settings.spark_master`` with the jar that holds
    Splink's string similarity functions (it ships inside the splink wheel: nothing to download)."""
    from pyspark.sql import SparkSession
    from splink.backends.spark import similarity_jar_location

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    cores = settings.spark_master.removeprefix("local[").removesuffix("]")
    partitions = int(cores) * 2 if cores.isdigit() else 200
    return (
        SparkSession.builder.master(settings.spark_master)
        .appName("tre-person-index")
        .config("spark.jars", similarity_jar_location())
        .config("spark.sql.shuffle.partitions", str(partitions))
        .config("spark.default.parallelism", str(partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )


_FRAME_SCHEMA = ("unique_id long, first_name string, surname string, full_name string, date_of_birth string, "
                 "date_of_birth_transposed string, sex string, postcode string")


def register_frame(db_api: Any, frame: pd.DataFrame, settings: LinkageSettings) -> Any:
    """The frame as the backend's input table. Spark is given the column types: it cannot infer the
    type of a column that is all missing (a source without postcodes)."""
    if settings.backend == "spark":
        spark = db_api.spark
        return db_api.register(spark.createDataFrame(frame, schema=_FRAME_SCHEMA))
    return db_api.register(frame)
