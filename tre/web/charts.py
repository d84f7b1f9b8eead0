"""Small charts drawn on the server as SVG, each with its numbers as a table: no JavaScript, no library.

Every chart is a ``Chart``: the SVG (``role="img"``, named by its ``<title>`` and described by its
``<desc>``), and the same numbers as a caption, headers and rows that the page shows as a table, the
text alternative a screen reader, a keyboard user or anyone who would rather read uses. Series are told
apart by pattern as well as colour, and bars carry their value as text, so no chart depends on colour.

Use from a view::

    from tre.web.charts import bar_chart, column_chart, progress_chart

    chart = bar_chart(
        id="turnaround-applications",
        title="Applications: working days per stage",
        categories=["Asthma outcomes", "Stroke registry"],
        series=[("Waiting for reviewers", [2, 5]), ("Review", [8, 3]), ("Decision", [1, None])],
        unit="working days",
    )

and in a template::

    {% from "_charts.html" import chart %}
    {{ chart(chart) }}

``bar_chart`` draws horizontal bars, one per category, stacked when there are several series (a
missing value is drawn as nothing and written "–" in the table); ``column_chart`` draws one vertical bar
per bin (a histogram: match weights, values per band); ``progress_chart`` draws one bar filled to a
fraction with words under it (rows done, rate, time left). All text is escaped here; nothing given to
a chart is ever markup. Charts are pure: plain values in, a ``Chart`` out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 640
# NHS identity colours, each at least 3:1 against white; the patterns tell series apart without colour.
COLOURS = ("#005eb8", "#ffb81c", "#007f3b", "#330072", "#768692", "#d5281b")
_PATTERNS = (
    "",  # solid
    '<path d="M0,8 L8,0" stroke="#fff" stroke-width="2"/>',  # diagonal
    '<circle cx="4" cy="4" r="1.6" fill="#fff"/>',  # dots
    '<path d="M0,4 L8,4" stroke="#fff" stroke-width="2"/>',  # horizontal
    '<path d="M4,0 L4,8" stroke="#fff" stroke-width="2"/>',  # vertical
    '<path d="M0,0 L8,8 M8,0 L0,8" stroke="#fff" stroke-width="1.5"/>',  # cross
)


@dataclass(frozen=True)
class Chart:
    """A picture and the same numbers as a table (its text alternative)."""

    id: str
    title: str
    summary: str
    svg: Markup
    headers: list[str]
    rows: list[list[str]]


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


def _nice_max(value: float) -> float:
    """The top of an axis: 1, 2 or 5 times a power of ten, at least ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _defs(chart_id: str, n: int) -> str:
    parts = []
    for i in range(n):
        colour = COLOURS[i % len(COLOURS)]
        overlay = _PATTERNS[i % len(_PATTERNS)]
        parts.append(
            f'<pattern id="{chart_id}-p{i}" width="8" height="8" patternUnits="userSpaceOnUse">'
            f'<rect width="8" height="8" fill="{colour}"/>{overlay}</pattern>'
        )
    return "<defs>" + "".join(parts) + "</defs>"


def _svg(chart_id: str, title: str, summary: str, height: int, body: str, n_series: int) -> Markup:
    # Every piece of text in ``body`` and here went through ``escape``; the rest is numbers and ids checked
    # by ``_check_id``, so the string is safe to mark as markup.
    return Markup(  # noqa: S704  # nosec B704
        f'<svg xmlns="http://www.w3.org/2000/svg" class="tre-chart__svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="100%" role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" focusable="false">'
        f'<title id="{chart_id}-title">{escape(title)}</title><desc id="{chart_id}-desc">{escape(summary)}</desc>'
        f"{_defs(chart_id, n_series)}{body}</svg>"
    )


def _text(x: float, y: float, content: str, *, size: int = 13, anchor: str = "start") -> str:
    """A line of escaped text at (x, y)."""
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}">{escape(content)}</text>'


def _check_id(chart_id: str) -> str:
    if not chart_id or not all(c.isalnum() or c in "-_" for c in chart_id):
        raise ValueError("a chart id is letters, digits, '-' and '_' only (it names elements of the page)")
    return chart_id


def _legend(chart_id: str, names: Sequence[str], y: int) -> str:
    parts, x = [], 8
    for i, name in enumerate(names):
        parts.append(
            f'<rect x="{x}" y="{y}" width="14" height="14" fill="url(#{chart_id}-p{i})" stroke="#212b32"/>'
            f'<text x="{x + 20}" y="{y + 12}" font-size="13">{escape(name)}</text>'
        )
        x += 28 + 7 * len(name)
    return "".join(parts)


def bar_chart(
    *,
    id: str,
    title: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    unit: str,
    summary: str = "",
    fmt: Callable[[float | None], str] = _number,
) -> Chart:
    """Horizontal bars, one per category; several series are stacked in the order given."""
    chart_id = _check_id(id)
    if not series:
        raise ValueError("a bar chart needs at least one series")
    for name, values in series:
        if len(values) != len(categories):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(categories)} categories")
        if any(v is not None and v < 0 for v in values):
            raise ValueError(f"series {name!r} has a negative value: bars start at zero")
    totals = [sum(v or 0 for _, values in series for v in [values[i]]) for i in range(len(categories))]
    top = _nice_max(max(totals, default=0))
    label_w, bar_h, gap, left_pad = 170, 22, 10, 8
    plot_w = WIDTH - label_w - 70
    legend_h = 28 if len(series) > 1 else 0
    height = legend_h + len(categories) * (bar_h + gap) + 40
    body = [_legend(chart_id, [n for n, _ in series], 4)] if legend_h else []
    for i, category in enumerate(categories):
        y = legend_h + i * (bar_h + gap) + 6
        label = category if len(category) <= 24 else category[:23] + "…"
        body.append(_text(label_w - left_pad, y + 16, label, anchor="end"))
        x = float(label_w)
        for s, (name, values) in enumerate(series):
            v = values[i] or 0
            w = plot_w * v / top
            if w > 0:
                tip = f"{category}, {name}: {fmt(values[i])} {unit}"
                body.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="url(#{chart_id}-p{s})" '
                    f'stroke="#212b32" stroke-width="0.5"><title>{escape(tip)}</title></rect>'
                )
            x += w
        body.append(_text(x + 6, y + 16, fmt(totals[i])))
    axis_y = legend_h + len(categories) * (bar_h + gap) + 6
    body.append(f'<line x1="{label_w}" y1="{legend_h}" x2="{label_w}" y2="{axis_y}" stroke="#212b32"/>')
    for t in range(5):
        value = top * t / 4
        x = label_w + plot_w * t / 4
        body.append(
            f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="#212b32"/>'
            + _text(x, axis_y + 18, fmt(value), size=12, anchor="middle")
        )
    body.append(_text(label_w + plot_w / 2, axis_y + 32, unit, size=12, anchor="middle"))
    height = axis_y + 38
    headers = [""] + [n for n, _ in series] + (["Total"] if len(series) > 1 else [])
    rows = [
        [category] + [fmt(values[i]) for _, values in series] + ([fmt(totals[i])] if len(series) > 1 else [])
        for i, category in enumerate(categories)
    ]
    summary = summary or (
        f"{len(categories)} bar{'s' if len(categories) != 1 else ''} in {unit}"
        + (f", each split into {', '.join(n for n, _ in series)}" if len(series) > 1 else "")
        + ". The table below gives every number."
    )
    return Chart(
        chart_id, title, summary, _svg(chart_id, title, summary, height, "".join(body), len(series)), headers, rows
    )


def column_chart(
    *,
    id: str,
    title: str,
    bins: Sequence[str],
    values: Sequence[float],
    unit: str,
    x_label: str = "",
    summary: str = "",
    fmt: Callable[[float | None], str] = _number,
) -> Chart:
    """One vertical bar per bin, left to right (a histogram)."""
    chart_id = _check_id(id)
    if len(values) != len(bins):
        raise ValueError(f"{len(values)} values for {len(bins)} bins")
    if any(v < 0 for v in values):
        raise ValueError("a column chart's values start at zero")
    top = _nice_max(max(values, default=0))
    left, plot_h, base = 56, 200, 220
    plot_w = WIDTH - left - 10
    step = plot_w / max(1, len(bins))
    body = []
    for t in range(5):
        value = top * t / 4
        y = base - plot_h * t / 4
        body.append(
            f'<line x1="{left - 4}" y1="{y:.1f}" x2="{WIDTH - 10}" y2="{y:.1f}" stroke="#d8dde0"/>'
            + _text(left - 8, y + 4, fmt(value), size=12, anchor="end")
        )
    every = max(1, math.ceil(len(bins) / 12))  # at most about 12 bin labels fit under the axis
    for i, (label, v) in enumerate(zip(bins, values, strict=True)):
        h = plot_h * v / top
        x = left + i * step + step * 0.1
        body.append(
            f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{step * 0.8:.1f}" height="{h:.1f}" '
            f'fill="url(#{chart_id}-p0)">'
            f"<title>{escape(f'{label}: {fmt(v)} {unit}')}</title></rect>"
        )
        if i % every == 0:
            body.append(_text(x + step * 0.4, base + 16, label, size=11, anchor="middle"))
    body.append(f'<line x1="{left}" y1="{base}" x2="{WIDTH - 10}" y2="{base}" stroke="#212b32"/>')
    if x_label:
        body.append(_text(left + plot_w / 2, base + 34, x_label, size=12, anchor="middle"))
    body.append(f'<text x="4" y="12" font-size="12">{escape(unit)}</text>')
    summary = summary or f"{len(bins)} columns of {unit}. The table below gives every number."
    return Chart(
        chart_id,
        title,
        summary,
        _svg(chart_id, title, summary, base + 42, "".join(body), 1),
        [x_label or "", unit],
        [[label, fmt(v)] for label, v in zip(bins, values, strict=True)],
    )


def progress_chart(
    *,
    id: str,
    title: str,
    fraction: float,
    facts: Sequence[tuple[str, str]],
    summary: str = "",
) -> Chart:
    """One bar filled to ``fraction`` (0 to 1), with the facts (name, value) as its table."""
    chart_id = _check_id(id)
    if math.isnan(fraction) or not 0 <= fraction <= 1:
        raise ValueError("progress is a fraction between 0 and 1")
    percent = f"{fraction * 100:.0f}%"
    w = (WIDTH - 80) * fraction
    body = (
        f'<rect x="4" y="6" width="{WIDTH - 80}" height="24" fill="#fff" stroke="#212b32"/>'
        f'<rect x="4" y="6" width="{w:.1f}" height="24" fill="url(#{chart_id}-p0)"/>'
        f'<text x="{WIDTH - 70}" y="24" font-size="14" font-weight="bold">{escape(percent)}</text>'
    )
    summary = summary or f"{percent} done. " + "; ".join(f"{k}: {v}" for k, v in facts) + "."
    return Chart(
        chart_id,
        title,
        summary,
        _svg(chart_id, title, summary, 36, body, 1),
        ["", ""],
        [["Done", percent], *[[k, v] for k, v in facts]],
    )
