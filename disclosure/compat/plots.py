"""ACRO's charts and survival outputs: checked by our rules, drawn and redacted as ACRO draws them.

A chart that fails its check is still drawn when suppression is on, but with its information removed
(a histogram of a constant column, a pie of equal wedges), and the summary says it was redacted. Images go
to ``acro_artifacts/<name>_<n>.<ext>`` as ACRO names them; they are drawn only where matplotlib is
installed (it is not a project dependency), otherwise the checked counts are the output.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import pandas as pd

from disclosure.compat.tables import _rounded_survival_table
from disclosure.engine import outputs as rules_other

logger = logging.getLogger("acro")
ARTIFACTS_DIR = "acro_artifacts"


def artefact_name(filename: str) -> str:
    """``acro_artifacts/<stem>_<n><ext>`` with the first unused ``n`` (the folder is made when drawing)."""
    stem, ext = os.path.splitext(os.path.basename(filename))
    n = 0
    while os.path.exists(os.path.join(ARTIFACTS_DIR, f"{stem}_{n}{ext}")):
        n += 1
    return os.path.join(ARTIFACTS_DIR, f"{stem}_{n}{ext}")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(draw: Any, filename: str) -> list[str]:
    plt = _pyplot()
    if plt is None:
        return []
    os.makedirs(os.path.dirname(filename) or ".", exist_ok=True)
    fig, ax = plt.subplots()
    draw(ax)
    fig.savefig(filename)
    plt.close(fig)
    return [os.path.normpath(filename)]


class ChartsMixin:
    """hist, pie and surv_func with ACRO's signatures and return values."""

    results: Any
    policy: Any
    federated: bool
    suppress: bool

    def _blocked(self, filename: str) -> bool:
        return os.path.splitext(filename)[1].lower() in self.results.blocked_extensions

    def _federated_record(self, command: str, analysis: str, dof: Any = None) -> None:
        raise NotImplementedError

    def hist(  # noqa: PLR0913 - ACRO's signature
        self,
        data: pd.DataFrame,
        column: Any,
        by_val: Any = None,
        grid: bool = True,
        xlabelsize: Any = None,
        xrot: Any = None,
        ylabelsize: Any = None,
        yrot: Any = None,
        axis: Any = None,
        sharex: bool = False,
        sharey: bool = False,
        figsize: Any = None,
        layout: Any = None,
        bins: Any = 10,
        backend: Any = None,
        legend: bool = False,
        filename: str = "histogram.png",
        **kwargs: Any,
    ) -> str | None:
        """Checked histogram; returns the image's file name, or None when nothing was drawn."""
        if self._blocked(filename):
            return None
        if isinstance(column, list):
            logger.info(
                "Calculating histogram for more than one columns is not currently supported. "
                "Please do each column separately."
            )
            return None
        values = data[column].dropna()
        command = f"hist({column!r}, bins={bins!r})"
        if values.empty:
            logger.warning("Column %s is empty after dropping NaN. \nEmpty Histogram not produced.", column)
            self._add(  # type: ignore[attr-defined]
                output_type="histogram",
                status="fail",
                properties={"method": "histogram"},
                command=command,
                summary="fail; empty column after dropping NaN",
                frames=[],
                verdict={"status": "fail"},
            )
            return None
        edges = rules_other.padded_edges(values, bins)  # numpy's automatic edges are the data's extremes
        table, verdict = rules_other.check_histogram(values, edges, policy=self.policy)
        if self.federated:
            self._federated_record(command, "Histogram")
            return None
        status = verdict["status"]
        summary = f"{status}; " + "; ".join(verdict["reasons"])
        name = artefact_name(filename)
        if status == "fail" and self.suppress:
            logger.warning("Histogram will not be shown as the %s column is disclosive.", column)
            summary += "; Disclosive Histogram Redacted."
            files = _save(lambda ax: ax.hist(np.ones(len(values)), bins=bins), name)
            table = table.assign(count=np.nan)
        else:
            summary += "; Please also check bin ends and empty bins are not disclosive."
            files = _save(lambda ax: ax.hist(values, bins=edges), name)
        self._add(  # type: ignore[attr-defined]
            output_type="histogram",
            status=status,
            properties={"method": "histogram"},
            command=command,
            summary=summary,
            frames=[],
            verdict=verdict,
            files=files or [os.path.normpath(name)],
        )
        return name

    def pie(self, data: pd.DataFrame, column: str, filename: str = "pie.png", **kwargs: Any) -> str | None:
        """Checked pie chart; returns the image's file name, or None when nothing was drawn."""
        if self._blocked(filename):
            return None
        command = f"pie({column!r})"
        counts, verdict = rules_other.check_category_counts(data[column], policy=self.policy)
        if self.federated:
            self._federated_record(command, "PieChart")
            return None
        status = verdict["status"]
        summary = f"{status}; " + "; ".join(verdict["reasons"])
        shown = counts["count"].astype(float)
        if status != "pass" and self.suppress:
            logger.warning("Pie chart will not be shown as the %s column is disclosive.", column)
            status = "fail"
            summary += "; Pie Chart Redacted."
            shown = shown * 0 + 1.0  # equal wedges: the categories are shown, their sizes are not
        else:
            summary += "; Please also check for missing categories."
        name = artefact_name(filename)
        files = _save(lambda ax: ax.pie(shown.to_numpy(), labels=[str(i) for i in shown.index], **kwargs), name)
        self._add(  # type: ignore[attr-defined]
            output_type="pie chart",
            status=status,
            properties={"method": "pie"},
            command=command,
            summary=summary,
            frames=[],
            verdict=verdict,
            files=files or [os.path.normpath(name)],
        )
        return name

    def surv_func(
        self,
        time: Any,
        status: Any,
        output: str,
        entry: Any = None,
        title: Any = None,
        freq_weights: Any = None,
        exog: Any = None,
        bw_factor: float = 1.0,
        filename: str = "kaplan-meier.png",
    ) -> Any:
        """Kaplan-Meier table (``output="table"``) or plot (``"plot"``: returns ``(axes, file name)``),
        checked by our survival rule; with suppression the curve only steps once enough people have left
        the risk set (``rounded_survival_fun``)."""
        import statsmodels.api as sm

        fitted = sm.SurvfuncRight(time, status, entry, title, freq_weights, exog, bw_factor)
        table = fitted.summary()
        _, verdict = rules_other.check_survival(pd.Series(time), pd.Series(status), policy=self.policy)
        command = f"surv_func(time, status, output={output!r})"
        if self.suppress:
            table = _rounded_survival_table(table)
        if self.federated:
            self._federated_record(command, "KaplanMeier", dof=table[["num at risk"]].to_csv())
            if output == "table":
                return table
            if output == "plot" and not self._blocked(filename):
                name = artefact_name(filename)
                _save(lambda ax: ax.step(table.index, table["Surv prob"], where="post"), name)
                return (None, name)
            return None
        summary = f"{verdict['status']}; KaplanMeier: " + "; ".join(verdict["reasons"])
        if output == "table":
            out = self._add(  # type: ignore[attr-defined]
                output_type="table",
                status=verdict["status"],
                properties={"method": "surv func"},
                command=command,
                summary=summary,
                frames=[table],
                verdict=verdict,
            )
            if self.suppress:
                out.exception = "Events Reported when min_threshold accumulated"
                out.status = "review"
            return table
        if output == "plot":
            if self._blocked(filename):
                return None
            column = "rounded_survival_fun" if self.suppress else "Surv prob"
            name = artefact_name(filename)
            files = _save(lambda ax: ax.step(table.index, table[column], where="post"), name)
            self._add(  # type: ignore[attr-defined]
                output_type="survival plot",
                status=verdict["status"],
                properties={"method": "surv_func"},
                command=command,
                summary=summary,
                frames=[],
                verdict=verdict,
                files=files or [os.path.normpath(name)],
            )
            return (None, name)
        return None
