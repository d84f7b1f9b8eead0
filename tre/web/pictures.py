"""The pictures of the service's own pages: turnaround per stage, extract progress, a delivery's data
quality and a linkage run's quality, as ``tre.web.charts`` charts. Numbers come from ``tre.turnaround``,
the extract's job, the delivery's quality report and the linkage run's quality figures (counts and
ratios only, never a value from the data); this module only chooses what to draw and says it in words."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tre.turnaround import DEFAULT_WINDOW, Turnaround, Window, window_named
from tre.web.charts import Chart, bar_chart, column_chart, progress_chart

# What the extract service writes as its job's progress message ("<dataset>: 12,345 rows read").
_ROWS_READ = re.compile(r"^(?P<dataset>.*): (?P<rows>[\d,]+) rows read$")


def turnaround_window(key: str | None) -> tuple[Window, str | None]:
    """The window a turnaround page's ``window`` parameter asks for, and the error to show when it names
    none: the page then shows the default window (the last 90 days) under that error (ADR 0067)."""
    try:
        return window_named(key), None
    except ValueError as error:
        return DEFAULT_WINDOW, str(error)


def turnaround_charts(t: Turnaround, *, id: str, noun: str, window: Window | None = None) -> list[Chart]:
    """The median working days per stage, then the most recent items stage by stage."""
    counts = t.counts
    among = "" if window is None or window.days is None else f" in {window.label} or still open"
    charts = [
        bar_chart(
            id=f"{id}-median",
            title=f"{noun.capitalize()}: median working days per stage",
            categories=[f"{stage} ({n} done)" for stage, n in zip(t.stages, counts, strict=True)],
            series=[("Median", t.medians)],
            unit="working days",
            summary=f"Median working days spent at each stage by {noun}, over every {noun[:-1]} that finished "
            f"the stage among the {noun} finished{among}. The table below gives every number.",
        )
    ]
    if t.items:
        charts.append(
            bar_chart(
                id=f"{id}-recent",
                title=f"The latest {len(t.items)} {noun}: working days per stage",
                categories=[it.label for it in t.items],
                series=[(stage, [it.stages[i] for it in t.items]) for i, stage in enumerate(t.stages)],
                unit="working days",
                summary=f"One bar per {noun[:-1]}, newest first, split into {', '.join(t.stages)}; "
                "a stage still under way is counted up to now. The table below gives every number.",
            )
        )
    return charts


@dataclass(frozen=True)
class ExtractProgress:
    fraction: float
    dataset: str
    rows_read: int | None
    rows_per_second: float | None
    seconds_left: float | None


def extract_progress(
    fraction: float, message: str, started_at: dt.datetime | None, now: dt.datetime
) -> ExtractProgress:
    """Rows per second and time left from the job's progress (a fraction and the rows read so far).

    The rate is rows read over time since the job started; the time left assumes the same rate for the
    fraction still to do. Without a start, rows or any progress there is no estimate (``None``)."""
    match = _ROWS_READ.match(message or "")
    rows = int(match["rows"].replace(",", "")) if match else None
    dataset = match["dataset"] if match else ""
    fraction = min(max(float(fraction or 0.0), 0.0), 1.0)
    elapsed = (now - started_at).total_seconds() if started_at is not None else None
    rate = rows / elapsed if rows is not None and elapsed and elapsed > 0 else None
    left = elapsed * (1 - fraction) / fraction if elapsed and fraction > 0 else None
    return ExtractProgress(fraction, dataset, rows, rate, left)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not known yet"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min"


def extract_progress_chart(p: ExtractProgress, *, id: str, title: str) -> Chart:
    return progress_chart(
        id=id,
        title=title,
        fraction=p.fraction,
        facts=[
            ("Dataset", p.dataset or "–"),
            ("Rows read", f"{p.rows_read:,}" if p.rows_read is not None else "–"),
            ("Rows per second", f"{p.rows_per_second:,.0f}" if p.rows_per_second is not None else "not known yet"),
            ("Time left", _duration(p.seconds_left)),
        ],
    )


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}%"


def _share(value: Any) -> float | None:
    return None if value is None else round(float(value) * 100, 1)


def delivery_quality_charts(report: Mapping[str, Any], *, id: str = "delivery") -> list[Chart]:
    """Completeness per column (present and missing, as per cent of rows), then the values failing a
    check per column when any did."""
    columns: Mapping[str, Mapping[str, Any]] = report.get("columns") or {}
    if not columns:
        return []
    names = list(columns)
    complete = [_share(c.get("completeness")) for c in columns.values()]
    charts = [
        bar_chart(
            id=f"{id}-completeness",
            title="Completeness of each column",
            categories=names,
            series=[
                ("With a value", complete),
                ("Missing", [None if v is None else round(100 - v, 1) for v in complete]),
            ],
            unit="per cent of rows",
            fmt=_percent,
            summary=f"One bar per column ({len(names)}), split into the share of rows with a value and the "
            "share missing. The table below gives every number.",
        )
    ]
    checks = (
        ("Not of its type", "type_failures"),
        ("Dates in the future", "dates_in_future"),
        ("Dates too early", "dates_too_early"),
        ("Invalid codes", "invalid_codes"),
    )
    failing = [(label, [float(c.get(key) or 0) for c in columns.values()]) for label, key in checks]
    failing.append(
        ("Invalid NHS numbers", [float(sum((c.get("nhs_numbers_invalid") or {}).values())) for c in columns.values()])
    )
    failing = [(label, values) for label, values in failing if any(values)]
    if failing:
        charts.append(
            bar_chart(
                id=f"{id}-failures",
                title="Values failing a check, per column",
                categories=names,
                series=[(label, list(values)) for label, values in failing],
                unit="values",
                summary="One bar per column, split by the check the values failed. The table below gives "
                "every number.",
            )
        )
    return charts


def linkage_quality_charts(quality: Mapping[str, Any], *, id: str = "linkage") -> list[Chart]:
    """A linkage run's quality: match rate per source, how each source's records were linked, the
    estimated precision and recall, and the match weight distribution of scored pairs."""
    charts: list[Chart] = []
    sources: Mapping[str, Mapping[str, Any]] = quality.get("sources") or {}
    if sources:
        names = list(sources)
        charts.append(
            bar_chart(
                id=f"{id}-match-rates",
                title="Match rate per source",
                categories=names,
                series=[("Linked to another source", [_share(s.get("match_rate")) for s in sources.values()])],
                unit="per cent of the source's records",
                fmt=_percent,
                summary="One bar per source: the share of its records linked to a record of another source. "
                "The table below gives every number.",
            )
        )
        methods = ("deterministic", "probabilistic", "clerical", "singleton")
        charts.append(
            bar_chart(
                id=f"{id}-methods",
                title="How each source's records were linked",
                categories=names,
                series=[
                    (m.capitalize(), [float((s.get("by_method") or {}).get(m, 0)) for s in sources.values()])
                    for m in methods
                ],
                unit="records",
                summary="One bar per source, split by how its records were linked: deterministically (a "
                "trusted NHS number), probabilistically, by a linkage officer's decision, or not at all "
                "(singleton). The table below gives every number.",
            )
        )
    estimated: Mapping[str, Any] = quality.get("estimated") or {}
    if estimated:
        charts.append(
            bar_chart(
                id=f"{id}-precision-recall",
                title="Estimated precision and recall",
                categories=["Precision", "Recall"],
                series=[("Estimate", [_share(estimated.get("precision")), _share(estimated.get("recall"))])],
                unit="per cent",
                fmt=_percent,
                summary="Precision: the share of the pairs linked that are true pairs. Recall: the share of "
                "the true pairs that were linked. A dash means not measurable. The table below gives the "
                "numbers.",
            )
        )
    histogram = quality.get("match_weight_histogram") or []
    if histogram:
        charts.append(
            column_chart(
                id=f"{id}-weights",
                title="Match weight distribution of scored pairs",
                bins=[str(b["weight"]) for b in histogram],
                values=[float(b["pairs"]) for b in histogram],
                unit="pairs",
                x_label="Match weight (bin from)",
                summary=f"One column per match weight bin ({len(histogram)}), lowest weight on the left: the "
                "number of candidate pairs scored in it. The table below gives every number.",
            )
        )
    return charts
