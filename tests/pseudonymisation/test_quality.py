import pyarrow as pa

from pseudonymisation import quality


def test_missingness_counts_nulls_and_blank_strings():
    chunk = pa.table({"a": ["x", "", "  ", None], "b": [1, None, 3, 4]})
    acc = quality.QualityAccumulator(["a", "b"])

    acc.add(chunk)

    assert acc.report()["missing"] == {
        "a": {"count": 3, "fraction": 0.75},
        "b": {"count": 1, "fraction": 0.25},
    }


def test_invalid_codes_are_counted_against_the_whole_pattern():
    acc = quality.QualityAccumulator(["code"], {"code": r"[A-Z][0-9]{2}"})

    acc.add(pa.table({"code": ["I10", "I10X", "i10", None]}))

    assert acc.report()["invalid_codes"] == {"code": 2}


def test_state_merges_across_chunks():
    first = quality.QualityAccumulator(["a"])
    first.add(pa.table({"a": [None, "x"]}), {"nhs_number_missing": 1})
    second = quality.QualityAccumulator(["a"])

    second.merge(first.state())
    second.add(pa.table({"a": [None]}), {"nhs_number_missing": 2})

    report = second.report()
    assert report["rows"] == 3 and report["missing"]["a"]["count"] == 2
    assert report["invalid_nhs_numbers"] == {"nhs_number_missing": 3}


def test_linkage_rate_counts_distinct_patients_each_way():
    left = pa.array(["p1", "p1", "p2", "p3", None])
    right = pa.array(["p2", "p3", "p4", "p5"])

    rate = quality.linkage_rate(left, right)

    assert rate["matched_patients"] == 2
    assert rate["left_linked_fraction"] == round(2 / 3, 6)
    assert rate["right_linked_fraction"] == 0.5


def test_blank_detection_finds_unicode_spaces_and_ignores_nulls_and_sliced_rows():
    values = pa.array(["ok", "\u00a0", "", None, " \t", "x"]).slice(1)

    assert quality.missing_count(values) == 4
    assert quality.missing_count(pa.array(["a", "b"])) == 0
    assert quality.missing_count(pa.array(["é", "\u2003"], pa.large_string())) == 1
