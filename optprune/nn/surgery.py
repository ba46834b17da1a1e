"""Physical pruning: slice every tensor a dropped group owns, so the model really
gets smaller (fewer parameters, fewer MACs), and fix the modules' size attributes.

The pruned model computes exactly what the masked dense model computes
(``StructureSet.masked(keep)``: the dropped groups' consumer inputs set to zero),
because every dropped output channel is removed together with the consumer
columns that read it, and nothing else reads it (discovery only makes a group of a
channel space whose every use it understands).

Options:

* ``bias_compensation`` (FLAP): a consumer Linear whose input column j is removed
  adds W[:, j] * mean(X_j) to its bias, mean over calibration samples and tokens.
  The pruned model then equals the masked model with dropped channels filled by
  their calibration means (``masked(keep, fill=means)``). Conv2d consumers are not
  compensated (zero padding makes a constant-input shift position-dependent).
* ``reinit``: re-initialize every module that lost parameters with its own
  ``reset_parameters`` (pruning at initialization: the pruned network is trained
  from scratch, so only the architecture is kept).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ValidationError
from .structures import _RESIZERS, StructureSet

__all__ = ["apply_mask", "channel_means"]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


def channel_means(structures: StructureSet, data: Any, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Calibration mean of every input channel of every consumer (for bias compensation)."""
    from .calib import consumer_stats

    consumers = sorted({c for g in structures.groups for c, _ in g.consumers})
    stats = consumer_stats(structures.model, consumers, data, structures.input_shape, batch_size,
                           "bias compensation")
    return {c: torch.as_tensor(s.mean) for c, s in stats.items()}


def apply_mask(structures: StructureSet, keep: Any, *, inplace: bool = False,
               bias_compensation: bool = False, data: Any = None, reinit: bool = False,
               allow_empty: bool = True) -> nn.Module:
    """The model with every dropped group removed (a deep copy unless ``inplace``).

    ``allow_empty=False`` refuses a mask that drops every group of a (layer, kind).
    """
    keep = structures.check_keep(keep)
    if not allow_empty:
        empty = [f"{lay}/{kd}" for (lay, kd), ix in structures.layer_kind_index().items()
                 if not keep[ix].any()]
        if empty:
            raise ValidationError(
                f"The keep mask removes every structure of {', '.join(empty)}. Pass "
                "allow_empty=True to remove whole layers on purpose.")
    named0 = dict(structures.model.named_modules())
    for (lay, _kd), ix in structures.layer_kind_index().items():
        if not keep[ix].any() and isinstance(named0.get(lay), nn.Conv2d):
            raise ValidationError(
                f"The keep mask removes every channel of the Conv2d {lay!r}, which torch "
                "cannot run with zero channels; keep at least one (min_keep=1).")
    means = None
    if bias_compensation:
        if data is None:
            raise ValidationError("bias_compensation needs calibration 'data' (inputs, or "
                                  "(inputs, labels)).")
        means = channel_means(structures, data)
    model = structures.model if inplace else copy.deepcopy(structures.model)
    removed = structures.removed_indices(keep)
    named = dict(model.named_modules())

    if means is not None:
        # Before slicing: the removed columns' contribution at the calibration mean.
        dropped: dict[str, set[int]] = {}
        for g, k in zip(structures.groups, keep):
            if not k:
                for cname, chans in g.consumers:
                    dropped.setdefault(cname, set()).update(chans)
        with torch.no_grad():
            for cname, chans in dropped.items():
                mod = named[cname]
                if not isinstance(mod, nn.Linear):
                    continue
                idx = torch.as_tensor(sorted(chans), dtype=torch.long)
                shift = mod.weight[:, idx].to(torch.float64) @ means[cname][idx].to(torch.float64)
                if mod.bias is None:
                    mod.bias = nn.Parameter(torch.zeros(mod.out_features, dtype=mod.weight.dtype))
                mod.bias.add_(shift.to(mod.bias.dtype))

    touched: set[str] = set()
    with torch.no_grad():
        for tname, dims in removed.items():
            owner, attr = _owner(model, tname)
            t = getattr(owner, attr)
            new = t
            for d, idx in dims.items():
                keep_idx = np.setdiff1d(np.arange(new.shape[d]), idx)
                new = new.index_select(d, torch.as_tensor(keep_idx, dtype=torch.long))
            if isinstance(t, nn.Parameter):
                setattr(owner, attr, nn.Parameter(new.contiguous(), requires_grad=t.requires_grad))
            else:
                owner._buffers[attr] = new.contiguous()
            touched.add(tname.rpartition(".")[0])
    for mname in touched:
        _resize(model.get_submodule(mname) if mname else model)
    # Containers whose size attributes depend on their children (attention).
    for m in model.modules():
        fn = _RESIZERS.get(type(m))
        if fn is not None:
            fn(m)
    if reinit:
        for mname in touched:
            m = model.get_submodule(mname) if mname else model
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return model


def _resize(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.Conv2d):
        m.out_channels = m.weight.shape[0]
        m.in_channels = m.weight.shape[1] * m.groups
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        m.num_features = m.weight.shape[0] if m.weight is not None else m.running_mean.shape[0]
