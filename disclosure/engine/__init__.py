"""The statistical disclosure control engine: a pure library (no web framework, database or task queue).

Entry points used by the researcher session and the output queue:

- ``check_frequency_table`` / ``check_magnitude_table``: a checked, mitigated table from microdata;
- ``check_published_counts``: a count table given without microdata (e.g. a CSV);
- ``recompute``: re-check a table from its specification and the extract;
- ``check_regression``, ``check_histogram``, ``check_survival``, ``check_quantile``, ``check_extreme``,
  ``check_mode``, ``check_category_counts``, ``review_other_file``: the other output types;
- ``check_model_text`` / ``check_regression_numbers``: model summaries printed as text (ADR 0063);
- ``ReleaseLedger`` and ``differencing_audit``: a project's released aggregates and the differencing check;
- ``interval_audit`` / ``protect``: secondary suppression and its proof;
- ``load_policy`` / ``default_policy``: the TRE's policy, whose sha256 every verdict records.
"""

from disclosure.engine.ledger import (
    ReleasedAggregate,
    ReleaseLedger,
    aggregate_from_result,
    differencing_audit,
)
from disclosure.engine.model_text import check_model_text
from disclosure.engine.outputs import (
    check_category_counts,
    check_extreme,
    check_histogram,
    check_mode,
    check_quantile,
    check_regression,
    check_regression_numbers,
    check_survival,
)
from disclosure.engine.policy import Policy, PolicyError, default_policy, load_policy
from disclosure.engine.specs import recompute, table_spec
from disclosure.engine.suppression import interval_audit, protect
from disclosure.engine.tables import (
    TableResult,
    check_frequency_table,
    check_magnitude_table,
    check_published_counts,
)
from disclosure.engine.verdict import SCHEMA, review_other_file

__all__ = [
    "SCHEMA",
    "Policy",
    "PolicyError",
    "ReleaseLedger",
    "ReleasedAggregate",
    "TableResult",
    "aggregate_from_result",
    "check_category_counts",
    "check_extreme",
    "check_frequency_table",
    "check_histogram",
    "check_magnitude_table",
    "check_model_text",
    "check_mode",
    "check_published_counts",
    "check_quantile",
    "check_regression",
    "check_regression_numbers",
    "check_survival",
    "default_policy",
    "differencing_audit",
    "interval_audit",
    "load_policy",
    "protect",
    "recompute",
    "review_other_file",
    "table_spec",
]
