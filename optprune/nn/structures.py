"""Prunable structures of a torch model: coupled groups with exact costs.

A *group* is one keep/drop decision: unit i of one *channel space* (a tensor's channel
dimension, with residual additions merging the spaces they add). It owns unit i of
every module writing that space (output rows of Linear / Conv, a head's rows of the
q, k, v projections), every per-channel parameter on the space (BatchNorm, depthwise
convolutions) and the matching input columns of every module reading it (the
*consumers*). A unit is one channel, or ``head_dim`` consecutive channels of a head.

Discovery (:func:`discover`) runs the model once on the given inputs and records the
graph of that run (:mod:`optprune.nn.trace`: no symbolic tracing, so Hugging Face
models, data-dependent control flow and cache objects are fine), then propagates
channel spaces through it, one handler per module type or function
(``_MODULE_HANDLERS``, ``_FUNCTION_HANDLERS``, ``_METHOD_HANDLERS``):

* producers (new space): Linear (last dim), Conv1d/Conv2d with ``groups == 1`` (dim 1),
  Hugging Face Conv1D (GPT-2, last dim); attention modules produce a *head space*
  (:mod:`optprune.nn.adapters`: BERT/ViT/LLaMA/GPT-2 attention, nn.MultiheadAttention,
  optprune's own MultiHeadAttention; grouped-query attention gets key/value-head groups
  and query-head groups, a query head requiring its key/value head);
* per-channel, same space: BatchNorm, depthwise convolution (``groups == in == out``),
  activations, dropout, pooling, padding of the spatial dims, dtype casts;
* Flatten of the trailing dims of an NCHW tensor: feature ``f`` belongs to channel
  ``f // (H*W)`` (``expand = H*W``); transposes and permutes move the channel dim;
* elementwise ops between two tensors (residual add, gating mul): the spaces merge, so
  unit i of all their producers is one group; an operand of size 1 on the channel dim
  (a mask, a scalar) leaves the space alone;
* anything else that touches a tensor (LayerNorm and RMSNorm, softmax, cat, indexing,
  matmul, unknown functions, the model's inputs and outputs, parameters used directly,
  weights shared by two modules) *freezes* its spaces: they are never pruned. This is
  conservative: a space is pruned only when every op on it is understood.

Leaf modules of an unknown type that own parameters are errors
(:class:`UnsupportedModuleError` lists all of them, with the ``exclude=[...]`` that keeps
them dense); modules without parameters of their own are traced through.

Costs (exact, per group, when that group alone is dropped):

* ``params`` = number of parameter entries in the group's slices;
* ``flops`` = multiply-accumulates (MACs, the convention of fvcore/thop) removed for ONE
  input sample: for a Linear weight slice, its entries times the tokens per sample; for
  a convolution weight slice, its entries times the output positions; for a head also
  the 2*T*T*head_dim MACs of the score and value products.

Two groups share parameters when a Linear/Conv has both prunable inputs and prunable
outputs (W[j, i] belongs to output group j and input group i), so dropping several groups
removes ``sum(params) - shared``. ``StructureSet.predict`` gives the exact costs of any
keep mask (each weight keeps prod_d (size_d - removed_d) entries). In a transformer
whose hidden width is not pruned no two groups share parameters.
"""

from __future__ import annotations

import contextlib
import operator
import re
from dataclasses import dataclass, field
from typing import (Any, Callable, Iterable, Iterator, Sequence, TypeGuard, TypeVar, cast,
                    overload)

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedModuleError, check

__all__ = [
    "Group", "StructureSet", "discover", "register_leaf", "register_matcher",
    "register_resizer", "count_flops", "SUPPORTED_MODULES", "consumer_weight",
]

Slice = tuple[str, int, tuple[int, ...]]


@dataclass(frozen=True)
class Group:
    """One prunable structure: parameters (and buffers) that go together.

    ``slices`` holds ``(tensor_name, dim, indices)`` for every parameter and buffer
    slice the group owns (names as in ``model.state_dict()``); ``params`` counts
    only parameters. ``consumer``/``consumer_channels`` name the first module whose
    input the group feeds and its input-channel indices there (for a Linear
    consumer these are feature columns, for a convolution input channels);
    ``consumers`` lists all of them (a residual channel feeds several). ``requires``
    lists the ids of groups this one cannot be kept without (a query head of
    grouped-query attention requires its key/value head): a kept group whose
    requirement is dropped counts as dropped (``StructureSet.effective``).
    """

    id: str
    layer: str
    kind: str
    index: int
    params: int
    flops: int
    slices: tuple[Slice, ...] = field(repr=False)
    consumer: str = ""
    consumer_channels: tuple[int, ...] = field(default=(), repr=False)
    consumers: tuple[tuple[str, tuple[int, ...]], ...] = field(default=(), repr=False)
    extra_flops: int = 0  # part of ``flops`` not carried by weight slices (head products)
    requires: tuple[str, ...] = ()


@dataclass
class StructureSet:
    """The prunable groups of ``model`` with their exact costs for one input sample.

    ``input_shape`` is one sample's shape (of the main input tensor for dict inputs),
    ``example`` one sample of the inputs discovery ran on (a tensor or a dict of
    keyword inputs). ``dense_params`` counts every parameter of the model,
    ``dense_flops`` every multiply-accumulate of its Linear/convolution layers and
    attention products for one sample; ``fixed_params`` is the part no group can
    remove (embeddings, norms, classifier, frozen layers).
    """

    model: nn.Module
    groups: list[Group]
    input_shape: tuple[int, ...]
    dense_params: int
    dense_flops: int
    ops: list[tuple[str, str, int]] = field(default_factory=list, repr=False)
    param_names: frozenset = field(default_factory=frozenset, repr=False)
    frozen: dict[str, str] = field(default_factory=dict, repr=False)
    example: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def ids(self) -> list[str]:
        return [g.id for g in self.groups]

    @property
    def layers(self) -> list[str]:
        return [g.layer for g in self.groups]

    @property
    def kinds(self) -> list[str]:
        return [g.kind for g in self.groups]

    @property
    def integer_inputs(self) -> bool:
        """True when the model takes integer inputs (token ids) or keyword inputs."""
        x = self.example
        return isinstance(x, dict) or (isinstance(x, torch.Tensor) and not x.is_floating_point())

    def batches(self, data: Any, batch_size: int = 256, where: str = "the importance score",
                need_targets: bool = False) -> Iterator[tuple[Any, torch.Tensor | None]]:
        """Validated calibration batches for this model (``calib.batches`` with this
        set's input shape, the model's dtype and device)."""
        from .calib import batches, model_device, param_dtype

        return batches(data, self.sample_shape, batch_size, where, need_targets,
                       param_dtype(self.model), model_device(self.model), self.integer_inputs)

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The shape tensor inputs must have per sample (None for keyword inputs)."""
        return None if isinstance(self.example, dict) else self.input_shape

    def costs(self) -> dict[str, np.ndarray]:
        """Per-group standalone removal costs: {"params": ..., "flops": ...} (float64)."""
        return {"params": np.array([g.params for g in self.groups], dtype=np.float64),
                "flops": np.array([g.flops for g in self.groups], dtype=np.float64)}

    @property
    def fixed_params(self) -> int:
        """Parameters no group touches: dense_params - |union of all group slices|."""
        return self.predict(np.zeros(len(self.groups), dtype=bool))["params"]

    def layer_kind_index(self) -> dict[tuple[str, str], np.ndarray]:
        """(layer, kind) -> positions of its groups in ``groups``, in first-seen order."""
        out: dict[tuple[str, str], list[int]] = {}
        for i, g in enumerate(self.groups):
            out.setdefault((g.layer, g.kind), []).append(i)
        return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}

    def requirements(self) -> list[tuple[int, int]]:
        """(i, j) pairs: group i can be kept only if group j is kept."""
        pos = {g.id: i for i, g in enumerate(self.groups)}
        return [(i, pos[r]) for i, g in enumerate(self.groups) for r in g.requires if r in pos]

    def check_keep(self, keep: Any) -> np.ndarray:
        keep = np.asarray(keep)
        check(keep.shape == (len(self.groups),), "The keep mask", f"of shape ({len(self.groups)},)"
              " (one entry per group)", keep.shape)
        check(keep.dtype == bool or bool(np.isin(keep, (0, 1)).all()), "The keep mask",
              "boolean (or 0/1)", str(keep.dtype))
        return keep.astype(bool)

    def effective(self, keep: Any) -> np.ndarray:
        """The keep mask with every group whose requirement is dropped dropped too."""
        keep = self.check_keep(keep).copy()
        for i, j in self.requirements():
            if not keep[j]:
                keep[i] = False
        return keep

    def removed_indices(self, keep: Any) -> dict[str, dict[int, np.ndarray]]:
        """tensor name -> dim -> sorted indices removed by the dropped groups."""
        keep = self.effective(keep)
        acc: dict[str, dict[int, list[int]]] = {}
        for g, k in zip(self.groups, keep):
            if k:
                continue
            for name, dim, idx in g.slices:
                acc.setdefault(name, {}).setdefault(dim, []).extend(idx)
        return {n: {d: np.unique(np.asarray(v, dtype=np.int64)) for d, v in dims.items()}
                for n, dims in acc.items()}

    def predict(self, keep: Any) -> dict[str, int]:
        """Exact parameters and MACs of the model pruned to ``keep``.

        Every tensor keeps prod_d (size_d - |removed_d|) entries; a Linear/convolution
        op costs its remaining weight entries times its positions per sample; heads add
        their score/value products when kept.
        """
        keep = self.effective(keep)
        removed = self.removed_indices(keep)
        shapes = {n: tuple(t.shape) for n, t in _named_tensors(self.model).items()}

        def remaining(name: str) -> int:
            shape = list(shapes[name])
            for d, idx in removed.get(name, {}).items():
                shape[d] -= idx.size
            return int(np.prod(shape, dtype=np.int64))

        params = sum(remaining(n) for n in self.param_names)
        flops = sum(pos * remaining(w) for _, w, pos in self.ops)
        flops += sum(g.extra_flops for g, k in zip(self.groups, keep) if k)
        flops += self._fixed_extra_flops
        return {"params": int(params), "flops": int(flops)}

    _fixed_extra_flops: int = 0

    @contextlib.contextmanager
    def masked(self, keep: Any, fill: dict[str, torch.Tensor] | None = None) -> Iterator[nn.Module]:
        """Within the context, the model computes as if the dropped groups were removed:
        forward pre-hooks on every consumer set the dropped input channels to 0
        (or to ``fill[consumer][channel]``, e.g. calibration means for bias
        compensation). No weight changes. Modules whose native forward does not call
        their consumer as a module (``nn.MultiheadAttention``) run an explicit forward
        of the same function meanwhile. Yields the model."""
        from .explicit import explicit_modules

        masks = self.consumer_masks(keep)
        named = dict(self.model.named_modules())
        handles = []
        with explicit_modules(self.model):
            try:
                for cname, m in masks.items():
                    mod = named[cname]
                    f = None if fill is None or cname not in fill else fill[cname]
                    handles.append(mod.register_forward_pre_hook(_mask_hook(mod, m, f)))
                yield self.model
            finally:
                for h in handles:
                    h.remove()

    def consumer_masks(self, keep: Any) -> dict[str, torch.Tensor]:
        """consumer name -> float mask over its input channels (1 kept, 0 dropped)."""
        keep = self.effective(keep)
        masks: dict[str, torch.Tensor] = {}
        for cname, (width, chans, owner) in self.consumer_index().items():
            m = np.ones(width, dtype=np.float32)
            m[chans[~keep[owner]]] = 0.0
            masks[cname] = torch.from_numpy(m)
        return masks

    def consumer_index(self) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
        """consumer -> (input width, channel of each (group, channel) pair, its group),
        built once: masks are then one vectorized assignment per consumer."""
        cached = self.__dict__.get("_consumer_index_cache")
        if cached is not None and cached[0] == len(self.groups):
            return cached[1]
        named = dict(self.model.named_modules())
        acc: dict[str, tuple[list[int], list[int]]] = {}
        for gi, g in enumerate(self.groups):
            for cname, chans in g.consumers:
                a = acc.setdefault(cname, ([], []))
                a[0].extend(chans)
                a[1].extend([gi] * len(chans))
        index = {c: (_in_width(named[c]), np.asarray(ch, dtype=np.int64),
                     np.asarray(gs, dtype=np.int64)) for c, (ch, gs) in acc.items()}
        self.__dict__["_consumer_index_cache"] = (len(self.groups), index)
        return index

    def summary(self) -> dict[str, Any]:
        """JSON-ready overview: per (layer, kind) width and costs."""
        lk = self.layer_kind_index()
        return {
            "n_groups": len(self.groups), "input_shape": list(self.input_shape),
            "dense_params": self.dense_params, "dense_flops": self.dense_flops,
            "fixed_params": self.fixed_params,
            "slots": [{"layer": lay, "kind": k, "width": int(ix.size),
                       "params_each": [int(x) for x in sorted({self.groups[i].params for i in ix})],
                       "flops_each": [int(x) for x in sorted({self.groups[i].flops for i in ix})]}
                      for (lay, k), ix in lk.items()],
            "frozen": dict(self.frozen),
        }


def consumer_weight(mod: nn.Module) -> tuple[torch.Tensor, int]:
    """(weight, dim of the consumer's input channels in it): dim 1 for Linear and
    convolutions, dim 0 for Hugging Face Conv1D (its weight is (in, out))."""
    return _weight(mod), 0 if _is_hf_conv1d(mod) else 1


def _weight(mod: nn.Module) -> torch.Tensor:
    w = mod.weight
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(mod).__name__}.weight is a {type(w).__name__}, not a tensor")
    return w


def _in_width(mod: nn.Module) -> int:
    if isinstance(mod, nn.Linear):
        return mod.in_features
    if isinstance(mod, nn.modules.conv._ConvNd):
        return mod.in_channels
    if _is_hf_conv1d(mod):
        return int(_weight(mod).shape[0])
    raise TypeError(f"not a consumer type: {type(mod).__name__}")


def _mask_hook(mod: nn.Module, mask: torch.Tensor, fill: torch.Tensor | None):
    from .calib import channels_first

    conv = channels_first(mod)

    def hook(_m, args):
        x = args[0]
        m = mask.to(dtype=x.dtype, device=x.device)
        view = (1, -1) + (1,) * (x.dim() - 2) if conv else (-1,)
        m = m.view(*view)
        y = x * m
        if fill is not None:
            f = fill.to(dtype=x.dtype, device=x.device)
            y = y + (1 - m) * f.view(*view)
        return (y,) + tuple(args[1:])

    return hook


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by every name it has (tied weights under each name)."""
    d: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    d.update(dict(model.named_buffers(remove_duplicate=False)))
    return d


def _is_hf_conv1d(mod: object) -> bool:
    t = type(mod)
    return t.__name__ == "Conv1D" and t.__module__.startswith("transformers")


# ----------------------------------------------------------------- registries
ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU,
    nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Hardtanh, nn.Dropout, nn.Identity,
    nn.Dropout1d, nn.Dropout2d, nn.PReLU,
)
SPATIAL_MODULES: tuple[type, ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                                     nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                                     nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                                     nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d)
FREEZING_MODULES: tuple[type, ...] = (nn.LayerNorm, nn.Softmax, nn.GroupNorm, nn.Embedding,
                                      nn.EmbeddingBag, nn.RMSNorm)
# Norm layers of other libraries (LlamaRMSNorm, T5LayerNorm...) mix every channel.
_NORM_NAME = re.compile(r"(Norm|LayerNorm|RMSNorm)(\dd)?$")

# What a handler or resizer may assume of its module: the class it is filed under, or
# what its matcher's TypeGuard states (a Protocol of the attributes it checked).
M = TypeVar("M")
LeafHandler = Callable[["_Ctx", str, nn.Module, fx.Node], Any]
Resizer = Callable[[nn.Module], None]
_LEAF_HANDLERS: dict[type, LeafHandler] = {}
_MATCHERS: list[tuple[Callable[[nn.Module], bool], LeafHandler]] = []
_RESIZERS: dict[type, Resizer] = {}
_RESIZE_MATCHERS: list[tuple[Callable[[nn.Module], bool], Resizer]] = []


def _file_under(table: dict[type, LeafHandler], types: Iterable[type[M]],
                handler: Callable[[_Ctx, str, M, fx.Node], Any]) -> None:
    for t in types:
        # Tables are read along type(module).__mro__: the handler only sees instances of t.
        table[t] = cast(LeafHandler, handler)


def register_leaf(module_type: type[M], handler: Callable[[_Ctx, str, M, fx.Node], Any]) -> None:
    """Teach discovery a new leaf module type. ``handler(ctx, name, module, node)``
    returns the output annotation (``ctx.frozen_ann(node)`` for a new frozen space, a
    tuple of annotations for a tuple output) and may add groups with
    ``ctx.add_group(...)``, spaces with ``ctx.new_space`` / ``ctx.produce``, ops with
    ``ctx.add_op(...)``."""
    _file_under(_LEAF_HANDLERS, (module_type,), handler)


@overload
def register_matcher(predicate: Callable[[nn.Module], TypeGuard[M]],
                     handler: Callable[[_Ctx, str, M, fx.Node], Any]) -> None: ...


@overload
def register_matcher(predicate: Callable[[nn.Module], bool], handler: LeafHandler) -> None: ...


def register_matcher(predicate: Callable[[nn.Module], bool],
                     handler: Callable[[_Ctx, str, Any, fx.Node], Any]) -> None:
    """Like :func:`register_leaf` for every module ``predicate(module)`` accepts (model
    families recognised by their structure rather than one class). A predicate typed
    ``TypeGuard[P]`` lets the handler take a ``P``."""
    _MATCHERS.append((predicate, handler))


@overload
def register_resizer(module_type: type[M], fn: Callable[[M], None]) -> None: ...


@overload
def register_resizer(module_type: Callable[[nn.Module], TypeGuard[M]],
                     fn: Callable[[M], None]) -> None: ...


@overload
def register_resizer(module_type: Callable[[nn.Module], bool], fn: Resizer) -> None: ...


def register_resizer(module_type: type | Callable[[nn.Module], bool],
                     fn: Callable[[Any], None]) -> None:
    """After surgery slices a module's tensors, ``fn(module)`` fixes its size attributes.
    ``module_type`` is a class, or a predicate on modules."""
    if isinstance(module_type, type):
        _RESIZERS[module_type] = fn
    else:
        _RESIZE_MATCHERS.append((module_type, fn))


def resizer_of(m: nn.Module) -> Resizer | None:
    fn = _RESIZERS.get(type(m))
    if fn is not None:
        return fn
    for pred, f in _RESIZE_MATCHERS:
        if pred(m):
            return f
    return None


def SUPPORTED_MODULES() -> tuple[type, ...]:  # noqa: N802 (reads like a constant)
    _load_adapters()
    return (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten,
            *ELEMENTWISE_MODULES, *SPATIAL_MODULES, *FREEZING_MODULES, *_LEAF_HANDLERS)


def _load_adapters() -> None:
    from . import adapters  # noqa: F401  (registers the attention and Conv1D handlers)


def _handler_of(mod: nn.Module) -> LeafHandler | None:
    for t in type(mod).__mro__:
        if t in _LEAF_HANDLERS:
            return _LEAF_HANDLERS[t]
    for pred, h in _MATCHERS:
        if pred(mod):
            return h
    for t in type(mod).__mro__:
        if t in _MODULE_HANDLERS:
            return _MODULE_HANDLERS[t]
    if _is_norm(mod):
        return _freezing_module
    return None


def _is_norm(mod: nn.Module) -> bool:
    return bool(_NORM_NAME.search(type(mod).__name__)) and not any(True for _ in mod.children())


# ----------------------------------------------------------------- analysis
@dataclass
class _Space:
    width: int
    frozen: str = ""  # reason, "" when prunable so far
    owners: list[tuple[str, str]] = field(default_factory=list)  # (layer, kind) producing it
    # (tensor, dim, unit, offset): unit i owns offset + i*unit .. offset + (i+1)*unit - 1
    slots: list[tuple[str, int, int, int]] = field(default_factory=list)
    # (module, tensor, dim, expand): the module reads unit i through entries i*expand..
    consumers: list[tuple[str, str, int, int]] = field(default_factory=list)
    extra_per_unit: int = 0  # MACs per unit not carried by weights (attention products)


@dataclass(frozen=True)
class _Ann:
    space: int
    cdim: int
    expand: int
    ndim: int


class _Ctx:
    """Union-find over channel spaces plus the groups and ops found so far."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.parent: list[int] = []
        self.spaces: list[_Space] = []
        self.extra_groups: list[Group] = []
        self.ops: list[tuple[str, str, int]] = []
        self.env: dict[fx.Node, Any] = {}
        self.calls: dict[str, int] = {}
        self.opaque: set[str] = set()  # excluded modules of unknown types: not looked into

    def env_of(self, a: Any) -> Any:
        """The annotation of a graph node argument (None for non-tensors)."""
        return _arg(self.env, a)

    def new_space(self, width: int, frozen: str = "") -> int:
        self.parent.append(len(self.parent))
        self.spaces.append(_Space(width, frozen))
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def space(self, s: int) -> _Space:
        return self.spaces[self.find(s)]

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        sa, sb = self.spaces[ra], self.spaces[rb]
        if sa.width != sb.width:
            sa.frozen = sa.frozen or f"merged spaces of widths {sa.width} and {sb.width}"
        if sa.extra_per_unit or sb.extra_per_unit:
            sa.frozen = sa.frozen or "an attention head space merged with another space"
        sa.frozen = sa.frozen or sb.frozen
        sa.owners += sb.owners
        sa.slots += sb.slots
        sa.consumers += sb.consumers
        self.parent[rb] = ra
        return ra

    def freeze(self, ann: Any, reason: str) -> None:
        for a in _anns(ann):
            sp = self.space(a.space)
            if not sp.frozen:
                sp.frozen = reason

    def frozen_ann(self, node: fx.Node, reason: str) -> Any:
        shape = _shape(node)
        if shape is None:
            return None
        nd = len(shape)
        cdim = nd - 1 if nd != 4 else 1
        return _Ann(self.new_space(shape[cdim] if nd else 1, reason), max(cdim, 0), 1, nd)

    def produce(self, width: int, layer: str, kind: str,
                slots: Sequence[tuple[str, int, int, int]], extra_per_unit: int = 0) -> int:
        """A new space of ``width`` units written by ``layer``; ``slots`` are
        (tensor, dim, unit, offset) of the tensors each unit owns."""
        s = self.new_space(width)
        sp = self.space(s)
        sp.owners.append((layer, kind))
        sp.slots.extend(slots)
        sp.extra_per_unit = int(extra_per_unit)
        return s

    def consume(self, x: Any, module: str, tensor: str, dim: int, width: int, cdim: int,
                reason: str) -> None:
        """``module`` reads the channel dim ``cdim`` of ``x`` through ``tensor``'s dim
        ``dim`` of size ``width``; anything else freezes x."""
        if isinstance(x, _Ann) and x.cdim == cdim % max(x.ndim, 1) and \
                self.space(x.space).width * x.expand == width:
            self.space(x.space).consumers.append((module, tensor, dim, x.expand))
        else:
            self.freeze(x, reason)

    def add_percha(self, x: _Ann, slots: Sequence[tuple[str, int]]) -> None:
        """Per-channel tensors on x's space (BatchNorm, depthwise conv): unit i owns
        entries i*expand .. (i+1)*expand - 1 of dim d of each tensor."""
        self.space(x.space).slots.extend((t, d, x.expand, 0) for t, d in slots)

    def add_group(self, g: Group) -> None:
        self.extra_groups.append(g)

    def add_op(self, module: str, weight: str, positions: int) -> None:
        self.ops.append((module, weight, int(positions)))


def _anns(x: Any) -> Iterator[_Ann]:
    if isinstance(x, _Ann):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _anns(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _anns(y)


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    tm = node.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "shape"):
        return None
    return tuple(int(s) for s in tm.shape)


def _arg(env: dict, a: Any) -> Any:
    if isinstance(a, fx.Node):
        return env.get(a)
    if isinstance(a, (list, tuple)):
        return type(a)(_arg(env, x) for x in a)
    if isinstance(a, dict):
        return {k: _arg(env, v) for k, v in a.items()}
    return None


def _input(node: fx.Node) -> Any:
    """The first tensor argument of a module call (positional or keyword)."""
    for a in node.args:
        if isinstance(a, fx.Node):
            return a
    for a in node.kwargs.values():
        if isinstance(a, fx.Node):
            return a
    return None


def _positions(shape: tuple[int, ...] | None, channels_first: bool = False) -> int:
    """Positions per sample: tokens for (N, ..., C), output pixels for (N, C, ...)."""
    if not shape:
        return 1
    inner = shape[2:] if channels_first else shape[1:-1]
    return int(np.prod(inner, dtype=np.int64))


# ----------------------------------------------------------------- module handlers
def _linear(ctx: _Ctx, name: str, mod: nn.Module, node: fx.Node) -> Any:
    src = _input(node)
    x, in_shape, shape = ctx.env_of(src), _shape(src), _shape(node)
    w, in_dim = consumer_weight(mod)  # Linear (out, in), Conv1D (in, out)
    in_w, out_w = int(w.shape[in_dim]), int(w.shape[1 - in_dim])
    ctx.add_op(name, f"{name}.weight", _positions(in_shape))
    ctx.consume(x, name, f"{name}.weight", in_dim, in_w, -1,
                f"input of {name} ({type(mod).__name__}) not on its last dim")
    kind = "ffn" if in_shape is not None and len(in_shape) >= 3 else "neuron"
    slots = [(f"{name}.weight", 1 - in_dim, 1, 0)]
    if mod.bias is not None:
        slots.append((f"{name}.bias", 0, 1, 0))
    s = ctx.produce(out_w, name, kind, slots)
    nd = len(shape) if shape else 2
    return _Ann(s, nd - 1, 1, nd)


def _conv(ctx: _Ctx, name: str, mod: nn.modules.conv._ConvNd, node: fx.Node) -> Any:
    src = _input(node)
    x, shape = ctx.env_of(src), _shape(node)
    nd = len(shape) if shape else 4
    ctx.add_op(name, f"{name}.weight", _positions(shape, channels_first=True))
    if mod.groups != 1:
        depthwise = mod.groups == mod.in_channels == mod.out_channels
        if depthwise and isinstance(x, _Ann) and x.cdim == 1 and x.expand == 1 and \
                ctx.space(x.space).width == mod.in_channels:
            percha = [(f"{name}.weight", 0)] + ([(f"{name}.bias", 0)] if mod.bias is not None
                                                else [])
            ctx.add_percha(x, percha)
            return _Ann(x.space, 1, 1, nd)
        reason = f"grouped conv {name} (groups={mod.groups}; only depthwise with " \
                 "in = out = groups is followed)"
        ctx.freeze(x, reason)
        return ctx.frozen_ann(node, reason)
    ctx.consume(x, name, f"{name}.weight", 1, mod.in_channels, 1,
                f"input of {name} ({type(mod).__name__})")
    slots = [(f"{name}.weight", 0, 1, 0)]
    if mod.bias is not None:
        slots.append((f"{name}.bias", 0, 1, 0))
    return _Ann(ctx.produce(mod.out_channels, name, "channel", slots), 1, 1, nd)


def _batchnorm(ctx: _Ctx, name: str, mod: nn.Module, node: fx.Node) -> Any:
    x = ctx.env_of(_input(node))
    if isinstance(x, _Ann) and x.cdim == 1 and x.expand == 1:
        ctx.add_percha(x, [(f"{name}.{t}", 0) for t in ("weight", "bias", "running_mean",
                                                        "running_var")
                           if getattr(mod, t, None) is not None])
        return x
    reason = f"{name} ({type(mod).__name__})"
    ctx.freeze(x, reason)
    return ctx.frozen_ann(node, reason)


def _elementwise_module(ctx: _Ctx, name: str, mod: nn.Module, node: fx.Node) -> Any:
    x = ctx.env_of(_input(node))
    if isinstance(mod, nn.PReLU) and mod.num_parameters != 1:
        reason = f"{name} (PReLU with one slope per channel)"
        ctx.freeze(x, reason)
        return ctx.frozen_ann(node, reason)
    return x if _shape(node) == _shape(_input(node)) else _opaque(ctx, name, mod, node)


def _spatial_module(ctx: _Ctx, name: str, mod: nn.Module, node: fx.Node) -> Any:
    x = ctx.env_of(_input(node))
    shape = _shape(node)
    if isinstance(x, _Ann) and x.cdim == 1 and x.expand == 1 and shape and len(shape) == x.ndim:
        return x
    return _opaque(ctx, name, mod, node)


def _flatten_module(ctx: _Ctx, name: str, mod: nn.Flatten, node: fx.Node) -> Any:
    return _flatten(ctx, node, ctx.env_of(_input(node)), mod.start_dim, mod.end_dim,
                    f"{name} (Flatten)")


def _freezing_module(ctx: _Ctx, name: str, mod: nn.Module, node: fx.Node) -> Any:
    return _opaque(ctx, name, mod, node)


def _opaque(ctx: _Ctx, name: str, mod: nn.Module, node: fx.Node) -> Any:
    """A module discovery does not look into: its inputs and outputs stay dense."""
    reason = f"{name} ({type(mod).__name__})"
    ctx.freeze([ctx.env_of(a) for a in node.args] + [ctx.env_of(v) for v in node.kwargs.values()],
               reason)
    return ctx.frozen_ann(node, reason)


_MODULE_HANDLERS: dict[type, LeafHandler] = {}
_file_under(_MODULE_HANDLERS, (nn.Linear,), _linear)
_file_under(_MODULE_HANDLERS, (nn.Conv1d, nn.Conv2d), _conv)
_file_under(_MODULE_HANDLERS, (nn.BatchNorm1d, nn.BatchNorm2d), _batchnorm)
_file_under(_MODULE_HANDLERS, (nn.Flatten,), _flatten_module)
_file_under(_MODULE_HANDLERS, ELEMENTWISE_MODULES, _elementwise_module)
_file_under(_MODULE_HANDLERS, SPATIAL_MODULES, _spatial_module)
_file_under(_MODULE_HANDLERS, FREEZING_MODULES, _freezing_module)


# ----------------------------------------------------------------- function handlers
FnHandler = Callable[[_Ctx, fx.Node, list], Any]


def _same(ctx: _Ctx, node: fx.Node, args: list) -> Any:
    """Unary ops that keep every element where it is (activations, casts, copies)."""
    x = args[0] if args else None
    src = node.args[0] if node.args else None
    if isinstance(x, _Ann) and _shape(node) == _shape(src):
        return x
    return _freeze_node(ctx, node, args)


def _binary(ctx: _Ctx, node: fx.Node, args: list) -> Any:
    """x op y: same space (residual add, gating mul) or y constant on the channel dim."""
    shape = _shape(node)
    ops = list(node.args[:2])
    anns = [a if isinstance(a, _Ann) else None for a in args[:2]]
    shapes = [_shape(a) for a in ops]
    tensors = [i for i in range(len(ops)) if shapes[i] is not None]
    if len(tensors) == 1:
        a = anns[tensors[0]]
        if isinstance(a, _Ann) and shapes[tensors[0]] == shape:
            return a
    elif len(tensors) == 2 and shape is not None:
        (a, b), (sa, sb) = anns[:2], shapes[:2]
        if isinstance(a, _Ann) and isinstance(b, _Ann) and sa == sb == shape and \
                (a.cdim, a.expand, a.ndim) == (b.cdim, b.expand, b.ndim):
            return _Ann(ctx.union(a.space, b.space), a.cdim, a.expand, a.ndim)
        for main, other, sm, so in ((a, b, sa, sb), (b, a, sb, sa)):
            if not isinstance(main, _Ann) or sm != shape:
                continue
            if _constant_on(so, shape, main.cdim):
                # The other operand is the same for every channel (a mask, a scale).
                ctx.freeze(other, f"{_label(node)} with a broadcast operand")
                return main
            if isinstance(other, _Ann) and so is not None and other.expand == main.expand \
                    and other.cdim - other.ndim == main.cdim - main.ndim \
                    and so[other.cdim] == sm[main.cdim]:
                # Channel-aligned broadcast (a squeeze-excitation gate): channel i meets i.
                return _Ann(ctx.union(main.space, other.space), main.cdim, main.expand, main.ndim)
    return _freeze_node(ctx, node, args)


def _constant_on(small: tuple[int, ...] | None, shape: tuple[int, ...], cdim: int) -> bool:
    """True when ``small`` broadcast to ``shape`` has size 1 on dim ``cdim``."""
    if small is None:
        return False
    k = cdim - (len(shape) - len(small))
    return k < 0 or small[k] == 1


def _spatial_fn(ctx: _Ctx, node: fx.Node, args: list) -> Any:
    x, shape = (args[0] if args else None), _shape(node)
    if isinstance(x, _Ann) and x.cdim == 1 and x.expand == 1 and shape and len(shape) == x.ndim:
        return x
    return _freeze_node(ctx, node, args)


def _pad(ctx: _Ctx, node: fx.Node, args: list) -> Any:
    x = args[0] if args else None
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    if isinstance(x, _Ann) and isinstance(pad, (list, tuple)) and x.expand == 1 and \
            len(pad) // 2 <= x.ndim - 1 - x.cdim and \
            (len(node.args) < 4 or node.args[3] in (0, 0.0, None)) and \
            node.kwargs.get("value", 0) in (0, 0.0, None):
        return x  # zero padding of dims after the channel dim
    return _freeze_node(ctx, node, args)


def _flatten_fn(ctx: _Ctx, node: fx.Node, args: list) -> Any:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    if isinstance(start, int) and isinstance(end, int):
        return _flatten(ctx, node, args[0] if args else None, start, end, _label(node))
    return _freeze_node(ctx, node, args)


def _flatten(ctx: _Ctx, node: fx.Node, x: Any, start: int, end: int, reason: str) -> Any:
    src = node.args[0] if node.args else None
    in_shape = _shape(src)
    if isinstance(x, _Ann) and in_shape is not None:
        nd = len(in_shape)
        start, end = start % nd, end % nd
        if start > x.cdim or end < x.cdim:  # channel dim untouched
            new_cdim = x.cdim if start > x.cdim else x.cdim - (end - start)
            return _Ann(x.space, new_cdim, x.expand, nd - (end - start))
        if start == x.cdim:
            inner = int(np.prod(in_shape[x.cdim + 1:end + 1], dtype=np.int64))
            return _Ann(x.space, x.cdim, x.expand * inner, nd - (end - start))
    ctx.freeze(x, reason)
    return ctx.frozen_ann(node, reason)


def _reshape(ctx: _Ctx, node: fx.Node, args: list) -> Any:
    x = args[0] if args else None
    in_shape, out_shape = _shape(node.args[0]) if node.args else None, _shape(node)
    if isinstance(x, _Ann) and in_shape is not None and out_shape is not None:
        c = x.cdim
        if in_shape == out_shape:
            return x
        if len(out_shape) == c + 1 and out_shape[:c] == in_shape[:c] and \
                out_shape[c] == int(np.prod(in_shape[c:], dtype=np.int64)):
            inner = int(np.prod(in_shape[c + 1:], dtype=np.int64))
            return _Ann(x.space, c, x.expand * inner, c + 1)
    return _freeze_node(ctx, node, args)


def _reduce(ctx: _Ctx, node: fx.Node, args: list) -> Any:
    x = args[0] if args else None
    in_shape, out_shape = _shape(node.args[0]) if node.args else None, _shape(node)
    raw = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if isinstance(x, _Ann) and in_shape is not None and out_shape is not None and x.expand == 1:
        nd = len(in_shape)
        dims = _int_dims(raw, nd)
        if dims is not None and x.cdim not in dims:
            if keepdim:
                return x
            return _Ann(x.space, x.cdim - sum(d < x.cdim for d in dims), 1, nd - len(dims))
    return _freeze_node(ctx, node, args)


def _int_dims(raw: Any, nd: int) -> list[int] | None:
    """``raw`` (a dim or a list/tuple of dims) as dims in 0..nd-1; None unless all are ints."""
    if isinstance(raw, int):
        return [raw % nd]
    if isinstance(raw, (list, tuple)) and all(isinstance(d, int) for d in raw):
        return [d % nd for d in raw]
    return None


def _transpose(ctx: _Ctx, node: fx.Node, args: list) -> Any:
    x = args[0] if args else None
    dims = _int_dims(node.args[1:3], x.ndim) if isinstance(x, _Ann) else None
    if isinstance(x, _Ann) and dims is not None and len(dims) == 2:
        a, b = dims
        c = b if x.cdim == a else a if x.cdim == b else x.cdim
        if x.expand == 1 or c == x.cdim:
            return _Ann(x.space, c, x.expand, x.ndim)
    return _freeze_node(ctx, node, args)


def _permute(ctx: _Ctx, node: fx.Node, args: list) -> Any:
    x = args[0] if args else None
    perm = node.args[1:] if len(node.args) > 2 else (node.args[1] if len(node.args) > 1 else None)
    dims = _int_dims(perm, x.ndim) if isinstance(x, _Ann) and isinstance(perm, (list, tuple)) \
        else None
    if isinstance(x, _Ann) and dims is not None and x.expand == 1 and len(dims) == x.ndim:
        return _Ann(x.space, dims.index(x.cdim), 1, x.ndim)
    return _freeze_node(ctx, node, args)


def _getitem(ctx: _Ctx, node: fx.Node, args: list) -> Any:
    parent = ctx.env.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    if isinstance(parent, tuple) and isinstance(node.args[1], int) and \
            _shape(node.args[0]) is None and node.args[1] < len(parent):
        return parent[node.args[1]]  # element of a leaf's tuple output
    return _freeze_node(ctx, node, args)


def _no_tensor(ctx: _Ctx, node: fx.Node, args: list) -> Any:
    return None


def _freeze_node(ctx: _Ctx, node: fx.Node, args: list) -> Any:
    label = _label(node)
    ctx.freeze(args + [ctx.env_of(v) for v in node.kwargs.values()], label)
    return ctx.frozen_ann(node, label)


def _label(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


_UNARY_FUNCS = (
    F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.tanh, torch.sigmoid, F.dropout,
    F.leaky_relu, F.elu, F.hardswish, F.hardsigmoid, F.softplus, F.mish, F.hardtanh,
    torch.neg, operator.neg, torch.nn.functional.relu_, torch.clamp, torch.clip, torch.erf,
    torch.exp, torch.sqrt, torch.abs, torch.square, torch.rsqrt, torch.pow, operator.pow,
    torch.dropout, F.dropout1d, F.dropout2d, F.sigmoid, F.tanh,
)
_UNARY_METHODS = ("relu", "sigmoid", "tanh", "contiguous", "clone", "neg", "float", "double",
                  "half", "bfloat16", "to", "type_as", "detach", "clamp", "clip", "exp", "erf",
                  "sqrt", "abs", "square", "pow", "rsqrt", "type", "requires_grad")
_BINARY_FUNCS = (operator.add, operator.sub, operator.mul, operator.truediv, torch.add,
                 torch.sub, torch.mul, torch.div, torch.true_divide)
_BINARY_METHODS = ("add", "sub", "mul", "div", "true_divide", "rsub", "multiply")
_SPATIAL_FUNCS = (F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
                  F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                  torch.max_pool1d, torch.max_pool2d, torch.avg_pool1d, torch.adaptive_avg_pool1d,
                  F.interpolate)

_FUNCTION_HANDLERS: dict[Any, FnHandler] = {
    **{f: _same for f in _UNARY_FUNCS},
    **{f: _binary for f in _BINARY_FUNCS},
    **{f: _spatial_fn for f in _SPATIAL_FUNCS},
    F.pad: _pad, torch.flatten: _flatten_fn, torch.reshape: _reshape,
    torch.mean: _reduce, torch.sum: _reduce, torch.amax: _reduce,
    torch.transpose: _transpose, torch.permute: _permute, operator.getitem: _getitem,
    getattr: _no_tensor,
}
_METHOD_HANDLERS: dict[str, FnHandler] = {
    **{m: _same for m in _UNARY_METHODS},
    **{m: _binary for m in _BINARY_METHODS},
    "flatten": _flatten_fn, "view": _reshape, "reshape": _reshape,
    "mean": _reduce, "sum": _reduce, "amax": _reduce,
    "transpose": _transpose, "permute": _permute, "size": _no_tensor, "dim": _no_tensor,
}


# ----------------------------------------------------------------- the graph walk
def _visit_placeholder(ctx: _Ctx, node: fx.Node) -> Any:
    return ctx.frozen_ann(node, "model input")


def _visit_get_attr(ctx: _Ctx, node: fx.Node) -> Any:
    return ctx.frozen_ann(node, f"tensor {node.target} used directly")


def _visit_output(ctx: _Ctx, node: fx.Node) -> Any:
    ctx.freeze([ctx.env_of(a) for a in node.args], "model output")
    return None


def _visit_module(ctx: _Ctx, node: fx.Node) -> Any:
    name = node.target
    assert isinstance(name, str)  # a call_module node's target is the module's path
    mod = ctx.modules[name]
    n_calls = ctx.calls[name]
    if n_calls > 1 and any(True for _ in mod.parameters()):
        reason = f"{name} is called {n_calls} times"
        ctx.freeze([ctx.env_of(a) for a in node.args] + [ctx.env_of(v) for v in
                                                          node.kwargs.values()], reason)
        return ctx.frozen_ann(node, reason)
    handler = _handler_of(mod) if name not in ctx.opaque else None
    return (handler or _opaque)(ctx, name, mod, node)


def _visit_call(ctx: _Ctx, node: fx.Node) -> Any:
    args = [ctx.env_of(a) for a in node.args]
    if node.op == "call_method":
        handler = _METHOD_HANDLERS.get(node.target, _freeze_node) \
            if isinstance(node.target, str) else _freeze_node
    else:
        try:
            handler = _FUNCTION_HANDLERS.get(node.target, _freeze_node)
        except TypeError:  # unhashable target
            handler = _freeze_node
    return handler(ctx, node, args)


_VISITORS: dict[str, Callable[[_Ctx, fx.Node], Any]] = {
    "placeholder": _visit_placeholder, "get_attr": _visit_get_attr, "output": _visit_output,
    "call_module": _visit_module, "call_function": _visit_call, "call_method": _visit_call,
}


# ----------------------------------------------------------------- discovery
def _unsupported(model: nn.Module, exclude: set[str]) -> list[str]:
    """Leaf modules of unknown types that own parameters (and are not excluded)."""
    out = []
    for name, m in model.named_modules():
        if not name or _excluded(name, exclude) or _handler_of(m) is not None:
            continue
        if any(True for _ in m.children()):
            continue
        if any(True for _ in m.parameters(recurse=False)):
            out.append(f"{name} ({type(m).__name__})")
    return out


def _excluded(name: str, exclude: set[str]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in exclude)


def _example_inputs(model: nn.Module, input_shape: Sequence[int] | None, data: Any,
                    example_input: Any) -> tuple[Any, tuple[int, ...]]:
    """(inputs discovery runs on, one sample's shape) from whichever was given."""
    from .calib import batches, model_device, param_dtype, sample_input

    dtype, device = param_dtype(model), model_device(model)
    shape = None
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        check(len(shape) >= 1 and all(s > 0 for s in shape), "The 'input_shape' of discover",
              "a tuple of positive ints without the batch dimension, e.g. (64,) or (1, 8, 8)",
              shape)
    if example_input is not None:
        x, _ = next(iter(batches(example_input, shape, 2, "discover's example_input",
                                 dtype=dtype, device=device, integer_inputs=True)))
    elif data is not None:
        x, _ = next(iter(batches(data, shape, 2, "structure discovery", dtype=dtype,
                                 device=device, integer_inputs=True)))
    else:
        check(shape is not None, "The inputs of discover", "given as input_shape (one sample's "
              "shape), data or example_input (a tensor or a dict of model inputs)", None)
        assert shape is not None  # check() raised otherwise
        x = torch.randn(2, *shape, dtype=dtype, device=device)
    x = sample_input(x, 2)
    if isinstance(x, dict):
        main = next(v for v in x.values() if isinstance(v, torch.Tensor))
        return x, tuple(int(s) for s in main.shape[1:])
    return x, tuple(int(s) for s in x.shape[1:])


def discover(model: nn.Module, input_shape: Sequence[int] | None = None, *,
             data: Any = None, example_input: Any = None,
             exclude: Sequence[str] = ()) -> StructureSet:
    """Find every prunable group of ``model`` with exact parameter and MAC costs for
    one input sample. The model runs once (eval mode, no grad) on ``example_input``, or
    on the first two samples of ``data`` (anything ``optprune.nn.calib.batches``
    takes: a tensor, (X, y), a dict of model inputs such as input_ids /
    attention_mask / pixel_values, a loader), or on random inputs of ``input_shape``
    (one sample's shape without the batch dimension). The model is not changed.

    exclude: module names (or prefixes) whose groups are left out (they stay dense); an
        excluded module of a type discovery does not know is not looked into.
    Raises UnsupportedModuleError listing every leaf module of an unknown type that owns
    parameters, ValidationError when the inputs do not run the model.
    """
    from .calib import run_model
    from .explicit import no_fastpath
    from .trace import record

    check(isinstance(model, nn.Module), "The 'model' of discover", "a torch.nn.Module",
          type(model).__name__)
    _load_adapters()
    exclude_set = {str(e) for e in exclude}
    names = dict(model.named_modules())
    unknown = sorted(e for e in exclude_set if e not in names)
    check(not unknown, "The 'exclude' names of discover", "module names of the model "
          "(as in model.named_modules())", unknown)
    unsupported = _unsupported(model, exclude_set)
    if unsupported:
        raise UnsupportedModuleError(
            f"{len(unsupported)} module(s) of {type(model).__name__} own parameters and are of "
            f"a type structure discovery has no handler for, so it cannot tell which of "
            f"their input and output channels they couple: {', '.join(unsupported)}. Pass "
            "exclude=[...] with these names to keep them (and the channels they touch) "
            "dense, or register a handler with optprune.nn.structures.register_leaf. "
            "Followed: Linear, Conv1d/2d "
            "(groups=1 or depthwise), BatchNorm, pooling, Flatten, activations, Dropout, "
            "norms (kept dense), Embedding, Hugging Face Conv1D, attention modules "
            "(optprune.nn.adapters).")
    inputs, shape = _example_inputs(model, input_shape, data, example_input)
    opaque = {n for n, m in names.items() if n and _excluded(n, exclude_set)
              and _handler_of(m) is None}

    def is_leaf(m: nn.Module) -> bool:
        return _handler_of(m) is not None or id(m) in opaque_ids

    opaque_ids = {id(names[n]) for n in opaque}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), no_fastpath():
            graph, _ = record(model, inputs, is_leaf,
                              lambda m, x: run_model(m, x, "structure discovery"))
    finally:
        model.train(was_training)
    ctx = _Ctx(model)
    ctx.opaque = opaque
    for node in graph.nodes:
        if node.op == "call_module":
            ctx.calls[node.target] = ctx.calls.get(node.target, 0) + 1
    for node in graph.nodes:
        ctx.env[node] = _VISITORS[node.op](ctx, node)
    from .calib import sample_input

    return _collect(ctx, model, shape, exclude_set, sample_input(inputs, 1))


def _aliases(model: nn.Module) -> dict[str, str]:
    """name -> another name of the same parameter, for parameters with two names."""
    by_id: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    return {n: [m for m in ns if m != n][0] for ns in by_id.values() if len(ns) > 1 for n in ns}


def _space_reason(sp: _Space, aliases: dict[str, str]) -> str:
    if sp.frozen:
        return sp.frozen
    if not sp.consumers:
        return "no consumer"
    for t in [s[0] for s in sp.slots] + [c[1] for c in sp.consumers]:
        if t in aliases:
            return f"{t} is shared with {aliases[t]}"
    return ""


def _collect(ctx: _Ctx, model: nn.Module, input_shape: tuple[int, ...],
             exclude: set[str], example: Any) -> StructureSet:
    tensors = _named_tensors(model)
    param_names = frozenset(n for n, _ in model.named_parameters())
    aliases = _aliases(model)
    ops = {w: (m, w, pos) for m, w, pos in ctx.ops}
    positions = {w: pos for _, w, pos in ctx.ops}
    frozen: dict[str, str] = {}
    ordered: list[tuple[int, Group]] = []
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}

    def cost(slices: Sequence[Slice], extra: int = 0) -> tuple[int, int]:
        p = f = 0
        for tname, dim, idx in slices:
            t = tensors[tname]
            n = len(idx) * (t.numel() // t.shape[dim]) if t.shape[dim] else 0
            if tname in param_names:
                p += n
            f += n * positions.get(tname, 0)
        return p, f + extra

    for r in sorted({ctx.find(i) for i in range(len(ctx.spaces))}):
        sp = ctx.spaces[r]
        if not sp.owners:
            continue
        layer, kind = sp.owners[0]
        reason = _space_reason(sp, aliases)
        if not reason and _excluded(layer, exclude):
            reason = "excluded"
        if reason:
            frozen[layer] = reason
            continue
        slots = list(dict.fromkeys(sp.slots))
        for i in range(sp.width):
            slices: list[Slice] = [(t, d, tuple(range(off + i * u, off + (i + 1) * u)))
                                   for t, d, u, off in slots if t in tensors]
            cons = []
            for cname, t, d, e in dict.fromkeys(sp.consumers):
                chans = tuple(range(i * e, (i + 1) * e))
                cons.append((cname, chans))
                slices.append((t, d, chans))
            p, f = cost(slices, sp.extra_per_unit)
            ordered.append((order.get(layer, 1 << 30), Group(
                id=f"{layer}:{kind}:{i}", layer=layer, kind=kind, index=i, params=p, flops=f,
                slices=tuple(slices), consumer=cons[0][0], consumer_channels=cons[0][1],
                consumers=tuple(cons), extra_flops=sp.extra_per_unit)))
    excluded_ids = set()
    for g in ctx.extra_groups:
        if _excluded(g.layer, exclude):
            frozen[g.layer] = "excluded"
            excluded_ids.add(g.id)
            continue
        p, f = cost(g.slices, g.extra_flops)
        ordered.append((order.get(g.layer, 1 << 30), Group(**{**g.__dict__, "params": p,
                                                                "flops": f})))
    ordered.sort(key=lambda t: (t[0], t[1].layer, _KIND_ORDER.get(t[1].kind, 9), t[1].kind,
                                t[1].index))
    groups = [g for _, g in ordered]
    extra_total = sum(g.extra_flops for g in ctx.extra_groups) + \
        sum(ctx.spaces[r].extra_per_unit * ctx.spaces[r].width
            for r in {ctx.find(i) for i in range(len(ctx.spaces))})
    ss = StructureSet(model=model, groups=groups, input_shape=input_shape,
                      dense_params=sum(p.numel() for p in model.parameters()), dense_flops=0,
                      ops=list(ops.values()), param_names=param_names, frozen=frozen,
                      example=example)
    ss._fixed_extra_flops = extra_total - sum(g.extra_flops for g in groups)
    ss.dense_flops = ss.predict(np.ones(len(groups), dtype=bool))["flops"]
    return ss


_KIND_ORDER = {"kv_head": 0, "head": 1}


# ----------------------------------------------------------------- measured MACs
def count_flops(model: nn.Module, input_shape: Sequence[int] | None = None, *,
                inputs: Any = None) -> int:
    """Measured MACs of one forward pass on one sample, by hooks: every Linear,
    Hugging Face Conv1D and convolution costs weight.numel() times its positions
    (tokens / output pixels); every attention module adds its score and value products
    (``optprune.nn.adapters.attention_macs``). Independent of discovery, so tests can
    check ``StructureSet.predict``. ``inputs``: one sample (a tensor or a dict of model
    inputs); else zeros of ``input_shape``."""
    from .adapters import attention_macs, is_attention
    from .calib import model_device, param_dtype, place, run_model, sample_input
    from .explicit import no_fastpath

    if inputs is None:
        check(input_shape is not None, "The inputs of count_flops", "input_shape or inputs",
              None)
        assert input_shape is not None  # check() raised otherwise
        inputs = torch.zeros(1, *input_shape)
    inputs = place(sample_input(inputs, 1), param_dtype(model), model_device(model))
    total = 0
    handles = []

    def lin(m, inp, out):
        nonlocal total
        total += m.weight.numel() * _positions(tuple(inp[0].shape))

    def conv(m, inp, out):
        nonlocal total
        total += m.weight.numel() * _positions(tuple(out.shape), channels_first=True)

    def att(m, args, kwargs, out):
        nonlocal total
        total += attention_macs(m, args, kwargs)

    _load_adapters()
    for m in model.modules():
        if isinstance(m, nn.Linear) or _is_hf_conv1d(m):
            handles.append(m.register_forward_hook(lin))
        elif isinstance(m, nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(conv))
        if is_attention(m):
            handles.append(m.register_forward_hook(att, with_kwargs=True))
    was = model.training
    model.eval()
    try:
        from .explicit import explicit_modules

        with torch.no_grad(), no_fastpath(), explicit_modules(model):
            run_model(model, inputs, "count_flops")
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return int(total)
