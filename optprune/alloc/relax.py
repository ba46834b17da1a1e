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


def lagrangian_bound(p: AllocationProblem, deadline: float | None = None,
                     passes: int = 3, steps: int = 40) -> float | None:
    """A valid bound on the optimal objective (an upper bound for
    ``max_importance``, a lower bound for ``min_resource``), or None if none is
    available cheaply."""
    if p.objective.kind == "max_importance":
        return _max_bound(p, deadline, passes, steps)
    return _min_bound(p, deadline, steps)


def _max_bound(p: AllocationProblem, deadline: float | None, passes: int, steps: int) -> float:
    limits = [(r, hi) for r, _, hi in p.budget_limits() if math.isfinite(hi)]
    resources = [r for r, _ in limits]
    hi = np.array([h for _, h in limits], dtype=np.float64)
    parts = _Parts(p, resources)

    def evaluate(lam: np.ndarray) -> tuple[float, np.ndarray]:
        """UB(lambda) and the usage of its maximizer (a subgradient is hi - usage)."""
        red = parts.score - lam @ parts.cost
        take = red > 0
        val = float(lam @ hi + red[take].sum())
        use = parts.cost[:, take].sum(axis=1)
        for curve, unit, ks in zip(parts.curves, parts.unit, parts.counts):
            v = curve - (lam @ unit) * ks
            j = int(np.argmax(v))
            val += float(v[j])
            use = use + unit * ks[j]
        return val, use

    lam = np.zeros(len(resources))
    best, _ = evaluate(lam)
    for _ in range(passes):
        for r in range(len(resources)):
            top = _top_multiplier(parts, r)
            lo_, hi_ = 0.0, top
            for _ in range(steps):
                if deadline is not None and time.perf_counter() > deadline:
                    return best
                mid = (lo_ + hi_) / 2
                lam[r] = mid
                val, use = evaluate(lam)
                best = min(best, val)
                if use[r] > hi[r]:
                    lo_ = mid
                else:
                    hi_ = mid
            lam[r] = hi_
            val, _ = evaluate(lam)
            best = min(best, val)
    return best


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
    res = p.objective.resource
    floor = p.importance_floor_abs()
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
        val += float(red[take].sum())
        imp += float(parts.score[free][take].sum())
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
