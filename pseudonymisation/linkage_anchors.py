"""The linkage core's deterministic stage: which records are anchored to their valid NHS number.

Records holding the same valid number are one person, unless a record *conflicts* with the rest of
its number's group: its name (first and surname, in either order) is not among the group's others'
most common names, and its date of birth or its sex differs from the others' most common (the
smallest value among equally common ones; missing values are not counted, and a missing value never
differs). One error in one field (a typo, a transposed date) is what real records carry; two fields
disagreeing is someone else's number. A conflicting record goes to the probabilistic stage without its
number.

One DuckDB query over the cleaned table (``linkage_cleaning``): "the others" of a record are its
group's counts less the record itself, so no Python runs per record. Pure: no Flask, no SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.compute as pc

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

_ANCHORS = """
WITH numbered AS (
    SELECT unique_id AS u, nhs_number AS nhs, date_of_birth AS dob, sex,
           CASE WHEN first_name IS NOT NULL AND surname IS NOT NULL THEN least(first_name, surname) END AS n1,
           CASE WHEN first_name IS NOT NULL AND surname IS NOT NULL THEN greatest(first_name, surname) END AS n2,
           count(*) OVER (PARTITION BY nhs_number) AS size
    FROM prepared WHERE nhs_number IS NOT NULL),
shared AS (SELECT * FROM numbered WHERE size > 1),
names AS (SELECT nhs, n1, n2, count(*) AS c FROM shared WHERE n1 IS NOT NULL GROUP BY ALL),
name_counts AS (  -- per record with a name: the others' highest count of one name, and of its own
    SELECT r.u, max(g.c - CASE WHEN g.n1 = r.n1 AND g.n2 = r.n2 THEN 1 ELSE 0 END) AS best,
           max(CASE WHEN g.n1 = r.n1 AND g.n2 = r.n2 THEN g.c - 1 END) AS own
    FROM shared r JOIN names g ON g.nhs = r.nhs WHERE r.n1 IS NOT NULL GROUP BY r.u),
dob_counts AS (
    SELECT nhs, dob AS v, count(*) AS c FROM shared WHERE dob IS NOT NULL GROUP BY ALL),
dob_mode AS (  -- the others' most common dob per record; ties go to the smallest
    SELECT u, first(v ORDER BY others DESC, v) AS mode FROM (
        SELECT r.u, g.v, g.c - CASE WHEN g.v = r.dob THEN 1 ELSE 0 END AS others
        FROM shared r JOIN dob_counts g ON g.nhs = r.nhs)
    WHERE others > 0 GROUP BY u),
sex_counts AS (
    SELECT nhs, sex AS v, count(*) AS c FROM shared WHERE sex IS NOT NULL GROUP BY ALL),
sex_mode AS (  -- the others' most common sex per record; ties go to the smallest
    SELECT u, first(v ORDER BY others DESC, v) AS mode FROM (
        SELECT r.u, g.v, g.c - CASE WHEN g.v = r.sex THEN 1 ELSE 0 END AS others
        FROM shared r JOIN sex_counts g ON g.nhs = r.nhs)
    WHERE others > 0 GROUP BY u),
conflicting AS (
    SELECT s.u FROM shared s
    JOIN name_counts n ON n.u = s.u
    LEFT JOIN dob_mode d ON d.u = s.u
    LEFT JOIN sex_mode x ON x.u = s.u
    WHERE n.best > n.own
      AND ((d.mode IS NOT NULL AND s.dob IS NOT NULL AND s.dob <> d.mode)
           OR (x.mode IS NOT NULL AND s.sex IS NOT NULL AND s.sex <> x.mode)))
SELECT p.unique_id, CASE WHEN c.u IS NULL THEN p.nhs_number END AS anchor
FROM prepared p LEFT JOIN conflicting c ON c.u = p.unique_id
ORDER BY p.unique_id
"""


@dataclass(frozen=True)
class Anchors:
    """Per record (in the cleaned table's order), a code for the NHS number it is anchored to (the same
    code for the same number), or -1 when it has none; and how many numbered records conflicted."""

    codes: np.ndarray
    numbered: int
    conflicting: int


def anchors(prepared: pa.Table, connection: duckdb.DuckDBPyConnection) -> Anchors:
    """The deterministic stage over ``prepared`` (``linkage_cleaning.Prepared.table``, read by name in
    the query)."""
    anchor = connection.sql(_ANCHORS).to_arrow_table().column("anchor")
    codes = pc.dictionary_encode(anchor.combine_chunks()).indices
    numbered = prepared.num_rows - prepared.column("nhs_number").null_count
    return Anchors(
        codes=pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64),
        numbered=numbered,
        conflicting=numbered - (anchor.length() - anchor.null_count),
    )
