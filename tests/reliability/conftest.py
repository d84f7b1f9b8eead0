"""Fixtures of the reliability tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.pg_cluster import Cluster, private_cluster


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A private PostgreSQL cluster the test may crash (see pg_cluster.py)."""
    with private_cluster() as c:
        yield c
