"""Frames that remember their population: the dataset they were read from and the filters applied since.

``Session.read``/``Session.use`` return a ``TrackedFrame``. These pandas idioms are *captured* (the filter
is recorded as a predicate on columns, see ``disclosure.engine.population``):

* ``df[df.sex == "F"]``, ``df[df["age"] >= 18]``, with ``== != < <= > >=`` against one value;
* ``df[df.band.isin([...])]``, ``df[df.x.notna()]``, ``df[df.x.isna()]``, ``df[df.age.between(18, 64)]``;
* those masks combined with ``&``, ``|`` and ``~``, and filters applied one after another;
* ``df.query("sex == 'F' and age_band in ['18-24', '25-34']")`` (plain comparisons with literals);
* selecting columns (``df[["sex", "age"]]``), which keeps the rows.

Anything else that changes the rows (``df.loc[mask]``, ``df.head()``, ``dropna``, ``merge``, a mask made with
numpy or from a derived column, ``query`` with ``@variables``) is *not* captured. Capture is only a claim:
before a table's population is written down the session re-applies the recorded filters to the frame as it
was read and checks that exactly the table's rows come out, with the same values in the table's columns.
When they do not, the population is recorded as unknown (filters ``None``), which the output checks treat as
review, never pass. So a missed idiom costs a review, never a wrong population.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from disclosure.engine import population as pop

_COMPARE = {"__eq__": "==", "__ne__": "!=", "__lt__": "<", "__le__": "<=", "__gt__": ">", "__ge__": ">="}


class TrackedSeries(pd.Series):
    """A column of a tracked frame; comparisons on it yield masks that carry their filter terms."""

    _metadata = ["_tre_dataset", "_tre_filters"]

    @property
    def _constructor(self) -> type:
        return TrackedSeries

    @property
    def _constructor_expanddim(self) -> type:
        return TrackedFrame

    def _column(self) -> str | None:
        # Set only on the object a column access returned: a derived series (arithmetic, .str, ...) has none.
        return self.__dict__.get("_tre_column")

    def _mask(self, result: Any, terms: list[dict] | None) -> Any:
        if isinstance(result, TrackedSeries):
            result.__dict__["_tre_terms"] = terms
        return result

    def isin(self, values: Any) -> Any:
        col = self._column()
        terms = None
        if col is not None and not isinstance(values, dict | pd.Series | pd.DataFrame):
            terms = [{"column": col, "op": "in", "value": [_plain(v) for v in values]}]
        return self._mask(super().isin(values), terms)

    def notna(self) -> Any:
        col = self._column()
        return self._mask(super().notna(), [{"column": col, "op": "notna"}] if col else None)

    def isna(self) -> Any:
        col = self._column()
        return self._mask(super().isna(), [{"column": col, "op": "isna"}] if col else None)

    notnull = notna
    isnull = isna

    def between(self, left: Any, right: Any, inclusive: str = "both") -> Any:
        col = self._column()
        terms = None
        if col is not None and _scalar(left) and _scalar(right) and inclusive in ("both", "left", "right", "neither"):
            lo = ">=" if inclusive in ("both", "left") else ">"
            hi = "<=" if inclusive in ("both", "right") else "<"
            terms = [
                {"column": col, "op": lo, "value": _plain(left)},
                {"column": col, "op": hi, "value": _plain(right)},
            ]
        return self._mask(super().between(left, right, inclusive=inclusive), terms)

    def __and__(self, other: Any) -> Any:
        a, b = _terms(self), _terms(other)
        return self._mask(super().__and__(other), a + b if a is not None and b is not None else None)

    def __or__(self, other: Any) -> Any:
        a, b = _terms(self), _terms(other)
        return self._mask(super().__or__(other), [{"any": [a, b]}] if a is not None and b is not None else None)

    def __invert__(self) -> Any:
        a = _terms(self)
        return self._mask(super().__invert__(), [{"not": a}] if a is not None else None)


def _make_comparison(name: str, op: str) -> Any:
    def method(self: TrackedSeries, other: Any) -> Any:
        result = getattr(pd.Series, name)(self, other)
        col = self._column()
        terms = [{"column": col, "op": op, "value": _plain(other)}] if col is not None and _scalar(other) else None
        return self._mask(result, terms)

    method.__name__ = name
    return method


for _name, _op in _COMPARE.items():
    setattr(TrackedSeries, _name, _make_comparison(_name, _op))


class TrackedFrame(pd.DataFrame):
    """A frame read through the session: ``_tre_dataset`` and the filters applied (``None``: unknown)."""

    _metadata = ["_tre_dataset", "_tre_filters"]

    @property
    def _constructor(self) -> type:
        return TrackedFrame

    @property
    def _constructor_sliced(self) -> type:
        return TrackedSeries

    def __getitem__(self, key: Any) -> Any:
        result = super().__getitem__(key)
        if isinstance(key, pd.Series) and key.dtype == bool:
            terms = _terms(key)
            mine = getattr(self, "_tre_filters", None)
            result._tre_filters = None if terms is None or mine is None else [*mine, *terms]
        elif isinstance(result, TrackedSeries) and isinstance(key, str):
            result.__dict__["_tre_column"] = key
        elif not _is_column_selection(key, self):
            if isinstance(result, TrackedFrame | TrackedSeries):
                result._tre_filters = None  # rows chosen some other way: unknown
        return result

    def __getattr__(self, name: str) -> Any:
        result = super().__getattr__(name)
        if isinstance(result, TrackedSeries) and name in self.columns:
            result.__dict__["_tre_column"] = name
        return result

    def query(self, expr: str, *, inplace: bool = False, **kwargs: Any) -> Any:
        if inplace:
            raise ValueError("query(inplace=True) cannot be tracked: assign the result instead")
        kwargs["level"] = kwargs.get("level", 0) + 1  # @variables are the caller's, one frame further up
        result = super().query(expr, **kwargs)
        mine = getattr(self, "_tre_filters", None)
        try:
            terms = pop.parse_query(expr, self.columns)
        except ValueError:
            terms = None
        result._tre_filters = None if terms is None or mine is None else [*mine, *terms]
        return result


def track(frame: pd.DataFrame, dataset: str) -> TrackedFrame:
    tracked = TrackedFrame(frame)
    tracked._tre_dataset = dataset
    tracked._tre_filters = []
    return tracked


def _terms(mask: Any) -> list[dict] | None:
    return mask.__dict__.get("_tre_terms") if isinstance(mask, TrackedSeries) else None


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and not (isinstance(value, float) and value != value)


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, str) else value


def _is_column_selection(key: Any, frame: pd.DataFrame) -> bool:
    if isinstance(key, str):
        return True
    if isinstance(key, list | tuple | pd.Index) and all(isinstance(k, str) and k in frame.columns for k in key):
        return True
    return False
