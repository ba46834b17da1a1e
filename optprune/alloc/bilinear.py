"""Exact allocation with pair costs (k_a * k_b of two slots' kept counts) at real size.

The product of two slots with options A and B (allowed counts) is exactly a column P
with ``scale * P = k_a * k_b``. Three pieces (formulations/allocation.md, "Pair costs
at scale"):

1. **Hull cuts.** For one pair, the convex hull of {(e_k, e_l, k l)} over one-hot
   count vectors is described by the transportation problem: the least value of
   sum_{kl} k l w_{kl} over couplings w of the two distributions y_a, y_b. k l is
   Monge once B is sorted descending, so the north-west corner rule gives an optimal
   coupling and, along its staircase, dual potentials alpha, beta with
   alpha_k + beta_l <= k l everywhere: ``scale P >= alpha . y_a + beta . y_b`` is valid
   for every integral point and tight at the current one (sorted ascending, the same
   rule gives the upper cut). ``hull_cut_loop`` adds them to the model's LP
   relaxation until the bound stalls: the bound of the per-pair convex hulls, with
   O(|A| + |B|) work per cut instead of |A| |B| variables per pair.
2. **A primal point.** Rounding the LP's widths down and a greedy repair/improve
   over widths (``optprune.alloc.widths``), and the feasible baselines.
3. **Outer approximation.** When the gap is still open: the MIP over the selection
   binaries and P bounded only by the cuts is a relaxation; at its answer, every
   pair whose P is not k_a k_b gets the cut tight at that integral point, and the
   MIP is solved again. A MIP answer with every product exact is optimal for the
   problem. Each iteration removes an integral point, so the loop ends.

The bound is always valid (an LP or MIP bound of a relaxation); the objective is
always that of a mask checked against the problem.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..solve.result import SolutionStatus, SolveResult, Termination, relative_gap
from .formulate import Formulation, PairTerm
from .problem import AllocationProblem


def transport_cut(a: np.ndarray, ya: np.ndarray, b: np.ndarray, yb: np.ndarray,
                  lower: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """The least (``lower``) or largest value of sum_{kl} a_k b_l w_{kl} over
    couplings w of the distributions ``ya`` on values ``a`` and ``yb`` on ``b``
    (both ascending), and potentials (alpha, beta) with alpha_k + beta_l <= a_k b_l
    for every k, l (>= when not ``lower``), equal on the coupling's support.

    North-west corner rule on ``b`` reversed (lower) or as is (upper): a_k b_l is
    Monge in that order, so the rule is optimal and its staircase potentials are
    dual feasible."""
    order = np.arange(b.size)[::-1] if lower else np.arange(b.size)
    bs, ys = b[order], np.clip(yb, 0.0, None)[order]
    ya = np.clip(ya, 0.0, None)
    na, nb = a.size, b.size
    alpha = np.zeros(na)
    beta = np.zeros(nb)
    beta[0] = a[0] * bs[0]
    i = j = 0
    ra, rb = float(ya[0]), float(ys[0])
    value = 0.0
    while True:
        m = min(ra, rb)
        value += m * a[i] * bs[j]
        ra -= m
        rb -= m
        if i == na - 1 and j == nb - 1:
            break
        if j == nb - 1 or (i < na - 1 and ra <= rb):
            i += 1
            ra += float(ya[i])
            alpha[i] = a[i] * bs[j] - beta[j]
        else:
            j += 1
            rb += float(ys[j])
            beta[j] = a[i] * bs[j] - alpha[i]
    out = np.empty(nb)
    out[order] = beta
    return value, alpha, out


@dataclass
class Cut:
    cols: np.ndarray
    vals: np.ndarray
    lower: float
    upper: float


def _cut(pt: PairTerm, alpha: np.ndarray, beta: np.ndarray, lower: bool) -> Cut:
    """P - (alpha . y_a + beta . y_b) / scale >= 0 (<= 0 for an upper cut)."""
    cols = np.concatenate([[pt.col], pt.cols_a, pt.cols_b]).astype(np.int64)
    vals = np.concatenate([[1.0], -alpha / pt.scale, -beta / pt.scale])
    return Cut(cols, vals, 0.0, np.inf) if lower else Cut(cols, vals, -np.inf, 0.0)


def separate(form: Formulation, x: np.ndarray, tol: float = 1e-7) -> list[Cut]:
    """Hull cuts violated by ``x`` (at most one per pair and side)."""
    out = []
    for pt in form.pairs:
        ya, yb = x[pt.cols_a], x[pt.cols_b]
        prod = x[pt.col] * pt.scale
        for lower in (True, False):
            value, alpha, beta = transport_cut(pt.opts_a, ya, pt.opts_b, yb, lower)
            slack = tol * max(1.0, abs(value))
            if (prod < value - slack) if lower else (prod > value + slack):
                out.append(_cut(pt, alpha, beta, lower))
    return out


def products_exact(form: Formulation, x: np.ndarray, tol: float = 1e-9) -> bool:
    """Whether every product column of ``x`` equals k_a k_b of its decoded counts."""
    for pt in form.pairs:
        ka = float(pt.opts_a[int(np.argmax(x[pt.cols_a]))])
        kb = float(pt.opts_b[int(np.argmax(x[pt.cols_b]))])
        if abs(x[pt.col] * pt.scale - ka * kb) > tol * max(1.0, ka * kb):
            return False
    return True


@dataclass
class HullLoop:
    bound: float | None  # LP bound with the cuts (model units), None if not solved
    x: np.ndarray | None  # the last LP solution
    rounds: int
    cuts: int
    time_s: float
    infeasible: bool = False


def hull_cut_loop(form: Formulation, deadline: float | None, max_rounds: int = 500,
                  stall: float = 1e-7,
                  on_round: Callable[[np.ndarray, float], bool] | None = None) -> HullLoop:
    """Add hull cuts to ``form.model`` until the LP bound improves by less than
    ``stall`` (relative) over three rounds, no cut is violated, ``on_round(x,
    bound)`` returns True (the caller's gap is closed), or the deadline.
    Cuts slack at the current LP optimum are dropped as they accumulate, so the
    LP stays small; those kept are added to the model."""
    import highspy

    from ..solve.backends.highs import new_highs, pass_model

    t0 = time.perf_counter()
    m = form.model
    if not form.pairs:
        return HullLoop(None, None, 0, 0, 0.0)
    lp = new_highs()
    pass_model(lp, m)
    lp.changeColsIntegrality(m.num_cols, np.arange(m.num_cols, dtype=np.int32),
                             np.zeros(m.num_cols, dtype=np.uint8))
    if deadline is not None:
        lp.setOptionValue("time_limit", max(deadline - time.perf_counter(), 1e-3))
    base = m.num_rows
    pool: list[Cut] = []
    history: list[float] = []
    x, bound, rounds = None, None, 0
    sign = 1.0 if m.sense == "max" else -1.0
    for rounds in range(1, max_rounds + 1):
        lp.run()
        status = lp.getModelStatus()
        if status == highspy.HighsModelStatus.kInfeasible:
            return HullLoop(None, None, rounds, len(pool), time.perf_counter() - t0, True)
        if status != highspy.HighsModelStatus.kOptimal:
            break  # time limit or trouble: keep the last proven bound
        x = np.asarray(lp.getSolution().col_value, dtype=np.float64)
        bound = float(lp.getInfo().objective_function_value)
        history.append(bound)
        if on_round is not None and on_round(x, bound):
            break
        if len(history) > 3 and sign * (history[-4] - history[-1]) < stall * max(1.0, abs(bound)):
            break
        if deadline is not None and time.perf_counter() >= deadline:
            break
        new = separate(form, x)
        if not new:
            break
        if len(pool) > 4 * len(form.pairs):  # drop the cuts slack at this optimum
            act = np.asarray(lp.getSolution().row_value)[base:]
            slack = [t for t, c in enumerate(pool)
                     if act[t] > c.lower + 1e-9 and act[t] < c.upper - 1e-9]
            if slack:
                lp.deleteRows(len(slack), np.asarray(slack, dtype=np.int32) + base)
                keep = np.ones(len(pool), bool)
                keep[slack] = False
                pool = [c for c, k in zip(pool, keep) if k]
        for c in new:
            lp.addRow(c.lower, c.upper if math.isfinite(c.upper) else highspy.kHighsInf,
                      c.cols.size, c.cols.astype(np.int32), c.vals)
        pool += new
    for c in pool:
        m.add_row(c.cols, c.vals, c.lower, c.upper, name=f"hull{m.num_rows}")
    return HullLoop(bound, x, rounds, len(pool), time.perf_counter() - t0)


def lp_widths(form: Formulation, x: np.ndarray) -> dict:
    """Mean width of each width-mode slot at an LP solution."""
    return {s: float(sv.options @ x[sv.cols]) for s, sv in form.slots.items()
            if sv.mode == "width"}


def heuristic_keep(problem: AllocationProblem, form: Formulation, x: np.ndarray
                   ) -> np.ndarray | None:
    """A feasible mask near the LP solution ``x`` (every slot in width mode and a
    ``max_importance`` objective; else None)."""
    from .widths import WidthSpace

    if problem.objective.kind != "max_importance" or any(
            sv.mode != "width" for sv in form.slots.values()):
        return None
    ws = WidthSpace(problem)
    means = lp_widths(form, x)
    mean = np.zeros(len(ws.members))
    size = np.zeros(len(ws.members))
    for s, v in means.items():
        mean[ws.group_of[s]] += v
        size[ws.group_of[s]] += 1
    pos = ws.search(ws.round_down(mean / np.maximum(size, 1)))
    return None if pos is None else ws.keep(pos)


def solve_bilinear(problem: AllocationProblem, form: Formulation,
                   solve_mip: Callable[[float | None, np.ndarray | None], SolveResult],
                   deadline: float | None, rel_gap: float, candidates: list[np.ndarray],
                   hull: bool = True) -> SolveResult:
    """The exact answer of a problem with pair products (``form`` built with
    ``exact_pairs=False``), in model units: hull cuts, a primal point, and outer
    approximation while the gap is open. ``solve_mip(time_limit_s, warm_start)``
    solves ``form.model`` with the chosen backend."""
    t0 = time.perf_counter()
    m = form.model
    sense = m.sense
    inc = _Incumbent(problem, form)
    for keep in candidates:
        inc.offer(keep)

    def on_round(x: np.ndarray, lp_bound: float) -> bool:
        inc.offer(heuristic_keep(problem, form, x))
        return inc.value is not None and relative_gap(inc.value, lp_bound) <= rel_gap

    loop = (hull_cut_loop(form, deadline, on_round=on_round) if hull
            else HullLoop(None, None, 0, 0, 0.0))
    bound = loop.bound
    details: dict[str, Any] = {
        "method": "pair hull cuts + outer approximation", "lp_rounds": loop.rounds,
        "hull_cuts": loop.cuts, "hull_time_s": loop.time_s, "mip_solves": 0, "oa_cuts": 0}
    nodes, last, backend = 0, None, "highs"
    if loop.infeasible:
        return _result(Termination.INFEASIBLE, None, None, None, rel_gap, t0, nodes, backend,
                       "", details, sense)

    def closed() -> bool:
        return inc.value is not None and bound is not None and \
            relative_gap(inc.value, bound) <= rel_gap

    while not closed():
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and left <= 0:
            break
        res = solve_mip(left, inc.x)
        last, backend = res, res.backend
        details["mip_solves"] += 1
        nodes += res.nodes or 0
        if res.termination in (Termination.INFEASIBLE, Termination.INFEASIBLE_OR_UNBOUNDED):
            if inc.value is None:
                return _result(res.termination, None, None, None, rel_gap, t0, nodes, backend,
                               res.backend_version, details, sense)
            bound = inc.value  # every mask not yet cut off is infeasible
            break
        bound = _tighter(bound, res.bound, sense)
        if res.x is None:
            break
        inc.offer(form.decode(res.x))
        if products_exact(form, res.x):
            if res.is_optimal and inc.value is not None:
                bound = res.bound if res.bound is not None else inc.value
                break
        else:
            details["oa_cuts"] += _cut_off(problem, form, res.x, inc)
        if res.termination is Termination.TIME_LIMIT:
            break
    if inc.value is not None and bound is not None and inc.better(inc.value, bound):
        bound = inc.value  # an exact mask better than a bound: the bound was reached
    term = _termination(closed(), inc.value is not None, deadline, last)
    return _result(term, inc.x, inc.value, bound, rel_gap, t0, nodes, backend,
                   last.backend_version if last is not None else "", details, sense)


class _Incumbent:
    """The best exact mask offered so far, as a point of ``form.model`` and its value."""

    def __init__(self, problem: AllocationProblem, form: Formulation) -> None:
        self.problem, self.form = problem, form
        self.x: np.ndarray | None = None
        self.value: float | None = None

    def better(self, u: float, v: float) -> bool:
        return u > v if self.form.model.sense == "max" else u < v

    def offer(self, keep: np.ndarray | None) -> None:
        if keep is None:
            return
        m = self.form.model
        x = self.form.encode(keep, self.problem)
        if x is not None and (self.value is None or self.better(m.objective_value(x),
                                                                self.value)):
            self.x, self.value = x, m.objective_value(x)


def _cut_off(problem: AllocationProblem, form: Formulation, x: np.ndarray,
             inc: _Incumbent) -> int:
    """Outer approximation at a MIP answer ``x`` whose products are not exact: add the
    cuts it violates to the model (and offer its repaired widths); returns their count."""
    m = form.model
    new = separate(form, x, tol=1e-9)
    for c in new:
        m.add_row(c.cols, c.vals, c.lower, c.upper, name=f"oa{m.num_rows}")
    if problem.objective.kind == "max_importance":
        inc.offer(_repair(problem, form, x))
    return len(new)


def _tighter(bound: float | None, new: float | None, sense: str) -> float | None:
    """The tighter of two bounds on the optimum (a missing or infinite one says nothing)."""
    if new is None or not math.isfinite(new):
        return bound
    if bound is None:
        return new
    return min(bound, new) if sense == "max" else max(bound, new)


def _termination(closed: bool, has_mask: bool, deadline: float | None,
                 last: SolveResult | None) -> Termination:
    """Optimal only with a mask and the gap closed; else why the search stopped."""
    if closed:
        return Termination.OPTIMAL if has_mask else Termination.OTHER
    if deadline is not None and time.perf_counter() >= deadline:
        return Termination.TIME_LIMIT
    return last.termination if last is not None else Termination.OTHER


def _repair(problem: AllocationProblem, form: Formulation, x: np.ndarray) -> np.ndarray | None:
    """The widths of a relaxation's answer, repaired to true feasibility."""
    return heuristic_keep(problem, form, x)


def _result(term: Termination, x: np.ndarray | None, objective: float | None,
            bound: float | None, rel_gap: float, t0: float, nodes: int, backend: str,
            version: str, details: dict, sense: str) -> SolveResult:
    has = x is not None
    status = (SolutionStatus.OPTIMAL if has and term is Termination.OPTIMAL
              else SolutionStatus.FEASIBLE if has else SolutionStatus.NONE)
    return SolveResult(termination=term, solution_status=status,
                       objective=objective if has else None, bound=bound,
                       gap=relative_gap(objective if has else None, bound), build_time_s=0.0,
                       solve_time_s=time.perf_counter() - t0, nodes=nodes, backend=backend,
                       backend_version=version, x=x, message=term.value, details=details)


__all__ = ["transport_cut", "separate", "products_exact", "hull_cut_loop", "solve_bilinear",
           "heuristic_keep"]
