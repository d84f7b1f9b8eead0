"""The load benchmark's host yardstick: a fixed piece of work, timed alone and with a copy on each core."""

from __future__ import annotations

import math

from benchmarks.load import host_speed_ms, host_speed_paired_ms


def test_the_yardstick_alone_is_a_positive_cpu_figure_in_milliseconds() -> None:
    figure = host_speed_ms(rounds=3)
    assert isinstance(figure, float) and math.isfinite(figure) and figure > 0


def test_the_paired_yardstick_runs_two_copies_in_their_own_processes_and_reports_their_mean() -> None:
    # Each copy imports the benchmark in a fresh interpreter from the repository: this fails if that
    # import or the copies' output breaks, which a run of the load benchmark would only show at its end.
    figure = host_speed_paired_ms()
    assert isinstance(figure, float) and math.isfinite(figure) and figure > 0
