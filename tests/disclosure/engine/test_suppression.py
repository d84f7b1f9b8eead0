import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from disclosure.engine import suppression as suppression_module
from disclosure.engine.rounding import midpoint6, round_to_base
from disclosure.engine.suppression import (
    _partner_order,
    audit_pattern,
    box_certificates,
    interval_audit,
    protect,
    secondary_suppression,
)


def _extend(body: np.ndarray) -> np.ndarray:
    """Add margins along every axis, as the engine lays tables out."""
    ext = body.astype(np.float64)
    for axis in range(body.ndim):
        ext = np.concatenate([ext, ext.sum(axis=axis, keepdims=True)], axis=axis)
    return ext


def _primary(ext: np.ndarray, threshold: int = 10) -> np.ndarray:
    return (ext > 0) & (ext < threshold)


def test_audit_recovers_a_lone_suppressed_cell_exactly():
    ext = _extend(np.array([[3, 20], [30, 40]]))
    suppressed = np.zeros(ext.shape, dtype=bool)
    suppressed[0, 0] = True
    audit = interval_audit(ext, suppressed, suppressed, np.full(ext.shape, 5.0))
    (cell,) = audit.intervals
    assert cell.lower == cell.upper == 3
    assert not audit.protected


def test_audit_interval_of_a_suppressed_rectangle():
    ext = _extend(np.array([[3, 20], [30, 40]]))
    suppressed = np.zeros(ext.shape, dtype=bool)
    suppressed[:2, :2] = True
    audit = interval_audit(ext, suppressed, _primary(ext), np.full(ext.shape, 5.0))
    first = audit.intervals[0]
    # x00 in [0, 23]: row 0 total 23, column 0 total 33, and x11 = 40 - 3 + x00 >= 0 always holds.
    assert (first.lower, first.upper) == (0.0, 23.0)
    assert audit.protected


def test_protect_suppresses_partners_until_audit_passes():
    ext = _extend(np.array([[3, 50, 60], [40, 45, 70], [33, 12, 80]]))
    primary = _primary(ext)
    result = protect(ext, primary, np.full(ext.shape, 5.0))
    assert result.audit.protected
    assert result.suppressed[0, 0]
    assert result.secondary.sum() >= 3


tables_2d = arrays(np.int64, st.tuples(st.integers(2, 5), st.integers(2, 5)), elements=st.integers(0, 60))
tables_3d = arrays(
    np.int64, st.tuples(st.integers(2, 3), st.integers(2, 3), st.integers(2, 4)), elements=st.integers(0, 40)
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tables_2d, tables_3d), st.floats(1.0, 8.0))
def test_protected_tables_never_narrow_a_primary_cell_below_protection(body, level):
    ext = _extend(body)
    primary = _primary(ext)
    required = np.full(ext.shape, level)
    result = protect(ext, primary, required)
    if not primary.any():
        assert not result.suppressed.any()
        return
    # Re-audit independently of the loop's own report: the guarantee is what a fresh LP says.
    audit = interval_audit(ext, result.suppressed, primary, required)
    assert audit.protected
    for cell in audit.intervals:
        assert cell.lower - 1e-9 <= ext.ravel()[cell.index] <= cell.upper + 1e-9
        if cell.primary:
            assert cell.upper - cell.lower >= level - 1e-9


@settings(max_examples=60, deadline=None)
@given(arrays(np.int64, st.integers(1, 30), elements=st.integers(0, 500)), st.sampled_from([3, 5, 10]))
def test_rounding_never_reveals_redacted_cells(values, base):
    redacted = values < 10
    rounded = round_to_base(values, base, redacted)
    assert np.isnan(rounded[redacted]).all()
    shown = ~redacted
    assert (np.abs(rounded[shown] - values[shown]) <= base / 2).all()
    assert (rounded[shown] % base == 0).all()


def test_midpoint6_maps_blocks_of_six_to_their_middle():
    assert midpoint6(np.array([0, 1, 6, 7, 12, 13])).tolist() == [0, 3, 3, 9, 9, 15]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tables_2d, tables_3d))
def test_box_certificates_never_claim_more_than_the_lp_interval(body):
    ext = _extend(body)
    primary = _primary(ext)
    result = protect(ext, primary, np.full(ext.shape, 5.0))
    cells = np.flatnonzero(result.suppressed.ravel())
    certs = box_certificates(ext, result.suppressed, cells)
    exact = {c.index: c for c in interval_audit(ext, result.suppressed, primary, np.full(ext.shape, 5.0)).intervals}
    for cell, (down, up) in certs.items():
        v = ext.ravel()[cell]
        assert exact[cell].lower <= v - down + 1e-6
        assert exact[cell].upper >= v + up - 1e-6


def test_box_certificate_of_a_suppressed_rectangle():
    ext = _extend(np.array([[3, 20], [30, 40]]))
    suppressed = np.zeros(ext.shape, dtype=bool)
    suppressed[:2, :2] = True
    (down, up) = box_certificates(ext, suppressed, np.array([0]))[0]
    # x00 can rise by min(x01, x10) = 20 and fall by min(x00, x11) = 3: exactly the LP interval [0, 23]
    assert (down, up) == (3.0, 20.0)


def test_fast_audit_proves_the_same_tables_as_the_exact_audit():
    rng = np.random.default_rng(7)
    body = rng.poisson(rng.choice([3, 40], size=(4, 5, 3), p=[0.2, 0.8]))
    ext = _extend(body)
    primary = _primary(ext)
    required = np.full(ext.shape, 5.0)
    pattern = protect(ext, primary, required, audit="exact").suppressed
    fast = audit_pattern(ext, pattern, primary, required, lp_seconds=60.0)  # generous: a busy CI machine
    assert fast.proven
    assert {c.method for c in fast.intervals} <= {"box", "lp"}
    assert any(c.method == "box" for c in fast.intervals)
    exact = {c.index: c for c in interval_audit(ext, pattern, primary, required).intervals}
    for cell in fast.intervals:
        assert exact[cell.index].lower <= cell.lower + 1e-6 and cell.upper <= exact[cell.index].upper + 1e-6


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tables_2d, tables_3d))
def test_batched_lp_gives_the_same_intervals_as_one_lp_per_cell(body):
    import disclosure.engine.suppression as suppression

    ext = _extend(body)
    primary = _primary(ext)
    required = np.full(ext.shape, 5.0)
    pattern = protect(ext, primary, required, audit=False).suppressed
    batched = interval_audit(ext, pattern, primary, required)
    saved = suppression._BATCH_VARS
    suppression._BATCH_VARS = 0
    try:
        single = interval_audit(ext, pattern, primary, required)
    finally:
        suppression._BATCH_VARS = saved
    assert [(c.index, round(c.lower, 6), round(c.upper, 6)) for c in batched.intervals] == [
        (c.index, round(c.lower, 6), round(c.upper, 6)) for c in single.intervals
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tables_2d, tables_3d))
def test_vectorised_boxes_agree_with_the_lp(body):
    from disclosure.engine.suppression import _vectorised_boxes

    ext = _extend(body)
    primary = _primary(ext)
    pattern = protect(ext, primary, np.full(ext.shape, 5.0), audit=False).suppressed
    cells = np.flatnonzero(pattern.ravel())
    down, up = _vectorised_boxes(ext, pattern, cells)
    exact = {c.index: c for c in interval_audit(ext, pattern, primary, np.full(ext.shape, 5.0)).intervals}
    for cell, d, u in zip(cells, down, up, strict=True):
        v = ext.ravel()[cell]
        assert exact[cell].lower <= v - d + 1e-6
        assert exact[cell].upper >= v + u - 1e-6


def test_vectorised_boxes_handle_axes_shorter_than_the_partner_count():
    from disclosure.engine.suppression import _vectorised_boxes

    ext = _extend(np.array([[3, 20], [30, 40]]))
    suppressed = np.zeros(ext.shape, dtype=bool)
    suppressed[:2, :2] = True
    down, up = _vectorised_boxes(ext, suppressed, np.array([0]), per_axis=5)
    assert (down[0], up[0]) == (3.0, 20.0)


# Certificates: every proven move must stay inside the exact LP interval, on patterns the heuristic makes and
# on patterns with extra suppressed cells anywhere (margins included), in 2, 3 and 4 dimensions.
tables_4d = arrays(
    np.int64,
    st.tuples(st.integers(2, 3), st.integers(2, 3), st.integers(2, 3), st.integers(2, 3)),
    elements=st.integers(0, 30),
)


def _pattern_with_extras(ext: np.ndarray, extra_seed: int) -> tuple[np.ndarray, np.ndarray]:
    primary = _primary(ext)
    pattern = protect(ext, primary, np.full(ext.shape, 5.0), audit=False).suppressed
    pattern |= np.random.default_rng(extra_seed).random(ext.shape) < 0.2
    return primary, pattern


def _assert_inside_lp(ext, pattern, cells, down, up):
    exact = {c.index: c for c in interval_audit(ext, pattern, pattern, np.full(ext.shape, 5.0)).intervals}
    for cell, d, u in zip(cells, down, up, strict=True):
        v = ext.ravel()[cell]
        assert d >= 0 and u >= 0
        assert exact[cell].lower <= v - d + 1e-6, (cell, v, d, exact[cell])
        assert exact[cell].upper >= v + u - 1e-6, (cell, v, u, exact[cell])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tables_2d, tables_3d), st.integers(0, 2**16), st.integers(1, 3))
def test_plane_boxes_never_claim_more_than_the_lp_interval(body, extra_seed, per_slab):
    from disclosure.engine.suppression import _along, _slab_boxes

    ext = _extend(body)
    _, pattern = _pattern_with_extras(ext, extra_seed)
    cells = np.flatnonzero(pattern.ravel())
    for axis in range(ext.ndim):
        moved_v, moved_s, moved_cells = _along(axis, ext, pattern, cells)
        down, up = _slab_boxes(moved_v, moved_s, moved_cells, per_slab=per_slab)
        _assert_inside_lp(ext, pattern, cells, down, up)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tables_2d, tables_3d, tables_4d), st.integers(0, 2**16), st.sampled_from([1, 3, 8]))
def test_prism_certificates_never_claim_more_than_the_lp_interval(body, extra_seed, per_axis):
    from disclosure.engine.suppression import _cycle_certificates

    ext = _extend(body)
    _, pattern = _pattern_with_extras(ext, extra_seed)
    cells = np.flatnonzero(pattern.ravel())
    down, up = _cycle_certificates(ext, pattern, cells, per_axis=per_axis)
    _assert_inside_lp(ext, pattern, cells, down, up)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tables_2d, tables_3d, tables_4d), st.integers(0, 2**16))
def test_certified_moves_lie_inside_the_lp_interval(body, extra_seed):
    from disclosure.engine.suppression import certify_cells

    ext = _extend(body)
    _, pattern = _pattern_with_extras(ext, extra_seed)
    cells = np.flatnonzero(pattern.ravel())
    down, up = certify_cells(ext, pattern, cells, np.full(len(cells), 5.0))
    _assert_inside_lp(ext, pattern, cells, down, up)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tables_2d, tables_3d), st.integers(0, 2**16))
def test_summed_moves_never_claim_more_than_the_lp_interval(body, extra_seed):
    from disclosure.engine.suppression import _augmented_moves

    ext = _extend(body)
    _, pattern = _pattern_with_extras(ext, extra_seed)
    cells = np.flatnonzero(pattern.ravel())[:12]
    down, up = _augmented_moves(ext, pattern, cells, np.full(len(cells), np.inf), rounds=4)
    _assert_inside_lp(ext, pattern, cells, down, up)


def test_two_narrow_cycles_add_up_to_a_wide_interval():
    from disclosure.engine.suppression import _augmented_moves, _cycle_certificates

    # The 1 can rise through row 0 into column 1 or column 2, each path only 3 wide: 6 in all.
    ext = _extend(np.array([[1, 3, 3], [40, 50, 60]]))
    pattern = np.zeros(ext.shape, dtype=bool)
    pattern[:2, :3] = True
    first = np.array([0])
    assert _cycle_certificates(ext, pattern, first)[1][0] == 3.0
    down, up = _augmented_moves(ext, pattern, first, np.array([np.inf]))
    exact = interval_audit(ext, pattern, pattern, np.full(ext.shape, 5.0)).intervals[0]
    assert (down[0], up[0]) == (1.0, 6.0) == (1.0 - exact.lower, exact.upper - 1.0)


def test_a_six_cycle_proves_what_no_box_can():
    from disclosure.engine.suppression import _cycle_certificates, _slab_boxes

    ext = _extend(np.array([[3, 7, 50], [40, 4, 8], [6, 60, 5]]))
    pattern = np.zeros(ext.shape, dtype=bool)
    for cell in [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 0)]:
        pattern[cell] = True
    first = np.array([0])
    assert _slab_boxes(ext, pattern, first) == (np.zeros(1), np.zeros(1))  # no 4-cycle among these cells
    down, up = _cycle_certificates(ext, pattern, first)
    # +(0,0) -(0,1) +(1,1) -(1,2) +(2,2) -(2,0): up to min(7, 8, 6) = 6 up, min(3, 4, 5) = 3 down
    assert (down[0], up[0]) == (3.0, 6.0)
    exact = interval_audit(ext, pattern, pattern, np.full(ext.shape, 5.0)).intervals[0]
    assert (exact.lower, exact.upper) == (0.0, 9.0)


def test_skewed_table_is_proven_by_certificates_alone_without_any_lp():
    rng = np.random.default_rng(11)
    shape = (12, 12, 8)
    weights = [1.0 / np.arange(1, n + 1) ** 1.1 for n in shape]
    rows = [rng.choice(n, size=40_000, p=w / w.sum()) for n, w in zip(shape, weights, strict=True)]
    body = np.zeros(shape, dtype=np.int64)
    np.add.at(body, tuple(rows), 1)
    ext = _extend(body)
    primary = _primary(ext)
    required = np.full(ext.shape, 5.0)
    pattern = protect(ext, primary, required, audit=False).suppressed
    fast = audit_pattern(ext, pattern, primary, required, lp_seconds=0.0)
    assert primary.sum() > 100
    assert fast.proven and fast.lp_solved == 0 and not fast.unproven
    assert {c.method for c in fast.intervals} == {"box"}
    sample = fast.intervals[:: max(1, len(fast.intervals) // 25)]
    exact = {
        c.index: c
        for c in interval_audit(ext, pattern, primary, required, cells=np.array([c.index for c in sample])).intervals
    }
    for cell in sample:
        assert exact[cell.index].lower <= cell.lower + 1e-6 and cell.upper <= exact[cell.index].upper + 1e-6


def test_certificates_are_the_same_when_computed_in_small_batches(monkeypatch):
    import disclosure.engine.suppression as suppression

    rng = np.random.default_rng(5)
    ext = _extend(rng.poisson(rng.choice([2, 30], size=(5, 6, 4), p=[0.5, 0.5])))
    primary = _primary(ext)
    pattern = protect(ext, primary, np.full(ext.shape, 5.0), audit=False).suppressed
    cells = np.flatnonzero((pattern & primary).ravel())
    required = np.full(len(cells), 50.0)  # unreachable: every stage runs on every cell
    # No time limit: the stages after the boxes stop after a second by default, and on a busy machine where
    # they stopped would differ between the two runs, which is not what this test is about.
    whole = (
        suppression._slab_boxes(ext, pattern, cells),
        suppression.certify_cells(ext, pattern, cells, required, seconds=None),
    )
    monkeypatch.setattr(suppression, "_PLANE_WORK", 7 * 7 * 5 * 2)  # two slab pairs, or 11 cells, at a time
    batched = (
        suppression._slab_boxes(ext, pattern, cells),
        suppression.certify_cells(ext, pattern, cells, required, seconds=None),
    )
    assert len(cells) > 11 and whole[0][1].max() > 0
    for a, b in zip(whole, batched, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_protect_widens_the_pattern_when_partners_alone_leave_a_cell_recoverable():
    # Found by search: with a protection level of 8 the partner heuristic stops with a primary cell
    # narrower than 8, and the fallback has to suppress more.
    ext = _extend(np.array([[0, 1, 7], [4, 2, 4], [7, 3, 0]]))
    primary = _primary(ext)
    required = np.full(ext.shape, 8.0)
    heuristic_only = secondary_suppression(ext, primary, required)
    assert not interval_audit(ext, heuristic_only, primary, required).protected

    result = protect(ext, primary, required)

    assert result.fallback is not None
    assert result.fallback_cells > 0
    assert (result.suppressed >= heuristic_only).all()  # the fallback only ever adds cells
    assert interval_audit(ext, result.suppressed, primary, required).protected


def test_protect_never_widens_a_pattern_the_partners_already_protect():
    ext = _extend(np.array([[3, 50, 60], [40, 45, 70], [33, 12, 80]]))
    result = protect(ext, _primary(ext), np.full(ext.shape, 5.0))
    assert result.fallback is None and result.fallback_cells == 0


many_small_2d = arrays(np.int64, st.tuples(st.integers(2, 5), st.integers(2, 5)), elements=st.integers(0, 8))
many_small_3d = arrays(
    np.int64, st.tuples(st.integers(2, 4), st.integers(2, 4), st.integers(2, 3)), elements=st.integers(0, 8)
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(many_small_2d, many_small_3d), st.floats(3.0, 25.0))
def test_tables_of_many_small_cells_are_always_protected(body, level):
    # Every cell may be suppressed, so a protecting pattern always exists (suppressing everything
    # leaves only non-negativity); protect must find one, whatever the protection level.
    ext = _extend(body)
    primary = _primary(ext)
    required = np.full(ext.shape, level)
    result = protect(ext, primary, required, audit="exact")
    audit = interval_audit(ext, result.suppressed, primary, required)
    assert audit.protected
    assert result.audit is not None and result.audit.protected


def test_cells_that_may_not_be_suppressed_stay_released_even_in_the_fallback():
    ext = _extend(np.array([[0, 1, 7], [4, 2, 4], [7, 3, 0]]))
    primary = _primary(ext)
    eligible = np.ones(ext.shape, dtype=bool)
    eligible[-1, -1] = False  # the grand total is published elsewhere
    result = protect(ext, primary, np.full(ext.shape, 8.0), eligible=eligible)
    assert not result.suppressed[-1, -1]
    assert interval_audit(ext, result.suppressed, primary, np.full(ext.shape, 8.0)).protected == result.audit.protected


signed_2d = arrays(np.int64, st.tuples(st.integers(2, 5), st.integers(2, 5)), elements=st.integers(-20, 40))
float_3d = arrays(
    np.float64,
    st.tuples(st.integers(2, 3), st.integers(2, 3), st.integers(2, 4)),
    elements=st.floats(0.0, 900.0, allow_subnormal=False),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tables_2d, tables_3d, float_3d, signed_2d), st.integers(0, 2**16))
def test_propagated_bounds_contain_the_lp_interval(body, extra_seed):
    from disclosure.engine.suppression import outer_bounds

    ext = _extend(body)
    nonnegative = bool((ext >= 0).all())
    _, pattern = _pattern_with_extras(ext, extra_seed)
    lo, hi = outer_bounds(ext, pattern, nonnegative)
    exact = interval_audit(ext, pattern, pattern, np.full(ext.shape, 5.0), nonnegative)
    slack = 1e-6 * max(1.0, float(np.abs(ext).max()))
    for cell in exact.intervals:
        assert lo.ravel()[cell.index] <= cell.lower + slack, cell
        assert hi.ravel()[cell.index] >= cell.upper - slack, cell


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tables_2d, tables_3d, float_3d, signed_2d), st.integers(0, 2**16), st.floats(1.0, 30.0))
def test_cells_proven_exposed_without_an_lp_are_exposed_under_the_lp(body, extra_seed, level):
    from disclosure.engine.suppression import exposed_by_bounds

    ext = _extend(body)
    nonnegative = bool((ext >= 0).all())
    primary, pattern = _pattern_with_extras(ext, extra_seed)
    required = np.full(ext.shape, level)
    cells = np.flatnonzero((primary & pattern).ravel())
    exact = {c.index: c for c in interval_audit(ext, pattern, primary, required, nonnegative).intervals}
    slack = 1e-6 * max(1.0, float(np.abs(ext).max()))
    for cell in exposed_by_bounds(ext, pattern, cells, required, nonnegative):
        lp = exact[cell.index]
        assert not lp.protected and not cell.protected
        assert cell.lower <= lp.lower + slack and cell.upper >= lp.upper - slack, (cell, lp)


def _determined_by_two_rows() -> tuple[np.ndarray, np.ndarray, int]:
    # Found by search. Rows 0 and 1 each hide two cells, in columns 3 and 4; column 4's total is released,
    # so the two hidden cells of column 3 add up to a known number, and so the hidden total of column 3
    # (flat cell 18) is exactly 4 + 18 + 17 = 39, though no single row or column pins it down.
    ext = _extend(np.array([[5, 11, 15, 4], [29, 2, 18, 18], [9, 11, 23, 17]]))
    pattern = np.zeros(ext.shape, dtype=bool)
    pattern[[0, 0, 1, 1, 2, 2, 3, 3, 3], [3, 4, 3, 4, 0, 1, 0, 1, 3]] = True
    return ext, pattern, int(np.ravel_multi_index((3, 3), ext.shape))


def test_a_cell_only_a_sum_of_lines_determines_is_found_exposed_without_an_lp():
    from disclosure.engine.suppression import exposed_by_bounds, outer_bounds

    ext, pattern, cell = _determined_by_two_rows()
    required = np.full(ext.shape, 5.0)
    lo, hi = outer_bounds(ext, pattern)
    assert hi.ravel()[cell] - lo.ravel()[cell] > 5.0  # line by line, the cell looks protected

    (found,) = exposed_by_bounds(ext, pattern, np.array([cell]), required)

    assert found.index == cell and found.method == "bounds"
    assert found.lower <= 39.0 <= found.upper and found.upper - found.lower < 1e-6
    exact = interval_audit(ext, pattern, pattern, required, cells=np.array([cell])).intervals[0]
    assert exact.lower == exact.upper == 39.0


def test_fast_audit_reports_a_determined_cell_exposed_without_solving_an_lp():
    ext, pattern, cell = _determined_by_two_rows()
    primary = np.zeros(ext.shape, dtype=bool)
    primary.ravel()[cell] = True

    audit = audit_pattern(ext, pattern, primary, np.full(ext.shape, 5.0))

    assert audit.lp_solved == 0
    assert [(c.index, c.method) for c in audit.exposed] == [(cell, "bounds")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tables_2d, tables_3d, float_3d), st.integers(0, 2**16))
def test_proofs_carried_to_a_larger_pattern_hold_for_it(body, extra_seed):
    ext = _extend(body)
    primary, pattern = _pattern_with_extras(ext, extra_seed)
    required = np.full(ext.shape, 5.0)
    first = audit_pattern(ext, pattern, primary, required)
    larger = pattern | (np.random.default_rng(extra_seed + 1).random(ext.shape) < 0.2)

    second = audit_pattern(ext, larger, primary, required, proven=first.intervals)

    exact = {c.index: c for c in interval_audit(ext, larger, primary, required).intervals}
    slack = 1e-6 * max(1.0, float(np.abs(ext).max()))
    assert {c.index for c in second.intervals} | set(second.unproven) == set(np.flatnonzero((primary & larger).ravel()))
    for cell in second.intervals:
        lp = exact[cell.index]
        if cell.method == "bounds":  # an outer interval: contains the LP's
            assert cell.lower <= lp.lower + slack and cell.upper >= lp.upper - slack
        else:  # an inner one ("box"), or the LP's own
            assert lp.lower <= cell.lower + slack and cell.upper <= lp.upper + slack
        assert cell.protected <= lp.protected  # never protected where the LP says exposed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(many_small_2d, many_small_3d, tables_3d), st.floats(3.0, 12.0))
def test_fast_protect_says_protected_only_when_a_fresh_lp_agrees(body, level):
    ext = _extend(body)
    primary = _primary(ext)
    required = np.full(ext.shape, level)

    result = protect(ext, primary, required, audit="fast")

    if result.audit is not None and result.audit.proven:
        assert interval_audit(ext, result.suppressed, primary, required).protected


@settings(max_examples=60, deadline=None)
@given(
    arrays(bool, st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9))),
    st.integers(0, 2),
    st.sampled_from([1, 64, 1 << 24]),
)
def test_partner_order_counts_the_suppressed_cells_two_slices_share(suppressed, axis, block_bytes):
    slices = np.moveaxis(suppressed, axis, 0).reshape(suppressed.shape[axis], -1).astype(np.int64)
    expected = np.array([[int((a & b).sum()) for b in slices] for a in slices], dtype=np.float64)
    original = suppression_module._PAIR_BYTES
    suppression_module._PAIR_BYTES = block_bytes  # small blocks as well as one
    try:
        shared = _partner_order(suppressed, axis)
    finally:
        suppression_module._PAIR_BYTES = original
    assert shared.dtype == np.float64
    assert np.array_equal(shared, expected)
