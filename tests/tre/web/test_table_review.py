"""The checker's view of a table (tre/web/table_review.py): cells matched to the stored verdict by label,
the suppression preview beside the submitted table, the legend's words taken from the verdict."""

from __future__ import annotations

from disclosure.engine import check_published_counts, default_policy
from disclosure.engine.published import read_published_table
from tre.web.table_review import build_review

SMALL = b"region,female,male\nNorth,25,3\nSouth,40,52\nTotal,65,55\n"


def _verdict(content: bytes) -> dict:
    table = read_published_table(content)
    return check_published_counts(table.values, policy=default_policy(), mitigation="none").verdict


def _cells(grid):
    return {(tuple(labels), grid.columns[i]): c for labels, cells in grid.rows for i, c in enumerate(cells)}


def test_flagged_cell_is_found_by_its_labels_and_carries_its_rule_and_reason() -> None:
    review = build_review(SMALL, None, _verdict(SMALL), [], policy=default_policy())

    cells = _cells(review.before)
    flagged = {k for k, c in cells.items() if c.rules}
    assert flagged == {(("North",), "male")}
    small = cells[(("North",), "male")]
    assert small.status == "fail" and small.marks == "T" and "fewer than" in small.described
    assert cells[(("Total",), "female")].text == "65" and cells[(("Total",), "female")].total


def test_preview_suppresses_the_small_cell_and_enough_others_to_protect_it() -> None:
    review = build_review(SMALL, None, _verdict(SMALL), [], policy=default_policy())

    after = _cells(review.after)
    assert after[(("North",), "male")].action == "suppressed_primary" and after[(("North",), "male")].text == ""
    secondary = {k for k, c in after.items() if c.action == "suppressed_secondary"}
    assert len(secondary) >= 1  # one cell alone would be recovered from its row and column totals
    assert "interval audit" in review.after_note


def test_cells_withheld_in_the_file_are_marked_not_shown_as_zero() -> None:
    content = b"region,female,male\nNorth,25,*\nSouth,40,52\n"
    review = build_review(content, None, _verdict(content), [], policy=default_policy())

    cell = _cells(review.before)[(("North",), "male")]
    assert cell.action == "withheld" and cell.text == ""


def test_legend_gives_each_flagged_rule_in_words_with_its_count() -> None:
    content = b"region,a,b,c\nNorth,25,3,0\nSouth,40,52,4\n"
    review = build_review(content, None, _verdict(content), [], policy=default_policy())

    legend = {e.rule: e for e in review.legend}
    assert legend["threshold"].cells == 2 and "fewer than" in legend["threshold"].reason
    assert "zeros" in legend and legend["zeros"].mark == "Z"


def test_an_unreadable_file_says_why_and_flags_nothing() -> None:
    review = build_review(b"just some words\n", None, None, [], policy=default_policy())

    assert review.unreadable and review.before is None and review.after is None


def test_unchecked_table_is_shown_without_flags() -> None:
    review = build_review(SMALL, None, None, None, policy=default_policy())

    assert review.before.flagged == 0 and review.status == ""


def test_a_table_too_large_for_the_preview_says_so_and_still_shows_its_flags() -> None:
    from tre.web.table_review import MAX_PREVIEW_CELLS

    cols = 100
    rows = MAX_PREVIEW_CELLS // cols + 1
    header = "area," + ",".join(f"g{j}" for j in range(cols))
    body = "\n".join(f"a{i}," + ",".join("3" if (i, j) == (0, 0) else "50" for j in range(cols)) for i in range(rows))
    content = f"{header}\n{body}\n".encode()

    review = build_review(content, None, _verdict(content), [], policy=default_policy())

    assert review.after is None and f"{MAX_PREVIEW_CELLS:,} cells" in review.after_note
    assert review.before.flagged == 1


MEDIANS = b"region,female,male\nNorth,4.5,3.0\nSouth,6.0,5.5\n"


def test_a_table_of_medians_from_the_session_gets_no_count_suppression_preview() -> None:
    """A median of 3.0 days is not three people: the preview must not suppress it as a small count."""
    spec = {"statistic": "median", "dims": ["region", "sex"], "n_row_dims": 1, "dataset": "admissions"}
    stored = {"status": "review", "reasons": ["re-computed from the extract"], "cells": []}

    review = build_review(MEDIANS, spec, stored, [], policy=default_policy())

    assert review.after is None
    assert "median values, not counts" in review.after_note
    assert review.before.flagged == 0  # only the stored verdict (the re-computation) flags cells


def test_a_differentially_private_table_gets_no_suppression_preview() -> None:
    spec = {"route": "dp", "statistic": "count", "dims": ["region", "sex"], "n_row_dims": 1}

    review = build_review(SMALL, spec, {"status": "pass", "reasons": [], "cells": []}, [], policy=default_policy())

    assert review.after is None and "differentially private" in review.after_note


def test_a_count_table_from_the_session_keeps_its_preview() -> None:
    spec = {"statistic": "count", "dims": ["region", "sex"], "n_row_dims": 1, "dataset": "admissions"}

    review = build_review(SMALL, spec, _verdict(SMALL), [], policy=default_policy())

    assert review.after is not None and review.after.suppressed >= 2
