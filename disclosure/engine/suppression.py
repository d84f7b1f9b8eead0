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

import time
from dataclasses import dataclass, field

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
    method: str = "lp"  # "lp": exact interval; "box": an inner bound proven by a feasible perturbation

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
    a = _constraint_matrix(values.shape)
    flat_vals = values.ravel().astype(np.float64)
    known = np.ones(values.size, dtype=bool)
    known[sup_idx] = False
    rhs = -(a[:, np.flatnonzero(known)] @ flat_vals[known])
    a_sup = a[:, sup_idx].tocsr()
    touched = np.flatnonzero(a_sup.getnnz(axis=1) > 0)
    a_sup = a_sup[touched]
    rhs = rhs[touched]
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
            line = list(pos)
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


def audit_pattern(
    values: np.ndarray,
    suppressed: np.ndarray,
    primary: np.ndarray,
    required: np.ndarray,
    nonnegative: bool = True,
    lp_seconds: float = 0.25,
    lp_max_component: int = 150,
) -> AuditResult:
    """Fast proof for large tables: box certificates first, exact LP only for primary cells they miss.

    Reports, for each primary cell, either its exact LP interval or the proven inner interval from its
    best boxes (the true feasible interval contains it). Secondary cells are not sensitive and are not
    bounded here. LPs for uncertified cells run only on components of at most ``lp_max_component`` cells and
    stop after ``lp_seconds``; cells left are reported "unproven" (the verdict is then "review").
    """
    flat_vals = values.ravel()
    required_flat = required.ravel()
    targets = np.flatnonzero((primary & suppressed).ravel())
    certs: dict[int, tuple[float, float]] = {}
    if nonnegative and len(targets):
        down, up = _vectorised_boxes(values, suppressed, targets, per_axis=5)
        enough = down + up + 1e-9 >= required_flat[targets]
        certs = {
            int(c): (float(d), float(u)) for c, d, u in zip(targets[enough], down[enough], up[enough], strict=True)
        }
    rest = np.array([c for c in targets if int(c) not in certs], dtype=np.int64)
    certs.update(box_certificates(values, suppressed, rest, nonnegative, deadline=time.monotonic() + lp_seconds))
    result = AuditResult(method="box-certificate+linprog-highs", scope="primary")
    missing = []
    for cell in targets:
        down, up = certs.get(int(cell), (0.0, 0.0))
        if down + up + 1e-9 >= required_flat[cell]:
            v = float(flat_vals[cell])
            result.intervals.append(
                CellInterval(int(cell), v - down, v + up, float(required_flat[cell]), True, method="box")
            )
        else:
            missing.append(int(cell))
    if missing:
        exact = interval_audit(
            values,
            suppressed,
            primary,
            required,
            nonnegative,
            cells=np.array(missing),
            deadline=time.monotonic() + lp_seconds,
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

    def run_audit(pattern: np.ndarray) -> AuditResult:
        if audit == "fast":
            return audit_pattern(values, pattern, primary, required, nonnegative)
        return interval_audit(values, pattern, primary, required, nonnegative)

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
    return SuppressionResult(primary, suppressed, report, rounds)
