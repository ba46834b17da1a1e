"""Solve an attack MIP and check every adversarial input on the reference network.

A witness x (the input part of a solver's solution) is *verified* when, evaluated in
float64 on the reference network (the original dense torch module, or the numpy
Network), it lies in the region (within 1e-7) and its margin is strictly positive:

    targeted:    y_c(x) - y_t(x) > 0
    untargeted:  max_{j != t} y_j(x) - y_t(x) > 0

so the reference really decides a class other than t. Surrogate mode: the MIP is built
over a pruned network, HiGHS keeps every improving incumbent
(``mip_improving_solution_save``), each is judged on the reference, and the best
verified one is returned.

Outcome: ``adversarial`` (a verified witness), ``robust`` (proved: the solver ran and
its dual bound on the margin is <= 0, or it proved the decision / minimal-distortion MIP
infeasible), or ``unknown`` (a limit stopped the solver first, a witness failed
verification, or the solver failed: termination ``error``, with the solver's message in
``message`` and no objective or bound). A limit is a result: the incumbent, its bound and
the gap are returned. A solver error is never read as a bound.

Threads: HiGHS runs one thread scheduler per process, sized by the first run that needs
it (the LP bounds' runs, for instance), and refuses a later run whose ``threads`` differs.
A ``threads`` request is honored: the scheduler is rebuilt at the requested size.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import check
from ..solve import SolveOptions, SolveResult, solve
from .bounds import compute_bounds
from .formulate import AttackSpec, Encoding, Region, encode
from .network import Network, as_network

__all__ = ["AttackResult", "Reference", "attack", "solve_encoding", "margin_of",
           "run_highs", "PROOF_TERMINATIONS", "Strategy", "NO_STRATEGY", "prepare",
           "HIGHS_VERIFY_OPTIONS"]

# Terminations after which the solver's dual bound is a proof (it searched and stopped on a
# limit or on optimality). After "error" or "other" a reported bound means nothing.
PROOF_TERMINATIONS = frozenset({"optimal", "time_limit", "node_limit", "solution_limit",
                                "interrupted"})


def margin_of(logits: np.ndarray, label: int, target: int | None) -> float:
    y = np.asarray(logits, dtype=np.float64)
    if target is not None:
        return float(y[target] - y[label])
    return float(np.max(np.delete(y, label)) - y[label])


class Reference:
    """The network that judges witnesses, evaluated in float64."""

    def __init__(self, obj: Any, input_shape: tuple[int, ...]) -> None:
        self.input_shape = tuple(input_shape)
        self.kind = "network"
        self._net: Network | None = None
        self._torch = None
        if isinstance(obj, Network):
            self._net = obj
            return
        try:
            import torch

            if isinstance(obj, torch.nn.Module):
                self._torch = copy.deepcopy(obj).double().eval()
                self.kind = "torch"
                return
        except ImportError:  # pragma: no cover
            pass
        self._net = as_network(obj, input_shape)

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).ravel()
        if self._torch is not None:
            import torch

            with torch.no_grad():
                t = torch.from_numpy(x.copy()).reshape(1, *self.input_shape)
                return self._torch(t).reshape(-1).numpy().astype(np.float64)
        assert self._net is not None
        return self._net.forward(x)


@dataclass(frozen=True)
class AttackResult:
    outcome: str                      # adversarial | robust | unknown
    termination: str
    objective: float | None
    bound: float | None
    gap: float | None
    witness: np.ndarray | None = field(repr=False)
    verified: bool | None
    reference_margin: float | None    # margin of the witness on the reference
    mip_margin: float | None          # margin of the witness on the encoded network
    predicted_class: int | None       # reference's class at the witness
    distance: float | None            # ||witness - x0|| in the region's norm
    bounds_time_s: float
    build_time_s: float
    solve_time_s: float
    nodes: int | None
    incumbents_checked: int
    stats: dict[str, Any]
    message: str = ""                 # why the outcome is "unknown" (limit, error, ...)

    def to_dict(self, with_witness: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["witness"] = self.witness.tolist() if (with_witness and self.witness is not None) else None
        for k in ("objective", "bound", "gap"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = None
        return d


def run_highs(h: Any, threads: int | None) -> Any:
    """``h.run()`` with ``threads`` honored (module docstring): when HiGHS refuses the run
    because its process-wide scheduler has another size (kError, model status kNotset),
    the scheduler is rebuilt with ``threads`` and the run repeated."""
    import highspy

    if threads is not None:
        h.setOptionValue("threads", int(threads))
    status = h.run()
    if (threads is not None and status == highspy.HighsStatus.kError
            and h.getModelStatus() == highspy.HighsModelStatus.kNotset):
        highspy.Highs.resetGlobalScheduler(True)
        status = h.run()
    return status


def _highs_solve(enc: Encoding, options: SolveOptions, save_incumbents: bool,
                 stop_at_first: bool) -> tuple[SolveResult, list[np.ndarray]]:
    """HiGHS directly, so that improving incumbents can be kept for the surrogate mode."""
    from ..solve.backends.highs import HighsBackend, apply_options, new_highs, pass_model, read_result

    t0 = time.perf_counter()
    h = new_highs(options.log)
    pass_model(h, enc.model)
    # threads are set by run_highs, which can rebuild the scheduler; apply_options would
    # only warn that the running pool has another size
    apply_options(h, replace(options, threads=None), enc.model.is_mip)
    if options.warm_start is not None:
        import highspy

        start = highspy.HighsSolution()
        start.col_value = list(np.asarray(options.warm_start, dtype=np.float64))
        start.value_valid = True
        h.setSolution(start)
    if save_incumbents:
        h.setOptionValue("mip_improving_solution_save", True)
    if stop_at_first:
        h.setOptionValue("mip_max_improving_sols", 1)
    build = time.perf_counter() - t0
    t1 = time.perf_counter()
    run_highs(h, options.threads)
    dt = time.perf_counter() - t1
    res = read_result(h, enc.model, options, build, dt, HighsBackend.version())
    sols: list[np.ndarray] = []
    if save_incumbents:
        try:
            sols = [np.asarray(s.col_value, dtype=np.float64) for s in h.getSavedMipSolutions()]
        except Exception:  # noqa: BLE001 - older highspy: only the final incumbent
            sols = []
    if res.x is not None:
        sols.append(res.x)
    return res, sols


# HiGHS with a verified start in hand: its own primal heuristics (RINS, RENS, feasibility
# jump, ...) and presolve spent most of the time on the hard instances without improving
# the start (benchmarks/bench_solve_hard.py).
HIGHS_VERIFY_OPTIONS: dict[str, Any] = {
    "presolve": "off", "mip_heuristic_effort": 0.0, "mip_heuristic_run_rins": False,
    "mip_heuristic_run_rens": False, "mip_heuristic_run_feasibility_jump": False,
    "mip_heuristic_run_root_reduced_cost": False, "mip_heuristic_run_zi_round": False,
    "mip_heuristic_run_shifting": False,
}
STARTS = (None, "pgd")
CUTS = (None, "ideal")
PROFILES = ("auto", "default", "verify")


@dataclass(frozen=True)
class Strategy:
    """How an attack MIP is solved beyond the formulation (``formulations/adversarial.md``,
    "Solving the hard ones").

    start: ``"pgd"`` runs projected gradient ascent on the network (``heuristics.pgd``)
        and hands its best point, lifted to every column and checked against every row,
        to the solver as a MIP start; None: no start.
    cuts: ``"ideal"`` runs the root cutting-plane loop of Anderson et al.'s ideal
        inequalities (``cuts.root_cut_loop``) and appends the cuts kept; None: no cuts.
    highs_profile: ``"verify"`` turns HiGHS's presolve and primal heuristics off;
        ``"auto"`` does so when a start is handed over; ``"default"``: HiGHS's defaults.
    The time spent here counts against the attack's time limit (the MIP gets the rest).
    """

    start: str | None = "pgd"
    cuts: str | None = "ideal"
    highs_profile: str = "auto"
    pgd_steps: int = 60
    pgd_restarts: int = 16
    cut_rounds: int = 30
    cut_time_limit_s: float = 10.0

    def __post_init__(self) -> None:
        check(self.start in STARTS, "The strategy's 'start'", f"one of {STARTS}", self.start)
        check(self.cuts in CUTS, "The strategy's 'cuts'", f"one of {CUTS}", self.cuts)
        check(self.highs_profile in PROFILES, "The strategy's 'highs_profile'",
              f"one of {PROFILES}", self.highs_profile)
        for name in ("pgd_steps", "pgd_restarts", "cut_rounds"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                  f"The strategy's '{name}'", "a positive integer", v)
        check(math.isfinite(self.cut_time_limit_s) and self.cut_time_limit_s > 0,
              "The strategy's 'cut_time_limit_s'", "a positive number of seconds",
              self.cut_time_limit_s)


NO_STRATEGY = Strategy(start=None, cuts=None, highs_profile="default")


def prepare(enc: Encoding, strategy: Strategy, time_limit_s: float | None = None,
            seed: int = 0) -> tuple[Encoding, np.ndarray | None, dict[str, Any]]:
    """(encoding with the cuts appended, the MIP start or None, what was done)."""
    from .cuts import root_cut_loop, with_rows
    from .heuristics import lift, pgd

    stats: dict[str, Any] = {"strategy": asdict(strategy)}
    found = None
    if strategy.start == "pgd":
        found = pgd(enc.network, enc.region, enc.spec.label, enc.spec.target,
                    steps=strategy.pgd_steps, restarts=strategy.pgd_restarts, seed=seed)
        stats.update(pgd_margin=found.margin, pgd_time_s=found.time_s)
    if strategy.cuts == "ideal" and enc.model.is_mip:
        limit = strategy.cut_time_limit_s
        if time_limit_s is not None:
            limit = min(limit, max(0.1 * time_limit_s, 0.01))
        c = root_cut_loop(enc, rounds=strategy.cut_rounds, time_limit_s=limit)
        enc = replace(enc, model=with_rows(enc.model, c))
        stats.update(c.stats())
    start = None
    if found is not None:
        v = lift(enc, found.x)
        viol = enc.model.max_violation(v)
        stats["start_violation"] = viol
        if viol <= 1e-7:  # infeasible for decision / distortion when no adversarial point
            start = v
            stats["start_objective"] = enc.model.objective_value(v)
    return enc, start, stats


def solve_encoding(enc: Encoding, backend: str = "highs", options: SolveOptions | None = None,
                   reference: Any = None, surrogate: bool = False,
                   strategy: Strategy | None = None) -> AttackResult:
    """Solve ``enc`` and verify its witness(es) on ``reference`` (default: the encoded net).

    ``strategy`` (default: none): a MIP start, root cuts and HiGHS options (``Strategy``);
    its time counts against ``options.time_limit_s``."""
    options = options or SolveOptions()
    ref = Reference(reference if reference is not None else enc.network, enc.network.input_shape)
    spec, region = enc.spec, enc.region
    extra_stats: dict[str, Any] = {}
    start = None
    if strategy is not None and strategy != NO_STRATEGY:
        t0 = time.perf_counter()
        enc, start, extra_stats = prepare(enc, strategy, options.time_limit_s, options.seed)
        spent = time.perf_counter() - t0
        extra_stats["prepare_time_s"] = spent
        extra = dict(options.extra)
        if backend == "highs" and (strategy.highs_profile == "verify" or (
                strategy.highs_profile == "auto" and start is not None)):
            extra = {**HIGHS_VERIFY_OPTIONS, **extra}
        limit = options.time_limit_s
        if limit is not None:
            limit = max(limit - spent, 0.01)
        options = replace(options, warm_start=start if start is not None else
                          options.warm_start, extra=extra, time_limit_s=limit)
    if backend == "highs":
        res, sols = _highs_solve(enc, options, save_incumbents=surrogate,
                                 stop_at_first=spec.objective == "decision")
    else:
        res = solve(enc.model, backend=backend, options=options)
        sols = [res.x] if res.x is not None else []
    if start is not None:  # judged like every incumbent (it may beat a failed solve)
        sols = [start, *sols]
    best = None  # (reference margin, witness, solution)
    lo, hi = region.box()
    for sol in sols:
        x = np.clip(enc.input_of(sol), lo, hi)
        rm = margin_of(ref.logits(x), spec.label, spec.target)
        ok = region.contains(x) and rm > 0
        # verified first; then what the objective asks for: the largest margin, or the
        # smallest distortion
        key = (ok, -region.distance(x) if spec.objective == "min_distortion" else rm)
        if best is None or key > best[0]:
            best = (key, x, sol)
    witness = verified = rmargin = mmargin = pred = dist = None
    if best is not None:
        (ok, _), witness, sol = best
        rm = margin_of(ref.logits(witness), spec.label, spec.target)
        verified, rmargin = bool(ok), float(rm)
        mmargin = margin_of(enc.network.forward(witness), spec.label, spec.target)
        pred = int(np.argmax(ref.logits(witness)))
        dist = region.distance(witness)
    term = res.termination.value
    outcome, message = _outcome(term, res, spec.objective, bool(verified), surrogate,
                                best is not None)
    searched = term in PROOF_TERMINATIONS or term == "infeasible"
    st = {**enc.stats(), **extra_stats}
    return AttackResult(
        outcome=outcome, termination=term, objective=res.objective if searched else None,
        bound=res.bound if searched else None, gap=res.gap if searched else None,
        witness=witness, verified=verified, reference_margin=rmargin,
        mip_margin=mmargin, predicted_class=pred, distance=dist,
        bounds_time_s=enc.bounds.time_s, build_time_s=enc.build_time_s,
        solve_time_s=res.solve_time_s, nodes=res.nodes, incumbents_checked=len(sols),
        stats=st, message=message,
    )


def _outcome(term: str, res: SolveResult, objective: str, verified: bool, surrogate: bool,
             had_witness: bool) -> tuple[str, str]:
    """(outcome, message): robust only on a proof, i.e. a dual bound <= 0 from a search
    that ran (PROOF_TERMINATIONS), or infeasibility of the decision / distortion MIP."""
    if verified:
        return "adversarial", ""
    if term not in PROOF_TERMINATIONS and term != "infeasible":
        return "unknown", (f"the solver stopped with termination {term!r} "
                           f"({res.message or 'no message'}); nothing is proven")
    if surrogate:  # a proof over a pruned surrogate says nothing about the dense reference
        return "unknown", "surrogate mode: no incumbent was verified on the reference"
    if objective == "margin" and res.bound is not None and res.bound <= 0:
        return "robust", ""
    if objective in ("decision", "min_distortion") and term == "infeasible":
        return "robust", ""
    if had_witness:
        return "unknown", "the witness failed verification on the reference network"
    return "unknown", (f"not proven: termination {term!r}, bound {res.bound}, "
                       f"gap {res.gap:.3g}")


def attack(network: Any, x0: Any, label: int, *, radius: float, norm: str = "linf",
           target: int | None = None, objective: str = "margin", bounds: str = "symbolic",
           domain: tuple[Any, Any] = (0.0, 1.0), backend: str = "highs",
           time_limit_s: float | None = 60.0, reference: Any = None, surrogate: bool = False,
           margin_threshold: float = 1e-4, input_shape: Any = None, threads: int | None = None,
           seed: int = 0, bound_options: dict[str, Any] | None = None,
           name: str = "attack", relu: str = "bigm",
           max_fan_in: int | None = None, strategy: Strategy | None = None) -> AttackResult:
    """Encode, solve and verify one attack.

    ``network``: a torch nn.Sequential, an MLPClassifier, an ONNX model or a Network.
    ``reference`` (default: ``network`` itself; a torch module is evaluated as the dense
    torch module in float64) judges every witness. ``surrogate=True`` says ``network`` is
    a pruned stand-in for ``reference``: every incumbent is judged on the reference.
    ``relu`` / ``max_fan_in``: the ReLU formulation (``encode``: bigm, ideal or auto).
    ``bounds``: the pre-activation bounds (``compute_bounds``; symbolic by default: as
    many stable neurons as LP bounds within a few percent, at a thousandth of the time).
    ``strategy``: MIP start, root cuts, solver options (default ``Strategy()``: a PGD
    start, ideal cuts at the root, HiGHS's presolve and heuristics off with the start;
    ``NO_STRATEGY`` solves the bare formulation). ``time_limit_s`` covers the strategy
    and the solve; the bounds have their own limits (``bound_options``).
    """
    net = as_network(network, input_shape)
    check(not surrogate or reference is not None, "The 'reference' parameter",
          "the dense network when surrogate=True", None)
    region = Region.make(net, x0, norm, radius, domain)
    spec = AttackSpec(int(label), None if target is None else int(target), objective,
                      margin_threshold)
    spec.validate(net.output_dim)
    b = compute_bounds(net, region, bounds, **(bound_options or {}))
    enc = encode(net, region, spec, b, name=name, relu=relu, max_fan_in=max_fan_in,
                 names=False)
    ref = reference if reference is not None else network
    opts = SolveOptions(time_limit_s=time_limit_s, threads=threads, seed=seed,
                        rel_gap=1e-4 if objective == "margin" else 1e-6)
    return solve_encoding(enc, backend, opts, reference=ref, surrogate=surrogate,
                          strategy=Strategy() if strategy is None else strategy)
