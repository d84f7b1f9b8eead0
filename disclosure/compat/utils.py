"""ACRO's ``utils`` helpers notebooks call."""

from __future__ import annotations


def prettify_table_string(table, separator: str | None = None) -> str:
    """The table as text with a rule under its header, the shape ACRO prints."""
    text = table.to_string()
    lines = text.split("\n")
    width = max(len(line) for line in lines)
    rule = "-" * width
    if separator is not None:
        lines = [line.replace("  ", f" {separator}", 1) for line in lines]
    return "\n".join([rule, lines[0], rule, *lines[1:], rule]) + "\n"
