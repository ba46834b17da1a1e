"""Importance scores: one float per group, higher = more worth keeping.

Every criterion is ``fn(structures, data=None, **kw) -> np.ndarray`` of length
``len(structures.groups)``, registered in ``IMPORTANCE`` by name. ``score``
dispatches by name, callable or array and validates the result (finite, one per
group). Notation: a group g owns parameter slices s in g.slices and feeds input
channels j of its consumer(s) c (a residual group feeds several); X_j is consumer
input channel j over all calibration samples n and positions (tokens / pixels);
W[:, j] is the consumer weight's input column j (all outputs and kernel taps).

* ``magnitude`` / ``l2``: sqrt(sum_{w in g} w^2);  ``l1``: sum_{w in g} |w|
  (parameters only, BatchNorm running statistics excluded).
* ``taylor``: |sum_{w in g} dL/dw * w|, the first-order change of the loss L (mean
  over all calibration samples) when g is removed.
* ``wanda``: sum_c sum_{j in g} (sum_i |W_c[i, j]|) * ||X_j||_2 (structured Wanda:
  the per-weight |W_ij| ||X_j|| summed over the columns the group removes).
* ``flap``: sum_c mean_{j in g} Var_n(X_j) * ||W_c[:, j]||_2^2 (FLAP's fluctuation;
  a head averages over its head_dim channels). ``standardize=True`` replaces each
  score by its z-score within its (layer, kind), as FLAP does before ranking
  globally (z-scores are negative for below-average structures).
* ``random``: uniform [0, 1) from ``seed`` (a control).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ValidationError, check
from .calib import consumer_stats, model_output, n_samples, run_model
from .structures import StructureSet, consumer_weight

__all__ = ["IMPORTANCE", "register_importance", "score", "magnitude", "l1", "taylor", "wanda",
           "flap", "random_score", "zscore_per_slot"]

ImportanceFn = Callable[..., np.ndarray]
IMPORTANCE: dict[str, ImportanceFn] = {}


def register_importance(name: str) -> Callable[[ImportanceFn], ImportanceFn]:
    """Decorator: ``@register_importance("mine")`` adds a criterion to ``IMPORTANCE``."""
    def deco(fn: ImportanceFn) -> ImportanceFn:
        IMPORTANCE[name] = fn
        return fn
    return deco


def _load_extras() -> None:
    try:  # other modules register Bonsai, SNIP, GraSP, SynFlow, GOHSP and Fisher
        from . import fisher, importance_extra  # noqa: F401
    except ImportError:
        pass


def score(structures: StructureSet, importance: str | Callable | np.ndarray, data: Any = None,
          **kw: Any) -> np.ndarray:
    """Scores of every group by a registered name, a callable or a given array,
    validated: float64, one per group, all finite."""
    if isinstance(importance, str):
        if importance not in IMPORTANCE:
            _load_extras()
        check(importance in IMPORTANCE, "The 'importance' criterion",
              f"one of {sorted(IMPORTANCE)} (or a callable or an array)", importance)
        s = IMPORTANCE[importance](structures, data, **kw)
        name = importance
    elif callable(importance):
        s = importance(structures, data, **kw)
        name = getattr(importance, "__name__", "callable")
    else:
        s, name = importance, "array"
    return validate_scores(s, structures, name)


def validate_scores(s: Any, structures: StructureSet, name: str = "importance") -> np.ndarray:
    s = np.asarray(s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else s,
                   dtype=np.float64)
    n = len(structures.groups)
    check(s.shape == (n,), f"The scores of '{name}'", f"of shape ({n},) (one per group)", s.shape)
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise ValidationError(
            f"The scores of '{name}' must be finite; {bad.size} of {n} are NaN or infinite "
            f"(first: group {structures.groups[bad[0]].id!r} = {s[bad[0]]}). Check the "
            "calibration data for NaN and the model for diverged weights.")
    return s


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def _slice(t: torch.Tensor, dim: int, idx: tuple[int, ...]) -> torch.Tensor:
    return t.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=t.device))


def _param_slices(structures: StructureSet, tensors: dict[str, torch.Tensor], g) -> list:
    return [(_slice(tensors[n], d, i)) for n, d, i in g.slices if n in structures.param_names]


@register_importance("magnitude")
@register_importance("l2")
def magnitude(structures: StructureSet, data: Any = None, p: int = 2) -> np.ndarray:
    """L_p norm of all parameters a group owns: (sum |w|^p)^(1/p); p = 1 or 2."""
    check(p in (1, 2), "The 'p' of magnitude", "1 or 2", p)
    tensors = _tensors(structures.model)
    out = np.empty(len(structures.groups))
    with torch.no_grad():
        for k, g in enumerate(structures.groups):
            slices = _param_slices(structures, tensors, g)
            tot = sum(float((s.double().abs() ** p).sum()) for s in slices)
            out[k] = tot if p == 1 else tot ** 0.5
    return out


@register_importance("l1")
def l1(structures: StructureSet, data: Any = None) -> np.ndarray:
    """sum |w| over the group's parameters."""
    return magnitude(structures, data, p=1)


def _default_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="sum")


def _group_param_names(structures: StructureSet, params: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted({n for g in structures.groups for n, _, _ in g.slices if n in params})


def _grads(structures: StructureSet, data: Any, loss_fn: Callable | None, batch_size: int,
           where: str, temperature: float = 1.0, names: list[str] | None = None
           ) -> tuple[dict[str, torch.Tensor], int]:
    """dL/dw of the mean loss over all calibration samples (model in eval mode)."""
    model = structures.model
    loss_fn = loss_fn or _default_loss
    params = dict(model.named_parameters())
    names = names if names is not None else _group_param_names(structures, params)
    grads = {n: torch.zeros_like(params[n]) for n in names}
    total = 0
    was = model.training
    model.eval()
    try:
        for x, y in structures.batches(data, batch_size, where, need_targets=True):
            assert y is not None  # need_targets=True
            loss = loss_fn(model_output(run_model(model, x, where)) / temperature, y)
            gs = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
            for n, gr in zip(names, gs):
                if gr is not None:
                    grads[n] += gr
            total += n_samples(x)
    finally:
        model.train(was)
    return {n: v / total for n, v in grads.items()}, total


@register_importance("taylor")
def taylor(structures: StructureSet, data: Any = None,
           loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
           batch_size: int = 256) -> np.ndarray:
    """|sum_{w in g} dL/dw * w| with L the mean loss over all calibration samples
    (``loss_fn(output, y)`` must return the SUM over its batch; default
    cross-entropy). The model runs in eval mode; its .grad fields are untouched."""
    params = dict(structures.model.named_parameters())
    grads, _ = _grads(structures, data, loss_fn, batch_size, "taylor")
    out = np.empty(len(structures.groups))
    with torch.no_grad():
        for k, g in enumerate(structures.groups):
            v = 0.0
            for n, d, i in g.slices:
                if n in grads:
                    gw = _slice(grads[n], d, i).double() * _slice(params[n], d, i).double()
                    v += float(gw.sum())
            out[k] = abs(v)
    return out


def _consumer_names(structures: StructureSet) -> list[str]:
    return sorted({c for g in structures.groups for c, _ in g.consumers})


def _column_stats(structures: StructureSet, cname: str, p: int) -> np.ndarray:
    """Per input column j of consumer ``cname``: sum_i |W[i, j]| (p=1) or
    ||W[:, j]||^2 (p=2), summed over kernel taps."""
    w, dim = consumer_weight(structures.model.get_submodule(cname))
    w = w.detach().double()
    w = w.transpose(0, dim).reshape(w.shape[dim], -1)
    return (w.abs().sum(1) if p == 1 else (w * w).sum(1)).numpy()


@register_importance("wanda")
def wanda(structures: StructureSet, data: Any = None, batch_size: int = 256) -> np.ndarray:
    """Structured Wanda: sum over the group's consumer columns j of
    (sum_i |W[i, j]|) * ||X_j||_2."""
    cons = _consumer_names(structures)
    stats = consumer_stats(structures.model, cons, data, structures.sample_shape, batch_size, "wanda",
                           structures.integer_inputs)
    col = {c: _column_stats(structures, c, 1) * np.sqrt(stats[c].sqnorm) for c in cons}
    return np.array([sum(col[c][list(ch)].sum() for c, ch in g.consumers)
                     for g in structures.groups])


@register_importance("flap")
def flap(structures: StructureSet, data: Any = None, standardize: bool = False,
         batch_size: int = 256, aggregate: str = "mean") -> np.ndarray:
    """FLAP fluctuation: sum over consumers of agg_{j in g} Var_n(X_j) ||W[:, j]||^2
    (sample variance, ddof = 1); ``aggregate`` "mean" (FLAP's rule for a head's
    channels) or "sum" (the expected squared change of the consumer output when the
    whole group is removed: one unit for heads and channels, the right objective for an
    exact allocation that sums scores); ``standardize`` z-scores within each (layer, kind)."""
    check(aggregate in ("mean", "sum"), "The 'aggregate' of flap", "'mean' or 'sum'", aggregate)
    cons = _consumer_names(structures)
    stats = consumer_stats(structures.model, cons, data, structures.sample_shape, batch_size, "flap",
                           structures.integer_inputs)
    col = {c: _column_stats(structures, c, 2) * stats[c].var for c in cons}
    red = np.mean if aggregate == "mean" else np.sum
    s = np.array([sum(red(col[c][list(ch)]) for c, ch in g.consumers)
                  for g in structures.groups])
    return zscore_per_slot(structures, s) if standardize else s


def zscore_per_slot(structures: StructureSet, s: np.ndarray) -> np.ndarray:
    """(s - mean) / std within each (layer, kind) (population std; 0 when constant)."""
    out = np.asarray(s, dtype=np.float64).copy()
    for ix in structures.layer_kind_index().values():
        v = out[ix]
        sd = v.std()
        out[ix] = (v - v.mean()) / sd if sd > 0 else 0.0
    return out


@register_importance("random")
def random_score(structures: StructureSet, data: Any = None, seed: int = 0) -> np.ndarray:
    """Uniform [0, 1) scores from ``seed``: the control every criterion must beat."""
    return np.random.default_rng(seed).random(len(structures.groups))
