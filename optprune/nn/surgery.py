"""Physical pruning: slice every tensor a dropped group owns, so the model really
gets smaller (fewer parameters, fewer MACs), and fix the modules' size attributes.

The pruned model computes exactly what the masked dense model computes
(``StructureSet.masked(keep)``: the dropped groups' consumer inputs set to zero),
because every dropped output channel is removed together with the consumer
columns that read it, and nothing else reads it (discovery only makes a group of a
channel space whose every use it understands).

After slicing, every module whose sizes live in attributes is fixed: Linear, Conv1d/2d
(depthwise: ``groups`` too), BatchNorm, LayerNorm, Embedding, Hugging Face Conv1D
(``nf``) and the attention families of :mod:`optprune.nn.adapters` (head counts;
grouped-query attention keeps ``num_key_value_groups`` when every kept key/value head
keeps the same number of query heads, else a query-head -> key/value-head map). An
attention module that loses every head becomes
:class:`~optprune.nn.adapters.EmptyAttention` where its own forward could not run with
zero heads. A Hugging Face model also gets ``config.optprune_pruned`` (the pruned
tensor shapes, replaced modules, key/value maps and per-layer widths), so
``save_pretrained`` + :func:`optprune.nn.hf.load_pruned` round-trip.

Options:

* ``bias_compensation`` (FLAP): a consumer Linear whose input column j is removed
  adds W[:, j] * mean(X_j) to its bias, mean over calibration samples and tokens.
  The pruned model then equals the masked model with dropped channels filled by
  their calibration means (``masked(keep, fill=means)``). Convolution consumers are not
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
from .structures import StructureSet, _is_hf_conv1d, resizer_of

__all__ = ["apply_mask", "channel_means"]


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


def channel_means(structures: StructureSet, data: Any, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Calibration mean of every input channel of every consumer (for bias compensation)."""
    from .calib import consumer_stats

    consumers = sorted({c for g in structures.groups for c, _ in g.consumers})
    stats = consumer_stats(structures.model, consumers, data, structures.sample_shape, batch_size,
                           "bias compensation", structures.integer_inputs)
    return {c: torch.as_tensor(s.mean) for c, s in stats.items()}


def _check_empty(structures: StructureSet, keep: np.ndarray, allow_empty: bool) -> None:
    named = dict(structures.model.named_modules())
    empty = [(lay, kd) for (lay, kd), ix in structures.layer_kind_index().items()
             if not keep[ix].any()]
    if not allow_empty and empty:
        raise ValidationError(
            f"The keep mask removes every structure of {', '.join(f'{a}/{b}' for a, b in empty)}. "
            "Pass allow_empty=True to remove whole layers on purpose.")
    for lay, _kd in empty:
        if isinstance(named.get(lay), nn.modules.conv._ConvNd):
            raise ValidationError(
                f"The keep mask removes every channel of the convolution {lay!r}, which torch "
                "cannot run with zero channels; keep at least one (min_keep=1).")


def apply_mask(structures: StructureSet, keep: Any, *, inplace: bool = False,
               bias_compensation: bool = False, data: Any = None, reinit: bool = False,
               allow_empty: bool = True) -> nn.Module:
    """The model with every dropped group removed (a deep copy unless ``inplace``).

    A kept group whose requirement is dropped (a query head whose key/value head is
    dropped) is removed too (``StructureSet.effective``). ``allow_empty=False`` refuses
    a mask that drops every group of a (layer, kind).
    """
    keep = structures.effective(keep)
    _check_empty(structures, keep, allow_empty)
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
        _compensate(structures, keep, named, means)
    touched = _slice_tensors(model, removed)
    for mname in touched:
        _resize(model.get_submodule(mname) if mname else model)
    kv_maps = _kv_maps(structures, keep)
    for m in model.modules():
        fn = resizer_of(m)
        if fn is not None:
            fn(m)
    if kv_maps:
        from .adapters import set_kv_index

        for name, kv in kv_maps.items():
            if kv:
                set_kv_index(model.get_submodule(name), kv)
    _empty_attention(model)
    if reinit:
        for mname in touched:
            m = model.get_submodule(mname) if mname else model
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    if getattr(model, "config", None) is not None and hasattr(model, "save_pretrained"):
        from .hf import record_pruned

        record_pruned(model, structures, keep)
    return model


def _compensate(structures: StructureSet, keep: np.ndarray, named: dict[str, nn.Module],
                means: dict[str, torch.Tensor]) -> None:
    """Before slicing: the removed columns' contribution at the calibration mean."""
    dropped: dict[str, set[int]] = {}
    for g, k in zip(structures.groups, keep):
        if not k:
            for cname, chans in g.consumers:
                dropped.setdefault(cname, set()).update(chans)
    with torch.no_grad():
        for cname, dropped_chans in dropped.items():
            mod = named[cname]
            if not isinstance(mod, nn.Linear):
                continue
            idx = torch.as_tensor(sorted(dropped_chans), dtype=torch.long,
                                  device=mod.weight.device)
            mean = means[cname].to(device=mod.weight.device, dtype=torch.float64)
            shift = mod.weight[:, idx].to(torch.float64) @ mean[idx]
            if mod.bias is None:
                mod.bias = nn.Parameter(torch.zeros(mod.out_features, dtype=mod.weight.dtype,
                                                    device=mod.weight.device))
            mod.bias.add_(shift.to(mod.bias.dtype))


def _slice_tensors(model: nn.Module, removed: dict[str, dict[int, np.ndarray]]) -> set[str]:
    """Keep the complement of ``removed`` in every tensor; the owning modules' names."""
    touched: set[str] = set()
    with torch.no_grad():
        for tname, dims in removed.items():
            owner, attr = _owner(model, tname)
            t = getattr(owner, attr)
            new = t
            for d, idx in dims.items():
                keep_idx = np.setdiff1d(np.arange(new.shape[d]), idx)
                new = new.index_select(d, torch.as_tensor(keep_idx, dtype=torch.long,
                                                          device=new.device))
            if isinstance(t, nn.Parameter):
                setattr(owner, attr, nn.Parameter(new.contiguous(), requires_grad=t.requires_grad))
            else:
                owner._buffers[attr] = new.contiguous()
            touched.add(tname.rpartition(".")[0])
    return touched


def _resize(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.conv._ConvNd):
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        m.out_channels = m.weight.shape[0]
        if depthwise:
            m.groups = m.in_channels = m.out_channels
        else:
            m.in_channels = m.weight.shape[1] * m.groups
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        m.num_features = m.weight.shape[0] if m.weight is not None else m.running_mean.shape[0]
    elif _is_hf_conv1d(m):
        conv1d: Any = m  # transformers' Conv1D: weight (in, out), its width in .nf
        conv1d.nf = conv1d.weight.shape[1]
    elif isinstance(m, nn.LayerNorm) and m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)
    elif isinstance(m, nn.Embedding):
        m.num_embeddings, m.embedding_dim = m.weight.shape


def _kv_maps(structures: StructureSet, keep: np.ndarray) -> dict[str, list[int]]:
    """Per grouped-query attention layer: the new key/value position of every kept
    query head (query heads keep their order, key/value heads theirs)."""
    by_layer: dict[str, dict[str, list]] = {}
    pos = {g.id: i for i, g in enumerate(structures.groups)}
    for i, g in enumerate(structures.groups):
        if g.kind == "kv_head":
            by_layer.setdefault(g.layer, {"kv": [], "q": []})["kv"].append(i)
    for i, g in enumerate(structures.groups):
        if g.kind == "head" and g.layer in by_layer and keep[i]:
            by_layer[g.layer]["q"].append(pos[g.requires[0]])
    out = {}
    for layer, d in by_layer.items():
        kept_kv = [i for i in d["kv"] if keep[i]]
        new_pos = {i: p for p, i in enumerate(kept_kv)}
        out[layer] = [new_pos[i] for i in d["q"]]
    return out


def _empty_attention(model: nn.Module) -> None:
    """Swap every attention module left with zero heads whose own forward cannot run
    so for :class:`EmptyAttention` (same children, so the same state-dict keys)."""
    from .adapters import EmptyAttention, _n_heads, attention_kind

    for name, m in list(model.named_modules()):
        kind = attention_kind(m)
        if kind not in ("proj", "bert", "gpt2") or _n_heads(m)[0] > 0:
            continue
        out = {"proj": "o_proj", "bert": None, "gpt2": "c_proj"}[kind]
        parent, attr = _owner(model, name)
        setattr(parent, attr, EmptyAttention(m, out))
