"""Server-side SVG charts (tre/web/charts.py): each picture comes with its numbers as a table, escapes
every text it is given, and tells series apart without colour."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from tre.web.charts import bar_chart, column_chart, progress_chart

SVG = "{http://www.w3.org/2000/svg}"


def _tree(chart):
    return ET.fromstring(str(chart.svg))


def test_bar_chart_is_an_image_named_by_its_title_and_described() -> None:
    chart = bar_chart(id="t", title="Turnaround", categories=["A", "B"], series=[("Days", [1, 2])], unit="days")

    svg = _tree(chart)
    assert svg.get("role") == "img" and svg.get("aria-labelledby") == "t-title t-desc"
    assert svg.find(f"{SVG}title").text == "Turnaround" and svg.find(f"{SVG}desc").text


def test_stacked_bars_give_each_series_and_the_total_in_the_table() -> None:
    chart = bar_chart(
        id="s",
        title="Stages",
        categories=["one", "two"],
        series=[("wait", [1.5, 2]), ("review", [3, None])],
        unit="working days",
    )

    assert chart.headers == ["", "wait", "review", "Total"]
    assert chart.rows == [["one", "1.5", "3", "4.5"], ["two", "2", "–", "2"]]
    widths = {
        r.get("fill"): float(r.get("width"))
        for r in _tree(chart).iter(f"{SVG}rect")
        if r.find(f"{SVG}title") is not None and "one" in r.find(f"{SVG}title").text
    }
    assert widths["url(#s-p1)"] == pytest.approx(2 * widths["url(#s-p0)"])  # 3 days is twice 1.5


def test_every_series_has_its_own_pattern_not_only_its_own_colour() -> None:
    chart = bar_chart(
        id="p", title="x", categories=["a"], series=[("one", [1]), ("two", [1]), ("three", [1])], unit="d"
    )

    patterns = {p.get("id"): ET.tostring(p) for p in _tree(chart).iter(f"{SVG}pattern")}
    overlays = [len(list(ET.fromstring(body))) for body in patterns.values()]
    assert len(patterns) == 3 and len(set(overlays)) >= 2 and overlays[1] > 1  # a shape drawn over the fill


def test_text_given_to_a_chart_is_escaped_never_markup() -> None:
    hostile = '<script>alert(1)</script>"'
    chart = bar_chart(id="x", title=hostile, categories=[hostile], series=[(hostile, [1])], unit=hostile)

    assert "<script>" not in str(chart.svg)
    assert ET.fromstring(str(chart.svg)).find(f"{SVG}title").text == hostile


def test_a_chart_id_that_could_break_out_of_its_attribute_is_refused() -> None:
    with pytest.raises(ValueError, match="chart id"):
        bar_chart(id='x" onload="alert(1)', title="t", categories=["a"], series=[("s", [1])], unit="u")


def test_bars_start_at_zero_so_negative_values_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        bar_chart(id="n", title="t", categories=["a"], series=[("s", [-1])], unit="u")


def test_a_series_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="2 categories"):
        bar_chart(id="n", title="t", categories=["a", "b"], series=[("s", [1])], unit="u")


def test_column_chart_draws_one_column_per_bin_as_high_as_its_value() -> None:
    chart = column_chart(id="h", title="Match weights", bins=["-5", "0", "5"], values=[2, 8, 4], unit="pairs")

    heights = [float(r.get("height")) for r in _tree(chart).iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert heights[1] == pytest.approx(4 * heights[0]) and heights[2] == pytest.approx(2 * heights[0])
    assert chart.rows == [["-5", "2"], ["0", "8"], ["5", "4"]]


def test_progress_chart_fills_to_its_fraction_and_says_so_in_words() -> None:
    chart = progress_chart(id="e", title="Extract", fraction=0.25, facts=[("Time left", "3 min")])

    assert chart.rows[0] == ["Done", "25%"] and ["Time left", "3 min"] in chart.rows
    assert re.search(r"25% done", chart.summary)
    with pytest.raises(ValueError):
        progress_chart(id="e", title="Extract", fraction=1.5, facts=[])
