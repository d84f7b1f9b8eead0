"""The onboarding benchmark's peak log gives each window of rows its own peak, not the run's so far."""

from __future__ import annotations

import os

import pytest

from benchmarks.onboarding import WINDOW_ROWS, _PeakLog

MB = 1 << 20


def _can_reset_peak() -> bool:
    return os.access("/proc/self/clear_refs", os.W_OK)


pytestmark = pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux's /proc/self/clear_refs")


def test_a_window_after_a_large_allocation_is_freed_does_not_inherit_its_peak() -> None:
    log = _PeakLog()
    held = b"\x01" * (128 * MB)  # filled, so its pages are resident during the first window
    del held
    log.progress(WINDOW_ROWS)
    log.progress(2 * WINDOW_ROWS)
    first, second = log.windows
    assert second < first - 64
    assert log.peak() >= first  # the run's peak is still the largest window's


def test_one_entry_a_window_however_the_chunks_fall() -> None:
    log = _PeakLog()
    for rows in (WINDOW_ROWS // 2, WINDOW_ROWS - 1, WINDOW_ROWS + 7, WINDOW_ROWS + 9, 3 * WINDOW_ROWS + 1):
        log.progress(rows)
    assert len(log.windows) == 2  # the first window's end, then one jump over two ends
