"""One call from a model to a physically pruned model:

    pruned, report = optprune.prune(model, budget=0.5, data=(X, y))

The default (``importance="calibrated"``) is the loss-calibrated pipeline of
``optprune.nn.pipeline``: Fisher saliency, measured per-slot loss curves as the
objective of the exact search, the k best proven allocations measured after
reconstruction. Any registered score (``importance="flap"``, ...) instead maximizes
its sum exactly. The steps (each available on its own): ``discover`` the coupled
groups and their exact costs -> score them -> ``problem_from_structures`` (exact
costs, including the bilinear cost of weights pruned on both sides) -> add the
budgets and constraints -> ``allocate`` exactly (or a baseline rule, for comparison)
-> reconstruct (optional) -> ``apply_mask``. The report carries the solver's proof
(objective, bound, gap), the costs before and after (predicted by the cost model and
measured on the pruned model), the baselines on the same instance and what each
stage of the pipeline measured.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn

from ..alloc import AllocationProblem, allocate
from ..alloc.baselines import RULES, run_baselines
from ..errors import ValidationError, check
from .bridge import problem_from_structures
from .fisher import FisherResult
from .importance import score
from .pipeline import CalibrationOptions, calibrated_selection, run_fisher
from .reconstruct import reconstruct as reconstruct_layers
from .structures import StructureSet, count_flops, discover
from .surgery import apply_mask

__all__ = ["prune", "PruneReport", "build_problem", "SELECTIONS"]

SELECTIONS = ("exact", *RULES)


@dataclass(frozen=True)
class PruneReport:
    importance: str
    selection: str
    kept_ids: list[str] = field(repr=False)
    n_groups: int
    n_kept: int
    before: dict[str, int]
    predicted: dict[str, int]
    after: dict[str, int]
    budgets: dict[str, float]
    allocation: dict[str, Any] | None
    baselines: dict[str, Any]
    times_s: dict[str, float]
    violations: list[str] = field(default_factory=list)
    # What each stage measured (default pipeline: Fisher, curves, candidates with
    # predicted / masked / reconstructed calibration loss, reconstruction per layer).
    stages: dict[str, Any] = field(default_factory=dict, repr=False)
    reconstructed: bool = False

    @property
    def params_ratio(self) -> float:
        return self.after["params"] / self.before["params"]

    @property
    def flops_ratio(self) -> float:
        return self.after["flops"] / max(self.before["flops"], 1)

    def to_dict(self, with_ids: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "kept_ids"}
        d["params_ratio"], d["flops_ratio"] = self.params_ratio, self.flops_ratio
        if with_ids:
            d["kept_ids"] = self.kept_ids
        return d


def _fraction(v: Any, what: str) -> float:
    check(isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 1, f"The {what}",
          "a fraction of the dense model in (0, 1]", v)
    return float(v)


def build_problem(structures: StructureSet, scores: np.ndarray, budget: float | dict | None,
                  flops: float | None = None, multiples: int | dict[str, int] | None = None,
                  min_keep: int | float = 1, allow_empty_layers: bool = False,
                  constraints: Callable | Sequence[Callable] | None = None,
                  name: str = "model") -> tuple[AllocationProblem, dict[str, float]]:
    """The allocation problem ``prune`` solves; returns it and the relative budgets."""
    p = problem_from_structures(structures, scores, name=name)
    budgets: dict[str, float] = {}
    if isinstance(budget, dict):
        for r, v in budget.items():
            check(r in ("params", "flops"), "A budget resource", "'params' or 'flops'", r)
            budgets[r] = _fraction(v, f"budget on {r!r}")
    elif budget is not None:
        budgets["params"] = _fraction(budget, "'budget' (kept parameters)")
    if flops is not None:
        budgets["flops"] = _fraction(flops, "'flops' cap (kept MACs)")
    for r, v in budgets.items():
        p.add_budget(r, max=v, relative=True)
    if multiples is not None:
        if isinstance(multiples, int):
            p.add_multiple(None, None, multiples)
        else:
            kinds = {k for _, k in p.slots()}
            for kind, m in multiples.items():
                if kind in kinds:
                    p.add_multiple(None, kind, int(m))
    if not allow_empty_layers:
        check(min_keep is not None and min_keep > 0, "The 'min_keep' of prune",
              "positive (or pass allow_empty_layers=True)", min_keep)
        p.add_count_bounds(None, None, min=min_keep, relative=isinstance(min_keep, float))
    for fn in ([constraints] if callable(constraints) else list(constraints or [])):
        fn(p)
    return p, budgets


def _baselines_of(p: AllocationProblem) -> dict[str, Any]:
    """The baseline rules on the score problem (Fisher saliency), for the report."""
    p.diagnose()
    return {k: v.to_dict() for k, v in run_baselines(p).items()}


@dataclass
class _Chosen:
    """A selection and what made it, for the report."""

    keep: np.ndarray
    allocation: dict[str, Any] | None = None
    baselines: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    stages: dict[str, Any] = field(default_factory=dict)
    work: StructureSet | None = None  # the refit copy the default pipeline measured
    refit: bool = True  # False: the pipeline measured its selection better unrefit


def _select_calibrated(structures: StructureSet, p: AllocationProblem, data: Any,
                       opts: CalibrationOptions, fisher: FisherResult | None, do_rec: bool,
                       solver: dict[str, Any], baselines: bool) -> _Chosen:
    base = _baselines_of(p) if baselines else {}
    sel = calibrated_selection(structures, p, data, opts, refit=do_rec, fisher=fisher, **solver)
    alloc = sel.allocation
    alloc.pop("baselines", None)
    return _Chosen(sel.keep, alloc, base, stages=sel.to_dict(), work=sel.structures,
                   refit=sel.reconstruction is not None)


def _select_exact(p: AllocationProblem, solver: dict[str, Any], baselines: bool) -> _Chosen:
    r = allocate(p, baselines=baselines, **solver)
    if r.keep is None:
        raise ValidationError(
            f"The solver stopped ({r.solve.termination.value}) without a selection; raise "
            "time_limit_s.")
    alloc = r.to_dict()
    return _Chosen(r.keep, alloc, alloc.pop("baselines"))


def _select_rule(p: AllocationProblem, selection: str, strict: bool) -> _Chosen:
    p.diagnose()
    res = run_baselines(p, [selection])[selection]
    if not res.feasible and strict:
        raise ValidationError(f"The {selection!r} rule breaks the constraints: "
                              + "; ".join(res.violations[:5]))
    return _Chosen(res.keep, None, {selection: res.to_dict()}, list(res.violations))


def _reasons(frozen: dict[str, str], most: int = 4) -> str:
    items = [f"{k}: {v}" for k, v in list(frozen.items())[:most]]
    more = f" (+{len(frozen) - most} more)" if len(frozen) > most else ""
    return ("; ".join(items) + more) if items else "no Linear or convolution layer"


def prune(model: nn.Module, importance: str | Callable | np.ndarray = "calibrated",
          budget: float | dict | None = 0.5, *, input_shape: Sequence[int] | None = None,
          data: Any = None, flops: float | None = None,
          multiples: int | dict[str, int] | None = None, min_keep: int | float = 1,
          allow_empty_layers: bool = False,
          constraints: Callable | Sequence[Callable] | None = None,
          selection: str = "exact", backend: str = "highs", time_limit_s: float | None = None,
          rel_gap: float = 1e-6, baselines: bool = True, exclude: Sequence[str] = (),
          structures: StructureSet | None = None, bias_compensation: bool = False,
          reconstruct: bool | None = None, calibration: CalibrationOptions | None = None,
          reinit: bool = False, inplace: bool = False,
          importance_kw: dict[str, Any] | None = None,
          strict: bool = True) -> tuple[nn.Module, PruneReport]:
    """Prune ``model`` to ``budget`` (kept fraction of the dense parameters, or
    {"params": f, "flops": g}).

    importance: "calibrated" (the default pipeline, needs ``data``: loss-unit Fisher
        saliency, measured per-slot loss curves (skipped on models where they would cost
        more than ``calibration.auto_macs``), the exact search with the best allocations
        measured after reconstruction; see optprune.nn.pipeline), or any registered
        score by name ("magnitude", "taylor", "wanda", "flap", "fisher", ...), a
        callable or an array (one per group); those maximize the summed score.
    reconstruct: refit every consumer of a pruned layer by ridge least squares toward
        the dense outputs on ``data`` (optprune.nn.reconstruct); default True for
        "calibrated", False otherwise (give it to any rule to compare selections on equal
        terms).
    calibration: CalibrationOptions of the default pipeline.
    flops: cap on kept MACs per sample (fraction of dense).
    multiples: width multiple for every slot (int) or per kind ({"head": 2, "ffn": 16}).
    min_keep: least structures kept per (layer, kind) (int, or a fraction of its width);
        a budget that can only be met by emptying a layer is an error unless
        ``allow_empty_layers``.
    constraints: callables ``fn(problem)`` adding anything else (groups, latency tables...).
    selection: "exact" (the solver) or a baseline rule: topk_rounded, score_fill,
        density_greedy, uniform (the mask is checked; a rule that breaks a constraint
        raises with the violations, or with ``strict=False`` is applied anyway and its
        violations are reported). With "calibrated" a rule ranks by the Fisher saliency.
    """
    check(isinstance(model, nn.Module), "The 'model' of prune", "a torch.nn.Module",
          type(model).__name__)
    check(selection in SELECTIONS, "The 'selection' of prune", f"one of {list(SELECTIONS)}",
          selection)
    t0 = time.perf_counter()
    if structures is None:
        check(input_shape is not None or data is not None, "The inputs of prune",
              "data (a tensor, (X, y), a dict of model inputs...) or input_shape (one "
              "sample's shape)", None)
        structures = discover(model, input_shape, data=data, exclude=exclude)
    check(len(structures.groups) > 0, "The number of prunable groups", "positive", 0,
          f"Nothing in {type(model).__name__} is prunable; every channel space is kept "
          f"dense for a reason: {_reasons(structures.frozen)}")
    t1 = time.perf_counter()
    calibrated = isinstance(importance, str) and importance == "calibrated"
    do_rec = calibrated if reconstruct is None else bool(reconstruct)
    if calibrated or do_rec:
        check(data is not None, "The 'data' of prune", "calibration data (X, or (X, y))",
              None, "The default pipeline and reconstruction measure the model on it; for a "
              "data-free selection pass importance='magnitude' and reconstruct=False.")
    if do_rec and bias_compensation:
        raise ValidationError("Pass either reconstruct=True or bias_compensation=True: the "
                              "reconstruction contains the bias compensation as a special case.")
    opts = calibration or CalibrationOptions()
    fisher = None
    if calibrated:
        fisher = run_fisher(structures, data, opts)
        s = fisher.saliency
        name = "calibrated"
    else:
        s = score(structures, importance, data, **(importance_kw or {}))
        name = importance if isinstance(importance, str) else getattr(importance, "__name__",
                                                                      "custom")
    t2 = time.perf_counter()
    p, budgets = build_problem(structures, s, budget, flops, multiples, min_keep,
                               allow_empty_layers, constraints, name=type(model).__name__)
    solver = {"backend": backend, "time_limit_s": time_limit_s, "rel_gap": rel_gap}
    if selection == "exact" and calibrated:
        chosen = _select_calibrated(structures, p, data, opts, fisher, do_rec, solver, baselines)
    elif selection == "exact":
        chosen = _select_exact(p, solver, baselines)
    else:
        chosen = _select_rule(p, selection, strict)
    keep, work, stages = chosen.keep, chosen.work, chosen.stages
    if do_rec and work is None:
        work = dataclasses.replace(structures, model=copy.deepcopy(structures.model))
        rec = reconstruct_layers(work, keep, data, alphas=opts.alphas,
                                 batch_size=opts.batch_size, scope=opts.reconstruct_scope,
                                 max_weight_change=opts.max_weight_change,
                                 guard_error=opts.guard_error)
        stages["reconstruction"] = rec.to_dict()
    t3 = time.perf_counter()
    predicted = structures.predict(keep)
    if work is not None:
        if inplace:
            structures.model.load_state_dict(work.model.state_dict())
            work = structures
        pruned = apply_mask(work, keep, inplace=True, reinit=reinit,
                            allow_empty=allow_empty_layers)
    else:
        pruned = apply_mask(structures, keep, inplace=inplace,
                            bias_compensation=bias_compensation, data=data, reinit=reinit,
                            allow_empty=allow_empty_layers)
    t4 = time.perf_counter()
    after = {"params": sum(q.numel() for q in pruned.parameters()),
             "flops": count_flops(pruned, structures.input_shape,
                                  inputs=structures.example)}
    before = {"params": structures.dense_params, "flops": structures.dense_flops}
    report = PruneReport(
        importance=str(name), selection=selection,
        kept_ids=[g.id for g, k in zip(structures.groups, keep) if k],
        n_groups=len(structures.groups), n_kept=int(keep.sum()), before=before,
        predicted=predicted, after=after, budgets=budgets, allocation=chosen.allocation,
        baselines=chosen.baselines, violations=chosen.violations, stages=stages,
        reconstructed=do_rec and chosen.refit,
        times_s={"discover": t1 - t0, "score": t2 - t1, "select": t3 - t2, "surgery": t4 - t3,
                 "total": t4 - t0},
    )
    return pruned, report
