"""Choose N configurations, accurate and diverse, under a compute budget: exactly.

Given predicted accuracies p_i of C configurations for one question, a symmetric
dissimilarity D_ij (zero diagonal), integer costs c_i and a budget B:

    maximize    sum_i p_i x_i + w * sum_{i<j} D_ij x_i x_j,      w = lambda / (N - 1)
    subject to  sum_i x_i = N
                sum_i c_i x_i <= B
                x_i in {0, 1}

(w = 0 when N = 1). Dividing lambda by N - 1 makes the diversity term lambda times
N/2 times the mean pairwise dissimilarity of the chosen set, so lambda weighs one
configuration's accuracy against its average dissimilarity to the others, whatever N.

MILP (``build_milp``, solved by optprune.solve, backend 'highs' by default): one
column y_ij in [0, 1] per pair with D_ij != 0 and

    y_ij <= x_i,  y_ij <= x_j                       (pairs with D_ij > 0)
    y_ij >= x_i + x_j - 1                           (pairs with D_ij < 0)

For D_ij > 0 the objective pushes y_ij up, so at an optimum y_ij = min(x_i, x_j)
= x_i x_j and the lower row is not needed; for D_ij < 0 it pushes y_ij down to
max(0, x_i + x_j - 1) = x_i x_j and the upper rows are not needed. The linearization
is therefore exact: every optimum of the MILP is an optimum of the quadratic problem
with the same value. y need not be declared integer (given binary x, the rows force
y onto x_i x_j at any optimum).

CP-SAT (``solve_cpsat``): the same model with y_ij Boolean, objective coefficients
multiplied by ``scale`` (default 10^4) and rounded to integers; costs and budget are
integers already (multiply-accumulates). CP-SAT's optimum is exact for the scaled
problem; the returned set's true objective is within ``2 * rounding_bound`` of the
true optimum, where rounding_bound = (sum of the N largest |p-rounding errors| + sum
of the N(N-1)/2 largest |pair-rounding errors|) / scale; both are reported.

``brute_force`` enumerates all C-choose-N sets (tests check both backends against it).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InfeasibleProblemError, ValidationError, check


@dataclass(frozen=True)
class SubsetProblem:
    """Data of one selection; ``costs`` default to 1 and ``budget`` to no limit."""

    scores: np.ndarray
    dissimilarity: np.ndarray
    n: int
    lam: float = 0.5
    costs: np.ndarray | None = None
    budget: float | None = None
    ids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        p = np.asarray(self.scores, dtype=np.float64).ravel()
        c = p.size
        check(c >= 1, "The 'scores' of a SubsetProblem", "at least one configuration's score",
              c)
        check(bool(np.all(np.isfinite(p))), "The 'scores' of a SubsetProblem", "finite", "NaN/inf")
        d = np.asarray(self.dissimilarity, dtype=np.float64)
        check(d.shape == (c, c), "The 'dissimilarity' matrix", f"of shape ({c}, {c})", d.shape,
              "Give one row and column per configuration.")
        check(bool(np.all(np.isfinite(d))) and np.allclose(d, d.T, atol=1e-12),
              "The 'dissimilarity' matrix", "finite and symmetric", "a non-symmetric matrix")
        d = d.copy()
        np.fill_diagonal(d, 0.0)
        check(isinstance(self.n, (int, np.integer)) and 1 <= self.n <= c,
              "N (the number of configurations to choose)",
              f"an integer in [1, {c}] (there are {c} configurations)", self.n,
              "Lower N or offer more configurations.")
        check(math.isfinite(self.lam), "The 'lam' (diversity weight)", "finite", self.lam)
        costs = np.ones(c) if self.costs is None else np.asarray(self.costs, dtype=np.float64)
        check(costs.shape == (c,) and bool(np.all(costs >= 0)) and bool(np.all(np.isfinite(costs))),
              "The 'costs'", f"{c} finite non-negative numbers", costs.shape)
        if self.ids is not None:
            check(len(self.ids) == c, "The 'ids'", f"{c} names", len(self.ids))
        object.__setattr__(self, "scores", p)
        object.__setattr__(self, "dissimilarity", d)
        object.__setattr__(self, "costs", costs)
        object.__setattr__(self, "n", int(self.n))
        if self.budget is not None:
            cheapest = float(np.sort(costs)[: self.n].sum())
            if cheapest > float(self.budget) * (1 + 1e-12):
                raise InfeasibleProblemError(
                    f"The compute budget {self.budget:g} is below the cost of the {self.n} "
                    f"cheapest configurations ({cheapest:g}): 'choose exactly N' and 'cost <= "
                    f"budget' conflict. Raise the budget or lower N.")

    @property
    def size(self) -> int:
        return int(self.scores.size)

    @property
    def cost_vector(self) -> np.ndarray:
        """The costs as an array (1 for every configuration unless given)."""
        assert self.costs is not None  # set by __post_init__
        return self.costs

    @property
    def pair_weight(self) -> float:
        return self.lam / (self.n - 1) if self.n > 1 else 0.0

    def objective(self, selected: Sequence[int]) -> float:
        s = np.asarray(sorted(selected), dtype=np.int64)
        div = float(self.dissimilarity[np.ix_(s, s)].sum()) / 2.0
        return float(self.scores[s].sum()) + self.pair_weight * div

    def feasible(self, selected: Sequence[int]) -> bool:
        s = list(selected)
        if len(set(s)) != self.n:
            return False
        return self.budget is None or float(self.cost_vector[s].sum()) <= float(self.budget) + 1e-9

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Pairs i < j with a non-zero pair coefficient."""
        iu, ju = np.triu_indices(self.size, k=1)
        if self.pair_weight == 0.0:
            return iu[:0], ju[:0]
        keep = self.dissimilarity[iu, ju] != 0
        return iu[keep], ju[keep]


@dataclass(frozen=True)
class SubsetSolution:
    selected: tuple[int, ...]
    ids: tuple[str, ...] | None
    objective: float
    accuracy_term: float
    diversity_term: float
    bound: float | None
    gap: float
    optimal: bool
    backend: str
    solve_time_s: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gap"] = None if not math.isfinite(self.gap) else self.gap
        return d


def _solution(problem: SubsetProblem, selected: Sequence[int], bound: float | None, gap: float,
              optimal: bool, backend: str, t: float, details: dict[str, Any]) -> SubsetSolution:
    sel = tuple(sorted(int(i) for i in selected))
    acc = float(problem.scores[list(sel)].sum())
    obj = problem.objective(sel)
    return SubsetSolution(
        selected=sel,
        ids=tuple(problem.ids[i] for i in sel) if problem.ids else None,
        objective=obj, accuracy_term=acc, diversity_term=obj - acc,
        bound=bound, gap=gap, optimal=optimal, backend=backend, solve_time_s=t,
        details=details)


def _pair_rows(problem: SubsetProblem, strengthen: bool):
    """Pairs that get a y column, their objective weights, and whether all pairs are in."""
    if strengthen and problem.n > 1:
        iu, ju = np.triu_indices(problem.size, k=1)
    else:
        iu, ju = problem.pairs()
    w = problem.pair_weight * problem.dissimilarity[iu, ju]
    return iu, ju, w


def build_milp(problem: SubsetProblem, strengthen: bool = True):
    """The MILP above as an optprune LinearModel (columns x_0..x_{C-1}, then y_ij).

    ``strengthen`` adds the reformulation-linearization (RLT) rows, products of the
    constraints with x_i (one y_ij column for every pair then):

        sum_{j != i} y_ij = (N - 1) x_i                       (x_i * choose-N row)
        sum_{j != i} c_j y_ij <= (B - c_i) x_i                (x_i * budget row)

    Both hold at every integer point (y_ij = x_i x_j), so the optimum is unchanged,
    but the LP relaxation tightens from "spread x = N / C over all" (bound ~ every
    pair counted) to one close to the integer optimum: with the weak rows alone HiGHS
    needs minutes at C = 32, N = 4; with them a fraction of a second
    (benchmarks/bench_sprint.py).
    """
    from ..solve import ModelBuilder

    c = problem.size
    iu, ju, w = _pair_rows(problem, strengthen)
    b = ModelBuilder(name="sprint_subset", sense="max")
    names = list(problem.ids) if problem.ids else [f"c{i}" for i in range(c)]
    x = b.add_columns(c, 0.0, 1.0, problem.scores, integer=True, names=[f"x[{n}]" for n in names])
    y = b.add_columns(iu.size, 0.0, 1.0, w, integer=False,
                      names=[f"y[{names[i]},{names[j]}]" for i, j in zip(iu, ju)])
    b.add_rows(np.zeros(c), x, np.ones(c), problem.n, problem.n, count=1, names=["choose_n"])
    if problem.budget is not None:
        b.add_rows(np.zeros(c), x, problem.cost_vector, -np.inf, float(problem.budget), count=1,
                   names=["budget"])
    pos = np.flatnonzero(w >= 0) if strengthen else np.flatnonzero(w > 0)
    if pos.size:  # y_ij - x_i <= 0 and y_ij - x_j <= 0
        r = np.arange(2 * pos.size)
        rows = np.concatenate([r, r])
        cols = np.concatenate([y[pos], y[pos], x[iu[pos]], x[ju[pos]]])
        vals = np.concatenate([np.ones(2 * pos.size), -np.ones(2 * pos.size)])
        b.add_rows(rows, cols, vals, -np.inf, 0.0, count=2 * pos.size)
    neg = np.flatnonzero(w < 0)
    if neg.size:  # y_ij - x_i - x_j >= -1
        r = np.arange(neg.size)
        b.add_rows(np.concatenate([r, r, r]), np.concatenate([y[neg], x[iu[neg]], x[ju[neg]]]),
                   np.concatenate([np.ones(neg.size), -np.ones(2 * neg.size)]), -1.0, np.inf,
                   count=neg.size)
    if strengthen and iu.size:
        # row i: sum_{j != i} y_ij - (N - 1) x_i = 0 ; each y_ij sits in rows i and j
        rows = np.concatenate([iu, ju, np.arange(c)])
        cols = np.concatenate([y, y, x])
        vals = np.concatenate([np.ones(2 * iu.size), -(problem.n - 1) * np.ones(c)])
        b.add_rows(rows, cols, vals, 0.0, 0.0, count=c)
        if problem.budget is not None:
            cst = problem.cost_vector
            vals = np.concatenate([cst[ju], cst[iu], -(float(problem.budget) - cst)])
            b.add_rows(rows, cols, vals, -np.inf, 0.0, count=c)
    b.metadata = {"formulation": "formulations/sprint.md", "n": problem.n, "lam": problem.lam,
                  "strengthen": strengthen}
    return b.build()


def solve_milp(problem: SubsetProblem, backend: str = "highs", time_limit_s: float | None = None,
               rel_gap: float = 1e-9, strengthen: bool = True,
               threads: int | None = None) -> SubsetSolution:
    """Solve the MILP with an optprune.solve backend (highs, scip, pyomo, cpsat);
    ``threads`` None leaves the solver's default (HiGHS keeps one pool per process)."""
    from ..errors import SolverError
    from ..solve import solve

    t0 = time.perf_counter()
    model = build_milp(problem, strengthen)
    res = solve(model, backend, time_limit_s=time_limit_s, rel_gap=rel_gap, threads=threads)
    if not res.has_solution:
        raise SolverError(f"The {backend} backend returned no solution for the subset problem "
                          f"(termination {res.termination.value}): {res.message}")
    assert res.x is not None  # has_solution
    sel = np.flatnonzero(res.x[: problem.size] > 0.5).tolist()
    return _solution(problem, sel, res.bound, res.gap, res.is_optimal, backend,
                     time.perf_counter() - t0,
                     {"milp": model.stats(), "strengthen": strengthen,
                      "termination": res.termination.value})


def solve_cpsat(problem: SubsetProblem, scale: float = 1e4, time_limit_s: float | None = None,
                workers: int = 1, strengthen: bool = True) -> SubsetSolution:
    """Solve with OR-Tools CP-SAT on the integer-scaled objective (see module docstring).

    ``strengthen`` adds the same RLT rows as the MILP (sum_{j != i} y_ij = (N - 1) x_i
    and its budget analogue) as linear constraints, which CP-SAT's LP relaxation and
    propagation use.
    """
    from ortools.sat.python import cp_model

    from ..errors import SolverError
    from ..solve.backends.cpsat import integer_scale

    check(scale > 0 and math.isfinite(scale), "The 'scale' of solve_cpsat", "a positive number",
          scale)
    t0 = time.perf_counter()
    c = problem.size
    iu, ju, w = _pair_rows(problem, strengthen)
    ps = np.round(problem.scores * scale)
    ws = np.round(w * scale)
    err_p = np.sort(np.abs(ps - problem.scores * scale))[::-1][: problem.n].sum()
    k_pairs = problem.n * (problem.n - 1) // 2
    err_w = np.sort(np.abs(ws - w * scale))[::-1][:k_pairs].sum() if w.size else 0.0
    rounding_bound = float(err_p + err_w) / scale
    cost_scale = integer_scale(problem.cost_vector) if problem.budget is not None else 1.0
    if cost_scale is None:
        raise ValidationError("CP-SAT needs costs with at most 6 decimals; got costs "
                              f"{problem.cost_vector[:5]}... Round them or use the MILP backend.")
    m, x = _cpsat_model(problem, ps, iu, ju, ws, cost_scale, strengthen)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = workers
    if time_limit_s is not None:
        solver.parameters.max_time_in_seconds = float(time_limit_s)
    status = solver.Solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise SolverError(f"CP-SAT returned status {solver.StatusName(status)} for the subset "
                          "problem.")
    sel = [i for i in range(c) if solver.Value(x[i])]
    bound = float(solver.BestObjectiveBound()) / scale + rounding_bound
    sol = _solution(problem, sel, None, math.inf, status == cp_model.OPTIMAL, "cpsat",
                    time.perf_counter() - t0,
                    {"objective_scale": scale, "rounding_bound": rounding_bound,
                     "scaled_objective": float(solver.ObjectiveValue()),
                     "strengthen": strengthen})
    gap = abs(bound - sol.objective) / max(abs(sol.objective), 1e-9)
    return SubsetSolution(**{**asdict(sol), "bound": bound, "gap": gap})


def _cpsat_model(problem: SubsetProblem, ps: np.ndarray, iu: np.ndarray, ju: np.ndarray,
                 ws: np.ndarray, cost_scale: float, strengthen: bool) -> tuple[Any, list[Any]]:
    """The CP-SAT model of the integer-scaled problem: x_i per configuration, y_ij per
    pair (y_ij = x_i x_j), the choose-N and budget rows, and with ``strengthen`` the RLT
    rows; returns the model and the x variables."""
    from ortools.sat.python import cp_model

    c = problem.size
    m = cp_model.CpModel()
    x = [m.new_bool_var(f"x{i}") for i in range(c)]
    m.add(sum(x) == problem.n)
    ci = [int(round(v * cost_scale)) for v in problem.cost_vector]
    cap = 0
    if problem.budget is not None:
        cap = int(math.floor(problem.budget * cost_scale + 1e-9))
        m.add(sum(ci[i] * x[i] for i in range(c)) <= cap)
    terms = [int(ps[i]) * x[i] for i in range(c) if ps[i] != 0]
    ys: list[list[tuple[int, Any]]] = [[] for _ in range(c)]
    for k, (i, j) in enumerate(zip(iu, ju)):
        if ws[k] == 0 and not strengthen:
            continue
        y = m.new_bool_var(f"y{i}_{j}")
        m.add_implication(y, x[i])
        m.add_implication(y, x[j])
        if ws[k] < 0 or strengthen:
            m.add_bool_or([y, ~x[i], ~x[j]])
        ys[i].append((j, y))
        ys[j].append((i, y))
        if ws[k] != 0:
            terms.append(int(ws[k]) * y)
    if strengthen and problem.n > 1:
        for i in range(c):
            m.add(sum(y for _, y in ys[i]) == (problem.n - 1) * x[i])
            if problem.budget is not None:
                m.add(sum(ci[j] * y for j, y in ys[i]) <= (cap - ci[i]) * x[i])
    m.maximize(sum(terms))
    return m, x


def solve_subset(problem: SubsetProblem, backend: str = "highs", **kwargs) -> SubsetSolution:
    """``backend``: 'cpsat' (direct CP-SAT model), 'brute', 'greedy', or any
    optprune.solve backend for the MILP ('highs', 'scip', 'pyomo')."""
    if backend == "cpsat":
        return solve_cpsat(problem, **kwargs)
    if backend == "brute":
        return brute_force(problem)
    if backend == "greedy":
        return greedy(problem)
    return solve_milp(problem, backend, **kwargs)


def brute_force(problem: SubsetProblem, max_sets: int = 2_000_000) -> SubsetSolution:
    """Enumerate every feasible N-subset (ties: the lexicographically first)."""
    total = math.comb(problem.size, problem.n)
    check(total <= max_sets, "The number of subsets for brute force",
          f"at most {max_sets}", total, "Use backend 'highs' or 'cpsat'.")
    t0 = time.perf_counter()
    best, best_val = None, -math.inf
    for s in itertools.combinations(range(problem.size), problem.n):
        if not problem.feasible(s):
            continue
        v = problem.objective(s)
        if v > best_val + 1e-12:
            best, best_val = s, v
    if best is None:  # pragma: no cover (the constructor already checks feasibility)
        raise InfeasibleProblemError("No N-subset fits the budget.")
    return _solution(problem, best, best_val, 0.0, True, "brute", time.perf_counter() - t0, {})


def greedy(problem: SubsetProblem) -> SubsetSolution:
    """Add, N times, the affordable configuration with the largest marginal gain."""
    t0 = time.perf_counter()
    chosen: list[int] = []
    spent = 0.0
    order_cost = np.sort(problem.cost_vector)
    w = problem.pair_weight
    for step in range(problem.n):
        left = problem.n - step - 1
        best, best_gain = -1, -math.inf
        for i in range(problem.size):
            if i in chosen:
                continue
            if problem.budget is not None:
                # keep room for the cheapest possible completion
                rest = order_cost[:left].sum() if left else 0.0
                if spent + problem.cost_vector[i] + rest > problem.budget + 1e-9:
                    continue
            gain = problem.scores[i] + w * problem.dissimilarity[i, chosen].sum()
            if gain > best_gain:
                best, best_gain = i, gain
        if best < 0:
            raise InfeasibleProblemError("Greedy found no affordable configuration.")
        chosen.append(best)
        spent += problem.cost_vector[best]
    return _solution(problem, chosen, None, math.inf, False, "greedy", time.perf_counter() - t0,
                     {})
