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

Never logs an identifier: this module logs only counts, and Splink's own logger is held at WARNING
for the run (its INFO and DEBUG messages carry SQL, which may in future carry literal values).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import duckdb
import pandas as pd
import splink.comparison_library as cl
from splink import DuckDBAPI, Linker, SettingsCreator, block_on
from splink.blocking_rule_library import CustomRule
from splink.internals.exceptions import EMTrainingException

from pseudonymisation import nhs_number

_log = logging.getLogger(__name__)

# Bumped whenever the model's comparisons, blocking rules or training change, so the person index
# does not take a run built by the old model for one of the same sources (ADR 0035). 2: blocking on
# the transposed date of birth, EM's second session on first name and surname.
MODEL_VERSION = 2

Method = Literal["deterministic", "probabilistic", "clerical", "singleton"]
Backend = Literal["duckdb", "spark"]
METHODS: tuple[Method, ...] = ("deterministic", "probabilistic", "clerical", "singleton")

_NOT_LETTERS = re.compile(r"[^A-Z]")
_NOT_ALNUM = re.compile(r"[^A-Z0-9]")


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


@dataclass(frozen=True)
class _Clean:
    first_name: str | None
    surname: str | None
    date_of_birth: str | None
    sex: str | None
    postcode: str | None
    nhs: str | None


def train(records: Sequence[Record], settings: LinkageSettings | None = None) -> dict[str, Any]:
    """Train the probabilistic model on whole sources and return it (Splink's settings with the
    trained m, u and prior: rules and numbers, no record's values), for ``link(..., model=)``."""
    settings = settings or LinkageSettings()
    _, clean = _ordered(records)
    _, model, _ = _probabilistic_edges(clean, settings, None)
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
    keeps the two records in different people whatever path of scored pairs might join them (a valid
    NHS number both hold still links them)."""
    settings = settings or LinkageSettings()
    keys = [(r.source, r.record_id) for r in records]
    ordered, clean = _ordered(records)

    anchors = _deterministic_anchors(clean)
    scored, used, histogram = _probabilistic_edges(clean, settings, model) if len(clean) > 1 else ([], model, {})
    index_of = {(r.source, r.record_id): i for i, r in enumerate(ordered)}
    forced: list[tuple[int, int]] = []
    refused: set[frozenset[int]] = set()
    for pair, verdict in sorted((decisions or {}).items(), key=lambda d: sorted(d[0])):
        ends = sorted(index_of[k] for k in pair if k in index_of)
        if len(ends) != 2:
            continue  # a decision about a record no longer in the input
        if verdict == "match":
            forced.append((ends[0], ends[1]))
        else:
            refused.add(frozenset(ends))
    edges = [(p, a, b) for p, w, a, b in scored if p >= settings.threshold and frozenset((a, b)) not in refused]
    links = _cluster(ordered, anchors, edges, settings.threshold, forced,
                     [tuple(sorted(pair)) for pair in refused])  # type: ignore[misc]
    decided = {frozenset(index_of[k] for k in pair) for pair in (decisions or {}) if all(k in index_of for k in pair)}
    person = [lk.person_id for lk in links]
    candidates = sorted(
        (
            Candidate((ordered[a].source, ordered[a].record_id), (ordered[b].source, ordered[b].record_id), p, w)
            for p, w, a, b in ((p, w, min(a, b), max(a, b)) for p, w, a, b in scored)
            if settings.review_floor <= p < settings.threshold
            and frozenset((a, b)) not in decided
            and person[a] != person[b]
        ),
        key=lambda c: (-c.match_probability, c.left, c.right),
    )

    by_key = {(lk.source, lk.record_id): lk for lk in links}
    counts = Counter(lk.method for lk in links)
    _log.info(
        "linked %d records into %d people: %d deterministic, %d probabilistic, %d singleton, %d in review band",
        len(links), len({lk.person_id for lk in links}),
        counts["deterministic"], counts["probabilistic"], counts["singleton"], len(candidates),
    )
    return LinkageResult([by_key[k] for k in keys], candidates, dict(sorted(histogram.items())), used)


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
    numbered = [r for r, c in zip(records, (_clean(r) for r in records), strict=True) if c.nhs is not None]
    truth_groups: dict[str, list[RecordKey]] = defaultdict(list)
    for r in numbered:
        digits = nhs_number.normalise(r.nhs_number)
        assert digits is not None
        truth_groups[digits].append((r.source, r.record_id))
    hidden = [
        Record(r.source, r.record_id, None, r.first_name, r.surname, r.date_of_birth, r.sex, r.postcode)
        for r in numbered
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


def _ordered(records: Sequence[Record]) -> tuple[list[Record], list[_Clean]]:
    keys = [(r.source, r.record_id) for r in records]
    if len(set(keys)) != len(keys):
        raise ValueError("two records share a source and record id")
    ordered = [records[i] for i in sorted(range(len(records)), key=lambda i: keys[i])]
    return ordered, [_clean(r) for r in ordered]


# --- cleaning -----------------------------------------------------------------------------------

def _letters(value: str | None) -> str | None:
    if value is None:
        return None
    text = _NOT_LETTERS.sub("", value.upper())
    return text or None


def _clean_dob(value: date | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value.isoformat()
    text = value.strip()
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        return None


def _clean_sex(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().upper()[:1]
    return text if text in {"M", "F"} else None


def _clean(record: Record) -> _Clean:
    postcode = _NOT_ALNUM.sub("", (record.postcode or "").upper())
    if len(postcode) > 3:  # the outward code, a space, the three-character inward code
        postcode = f"{postcode[:-3]} {postcode[-3:]}"
    digits = nhs_number.normalise(record.nhs_number)
    return _Clean(
        first_name=_letters(record.first_name),
        surname=_letters(record.surname),
        date_of_birth=_clean_dob(record.date_of_birth),
        sex=_clean_sex(record.sex),
        postcode=postcode or None,
        nhs=digits if digits is not None and nhs_number.is_valid(digits) else None,
    )


# --- stage 1: deterministic ---------------------------------------------------------------------

def _mode(values: Iterable[str | None]) -> str | None:
    counted = Counter(v for v in values if v is not None)
    if not counted:
        return None
    best = max(counted.values())
    return min(v for v, n in counted.items() if n == best)


def _name_pair(record: _Clean) -> frozenset[str] | None:
    if record.first_name is None or record.surname is None:
        return None
    return frozenset((record.first_name, record.surname))  # unordered: swapped names still agree


def _conflicts(record: _Clean, group: list[_Clean]) -> bool:
    """True when the record's identifiers say it is not the person the rest of its group is.

    A record conflicts when its name (first and surname, in either order) differs from the group's
    most common name and so does its date of birth or its sex. One error in one field (a typo, a
    transposed date) is what real records carry; two fields disagreeing is someone else's number.
    A conflicting record is not thrown away: it goes to the probabilistic stage without its number.
    """
    others = [g for g in group if g is not record]
    if not others:
        return False
    pairs = Counter(p for p in (_name_pair(g) for g in others) if p is not None)
    own = _name_pair(record)
    if own is None or not pairs:
        return False
    best = max(pairs.values())
    if own in {p for p, n in pairs.items() if n == best}:
        return False
    dob = _mode(g.date_of_birth for g in others)
    sex = _mode(g.sex for g in others)
    dob_differs = dob is not None and record.date_of_birth is not None and record.date_of_birth != dob
    sex_differs = sex is not None and record.sex is not None and record.sex != sex
    return dob_differs or sex_differs


def _deterministic_anchors(clean: list[_Clean]) -> list[str | None]:
    """Per record, the valid NHS number it is anchored to, or None (no number, or a conflicting one)."""
    groups: dict[str, list[_Clean]] = defaultdict(list)
    for c in clean:
        if c.nhs is not None:
            groups[c.nhs].append(c)
    anchors: list[str | None] = []
    conflicting = 0
    for c in clean:
        if c.nhs is None:
            anchors.append(None)
        elif _conflicts(c, groups[c.nhs]):
            conflicting += 1
            anchors.append(None)
        else:
            anchors.append(c.nhs)
    _log.info("%d records carry a valid NHS number; %d of them conflict with their group",
              sum(c.nhs is not None for c in clean), conflicting)
    return anchors


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


def clean_records(records: Sequence[Record]) -> list[_Clean]:
    """The records cleaned as the core compares them, in (source, record id) order."""
    return _ordered(records)[1]


def _transposed(dob: str | None) -> str | None:
    """The ISO date with day and month swapped, when that is another real date (day 12 or less and
    not equal to the month); else None. Blocks the pairs whose only date error is that swap."""
    if dob is None or dob[8:10] == dob[5:7] or int(dob[8:10]) > 12:
        return None
    return f"{dob[:4]}-{dob[8:10]}-{dob[5:7]}"


def splink_frame(clean: list[_Clean]) -> pd.DataFrame:
    """The table Splink links: one row per cleaned record, ``unique_id`` its position."""
    return pd.DataFrame(
        {
            "unique_id": range(len(clean)),
            "first_name": [c.first_name for c in clean],
            "surname": [c.surname for c in clean],
            "full_name": [
                f"{c.first_name} {c.surname}" if c.first_name and c.surname else None for c in clean
            ],
            "date_of_birth": [c.date_of_birth for c in clean],
            "date_of_birth_transposed": [_transposed(c.date_of_birth) for c in clean],
            "sex": [c.sex for c in clean],
            "postcode": [c.postcode for c in clean],
        }
    )


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


def _probabilistic_edges(
    clean: list[_Clean], settings: LinkageSettings, trained: dict[str, Any] | None
) -> tuple[list[tuple[float, float, int, int]], dict[str, Any], dict[int, int]]:
    """Scored pairs (probability, match weight, left index, right index) at or above the lower of the
    review floor and the threshold, the model, and the count of pairs per whole match weight (pairs at
    or above the histogram floor). The pairs below the review floor stay in the backend: at a million
    records they are the most of the hundreds of millions scored, and only their counts are kept."""
    frame = splink_frame(clean)
    model = splink_settings(frame, settings)
    if trained is not None and trained.get("sql_dialect", settings.backend) != settings.backend:
        # The saved model's comparisons are SQL of the backend it was trained on (DuckDB quotes
        # names as Spark quotes strings): train it again on this backend rather than misread it.
        raise ValueError(f"the model was trained on {trained['sql_dialect']}; train it on {settings.backend}")
    with _quiet_splink(), splink_backend(settings) as db_api:
        linker = Linker(register_frame(db_api, frame, settings), dict(trained) if trained is not None else model,
                        log_level=None)
        if trained is None:
            _train(linker, settings, len(clean))
        floor = min(settings.histogram_floor, settings.review_floor, settings.threshold)
        predictions = linker.inference.predict(threshold_match_probability=floor)
        decimals = settings.probability_decimals
        table = predictions.physical_name
        counted = linker.misc.query_sql(
            f"select cast(floor(round(match_weight, {decimals})) as bigint) as w, count(*) as n "  # noqa: S608  # nosec B608 - numbers only
            f"from {table} group by 1", output_type="pandas")
        keep = min(settings.review_floor, settings.threshold) - 10.0 ** -decimals  # rounding below may lift a pair
        scored = linker.misc.query_sql(
            "select match_probability, match_weight, unique_id_l, unique_id_r "  # noqa: S608  # nosec B608
            f"from {table} where match_probability >= {keep!r}", output_type="pandas")
        result = linker.misc.save_model_to_json()
        predictions.drop_table_from_database_and_remove_from_cache()
    histogram = {int(w): int(n) for w, n in zip(counted["w"], counted["n"], strict=True)}
    edges = [
        (round(float(p), decimals), round(float(w), decimals), int(left), int(right))
        for p, w, left, right in zip(scored["match_probability"], scored["match_weight"], scored["unique_id_l"],
                                     scored["unique_id_r"], strict=True)
    ]
    _log.info("%d candidate pairs scored, %d kept, %d at or above the threshold", sum(histogram.values()),
              len(edges), sum(e[0] >= settings.threshold for e in edges))
    return edges, result, histogram


@contextlib.contextmanager
def splink_backend(settings: LinkageSettings) -> Iterator[Any]:
    """Splink's database API for ``settings.backend``: an in-memory DuckDB closed afterwards, or Spark
    (the active session, else one the core starts with ``spark_master`` and Splink's similarity jar;
    left running, since a JVM is slow to start and one process links many times). Public so that the
    benchmark runs plain Splink on the same backend."""
    if settings.backend == "duckdb":
        connection = duckdb.connect(":memory:")
        try:
            if settings.threads is not None:
                connection.execute(f"SET threads = {int(settings.threads)}")
            if settings.duckdb_memory_limit is not None:
                connection.execute(f"SET memory_limit = '{_duckdb_size(settings.duckdb_memory_limit)}'")
            if settings.duckdb_temp_directory is not None:
                quoted = settings.duckdb_temp_directory.replace("'", "''")
                connection.execute(f"SET temp_directory = '{quoted}'")
            yield DuckDBAPI(connection)
        finally:
            connection.close()
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


# --- clustering ---------------------------------------------------------------------------------

def _cluster(
    records: list[Record],
    anchors: list[str | None],
    edges: list[tuple[float, int, int]],
    threshold: float,
    forced: Sequence[tuple[int, int]] = (),
    apart: Sequence[tuple[int, int]] = (),
) -> list[Link]:
    parent = list(range(len(records)))
    numbers: list[set[str]] = [{a} if a is not None else set() for a in anchors]
    # A linkage officer's "no match": the two records never end up in one person, by any path.
    members: dict[int, list[int]] = {}
    kept_apart: dict[int, set[int]] = {}
    for a, b in apart:
        for i, j in ((a, b), (b, a)):
            members.setdefault(i, [i])
            kept_apart.setdefault(i, set()).add(j)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> bool:
        ra, rb = find(a), find(b)
        if ra == rb:
            return True
        if numbers[ra] and numbers[rb] and numbers[ra] != numbers[rb]:
            return False
        if kept_apart and (
            any(m in kept_apart.get(ra, ()) for m in members.get(rb, ()))
            or any(m in kept_apart.get(rb, ()) for m in members.get(ra, ()))
        ):
            return False
        keep, drop = min(ra, rb), max(ra, rb)
        parent[drop] = keep
        numbers[keep] |= numbers[drop]
        if drop in kept_apart or drop in members or keep in kept_apart or keep in members:
            members[keep] = members.get(keep, [keep]) + members.pop(drop, [drop])
            kept_apart[keep] = kept_apart.get(keep, set()) | kept_apart.pop(drop, set())
        return True

    first_with: dict[str, int] = {}
    for i, number in enumerate(anchors):
        if number is not None:
            if number in first_with:
                union(first_with[number], i)
            else:
                first_with[number] = i

    best: dict[int, float] = {}
    clerical: set[int] = set()
    for left, right in forced:  # a linkage officer's match: as sure as a shared number
        if union(left, right):
            clerical.update((left, right))
    for score, left, right in sorted(edges, key=lambda e: (-e[0], min(e[1], e[2]), max(e[1], e[2]))):
        if score < threshold:
            continue
        if union(left, right):
            for i in (left, right):
                best[i] = max(best.get(i, 0.0), score)

    roots = [find(i) for i in range(len(records))]
    sizes = Counter(roots)
    person_of_root: dict[int, int] = {}
    for root in roots:  # records are sorted, so people are numbered by their first record
        person_of_root.setdefault(root, len(person_of_root) + 1)
    shared = Counter(a for a in anchors if a is not None)

    links = []
    for i, record in enumerate(records):
        method: Method
        probability: float | None
        anchor = anchors[i]
        if anchor is not None and shared[anchor] > 1:
            method, probability = "deterministic", 1.0
        elif i in clerical:
            method, probability = "clerical", 1.0
        elif sizes[roots[i]] > 1:
            method, probability = "probabilistic", best[i]  # only an accepted pair joins a record
        else:
            method, probability = "singleton", None
        links.append(Link(record.source, record.record_id, person_of_root[roots[i]], method, probability,
                          anchor is not None))
    return links
