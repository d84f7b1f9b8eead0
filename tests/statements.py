"""Counting the SQL statements an action sends, for tests that a page or a write does not grow
one statement per row (N+1), and the rows it fetches, for tests that a read follows a window."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import event

T = TypeVar("T")


def count_statements(app: Any, action: Callable[[], T]) -> tuple[int, T]:
    """Run ``action`` and return how many statements the app's engine sent meanwhile, and its result."""
    engine = app.extensions["tre.db"].engine
    seen = 0

    def count(*_args: Any) -> None:
        nonlocal seen
        seen += 1

    event.listen(engine, "before_cursor_execute", count)
    try:
        result = action()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return seen, result


class _CountingCursor:
    """A DBAPI cursor that counts the rows fetched through it, and is the cursor in all else."""

    def __init__(self, cursor: Any, fetched: list[int]) -> None:
        self._cursor = cursor
        self._fetched = fetched

    def fetchone(self) -> Any:
        row = self._cursor.fetchone()
        self._fetched[0] += row is not None
        return row

    def fetchmany(self, *size: Any) -> Any:
        rows = self._cursor.fetchmany(*size)
        self._fetched[0] += len(rows)
        return rows

    def fetchall(self) -> Any:
        rows = self._cursor.fetchall()
        self._fetched[0] += len(rows)
        return rows

    def __iter__(self) -> Any:
        for row in self._cursor:
            self._fetched[0] += 1
            yield row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def count_rows(app: Any, action: Callable[[], T]) -> tuple[int, T]:
    """Run ``action`` and return how many rows the app's engine fetched from the database meanwhile
    (every statement's result rows, however they were read), and its result.

    Each statement's cursor is wrapped as the engine hands it to its result, so the count is of what
    came back over the wire, whichever way SQLAlchemy reads it."""
    engine = app.extensions["tre.db"].engine
    fetched = [0]

    def wrap(_conn: Any, cursor: Any, _statement: Any, _parameters: Any, context: Any, _many: Any) -> None:
        if context is not None and cursor.description is not None:
            context.cursor = _CountingCursor(cursor, fetched)

    event.listen(engine, "after_cursor_execute", wrap)
    try:
        result = action()
    finally:
        event.remove(engine, "after_cursor_execute", wrap)
    return fetched[0], result
