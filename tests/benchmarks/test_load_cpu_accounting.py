"""The load benchmark counts as the service's only the PostgreSQL processes that serve its database."""

from __future__ import annotations

from benchmarks.load import MEASURING_APPLICATION, postgres_role, postgres_shares

OURS = "tre_load_abc"
# pid -> (parent pid, command name, CPU ticks): the postmaster (1000) and its children.
TABLE = {
    1000: (1, "postgres", 5),
    1001: (1000, "postgres", 50),
    1002: (1000, "postgres", 70),
    1003: (1000, "postgres", 9),
    1004: (1000, "postgres", 3),
    1005: (1000, "postgres", 2),
}
ACTIVITY = {
    1001: (OURS, "client backend", ""),
    1002: ("tre_test_someone_else", "client backend", ""),
    1003: (None, "walwriter", ""),
    1004: (OURS, "client backend", MEASURING_APPLICATION),
}


def test_sessions_of_the_benchmarks_database_are_the_services_and_other_databases_are_not() -> None:
    assert postgres_role(1001, ACTIVITY, OURS, TABLE) == "own"
    assert postgres_role(1002, ACTIVITY, OURS, TABLE) == "elsewhere"


def test_the_clusters_own_processes_and_the_postmaster_are_shared() -> None:
    assert postgres_role(1003, ACTIVITY, OURS, TABLE) == "shared"
    assert postgres_role(1000, ACTIVITY, OURS, TABLE) == "shared"


def test_the_benchmarks_sampling_session_is_not_counted_as_the_service() -> None:
    assert postgres_role(1004, ACTIVITY, OURS, TABLE) == "measuring"


def test_a_session_gone_before_it_could_be_named_is_never_counted_as_the_service() -> None:
    assert postgres_role(1005, ACTIVITY, OURS, TABLE) == "elsewhere"


def test_shared_processes_are_split_by_the_sessions_share_of_cpu() -> None:
    shares = postgres_shares({"own": 3.0, "elsewhere": 1.0, "shared": 2.0, "measuring": 0.5})

    assert shares == {"service": 3.0 + 1.5, "other": 1.0 + 0.5, "client": 0.5}


def test_with_no_other_sessions_the_shared_processes_are_the_services() -> None:
    assert postgres_shares({"own": 1.0, "shared": 0.4})["service"] == 1.4
