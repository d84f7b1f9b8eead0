"""The person index core on Splink's Spark backend, in local mode: the same model gives the same people.

One Spark session (a JVM, seconds to start) serves the whole module and stops at its end; the unit
tests of the core never start one. pyspark is the optional ``spark`` extra: without it these skip.
"""

from __future__ import annotations

import logging

import pytest

from pseudonymisation.linkage import LinkageSettings, link_records
from tre.demo import linkage_sources

pyspark = pytest.importorskip("pyspark")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.timeout(1800),  # Spark runs a few hundred small jobs; a busy 2-core machine is slow at it
    # pyspark 4.3 warns on every pandas conversion that it does not fully support pandas 3.
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    # ...and its Arrow conversion to pandas still passes pandas 3 the deprecated copy keyword.
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:pandas.errors.Pandas4Warning"),
]

# Fewer EM iterations than the default keep Spark's few hundred jobs per run to a few minutes; both
# backends get the same settings, so the comparison is of like with like.
DUCKDB = LinkageSettings(em_max_iterations=6, threads=1)
SPARK = LinkageSettings(em_max_iterations=6, backend="spark", spark_master="local[2]")


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession
    from splink.backends.spark import similarity_jar_location

    session = (SparkSession.builder.master("local[2]").appName("tre-linkage-test")
               .config("spark.jars", similarity_jar_location())
               .config("spark.sql.shuffle.partitions", "2").config("spark.default.parallelism", "2")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .getOrCreate())
    yield session
    session.stop()
    # py4j closes its connections from __del__ at interpreter exit, when pytest has already closed
    # the streams its INFO records would go to ("--- Logging error ---" after the summary).
    logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def records():
    return linkage_sources.records(linkage_sources.generate(300, seed=7))


@pytest.fixture(scope="module")
def on_duckdb(records):
    return link_records(records, DUCKDB)


@pytest.fixture(scope="module")
def on_spark(spark, records):
    return link_records(records, SPARK)


def test_spark_backend_finds_the_same_people_as_duckdb(on_duckdb, on_spark):
    assert [(lk.source, lk.record_id) for lk in on_spark.links] == [(lk.source, lk.record_id) for lk in on_duckdb.links]
    assert [lk.person_id for lk in on_spark.links] == [lk.person_id for lk in on_duckdb.links]
    assert [lk.method for lk in on_spark.links] == [lk.method for lk in on_duckdb.links]
    assert len({lk.person_id for lk in on_spark.links}) < len(on_spark.links)  # some records were linked
    assert any(lk.method == "probabilistic" for lk in on_spark.links)


def test_spark_backend_scores_pairs_as_duckdb_does(on_duckdb, on_spark):
    # Each backend trains the model itself (sampling and summing in its own order), so the trained
    # numbers agree closely rather than to the last digit: probabilities within 0.01, and the
    # uncertain band the same but for a pair whose probability sits on one of its edges.
    for spark_link, duck_link in zip(on_spark.links, on_duckdb.links, strict=True):
        if duck_link.match_probability is None:
            assert spark_link.match_probability is None
        else:
            assert spark_link.match_probability == pytest.approx(duck_link.match_probability, abs=0.01)
    spark_band = {(c.left, c.right) for c in on_spark.candidates}
    duck_band = {(c.left, c.right) for c in on_duckdb.candidates}
    assert len(spark_band ^ duck_band) <= max(1, len(duck_band) // 20)
    spark_pairs, duck_pairs = sum(on_spark.weight_histogram.values()), sum(on_duckdb.weight_histogram.values())
    assert duck_pairs > 0 and abs(spark_pairs - duck_pairs) <= 0.01 * duck_pairs


def test_spark_run_keeps_the_model_in_sparks_dialect(on_spark):
    assert on_spark.model is not None and on_spark.model["sql_dialect"] == "spark"


def test_a_model_trained_on_duckdb_is_refused_by_spark_rather_than_misread(spark, records, on_duckdb):
    with pytest.raises(ValueError, match="trained on duckdb; train it on spark"):
        link_records(records, SPARK, model=on_duckdb.model)


def test_the_core_uses_the_active_spark_session_rather_than_starting_another(spark):
    from pseudonymisation.linkage import spark_session

    assert spark_session(SPARK) is spark
