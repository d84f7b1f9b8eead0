"""Figures measured by the assurance tests, printed at the end of the run (see conftest.py) and
quoted in docs/assurance/README.md."""

from __future__ import annotations

FIGURES: dict[str, int] = {}


def record(name: str, value: int) -> None:
    FIGURES[name] = FIGURES.get(name, 0) + value
