"""Reconstruction after removal: refit each consumer's kept weights by ridge least
squares so that its output matches the dense model's (math in
formulations/reconstruction.md).

For a consumer c (a Linear, or a Conv2d with groups=1 on unfolded patches) whose
input columns S survive, with X_p the inputs it receives in the *pruned* model
(dropped columns zeroed; all upstream layers already pruned and refit) and Y the
dense model's outputs of c on the same samples, the kept weights and bias
Theta = [W_S^T; b^T] solve

    min_Theta || [X_p,S 1] Theta - Y ||_F^2 + lam || W_S' - W_S ||_F^2

a ridge *toward the dense weights* (lam -> inf keeps them; lam = 0 is the plain
refit; fixing W_S and refitting only b is FLAP's bias compensation, which this
contains as a candidate). Closed form, from float64 sufficient statistics
G = Xa^T Xa, C = Xa^T Y (Xa = [X_p,S 1]):

    Theta = (G + Lambda)^{-1} (C + Lambda Theta_0),  Lambda = diag(lam, ..., lam, eps).

lam = alpha * mean(diag(G_x)). alpha is chosen from ``alphas`` on held-out calibration
batches (every ``holdout_every``-th batch): by default the whole layer-by-layer refit runs
once per alpha on the other batches and the alpha whose *model* output is closest to the
dense one on the held-out batches wins ("global"); then everything is refit on all
batches. Consumers are processed in the order the forward pass reaches them, each with
the inputs of the model already refit before it ("layer by layer, in
order, using the already-pruned model's inputs").

Everything happens on the *masked* model (``StructureSet.masked(keep)``: dropped
consumer inputs are zero), so the refit writes W[:, kept] and b in place and the
usual surgery then removes the dropped columns; the pruned model equals the masked
refit model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence, TypeGuard, cast

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ValidationError, check
from .calib import run_model
from .resume import ForwardTrace, capture_outputs, skipping
from .structures import StructureSet

__all__ = ["DEFAULT_ALPHAS", "GUARD_ERROR", "LayerRefit", "ReconstructionReport",
           "consumer_order", "reconstruct", "refit_from_stats", "unfold_rows"]

# Relative ridge strengths (times the mean diagonal of the inputs' Gram matrix), tried
# by the "global" selection (one whole refit each). inf = keep the dense weights
# (refit the bias only, FLAP's compensation).
DEFAULT_ALPHAS: tuple[float, ...] = (0.1, 1.0, 10.0)
# The guard acts on layers whose removal took more than this share of their output's
# variance (formulations/reconstruction.md, section 6).
GUARD_ERROR = 0.5


@dataclass(frozen=True)
class LayerRefit:
    """One consumer's refit: the ridge chosen and the relative output errors
    ||Y_hat - Y||^2 / ||Y - mean(Y)||^2 on the held-out batches (or on all batches when
    there is no holdout) without refit (dropped inputs simply zero) and with it.
    ``weight_change``: ||Theta - Theta_0||_F / ||Theta_0||_F of the refit (kept rows and
    columns, bias included); ``kept_dense``: the refit exceeded the guard's
    ``max_weight_change`` on a layer with ``error_before`` above its ``guard_error`` and
    was not written (the layer keeps its dense weights, and
    ``error_after`` is ``error_before``)."""

    consumer: str
    alpha: float
    rows: int
    kept_inputs: int
    inputs: int
    error_before: float
    error_after: float
    errors_by_alpha: dict[str, float] = field(default_factory=dict)
    weight_change: float = 0.0
    kept_dense: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["alpha"] = None if math.isinf(self.alpha) else self.alpha
        return d


@dataclass(frozen=True)
class ReconstructionReport:
    """Per consumer refit; ``select`` and, for "global", the held-out divergence of the
    whole model per alpha tried."""

    layers: list[LayerRefit]
    holdout_batches: int
    fit_batches: int
    time_s: float
    select: str = "layer"
    global_errors: dict[str, float] = field(default_factory=dict)

    @property
    def alpha(self) -> float | None:
        """The one alpha of a "global" selection (None when layers differ)."""
        a = {r.alpha for r in self.layers}
        return a.pop() if len(a) == 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [r.to_dict() for r in self.layers],
                "holdout_batches": self.holdout_batches, "fit_batches": self.fit_batches,
                "time_s": self.time_s, "select": self.select,
                "global_errors": self.global_errors}


class _Stop(Exception):
    """Raised by a capture hook once it has what it needs (skip the rest of the forward)."""


# The layers the reconstruction refits (``_is_refittable``).
_Layer = nn.Linear | nn.Conv2d


def _is_refittable(mod: nn.Module) -> TypeGuard[_Layer]:
    if isinstance(mod, nn.Linear):
        return True
    # A string padding ("same", "valid") is not one F.unfold takes: left as it is.
    return (isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.padding_mode == "zeros"
            and not isinstance(mod.padding, str))


def unfold_rows(mod: _Layer, x: torch.Tensor) -> torch.Tensor:
    """The rows a consumer's weight multiplies: (samples*positions, in_features) for a
    Linear, unfolded patches (samples*positions, C_in*kh*kw) for a Conv2d."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    check(not isinstance(mod.padding, str), "The padding of a refit convolution",
          "numbers (F.unfold's)", mod.padding)
    cols = F.unfold(x, mod.kernel_size, dilation=mod.dilation,
                    padding=cast(tuple[int, ...], mod.padding), stride=mod.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _output_rows(mod: _Layer, y: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


def _weight2d(mod: _Layer) -> torch.Tensor:
    return mod.weight.reshape(mod.weight.shape[0], -1)


def _taps(mod: _Layer) -> int:
    return int(np.prod(mod.kernel_size)) if isinstance(mod, nn.Conv2d) else 1


def consumer_order(structures: StructureSet, data: Any, names: Iterable[str]) -> list[str]:
    """``names`` in the order one forward pass reaches them (first call each)."""
    return [n for stage in consumer_stages(structures, data, names) for n in stage]


def consumer_stages(structures: StructureSet, data: Any, names: Iterable[str]
                    ) -> list[list[str]]:
    """``names`` in forward order, consecutive ones that read the very same input tensor
    (q, k and v of an attention layer) in one stage: refitting one of them cannot
    change another's input, so one forward pass captures the inputs of a whole stage."""
    wanted = set(names)
    named = dict(structures.model.named_modules())
    seen: list[tuple[str, Any, int]] = []
    done: set[str] = set()

    def record(n: str, a: tuple) -> None:
        if n not in done:
            done.add(n)
            x = a[0] if a and isinstance(a[0], torch.Tensor) else None
            # The tensor object itself (kept alive, so no storage is reused) and its
            # version counter, which moves on any in-place change: the same object at
            # the same version is the very same unchanged input.
            seen.append((n, x, -1 if x is None else x._version))

    handles = [named[n].register_forward_pre_hook(lambda _m, a, n=n: record(n, a))
               for n in wanted]
    model = structures.model
    x = next(iter(structures.batches(data, 2, "reconstruction")))[0]
    try:
        with torch.no_grad():
            run_model(model, x, "reconstruction")
    finally:
        for h in handles:
            h.remove()
    stages: list[list[str]] = []
    for i, (n, t, ver) in enumerate(seen):
        prev = seen[i - 1] if i else None
        if prev is not None and t is not None and prev[1] is t and prev[2] == ver:
            stages[-1].append(n)
        else:
            stages.append([n])
    return stages + [[n] for n in sorted(wanted - done)]


def refit_from_stats(g: np.ndarray, c: np.ndarray, theta0: np.ndarray, lam: float,
                     has_bias: bool) -> np.ndarray:
    """Theta = (G + Lambda)^{-1} (C + Lambda Theta_0) with Lambda = lam on the weight
    rows and a tiny jitter on the bias row; lam = inf returns Theta_0 with the bias
    refit (the least-squares bias for fixed weights)."""
    d = g.shape[0] - (1 if has_bias else 0)
    scale = max(float(np.mean(np.diag(g)[:d])) if d else 1.0, 1e-300)
    if math.isinf(lam):
        if not has_bias:
            return theta0.copy()
        th = theta0.copy()
        n = g[d, d]
        # b = (C_1 - G_{1,x} W^T) / n: the mean residual of the fixed weights.
        th[d] = (c[d] - g[d, :d] @ theta0[:d]) / max(n, 1e-300)
        return th
    reg = np.full(g.shape[0], lam)
    if has_bias:
        reg[d] = 1e-12 * scale
    a = g + np.diag(reg + 1e-12 * scale)
    rhs = c + reg[:, None] * theta0
    try:  # symmetric positive definite: Cholesky (LAPACK posv), about 2x LU
        return scipy.linalg.solve(a, rhs, assume_a="pos", check_finite=False)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        return np.linalg.lstsq(a, rhs, rcond=None)[0]


def _sq_error(g: np.ndarray, c: np.ndarray, yy: float, theta: np.ndarray) -> float:
    """||Xa Theta - Y||^2 from the statistics G = Xa^T Xa, C = Xa^T Y, yy = ||Y||^2."""
    return float(np.sum(theta * (g @ theta)) - 2.0 * np.sum(theta * c) + yy)


def _plus(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    return b if a is None else a + b


def _total(arrays: list[np.ndarray | None]) -> np.ndarray:
    present = [a for a in arrays if a is not None]
    check(len(present) > 0, "The reconstruction's statistics", "accumulated over at least "
          "one calibration batch", "none")
    return np.sum(present, axis=0)


class _Acc:
    """Streaming float64 statistics of (Xa, Y) for one consumer, split fit / holdout."""

    def __init__(self) -> None:
        self.g: list[np.ndarray | None] = [None, None]
        self.c: list[np.ndarray | None] = [None, None]
        self.yy = [0.0, 0.0]
        self.ysum: list[np.ndarray | None] = [None, None]
        self.n = [0, 0]

    def add(self, part: int, xa: torch.Tensor, y: torch.Tensor) -> None:
        # One batch's products in the model's precision (at least float32: a float32
        # model's X^T X over a batch is exact to ~1e-6), accumulated over batches in
        # float64.
        dt = torch.float64 if xa.dtype == torch.float64 else torch.float32
        xa, y = xa.to(dt), y.to(dt)
        g = (xa.T @ xa).cpu().numpy().astype(np.float64)
        c = (xa.T @ y).cpu().numpy().astype(np.float64)
        y = y.to(torch.float64)
        self.g[part] = _plus(self.g[part], g)
        self.c[part] = _plus(self.c[part], c)
        self.yy[part] += float((y * y).sum())
        self.ysum[part] = _plus(self.ysum[part], y.sum(0).cpu().numpy())
        self.n[part] += int(y.shape[0])

    def part(self, part: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(G, C, ||Y||^2) of the fit (0) or holdout (1) batches."""
        return _total([self.g[part]]), _total([self.c[part]]), self.yy[part]

    def total(self) -> tuple[np.ndarray, np.ndarray, float]:
        return _total(self.g), _total(self.c), float(sum(self.yy))

    def total_variance(self) -> float:
        n = max(sum(self.n), 1)
        ysum = _total(self.ysum)
        return max(float(sum(self.yy)) - float(np.sum(ysum ** 2)) / n, 1e-300)

    def variance(self, part: int) -> float:
        n = max(self.n[part], 1)
        return max(self.yy[part] - float(np.sum(_total([self.ysum[part]]) ** 2)) / n, 1e-300)


def _kept_layout(structures: StructureSet, keep: np.ndarray, name: str, mod: _Layer
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(kept input columns of the 2-D weight, kept output rows) of consumer ``name``."""
    mask = structures.consumer_masks(keep).get(name)
    taps = _taps(mod)
    n_in = _weight2d(mod).shape[1] // taps
    chans = np.arange(n_in) if mask is None else np.flatnonzero(mask.numpy() > 0.5)
    cols = (chans[:, None] * taps + np.arange(taps)[None, :]).ravel()
    removed = structures.removed_indices(keep).get(f"{name}.weight", {}).get(0)
    rows = np.arange(mod.weight.shape[0])
    if removed is not None:
        rows = np.setdiff1d(rows, removed)
    return cols, rows


def reconstruct(structures: StructureSet, keep: Any, data: Any, *,
                consumers: Sequence[str] | None = None,
                alphas: Sequence[float] = DEFAULT_ALPHAS, select: str = "global",
                holdout_every: int = 4, default_alpha: float = 1.0, batch_size: int = 128,
                min_rows_per_input: float = 1.0, scope: str = "all", resume: bool = True,
                max_weight_change: float | None = None,
                guard_error: float = GUARD_ERROR) -> ReconstructionReport:
    """Refit, in place on ``structures.model``, every consumer whose inputs lose
    columns under ``keep`` (or the named ``consumers``), in forward order, so that its
    outputs on ``data`` under ``structures.masked(keep)`` match those of the model as
    it was before the call. The model's dropped columns keep their old values (they
    are multiplied by zero under the mask and removed by surgery).

    select: how the ridge is chosen from ``alphas`` on held-out calibration batches
        (every ``holdout_every``-th): "global" runs the whole layer-by-layer refit once
        per alpha on the other batches and keeps the alpha whose *model* output is
        closest to the dense one on the held-out batches (then refits on all batches);
        "layer" picks per consumer the alpha with the smallest held-out error of that
        consumer's own output (cheaper, but myopic: a layer can fit its calibration
        outputs better and generalize worse downstream). With fewer than
        ``holdout_every`` batches nothing is held out and ``default_alpha`` (or the
        alpha of ``alphas`` closest to it) is used.

    resume: skip the forward of every module that ends before the stage being refit and
        whose output on each batch is already final (``optprune.nn.resume``), so a refit
        pass costs about one forward pass instead of one per stage. Same result.
    scope: "all" (default) refits every Linear/Conv2d layer from the first one whose
        inputs lost columns on, each toward its dense output (the later layers' inputs
        shift too); "consumers" only the layers whose inputs lost columns.
    max_weight_change: the guard against degenerate refits (None: off). A layer whose
        refit moves its kept weights and bias by more than this fraction of their dense
        norm, ||Theta - Theta_0||_F > max_weight_change * ||Theta_0||_F, while the removal
        took more than ``guard_error`` of its output's variance (``error_before``),
        keeps its dense weights instead (``LayerRefit.kept_dense``); the later layers are
        then refit on the inputs it really produces. Such a refit rebuilds a lost output
        from correlations of the calibration data and extrapolates badly outside it; a
        refit that repairs a mostly intact output may move its weights far without that
        risk (formulations/reconstruction.md, "The guard").

    Raises ValidationError when a consumer has fewer calibration rows than
    ``min_rows_per_input`` times its kept inputs and no ridge is allowed (every
    alpha is 0): the plain least squares would be underdetermined.
    """
    import copy
    import time

    t0 = time.perf_counter()
    keep = structures.check_keep(keep)
    _check_options(alphas, select, holdout_every, scope, max_weight_change, guard_error)
    model = structures.model
    named = dict(model.named_modules())
    if consumers is None:
        consumers = _pruned_consumers(structures, keep, data, scope, named)
    consumers = [c for c in consumers if _is_refittable(named[c])]
    dense = copy.deepcopy(model)
    dense.eval()
    data_batches = list(structures.batches(data, batch_size, "reconstruction"))
    nb = len(data_batches)
    hold = [i % holdout_every == holdout_every - 1 for i in range(nb)] if nb >= holdout_every \
        else [False] * nb
    stages = consumer_stages(structures, data, consumers)
    order = [n for st in stages for n in st]
    dense_out = _dense_outputs(dense, dict(dense.named_modules()), order, data_batches)
    with structures.masked(keep):
        trace = ForwardTrace(model, lambda: run_model(model, data_batches[0][0]))
    loop = _LayerLoop(structures, keep, stages, data_batches, dense_out, min_rows_per_input,
                      trace if resume else None, max_weight_change, guard_error)
    was = model.training
    model.eval()
    global_errors: dict[str, float] = {}
    try:
        layers = _select_and_refit(loop, structures, keep, dense, named, order, data_batches,
                                   hold, alphas, select, default_alpha, global_errors)
    finally:
        model.train(was)
    return ReconstructionReport(layers, sum(hold), nb - sum(hold), time.perf_counter() - t0,
                                select, global_errors)


def _check_options(alphas: Sequence[float], select: str, holdout_every: int, scope: str,
                   max_weight_change: float | None, guard_error: float) -> None:
    check(len(alphas) > 0 and all(isinstance(a, (int, float)) and a >= 0 for a in alphas),
          "The 'alphas' of reconstruct", "a non-empty list of ridge strengths >= 0 (inf allowed)",
          list(alphas))
    check(select in ("global", "layer"), "The 'select' of reconstruct", "'global' or 'layer'",
          select)
    check(isinstance(holdout_every, int) and holdout_every >= 2, "The 'holdout_every' of "
          "reconstruct", "an int >= 2 (every k-th calibration batch is held out)", holdout_every)
    check(scope in ("consumers", "all"), "The 'scope' of reconstruct", "'consumers' or 'all'",
          scope)
    check(max_weight_change is None or (isinstance(max_weight_change, (int, float))
                                         and max_weight_change > 0),
          "The 'max_weight_change' of reconstruct", "None or a number > 0 (a fraction of "
          "each layer's dense weight norm)", max_weight_change)
    check(isinstance(guard_error, (int, float)) and guard_error >= 0,
          "The 'guard_error' of reconstruct", "a number >= 0 (a share of a layer's output "
          "variance)", guard_error)


def _pruned_consumers(structures: StructureSet, keep: np.ndarray, data: Any, scope: str,
                      named: dict[str, nn.Module]) -> list[str]:
    """The consumers whose inputs lose columns under ``keep`` ("consumers"), or every
    refittable layer from the first of them on, in forward order ("all")."""
    masks = structures.consumer_masks(keep)
    consumers = [c for c, m in masks.items() if bool((m < 0.5).any())]
    if scope == "all" and consumers:
        # Every layer from the first pruned consumer on: the later ones see shifted
        # inputs too, and are refit to the dense outputs on them.
        every = consumer_order(structures, data, [n for n, m in named.items()
                                                  if n and _is_refittable(m)])
        first = min(every.index(c) for c in consumers if c in every)
        consumers = every[first:]
    return consumers


def _select_and_refit(loop: "_LayerLoop", structures: StructureSet, keep: np.ndarray,
                      dense: nn.Module, named: dict[str, nn.Module], order: list[str],
                      data_batches: list, hold: list[bool], alphas: Sequence[float],
                      select: str, default_alpha: float,
                      global_errors: dict[str, float]) -> list[LayerRefit]:
    """The refit with the ridge chosen as ``select`` says (``global_errors`` filled with
    each alpha's held-out end-to-end error when the choice is global)."""
    nb = len(data_batches)
    if select == "global" and any(hold) and len(alphas) > 1:
        layers = {c: m for c in order if _is_refittable(m := named[c])}
        saved = {c: _weights_of(m) for c, m in layers.items()}
        ref = [(x, _final_output(dense, x)) for (x, _), h in zip(data_batches, hold) if h]
        kind = _kind(structures)
        for a in alphas:
            loop.run([not h for h in hold], [False] * nb, (a,), a)
            global_errors[str(a)] = _end_to_end(structures, keep, ref, kind)
            for c, w in saved.items():
                _set_weights(layers[c], w)
        best = min(alphas, key=lambda a: (global_errors[str(a)], -a))
        return loop.run([True] * nb, hold, (best,), best)
    if select == "global":
        return loop.run([True] * nb, hold, (_closest(alphas, default_alpha),), default_alpha)
    return loop.run([True] * nb, hold, alphas, default_alpha)


def _closest(alphas: Sequence[float], target: float) -> float:
    return min(alphas, key=lambda a: abs(math.log((a + 1e-300) / target))
               if math.isfinite(a) else math.inf)


def _weights_of(mod: _Layer) -> tuple[torch.Tensor, torch.Tensor | None]:
    return mod.weight.detach().clone(), None if mod.bias is None else mod.bias.detach().clone()


def _set_weights(mod: _Layer, w: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    with torch.no_grad():
        mod.weight.copy_(w[0])
        if w[1] is not None and mod.bias is not None:
            mod.bias.copy_(w[1])


def _kind(structures: StructureSet) -> str:
    from .fisher import output_kind

    return output_kind(structures)


def _final_output(model: nn.Module, x: Any) -> torch.Tensor:
    from .calib import model_output

    with torch.no_grad():
        return model_output(run_model(model, x)).detach()


def _end_to_end(structures: StructureSet, keep: np.ndarray, ref: list, kind: str) -> float:
    """Mean divergence of the masked model from the dense outputs ``ref`` = [(x, y)]."""
    from .fisher import divergence

    tot, n = 0.0, 0
    with structures.masked(keep):
        for x, y in ref:
            d = divergence(_final_output(structures.model, x), y, kind)
            tot += float(d.sum())
            n += d.shape[0]
    return tot / max(n, 1)


class _LayerLoop:
    """The layer-by-layer refit: for each stage of consumers in forward order,
    statistics of the masked model's inputs (already refit upstream) against the dense
    outputs, then the ridge solves written in place."""

    def __init__(self, structures: StructureSet, keep: np.ndarray, stages: list[list[str]],
                 data_batches: list, dense_out: dict[str, list[torch.Tensor]],
                 min_rows_per_input: float, trace: ForwardTrace | None = None,
                 max_weight_change: float | None = None,
                 guard_error: float = 0.0) -> None:
        self.ss, self.keep, self.stages = structures, keep, stages
        self.max_change = max_weight_change
        self.guard_error = guard_error
        self.batches, self.dense_out = data_batches, dense_out
        self.named = dict(structures.model.named_modules())
        self.min_rows = min_rows_per_input
        self.trace = trace

    def run(self, use: list[bool], hold: list[bool], alphas: Sequence[float],
            default_alpha: float) -> list[LayerRefit]:
        """Refit on the batches with ``use``; those also in ``hold`` are held out."""
        model = self.ss.model
        layers = []
        # Outputs of modules that end before the current stage, captured after every
        # layer inside them was refit (this run): final, so later stages skip them.
        cache: dict[str, dict[int, Any]] = {}
        for stage in self.stages:
            mods = {n: self.named[n] for n in stage}
            layout = {n: _kept_layout(self.ss, self.keep, n, m) for n, m in mods.items()}
            accs = {n: _Acc() for n in stage}
            got: dict[str, torch.Tensor] = {}
            closed = self.trace.closed_before(stage) if self.trace is not None else []
            skip = [n for n in closed if n in cache]
            grab = [n for n in closed if n not in cache]
            grabbed: dict[str, Any] = {}

            def cap_in(_m, args, name, got=got, last=stage[-1], mods=mods):
                got[name] = unfold_rows(mods[name], args[0].detach())
                if name == last:
                    raise _Stop

            for i, (x, _) in enumerate(self.batches):
                if not use[i]:
                    continue
                got.clear()
                grabbed.clear()
                with self.ss.masked(self.keep), skipping(model, {n: cache[n][i] for n in skip}), \
                        capture_outputs(model, grab, grabbed):
                    hs = [m.register_forward_pre_hook(
                        lambda _m, a, n=n: cap_in(_m, a, n)) for n, m in mods.items()]
                    try:
                        with torch.no_grad():
                            run_model(model, x)
                    except _Stop:
                        pass
                    finally:
                        for h in hs:
                            h.remove()
                for n in grab:
                    cache.setdefault(n, {})[i] = grabbed[n]
                for n, mod in mods.items():
                    cols, rows = layout[n]
                    xin = got[n]
                    xs = xin[:, torch.as_tensor(cols, dtype=torch.long, device=xin.device)]
                    if mod.bias is not None:
                        xs = torch.cat([xs, xs.new_ones(xs.shape[0], 1)], 1)
                    y = self.dense_out[n][i]
                    accs[n].add(1 if hold[i] else 0, xs,
                                y[:, torch.as_tensor(rows, dtype=torch.long, device=y.device)])
            for n, mod in mods.items():
                cols, rows = layout[n]
                has_bias = mod.bias is not None
                theta0 = _weight2d(mod).detach().to(torch.float64).cpu().numpy()[rows][:, cols].T
                if has_bias:
                    b0 = mod.bias.detach().to(torch.float64).cpu().numpy()
                    theta0 = np.vstack([theta0, b0[rows][None]])
                layers.append(_refit_one(n, mod, accs[n], theta0, cols, rows, has_bias, alphas,
                                         default_alpha, self.min_rows, self.max_change,
                                         self.guard_error))
        return layers


def _dense_outputs(dense: nn.Module, named: dict[str, nn.Module], order: Sequence[str],
                   data_batches: list) -> dict[str, list[torch.Tensor]]:
    """The dense model's output rows of every consumer on every batch (one pass)."""
    out: dict[str, list[torch.Tensor]] = {c: [] for c in order}
    layers = {c: m for c in order if _is_refittable(m := named[c])}
    hs = [m.register_forward_hook(
        lambda _m, _a, o, c=c, m=m: out[c].append(_output_rows(m, o.detach())))
        for c, m in layers.items()]
    try:
        with torch.no_grad():
            for x, _ in data_batches:
                run_model(dense, x)
    finally:
        for h in hs:
            h.remove()
    many = [c for c, v in out.items() if len(v) != len(data_batches)]
    if many:
        raise ValidationError(
            f"Reconstruction needs each consumer to run once per forward pass; {many[:3]} ran "
            f"a different number of times. Exclude them from pruning or pass reconstruct=False.")
    return out


def _refit_one(name: str, mod: _Layer, acc: _Acc, theta0: np.ndarray, cols: np.ndarray,
               rows: np.ndarray, has_bias: bool, alphas: Sequence[float],
               default_alpha: float, min_rows_per_input: float,
               max_change: float | None = None, guard_error: float = 0.0) -> LayerRefit:
    n_rows = acc.n[0] + acc.n[1]
    if all(a == 0 for a in alphas) and n_rows < min_rows_per_input * cols.size:
        raise ValidationError(
            f"Reconstruction of {name!r} has {n_rows} calibration rows for {cols.size} kept "
            "inputs: the plain least squares is underdetermined. Pass more calibration data "
            "or allow a ridge term (alphas > 0, e.g. the default).")
    d = cols.size
    holdout = acc.g[1] is not None and acc.g[0] is not None
    errors: dict[str, float] = {}
    if holdout and len(alphas) > 1:
        g_fit, c_fit, _ = acc.part(0)
        g_hold, c_hold, yy_hold = acc.part(1)
        scale = float(np.mean(np.diag(g_fit)[:d])) if d else 1.0
        var = acc.variance(1)
        for a in alphas:
            th = refit_from_stats(g_fit, c_fit, theta0, a * scale, has_bias)
            errors[str(a)] = _sq_error(g_hold, c_hold, yy_hold, th) / var
        best = min(alphas, key=lambda a: (errors[str(a)], -a))
        err_before = _sq_error(g_hold, c_hold, yy_hold, theta0) / var
    elif len(alphas) == 1:  # nothing to choose: no fit-only solve
        best = alphas[0]
        holdout = False
    else:
        best = min(alphas, key=lambda a: abs(math.log((a + 1e-300) / default_alpha))
                   if math.isfinite(a) else math.inf)
    g, c, yy = acc.total()
    scale = float(np.mean(np.diag(g)[:d])) if d else 1.0
    theta = refit_from_stats(g, c, theta0, best * scale, has_bias)
    var = acc.variance(1) if holdout else acc.total_variance()
    err_after = errors.get(str(best), _sq_error(g, c, yy, theta) / max(var, 1e-300))
    if not holdout:
        err_before = _sq_error(g, c, yy, theta0) / max(var, 1e-300)
    change = float(np.linalg.norm(theta - theta0) / max(np.linalg.norm(theta0), 1e-300))
    dense = max_change is not None and change > max_change and err_before > guard_error
    if dense:
        err_after = err_before
    else:
        _write(mod, theta, cols, rows, has_bias)
    return LayerRefit(name, float(best), n_rows, int(d), int(_weight2d(mod).shape[1]),
                      float(err_before), float(err_after), errors, change, dense)


def _write(mod: _Layer, theta: np.ndarray, cols: np.ndarray, rows: np.ndarray,
           has_bias: bool) -> None:
    d = cols.size
    w = torch.as_tensor(theta[:d].T, dtype=mod.weight.dtype, device=mod.weight.device)
    with torch.no_grad():
        w2 = mod.weight.view(mod.weight.shape[0], -1)
        r = torch.as_tensor(rows, dtype=torch.long, device=w2.device)
        c = torch.as_tensor(cols, dtype=torch.long, device=w2.device)
        w2[r[:, None], c[None, :]] = w
        if has_bias and mod.bias is not None:
            mod.bias[r] = torch.as_tensor(theta[d], dtype=mod.bias.dtype, device=mod.bias.device)
