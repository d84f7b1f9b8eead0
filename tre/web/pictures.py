"""The pictures of the service's own pages: turnaround per stage and extract progress, as
``tre.web.charts`` charts. Numbers come from ``tre.turnaround`` and the extract's job; this module only
chooses what to draw and says it in words."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from tre.turnaround import Turnaround
from tre.web.charts import Chart, bar_chart, progress_chart

# What the extract service writes as its job's progress message ("<dataset>: 12,345 rows read").
_ROWS_READ = re.compile(r"^(?P<dataset>.*): (?P<rows>[\d,]+) rows read$")


def turnaround_charts(t: Turnaround, *, id: str, noun: str) -> list[Chart]:
    """The median working days per stage, then the most recent items stage by stage."""
    counts = t.counts
    charts = [
        bar_chart(
            id=f"{id}-median",
            title=f"{noun.capitalize()}: median working days per stage",
            categories=[f"{stage} ({n} done)" for stage, n in zip(t.stages, counts, strict=True)],
            series=[("Median", t.medians)],
            unit="working days",
            summary=f"Median working days spent at each stage by {noun}, over every {noun[:-1]} that finished "
            "the stage. The table below gives every number.",
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
