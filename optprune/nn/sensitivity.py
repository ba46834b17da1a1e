"""Measured per-slot sensitivity curves (math in formulations/reconstruction.md).

For every slot s = (layer, kind) and every allowed width k, prune only s to its first
k structures in a keep order (``slot_orders``), refit the slot's consumers by ridge
least squares toward the dense weights (from the dense model's input statistics: with
every other slot dense, the consumer's inputs are the dense ones restricted to the kept
columns), and measure the loss against the dense model on calibration data
(``fisher.divergence``). delta_s(k) is that loss; the allocation then maximises
sum_s -delta_s(k_s) over the width vector subject to every constraint of the problem
(a multiple-choice knapsack: ``AllocationProblem.set_slot_values``).

When a slot allows more widths than ``max_widths``, an evenly spaced subset (always
with the smallest and the full width) is measured and delta is interpolated linearly
in between; the report says how many widths were measured per slot.

``additivity`` checks the model behind that objective: for random width vectors it
measures the joint loss (every slot pruned at once, every consumer refit the same way)
and returns its Spearman rank correlation with the sum of the per-slot losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..alloc import AllocationProblem
from ..errors import ValidationError, check
from .calib import (model_output, n_samples, run_model,
                    sample_input)
from .fisher import FisherResult, divergence, output_kind
from .reconstruct import _is_refittable, _taps, refit_from_stats, unfold_rows
from .resume import ForwardTrace, capture_outputs, skipping
from .structures import StructureSet

__all__ = ["SlotCurve", "Evaluator", "slot_orders", "measure_curves", "measured_widths", "additivity",
           "greedy_quadratic_order"]

Slot = tuple[str, str]


def greedy_quadratic_order(h: np.ndarray) -> np.ndarray:
    """Keep order of a slot from its Gauss-Newton block H: repeatedly remove the
    structure whose removal adds least to 1/2 m_R^T H m_R (R = removed so far), i.e.
    the smallest H_gg + 2 sum_{r in R} H_gr; the keep order is the reverse removal
    order (nested sets, one per width)."""
    g = h.shape[0]
    alive = np.ones(g, dtype=bool)
    inter = np.zeros(g)
    removed = []
    d = np.diag(h).copy()
    for _ in range(g):
        cost = np.where(alive, d + 2.0 * inter, np.inf)
        j = int(np.argmin(cost))
        removed.append(j)
        alive[j] = False
        inter += h[:, j]
    return np.asarray(removed[::-1], dtype=np.int64)


def slot_orders(structures: StructureSet, fisher: FisherResult, method: str = "block",
                evaluator: "Evaluator | None" = None) -> dict[Slot, np.ndarray]:
    """Per slot, its groups' positions (in ``structures.groups``) in keep order:
    ``"block"`` the greedy on the slot's Gauss-Newton block (within-layer
    interactions), ``"diag"`` by decreasing saliency, ``"layerwise"`` the greedy backward
    elimination of the slot's consumer output error after a ridge refit
    (``optprune.nn.layerwise``; slots feeding several consumers use "block")."""
    check(method in ("block", "diag", "layerwise"), "The slot order 'method'",
          "'block', 'diag' or 'layerwise'", method)
    check(method != "layerwise" or evaluator is not None, "The evaluator of a layerwise order",
          "an Evaluator (its dense input statistics)", None)
    out = {}
    for s, ix in structures.layer_kind_index().items():
        lw = _layerwise_order(structures, evaluator, ix) if (
            method == "layerwise" and evaluator is not None) else None
        if lw is not None:
            out[s] = lw
        elif method != "diag" and s in fisher.blocks:
            out[s] = ix[greedy_quadratic_order(fisher.blocks[s])]
        else:
            out[s] = ix[np.lexsort((ix, -fisher.diag[ix]))]
    return out


def _layerwise_order(structures: StructureSet, ev: "Evaluator", ix: np.ndarray
                     ) -> np.ndarray | None:
    """Keep order of one slot by greedy elimination of its consumer's refit error, from
    the dense inputs' Gram matrix (target: the dense outputs); None when the slot does
    not feed exactly one refittable consumer."""
    from .layerwise import LayerStats, greedy_elimination

    cons = {c for i in ix for c, _ in structures.groups[i].consumers}
    if len(cons) != 1 or next(iter(cons)) not in ev.gram:
        return None
    c = next(iter(cons))
    mod = ev.named[c]
    w0, b0 = ev.saved[c]
    w = w0.reshape(w0.shape[0], -1).to(torch.float64).cpu().numpy()
    if b0 is not None:
        w = np.hstack([w, b0.to(torch.float64).cpu().numpy()[:, None]])
    g = ev.gram[c]
    gw = g @ w.T
    stats = LayerStats(g, gw, max(float(np.sum(w.T * gw)), 0.0), int(round(g[-1, -1]))
                       if b0 is not None else ev.n_samples, w, has_intercept=b0 is not None)
    taps = _taps(mod)
    groups = [np.concatenate([np.arange(ch * taps, (ch + 1) * taps)
                              for ch in dict(structures.groups[i].consumers)[c]]) for i in ix]
    d = g.shape[0] - (1 if b0 is not None else 0)
    lam = ev.alpha * float(np.mean(np.diag(g)[:d]))
    curve = greedy_elimination(stats, groups, lam)
    return ix[np.asarray(curve.order)[::-1]]


@dataclass(frozen=True)
class SlotCurve:
    """delta[k] for every width k = 0..width (interpolated between measured widths);
    ``measured`` lists the widths really evaluated; ``order`` the keep order."""

    slot: Slot
    order: np.ndarray = field(repr=False)
    delta: np.ndarray = field(repr=False)
    measured: np.ndarray = field(repr=False)

    def values(self) -> np.ndarray:
        return -self.delta

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.slot[0], "kind": self.slot[1],
                "measured_widths": self.measured.tolist(),
                "delta_at_measured": self.delta[self.measured].tolist()}


class Evaluator:
    """Loss of masked/refit variants of ``structures.model`` against the dense
    outputs on fixed calibration batches, with each consumer's single-layer ridge refit
    computed from the dense input statistics."""

    def __init__(self, structures: StructureSet, data: Any, *, batch_size: int = 128,
                 refit: bool = True, alpha: float = 0.1, kind: str | None = None,
                 max_samples: int | None = None) -> None:
        check(max_samples is None or (isinstance(max_samples, int) and max_samples >= 1),
              "The 'max_samples' of the evaluator", "None or a positive int", max_samples)
        self.ss = structures
        self.model = structures.model
        self.named = dict(self.model.named_modules())
        self.kind = kind or output_kind(structures)
        self.batches = []
        n = 0
        for x, _ in structures.batches(data, batch_size, "the sensitivity curves"):
            if max_samples is not None and n + n_samples(x) > max_samples:
                x = sample_input(x, max_samples - n)
            self.batches.append(x)
            n += n_samples(x)
            if max_samples is not None and n >= max_samples:
                break
        self.n_samples = n
        self.alpha = alpha
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            self.ref = [self._out(self.model, x).detach() for x in self.batches]
        self.model.train(was)
        check(all(bool(torch.isfinite(r).all()) for r in self.ref),
              "The dense model's outputs on the calibration data", "finite", "NaN or inf",
              "Check the data and the model's weights.")
        cons = sorted({c for g in structures.groups for c, _ in g.consumers})
        self.consumers = [c for c in cons if refit and _is_refittable(self.named[c])]
        self.gram = self._grams() if self.consumers else {}
        self.saved = {c: (self.named[c].weight.detach().clone(),
                          None if self.named[c].bias is None else self.named[c].bias.detach().clone())
                      for c in self.consumers}
        self.trace = ForwardTrace(self.model, lambda: run_model(self.model, self.batches[0]))
        self.cache: dict[str, list[Any]] = {}

    @staticmethod
    def _out(model: torch.nn.Module, x: Any) -> torch.Tensor:
        return model_output(run_model(model, x, "the sensitivity curves"))

    def _grams(self) -> dict[str, np.ndarray]:
        acc: dict[str, np.ndarray] = {}

        def make(c: str):
            mod = self.named[c]

            def hook(_m, args):
                x = unfold_rows(mod, args[0].detach()).to(torch.float64)
                if mod.bias is not None:
                    x = torch.cat([x, x.new_ones(x.shape[0], 1)], 1)
                g = (x.T @ x).cpu().numpy()
                acc[c] = g if c not in acc else acc[c] + g
            return hook

        hs = [self.named[c].register_forward_pre_hook(make(c)) for c in self.consumers]
        try:
            with torch.no_grad():
                for x in self.batches:
                    run_model(self.model, x)
        finally:
            for h in hs:
                h.remove()
        return acc

    def _refit(self, keep: np.ndarray) -> None:
        masks = self.ss.consumer_masks(keep)
        for c in self.consumers:
            m = masks.get(c)
            if m is None or bool((m > 0.5).all()):
                continue
            mod = self.named[c]
            taps = _taps(mod)
            chans = np.flatnonzero(m.numpy() > 0.5)
            cols = (chans[:, None] * taps + np.arange(taps)[None, :]).ravel()
            w0, b0 = self.saved[c]
            theta_d = w0.reshape(w0.shape[0], -1).to(torch.float64).T.cpu().numpy()
            idx = cols
            if b0 is not None:
                theta_d = np.vstack([theta_d, b0.to(torch.float64).cpu().numpy()[None]])
                idx = np.concatenate([cols, [theta_d.shape[0] - 1]])
            g = self.gram[c]
            gss = g[np.ix_(idx, idx)]
            # With every other slot dense, Y = Xa Theta_d, so C = G[S, :] Theta_d.
            cs = g[idx] @ theta_d
            scale = float(np.mean(np.diag(gss)[:cols.size])) if cols.size else 1.0
            th = refit_from_stats(gss, cs, theta_d[idx], self.alpha * scale, b0 is not None)
            with torch.no_grad():
                w2 = mod.weight.view(mod.weight.shape[0], -1)
                ci = torch.as_tensor(cols, dtype=torch.long, device=w2.device)
                w2[:, ci] = torch.as_tensor(th[:cols.size].T, dtype=w2.dtype, device=w2.device)
                if b0 is not None:
                    mod.bias.copy_(torch.as_tensor(th[cols.size], dtype=mod.bias.dtype,
                                                   device=mod.bias.device))

    def _restore(self) -> None:
        with torch.no_grad():
            for c, (w, b) in self.saved.items():
                mod = self.named[c]
                mod.weight.copy_(w)
                if b is not None:
                    mod.bias.copy_(b)

    def loss(self, keep: np.ndarray, refit: bool = True, on: StructureSet | None = None) -> float:
        """Mean divergence over the calibration samples of the model pruned to
        ``keep`` (masked), with the consumers refit if ``refit``; ``on``: evaluate
        another copy of the model (its own weights, e.g. already reconstructed) instead."""
        keep = np.asarray(keep, dtype=bool)
        ss = on or self.ss
        refit = refit and on is None and bool(self.consumers)
        was = ss.model.training
        ss.model.eval()
        try:
            if refit:
                self._refit(keep)
            tot, n = 0.0, 0
            # Modules that end before the first changed consumer compute what the dense
            # model does: their outputs are cached once and their forward skipped.
            closed: list[str] = []
            if on is None:
                masks = self.ss.consumer_masks(keep)
                changed = [c for c, m in masks.items() if bool((m < 0.5).any())]
                closed = self.trace.closed_before(changed)
            skip = [c for c in closed if c in self.cache]
            grab = [c for c in closed if c not in self.cache]
            grabbed: dict[str, Any] = {}
            with torch.no_grad(), ss.masked(keep):
                for i, (x, r) in enumerate(zip(self.batches, self.ref)):
                    with skipping(ss.model, {c: self.cache[c][i] for c in skip}), \
                            capture_outputs(ss.model, grab, grabbed):
                        d = divergence(self._out(ss.model, x), r, self.kind)
                    for c in grab:
                        self.cache.setdefault(c, []).append(grabbed[c])
                    tot += float(d.sum())
                    n += d.shape[0]
        finally:
            if refit:
                self._restore()
            ss.model.train(was)
        if not math.isfinite(tot):
            raise ValidationError("The calibration loss of a pruned variant is NaN or infinite; "
                                  "check the data and the model.")
        return tot / max(n, 1)


def _grid(allowed: np.ndarray, max_widths: int) -> np.ndarray:
    if allowed.size <= max_widths:
        return allowed
    pick = np.unique(np.round(np.linspace(0, allowed.size - 1, max_widths)).astype(int))
    return allowed[pick]


def measured_widths(problem: AllocationProblem, slot: Slot, max_widths: int) -> np.ndarray:
    """The widths of ``slot`` the curves evaluate: its allowed widths, or ``max_widths``
    of them spread over the range (the smallest and the largest included)."""
    return _grid(np.asarray(problem.allowed_counts(slot), dtype=np.int64), max_widths)


def measure_curves(evaluator: Evaluator, problem: AllocationProblem,
                   orders: dict[Slot, np.ndarray], *, max_widths: int = 24,
                   refit: bool = True) -> dict[Slot, SlotCurve]:
    """delta_s(k) for every slot of ``problem`` (whose slots are the structures'
    (layer, kind) and whose structure order is ``evaluator.ss.groups``)."""
    check(isinstance(max_widths, int) and max_widths >= 2, "The 'max_widths' of the curves",
          "an int >= 2", max_widths)
    n = len(evaluator.ss.groups)
    curves = {}
    for s, ix in problem.slots().items():
        order = orders[s]
        width = ix.size
        meas = measured_widths(problem, s, max_widths)
        delta_m = []
        for k in meas:
            if k == width:
                delta_m.append(0.0)
                continue
            keep = np.ones(n, dtype=bool)
            keep[order[k:]] = False
            delta_m.append(evaluator.loss(keep, refit=refit))
        delta = np.interp(np.arange(width + 1), meas, np.asarray(delta_m))
        curves[s] = SlotCurve(s, order, delta, meas)
    return curves


def additivity(evaluator: Evaluator, problem: AllocationProblem,
               curves: dict[Slot, SlotCurve], samples: int = 16, seed: int = 0,
               refit: bool = True, extra: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Spearman rank correlation between the joint loss of random width vectors and
    the sum of their per-slot losses (and any ``extra`` per-structure cost vectors
    summed over the removed structures, e.g. the Fisher saliency)."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    n = len(evaluator.ss.groups)
    joint, pred = [], []
    other: dict[str, list[float]] = {k: [] for k in (extra or {})}
    slots = problem.slots()
    for _ in range(samples):
        keep = np.ones(n, dtype=bool)
        tot = 0.0
        for s in slots:
            allowed = np.asarray(problem.allowed_counts(s))
            k = int(rng.choice(allowed))
            keep[curves[s].order[k:]] = False
            tot += curves[s].delta[k]
        joint.append(evaluator.loss(keep, refit=refit))
        pred.append(tot)
        for name, v in (extra or {}).items():
            other[name].append(float(v[~keep].sum()))
    out: dict[str, Any] = {"samples": samples, "joint": joint, "sum_of_slots": pred,
                           "spearman": float(spearmanr(joint, pred).statistic)
                           if np.ptp(pred) > 0 else None}
    for name, costs in other.items():
        out[f"spearman_{name}"] = (float(spearmanr(joint, costs).statistic)
                                   if np.ptp(costs) > 0 else None)
    return out
