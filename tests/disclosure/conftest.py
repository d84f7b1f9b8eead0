"""Shared fixtures for the disclosure tests: the shipped policy and ACRO's public test data."""

from pathlib import Path

import pandas as pd
import pytest

from disclosure.engine.policy import default_policy

ACRO_DATA = Path("/work/shared/data/acro")


@pytest.fixture
def policy():
    return default_policy()


@pytest.fixture(scope="session")
def charity_data():
    path = ACRO_DATA / "test_data.dta"
    if not path.exists():
        pytest.skip(f"ACRO test data not found at {path}")
    return pd.read_stata(path)


@pytest.fixture(scope="session")
def nursery_data():
    path = ACRO_DATA / "nursery_dataset.dta"
    if not path.exists():
        pytest.skip(f"ACRO test data not found at {path}")
    return pd.read_stata(path)
