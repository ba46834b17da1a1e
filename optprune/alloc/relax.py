"""A valid bound on the optimum in O(n) per evaluation, for when a time limit leaves
no room for the solver's own (formulations/allocation.md, "Time limits").

Lagrangian relaxation of the budgets. For ``max_importance``, with multipliers
lambda_r >= 0 on the upper budget limits U_r (structure parts, fixed costs removed),
and every other constraint dropped except each width-mode slot's allowed widths:

    UB(lambda) = sum_r lambda_r U_r + sum_{i in structure slots} max(0, s_i - lambda . c_i)
                 + sum_{S width-mode} max_{k in A_S} (V_S(k) - k lambda . c_S)

is at least the optimum for every lambda >= 0 (dropping constraints, lower budget
limits and the non-negative pair costs only enlarges the feasible set; the dualized
budget term is non-negative at every feasible point). The multipliers are tuned
by bisection on each subgradient coordinate in turn.

For ``min_resource`` of a resource r with importance floor f: for mu >= 0,

    LB(mu) = F_r + mu f + sum_{i in structure slots} min(0, c_{r,i} - mu s_i)
             + sum_{S width-mode} min_{k in A_S} (k c_{r,S} - mu V_S(k)),

and for total latency, per slot min_k (lat_S(k) - mu P_S(k)) with P_S(k) the best
importance k members of S can reach.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .formulate import width_exact_slots
from .problem import AllocationProblem


class _Parts:
    """The problem cut into structure-mode members and width-mode slots."""

    def __init__(self, p: AllocationProblem, resources: list[str]) -> None:
        exact = width_exact_slots(p)
        width = [s for s, ok in exact.items() if ok or s in p.slot_values]
        self.struct = np.ones(p.n, dtype=bool)
        self.curves, self.unit, self.counts, self.lat = [], [], [], []
        self.slots = width
        for s in width:
            idx = p.slots()[s]
            self.struct[idx] = False
            ks = p.allowed_counts(s)
            self.counts.append(ks.astype(np.float64))
            self.curves.append(p.slot_curve(s)[ks])
            self.unit.append(np.array([p.costs[r][idx[0]] for r in resources]))
            t = p.latency_tables.get(s)
            self.lat.append(t.table[ks] if t is not None else np.zeros(ks.size))
        self.score = p.score[self.struct]
        self.cost = np.stack([p.costs[r][self.struct] for r in resources]) if resources \
            else np.zeros((0, int(self.struct.sum())))
        # The same slots as padded arrays (a slot's missing options: value -inf, count 0),
        # so one multiplier's best widths are one argmax over all slots.
        S, K = len(width), max((c.size for c in self.counts), default=0)
        self.curve_pad = np.full((S, K), -np.inf)
        self.count_pad = np.zeros((S, K))
        for row, (c, ks) in enumerate(zip(self.curves, self.counts)):
            self.curve_pad[row, :c.size] = c
            self.count_pad[row, :ks.size] = ks
        self.unit_mat = np.array(self.unit, dtype=np.float64).reshape(S, len(resources))


def lagrangian_bound(p: AllocationProblem, deadline: float | None = None,
                     passes: int = 3, steps: int = 50) -> float | None:
    """A valid bound on the optimal objective (an upper bound for
    ``max_importance``, a lower bound for ``min_resource``), or None if none is
    available cheaply."""
    if p.objective.kind == "max_importance":
        return _max_bound(p, deadline, passes, steps)[0]
    return _min_bound(p, deadline, steps)


def trivial_bound(p: AllocationProblem) -> float:
    """A bound with every constraint dropped, O(n) without sorting: the positive
    scores plus each valued slot's best value (``max_importance``), or the fixed
    costs (``min_resource``: usage is never below them)."""
    if p.objective.kind == "max_importance":
        rest = p.score[~p._valued_mask()]
        return float(np.sum(rest, where=rest > 0)) + sum(
            float(np.max(sv.values)) for sv in p.slot_values.values())
    res, _ = p.objective.min_resource_terms()
    if res == "latency":
        return float(sum(np.min(t.table) for t in p.latency_tables.values()))
    return float(p.fixed_costs[res])


def quick_solution(p: AllocationProblem, deadline: float | None = None
                   ) -> tuple[float | None, np.ndarray | None]:
    """(bound, feasible mask or None) in a time linear in the problem's size: the
    Lagrangian bound, and for ``max_importance`` a mask built from its multipliers:
    with every slot in width mode, the width search (``widths``) started from the
    Lagrangian widths; else a greedy walk by score per multiplier-weighted cost
    (the baselines' walk, so budgets and the latency cap hold). A mask is returned
    only if it breaks no constraint."""
    if p.objective.kind != "max_importance":
        return _min_bound(p, deadline, 30), None
    bound, lam, widths = _max_bound(p, deadline, 3, 50)
    keep = _lagrangian_keep(p, lam, widths, deadline)
    if keep is not None and p.violations(keep):
        keep = None
    return bound, keep


def _lagrangian_keep(p: AllocationProblem, lam: np.ndarray, widths: dict,
                     deadline: float | None = None) -> np.ndarray | None:
    from .baselines import _walk, descending
    from .widths import WidthSpace

    exact = width_exact_slots(p)
    if all(exact.values()):
        ws = WidthSpace(p)
        mean = np.zeros(len(ws.members))
        size = np.zeros(len(ws.members))
        for s, k in widths.items():
            mean[ws.group_of[s]] += k
            size[ws.group_of[s]] += 1
        pos = ws.search(ws.round_down(mean / np.maximum(size, 1)), deadline=deadline)
        return None if pos is None else ws.keep(pos)
    if not _budgets_only(p):
        return None  # the walk knows budgets and the latency cap only
    limits = [r for r, _, hi in p.budget_limits() if math.isfinite(hi)]
    price = sum((lam[j] * p.costs[r] for j, r in enumerate(limits)), np.zeros(p.n))
    with np.errstate(divide="ignore", invalid="ignore"):
        dens = np.where(price > 0, p.score / np.where(price > 0, price, 1.0), np.inf)
    order = descending(dens)
    return _walk(p, order[p.score[order] > 0], stop_at_first_misfit=False)


def _budgets_only(p: AllocationProblem) -> bool:
    """Whether budgets (and the latency cap) are the only constraints: no slot
    values, groups, implications, equal counts, count bounds or multiples."""
    return not (p.slot_values or p.groups or p.implications or p.equal_counts or any(
        p.slot_count_range(s)[:3] != (0, p.slots()[s].size, 1) or
        not p.slot_count_range(s)[3] for s in p.slots()))


def prefix_greedy(p: AllocationProblem) -> np.ndarray | None:
    """A feasible mask in one sort, for when nothing better fits in the time left
    (``max_importance`` with budgets as the only constraints, no latency cap): the
    structures of positive score by decreasing score per unit of their summed
    relative cost sum_r c_{r,i} / U_r, kept up to the first that would break a
    max budget. None when the problem has other constraints or the mask breaks one
    (a min budget)."""
    from .baselines import descending

    if p.objective.kind != "max_importance" or p.latency_cap is not None \
            or p.pair_costs or not _budgets_only(p):
        return None
    limits = [(r, hi) for r, _, hi in p.budget_limits() if math.isfinite(hi)]
    pos = np.flatnonzero(p.score > 0)
    weight = np.zeros(pos.size)
    for r, hi in limits:
        weight += p.costs[r][pos] / max(hi, 1e-300)
    with np.errstate(divide="ignore"):
        dens = p.score[pos] / weight  # inf where a structure costs nothing
    order = pos[descending(dens)]
    fits = np.ones(order.size, dtype=bool)
    for r, hi in limits:
        fits &= np.cumsum(p.costs[r][order]) <= hi + 1e-9 * max(1.0, abs(hi))
    stop = order.size if fits.all() else int(np.argmin(fits))
    keep = np.zeros(p.n, dtype=bool)
    keep[order[:stop]] = True
    return None if p.violations(keep) else keep


def _max_bound(p: AllocationProblem, deadline: float | None, passes: int, steps: int
               ) -> tuple[float, np.ndarray, dict]:
    """min over lambda of UB(lambda) by coordinate descent: for one multiplier with
    the others fixed, the usage of the maximizer is a non-increasing step function
    of it, with breakpoints (s_i - other terms) / c_{r,i} for the structures (one
    sort) and each width slot's argmax; bisection on that usage finds the minimizer
    of the convex UB along the coordinate."""
    limits = [(r, hi) for r, _, hi in p.budget_limits() if math.isfinite(hi)]
    resources = [r for r, _ in limits]
    hi = np.array([h for _, h in limits], dtype=np.float64)
    parts = _Parts(p, resources)
    R = len(resources)

    def reduced(lam: np.ndarray, skip: int = -1) -> np.ndarray:
        # Elementwise, no matrix products: BLAS threads cost more than they save
        # on these shapes when other processes share the cores.
        red = parts.score.copy()
        for q in range(R):
            if q != skip and lam[q]:
                red -= lam[q] * parts.cost[q]
        return red

    rows = np.arange(len(parts.slots))

    def width_part(lam: np.ndarray) -> tuple[float, np.ndarray, list]:
        if not rows.size:
            return 0.0, np.zeros(R), []
        price = (parts.unit_mat * lam).sum(axis=1)  # lambda . c_S per slot, no BLAS
        v = parts.curve_pad - price[:, None] * parts.count_pad
        j = np.argmax(v, axis=1)
        ks = parts.count_pad[rows, j]
        return float(v[rows, j].sum()), (parts.unit_mat * ks[:, None]).sum(axis=0), list(ks)

    def evaluate(lam: np.ndarray) -> tuple[float, list]:
        red = reduced(lam)
        wv, _, ks = width_part(lam)
        return float(np.dot(lam, hi)) + float(np.sum(red, where=red > 0)) + wv, ks

    lam = np.zeros(R)
    best, ks_best = evaluate(lam)
    lam_best = lam.copy()
    for _ in range(passes):
        for r in range(R):
            if deadline is not None and time.perf_counter() > deadline:
                break
            a = reduced(lam, skip=r)
            c = parts.cost[r]
            pos = c > 0
            t = a[pos] / c[pos]  # structure i is kept while lambda_r < t_i
            order = np.argsort(t)
            ts, cum = t[order], np.concatenate([[0.0], np.cumsum(c[pos][order][::-1])])
            free = float(np.sum(c[~pos], where=a[~pos] > 0))  # zero: c_r = 0 there

            lo_, hi_ = 0.0, _top_multiplier(parts, r)
            for _ in range(steps):
                lam[r] = mid = (lo_ + hi_) / 2
                above = ts.size - int(np.searchsorted(ts, mid, side="right"))
                if cum[above] + free + width_part(lam)[1][r] > hi[r]:
                    lo_ = mid
                else:
                    hi_ = mid
            lam[r] = hi_
            val, ks = evaluate(lam)
            if val < best:
                best, ks_best, lam_best = val, ks, lam.copy()
    return best, lam_best, dict(zip(parts.slots, ks_best))


def _top_multiplier(parts: _Parts, r: int) -> float:
    """A multiplier on resource r above which nothing is worth keeping for it."""
    ratios = [0.0]
    c = parts.cost[r]
    pos = c > 0
    if pos.any():
        ratios.append(float(np.max(parts.score[pos] / c[pos])))
    for curve, unit, ks in zip(parts.curves, parts.unit, parts.counts):
        if unit[r] > 0 and ks.max() > 0:
            ratios.append(float(np.max(np.abs(curve))) / unit[r] * 2 + 1.0)
    return max(ratios) * 1.01 + 1e-12


def _min_bound(p: AllocationProblem, deadline: float | None, steps: int) -> float:
    res, _ = p.objective.min_resource_terms()
    floor = p.min_resource_floor()
    latency = res == "latency"
    parts = _Parts(p, [] if latency else [res])
    fixed = 0.0 if latency else p.fixed_costs[res]
    struct_lat = [] if not latency else [
        (p.latency_tables[s].table[p.allowed_counts(s)],
         np.concatenate([[0.0], np.cumsum(np.sort(p.score[idx])[::-1])])[p.allowed_counts(s)])
        for s, idx in p.slots().items()
        if s in p.latency_tables and parts.struct[idx[0]]]

    # Structure-mode members whose slot has no latency table cost no latency.
    free = np.ones(parts.score.size, dtype=bool)
    if latency:
        in_table = np.zeros(p.n, dtype=bool)
        for s in p.latency_tables:
            in_table[p.slots()[s]] = True
        free = ~in_table[parts.struct]
    cost0 = np.zeros(parts.score.size) if latency else parts.cost[0]

    def evaluate(mu: float) -> tuple[float, float]:
        """LB(mu) and the importance of its minimizer."""
        val, imp = fixed + mu * floor, 0.0
        red = cost0[free] - mu * parts.score[free]
        take = red < 0
        val += float(np.sum(red, where=take))
        imp += float(np.sum(parts.score[free], where=take))
        for curve, unit, ks, lat in zip(parts.curves, parts.unit, parts.counts, parts.lat):
            cost = lat if latency else unit[0] * ks
            v = cost - mu * curve
            j = int(np.argmin(v))
            val += float(v[j])
            imp += float(curve[j])
        for lat, best_imp in struct_lat:
            v = lat - mu * best_imp
            j = int(np.argmin(v))
            val += float(v[j])
            imp += float(best_imp[j])
        return val, imp

    best, _ = evaluate(0.0)
    lo_, hi_ = 0.0, 1.0
    while evaluate(hi_)[1] < floor and hi_ < 1e30:
        hi_ *= 4
    for _ in range(steps):
        if deadline is not None and time.perf_counter() > deadline:
            break
        mid = (lo_ + hi_) / 2
        val, imp = evaluate(mid)
        best = max(best, val)
        if imp < floor:
            lo_ = mid
        else:
            hi_ = mid
    return best
