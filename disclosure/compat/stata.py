"""ACRO's Stata-interface helper that notebooks import."""

from __future__ import annotations


def stata_details_to_list(details: str | list[str]) -> list[str]:
    """Stata passes options as one space-separated string; Python callers may pass a list already."""
    if isinstance(details, list):
        return details
    return details.split()
