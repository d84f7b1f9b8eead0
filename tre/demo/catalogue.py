"""Register the synthetic tables in the dataset catalogue (filled in when the catalogue exists)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def register_demo_datasets(app: Any, data_dir: Path) -> int:
    """Nothing to register until the projects package provides the catalogue."""
    return 0
