"""The security tests print what they measured (cells checked, examples run, attacks tried)."""

from __future__ import annotations

from typing import Any

from tests.security.figures import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("assurance figures")
    for name, value in sorted(FIGURES.items()):
        terminalreporter.write_line(f"{name}: {value}")
