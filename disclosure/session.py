"""Researcher session: each call returns the statistic and records its verdict in the same step.

The method names and arguments are ACRO 1.0's, so a notebook written for ACRO runs unchanged with
``from disclosure.compat import ACRO``. ``finalise()`` writes ``results.json`` in ACRO's schema (so
SACRO-Viewer opens it) plus, per output, our verdict (``tre_verdict``) and table specification
(``table_spec``) for the output queue.

Populations: read the extract through the session (``session.read(path)``) or hand it over once
(``session.use(frame, "admissions")``); tables made from the returned frame, or from frames filtered from
it, record the dataset and the filters (see ``disclosure.tracked`` for the idioms captured). A table whose
population cannot be verified records its filters as unknown, and the output queue reviews it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from disclosure.aggfuncs import aggfunc_name, matching_statistic, unsupported
from disclosure.engine import outputs as rules_other
from disclosure.engine import population as pop
from disclosure.engine.deferred import DeferredDict
from disclosure.engine.policy import Policy, default_policy
from disclosure.engine.specs import table_spec
from disclosure.engine.summary import check_summary_table, is_summary_statistic
from disclosure.engine.tables import TableResult, check_frequency_table, check_magnitude_table
from disclosure.engine.verdict import combine_status, review_other_file
from disclosure.layout import pandas_layout
from disclosure.sacro import CONFIG_FILE, acro_config, fair_description
from disclosure.tracked import TrackedFrame, TrackedSeries, track

# Our rule names -> the check names ACRO 1.0.2 writes in results.json ("sdc" and "outcome"), which is what
# SACRO-Viewer displays. Rules ACRO does not have keep our name.
ACRO_RULE_NAMES = {
    "threshold": "MinimumThresholdCheck",
    "zeros": "PresenceOfZeroCheck",
    "p_percent": "PPercentCheck",
    "nk_dominance": "NKCheck",
    "identical_values": "AllSameValuesCheck",
    "missing": "MissingCheck",
    "negatives": "NegativeValuesCheck",
    "class_disclosure": "ClassDisclosureCheck",
}
SECONDARY = "SecondarySuppression"  # our check name for cells suppressed to protect others
EMPTY = "EmptyCell"  # cells of a mean, sum or other statistic with no records: blank, nothing released
RESULTS_VERSION = "1.0.2"  # the ACRO release whose results.json schema this file follows
TOOL = {"@type": "SoftwareApplication", "name": "tre-disclosure"}  # who wrote results.json: not ACRO


@dataclass
class Output:
    """One output of the session with everything a checker needs."""

    uid: str
    output_type: str
    status: str
    properties: dict
    command: str
    summary: str
    frames: list[pd.DataFrame]
    verdict: dict
    sdc: dict = field(default_factory=dict)
    outcome: pd.DataFrame | None = None
    spec: dict | None = None
    files: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    exception: str = ""
    timestamp: str = field(default_factory=lambda: _dt.datetime.now().isoformat())
    before: pd.DataFrame | None = None  # the table before mitigation, for the checker only
    fair: dict = field(default_factory=dict)
    # results.json's "summary" when it differs from ``summary``: the compat layer shows ACRO 1.0.2's text in
    # ``summary`` and keeps the status-first text SACRO-Viewer parses for its badge here (ADR 0025).
    viewer_summary: str = ""

    @property
    def output(self) -> list:
        """ACRO's name: the tables of a table or model output, else the files it wrote."""
        return list(self.frames) if self.frames else list(self.files)

    @output.setter
    def output(self, values: list) -> None:
        self.frames = [v for v in values if isinstance(v, pd.DataFrame)]
        self.files = [v for v in values if not isinstance(v, pd.DataFrame)]

    def __str__(self) -> str:
        return (
            f"uid: {self.uid}\nstatus: {self.status}\ntype: {self.output_type}\nproperties: {self.properties}\n"
            f"sdc: {self.sdc}\ncommand: {self.command}\nsummary: {self.summary}\noutcome: {self.outcome}\n"
            f"output: {self.output}\ntimestamp: {self.timestamp}\ncomments: {self.comments}\n"
            f"exception: {self.exception}\n"
        )


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, list | tuple) else [x]


def _as_arrays(x: Any) -> list:
    """crosstab's index/columns: one array-like (a Series, array or plain list of labels) or a list of them."""
    if isinstance(x, list | tuple) and x and not any(isinstance(v, pd.Series | np.ndarray | list) for v in x):
        return [np.asarray(x)]
    return _as_list(x)


def _label(f: Any) -> Any:
    """The name pandas gives an aggfunc's level: the string, or a function's ``__name__``."""
    return f if f is None or isinstance(f, str) else getattr(f, "__name__", repr(f))


def _sdc_for_table(result: TableResult, mitigated: bool = True) -> dict:
    """ACRO's per-file sdc record: per check, a count and the [row, col] positions of flagged cells.

    Positions are in the released table's layout without margins (row = position among the row-dimension
    combinations shown, col = among the column-dimension combinations shown, as ``disclosure.layout`` drops
    combinations with no records), as ACRO numbers them. Vectorised: thousands of flagged cells are common.
    """
    shape = result.stats.shape
    n_row = max(1, min(result.n_row_dims, len(shape) - 1)) if len(shape) > 1 else len(shape)
    nr = int(np.prod(shape[:n_row])) if shape else 1
    nc = int(np.prod(shape[n_row:])) if len(shape) > n_row else 1
    interior = result.stats.interior
    records = np.asarray(result.stats.records[interior]).reshape(nr, nc) > 0
    kept_r: np.ndarray = np.asarray(records.any(axis=1))
    kept_c: np.ndarray = np.asarray(records.any(axis=0))
    row_at, col_at = np.cumsum(kept_r) - 1, np.cumsum(kept_c) - 1

    def positions(mask: np.ndarray) -> np.ndarray:
        r, c = np.divmod(np.flatnonzero(mask[interior].reshape(nr, nc)), nc)
        shown = kept_r[r] & kept_c[c]
        return np.column_stack([row_at[r[shown]], col_at[c[shown]]])

    summary: dict[str, int] = {}
    found: dict[str, list[np.ndarray]] = {}
    for rule in result.rules:
        name = ACRO_RULE_NAMES.get(rule.rule, rule.rule)
        listed = positions(rule.mask)
        summary[name] = summary.get(name, 0) + len(listed)
        found.setdefault(name, []).append(listed)
    if result.suppression is not None and mitigated:
        # Cells hidden only to protect the primary ones: listed so the viewer highlights every blank cell.
        found[SECONDARY] = [positions(result.suppression.secondary)]
        summary[SECONDARY] = len(found[SECONDARY][0])
    if result.statistic != "count":
        # A cell with no records has no mean, sum or other statistic: it is blank too, and says why.
        empty = positions(np.asarray(result.stats.records) == 0)
        if len(empty):
            found[EMPTY] = [empty]
            summary[EMPTY] = len(empty)

    def cells() -> dict[str, Any]:
        # thousands of [row, col] lists: made when results.json is written or the record is read (ADR 0041)
        return {"cells": {name: [p for part in parts for p in part.tolist()] for name, parts in found.items()}}

    return DeferredDict({"summary": summary}, cells, ("summary", "cells"))


def _merged_sdc(parts: list[dict]) -> dict:
    """One sdc record for a table of several statistics: a cell flagged by any statistic's check is listed
    once under that check (ACRO keeps one record per output)."""
    if len(parts) == 1:
        return parts[0]
    cells: dict[str, list] = {}
    for part in parts:
        for name, positions in part["cells"].items():
            listed = cells.setdefault(name, [])
            listed.extend(p for p in positions if p not in listed)
    return {"summary": {name: len(positions) for name, positions in cells.items()}, "cells": cells}


class Session:
    """A researcher's output-checking session (pure: it writes files only when ``finalise`` is called)."""

    def __init__(
        self,
        policy: Policy | None = None,
        suppress: bool = False,
        mitigation: str | None = None,
        round_base: int | None = None,
        dataset: str | None = None,
        person: str | None = None,
    ):
        self.policy = policy or default_policy()
        if round_base is not None:
            self.policy = self.policy.with_overrides({"rounding": {"base": int(round_base)}})
        self.mitigation = mitigation or ("suppress" if suppress else "none")
        self.dataset = dataset
        self.person = person
        self.results: dict[str, Output] = {}
        self._next = 0
        self._sources: dict[str, pd.DataFrame] = {}  # each dataset as read, to verify captured filters

    # --- the data read ------------------------------------------------------------------------------
    def use(self, frame: pd.DataFrame, dataset: str) -> TrackedFrame:
        """Name the dataset ``frame`` holds (as read, unfiltered); tables from the returned frame, and
        frames filtered from it, record their population."""
        if not isinstance(dataset, str) or not dataset:
            raise ValueError("name the dataset, e.g. session.use(df, 'admissions')")
        if not frame.index.is_unique:
            frame = frame.reset_index(drop=True)
        self._sources[dataset] = frame.copy(deep=False)  # copy-on-write: later edits to frame do not reach it
        if self.dataset is None:
            self.dataset = dataset
        return track(frame, dataset)

    def read(self, path: str, dataset: str | None = None) -> TrackedFrame:
        """Read an extract (a parquet file or folder of parts, CSV or Stata file) and ``use`` it. The
        dataset's name is the extract's folder (``<dataset>/data/part-*.parquet``) or the file's stem."""
        location = os.path.abspath(path)
        name = dataset or _dataset_name(location)
        if os.path.isdir(location):
            parts = sorted(f for f in os.listdir(location) if f.endswith(".parquet"))
            frame = pd.concat([pd.read_parquet(os.path.join(location, f)) for f in parts], ignore_index=True)
        elif location.endswith(".parquet"):
            frame = pd.read_parquet(location)
        elif location.endswith(".csv"):
            frame = pd.read_csv(location)
        elif location.endswith(".dta"):
            frame = pd.read_stata(location)
        else:
            raise ValueError("read() takes parquet, CSV or Stata (.dta) files; for others use session.use(df, name)")
        return self.use(frame, name)

    def _population(self, frame: Any, columns: dict[str, pd.Series]) -> tuple[str | None, list[dict] | None]:
        """(dataset, filters) of a table made from ``frame`` (or its rows) with these columns; filters
        ``None`` when they cannot be verified against the dataset as read."""
        dataset = getattr(frame, "_tre_dataset", None) or self.dataset
        if isinstance(frame, TrackedFrame | TrackedSeries) and getattr(frame, "_tre_dataset", None):
            filters = getattr(frame, "_tre_filters", None)
        else:
            filters = []  # a plain frame: the whole dataset, if it verifies
        source = self._sources.get(dataset) if dataset else None
        if source is None or filters is None:
            return dataset, None
        try:
            expected = source.index[pop.mask(source, filters).to_numpy()]
        except (KeyError, TypeError, ValueError):
            return dataset, None
        index = frame.index
        if len(index) != len(expected):
            return dataset, None
        if not index.equals(expected) and (
            not index.is_unique or not index.sort_values().equals(expected.sort_values())
        ):
            return dataset, None
        for name, values in columns.items():
            if name not in source.columns:
                return dataset, None
            if not _same_values(source[name].loc[index], values):
                return dataset, None  # a derived or changed column: the extract does not hold these values
        return dataset, filters

    def _people_for(self, series: Any, n: int) -> np.ndarray | None:
        """The person id of each row of a crosstab's series, from the dataset the series was taken from."""
        dataset = getattr(series, "_tre_dataset", None)
        source = self._sources.get(dataset) if dataset else None
        if source is None or self.person not in source.columns or len(series) != n:
            return None
        try:
            return source[self.person].loc[series.index].to_numpy()
        except KeyError:
            return None

    # --- mitigation switches (ACRO names) -------------------------------------------------------------
    @property
    def suppress(self) -> bool:
        return self.mitigation in ("suppress", "round")

    @suppress.setter
    def suppress(self, value: bool) -> None:
        self.mitigation = "suppress" if value else "none"

    def enable_suppression(self) -> None:
        self.mitigation = "suppress"

    def disable_suppression(self) -> None:
        self.mitigation = "none"

    def enable_rounding(self, base: int | None = None) -> None:
        if base is not None:
            self.policy = self.policy.with_overrides({"rounding": {"base": int(base)}})
        self.mitigation = "round"

    def disable_rounding(self) -> None:
        if self.mitigation == "round":
            self.mitigation = "none"

    # --- bookkeeping ---------------------------------------------------------------------------------
    def _add(self, **kwargs: Any) -> Output:
        uid = f"output_{self._next}"
        self._next += 1
        return self._add_as(uid, **kwargs)

    acro_summaries = False  # the compat layer shows ACRO 1.0.2's summary text (disclosure.compat)

    def _add_as(self, uid: str, **kwargs: Any) -> Output:
        acro_text = kwargs.pop("acro_summary", "")
        out = Output(uid=uid, **kwargs)
        if self.acro_summaries and acro_text:
            out.viewer_summary, out.summary = out.summary, acro_text
        self.results[uid] = out
        return out

    def _table_output(
        self,
        method: str,
        command: str,
        results: Sequence[tuple[str | None, TableResult]],
        margins: bool,
        margins_name: str,
        normalize: Any = False,
        show_suppressed: bool = False,
        value_name: str | None = None,
        value_dtype: Any = None,
        dim_dtypes: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        frames, befores = [], []
        shape = {
            "margins": margins,
            "margins_name": margins_name,
            "value_name": value_name,
            "value_dtype": value_dtype,
            "dim_dtypes": dim_dtypes,
        }
        for _, res in results:
            shown = res.table(
                released=self.mitigation != "none" and not show_suppressed,
                margins=margins,
                margins_name=margins_name,
            )
            before = res.table(released=False, margins=margins, margins_name=margins_name)
            befores.append(pandas_layout(before, res, **shape))
            frames.append(pandas_layout(shown, res, **shape))
        if len(results) > 1:
            table = pd.concat(frames, axis=1, keys=[name for name, _ in results])
            before = pd.concat(befores, axis=1, keys=[name for name, _ in results])
        else:
            table, before = frames[0], befores[0]
        if normalize:
            table = _normalise(table, normalize)
        status = combine_status(r.verdict["status"] for _, r in results)
        verdicts = [r.verdict for _, r in results]
        first = results[0][1]
        summary = f"{status}; " + "; ".join(reason for v in verdicts for reason in v["reasons"])
        summary += _acro_check_lines([r for _, r in results])
        self._add(
            output_type="table",
            status=status,
            properties={"method": method, "mitigation": self.mitigation},
            command=command,
            summary=summary,
            acro_summary=_acro_summary(results, first.stats.dims),
            fair=fair_description(
                results[0][0] or first.statistic,
                {r.rule: (r.severity if r.flagged else "pass") for _, res in results for r in res.rules},
                value_name,
                list(first.stats.dims),
            ),
            frames=[table],
            verdict=verdicts[0] if len(verdicts) == 1 else {"status": status, "parts": verdicts},
            sdc=_merged_sdc([_sdc_for_table(r, mitigated=self.mitigation == "suppress") for _, r in results]),
            outcome=first.outcome(names=ACRO_RULE_NAMES),
            spec=first.verdict.get("spec"),
            before=before,
        )
        return table

    def _check(
        self,
        df: pd.DataFrame,
        dims: list[str],
        value: str | None,
        aggfunc: str | None,
        n_row_dims: int,
        population: tuple[str | None, list[dict] | None] = (None, None),
        mitigation: str | None = None,
    ) -> TableResult:
        stat = aggfunc or "count"
        mitigation = mitigation or self.mitigation
        person = self.person if self.person in df.columns else None
        if self.person is not None and person is None:
            raise ValueError(
                f"the session counts people by {self.person!r}, which this table's data does not hold; "
                "make the table from the frame that has it"
            )
        if stat in ("count", "size") or value is None:
            res = check_frequency_table(
                df, dims, person=person, policy=self.policy, mitigation=mitigation, n_row_dims=n_row_dims
            )
            stat = "count"
        elif is_summary_statistic(stat):
            res = check_summary_table(
                df,
                dims,
                value,
                statistic=stat,
                person=person,
                policy=self.policy,
                mitigation=mitigation,
                n_row_dims=n_row_dims,
            )
        elif stat in ("mean", "sum"):
            res = check_magnitude_table(
                df,
                dims,
                value,
                statistic=stat,
                person=person,
                policy=self.policy,
                mitigation=mitigation,
                n_row_dims=n_row_dims,
            )
        else:
            raise ValueError(
                f"aggfunc {aggfunc!r} is not supported by the automated checks; "
                "use custom_output() and ask for a review"
            )
        if value is not None and df[value].dtype == np.float32 and stat in _FLOAT32_DIFFERS:
            if mitigation != "round":
                _shown_as_pandas_computes(res, df, dims, value, stat)
        dataset, filters = population
        res.verdict["spec"] = table_spec(
            dims, stat, value=value, person=person, dataset=dataset, filters=filters, n_row_dims=n_row_dims
        )
        return res

    def _named_statistic(self, f: Any, df: pd.DataFrame, dims: list[str], value: str | None, n_row_dims: int) -> Any:
        """``f`` if it names a statistic; a function is named by the one statistic its table equals
        (``disclosure.aggfuncs``), checked without mitigation only to compare the values."""
        if f is None or isinstance(f, str):
            return f
        if value is None:
            raise unsupported(f)

        def values_of(statistic: str) -> tuple[np.ndarray, tuple[pd.Index, ...]] | None:
            try:
                res = self._check(df, dims, value, statistic, n_row_dims, mitigation="none")
            except (TypeError, ValueError):
                return None  # a statistic this column cannot have (e.g. a mode of text)
            return np.asarray(res.values[res.stats.interior], dtype=np.float64), tuple(res.stats.categories)

        return matching_statistic(f, df, dims, value, values_of)

    # --- differentially private tables -------------------------------------------------------------
    def dp_count(
        self, data: Any, dims: list[str], categories: dict[str, list], epsilon: float, *, max_rows_per_person: int = 1
    ) -> pd.DataFrame:
        """Noisy counts per cell of the public category product (OpenDP, Laplace). Nothing is charged
        here: the output queue charges the project's privacy budget when the output is released."""
        return self._dp("count", data, dims, categories, epsilon, None, None, max_rows_per_person)

    def dp_sum(
        self,
        data: Any,
        dims: list[str],
        categories: dict[str, list],
        value: str,
        bounds: tuple[float, float],
        epsilon: float,
        *,
        max_rows_per_person: int = 1,
    ) -> pd.DataFrame:
        """Noisy sums of ``value`` clamped to ``bounds`` per cell (charged at release, not here)."""
        return self._dp("sum", data, dims, categories, epsilon, value, bounds, max_rows_per_person)

    def dp_mean(
        self,
        data: Any,
        dims: list[str],
        categories: dict[str, list],
        value: str,
        bounds: tuple[float, float],
        epsilon: float,
        *,
        max_rows_per_person: int = 1,
    ) -> pd.DataFrame:
        """Noisy means (noisy sum / noisy count, epsilon split evenly; charged at release, not here)."""
        return self._dp("mean", data, dims, categories, epsilon, value, bounds, max_rows_per_person)

    def _dp(
        self,
        statistic: str,
        data: Any,
        dims: list[str],
        categories: dict[str, list],
        epsilon: float,
        value: str | None,
        bounds: tuple[float, float] | None,
        max_rows: int,
    ) -> pd.DataFrame:
        from disclosure.engine import dp
        from disclosure.engine.dpcheck import dp_spec

        dims = _as_list(dims)
        person = self.person if self.person in data.columns else None
        if self.person is not None and person is None:
            raise ValueError(f"the session counts people by {self.person!r}, which this data does not hold")
        used = [*dims, *([value] if value else []), *([person] if person else [])]
        dataset, filters = self._population(data, {c: data[c] for c in used})
        spec = dp_spec(
            statistic,
            dims,
            categories,
            epsilon,
            value=value,
            bounds=bounds,
            max_rows_per_person=max_rows,
            person=person,
            dataset=dataset,
            filters=filters,
        )
        frame = pd.DataFrame(data)
        policy = self.policy
        if statistic == "count":
            table, verdict = dp.dp_counts(
                frame, dims, categories, epsilon, None, "", person=person, max_rows_per_person=max_rows, policy=policy
            )
        else:
            assert value is not None and bounds is not None  # dp_spec refused them missing
            make = dp.dp_sums if statistic == "sum" else dp.dp_means
            table, verdict = make(
                frame,
                dims,
                categories,
                value,
                bounds,
                epsilon,
                None,
                "",
                person=person,
                max_rows_per_person=max_rows,
                policy=policy,
            )
        self._add(
            output_type="table",
            status=verdict["status"],
            properties={"method": f"dp_{statistic}", "mitigation": "differential privacy", "epsilon": epsilon},
            command=f"dp_{statistic}(dims={dims}, epsilon={epsilon:g})",
            summary=f"{verdict['status']}; differentially private {statistic}, epsilon {epsilon:g}, charged at release",
            frames=[table],
            verdict=verdict,
            spec=spec,
        )
        return table

    # --- tables --------------------------------------------------------------------------------------
    def crosstab(
        self,
        index: Any,
        columns: Any,
        values: Any = None,
        rownames: Any = None,
        colnames: Any = None,
        aggfunc: Any = None,
        margins: bool = False,
        margins_name: str = "All",
        dropna: bool = True,
        normalize: Any = False,
        show_suppressed: bool = False,
    ) -> pd.DataFrame:
        """pandas.crosstab with the checks (rows with a missing label are always dropped)."""
        rows, cols = _as_arrays(index), _as_arrays(columns)
        several = isinstance(values, list | tuple) and any(isinstance(v, pd.Series | np.ndarray | list) for v in values)
        if several or (values is None and aggfunc is not None):
            raise ValueError("crosstab needs aggfunc and values together; specify a single values column")
        rnames = _as_list(rownames) or [getattr(s, "name", None) or f"row_{i}" for i, s in enumerate(rows)]
        cnames = _as_list(colnames) or [getattr(s, "name", None) or f"col_{i}" for i, s in enumerate(cols)]
        columns_by_name: dict[str, Any] = {
            # Categoricals keep their declared categories (an empty one is still a cell the reader sees).
            n: s.array if isinstance(s, pd.Series) and isinstance(s.dtype, pd.CategoricalDtype) else np.asarray(s)
            for n, s in zip(rnames + cnames, rows + cols, strict=True)
        }
        value_name = None
        if values is not None:
            value_name = getattr(values, "name", None) or "values"
            columns_by_name[value_name] = np.asarray(values)
        # copy=False: the checks only read the columns, and consolidating them into one block copied every
        # column of millions of rows (a tenth of pandas' own crosstab time).
        df = pd.DataFrame(columns_by_name, copy=False)
        funcs = [aggfunc_name(f) for f in _as_list(aggfunc)] or [None]
        series = [s for s in rows + cols + ([values] if values is not None else []) if isinstance(s, pd.Series)]
        population: tuple[str | None, list[dict] | None] = (self.dataset, None)
        if series and len(series) == len(rows + cols) + (values is not None):
            first = series[0]
            same = all(
                s.index.equals(first.index)
                and getattr(s, "_tre_dataset", None) == getattr(first, "_tre_dataset", None)
                and getattr(s, "_tre_filters", None) == getattr(first, "_tre_filters", None)
                for s in series
            )
            if same:
                named = {n: s for n, s in zip(rnames + cnames, rows + cols, strict=True)}
                if value_name is not None:
                    named[value_name] = values
                population = self._population(first, named)
        if self.person is not None and self.person not in df.columns:
            people = self._people_for(series[0] if series else None, len(df))
            if people is not None:
                df[self.person] = people
        statistics = [self._named_statistic(f, df, rnames + cnames, value_name, len(rnames)) for f in funcs]
        results = [
            (_label(f) or "count", self._check(df, rnames + cnames, value_name, n, len(rnames), population))
            for f, n in zip(funcs, statistics, strict=True)
        ]
        command = f"crosstab(index={rnames}, columns={cnames}, aggfunc={aggfunc!r})"
        return self._table_output(
            "crosstab",
            command,
            results,
            margins,
            margins_name,
            normalize,
            show_suppressed,
            value_name=value_name,
            value_dtype=np.asarray(values).dtype if values is not None else None,
            dim_dtypes={n: df[n].dtype for n in rnames + cnames},
        )

    def pivot_table(
        self,
        data: pd.DataFrame,
        values: Any = None,
        index: Any = None,
        columns: Any = None,
        aggfunc: Any = "mean",
        fill_value: Any = None,
        margins: bool = False,
        dropna: bool = True,
        margins_name: str = "All",
        observed: bool = False,
        sort: bool = True,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """pandas.pivot_table with the checks; one value column per call."""
        rows, cols = _as_list(index), _as_list(columns)
        value_list = _as_list(values)
        if len(value_list) > 1:
            raise ValueError(
                "pivot_table does not take multiple values columns: the checks cover one per call, so make one "
                "table per column"
            )
        value = value_list[0] if value_list else None
        funcs = [aggfunc_name(f) for f in _as_list(aggfunc)]
        if value is None and any(f not in ("count", "size") for f in funcs):
            raise ValueError(
                f"pivot_table with aggfunc {aggfunc!r} needs a values column: values=<the column to summarise>"
            )
        used = [c for c in rows + cols + ([value] if value is not None else []) if c in data.columns]
        population = self._population(data, {c: data[c] for c in used})
        statistics = [self._named_statistic(f, data, rows + cols, value, len(rows)) for f in funcs]
        results = [
            (_label(f), self._check(data, rows + cols, value, n, len(rows), population))
            for f, n in zip(funcs, statistics, strict=True)
        ]
        table = self._table_output(
            "pivot_table",
            f"pivot_table(values={values!r}, index={rows}, columns={cols}, aggfunc={aggfunc!r})",
            results,
            margins,
            margins_name,
            value_name=value,
            value_dtype=data[value].dtype if value is not None and value in data.columns else None,
            dim_dtypes={n: data[n].dtype for n in rows + cols if n in data.columns},
        )
        if isinstance(values, list | tuple) and cols and value is not None:
            table = pd.concat({value: table}, axis=1) if len(funcs) == 1 else _inner_level(table, value)
        if isinstance(aggfunc, list | tuple) and len(funcs) == 1:
            table = pd.concat({_label(funcs[0]): table}, axis=1)
        self.results[list(self.results)[-1]].frames = [table]
        return table.fillna(fill_value) if fill_value is not None else table

    # --- models --------------------------------------------------------------------------------------
    def _model(self, method: str, fitted: Any, command: str, categorical: dict) -> Any:
        verdict = rules_other.check_regression(
            fitted, categorical_counts=categorical, policy=self.policy, method=method
        )
        frames = [
            pd.DataFrame(t.data[1:], columns=t.data[0]) if t.data else pd.DataFrame() for t in fitted.summary().tables
        ]
        self._add(
            output_type="regression",
            status=verdict["status"],
            properties={"method": method, "dof": float(fitted.df_resid)},
            command=command,
            summary=f"{verdict['status']}; " + "; ".join(verdict["reasons"]),
            frames=frames,
            verdict=verdict,
        )
        return fitted

    def _array_model(self, method: str, model_cls: Any, endog: Any, exog: Any, **kwargs: Any) -> Any:
        fitted = (
            model_cls(endog, exog, **kwargs).fit(disp=0) if method != "ols" else model_cls(endog, exog, **kwargs).fit()
        )
        design = exog if isinstance(exog, pd.DataFrame) else pd.DataFrame(np.asarray(exog))
        return self._model(method, fitted, f"{method}(endog, exog)", rules_other.dummy_counts(design))

    def _formula_model(
        self, method: str, fn: Any, formula: str, data: pd.DataFrame, subset: Any = None, **kwargs: Any
    ) -> Any:
        model = fn(formula, data, subset=subset, **kwargs)
        fitted = model.fit() if method == "olsr" else model.fit(disp=0)
        categorical = {}
        for col in data.columns:
            if col in formula and (
                data[col].dtype == object or isinstance(data[col].dtype, pd.CategoricalDtype) or f"C({col})" in formula
            ):
                categorical[col] = data[col].value_counts()
        return self._model(method, fitted, f"{method}({formula!r})", categorical)

    def ols(self, endog: Any, exog: Any = None, missing: str = "none", hasconst: Any = None, **kwargs: Any):
        import statsmodels.api as sm

        return self._array_model("ols", sm.OLS, endog, exog, missing=missing, hasconst=hasconst, **kwargs)

    def logit(self, endog: Any, exog: Any, missing: str | None = None, check_rank: bool = True):
        import statsmodels.api as sm

        return self._array_model("logit", sm.Logit, endog, exog, missing=missing or "none", check_rank=check_rank)

    def probit(self, endog: Any, exog: Any, missing: str | None = None, check_rank: bool = True):
        import statsmodels.api as sm

        return self._array_model("probit", sm.Probit, endog, exog, missing=missing or "none", check_rank=check_rank)

    def olsr(self, formula: str, data: Any, subset: Any = None, drop_cols: Any = None, *args: Any, **kwargs: Any):
        import statsmodels.formula.api as smf

        return self._formula_model("olsr", smf.ols, formula, data, subset, drop_cols=drop_cols)

    def logitr(self, formula: str, data: Any, subset: Any = None, drop_cols: Any = None, *args: Any, **kwargs: Any):
        import statsmodels.formula.api as smf

        return self._formula_model("logitr", smf.logit, formula, data, subset, drop_cols=drop_cols)

    def probitr(self, formula: str, data: Any, subset: Any = None, drop_cols: Any = None, *args: Any, **kwargs: Any):
        import statsmodels.formula.api as smf

        return self._formula_model("probitr", smf.probit, formula, data, subset, drop_cols=drop_cols)

    # --- charts and survival -------------------------------------------------------------------------
    def hist(
        self,
        data: pd.DataFrame,
        column: str,
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
        """Checks the bin counts; the chart itself is written only if matplotlib is installed. A number of
        bins is laid over a range padded beyond the data, so the chart does not show its extremes."""
        edges = rules_other.padded_edges(data[column], bins)
        table, verdict = rules_other.check_histogram(data[column], edges, policy=self.policy)
        files = _maybe_plot(filename, lambda ax: ax.hist(data[column].dropna(), bins=edges))
        self._add(
            output_type="histogram",
            status=verdict["status"],
            properties={"method": "histogram"},
            command=f"hist({column!r}, bins={bins!r})",
            summary=f"{verdict['status']}; " + "; ".join(verdict["reasons"]),
            frames=[table],
            verdict=verdict,
            files=files,
        )
        return filename

    def pie(self, data: pd.DataFrame, column: str, filename: str = "pie.png", **kwargs: Any) -> str | None:
        table, verdict = rules_other.check_category_counts(data[column], policy=self.policy)
        files = _maybe_plot(filename, lambda ax: ax.pie(table["count"], labels=[str(i) for i in table.index]))
        self._add(
            output_type="pie chart",
            status=verdict["status"],
            properties={"method": "pie"},
            command=f"pie({column!r})",
            summary=f"{verdict['status']}; " + "; ".join(verdict["reasons"]),
            frames=[table],
            verdict=verdict,
            files=files,
        )
        return filename

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
        table, verdict = rules_other.check_survival(pd.Series(time), pd.Series(status), policy=self.policy)
        kind = "survival plot" if output == "plot" else "survival table"
        self._add(
            output_type=kind,
            status=verdict["status"],
            properties={"method": "surv_func"},
            command="surv_func(time, status)",
            summary=f"{verdict['status']}; " + "; ".join(verdict["reasons"]),
            frames=[table],
            verdict=verdict,
        )
        return table

    # --- other files, comments, exceptions -----------------------------------------------------------
    def custom_output(self, filename: str, comment: str = "") -> bool:
        if not os.path.exists(filename):
            return False
        verdict = review_other_file(os.path.basename(filename), self.policy)
        self._add(
            output_type="custom",
            status="review",
            properties={},
            command="custom",
            summary="review; " + verdict["reasons"][0],
            frames=[],
            verdict=verdict,
            files=[filename],
            comments=[comment] if comment else [],
        )
        return True

    def add_comments(self, output: str, comment: str) -> None:
        self.results[output].comments.append(comment)

    def add_exception(self, output: str, reason: str) -> None:
        self.results[output].exception = reason

    def remove_output(self, key: str) -> None:
        del self.results[key]

    def rename_output(self, old: str, new: str) -> None:
        out = self.results.pop(old)
        out.uid = new
        self.results[new] = out

    def print_outputs(self) -> str:
        text = "\n".join(
            f"uid: {o.uid}\nstatus: {o.status}\ntype: {o.output_type}\nsummary: {o.summary}\n"
            f"comments: {o.comments}\nexception: {o.exception}\n"
            for o in self.results.values()
        )
        print(text)
        return text

    # --- finalise ------------------------------------------------------------------------------------
    def finalise(self, path: str = "outputs", ext: str = "json", interactive: bool = False) -> dict | None:
        """Write the outputs and results.json (ACRO's schema) to ``path``; returns the JSON written."""
        if ext != "json":
            raise ValueError("only ext='json' is supported (xlsx needs openpyxl, not a project dependency)")
        os.makedirs(path, exist_ok=True)
        results: dict[str, Any] = {}
        for key, out in self.results.items():
            files = []
            for i, frame in enumerate(out.frames):
                name = f"{key}_{i}.csv"
                frame.to_csv(os.path.join(path, name))
                files.append({"name": name, "sdc": out.sdc})
            for f in out.files:
                if os.path.exists(f):
                    dest = os.path.join(path, os.path.basename(f))
                    if os.path.abspath(dest) != os.path.abspath(f):
                        shutil.copyfile(f, dest)
                    files.append({"name": os.path.basename(f), "sdc": out.sdc})
            if out.before is not None:
                # The table before mitigation is kept for the checker, in a sibling folder that is not
                # part of the release set.
                os.makedirs(f"{path}.checker", exist_ok=True)
                out.before.to_csv(os.path.join(f"{path}.checker", f"{key}_unmitigated.csv"))
            results[key] = {
                "uid": out.uid,
                "status": out.status,
                "type": out.output_type,
                "properties": out.properties,
                "files": files,
                "outcome": json.loads(out.outcome.to_json()) if out.outcome is not None else {},
                "command": out.command,
                "summary": out.viewer_summary or out.summary,
                **({"acro_summary": out.summary} if out.viewer_summary else {}),
                "timestamp": out.timestamp,
                "comments": out.comments,
                "exception": out.exception,
                "fair": out.fair or {"check_status": {c["rule"]: c["status"] for c in out.verdict.get("criteria", [])}},
                "tre_verdict": out.verdict,
                "table_spec": out.spec,
            }
        document = {
            "version": RESULTS_VERSION,
            "tool": {**TOOL, "policy": self.policy.identity()},
            "results": results,
        }
        with open(os.path.join(path, "results.json"), "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=4, default=str)
        with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as handle:
            json.dump(acro_config(self.policy), handle, indent=4)
        _write_checksums(path)
        return document


def _write_checksums(path: str) -> None:
    """sha256 of every file, one ``<name>.txt`` each under ``checksums/``, as ACRO does; SACRO-Viewer uses
    them to detect files changed after checking."""
    folder = os.path.join(path, "checksums")
    os.makedirs(folder, exist_ok=True)
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            with open(full, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            with open(os.path.join(folder, f"{name}.txt"), "w", encoding="utf-8") as handle:
                handle.write(digest)


def _acro_check_lines(results: Sequence[TableResult]) -> str:
    """ACRO's per-check lines ("MinimumThresholdCheck: fail - 6 cells may need suppressing."), after ours."""
    lines = []
    for res in results:
        for rule in res.rules:
            if rule.flagged:
                name = ACRO_RULE_NAMES.get(rule.rule, rule.rule)
                lines.append(f"{name}: {rule.severity} - {rule.flagged} cells may need suppressing.")
    return ("\n" + "\n".join(lines)) if lines else ""


# Our statistic -> ACRO 1.0.2's analysis name (the first word of its summary).
_ACRO_ANALYSES = {
    "count": "FrequencyTable",
    "mean": "Mean",
    "sum": "Sum",
    "median": "Median",
    "std": "StandardDeviation",
    "var": "Variance",
    "min": "Minimum",
    "max": "Maximum",
    "mode": "ModeCalculation",
}
# ACRO's order of checks in a summary; checks it lacks follow, in our rules' order.
_ACRO_CHECK_ORDER = ("ClassDisclosureCheck", "PresenceOfZeroCheck", "NKCheck", "PPercentCheck", "LINKED")
_ACRO_NOTES = {"missing": " Note: missing values were left out of the statistic and of the contributor counts."}
_LINKED = (
    "PresenceOfLinkedTableCheck: A manual review against other outputs for differencing is recommended. "
    "Variables defining table are:  {dims}."
)


def _acro_summary(results: Sequence[tuple[str | None, TableResult]], dims: Sequence[str]) -> str:
    """ACRO 1.0.2's summary text: per statistic its analysis name, then one line per check that did not pass
    (checks that pass are left out, as ACRO leaves them out), with ACRO's spacing: every check line but the
    first check run starts with a space. The differencing line is ACRO's reminder; here the release ledger
    also checks differencing when the output is submitted."""
    text = ""
    for name, res in results:
        statistic = name or res.statistic
        lines: dict[str, str] = {}
        for rule in res.rules:
            check = ACRO_RULE_NAMES.get(rule.rule, rule.rule)
            if rule.flagged:
                lines[check] = f"{check}: {rule.severity} - {rule.flagged} cells may need suppressing."
                lines[check] += _ACRO_NOTES.get(rule.rule, "")
            else:
                lines.setdefault(check, "")  # ran and passed
        lines["LINKED"] = _LINKED.format(dims=list(dims))
        order = [c for c in _ACRO_CHECK_ORDER if c in lines] + [c for c in lines if c not in _ACRO_CHECK_ORDER]
        text += f"{_ACRO_ANALYSES.get(statistic, statistic)} : "
        for i, check in enumerate(order):
            if lines[check]:
                text += "\n" + (" " if i else "") + lines[check]
        text += "\n"
    return text


# Statistics pandas computes differently from us on a float32 column: it adds in float32 (so a year's total
# of 8.1e8 can be 64 off the exact sum) and its standard deviation comes out as float64 by another recurrence.
_FLOAT32_DIFFERS = ("sum", "std")


def _shown_as_pandas_computes(res: TableResult, df: pd.DataFrame, dims: list[str], value: str, stat: str) -> None:
    """Show the values pandas computes from a float32 column (they differ from ours in the last float32
    digit), so a notebook's own pandas table and the checked one agree; the rules ran on our float64 values
    and suppressed cells stay suppressed."""
    shown = np.array(res.values, dtype=np.float64, copy=True)
    shape, categories = res.stats.shape, res.stats.categories
    frame = df[[*dims, value]]
    for r in range(len(dims), -1, -1):
        for kept in combinations(range(len(dims)), r):
            if not kept:
                shown[tuple(shape)] = float(frame[value].agg(stat))
                continue
            grouped = frame.groupby([dims[a] for a in kept], observed=True, dropna=True)[value].agg(stat)
            keys = grouped.index
            where: list[Any] = [np.full(len(grouped), shape[a]) for a in range(len(dims))]
            for level, a in enumerate(kept):
                labels = keys.get_level_values(level) if isinstance(keys, pd.MultiIndex) else keys
                where[a] = categories[a].get_indexer(labels)
            found = np.logical_and.reduce([w >= 0 for w in where])
            shown[tuple(w[found] for w in where)] = grouped.to_numpy(dtype=np.float64)[found]
    res.values = shown
    res.released = np.where(np.isnan(res.released), np.nan, shown)


def _inner_level(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """pandas puts the value column's name between the aggfunc level and the columns."""
    cols = table.columns
    tuples = [(c[0], name, *c[1:]) if isinstance(c, tuple) else (c, name) for c in cols]
    names = [cols.names[0], None, *cols.names[1:]] if isinstance(cols, pd.MultiIndex) else [None, None]
    out = table.copy()
    out.columns = pd.MultiIndex.from_tuples(tuples, names=names)
    return out


def _normalise(table: pd.DataFrame, how: Any) -> pd.DataFrame:
    if how in (True, "all"):
        return table / np.nansum(table.to_numpy())
    if how == "index":
        return table.div(table.sum(axis=1), axis=0)
    return table / table.sum(axis=0)


def _maybe_plot(filename: str, draw: Any) -> list[str]:
    """Charts are optional: the checked numbers are the output; without matplotlib no image is drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    fig, ax = plt.subplots()
    draw(ax)
    fig.savefig(filename)
    plt.close(fig)
    return [filename]


def _dataset_name(location: str) -> str:
    """``.../<dataset>/data/part-0.parquet`` and ``.../<dataset>/data`` name ``<dataset>``; else the stem."""
    parts = location.rstrip(os.sep).split(os.sep)
    if os.path.isdir(location):
        return parts[-2] if parts[-1] == "data" and len(parts) > 1 else parts[-1]
    if len(parts) > 2 and parts[-2] == "data":
        return parts[-3]
    return os.path.splitext(parts[-1])[0]


def _same_values(original: pd.Series, values: Any) -> bool:
    """Do the table's column values equal the dataset's, label for label (missing equal to missing)?"""
    if isinstance(values, pd.Series) and values.dtype == original.dtype and len(values) == len(original):
        if values.index.equals(original.index):
            return bool(values.equals(original))  # same labels and dtype: one vectorised comparison
    mine = pd.Series(np.asarray(values, dtype=object))
    theirs = pd.Series(np.asarray(original, dtype=object))
    if len(mine) != len(theirs):
        return False
    both_missing = mine.isna().to_numpy() & theirs.isna().to_numpy()
    return bool(((mine.to_numpy() == theirs.to_numpy()) | both_missing).all())
