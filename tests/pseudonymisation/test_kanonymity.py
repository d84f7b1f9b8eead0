import pyarrow as pa

from pseudonymisation import kanonymity

QI = ["age_band", "sex"]
TABLE = pa.table(
    {
        "age_band": ["40-44", "40-44", "40-44", "90+", None, None],
        "sex": ["F", "F", "F", "M", "F", "F"],
    }
)


def test_report_gives_smallest_group_and_rows_below_k():
    counts = kanonymity.group_counts(TABLE, QI)

    report = kanonymity.report(counts, k=3)

    assert report["smallest_group"] == 1
    assert report["groups"] == 3
    assert report["groups_below_k"] == 2
    assert report["rows_in_groups_below_k"] == 3


def test_counts_merged_from_chunks_equal_counts_of_the_whole():
    whole = kanonymity.group_counts(TABLE, QI)

    merged = kanonymity.merge_counts(
        [kanonymity.group_counts(TABLE.slice(0, 4), QI), kanonymity.group_counts(TABLE.slice(4), QI)], QI
    )

    rows = lambda t: sorted(t.to_pylist(), key=repr)  # noqa: E731
    assert rows(whole) == rows(merged)


def test_null_is_its_own_group_and_never_merges_with_a_value():
    table = pa.table({"a": ["", None, None]})

    counts = kanonymity.group_counts(table, ["a"])

    assert sorted(counts[kanonymity.ROWS].to_pylist()) == [1, 2]
    assert len(kanonymity.small_group_keys(counts, ["a"], 3)) == 2


def test_suppression_reaches_k():
    counts = kanonymity.group_counts(TABLE, QI)

    kept, removed = kanonymity.suppress(TABLE, QI, kanonymity.small_group_keys(counts, QI, 2))

    assert removed == 1
    assert kanonymity.report(kanonymity.group_counts(kept, QI), k=2)["smallest_group"] >= 2


def test_without_quasi_identifiers_everyone_is_one_group():
    counts = kanonymity.group_counts(TABLE, [])

    assert kanonymity.report(counts, k=5)["smallest_group"] == 6
