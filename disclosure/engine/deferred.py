"""Verdicts and sdc records whose per-cell entries are built when something first reads them.

A checked table of thousands of flagged cells has thousands of address records (labels, rules, the audit's
interval per suppressed cell). The researcher's session reads only a verdict's status, reasons and spec when
it makes the table; the records are read when results.json is written or a checker opens the output. Built
eagerly they were a fifth of a count table's time, and the tens of thousands of small dicts and lists they
allocate set off the interpreter's full garbage collections (gen 2) in one call of three, which made the time
of the same call bimodal (ADR 0041).

``DeferredDict`` is a ``dict``: the cheap keys are stored at once, the deferred ones are built by one
function on first access to any of them or to the whole mapping (iteration, ``items()``, ``len``, equality,
JSON encoding, copying, pickling), and from then on it is an ordinary dict with the same keys in the same
order as the eager record had.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class DeferredDict(dict):
    """``dict`` whose ``deferred`` keys come from ``build()`` on first use; ``order`` is the key order."""

    __slots__ = ("_build", "_order")

    def __init__(self, ready: dict[str, Any], build: Callable[[], dict[str, Any]], order: tuple[str, ...]):
        super().__init__(ready)
        self._build: Callable[[], dict[str, Any]] | None = build
        self._order = order

    def materialise(self) -> None:
        """Build the deferred entries now (idempotent); keys keep the eager record's order, then any added."""
        build = self._build
        if build is None:
            return
        self._build = None
        built = build()
        current = dict(super().items())
        ordered = {k: (built[k] if k in built else current[k]) for k in self._order if k in built or k in current}
        ordered.update((k, v) for k, v in current.items() if k not in ordered)
        super().clear()
        super().update(ordered)

    # --- reads that need the deferred entries ----------------------------------------------------------
    def __setitem__(self, key: Any, value: Any) -> None:
        if self._build is not None and key in self._order and not super().__contains__(key):
            self.materialise()  # a deferred key: build first, so the built value cannot overwrite this one
        super().__setitem__(key, value)

    def __getitem__(self, key: Any) -> Any:
        if self._build is not None and not super().__contains__(key):
            self.materialise()
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        if self._build is not None and not super().__contains__(key):
            self.materialise()
        return super().get(key, default)

    def __contains__(self, key: Any) -> bool:
        self.materialise()
        return super().__contains__(key)

    def __iter__(self) -> Iterator[Any]:
        self.materialise()
        return super().__iter__()

    def __len__(self) -> int:
        self.materialise()
        return super().__len__()

    def __eq__(self, other: object) -> bool:
        self.materialise()
        if isinstance(other, DeferredDict):
            other.materialise()
        return super().__eq__(other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # a dict is unhashable

    def __repr__(self) -> str:
        self.materialise()
        return super().__repr__()

    def __reduce__(self) -> tuple:
        # pickled (and deep-copied) as the plain dict it stands for: the builder is a closure
        self.materialise()
        return (dict, (dict(super().items()),))

    def __reduce_ex__(self, protocol: Any) -> tuple:
        return self.__reduce__()

    def __copy__(self) -> dict:
        return self.copy()

    def __or__(self, other: Any) -> Any:
        self.materialise()
        return dict(super().items()) | other

    def keys(self):
        self.materialise()
        return super().keys()

    def values(self):
        self.materialise()
        return super().values()

    def items(self):
        self.materialise()
        return super().items()

    def copy(self) -> dict:
        self.materialise()
        return dict(super().items())

    def pop(self, key: Any, *default: Any) -> Any:
        self.materialise()
        return super().pop(key, *default)

    def popitem(self) -> tuple:
        self.materialise()
        return super().popitem()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self.materialise()
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.materialise()
        super().update(*args, **kwargs)

    def __delitem__(self, key: Any) -> None:
        self.materialise()
        super().__delitem__(key)
