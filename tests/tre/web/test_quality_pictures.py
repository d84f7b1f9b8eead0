"""The pictures of data quality (a delivery's report) and linkage quality (a run's figures): what each
chart draws, and that its numbers are also given as a table (the text alternative)."""

from __future__ import annotations

from tre.web.pictures import delivery_quality_charts, linkage_quality_charts

QUALITY = {
    "records": 1200,
    "people": 700,
    "sources": {
        "hospital": {"records": 800, "match_rate": 0.625, "by_method": {"deterministic": 400, "probabilistic": 90,
                                                                         "clerical": 10, "singleton": 300}},
        "social_care": {"records": 400, "match_rate": 0.5, "by_method": {"deterministic": 150,
                                                                         "probabilistic": 50, "singleton": 200}},
    },
    "estimated": {"precision": 0.9912, "recall": None, "records": 900, "found_pairs": 450, "true_pairs": 455},
    "match_weight_histogram": [{"weight": -4, "pairs": 1200}, {"weight": 0, "pairs": 300}, {"weight": 8, "pairs": 95}],
}


def test_linkage_quality_draws_rates_methods_precision_recall_and_weights_each_with_its_table() -> None:
    charts = {c.id: c for c in linkage_quality_charts(QUALITY)}

    assert list(charts) == ["linkage-match-rates", "linkage-methods", "linkage-precision-recall", "linkage-weights"]
    assert charts["linkage-match-rates"].rows == [["hospital", "62.5%"], ["social_care", "50.0%"]]
    assert charts["linkage-methods"].headers == ["", "Deterministic", "Probabilistic", "Clerical", "Singleton", "Total"]
    assert charts["linkage-methods"].rows[1] == ["social_care", "150", "50", "0", "200", "400"]  # a missing method is 0
    assert charts["linkage-precision-recall"].rows == [["Precision", "99.1%"], ["Recall", "–"]]  # not measurable
    assert [r[1] for r in charts["linkage-weights"].rows] == ["1,200", "300", "95"]
    for c in charts.values():
        assert 'role="img"' in c.svg and "<desc" in c.svg and c.summary


def test_a_run_without_figures_has_no_linkage_charts() -> None:
    assert linkage_quality_charts({}) == []


def test_delivery_quality_draws_completeness_and_only_the_checks_that_failed() -> None:
    report = {
        "columns": {
            "nhs_number": {"completeness": 0.98, "missing": 2, "type_failures": 0,
                           "nhs_numbers_invalid": {"bad_check_digit": 3}},
            "admitted": {"completeness": 1.0, "missing": 0, "type_failures": 1, "dates_in_future": 4,
                         "dates_too_early": 0},
            "notes": {"completeness": None, "missing": 0, "type_failures": 0},
        }
    }

    completeness, failures = delivery_quality_charts(report)

    assert completeness.headers == ["", "With a value", "Missing", "Total"]
    assert completeness.rows[:2] == [
        ["nhs_number", "98.0%", "2.0%", "100.0%"],
        ["admitted", "100.0%", "0.0%", "100.0%"],
    ]
    assert completeness.rows[2][:3] == ["notes", "–", "–"]  # an empty delivery has no completeness
    assert failures.headers == ["", "Not of its type", "Dates in the future", "Invalid NHS numbers", "Total"]
    assert failures.rows == [["nhs_number", "0", "0", "3", "3"], ["admitted", "1", "4", "0", "5"],
                             ["notes", "0", "0", "0", "0"]]


def test_a_clean_delivery_has_only_the_completeness_chart() -> None:
    charts = delivery_quality_charts({"columns": {"a": {"completeness": 1.0, "missing": 0, "type_failures": 0}}})

    assert [c.id for c in charts] == ["delivery-completeness"]
