"""Counting the SQL statements an action sends, for tests that a page or a write does not grow
one statement per row (N+1)."""

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
