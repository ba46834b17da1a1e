"""Solve an AllocationProblem exactly; compare with the baselines; sweep a Pareto front."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import (InfeasibleProblemError, SolutionMismatchError, SolverError,
                      ValidationError)
from ..solve import LinearModel, SolveOptions, SolveResult, get_backend
from ..solve.isolate import run_isolated
from ..solve.result import SolutionStatus, Termination, relative_gap
from .baselines import BaselineResult, run_baselines
from .bilinear import solve_bilinear
from .explain import explain_infeasible
from .formulate import Formulation, formulate, width_exact_slots
from .problem import AllocationProblem
from .relax import lagrangian_bound, prefix_greedy, quick_solution, trivial_bound


@dataclass(frozen=True)
class AllocationResult:
    """The proven selection (``keep`` is None when the solver found none)."""

    problem_name: str
    keep: np.ndarray | None = field(repr=False)
    kept_ids: list[str] = field(repr=False)
    solve: SolveResult
    formulation: str
    model_stats: dict[str, int]
    objective_kind: str
    retained_importance: float | None
    total_importance: float
    usage: dict[str, float]
    dense_usage: dict[str, float]
    slot_counts: dict[str, int]
    baselines: dict[str, BaselineResult]
    total_time_s: float

    @property
    def termination(self) -> Termination:
        return self.solve.termination

    def price_of_greedy(self) -> dict[str, float | None]:
        """Per baseline, (exact - baseline) / |exact| of retained importance, for
        feasible baselines; None for a baseline that breaks a constraint."""
        if self.solve.objective is None:
            return {k: None for k in self.baselines}
        opt = self.solve.objective
        out = {}
        for name, b in self.baselines.items():
            out[name] = (opt - b.objective) / max(abs(opt), 1e-12) if b.feasible else None
        return out

    def to_dict(self, with_keep: bool = False) -> dict[str, Any]:
        s = self.solve.to_dict()
        d = {
            "problem": self.problem_name,
            "termination": s["termination"],
            "solution_status": s["solution_status"],
            "objective": s["objective"],
            "bound": s["bound"],
            "gap": s["gap"],
            "build_time_s": s["build_time_s"],
            "solve_time_s": s["solve_time_s"],
            "total_time_s": self.total_time_s,
            "nodes": s["nodes"],
            "backend": s["backend"],
            "backend_version": s["backend_version"],
            "backend_details": s["details"],
            "message": s["message"],
            "formulation": self.formulation,
            "model": self.model_stats,
            "objective_kind": self.objective_kind,
            "retained_importance": self.retained_importance,
            "total_importance": self.total_importance,
            "usage": self.usage,
            "dense_usage": self.dense_usage,
            "kept": len(self.kept_ids),
            "slot_counts": self.slot_counts,
            "baselines": {k: b.to_dict() for k, b in self.baselines.items()},
            "price_of_greedy": self.price_of_greedy(),
        }
        if with_keep:
            d["kept_ids"] = self.kept_ids
        return d


# HiGHS's restart after root reduced-cost fixing is a trade-off on these
# multiple-choice knapsacks (benchmarks/BENCHMARKS.md): on the LLaMA shapes it drops
# the cuts that close the gap (7B: 3 nodes / 0.2 s without it, ~1,500 nodes / 3 s
# with it), while on MiniLM (9,300 width binaries, 1,537 options per FFN slot) it is
# what closes the gap (4 s at the root with it, still 6e-6 after 60 s without). So
# allocate() runs a first phase without restarts, limited to a few branch-and-bound
# nodes (the LLaMA shapes need 1-3), and, if that does not prove the optimum,
# continues with HiGHS's defaults from the incumbent.
ALLOCATION_BACKEND_OPTIONS = {"highs": {"mip_allow_restart": False}}
FIRST_PHASE_NODES = 5

# A solve under a time limit runs in a child process stopped at the deadline
# (optprune.solve.isolate) once the model has this many columns + nonzeros: from
# there HiGHS's root can spend seconds in code that never checks its time limit
# (the 10^5-structure knapsack, 300,000 entries: a 5 s limit ended after 7.6-381 s;
# the 2*10^4 one, 60,000 entries: a 1 s limit after 9.9 s). Below it (MiniLM's and
# the LLaMA shapes' width models) the child's start (0.5-0.8 CPU-s) would cost more
# than any overrun seen.
ISOLATE_ENTRIES = 50_000


def _options(backend, time_limit_s, rel_gap, threads, seed, log, warm_start=None) -> SolveOptions:
    return SolveOptions(time_limit_s=time_limit_s, rel_gap=rel_gap, threads=threads, seed=seed,
                        log=log, warm_start=warm_start,
                        extra=dict(ALLOCATION_BACKEND_OPTIONS.get(backend, {})))


def allocate(
    problem: AllocationProblem,
    backend: str = "highs",
    time_limit_s: float | None = None,
    rel_gap: float = 1e-6,
    threads: int | None = None,
    seed: int = 0,
    log: bool = False,
    formulation: str = "auto",
    objective: str | tuple[str, str] | None = None,
    importance_floor: float | None = None,
    baselines: bool | Sequence[str] = True,
    warm_start: bool = True,
) -> AllocationResult:
    """Choose exactly which structures to keep.

    objective: None (the problem's own), "max_importance", or ("min", resource)
        with ``importance_floor`` a fraction of the total score.
    baselines: compute the baseline rules on the same instance (True, False or
        a list of names); the best feasible one also warm-starts the solver.
    A time limit without a solution returns a result with ``keep=None``; an
    infeasible problem raises InfeasibleProblemError naming the conflict. The
    returned keep set is checked against the problem (every constraint, and the
    objective the solver reported); a mismatch raises SolutionMismatchError.
    """
    run = _Run(problem, backend, time_limit_s, rel_gap, threads, seed, log, formulation,
               objective, importance_floor, baselines, warm_start)
    return run.next()


def allocate_k_best(problem: AllocationProblem, k: int, **allocate_kwargs: Any
                    ) -> list[AllocationResult]:
    """The ``k`` best distinct keep masks, best first.

    The i-th is optimal (within ``rel_gap``) among the masks other than the first
    i - 1: after each solve, a no-good cut on the model's selection binaries (one per
    structure, or the chosen width of a width-mode slot) removes exactly that mask,
    and the model is solved again. Fewer than ``k`` feasible masks: all of them are
    returned, with a warning saying how many exist. A solve that stops at the time
    limit (which covers the whole call) ends the list with its unproven result.
    ``allocate_kwargs`` are those of :func:`allocate`.

    The width formulation represents only the best k-subset of each width, which is
    enough for the optimum but not for the runners-up (the second best mask may
    swap one member of a slot), so every slot without slot values gets one binary
    per structure here (``formulation`` "auto" or "structure"; "width" is refused).
    A slot with values is defined by its width, so its masks are exactly its widths.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValidationError(f"The 'k' of allocate_k_best must be a positive integer; got {k!r}.")
    if allocate_kwargs.get("formulation", "auto") not in ("auto", "structure"):
        raise ValidationError(
            "allocate_k_best ranks keep masks, which the width formulation cannot all "
            f"represent; use formulation='auto' or 'structure' (got "
            f"{allocate_kwargs['formulation']!r}).")
    run = _Run(problem, **{**allocate_kwargs, "formulation": "structure"})
    out: list[AllocationResult] = []
    for i in range(int(k)):
        try:
            r = run.next()
        except InfeasibleProblemError:
            if i == 0:
                raise
            warnings.warn(f"Only {i} distinct keep masks satisfy every constraint; "
                          f"allocate_k_best returns those {i} of the {k} asked for.",
                          UserWarning, stacklevel=2)
            break
        out.append(r)
        if r.keep is None or not r.solve.is_optimal:
            if i + 1 < k:
                warnings.warn(f"allocate_k_best stopped after {i + 1} of {k} masks: solve "
                              f"{i + 1} ended '{r.termination.value}' without a proof.",
                              UserWarning, stacklevel=2)
            break
        run.exclude(r)
    return out


# Expected stage times, measured on the reference machine at a load of 6-8 on its
# 2 cores (LLaMA-70B: 2.3M structures in width mode, 18,720 width options; a
# knapsack of 10^6 structures with unequal costs), with a margin. A stage whose
# expected time does not fit in the time left is not started.
#   solver setup per (column + nonzero), before its own time limit counts (HiGHS:
#   14 s of presolve and 1.4 s of setup for 1M columns + 2M nonzeros, the time
#   limit not checked meanwhile); a solve is started only with twice this left.
SETUP_S_PER_ENTRY = {"highs": 5e-6, "scip": 5e-6, "cpsat": 2e-5, "pyomo": 1e-4}


def _stage_costs(problem: AllocationProblem) -> dict[str, float]:
    """Expected seconds of each stage at a load of 5-6 on 2 cores (quick solution
    1.4 s on LLaMA-70B and 3.9 s on the 10^6 knapsack; one-sort greedy 0.9 s there;
    formulation 0.42 s and 2.2 s; the answer's check and report 0.95 s and 0.3 s)."""
    exact = width_exact_slots(problem)
    sizes = {s: idx.size for s, idx in problem.slots().items()}
    n_width = sum(sizes[s] for s, ok in exact.items() if ok or s in problem.slot_values)
    n_struct = problem.n - n_width
    options = sum(problem.allowed_counts(s).size for s, ok in exact.items() if ok)
    return {"quick": 1e-6 * problem.n + 3e-6 * n_struct,
            "greedy": 4e-7 * problem.n,
            "formulate": 3e-7 * problem.n + 3e-6 * n_struct + 3e-5 * options,
            "check": 0.02 + 4e-7 * problem.n}


class _Run:
    """One formulated problem, solved once or repeatedly with masks excluded.

    ``time_limit_s`` covers everything from the call on, in stages: a quick
    solution (Lagrangian bound and a greedy mask, linear time; enough when it closes
    the gap), the baselines (stopped at 40% of the limit), the formulation and the
    solver (each started only if its measured cost fits in the time left), and the
    check of the answer (time reserved). Whatever stops early, the answer carries
    the best bound and the best feasible mask known."""

    def __init__(self, problem: AllocationProblem, backend: str = "highs",
                 time_limit_s: float | None = None, rel_gap: float = 1e-6,
                 threads: int | None = None, seed: int = 0, log: bool = False,
                 formulation: str = "auto", objective: str | tuple[str, str] | None = None,
                 importance_floor: float | None = None,
                 baselines: bool | Sequence[str] = True, warm_start: bool = True) -> None:
        self.t_start = time.perf_counter()
        SolveOptions(time_limit_s=time_limit_s, rel_gap=rel_gap, threads=threads)  # validate
        self.time_limit_s = time_limit_s
        self.deadline = None if time_limit_s is None else self.t_start + time_limit_s
        if objective is not None:
            problem = copy.copy(problem)
            if objective == "max_importance":
                problem.set_objective("max_importance")
            elif isinstance(objective, tuple) and len(objective) == 2 and objective[0] == "min":
                problem.set_objective("min_resource", objective[1], importance_floor,
                                      relative=True)
            else:
                raise ValidationError(
                    "The 'objective' must be 'max_importance' or ('min', RESOURCE); got "
                    f"{objective!r}.")
        self.problem = problem
        self.backend = backend
        self.be = get_backend(backend)
        self.rel_gap, self.threads, self.seed, self.log = rel_gap, threads, seed, log
        self.formulation = formulation
        self.warm_start = warm_start and self.be.supports_warm_start
        self.solved = 0
        self.build_s = 0.0
        problem.diagnose()
        self.costs = _stage_costs(problem)
        # Pair products: hull cuts and outer approximation (bilinear.py) on the model
        # without the disaggregation rows; their own quick stage is the cut loop.
        self.bilinear = bool(problem.pair_costs)
        self.quick: tuple[float | None, np.ndarray | None] = (None, None)
        # The quick stage is the cheapest source of an incumbent and a bound: it
        # runs when its expected time is left (its bound search stops at the
        # deadline; the walk that builds its mask does not: 5.7 s at 10^6 under load).
        if not self.bilinear and self._fits(self.costs["quick"]):
            # The bound search stops in time for the walk (about a greedy's time) to end.
            left = self._left()
            stop = self._at(0.5)
            if left is not None and stop is not None:
                stop = min(stop, time.perf_counter() + left - 2 * self.costs["greedy"])
            self.quick = quick_solution(problem, stop)
        elif not self.bilinear and self._fits(self.costs["greedy"]):
            # No time for the quick stage: one sort gives a feasible mask at least
            # (its bound comes from _fill).
            self.quick = (None, prefix_greedy(problem))
        self.base: dict[str, BaselineResult] = {}
        if baselines and problem.objective.kind == "max_importance":
            names = None if baselines is True else list(baselines)
            self.base = run_baselines(problem, names, deadline=self._at(0.4))
        self.form: Formulation | None = None
        if self._fits(self.costs["formulate"]):
            t0 = time.perf_counter()
            self.form = formulate(problem, formulation, integer_only=backend == "cpsat",
                                  exact_pairs=not self.bilinear)
            self.build_s = time.perf_counter() - t0

    # ----------------------------------------------------------------- time
    def _at(self, share: float) -> float | None:
        """The moment ``share`` of the time limit is used up."""
        if self.deadline is None or self.time_limit_s is None:
            return None
        return self.t_start + share * self.time_limit_s

    def _reserve(self) -> float:
        return self.costs["check"] if hasattr(self, "costs") else 0.0

    def _left(self) -> float | None:
        if self.deadline is None:
            return None
        return self.deadline - self._reserve() - time.perf_counter()

    def _fits(self, cost_s: float) -> bool:
        left = self._left()
        return left is None or left > cost_s

    # ---------------------------------------------------------------- solve
    def _feasible_baselines(self) -> list[BaselineResult]:
        return sorted((b for b in self.base.values() if b.feasible),
                      key=lambda b: b.objective, reverse=True)

    def _candidates(self, first: bool) -> list[np.ndarray]:
        """Feasible masks known without the solver, best first (the quick mask only
        for the first solve: no-good cuts come after it)."""
        out = [(b.objective, b.keep) for b in self._feasible_baselines()]
        if first and self.quick[1] is not None:
            out.append((self.problem.objective_of(self.quick[1]), self.quick[1]))
        sign = 1.0 if self.problem.objective.kind == "max_importance" else -1.0
        return [k for _, k in sorted(out, key=lambda t: -sign * t[0])]

    def _start(self) -> np.ndarray | None:
        if not self.warm_start or self.form is None:
            return None
        for keep in self._candidates(self.solved == 0):  # the best one not excluded
            x = self.form.encode(keep, self.problem)
            if x is not None:
                return x
        return None

    def _mip(self, time_limit_s: float | None, start: np.ndarray | None) -> SolveResult:
        assert self.form is not None  # only called once the problem is formulated
        model = self.form.model
        args = (self.backend, model, time_limit_s, self.rel_gap, self.threads, self.seed,
                self.log, start if self.warm_start else None)
        if time_limit_s is not None and model.num_cols + model.A.nnz >= ISOLATE_ENTRIES:
            return run_isolated(_solve_phased, args, time_limit_s, self.backend,
                                type(self.be).version())
        return _solve_phased(*args)

    def _quick_result(self) -> SolveResult | None:
        """The quick stage's answer when it already closes the gap."""
        bound, keep = self.quick
        if self.solved or keep is None or bound is None:
            return None
        obj = self.problem.objective_of(keep)
        if relative_gap(obj, bound) > self.rel_gap:
            return None
        return SolveResult(
            termination=Termination.OPTIMAL, solution_status=SolutionStatus.OPTIMAL,
            objective=obj, bound=bound, gap=relative_gap(obj, bound), build_time_s=0.0,
            solve_time_s=0.0, nodes=0, backend=self.backend,
            backend_version=type(self.be).version(), message="proven without a solve",
            details={"method": "Lagrangian bound + greedy mask (no solver run)"})

    def next(self) -> AllocationResult:
        t0 = time.perf_counter()
        first = self.solved == 0
        keep = None
        res = self._quick_result()
        if res is not None:
            keep = self.quick[1]
        elif self.form is None:
            res = _no_solve(self.backend, self.be, "the time limit left no room to formulate")
        elif self.bilinear:
            left = self._left()
            res = solve_bilinear(self.problem, self.form, self._mip,
                                 None if left is None else time.perf_counter() + left,
                                 self.rel_gap, self._candidates(first), hull=first)
            res = self.form.unscale(res)
        else:
            setup = SETUP_S_PER_ENTRY.get(self.backend, 1e-5) * (
                self.form.model.num_cols + self.form.model.A.nnz)
            if self._fits(2 * setup):
                left = self._left()
                res = self.form.unscale(self._mip(None if left is None else left,
                                                  self._start()))
            else:
                res = _no_solve(self.backend, self.be,
                                "the time left was below the solver's setup time")
        if first:
            res = _with_build_time(res, self.build_s)
        self.solved += 1
        if res.termination is Termination.ERROR:
            raise SolverError(f"The {self.backend} backend failed on this problem "
                              f"({res.message or 'no message'}); no answer is returned.")
        if res.termination in (Termination.INFEASIBLE, Termination.INFEASIBLE_OR_UNBOUNDED):
            if self.solved > 1:
                raise InfeasibleProblemError("Every feasible keep mask is excluded.")
            raise InfeasibleProblemError(explain_infeasible(self.problem, self.backend))
        if keep is None:
            res, keep = self._fill(res, first)
        return _result(self.problem, self.form, res, self.base,
                       time.perf_counter() - (self.t_start if self.solved == 1 else t0), keep)

    def _fill(self, res: SolveResult, first: bool) -> tuple[SolveResult, np.ndarray | None]:
        """The answer, completed when unproven: the best known feasible mask when it
        beats the solver's incumbent (or there is none), and the quick stage's bound
        when the solver has none or a weaker one."""
        keep = self.form.decode(res.x) if res.x is not None and self.form is not None else None
        if res.is_optimal:
            return res, keep
        maximize = self.problem.objective.kind == "max_importance"

        def better(u: float, v: float) -> bool:
            return u > v if maximize else u < v

        obj, used = res.objective, []
        for cand in self._candidates(first):
            if self.form is not None and self.form.encode(cand, self.problem) is None:
                continue  # excluded by a no-good cut, or not a mask of this model
            value = self.problem.objective_of(cand)
            if obj is None or better(value, obj):
                keep, obj = cand, value
                used.append("best known mask")
            break
        bound = res.bound
        quick = self.quick[0] if first else None  # no-good cuts are not in it
        source = "lagrangian_bound"
        if quick is None and first and res.bound is None:
            # An answer needs a bound: the Lagrangian one if there is time for it
            # (and an incumbent to measure it against), else the O(n) trivial one.
            left = self._left()
            if obj is not None and self._fits(0.5 * self.costs["quick"]):
                quick = lagrangian_bound(self.problem, None if left is None
                                         else time.perf_counter() + max(left, 0.0))
            else:
                quick, source = trivial_bound(self.problem), "trivial_bound"
        if quick is not None and (bound is None or not math.isfinite(bound)
                                  or better(bound, quick)):
            bound = quick
            used.append(source)
        if not used:
            return res, keep
        gap = relative_gap(obj, bound)
        proven = obj is not None and gap <= self.rel_gap
        status = (SolutionStatus.OPTIMAL if proven else
                  SolutionStatus.FEASIBLE if obj is not None else SolutionStatus.NONE)
        return dataclasses.replace(
            res, x=None, objective=obj, bound=bound, gap=gap, solution_status=status,
            termination=Termination.OPTIMAL if proven else res.termination,
            details={**res.details, "completed_with": used}), keep

    def exclude(self, r: AllocationResult) -> None:
        if self.form is None or r.keep is None:
            raise SolverError("No keep mask to exclude: the problem was not formulated or "
                              "the answer has no mask.")
        x = self.form.encode(r.keep, self.problem)
        if x is None:
            x = r.solve.x
        if x is None:
            raise SolverError("The answer's keep mask is not a point of this model.")
        self.form.exclude(self.form.selection(x))


def _no_solve(backend: str, be, why: str) -> SolveResult:
    return SolveResult(termination=Termination.TIME_LIMIT, solution_status=SolutionStatus.NONE,
                       objective=None, bound=None, gap=math.inf, build_time_s=0.0,
                       solve_time_s=0.0, nodes=0, backend=backend,
                       backend_version=type(be).version(), message=why)


def _solve_phased(backend: str, model: LinearModel, time_limit_s, rel_gap, threads, seed,
                  log, start) -> SolveResult:
    """One solve, or for HiGHS the two phases described at ALLOCATION_BACKEND_OPTIONS."""
    be = get_backend(backend)
    opts = _options(backend, time_limit_s, rel_gap, threads, seed, log, start)
    if backend != "highs":
        return be.solve(model, opts)
    first = be.solve(model, dataclasses.replace(
        opts, extra={**opts.extra, "mip_max_nodes": FIRST_PHASE_NODES}))
    if first.termination in (Termination.OPTIMAL, Termination.INFEASIBLE,
                             Termination.INFEASIBLE_OR_UNBOUNDED, Termination.UNBOUNDED,
                             Termination.TIME_LIMIT):
        return first
    rest = None if time_limit_s is None else time_limit_s - first.solve_time_s - first.build_time_s
    if rest is not None and rest <= 0:
        # The first phase's node limit is the engine's own: the user's limit stopped it.
        return dataclasses.replace(first, termination=Termination.TIME_LIMIT)
    second = be.solve(model, dataclasses.replace(
        opts, time_limit_s=rest, extra={},
        warm_start=first.x if first.x is not None else start))
    return _merge(first, second, model.sense, rel_gap)


def _merge(a: SolveResult, b: SolveResult, sense: str, rel_gap: float) -> SolveResult:
    """Phase b continues phase a: the better incumbent, the tighter bound, summed effort."""
    better = (max if sense == "max" else min)
    cand = [r for r in (a, b) if r.objective is not None]
    best = better(cand, key=lambda r: float(r.objective or 0.0)) if cand else b
    bounds = [r.bound for r in (a, b) if r.bound is not None and math.isfinite(r.bound)]
    bound = (min if sense == "max" else max)(bounds) if bounds else b.bound
    gap = relative_gap(best.objective, bound)
    status = best.solution_status
    if b.termination is Termination.OPTIMAL or (best.objective is not None and gap <= rel_gap):
        status = SolutionStatus.OPTIMAL if best.objective is not None else status
    phases = [{"mip_allow_restart": False, "mip_max_nodes": FIRST_PHASE_NODES,
               "termination": a.termination.value,
               "solve_time_s": a.solve_time_s, "nodes": a.nodes, "gap": a.gap},
              {"mip_allow_restart": True, "termination": b.termination.value,
               "solve_time_s": b.solve_time_s, "nodes": b.nodes, "gap": b.gap}]
    return dataclasses.replace(
        b, objective=best.objective, x=best.x, bound=bound, gap=gap, solution_status=status,
        termination=Termination.OPTIMAL if status == SolutionStatus.OPTIMAL else b.termination,
        solve_time_s=a.solve_time_s + b.solve_time_s,
        build_time_s=a.build_time_s + b.build_time_s,
        nodes=(a.nodes or 0) + (b.nodes or 0), details={**b.details, "phases": phases})


def _with_build_time(res: SolveResult, formulate_s: float) -> SolveResult:
    """The backend's build time plus the formulation's."""
    return dataclasses.replace(res, build_time_s=res.build_time_s + formulate_s)


def verify(problem: AllocationProblem, form: Formulation | None, res: SolveResult,
           keep: np.ndarray | None = None) -> tuple[np.ndarray | None, SolveResult]:
    """The keep mask of ``res`` (``keep`` if given, else decoded from ``res.x``)
    checked against ``problem``: it must break no constraint and be worth what the
    solver reported (relative 1e-6). The result then carries the problem's own
    evaluation of the mask as its objective."""
    if keep is None and res.x is not None and form is not None:
        keep = form.decode(res.x)
    if keep is None:
        return None, res
    viol = problem.violations(keep)
    if viol:
        raise SolutionMismatchError(
            f"The {res.backend} solution ({res.termination.value}) breaks the problem's "
            f"constraints when checked: {viol[0]}"
            + (f" (and {len(viol) - 1} more)" if len(viol) > 1 else "") + ".")
    true = problem.objective_of(keep)
    claimed = res.objective
    tol = 1e-6 * max(1.0, abs(true), abs(claimed) if claimed is not None else 0.0)
    if claimed is None or not abs(true - claimed) <= tol:
        raise SolutionMismatchError(
            f"The {res.backend} solver reported objective {claimed!r} ({res.termination.value}) "
            f"but its keep set is worth {true!r} when evaluated on the problem.")
    bound = res.bound
    if bound is not None and math.isfinite(bound):
        # Rounding noise below the tolerance must not put the bound on the wrong side.
        maximize = problem.objective.kind == "max_importance"
        bound = max(bound, true) if maximize else min(bound, true)
    return keep, dataclasses.replace(res, objective=true, bound=bound,
                                     gap=relative_gap(true, bound))


def _result(problem: AllocationProblem, form: Formulation | None, res: SolveResult,
            base: dict[str, BaselineResult], total: float,
            keep: np.ndarray | None = None) -> AllocationResult:
    keep, res = verify(problem, form, res, keep)
    dense = problem.usage(np.ones(problem.n, dtype=bool))
    counts = {}
    if keep is not None:
        counts = {f"{s[0]}|{s[1]}": int(keep[idx].sum()) for s, idx in problem.slots().items()}
    return AllocationResult(
        problem_name=problem.name,
        keep=keep,
        kept_ids=problem.ids_of(keep) if keep is not None else [],
        solve=res,
        formulation=form.kind if form is not None else "none",
        model_stats=form.model.stats() if form is not None else {},
        objective_kind=problem.objective.kind,
        retained_importance=problem.retained(keep) if keep is not None else None,
        total_importance=problem.total_importance(),
        usage=problem.usage(keep) if keep is not None else {},
        dense_usage=dense,
        slot_counts=counts,
        baselines=base,
        total_time_s=total,
    )


@dataclass(frozen=True)
class ParetoPoint:
    budget: float
    objective: float | None
    bound: float | None
    gap: float
    termination: str
    usage: dict[str, float]
    solve_time_s: float
    warm_started: bool

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["gap"] = None if not math.isfinite(self.gap) else self.gap
        return d


def pareto_front(
    problem: AllocationProblem,
    resource: str,
    budgets: Sequence[float],
    relative: bool = True,
    backend: str = "highs",
    time_limit_s: float | None = None,
    rel_gap: float = 1e-6,
) -> list[ParetoPoint]:
    """Epsilon-constraint sweep: maximize retained importance with ``resource`` at
    most each budget in turn (ascending; the problem's own budgets on ``resource``
    are replaced, all its other constraints kept), the model built once and each solve
    warm-started from the previous optimum (feasible for every larger budget).
    Every point carries its own bound and gap."""
    if not budgets:
        raise ValidationError("The 'budgets' of pareto_front must be a non-empty list.")
    q = copy.copy(problem)
    # The swept budget replaces the problem's own budgets on that resource.
    q.budgets = [b for b in problem.budgets if b.resource != resource]
    q.set_objective("max_importance")
    total = q.dense_total(resource)
    values = sorted(float(b) * total if relative else float(b) for b in budgets)
    q.add_budget(resource, max=values[-1])
    form = formulate(q, integer_only=backend == "cpsat")
    fixed = q.fixed_costs[resource]
    be = get_backend(backend)
    out: list[ParetoPoint] = []
    prev = None
    for v in values:
        form.set_budget(len(form.budget_rows) - 1, -np.inf, v - fixed)
        q.budgets[-1] = type(q.budgets[-1])(resource, max=v)
        try:
            q.diagnose()
        except InfeasibleProblemError:
            out.append(ParetoPoint(v, None, None, math.inf, "infeasible", {}, 0.0, False))
            continue
        opts = _options(backend, time_limit_s, rel_gap, None, 0, False,
                        prev if be.supports_warm_start else None)
        r = form.unscale(be.solve(form.model, opts))
        keep, r = verify(q, form, r)
        out.append(ParetoPoint(
            budget=v, objective=r.objective, bound=r.bound, gap=r.gap,
            termination=r.termination.value,
            usage=q.usage(keep) if keep is not None else {},
            solve_time_s=r.solve_time_s, warm_started=prev is not None,
        ))
        if r.x is not None:
            prev = r.x
    return out
