"""The default pruning pipeline: loss-calibrated objective, exact search, measured
choice, reconstruction (formulations/reconstruction.md).

1. **Fisher** (``fisher.mask_fisher``): the Gauss-Newton matrix of the loss against
   the dense model in the structures' masks; its per-slot blocks give each slot's
   keep order (``sensitivity.slot_orders``).
2. **Curves** (``sensitivity.measure_curves``): delta_s(k), the measured calibration
   loss with only slot s pruned to width k and its consumers refit.
3. **Exact search**: the allocation problem (exact parameter/MAC costs and every
   constraint the caller set) with slot s worth -delta_s(k_s)
   (``AllocationProblem.set_slot_values``), solved for its ``k_best`` best
   allocations, each proven (``alloc.allocate_k_best``); and the same problem with
   every structure worth its Fisher saliency (Kwon et al.'s objective, here solved
   exactly) for its ``fisher_proposals`` best allocations.
4. **Measured choice**: every distinct candidate is reconstructed layer by layer
   (``reconstruct.reconstruct``, with its guard: a layer whose refit would move its
   weights by more than ``max_weight_change`` of their dense norm to rebuild an output
   the removal mostly took keeps its dense weights) and its calibration loss measured,
   with and without the refit (a refit is kept only where it measures better); the
   lowest wins.
   The per-slot losses are not additive (pruning several slots compounds) and the
   Fisher saliency is a second-order estimate, so the proven optimum of either sum is
   a proposal, and the measurement decides. (On the digits ViT the two objectives'
   models are within noise of each other; benchmarks/BENCHMARKS.md.) The measurement
   is on calibration data, which cannot see a refit that fails on data of another
   form: the guard is what keeps such refits out (formulations/reconstruction.md,
   "The guard").

``curves=False`` skips stage 2 (the Fisher proposals alone, several times faster on a
large model); the default ``curves="auto"`` skips it when its estimated cost exceeds
``auto_macs`` multiply-accumulates (on all-MiniLM-L6-v2 the curves' proposals lost the
measured choice to the Fisher proposal at 30% and 50% removed, and cost 1.6-1.7 times
the CPU time with a cheap curve setting; benchmarks/BENCHMARKS.md). A single candidate skips the choice.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..alloc import AllocationProblem
from ..errors import ValidationError, check
from .fisher import FisherResult, mask_fisher, output_kind
from .reconstruct import DEFAULT_ALPHAS, GUARD_ERROR, ReconstructionReport, reconstruct
from .sensitivity import (Evaluator, SlotCurve, additivity, measure_curves,
                          measured_widths, slot_orders)
from .structures import StructureSet

__all__ = ["CalibrationOptions", "CalibratedSelection", "calibrated_selection",
           "calibrated_problem", "resolve_options", "run_fisher"]


@dataclass(frozen=True)
class CalibrationOptions:
    """Settings of the default pipeline (each stage's knob, with the default used by
    ``optprune.prune``).

    k_best: allocations proposed by the solver and measured after reconstruction
        (None: 4 when the curves are measured, 1 when only the Fisher saliency
        proposes: its next-best allocations differ from the first by a structure or two).
    max_widths: widths measured per slot (more are interpolated).
    order: keep order within a slot: "block" (Gauss-Newton block greedy), "diag"
        (Fisher saliency), or "layerwise" (greedy elimination of the consumer's refit
        error, optprune.nn.layerwise).
    fisher_labels: "data" (the data's labels: the empirical Fisher of Kwon et al.),
        "model" (``fisher_draws`` labels or projections drawn from the model: the
        Gauss-Newton matrix of the loss against the dense model), or "auto": "data" when
        the data carries labels and the model outputs logits, else "model". (On the
        digits ViT one draw from the model ordered the layers' structures worse than the
        labels did: 0.86 vs 0.91 one-shot accuracy at 47% parameters, seed 1.)
    reconstruct_scope: "all" (every layer from the first pruned consumer on, refit to
        its dense outputs) or "consumers" (only the layers whose inputs lost columns);
        see ``reconstruct.reconstruct``.
    curve_alpha: relative ridge of the single-layer refit inside the curves.
    alphas: relative ridges tried by the reconstruction (one whole refit each, the one
        whose model output is closest to the dense one on held-out calibration batches
        wins; chosen on the best proposal, reused for the others).
    additivity_samples: random allocations measured to report how additive the
        per-slot losses are (0: skip; costs one calibration pass each).
    curve_samples: calibration samples the curves (and the measured choice) use: the
        first ones of ``data`` (None: all). The Fisher and the reconstruction use all.
    curves: measure the per-slot curves and propose the ``k_best`` allocations of
        their sum (False: only the Fisher proposals, ``k_best`` of them; "auto": True
        when the curves' estimated cost is at most ``auto_macs``, else False).
    auto_macs: the cost above which ``curves="auto"`` skips the curves, in
        multiply-accumulates: (measured points: every slot's measured widths but the
        full one) x (curve samples) x (the dense model's MACs per sample), an upper
        bound (a point re-runs the model from its slot on). The default 1e12 is tens of
        seconds of one CPU core; the project's digits MLP, CNN and ViT estimate 6e8 to
        2e10 on 512 samples (curves on), all-MiniLM-L6-v2 on 128 sequences of 64
        tokens 1.8e13 (off). The choice and its estimate are in
        ``CalibratedSelection.settings``.
    fisher_proposals: best allocations of the summed Fisher saliency added to the
        measured choice when ``curves`` is on (0: none).
    max_weight_change, guard_error: the reconstruction's guard (``reconstruct.reconstruct``):
        a layer whose refit moves its weights by more than ``max_weight_change`` of their
        dense norm, where the removal took more than ``guard_error`` of its output's
        variance, keeps its dense weights (``max_weight_change=None``: no guard).
    """

    k_best: int | None = None
    max_widths: int = 24
    order: str = "block"
    fisher_labels: str = "auto"
    fisher_draws: int = 4
    curve_alpha: float = 0.1
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    additivity_samples: int = 0
    curve_samples: int | None = 512
    reconstruct_scope: str = "all"
    batch_size: int = 128
    seed: int = 0
    curves: bool | str = "auto"
    auto_macs: float = 1e12
    fisher_proposals: int = 1
    max_weight_change: float | None = 1.0
    guard_error: float = GUARD_ERROR

    def __post_init__(self) -> None:
        check(self.k_best is None or (isinstance(self.k_best, int) and self.k_best >= 1),
              "The 'k_best' of CalibrationOptions", "None or an int >= 1", self.k_best)
        check(isinstance(self.fisher_proposals, int) and self.fisher_proposals >= 0,
              "The 'fisher_proposals' of CalibrationOptions", "an int >= 0",
              self.fisher_proposals)
        check(isinstance(self.curves, bool) or self.curves == "auto", "The 'curves' of "
              "CalibrationOptions", "True, False or 'auto'", self.curves)
        check(isinstance(self.auto_macs, (int, float)) and self.auto_macs >= 0,
              "The 'auto_macs' of CalibrationOptions", "a number >= 0", self.auto_macs)
        check(self.order in ("block", "diag", "layerwise"), "The 'order' of "
              "CalibrationOptions", "'block', 'diag' or 'layerwise'", self.order)
        check(self.fisher_labels in ("auto", "data", "model"), "The 'fisher_labels' of "
              "CalibrationOptions", "'auto', 'data' or 'model'", self.fisher_labels)
        check(self.reconstruct_scope in ("all", "consumers"), "The 'reconstruct_scope' of "
              "CalibrationOptions", "'all' or 'consumers'", self.reconstruct_scope)
        check(isinstance(self.curve_alpha, (int, float)) and self.curve_alpha >= 0,
              "The 'curve_alpha' of CalibrationOptions", "a number >= 0", self.curve_alpha)
        check(self.max_weight_change is None or (isinstance(self.max_weight_change,
                                                            (int, float))
                                                 and self.max_weight_change > 0),
              "The 'max_weight_change' of CalibrationOptions", "None or a number > 0",
              self.max_weight_change)
        check(isinstance(self.guard_error, (int, float)) and self.guard_error >= 0,
              "The 'guard_error' of CalibrationOptions", "a number >= 0", self.guard_error)


@dataclass
class CalibratedSelection:
    """What the pipeline chose and what each stage measured. ``model`` is the
    reconstructed (still dense-shaped, masked) copy for ``keep``; surgery comes next."""

    keep: np.ndarray = field(repr=False)
    structures: StructureSet = field(repr=False)
    fisher: FisherResult = field(repr=False)
    curves: dict = field(repr=False)
    candidates: list[dict[str, Any]]
    chosen: int
    reconstruction: ReconstructionReport | None = field(repr=False)
    additivity: dict[str, Any] | None
    times_s: dict[str, float]
    allocation: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen, "candidates": self.candidates,
            "curves": [c.to_dict() for c in self.curves.values()],
            "reconstruction": None if self.reconstruction is None else self.reconstruction.to_dict(),
            "additivity": self.additivity, "times_s": self.times_s,
            "settings": self.settings,
            "fisher": {"samples": self.fisher.n_samples, "kind": self.fisher.kind,
                       "draws": self.fisher.draws},
        }


def run_fisher(structures: StructureSet, data: Any, opts: CalibrationOptions) -> FisherResult:
    """Stage 1 with the options' settings."""
    labels = opts.fisher_labels
    if labels == "auto":
        labels = "data" if output_kind(structures) == "logits" and _has_targets(
            structures, data) else "model"
    return mask_fisher(structures, data, labels=labels,
                       draws=1 if labels == "data" else opts.fisher_draws,
                       seed=opts.seed, batch_size=opts.batch_size, blocks=opts.order == "block")


def resolve_options(opts: CalibrationOptions, structures: StructureSet,
                    problem: AllocationProblem, data: Any) -> dict[str, Any]:
    """What the pipeline will run: ``curves`` (bool), ``k_best`` (int), and for
    ``curves="auto"`` the estimate it was decided on (``curve_macs``: measured points x
    curve samples x dense MACs per sample, against ``auto_macs``)."""
    from .calib import n_samples

    out: dict[str, Any] = {"curves": opts.curves}
    if opts.curves == "auto":
        n = 0
        for x, _ in structures.batches(data, opts.batch_size, "the sensitivity curves"):
            n += n_samples(x)
            if opts.curve_samples is not None and n >= opts.curve_samples:
                n = opts.curve_samples
                break
        points = 0
        for s, ix in problem.slots().items():
            points += int(np.sum(measured_widths(problem, s, opts.max_widths) != ix.size))
        macs = float(points) * n * float(structures.dense_flops)
        out.update(curves=macs <= opts.auto_macs, curve_macs=macs, curve_points=points,
                   curve_samples=n, auto_macs=opts.auto_macs)
    out["k_best"] = opts.k_best if opts.k_best is not None else (4 if out["curves"] else 1)
    return out


def _has_targets(structures: StructureSet, data: Any) -> bool:
    _, y = next(iter(structures.batches(data, 1, "the Fisher saliency")))
    return y is not None


def calibrated_problem(problem: AllocationProblem, structures: StructureSet,
                       curves: dict[tuple[str, str], SlotCurve]) -> AllocationProblem:
    """A copy of ``problem`` whose slot s is worth -delta_s(k) at width k, with the
    slot's keep order from its curve."""
    q = copy.deepcopy(problem)
    ids = structures.ids
    for (layer, kind), c in curves.items():
        q.set_slot_values(layer, kind, c.values(), order=[ids[i] for i in c.order])
    return q


def calibrated_selection(structures: StructureSet, problem: AllocationProblem, data: Any,
                         options: CalibrationOptions | None = None, *, backend: str = "highs",
                         time_limit_s: float | None = None, rel_gap: float = 1e-6,
                         refit: bool = True, fisher: FisherResult | None = None
                         ) -> CalibratedSelection:
    """Run the pipeline on ``structures`` (whose groups are ``problem``'s structures,
    in order) with calibration ``data``; ``fisher``: stage 1's result if already
    computed. ``structures.model`` is not changed."""
    opts = options or CalibrationOptions()
    check(problem.n == len(structures.groups), "The problem of calibrated_selection",
          f"built from these structures ({len(structures.groups)} groups)", problem.n)
    times: dict[str, float] = {}
    settings = resolve_options(opts, structures, problem, data)
    use_curves, k_best = settings["curves"], settings["k_best"]
    t = time.perf_counter()
    fr = fisher or run_fisher(structures, data, opts)
    times["fisher"] = time.perf_counter() - t
    t = time.perf_counter()
    # The consumers' Gram matrices (one more calibration pass) serve the curves' refits
    # only; without curves the evaluator just measures candidates.
    ev = Evaluator(structures, data, batch_size=opts.batch_size, refit=refit and use_curves,
                   alpha=opts.curve_alpha, max_samples=opts.curve_samples)
    curves: dict[tuple[str, str], SlotCurve] = {}
    if use_curves:
        curves = measure_curves(ev, problem, slot_orders(structures, fr, opts.order, ev),
                                max_widths=opts.max_widths, refit=refit)
    times["curves"] = time.perf_counter() - t
    t = time.perf_counter()
    proposals: list[tuple[str, Any]] = []
    if use_curves:
        proposals += [("curves", r) for r in _search(
            calibrated_problem(problem, structures, curves), k_best, backend,
            time_limit_s, rel_gap)]
    n_fisher = opts.fisher_proposals if use_curves else k_best
    if n_fisher:
        pf = copy.deepcopy(problem)
        pf.score = fr.saliency
        rest = time_limit_s  # one limit for both searches
        if time_limit_s is not None:
            rest = max(time_limit_s - (time.perf_counter() - t), 1e-3)
        proposals += [("fisher", r) for r in _search(pf, n_fisher, backend, rest, rel_gap)]
    times["search"] = time.perf_counter() - t
    unproven = [i for i, (_, r) in enumerate(proposals)
                if r.solve.termination.value != "optimal"]
    if unproven:
        warnings.warn(
            f"{len(unproven)} of {len(proposals)} proposed allocations are not proven optimal "
            f"(gaps {[proposals[i][1].solve.gap for i in unproven]}); the measured choice "
            "still applies, but raise time_limit_s for a proof.", stacklevel=3)
    t = time.perf_counter()
    candidates, chosen, work, rec = _measured_choice(structures, proposals, ev, data, opts,
                                                     refit)
    times["choice"] = time.perf_counter() - t
    add = None
    if opts.additivity_samples > 0 and curves:
        t = time.perf_counter()
        add = additivity(ev, problem, curves, opts.additivity_samples, opts.seed, refit=refit,
                         extra={"fisher": fr.saliency})
        times["additivity"] = time.perf_counter() - t
    keep = proposals[chosen][1].keep
    if work is None:  # unrefit: the masked copy of the dense model
        work = dataclasses.replace(structures, model=copy.deepcopy(structures.model))
    return CalibratedSelection(keep=keep, structures=work, fisher=fr, curves=curves,
                               candidates=candidates, chosen=chosen, reconstruction=rec,
                               additivity=add, times_s=times, settings=settings,
                               allocation=proposals[chosen][1].to_dict())


def _measured_choice(structures: StructureSet, proposals: list[tuple[str, Any]],
                     ev: Evaluator, data: Any, opts: CalibrationOptions, refit: bool
                     ) -> tuple[list[dict[str, Any]], int, StructureSet | None,
                                ReconstructionReport | None]:
    """Stage 4: every distinct proposal measured as it is and reconstructed (the refit
    kept only where it measures better); returns the candidates' records, the index of
    the lowest measured loss, and its reconstructed structures and report (None, None:
    the chosen one is best unrefit)."""
    candidates: list[dict[str, Any]] = []
    best: tuple[float, int, StructureSet | None, ReconstructionReport | None] = (
        math.inf, -1, None, None)
    alpha: float | None = None
    seen: dict[bytes, int] = {}
    for i, (source, r) in enumerate(proposals):
        keep = r.keep
        row: dict[str, Any] = {
            "rank": i, "source": source, "objective": r.solve.objective,
            "bound": r.solve.bound, "gap": r.solve.gap, "termination": r.solve.termination.value,
            "predicted_loss": (-float(r.solve.objective) if source == "curves"
                               and r.solve.objective is not None else None),
            "usage": r.usage}
        twin = seen.setdefault(np.asarray(keep, dtype=bool).tobytes(), i)
        if twin != i:  # the same keep set from the other objective: measured once
            row["same_as"] = twin
            candidates.append(row)
            continue
        row["loss_masked"] = ev.loss(keep, refit=False)
        work: StructureSet | None = None
        rec: ReconstructionReport | None = None
        if refit:
            work = dataclasses.replace(structures, model=copy.deepcopy(structures.model))
            # The ridge is chosen once, on the first proposal (a whole refit per
            # alpha); the other proposals are refit with it.
            rec = reconstruct(work, keep, data, batch_size=opts.batch_size,
                              alphas=opts.alphas if alpha is None else (alpha,),
                              scope=opts.reconstruct_scope,
                              max_weight_change=opts.max_weight_change,
                              guard_error=opts.guard_error)
            alpha = rec.alpha if alpha is None else alpha
            row["alpha"] = rec.alpha
            row["layers_kept_dense"] = [lr.consumer for lr in rec.layers if lr.kept_dense]
            row["loss_reconstructed"] = ev.loss(keep, on=work)
            # A refit is kept only where it measures better than no refit at all.
            row["refit_kept"] = row["loss_reconstructed"] <= row["loss_masked"]
            if not row["refit_kept"]:
                work, rec = None, None
        measured = min(row.get("loss_reconstructed", math.inf), row["loss_masked"])
        candidates.append(row)
        if measured < best[0]:
            best = (measured, i, work, rec)
    return candidates, best[1], best[2], best[3]


def _search(q: AllocationProblem, k: int, backend: str, time_limit_s: float | None,
            rel_gap: float) -> list[Any]:
    """The ``k`` best allocations of ``q``, each proven (or said not to be)."""
    from ..alloc import allocate_k_best

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fewer masks: said below, as an error
        results = allocate_k_best(q, k, backend=backend, time_limit_s=time_limit_s,
                                  rel_gap=rel_gap, baselines=False)
    results = [r for r in results if r.keep is not None]
    if not results:
        raise ValidationError("The solver stopped without any allocation; raise time_limit_s.")
    if len(results) < k and all(r.solve.is_optimal for r in results):
        raise ValidationError(
            f"The 'k_best' of the pipeline must be at most the number of distinct allocations "
            f"that satisfy the constraints ({len(results)}); got {k}. Pass "
            f"CalibrationOptions(k_best={len(results)}) or loosen the constraints.")
    return results
