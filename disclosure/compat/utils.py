"""ACRO's ``utils`` helpers notebooks call."""

from __future__ import annotations

import pandas as pd


def prettify_table_string(table: pd.DataFrame, separator: str | None = None) -> str:
    """The table as boxed text for the screen: index levels become columns, multi-level column labels are
    stacked. Drawn by ``tabulate`` (as ACRO does) when it is installed, else as ruled plain text."""
    flat = table.copy()
    flat.columns = ["\n".join(map(str, c)) if isinstance(c, tuple) else c for c in flat.columns]
    flat = flat.reset_index()
    try:
        from tabulate import tabulate
    except ImportError:
        text = flat.to_string(index=False)
        rule = "-" * max(len(line) for line in text.split("\n"))
        return "\n".join([rule, text, rule])
    return tabulate(flat, headers="keys", showindex=False, tablefmt="rounded_outline")
