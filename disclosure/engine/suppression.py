"""Secondary suppression, and its proof by a linear-programming interval audit.

A table is held in extended shape (each axis ends with its margin), so the published additive structure is:
along every axis, every line's interior cells sum to the line's last cell. An attacker who knows every
released cell can bound each suppressed cell by linear programming over these equations (and x >= 0 for
non-negative data). Suppression is safe only if each primarily suppressed cell's feasible interval stays at
least as wide as its protection level.

The heuristic is the classic one, vectorised per axis: a line with a suppressed cell must contain another
suppressed cell, and together they must hide at least the protection level; the partner is the smallest
cell that suffices (least information lost). It runs to a fixpoint, then the LP audit checks the result;
any cell still exposed (possible in 3-way tables, where lines interact) gets more partners and the loop
repeats. The audit, not the heuristic, is the guarantee.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from typing import SupportsIndex

import numpy as np
from scipy import sparse
from scipy.optimize import linprog
from scipy.sparse.csgraph import connected_components


@dataclass
class CellInterval:
    """The feasible interval of one suppressed cell (flat index into the extended table)."""

    index: int
    lower: float
    upper: float
    required: float
    primary: bool
    # "lp": exact interval; "box": an inner bound proven by a feasible perturbation; "bounds": an outer bound
    # from bound propagation (``outer_bounds``), reported only for cells it proves exposed
    method: str = "lp"

    @property
    def width(self) -> float:
        return self.upper - self.lower

    @property
    def protected(self) -> bool:
        """Secondary cells are not sensitive; only primary ones must stay wide enough."""
        return (not self.primary) or self.width + 1e-9 >= self.required


@dataclass
class AuditResult:
    """Outcome of the interval audit of one suppression pattern."""

    intervals: list[CellInterval] = field(default_factory=list)
    method: str = "linprog-highs"
    scope: str = "full"  # "full": exact LP interval of every suppressed cell; "primary": see audit_pattern
    lp_solved: int = 0
    unproven: list[int] = field(default_factory=list)  # primary cells left unaudited (LP budget exhausted)

    @property
    def proven(self) -> bool:
        return self.protected and not self.unproven

    @property
    def exposed(self) -> list[CellInterval]:
        return [c for c in self.intervals if not c.protected]

    @property
    def protected(self) -> bool:
        return not self.exposed


@dataclass
class SuppressionResult:
    """Suppression pattern (extended shape) with the audit that proves it."""

    primary: np.ndarray
    suppressed: np.ndarray
    audit: AuditResult | None
    rounds: int
    # When the partner heuristic could not protect every primary cell: the widest step of the fallback
    # ("lines", "planes", "table") and how many cells the fallback added to the heuristic's pattern.
    fallback: str | None = None
    fallback_cells: int = 0

    @property
    def secondary(self) -> np.ndarray:
        return self.suppressed & ~self.primary


def _lines(arr: np.ndarray, axis: int) -> np.ndarray:
    """View every line along ``axis`` as a row of a 2-D array (last column = the line's total)."""
    return np.moveaxis(arr, axis, -1).reshape(-1, arr.shape[axis])


def _from_lines(lines: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    moved = list(shape)
    moved.append(moved.pop(axis))
    return np.moveaxis(lines.reshape(moved), -1, axis)


def _add_partners(
    values: np.ndarray,
    suppressed: np.ndarray,
    required: np.ndarray,
    eligible: np.ndarray,
    axis: int,
    force_cells: np.ndarray | None = None,
) -> np.ndarray:
    """One vectorised pass along ``axis``: give each under-protected line one more suppressed cell."""
    v = np.abs(_lines(values, axis))
    s = _lines(suppressed, axis).copy()
    req = _lines(required, axis)
    ok = _lines(eligible, axis)
    n_supp = s.sum(axis=1)
    hidden = np.where(s, v, 0.0).sum(axis=1)
    line_req = np.where(s, req, 0.0).max(axis=1)
    total_hidden = s[:, -1]
    # A line whose total is suppressed gives no bound by itself; otherwise the suppressed cells' sum is
    # exactly the freedom an attacker has within that line.
    need = (n_supp == 1) | ((n_supp >= 2) & ~total_hidden & (hidden < line_req))
    if force_cells is not None:
        need |= _lines(force_cells, axis).any(axis=1) & (n_supp >= 1)
    if not need.any():
        return suppressed
    rows = np.flatnonzero(need)
    vv, ss, oo = v[rows], s[rows], ok[rows]
    deficit = (line_req[rows] - hidden[rows])[:, None]
    cand = ~ss & oo
    # Score: the smallest sufficient cell wins; failing that, the largest insufficient one; totals last.
    span = vv.max(initial=0.0) + 1.0
    score = np.where(vv >= deficit, vv, span + (span - vv))
    score[:, -1] += 2.0 * span  # suppressing a total hides the most information, so use it last
    score = np.where(cand, score, np.inf)
    choice = score.argmin(axis=1)
    has = np.isfinite(score[np.arange(len(rows)), choice])
    s[rows[has], choice[has]] = True
    return _from_lines(s, suppressed.shape, axis)


def secondary_suppression(
    values: np.ndarray,
    primary: np.ndarray,
    required: np.ndarray,
    eligible: np.ndarray | None = None,
    force_cells: np.ndarray | None = None,
) -> np.ndarray:
    """Run the partner heuristic over every axis to a fixpoint; returns the full suppression mask."""
    suppressed = primary.copy()
    eligible = np.ones(values.shape, dtype=bool) if eligible is None else eligible
    first = True
    while True:
        before = int(suppressed.sum())
        for axis in range(values.ndim):
            suppressed = _add_partners(values, suppressed, required, eligible, axis, force_cells if first else None)
        first = False
        if int(suppressed.sum()) == before:
            return suppressed


def _constraint_matrix(shape: tuple[int, ...]) -> sparse.csr_matrix:
    """Rows = lines of the extended table, columns = cells; +1 for interior cells, -1 for the total."""
    size = int(np.prod(shape))
    flat = np.arange(size).reshape(shape)
    rows, cols, vals = [], [], []
    offset = 0
    for axis in range(len(shape)):
        lines = _lines(flat, axis)
        nlines, m = lines.shape
        coef = np.ones(m)
        coef[-1] = -1.0
        rows.append(np.repeat(np.arange(nlines) + offset, m))
        cols.append(lines.ravel())
        vals.append(np.tile(coef, nlines))
        offset += nlines
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(offset, size))


def interval_audit(
    values: np.ndarray,
    suppressed: np.ndarray,
    primary: np.ndarray,
    required: np.ndarray,
    nonnegative: bool = True,
    cells: np.ndarray | None = None,
    deadline: float | None = None,
    max_component: int | None = None,
) -> AuditResult:
    """Bound suppressed cells by LP (HiGHS) given every released cell and the additive structure.

    The system splits into independent components (suppressed cells linked through shared lines), each a
    small LP; each cell needs one minimisation and one maximisation. ``cells`` (flat indices) limits which
    cells are bounded; by default every suppressed cell is.
    """
    result = AuditResult()
    wanted = None if cells is None else set(int(c) for c in cells)
    done: set[int] = set()
    sup_idx = np.flatnonzero(suppressed.ravel())
    if len(sup_idx) == 0:
        return result
    a_sup, rhs, _ = _suppressed_system(values, sup_idx)
    adjacency = (a_sup.T @ a_sup) != 0
    ncomp, labels = connected_components(adjacency, directed=False)
    bounds = (0, None) if nonnegative else (None, None)
    primary_flat = primary.ravel()
    required_flat = required.ravel()
    a_sup_csc = a_sup.tocsc()
    for comp in range(ncomp):
        members = np.flatnonzero(labels == comp)
        if wanted is not None and not wanted.intersection(int(i) for i in sup_idx[members]):
            continue
        sub = a_sup_csc[:, members]
        rows = np.flatnonzero(sub.getnnz(axis=1) > 0)
        sub = sub[rows]
        b = rhs[rows]
        todo = [j for j, var in enumerate(members) if wanted is None or int(sup_idx[var]) in wanted]
        if deadline is not None and time.monotonic() > deadline:
            continue  # out of time: these cells stay unproven (reported below), never silently passed
        if max_component is not None and len(members) > max_component:
            continue  # each LP over a huge component costs ~0.2 s; left unproven for the offline audit
        lows, highs, solved = _component_bounds(sub, b, bounds, todo, deadline)
        todo = todo[: len(lows)]  # a deadline may stop a large component part-way
        done.update(int(sup_idx[members[j]]) for j in todo)
        result.lp_solved += solved
        for j, lower, upper in zip(todo, lows, highs, strict=True):
            cell = int(sup_idx[members[j]])
            result.intervals.append(
                CellInterval(cell, float(lower), float(upper), float(required_flat[cell]), bool(primary_flat[cell]))
            )
    if deadline is not None:
        expected = wanted if wanted is not None else {int(i) for i in sup_idx}
        result.unproven = sorted(c for c in expected - done if primary_flat[c])
    result.intervals.sort(key=lambda c: c.index)
    return result


def _suppressed_system(values: np.ndarray, sup_idx: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """The attacker's equations over the suppressed cells: ``a_sup x = rhs`` (one row per line holding a
    suppressed cell), and per row the sum of the absolute released terms that made ``rhs`` (its scale)."""
    a = _constraint_matrix(values.shape)
    flat_vals = values.ravel().astype(np.float64)
    known = np.ones(values.size, dtype=bool)
    known[sup_idx] = False
    a_known = a[:, np.flatnonzero(known)]
    rhs = -(a_known @ flat_vals[known])
    scale = abs(a_known) @ np.abs(flat_vals[known])
    a_sup = a[:, sup_idx].tocsr()
    touched = np.flatnonzero(a_sup.getnnz(axis=1) > 0)
    return a_sup[touched], rhs[touched], scale[touched]


_BATCH_VARS = 60  # components up to this size are solved as one block-diagonal LP per direction


def _component_bounds(
    sub, b, bounds, todo: list[int], deadline: float | None = None
) -> tuple[list[float], list[float], int]:
    """Min and max of each listed variable over {sub x = b, bounds}; returns (lows, highs, LPs solved).

    One LP per cell and direction costs mostly solver start-up, so a small component's cells are solved
    together: the block-diagonal LP with one copy of the component per cell, minimising the sum of each
    copy's own target, reaches every copy's optimum at once (the copies share no variables).
    """
    m = sub.shape[1]
    solved = 0

    def solve(c, a_eq, rhs):
        # HiGHS's own time limit bounds each LP; a timed-out LP (status 1) proves nothing.
        options = {}
        if deadline is not None:
            options["time_limit"] = max(deadline - time.monotonic(), 0.01)
        return linprog(c, A_eq=a_eq, b_eq=rhs, bounds=bounds, method="highs", options=options)

    if 1 < len(todo) and m <= _BATCH_VARS:
        big = sparse.block_diag([sub] * len(todo), format="csr")
        rhs = np.tile(b, len(todo))
        c = np.zeros(m * len(todo))
        c[[k * m + j for k, j in enumerate(todo)]] = 1.0
        lo = solve(c, big, rhs)
        hi = solve(-c, big, rhs)
        solved += 2
        if lo.status == 0 and hi.status == 0:
            picks = [k * m + j for k, j in enumerate(todo)]
            return list(lo.x[picks]), list(hi.x[picks]), solved
    lows, highs = [], []
    for j in todo:
        if deadline is not None and time.monotonic() > deadline:
            break
        c = np.zeros(m)
        c[j] = 1.0
        lo = solve(c, sub, b)
        hi = solve(-c, sub, b)
        solved += 2
        if lo.status not in (0, 3) or hi.status not in (0, 3):
            break  # time limit or numerical trouble: this cell and the rest stay unproven
        lows.append(lo.fun if lo.status == 0 else -np.inf)  # status 3: unbounded in that direction
        highs.append(-hi.fun if hi.status == 0 else np.inf)
    return lows, highs, solved


_MAX_BOXES = 512


def _any_full_box(grid: np.ndarray, pos: tuple, patterns: np.ndarray, suppressed: np.ndarray) -> bool:
    own = np.array(pos)
    coords = np.where(patterns[None, :, :] == 1, grid[:, None, :], own[None, None, :])
    return bool(suppressed[tuple(coords[..., a] for a in range(len(pos)))].all(axis=1).any())


def _vectorised_boxes(
    values: np.ndarray, suppressed: np.ndarray, cells: np.ndarray, per_axis: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Box certificates for many cells at once, trying only each line's ``per_axis`` largest partners.

    Same arithmetic as ``box_certificates`` (see there); returns (down, up) per cell, zeros where no full
    box was found among these candidates. Handles the bulk of a large table without a Python loop.
    """
    shape = np.array(values.shape)
    k = len(shape)
    vals = np.abs(values)
    pos = np.stack(np.unravel_index(cells, values.shape), axis=1)  # (n, k)
    n = len(cells)
    partners = []
    for axis in range(k):
        masked = np.where(suppressed, vals, -np.inf)
        order = np.argsort(-np.moveaxis(masked, axis, -1), axis=-1, kind="stable")[..., : per_axis + 1]
        order_vals = np.take_along_axis(np.moveaxis(masked, axis, -1), order, axis=-1)
        other = np.delete(pos, axis, axis=1)
        line_top = order[tuple(other.T)]  # (n, per_axis + 1)
        line_ok = np.isfinite(order_vals[tuple(other.T)]) & (line_top != pos[:, axis : axis + 1])
        if line_top.shape[1] < per_axis + 1:  # short axis: pad with "no partner"
            pad = per_axis + 1 - line_top.shape[1]
            line_top = np.pad(line_top, ((0, 0), (0, pad)))
            line_ok = np.pad(line_ok, ((0, 0), (0, pad)))
        rank = np.argsort(~line_ok, axis=1, kind="stable")[:, :per_axis]
        chosen = np.take_along_axis(line_top, rank, axis=1)
        valid = np.take_along_axis(line_ok, rank, axis=1)
        partners.append(np.where(valid, chosen, -1))
    patterns = np.array(list(np.ndindex(*(2,) * k)), dtype=np.int64)  # (2^k, k)
    best_down = np.zeros(n)
    best_up = np.zeros(n)
    for combo in np.ndindex(*(per_axis,) * k):
        grid = np.stack([partners[a][:, combo[a]] for a in range(k)], axis=1)  # (n, k)
        usable = (grid >= 0).all(axis=1)
        g = np.where(grid >= 0, grid, 0)
        coords = np.where(patterns[None, :, :] == 1, g[:, None, :], pos[:, None, :])  # (n, 2^k, k)
        flat = tuple(coords[..., a] for a in range(k))
        full = usable & suppressed[flat].all(axis=1)
        axis_sign = np.where((g < shape - 1) & (pos < shape - 1), -1, 1)  # (n, k)
        signs = np.prod(np.where(patterns[None, :, :] == 1, axis_sign[:, None, :], 1), axis=2)
        corner_vals = vals[flat]
        up = np.where(signs < 0, corner_vals, np.inf).min(axis=1)
        down = np.where(signs > 0, corner_vals, np.inf).min(axis=1)
        best_up = np.where(full, np.maximum(best_up, up), best_up)
        best_down = np.where(full, np.maximum(best_down, down), best_down)
    return best_down, best_up


def box_certificates(
    values: np.ndarray,
    suppressed: np.ndarray,
    cells: np.ndarray,
    nonnegative: bool = True,
    per_axis: int = 4,
    deadline: float | None = None,
) -> dict[int, tuple[float, float]]:
    """For each cell, how far it can provably move down and up without changing any released number.

    A "box" picks, along every axis, the cell's own index and one partner index among the suppressed cells
    of its line. Adding +d and -d alternately at the box's 2^k corners (a margin partner takes the same sign
    as its interior pair, since the total moves with the cell) keeps every line total, so if all corners
    are suppressed the attacker cannot tell the tables apart. The distance is limited only by corners
    reaching zero. The best box up plus the best box down is a proven lower bound on the width of the
    cell's feasible interval, found without any LP; cells without such a proof go to the LP.
    """
    shape = values.shape
    k = len(shape)
    flat_vals = np.abs(values) if nonnegative else values
    out: dict[int, tuple[float, float]] = {}
    patterns = np.array(list(np.ndindex(*(2,) * k)), dtype=np.int64)  # 0 = own index, 1 = partner
    for cell in cells:
        if deadline is not None and time.monotonic() > deadline:
            break  # the cells not reached simply have no certificate
        pos = np.unravel_index(int(cell), shape)
        cands = []
        for axis in range(k):
            line: list[SupportsIndex | slice] = list(pos)
            line[axis] = slice(None)
            idx = np.flatnonzero(suppressed[tuple(line)])
            idx = idx[idx != pos[axis]]
            if len(idx) == 0:
                break
            line_vals = flat_vals[tuple(line)][idx]
            cands.append(idx[np.argsort(-line_vals, kind="stable")])
        if len(cands) < k:
            continue
        # Largest partners first (they allow the biggest moves); widen the search only if needed.
        few = [c[:per_axis] for c in cands]
        grid = np.stack(np.meshgrid(*few, indexing="ij"), axis=-1).reshape(-1, k)  # (boxes, k)
        if not _any_full_box(grid, pos, patterns, suppressed):
            many = [c[: max(per_axis, int(_MAX_BOXES ** (1 / k)))] for c in cands]
            grid = np.stack(np.meshgrid(*many, indexing="ij"), axis=-1).reshape(-1, k)
        own = np.array(pos)
        # coords[b, p, a]: axis-a index of corner p of box b
        coords = np.where(patterns[None, :, :] == 1, grid[:, None, :], own[None, None, :])
        corner_sup = suppressed[tuple(coords[..., a] for a in range(k))]
        full = corner_sup.all(axis=1)
        if not full.any():
            continue
        coords = coords[full]
        partner_interior = grid[full] < (np.array(shape) - 1)  # (boxes, k)
        own_interior = own < (np.array(shape) - 1)
        # sign of a partner index along an axis: -1 only when both own and partner are interior
        axis_sign = np.where(partner_interior & own_interior[None, :], -1, 1)  # (boxes, k)
        signs = np.prod(np.where(patterns[None, :, :] == 1, axis_sign[:, None, :], 1), axis=2)  # (boxes, 2^k)
        corner_vals = flat_vals[tuple(coords[..., a] for a in range(k))]
        if not nonnegative:
            out[int(cell)] = (np.inf, np.inf)
            continue
        up = np.where(signs < 0, corner_vals, np.inf).min(axis=1)
        down = np.where(signs > 0, corner_vals, np.inf).min(axis=1)
        out[int(cell)] = (float(down.max()), float(up.max()))
    return out


def _partner_order(suppressed: np.ndarray, axis: int) -> np.ndarray:
    """For every pair of positions along ``axis``: how many suppressed cells their two slices share.

    A prism certificate pairing slice ``i`` with slice ``p`` can only use cells suppressed in both, so
    partners sharing more suppressed cells are tried first.
    """
    # Bits, not a matrix product: a float product goes to OpenBLAS, whose threads on a busy 2-core machine
    # turned this 0.1 ms step into 50-140 ms one call in ten (ADR 0041); numpy's integer product is a slow
    # plain loop. Slices packed 8 cells a byte, ANDed in pairs and counted: exact, one thread.
    slabs = np.packbits(np.moveaxis(suppressed, axis, 0).reshape(suppressed.shape[axis], -1), axis=1)
    n, width = slabs.shape
    shared = np.empty((n, n), dtype=np.float64)
    step = max(1, _PAIR_BYTES // max(1, n * width))
    for start in range(0, n, step):
        block = slabs[start : start + step]
        shared[start : start + step] = np.bitwise_count(block[:, None, :] & slabs[None, :, :]).sum(axis=2)
    return shared


_PAIR_BYTES = 1 << 24  # bytes of one block of ANDed slice pairs (16 MB)


_PLANE_WORK = 1 << 22  # elements of one max-min product batch (about 16 MB of float32)


def _slab_boxes(
    values: np.ndarray, suppressed: np.ndarray, cells: np.ndarray, per_slab: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Widest box certificates of every cell of 2-D and 3-D tables, computed per plane, not per cell.

    In 3-D a box pairs the cell's slab (axis 0) with a partner slab and takes a 4-cycle in the plane of the
    other two axes (see ``_cycle_certificates`` for the signs). For each slab and its ``per_slab`` partners
    sharing most suppressed cells, the widest 4-cycle through every edge of the plane is a max-min product
    over the plane, so all cells of the slab are certified together. In 2-D the plane is the table itself.
    Returns (down, up) per cell, 0 where no box was found.
    """
    shape = values.shape
    n = len(cells)
    down, up = np.zeros(n), np.zeros(n)
    if len(shape) not in (2, 3) or n == 0:
        return down, up
    x = np.abs(values).astype(np.float64)
    if np.all(x == np.round(x)) and x.max(initial=0.0) < 2**24:
        x = x.astype(np.float32)
    if len(shape) == 2:
        x, sup, shape = x[None], suppressed[None], (1, *shape)
        pairs = np.array([[0, -1]])
    else:
        sup = suppressed
        overlap = _partner_order(suppressed, 0).astype(np.float64)
        np.fill_diagonal(overlap, -1.0)
        wanted = np.unique(np.unravel_index(cells, shape)[0])
        top = np.argsort(-overlap[wanted], axis=1, kind="stable")[:, :per_slab]
        ok = np.take_along_axis(overlap[wanted], top, axis=1) > 0
        pairs = np.stack([np.repeat(wanted, top.shape[1]), top.ravel()], axis=1)[ok.ravel()]
    if len(pairs) == 0:
        return down, up
    nb, nc = shape[1], shape[2]
    sig = [np.where(np.arange(m) == m - 1, -1.0, 1.0) for m in shape]
    plane = (sig[1][:, None] * sig[2][None, :]).astype(x.dtype)  # y = plane * z on the cell's own slab
    own, partner = pairs[:, 0], pairs[:, 1]
    inf = np.array(np.inf, dtype=x.dtype)
    x_own = x[own]
    cap_plus = np.where(plane < 0, x_own, inf)  # capacity of an edge given z = +1: its decreasing cells
    cap_minus = np.where(plane > 0, x_own, inf)
    present = sup[own].copy()
    has_partner = partner >= 0
    if has_partner.any():
        weight = np.where(has_partner, -sig[0][own] * sig[0][np.maximum(partner, 0)], 1.0)
        y_par = (weight[:, None, None] * plane[None]).astype(x.dtype)
        x_par = x[np.maximum(partner, 0)]
        cap_plus = np.minimum(cap_plus, np.where(has_partner[:, None, None] & (y_par < 0), x_par, inf))
        cap_minus = np.minimum(cap_minus, np.where(has_partner[:, None, None] & (y_par > 0), x_par, inf))
        present &= np.where(has_partner[:, None, None], sup[np.maximum(partner, 0)], True)
    cap_plus[~present] = 0
    cap_minus[~present] = 0
    # Only rows and columns holding a suppressed cell of some pair can be on a cycle: drop the others.
    rows_used = present.any(axis=(0, 2))
    cols_used = present.any(axis=(0, 1))
    cap_plus = cap_plus[:, rows_used][:, :, cols_used]
    cap_minus = cap_minus[:, rows_used][:, :, cols_used]
    row_at = np.cumsum(rows_used) - 1  # new index of each kept row
    col_at = np.cumsum(cols_used) - 1
    nb, nc = int(rows_used.sum()), int(cols_used.sum())
    if nb == 0 or nc == 0:
        return down, up
    if nb * nb * nc > _PLANE_WORK:
        return down, up  # planes too large for the max-min product: the other certificates take over
    # The cells each pair certifies lie on a few rows of its plane (few, once most cells are proven): the
    # max-min product is worked out for those rows only, not for every row of the plane.
    pos = np.stack(np.unravel_index(cells, suppressed.shape), axis=1)
    if suppressed.ndim == 2:
        pos = np.concatenate([np.zeros((n, 1), dtype=pos.dtype), pos], axis=1)
    z_up = plane[pos[:, 1], pos[:, 2]]
    targets = []  # per pair: its cells (indices into ``cells``), their rows and columns in the kept plane
    for p_index in range(len(pairs)):
        hit = np.flatnonzero(pos[:, 0] == own[p_index])
        j, k = pos[hit, 1], pos[hit, 2]
        usable = rows_used[j] & cols_used[k]  # otherwise the cell is on no pair's suppressed edge here
        targets.append((hit[usable], row_at[j[usable]], col_at[k[usable]]))
    row_sets = [np.unique(j) for _, j, _ in targets]
    m = max(1, max(len(r) for r in row_sets))
    rows_of = np.zeros((len(pairs), m), dtype=np.int64)  # rows worked out per pair; repeats fill the rest
    for p_index, r in enumerate(row_sets):
        if len(r):
            rows_of[p_index, : len(r)] = r
            rows_of[p_index, len(r) :] = r[0]
    kk = np.arange(nc)
    widths = {1.0: np.zeros((len(pairs), m, nc), x.dtype), -1.0: np.zeros((len(pairs), m, nc), x.dtype)}
    step = max(1, _PLANE_WORK // (m * nb * nc))
    for lo in range(0, len(pairs), step):
        part = slice(lo, lo + step)
        rows = rows_of[part]  # [p, i]: the i-th row j worked out for pair p
        at_p = np.arange(len(rows))[:, None]
        at_i = np.arange(m)[None, :]
        for z0, same, other in ((1.0, cap_plus[part], cap_minus[part]), (-1.0, cap_minus[part], cap_plus[part])):
            # 4-cycle (j,k) z0, (j',k) -z0, (j,k') -z0, (j',k') z0; j' != j and k' != k.
            t = np.minimum(other[at_p, rows][:, :, None, :], same[:, None, :, :])  # [p, i, j', k']: (j,k'), (j',k')
            k1 = t.argmax(axis=3)
            e1 = np.take_along_axis(t, k1[..., None], axis=3)[..., 0]
            np.put_along_axis(t, k1[..., None], 0, axis=3)
            e2 = t.max(axis=3)
            h = np.where(k1[..., None] == kk, e2[..., None], e1[..., None])  # [p, i, j', k]: best k' != k
            h[at_p, at_i, rows] = 0  # j' != j
            inner = np.minimum(other[:, None, :, :], h).max(axis=2)  # [p, i, k]: edge (j', k) takes -z0
            widths[z0][part] = np.minimum(same[at_p, rows], inner)
    for p_index, ((hit, j, k), r) in enumerate(zip(targets, row_sets, strict=True)):
        if len(hit) == 0:
            continue
        i = np.searchsorted(r, j)
        u = np.where(z_up[hit] > 0, widths[1.0][p_index, i, k], widths[-1.0][p_index, i, k])
        d = np.where(z_up[hit] > 0, widths[-1.0][p_index, i, k], widths[1.0][p_index, i, k])
        up[hit] = np.maximum(up[hit], u)
        down[hit] = np.maximum(down[hit], d)
    return down, up


def _cycle_certificates(
    values: np.ndarray,
    suppressed: np.ndarray,
    cells: np.ndarray,
    per_axis: int = 3,
    required: np.ndarray | None = None,
    max_steps: int | None = None,
    deadline: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Proven (down, up) moves of each cell from *prism* certificates: a cycle in a plane times a box.

    Boxes only use 4-cycles. Here, for a plane of two axes (b, c) through the cell, the suppressed cells of
    the plane form a bipartite graph (positions along b versus positions along c; a cell is an edge). Write
    sigma = +1 for an interior position and -1 for a margin, and give each edge a sign z: the perturbation
    y = sigma_b * sigma_c * z keeps every line of the plane (interior cells minus margin) unchanged exactly
    when the signs at every node sum to zero, e.g. when z alternates +1/-1 along a cycle. Along each
    remaining axis pick a partner position, as in a box, and repeat the cycle on every corner of that box
    with the box's alternating weights; lines along those axes are then unchanged too, so no released
    number moves. An edge is usable only if its cell is suppressed on every corner. Moving the cell by d is
    feasible while every decreasing cell stays >= 0, so the best move is the *widest* alternating cycle
    through the cell's edge, found by max-min path relaxation for all cells sharing a graph at once.
    A 4-cycle is exactly a box, so this proves at least what the boxes with the same partners prove.

    ``required`` (width per cell) drops a cell as soon as its proven width reaches it; ``max_steps`` bounds
    the relaxation (cycles of at most 2 * max_steps + 2 cells): a shorter search proves less, never more;
    past ``deadline`` (time.monotonic) the search stops with what it has proven.
    """
    shape = values.shape
    k = len(shape)
    n = len(cells)
    best_down, best_up = np.zeros(n), np.zeros(n)
    if k < 2 or n == 0:
        return best_down, best_up
    x = np.abs(values).astype(np.float64)
    if np.all(x == np.round(x)) and x.max(initial=0.0) < 2**24:
        x = x.astype(np.float32)  # counts are exact in float32, and the search is twice as fast
    pos = np.stack(np.unravel_index(cells, shape), axis=1)  # (n, k)
    sigma = [np.where(np.arange(m) == m - 1, -1.0, 1.0) for m in shape]

    def short() -> np.ndarray:
        return np.ones(n, dtype=bool) if required is None else best_down + best_up + 1e-9 < required

    for b, c in combinations(range(k), 2):
        if not short().any():
            break
        others = [a for a in range(k) if a not in (b, c)]
        partner_lists = []
        for a in others:  # partners along each other axis, those sharing most suppressed cells first
            line = tuple(np.arange(shape[a])[None, :] if o == a else pos[:, o][:, None] for o in range(k))
            cand = suppressed[line]
            cand[np.arange(n), pos[:, a]] = False
            score = np.where(cand, _partner_order(suppressed, a)[pos[:, a]], -1.0)
            top = np.argsort(-score, axis=1, kind="stable")[:, :per_axis]
            partner_lists.append(np.where(np.take_along_axis(score, top, axis=1) > 0, top, -1))
        plane_sign = (sigma[b][:, None] * sigma[c][None, :]).astype(x.dtype)
        moved_s = np.moveaxis(suppressed, (b, c), (-2, -1))
        moved_x = np.moveaxis(x, (b, c), (-2, -1))
        corners = list(np.ndindex(*(2,) * len(others)))  # 0: the cell's own position, 1: the partner
        for combo in np.ndindex(*(partner_lists[i].shape[1] for i in range(len(others)))):
            if deadline is not None and time.monotonic() > deadline:
                return best_down, best_up
            chosen = [partner_lists[i][:, combo[i]] for i in range(len(others))]
            todo = short()
            for ch in chosen:
                todo &= ch >= 0
            q_all = np.flatnonzero(todo)
            if len(q_all) == 0:
                continue
            q = q_all
            present = np.ones((len(q), shape[b], shape[c]), dtype=bool)
            cap_plus = np.full((len(q), shape[b], shape[c]), np.inf, dtype=x.dtype)
            cap_minus = np.full((len(q), shape[b], shape[c]), np.inf, dtype=x.dtype)
            for corner in corners:
                index = []
                weight = np.ones(len(q), dtype=x.dtype)
                for i, a in enumerate(others):
                    own = pos[q, a]
                    if corner[i]:
                        partner = chosen[i][q]
                        weight = weight * (-sigma[a][own] * sigma[a][partner]).astype(x.dtype)
                        index.append(partner)
                    else:
                        index.append(own)
                plane_s = moved_s[tuple(index)] if index else moved_s[None]
                plane_x = moved_x[tuple(index)] if index else moved_x[None]
                present &= plane_s
                sign = weight[:, None, None] * plane_sign[None]  # y = sign * z on this corner
                np.minimum(cap_plus, np.where(sign < 0, plane_x, np.inf), out=cap_plus)
                np.minimum(cap_minus, np.where(sign > 0, plane_x, np.inf), out=cap_minus)
            cap_plus[~present] = 0.0
            cap_minus[~present] = 0.0
            j, kk = pos[q, b], pos[q, c]
            own_sign = plane_sign[j, kk]  # y of the cell = own_sign * z on its own edge
            # Down first (a cell can fall at most to zero); up only for cells still short of their width.
            width = _widest_cycle(cap_plus, cap_minus, j, kk, -own_sign, max_steps)
            best_down[q] = np.maximum(best_down[q], width)
            more = short()[q]
            if more.any():
                width = _widest_cycle(cap_plus[more], cap_minus[more], j[more], kk[more], own_sign[more], max_steps)
                best_up[q[more]] = np.maximum(best_up[q[more]], width)
    return best_down, best_up


def _widest_cycle(
    cap_plus: np.ndarray,
    cap_minus: np.ndarray,
    j: np.ndarray,
    k: np.ndarray,
    z0: np.ndarray,
    max_steps: int | None = None,
) -> np.ndarray:
    """Width of the widest alternating cycle through edge (j[q], k[q]) with sign z0[q] there, per query q.

    ``cap_plus[q]``/``cap_minus[q]`` are the query's graph: arcs go b-node -> c-node along edges taking
    z = -1 (capacity ``cap_minus``) and c-node -> b-node along edges taking z = +1 (``cap_plus``). With
    z0 = +1 the cycle is the arc k -> j plus a path j ~> k whose first arc is not j -> k and which never
    returns to j: a first arc j -> k' (k' != k), then a path in the graph without node j. With z0 = -1,
    symmetrically, the arc j -> k plus k -> j' (j' != j), then a path without node k. The widest walk
    found by relaxation contains a simple path at least as wide, and the cycle it closes uses each edge once.
    """
    nq, nb, nc = cap_plus.shape
    rows = np.arange(nq)
    forward = z0 > 0
    back = ~forward
    closing = np.where(forward, cap_plus[rows, j, k], cap_minus[rows, j, k])
    wb = np.zeros((nq, nb), dtype=cap_plus.dtype)
    wc = np.zeros((nq, nc), dtype=cap_plus.dtype)
    wc[forward] = cap_minus[rows[forward], j[forward]]  # first arcs j -> k'
    wc[rows[forward], k[forward]] = 0.0
    wb[back] = cap_plus[rows[back], :, k[back]]  # first arcs k -> j'
    wb[rows[back], j[back]] = 0.0
    steps = nb + nc if max_steps is None else max_steps
    for _ in range(steps):
        new_b = np.maximum(wb, np.minimum(wc[:, None, :], cap_plus).max(axis=2))
        new_b[rows[forward], j[forward]] = 0.0  # node j is left behind for good
        new_c = np.maximum(wc, np.minimum(new_b[:, :, None], cap_minus).max(axis=1))
        new_c[rows[back], k[back]] = 0.0  # node k is left behind for good
        if np.array_equal(new_b, wb) and np.array_equal(new_c, wc):
            break
        wb, wc = new_b, new_c
    reach = np.where(forward, wc[rows, k], wb[rows, j])
    return np.minimum(closing, reach).astype(np.float64)


def _widest_prism_move(
    x: np.ndarray, suppressed: np.ndarray, pos: tuple[int, ...], direction: float, per_axis: int = 8
) -> tuple[float, np.ndarray | None]:
    """The widest single prism move of one cell (see ``_cycle_certificates``), with the move itself.

    Returns (d, y): adding d * y to ``x`` keeps every released number and every cell >= 0 and moves the
    cell by ``direction * d``. Found by a max-min Dijkstra over each plane through the cell, with the same
    rules as ``_widest_cycle`` (the path leaves the cell's own node behind after its first arc).
    """
    shape = x.shape
    k = len(shape)
    sigma = [np.where(np.arange(m) == m - 1, -1.0, 1.0) for m in shape]
    best_d, best_y = 0.0, None
    for b, c in combinations(range(k), 2):
        others = [a for a in range(k) if a not in (b, c)]
        partner_lists = []
        for a in others:
            line: list[SupportsIndex | slice] = list(pos)
            line[a] = slice(None)
            cand = np.flatnonzero(suppressed[tuple(line)])
            cand = cand[cand != pos[a]]
            order = _partner_order(suppressed, a)[pos[a], cand]
            partner_lists.append(cand[np.argsort(-order, kind="stable")][:per_axis])
        if any(len(p) == 0 for p in partner_lists):
            continue
        plane_sign = sigma[b][:, None] * sigma[c][None, :]
        for chosen in np.ndindex(*(len(p) for p in partner_lists)):
            partners = [int(partner_lists[i][chosen[i]]) for i in range(len(others))]
            corners = []
            for corner in np.ndindex(*(2,) * len(others)):
                spot: list[SupportsIndex | slice] = list(pos)
                weight = 1.0
                for i, a in enumerate(others):
                    if corner[i]:
                        spot[a] = partners[i]
                        weight *= -sigma[a][pos[a]] * sigma[a][partners[i]]
                spot[b] = slice(None)
                spot[c] = slice(None)
                corners.append((tuple(spot), weight))
            present = np.ones((shape[b], shape[c]), dtype=bool)
            cap = {1.0: np.full(present.shape, np.inf), -1.0: np.full(present.shape, np.inf)}
            for index, weight in corners:
                present &= suppressed[index]
                sign = weight * plane_sign
                cap[1.0] = np.minimum(cap[1.0], np.where(sign < 0, x[index], np.inf))
                cap[-1.0] = np.minimum(cap[-1.0], np.where(sign > 0, x[index], np.inf))
            for zs in (1.0, -1.0):
                cap[zs][~present] = 0.0
            j, kk = pos[b], pos[c]
            z0 = direction * plane_sign[j, kk]
            closing = cap[z0][j, kk]
            if closing <= best_d:
                continue
            # Nodes: ("b", j') and ("c", k'). b -> c arcs take z = -1, c -> b arcs take z = +1.
            start, goal = (("b", j), ("c", kk)) if z0 > 0 else (("c", kk), ("b", j))
            width = {start: np.inf}
            pred: dict = {}
            heap = [(-np.inf, start)]
            done = set()
            while heap:
                w, node = heapq.heappop(heap)
                w = -w
                if node in done:
                    continue
                done.add(node)
                if node == goal:
                    break
                side, i = node
                if side == "b":
                    nexts = [(("c", t), min(w, cap[-1.0][i, t]), (i, t, -1.0)) for t in range(shape[c])]
                else:
                    nexts = [(("b", t), min(w, cap[1.0][t, i]), (t, i, 1.0)) for t in range(shape[b])]
                for nxt, nw, edge in nexts:
                    if nw <= 0 or nxt in done:
                        continue
                    if node == start and nxt == goal:
                        continue  # the cell's own edge closes the cycle; the path may not take it
                    if nxt == start:
                        continue  # never return to the start node
                    if nw > width.get(nxt, 0.0):
                        width[nxt] = nw
                        pred[nxt] = (node, edge)
                        heapq.heappush(heap, (-nw, nxt))
            d = min(closing, width.get(goal, 0.0))
            if d <= best_d or goal not in pred:
                continue
            z = np.zeros((shape[b], shape[c]))
            z[j, kk] = z0
            node = goal
            while node != start:
                node, (ej, ek, ez) = pred[node]
                z[ej, ek] = ez
            y = np.zeros(shape)
            for index, weight in corners:
                y[index] += weight * plane_sign * z
            best_d, best_y = float(d), y
    return best_d, best_y


def _augmented_moves(
    values: np.ndarray,
    suppressed: np.ndarray,
    cells: np.ndarray,
    required: np.ndarray,
    rounds: int = 8,
    deadline: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sums of prism moves for the few cells one cycle cannot prove (a wide interval made of narrow cycles).

    As in augmenting-path max-flow: move the table along the widest prism, then search again *in the moved
    table* (it is feasible: same released numbers, every cell >= 0), and so on. The final table is one
    feasible table, so the total move is proven, never more than the LP allows.
    """
    n = len(cells)
    down, up = np.zeros(n), np.zeros(n)
    base = np.abs(values).astype(np.float64)
    for i, cell in enumerate(cells):
        pos = tuple(int(p) for p in np.unravel_index(int(cell), values.shape))
        for direction, total in ((-1.0, down), (1.0, up)):
            x = base.copy()
            for _ in range(rounds):
                if down[i] + up[i] + 1e-9 >= required[i]:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    return down, up
                d, y = _widest_prism_move(x, suppressed, pos, direction)
                if y is None or d <= 0:
                    break
                if not np.isfinite(d):  # no cell on the cycle decreases: unbounded this way
                    total[i] = np.inf
                    break
                x = np.maximum(x + d * y, 0.0)  # exact up to rounding: decreasing cells stop at zero
                total[i] = direction * (x[pos] - base[pos])
    return down, up


def _along(axis: int, values: np.ndarray, suppressed: np.ndarray, cells: np.ndarray):
    """The table with ``axis`` moved first, and the cells' flat indices in that layout."""
    moved_v = np.moveaxis(values, axis, 0)
    moved_s = np.moveaxis(suppressed, axis, 0)
    pos = list(np.unravel_index(cells, values.shape))
    pos.insert(0, pos.pop(axis))
    return moved_v, moved_s, np.ravel_multi_index(pos, moved_v.shape)


def certify_cells(
    values: np.ndarray, suppressed: np.ndarray, cells: np.ndarray, required: np.ndarray, seconds: float | None = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Proven (down, up) moves of non-negative cells, cheapest certificates first; no LP.

    1. Boxes: in 2-D and 3-D the widest boxes a plane at a time (``_slab_boxes``), with the slab axis
       taken along each axis in turn, first with one partner slab, then with four, and per-cell partners
       (``_vectorised_boxes``) if many cells are still short; in 1-D and 4-D and above, per-cell boxes;
    2. prism certificates with longer cycles (``_cycle_certificates``), few partners then more;
    3. summed prism moves (``_augmented_moves``) for at most ``_AUGMENT_CELLS`` cells left.
    Each stage works only on the cells still short and only adds feasible moves, so the result is a proven
    inner bound of every cell's interval: [v - down, v + up]. Stages 2 and 3 stop after ``seconds`` (a
    table of almost only small cells would otherwise keep them busy); cells not reached are not proven.
    """
    deadline = None if seconds is None else time.monotonic() + seconds
    n = len(cells)
    down, up = np.zeros(n), np.zeros(n)

    def merge(rest: np.ndarray, d: np.ndarray, u: np.ndarray) -> None:
        down[rest] = np.maximum(down[rest], d)
        up[rest] = np.maximum(up[rest], u)

    def short() -> np.ndarray:
        return np.flatnonzero(down + up + 1e-9 < required)

    if values.ndim in (2, 3):
        axes = range(values.ndim if values.ndim == 3 else 1)
        for per_slab, axis in [(1, a) for a in axes] + [(_MORE_SLABS, a) for a in axes]:
            rest = short()
            if len(rest) == 0 or (per_slab > 1 and len(rest) <= _PRISM_CELLS):
                break  # a few hundred cells left: the prisms below are cheaper than more slab pairs
            moved_v, moved_s, moved_cells = _along(axis, values, suppressed, cells[rest])
            merge(rest, *_slab_boxes(moved_v, moved_s, moved_cells, per_slab=per_slab))
        rest = short()
        if len(rest) > _AUGMENT_CELLS:  # many left (a table of mostly small cells): per-cell partners too
            merge(rest, *_vectorised_boxes(values, suppressed, cells[rest], per_axis=3))
    else:
        merge(np.arange(n), *_vectorised_boxes(values, suppressed, cells, per_axis=3))
    for per_axis in (2, 8):  # few partners for the many, more for the few left
        rest = short()
        if len(rest) == 0 or values.ndim < 2:
            break
        sizes = sorted(values.shape)
        step = max(1, _PLANE_WORK // (sizes[-1] * sizes[-2]))  # bounded memory on very large tables
        for lo in range(0, len(rest), step):
            part = rest[lo : lo + step]
            merge(part, *_cycle_certificates(values, suppressed, cells[part], per_axis, required[part], None, deadline))
    rest = short()
    if 0 < len(rest) <= _AUGMENT_CELLS and values.ndim >= 2:
        merge(rest, *_augmented_moves(values, suppressed, cells[rest], required[rest], deadline=deadline))
    return down, up


_MORE_SLABS = 4  # partner slabs per slab in the second round of plane boxes
_AUGMENT_CELLS = 64  # cells proven one by one by summed moves; more than this go to the LP instead
# Up to this many cells left after the one-partner plane boxes, prisms come next: on the benchmark's tables
# they prove the last ~50 cells in ~15 ms where four partner slabs per axis took ~80 ms and proved ~10.
_PRISM_CELLS = 256


_FEW_LP_CELLS, _FEW_LP_SECONDS = 4, 2.0
_BOUND_SWEEPS = 16  # passes of bound propagation; any pass leaves sound outer bounds, more only tighten
# Exposure is claimed from propagated bounds only when they are narrower than required by more than rounding
# could account for: this share of the table's largest |cell| times the longest line.
_BOUND_SLACK = 1e-9


def outer_bounds(
    values: np.ndarray, suppressed: np.ndarray, nonnegative: bool = True, sweeps: int = _BOUND_SWEEPS
) -> tuple[np.ndarray, np.ndarray]:
    """Outer bounds [lo, hi] of every cell an attacker can derive by bound propagation; no LP.

    Each line of the extended table says: its interior cells minus its total make zero. Released cells are
    fixed; suppressed ones start at [0, inf) (non-negative data) or (-inf, inf). One line's equation bounds
    each of its cells by the others' bounds (x_j = total - the others, so x_j >= total's lower bound minus
    the others' upper bounds, and so on); bounds tightened in one line feed the next. Every step uses one
    equation of the LP and bounds already proven, so the LP's [min, max] of every cell lies inside [lo, hi]
    (up to rounding, see ``_BOUND_SLACK``). Stopping after any sweep keeps that true: the bounds are only
    looser. A narrow outer interval therefore *proves* a cell exposed, as an inner certificate proves one
    protected; a cell between the two still needs the LP.
    """
    known = ~suppressed
    v = values.astype(np.float64)
    scale = max(float(np.abs(v).max(initial=0.0)), 1.0)
    lo = np.where(known, v, 0.0 if nonnegative else -np.inf)
    hi = np.where(known, v, np.inf)
    for _ in range(sweeps):
        changed = False
        for axis in range(values.ndim):
            sup = _lines(suppressed, axis)
            rows = np.flatnonzero(sup.any(axis=1))
            if len(rows) == 0:
                continue
            lines_lo, lines_hi = _lines(lo, axis)[rows], _lines(hi, axis)[rows]
            sign = np.ones(lines_lo.shape[1])
            sign[-1] = -1.0  # the line's total: interior cells minus the total make zero
            # Terms t_j = sign_j * x_j sum to zero; each t_j = -(the sum of the other terms).
            t_min = np.where(sign > 0, lines_lo, -lines_hi)
            t_max = np.where(sign > 0, lines_hi, -lines_lo)
            new_min = -_sum_of_others(t_max, np.inf)
            new_max = -_sum_of_others(t_min, -np.inf)
            new_lo = np.where(sign > 0, new_min, -new_max)
            new_hi = np.where(sign > 0, new_max, -new_min)
            sup_rows = sup[rows]
            tighter_lo = sup_rows & (new_lo > lines_lo)
            tighter_hi = sup_rows & (new_hi < lines_hi)
            if not (tighter_lo.any() or tighter_hi.any()):
                continue
            # Another sweep only for a real gain: bounds creeping by rounding-sized steps decide nothing.
            gain = max(
                (new_lo[tighter_lo] - lines_lo[tighter_lo]).max(initial=0.0),
                (lines_hi[tighter_hi] - new_hi[tighter_hi]).max(initial=0.0),
            )
            changed |= bool(gain > _BOUND_SLACK * scale)
            lines_lo = np.where(tighter_lo, new_lo, lines_lo)
            lines_hi = np.where(tighter_hi, new_hi, lines_hi)
            all_lo, all_hi = _lines(lo, axis).copy(), _lines(hi, axis).copy()
            all_lo[rows], all_hi[rows] = lines_lo, lines_hi
            lo = _from_lines(all_lo, values.shape, axis)
            hi = _from_lines(all_hi, values.shape, axis)
        if not changed:
            break
    return lo, hi


def _sum_of_others(terms: np.ndarray, infinite: float) -> np.ndarray:
    """Per row and column j, the sum of the row's other terms; ``infinite`` where another term is."""
    is_inf = terms == infinite
    finite = np.where(is_inf, 0.0, terms)
    others_inf = is_inf.sum(axis=1, keepdims=True) - is_inf
    return np.where(others_inf > 0, infinite, finite.sum(axis=1, keepdims=True) - finite)


def exposed_by_bounds(
    values: np.ndarray,
    suppressed: np.ndarray,
    cells: np.ndarray,
    required: np.ndarray,
    nonnegative: bool = True,
    seconds: float = 0.25,
) -> list[CellInterval]:
    """Primary cells among ``cells`` (flat) proven exposed without an LP, each with an outer interval.

    Two proofs, cheapest first: bound propagation (``outer_bounds``), then, for at most
    ``_DUAL_CELLS`` cells left and within ``seconds``, a combination of the lines (``_dual_interval``).
    Both give intervals that contain the LP's, so a cell whose interval is narrower than required (by more
    than rounding can explain) is exposed under the LP too. Cells neither proves are not listed: the LP
    decides them.
    """
    if len(cells) == 0:
        return []
    lo, hi = outer_bounds(values, suppressed, nonnegative)
    slack = _BOUND_SLACK * max(float(np.abs(values).max(initial=0.0)) * max(values.shape), 1.0)
    req = required.ravel()[cells]
    lower, upper = lo.ravel()[cells].copy(), hi.ravel()[cells].copy()
    left = np.flatnonzero(~(upper - lower + slack < req))
    if 0 < len(left) <= _DUAL_CELLS:
        deadline = time.monotonic() + seconds
        sup_idx = np.flatnonzero(suppressed.ravel())
        a_sup, rhs, rhs_scale = _suppressed_system(values, sup_idx)
        reach = np.maximum(np.abs(lo.ravel()[sup_idx]), np.abs(hi.ravel()[sup_idx]))  # |x_i| <= reach_i
        lines_of = a_sup.T.tocsr()
        for i in left:
            if time.monotonic() > deadline:
                break
            var = int(np.searchsorted(sup_idx, cells[i]))
            a, b = _dual_interval(lines_of, a_sup, rhs, rhs_scale, reach, var)
            lower[i], upper[i] = max(lower[i], a), min(upper[i], b)
    narrow = upper - lower + slack < req
    return [
        CellInterval(int(c), float(a), float(b), float(r), True, method="bounds")
        for c, a, b, r in zip(cells[narrow], lower[narrow], upper[narrow], req[narrow], strict=True)
    ]


_DUAL_CELLS = 16  # cells per audit round that get a combination of lines (a few ms each) before the LP
# Least-squares steps per cell: the benchmark's determined cell needs ~170; a search that has not converged by
# then proves nothing (the radius stays wide) and the LP decides the cell.
_DUAL_ITERATIONS = 400


def _dual_interval(
    lines_of: sparse.csr_matrix,
    lines: sparse.csr_matrix,
    rhs: np.ndarray,
    rhs_scale: np.ndarray,
    reach: np.ndarray,
    var: int,
) -> tuple[float, float]:
    """An outer interval of suppressed cell ``var`` from one weighted sum of the attacker's equations.

    For any weights w on the lines (``lines`` x = ``rhs``; ``lines_of`` is its transpose, one row per
    suppressed cell), x_var = w.rhs + r.x exactly, where r = e_var - lines_of w; with |x_i| <= reach_i,
    x_var lies within w.rhs +- sum |r_i| reach_i. Least squares (``_least_squares``) picks w making r as small
    as it can: r vanishes when the released cells determine x_var (the LP's interval is then one point), and
    the interval is as narrow as that point up to rounding. The residual is recomputed from w, and rounding in
    it and in w.rhs is bounded by standard floating-point error bounds and added to the radius, so the
    interval stays an outer bound. Returns (-inf, inf) when some term it needs is unbounded.
    """
    target = np.zeros(lines_of.shape[0])
    target[var] = 1.0
    w = _least_squares(lines_of, lines, target, _DUAL_ITERATIONS)
    residual = target - lines_of @ w
    eps = np.finfo(np.float64).eps
    gamma = 4.0 * eps * (lines_of.shape[0] + lines_of.shape[1] + 8)
    abs_w = np.abs(w)
    slack_r = np.abs(residual) + gamma * (abs(lines_of) @ abs_w)
    used = slack_r > 0
    if not np.all(np.isfinite(reach[used])):
        return -np.inf, np.inf
    radius = (1.0 + gamma) * (_dot(slack_r[used], reach[used]) + gamma * _dot(abs_w, np.abs(rhs) + rhs_scale))
    centre = _dot(w, rhs)
    return centre - radius, centre + radius


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # Not np.dot: OpenBLAS runs dot products of more than 10,000 numbers on several threads, which spin for
    # milliseconds per call on a busy machine (15x slower here); a plain sum has no threads.
    return float(np.add.reduce(a * b))


def _least_squares(m: sparse.csr_matrix, m_t: sparse.csr_matrix, target: np.ndarray, iterations: int) -> np.ndarray:
    """w minimising |target - m w| by conjugate gradients on the normal equations (CGLS), without BLAS."""
    w = np.zeros(m.shape[1])
    r = target.copy()
    s = m_t @ r
    p = s.copy()
    gamma = _dot(s, s)
    for _ in range(iterations):
        if gamma <= 1e-30:
            break  # the gradient vanished: w solves the least-squares problem
        q = m @ p
        qq = _dot(q, q)
        if qq == 0.0:
            break
        alpha = gamma / qq
        w += alpha * p
        r -= alpha * q
        s = m_t @ r
        gamma_next = _dot(s, s)
        p = s + (gamma_next / gamma) * p
        gamma = gamma_next
    return w


def audit_pattern(
    values: np.ndarray,
    suppressed: np.ndarray,
    primary: np.ndarray,
    required: np.ndarray,
    nonnegative: bool = True,
    lp_seconds: float = 0.25,
    lp_max_component: int = 150,
    proven: list[CellInterval] | None = None,
) -> AuditResult:
    """Fast proof for large tables: certificates first (``certify_cells``), exact LP only for cells they miss.

    Reports, for each primary cell, either its exact LP interval or the proven inner interval from its
    certificates (the true feasible interval contains it; ``method`` "box"). Secondary cells are not
    sensitive and are not bounded here. Before any LP, cells that bound propagation or a combination of lines
    proves exposed are reported with that outer interval (``method`` "bounds"; ``exposed_by_bounds``). LPs
    for the cells left stop after ``lp_seconds`` (2 s when at most 4 cells are left); cells left are
    reported "unproven" (the verdict is then "review").
    ``proven``: "box" intervals proven for a pattern this one contains (an earlier round of ``protect``).
    Suppressing more cells only adds unknowns, so every table consistent with the earlier release is
    consistent with this one and a move proven then is still feasible: those cells are not certified again.
    ``lp_max_component`` is kept for callers; unused.
    Tables with negative values get the per-cell boxes only (without x >= 0 a full box is unbounded).
    """
    flat_vals = values.ravel()
    required_flat = required.ravel()
    targets = np.flatnonzero((primary & suppressed).ravel())
    result = AuditResult(method="box-certificate+linprog-highs", scope="primary")
    if proven:
        still = suppressed.ravel()
        carried = [c for c in proven if c.method == "box" and c.protected and still[c.index]]
        result.intervals += carried
        targets = np.setdiff1d(targets, [c.index for c in carried])
    downs, ups = np.zeros(len(targets)), np.zeros(len(targets))
    if nonnegative and len(targets):
        downs, ups = certify_cells(values, suppressed, targets, required_flat[targets])
    elif len(targets):
        certs = box_certificates(values, suppressed, targets, nonnegative, deadline=time.monotonic() + lp_seconds)
        for i, cell in enumerate(targets.tolist()):
            downs[i], ups[i] = certs.get(cell, (0.0, 0.0))
    need = required_flat[targets]
    enough = downs + ups + 1e-9 >= need
    v = flat_vals[targets].astype(np.float64)
    result.intervals += [
        CellInterval(c, lo, hi, r, True, method="box")
        for c, lo, hi, r in zip(
            targets[enough].tolist(),
            (v - downs)[enough].tolist(),
            (v + ups)[enough].tolist(),
            need[enough].astype(np.float64).tolist(),
            strict=True,
        )
    ]
    missing = targets[~enough].tolist()
    if missing:
        # Cells propagation proves exposed need no LP: their outer interval is already too narrow, and
        # ``protect`` adds partners around them exactly as it would for the LP's interval.
        decided = exposed_by_bounds(values, suppressed, np.array(missing), required, nonnegative)
        result.intervals += decided
        settled = {c.index for c in decided}
        missing = [c for c in missing if c not in settled]
    if missing:
        # A handful of cells left: give them the time to be decided (proven, or found exposed so that
        # ``protect`` adds partners) rather than sending the table to review for want of a second.
        budget = max(lp_seconds, _FEW_LP_SECONDS) if 0 < lp_seconds and len(missing) <= _FEW_LP_CELLS else lp_seconds
        exact = interval_audit(
            values,
            suppressed,
            primary,
            required,
            nonnegative,
            cells=np.array(missing),
            deadline=time.monotonic() + budget,
        )
        result.intervals += exact.intervals
        result.lp_solved = exact.lp_solved
        result.unproven = exact.unproven
    result.intervals.sort(key=lambda c: c.index)
    return result


def protect(
    values: np.ndarray,
    primary: np.ndarray,
    required: np.ndarray,
    *,
    eligible: np.ndarray | None = None,
    nonnegative: bool = True,
    audit: bool | str = True,
    max_rounds: int = 20,
) -> SuppressionResult:
    """Secondary suppression plus audit, repeated until every primary cell is proven protected.

    ``audit``: True or "exact" bounds every suppressed cell by LP; "fast" uses ``audit_pattern`` (box
    certificates, LP only where they fail), for large tables; False runs the heuristic alone and the
    verdict then says the pattern is unproven.
    """
    suppressed = secondary_suppression(values, primary, required, eligible)
    if not audit:
        return SuppressionResult(primary, suppressed, None, 0)
    last: list[tuple[np.ndarray, AuditResult]] = []  # the previous fast audit, whose proofs carry over

    def run_audit(pattern: np.ndarray) -> AuditResult:
        if audit != "fast":
            return interval_audit(values, pattern, primary, required, nonnegative)
        # Rounds only ever add suppressed cells; check it rather than assume it before reusing proofs.
        carried = last[0][1].intervals if last and not (last[0][0] & ~pattern).any() else None
        report = audit_pattern(values, pattern, primary, required, nonnegative, proven=carried)
        last[:] = [(pattern.copy(), report)]
        return report

    report = run_audit(suppressed)
    rounds = 1
    if audit == "fast":
        max_rounds = min(max_rounds, 3)  # each round re-certifies the whole table
    while not report.protected and rounds < max_rounds:
        force = np.zeros(values.shape, dtype=bool)
        force.ravel()[[c.index for c in report.exposed]] = True
        grown = secondary_suppression(values, suppressed, required, eligible, force_cells=force)
        if int(grown.sum()) == int(suppressed.sum()):
            break  # nothing left to suppress near the exposed cells
        suppressed = grown
        report = run_audit(suppressed)
        rounds += 1
    if report.protected:
        return SuppressionResult(primary, suppressed, report, rounds)
    return _fall_back(values, primary, eligible, suppressed, report, rounds, run_audit)


_FALLBACK_STEPS = ("lines", "planes", "table")


def _widen(step: str, exposed: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Cells to suppress around the exposed ones: every line, or every plane (hyperplane), through
    each exposed cell, margins included; or the whole table. Only eligible cells."""
    if step == "table":
        return eligible.copy()
    grown = np.zeros(exposed.shape, dtype=bool)
    positions = np.argwhere(exposed)
    for axis in range(exposed.ndim):
        for pos in positions:
            index: list[slice | int] = [int(p) for p in pos]
            if step == "lines":
                index[axis] = slice(None)  # the line along ``axis``
            else:
                index = [slice(None)] * exposed.ndim
                index[axis] = int(pos[axis])  # the plane across ``axis``
            grown[tuple(index)] = True
    return grown & eligible


def _fall_back(
    values: np.ndarray,
    primary: np.ndarray,
    eligible: np.ndarray | None,
    suppressed: np.ndarray,
    report: AuditResult,
    rounds: int,
    run_audit: Callable[[np.ndarray], AuditResult],
) -> SuppressionResult:
    """Widen the pattern around the cells the audit still finds exposed until it proves them protected.

    Each step suppresses more around the exposed cells (their lines, then their planes) and is repeated
    while the audit still finds cells exposed and the pattern still grows; the last step suppresses
    every eligible cell. Suppressing every cell, margins included, leaves an attacker nothing but
    non-negativity, so whenever any pattern over the eligible cells protects the table this one does,
    and the audit of the final pattern is the proof either way.
    """
    eligible = np.ones(values.shape, dtype=bool) if eligible is None else eligible
    start = int(suppressed.sum())
    used = None
    for step in _FALLBACK_STEPS:
        while not report.protected:
            exposed = np.zeros(values.shape, dtype=bool)
            exposed.ravel()[[c.index for c in report.exposed]] = True
            grown = suppressed | _widen(step, exposed, eligible)
            if int(grown.sum()) == int(suppressed.sum()):
                break  # this step adds nothing more: take the next, wider one
            suppressed, used = grown, step
            report = run_audit(suppressed)
            rounds += 1
        if report.protected:
            break
    return SuppressionResult(primary, suppressed, report, rounds, used, int(suppressed.sum()) - start)
