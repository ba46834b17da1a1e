"""Prunable structures of a torch model: coupled groups with exact costs.

A *group* is one keep/drop decision: output channel i of every module that writes
one *channel space* (a tensor's channel dimension, with residual additions
merging the spaces they add), together with every per-channel parameter on that
space (BatchNorm) and the matching input columns of every module reading it
(the *consumers*). Attention heads of :class:`optprune.nn.models.MultiHeadAttention`
are groups too (q, k, v rows and proj columns of one head).

Discovery traces the model with ``torch.fx`` and propagates channel spaces
through the graph:

* producers (new space): Linear (last dim), Conv2d with ``groups == 1`` (dim 1);
* per-channel, same space: BatchNorm1d/2d, activations, dropout, pooling;
* Flatten of the trailing dims of an NCHW tensor: feature ``f`` belongs to channel
  ``f // (H*W)`` (``expand = H*W``); the consumer Linear's columns of channel c
  are ``c*expand .. (c+1)*expand - 1``;
* elementwise ops between two tensors (residual add, gating mul): the spaces merge,
  so channel i of all their producers is one group;
* anything else that touches a tensor (LayerNorm, softmax, cat, indexing,
  transposes, unknown functions, the graph's inputs and outputs, parameters used
  directly) *freezes* its spaces: they are never pruned. This is conservative:
  a space is pruned only when every op on it is understood.

Leaf modules of an unknown type are errors (:class:`UnsupportedModuleError`
lists all of them at once); custom container modules are traced through.

Costs (exact, per group, when that group alone is dropped):

* ``params`` = number of parameter entries in the group's slices;
* ``flops`` = multiply-accumulates (MACs, the convention of fvcore/thop) removed
  for ONE input sample of ``input_shape``: for a Linear weight slice, its entries
  times the tokens per sample; for a Conv2d weight slice, its entries times the
  output positions H_out*W_out; for a head also the 2*T*T*head_dim MACs of the
  score and value products.

Two groups share parameters when a Linear/Conv has both prunable inputs and
prunable outputs (W[j, i] belongs to output group j and input group i), so
dropping several groups removes ``sum(params) - shared``. ``StructureSet.predict``
gives the exact costs of any keep mask (each weight keeps
prod_d (size_d - removed_d) entries); ``prune`` corrects its budget with it. In a
transformer whose hidden width is not pruned (heads and FFN channels only) no two
groups share parameters and the costs are exactly additive.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedModuleError, ValidationError, check
from .models import MultiHeadAttention

__all__ = [
    "Group", "StructureSet", "discover", "register_leaf", "register_resizer", "count_flops",
    "SUPPORTED_MODULES",
]

Slice = tuple[str, int, tuple[int, ...]]


@dataclass(frozen=True)
class Group:
    """One prunable structure: parameters (and buffers) that go together.

    ``slices`` holds ``(tensor_name, dim, indices)`` for every parameter and buffer
    slice the group owns (names as in ``model.state_dict()``); ``params`` counts
    only parameters. ``consumer``/``consumer_channels`` name the first module whose
    input the group feeds and its input-channel indices there (for a Linear
    consumer these are feature columns, for a Conv2d input channels);
    ``consumers`` lists all of them (a residual channel feeds several).
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


@dataclass
class StructureSet:
    """The prunable groups of ``model`` with their exact costs for ``input_shape``
    (one sample, no batch dimension).

    ``dense_params`` counts every parameter of the model, ``dense_flops`` every
    multiply-accumulate of its Linear/Conv2d layers and attention products for one
    sample; ``fixed_params`` is the part no group can remove (embeddings, norms,
    classifier, frozen layers).
    """

    model: nn.Module
    groups: list[Group]
    input_shape: tuple[int, ...]
    dense_params: int
    dense_flops: int
    ops: list[tuple[str, str, int]] = field(default_factory=list, repr=False)
    param_names: frozenset = field(default_factory=frozenset, repr=False)
    frozen: dict[str, str] = field(default_factory=dict, repr=False)

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

    def check_keep(self, keep: Any) -> np.ndarray:
        keep = np.asarray(keep)
        check(keep.shape == (len(self.groups),), "The keep mask", f"of shape ({len(self.groups)},)"
              " (one entry per group)", keep.shape)
        check(keep.dtype == bool or np.isin(keep, (0, 1)).all(), "The keep mask",
              "boolean (or 0/1)", str(keep.dtype))
        return keep.astype(bool)

    def removed_indices(self, keep: Any) -> dict[str, dict[int, np.ndarray]]:
        """tensor name -> dim -> sorted indices removed by the dropped groups."""
        keep = self.check_keep(keep)
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

        Every tensor keeps prod_d (size_d - |removed_d|) entries; a Linear/Conv2d op
        costs its remaining weight entries times its positions per sample; heads add
        their score/value products when kept.
        """
        keep = self.check_keep(keep)
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
        compensation). No weight changes. Yields the model."""
        keep = self.check_keep(keep)
        masks = self.consumer_masks(keep)
        named = dict(self.model.named_modules())
        handles = []
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
        keep = self.check_keep(keep)
        named = dict(self.model.named_modules())
        masks: dict[str, torch.Tensor] = {}
        for g, k in zip(self.groups, keep):
            for cname, chans in g.consumers:
                if cname not in masks:
                    masks[cname] = torch.ones(_in_width(named[cname]))
                if not k:
                    masks[cname][list(chans)] = 0.0
        return masks

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


def _in_width(mod: nn.Module) -> int:
    if isinstance(mod, nn.Linear):
        return mod.in_features
    if isinstance(mod, nn.Conv2d):
        return mod.in_channels
    raise TypeError(f"not a consumer type: {type(mod).__name__}")


def _mask_hook(mod: nn.Module, mask: torch.Tensor, fill: torch.Tensor | None):
    conv = isinstance(mod, nn.Conv2d)

    def hook(_m, args):
        x = args[0]
        m = mask.to(dtype=x.dtype, device=x.device)
        if conv:
            m = m.view(1, -1, 1, 1)
        y = x * m
        if fill is not None:
            f = fill.to(dtype=x.dtype, device=x.device)
            y = y + (1 - m) * (f.view(1, -1, 1, 1) if conv else f)
        return (y,) + tuple(args[1:])

    return hook


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    d = dict(model.named_parameters())
    d.update(dict(model.named_buffers()))
    return d


# ----------------------------------------------------------------- registries
ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU,
    nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Hardtanh, nn.Dropout, nn.Identity,
)
SPATIAL_MODULES: tuple[type, ...] = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                                     nn.AdaptiveMaxPool2d, nn.Dropout2d)
FREEZING_MODULES: tuple[type, ...] = (nn.LayerNorm, nn.Softmax, nn.GroupNorm, nn.Embedding)

LeafHandler = Callable[["_Ctx", str, nn.Module, fx.Node], Any]
_LEAF_HANDLERS: dict[type, LeafHandler] = {}
_RESIZERS: dict[type, Callable[[nn.Module], None]] = {}


def register_leaf(module_type: type, handler: LeafHandler) -> None:
    """Teach discovery a new leaf module type. ``handler(ctx, name, module, node)``
    returns the output annotation (``ctx.frozen_ann(node)`` for a new frozen space)
    and may add groups with ``ctx.add_group(...)``, ops with ``ctx.add_op(...)``."""
    _LEAF_HANDLERS[module_type] = handler


def register_resizer(module_type: type, fn: Callable[[nn.Module], None]) -> None:
    """After surgery slices a module's tensors, ``fn(module)`` fixes its size attributes."""
    _RESIZERS[module_type] = fn


def SUPPORTED_MODULES() -> tuple[type, ...]:  # noqa: N802 (reads like a constant)
    return (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten,
            *ELEMENTWISE_MODULES, *SPATIAL_MODULES, *FREEZING_MODULES, *_LEAF_HANDLERS)


# ----------------------------------------------------------------- analysis
@dataclass
class _Space:
    width: int
    frozen: str = ""  # reason, "" when prunable so far
    producers: list[tuple[str, str]] = field(default_factory=list)  # (module, "linear"|"conv")
    percha: list[str] = field(default_factory=list)  # BatchNorm modules on the space
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (module, expand)
    producer_in_ndim: int = 2


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
        sa.frozen = sa.frozen or sb.frozen
        sa.producers += sb.producers
        sa.percha += sb.percha
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
        return _Ann(self.new_space(shape[cdim] if nd else 1, reason), cdim, 1, nd)

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


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if type(m) in _LEAF_HANDLERS:
            return True
        return super().is_leaf_module(m, qualname)


_ELEMENTWISE_FUNCS = {
    F.relu, torch.relu, F.gelu, F.silu, torch.tanh, torch.sigmoid, F.dropout, F.leaky_relu,
    F.elu, F.hardswish, F.relu6, F.softplus, operator.neg, torch.neg, torch.nn.functional.mish,
}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "neg", "float"}
_BINARY = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul,
           operator.truediv, torch.div}
_BINARY_METHODS = {"add", "sub", "mul", "div"}
_SPATIAL_FUNCS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}


def discover(model: nn.Module, input_shape: Sequence[int], *,
             example_input: torch.Tensor | None = None,
             exclude: Sequence[str] = ()) -> StructureSet:
    """Find every prunable group of ``model`` for inputs of ``input_shape`` (one
    sample, without the batch dimension), with exact parameter and MAC costs.

    exclude: layer names whose groups are left out (they stay dense).
    Raises UnsupportedModuleError listing every leaf module of an unknown type.
    """
    check(isinstance(model, nn.Module), "The 'model' of discover", "a torch.nn.Module",
          type(model).__name__)
    input_shape = tuple(int(s) for s in input_shape)
    check(len(input_shape) >= 1 and all(s > 0 for s in input_shape), "The 'input_shape' of discover",
          "a tuple of positive ints without the batch dimension, e.g. (64,) or (1, 8, 8)",
          input_shape)
    modules = dict(model.named_modules())
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many kinds
        raise UnsupportedModuleError(
            f"Could not trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}). "
            "Structure discovery needs a forward without data-dependent control flow."
        ) from exc
    gm = fx.GraphModule(model, graph)
    unsupported = []
    for node in graph.nodes:
        if node.op == "call_module":
            mod = modules[node.target]
            if not isinstance(mod, SUPPORTED_MODULES()) or type(mod) is nn.Module:
                unsupported.append(f"{node.target} ({type(mod).__name__})")
    if unsupported:
        raise UnsupportedModuleError(
            f"{len(unsupported)} module(s) of {type(model).__name__} are not supported by "
            f"structure discovery: {', '.join(unsupported)}. Supported: Linear, Conv2d "
            "(groups=1 for pruning), BatchNorm1d/2d, pooling, Flatten, elementwise "
            "activations, Dropout, LayerNorm (frozen), optprune.nn.models.MultiHeadAttention; "
            "register others with optprune.nn.structures.register_leaf."
        )
    if example_input is None:
        from .calib import param_dtype

        example_input = torch.randn(2, *input_shape, dtype=param_dtype(model))
    else:
        check(tuple(example_input.shape[1:]) == input_shape, "The 'example_input' of discover",
              f"a batch of shape (N, {', '.join(map(str, input_shape))})",
              tuple(example_input.shape))
    was_training = model.training
    model.eval()
    try:
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except Exception as exc:
        raise ValidationError(
            f"The model could not run on an input of shape (N, {input_shape}): "
            f"{type(exc).__name__}: {exc}. Pass the shape of one sample without the batch "
            "dimension as input_shape."
        ) from exc
    finally:
        model.train(was_training)

    ctx = _Ctx(model)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    env = ctx.env
    for node in graph.nodes:
        env[node] = _visit(ctx, node, env, modules, calls)
    return _collect(ctx, model, input_shape, set(exclude))


def _arg(env: dict, a: Any) -> Any:
    if isinstance(a, fx.Node):
        return env.get(a)
    if isinstance(a, (list, tuple)):
        return type(a)(_arg(env, x) for x in a)
    return None


def _visit(ctx: _Ctx, node: fx.Node, env: dict, modules: dict, calls: dict) -> Any:
    args = [_arg(env, a) for a in node.args]
    kwargs = {k: _arg(env, v) for k, v in node.kwargs.items()}
    x = args[0] if args else None
    shape = _shape(node)
    if node.op == "placeholder":
        return ctx.frozen_ann(node, "model input")
    if node.op == "get_attr":
        return ctx.frozen_ann(node, f"parameter {node.target} used directly")
    if node.op == "output":
        ctx.freeze(args, "model output")
        return None
    if node.op == "call_module":
        name, mod = node.target, modules[node.target]
        reason = f"{name} ({type(mod).__name__})"
        if calls[name] > 1 and isinstance(mod, (nn.Linear, nn.Conv2d, nn.BatchNorm1d,
                                                  nn.BatchNorm2d)):
            ctx.freeze(x, f"{name} is called {calls[name]} times")
            out = ctx.frozen_ann(node, f"{name} is called {calls[name]} times")
            return out
        if type(mod) in _LEAF_HANDLERS:
            return _LEAF_HANDLERS[type(mod)](ctx, name, mod, node)
        if isinstance(mod, nn.Linear):
            in_shape = _shape(node.args[0])
            positions = int(np.prod(in_shape[1:-1], dtype=np.int64)) if in_shape else 1
            ctx.add_op(name, f"{name}.weight", positions)
            if isinstance(x, _Ann) and x.cdim == x.ndim - 1 and \
                    ctx.space(x.space).width * x.expand == mod.in_features:
                ctx.space(x.space).consumers.append((name, x.expand))
            else:
                ctx.freeze(x, f"input of {reason} not on its last dim")
            s = ctx.new_space(mod.out_features)
            ctx.space(s).producers.append((name, "linear"))
            ctx.space(s).producer_in_ndim = len(in_shape) if in_shape else 2
            return _Ann(s, len(shape) - 1, 1, len(shape))
        if isinstance(mod, nn.Conv2d):
            out_hw = int(np.prod(shape[2:], dtype=np.int64))
            ctx.add_op(name, f"{name}.weight", out_hw)
            if mod.groups != 1:
                ctx.freeze(x, f"grouped conv {name}")
                return ctx.frozen_ann(node, f"grouped conv {name}")
            if isinstance(x, _Ann) and x.cdim == 1 and x.expand == 1 and x.ndim == 4:
                ctx.space(x.space).consumers.append((name, 1))
            else:
                ctx.freeze(x, f"input of {reason}")
            s = ctx.new_space(mod.out_channels)
            ctx.space(s).producers.append((name, "conv"))
            return _Ann(s, 1, 1, 4)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if isinstance(x, _Ann) and x.cdim == 1 and x.expand == 1:
                ctx.space(x.space).percha.append(name)
                return x
            ctx.freeze(x, reason)
            return ctx.frozen_ann(node, reason)
        if isinstance(mod, ELEMENTWISE_MODULES):
            return x
        if isinstance(mod, SPATIAL_MODULES):
            if isinstance(x, _Ann) and x.cdim == 1 and x.ndim == 4 and shape and len(shape) == 4:
                return x
            ctx.freeze(x, reason)
            return ctx.frozen_ann(node, reason)
        if isinstance(mod, nn.Flatten):
            return _flatten(ctx, node, x, mod.start_dim, mod.end_dim, reason)
        ctx.freeze(args, reason)
        return ctx.frozen_ann(node, reason)
    # call_function / call_method
    target = node.target
    label = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    if target in _ELEMENTWISE_FUNCS or (node.op == "call_method" and target in _ELEMENTWISE_METHODS):
        if isinstance(x, _Ann) and shape is not None:
            return x
    elif target in _BINARY or (node.op == "call_method" and target in _BINARY_METHODS):
        tensors = [a for a in args[:2] if isinstance(a, _Ann)]
        other = [a for a in node.args[:2]]
        if len(tensors) == 1 and all(isinstance(a, (int, float)) or isinstance(a, fx.Node)
                                     for a in other):
            # tensor op scalar (a non-tensor node such as x.shape[0] is a scalar too)
            nonscalar = [a for a in node.args[:2] if isinstance(a, fx.Node) and _shape(a) is not None]
            if len(nonscalar) == 1:
                return tensors[0]
        if len(tensors) == 2:
            a, b = tensors
            sa, sb = _shape(node.args[0]), _shape(node.args[1])
            if (a.cdim, a.expand, a.ndim) == (b.cdim, b.expand, b.ndim) and sa == sb == shape:
                s = ctx.union(a.space, b.space)
                return _Ann(s, a.cdim, a.expand, a.ndim)
    elif target in _SPATIAL_FUNCS:
        if isinstance(x, _Ann) and x.cdim == 1 and x.ndim == 4 and shape and len(shape) == 4:
            return x
    elif target in (torch.flatten, "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        if isinstance(start, int) and isinstance(end, int):
            return _flatten(ctx, node, x, start, end, f"flatten ({label})")
    elif node.op == "call_method" and target in ("view", "reshape") or target is torch.reshape:
        out = _reshape(ctx, node, x)
        if out is not None:
            return out
    elif (node.op == "call_method" and target in ("mean", "sum", "amax")) or \
            target in (torch.mean, torch.sum, torch.amax):
        out = _reduce(node, x)
        if out is not None:
            return out
    elif target in ("size", "dim") or target is getattr:
        return None
    ctx.freeze(args + list(kwargs.values()), f"{label}")
    return ctx.frozen_ann(node, f"{label}")


def _flatten(ctx: _Ctx, node: fx.Node, x: Any, start: int, end: int, reason: str) -> Any:
    in_shape = _shape(node.args[0])
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


def _reshape(ctx: _Ctx, node: fx.Node, x: Any) -> Any:
    in_shape, out_shape = _shape(node.args[0]), _shape(node)
    if not isinstance(x, _Ann) or in_shape is None or out_shape is None:
        return None
    c = x.cdim
    if in_shape == out_shape:
        return x
    if len(out_shape) == c + 1 and out_shape[:c] == in_shape[:c] and \
            out_shape[c] == int(np.prod(in_shape[c:], dtype=np.int64)):
        inner = int(np.prod(in_shape[c + 1:], dtype=np.int64))
        return _Ann(x.space, c, x.expand * inner, c + 1)
    return None


def _reduce(node: fx.Node, x: Any) -> Any:
    in_shape, out_shape = _shape(node.args[0]), _shape(node)
    if not isinstance(x, _Ann) or in_shape is None or out_shape is None or x.expand != 1:
        return None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if dims is None:
        return None
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) for d in dims):
        return None
    nd = len(in_shape)
    dims = [d % nd for d in dims]
    if x.cdim in dims:
        return None
    if keepdim:
        return x
    return _Ann(x.space, x.cdim - sum(d < x.cdim for d in dims), 1, nd - len(dims))


def _attention_leaf(ctx: _Ctx, name: str, mod: MultiHeadAttention, node: fx.Node) -> Any:
    """Heads of optprune's MultiHeadAttention: head h owns q/k/v rows and proj columns
    h*head_dim .. (h+1)*head_dim - 1; MACs per sample with T tokens and hidden d:
    4*T*d*head_dim (projections) + 2*T*T*head_dim (scores and values)."""
    in_shape = _shape(node.args[0])
    # q/k/v read the hidden width, which is never pruned here.
    ctx.freeze(ctx.env_of(node.args[0]), f"input of attention {name} (hidden width)")
    t = int(np.prod(in_shape[1:-1], dtype=np.int64)) if in_shape else 1
    dh = mod.head_dim
    for lin in ("q", "k", "v", "proj"):
        ctx.add_op(f"{name}.{lin}", f"{name}.{lin}.weight", t)
    per_head_extra = 2 * t * t * dh
    for h in range(mod.num_heads):
        rows = tuple(range(h * dh, (h + 1) * dh))
        slices: list[Slice] = []
        for lin in ("q", "k", "v"):
            slices.append((f"{name}.{lin}.weight", 0, rows))
            if getattr(mod, lin).bias is not None:
                slices.append((f"{name}.{lin}.bias", 0, rows))
        slices.append((f"{name}.proj.weight", 1, rows))
        ctx.add_group(Group(
            id=f"{name}:head:{h}", layer=name, kind="head", index=h, params=0, flops=0,
            slices=tuple(slices), consumer=f"{name}.proj", consumer_channels=rows,
            consumers=((f"{name}.proj", rows),), extra_flops=per_head_extra))
    return ctx.frozen_ann(node, f"output of attention {name} (hidden width)")


register_leaf(MultiHeadAttention, _attention_leaf)


def _resize_attention(m: MultiHeadAttention) -> None:
    m.num_heads = m.q.out_features // m.head_dim


register_resizer(MultiHeadAttention, _resize_attention)


def _collect(ctx: _Ctx, model: nn.Module, input_shape: tuple[int, ...],
             exclude: set[str]) -> StructureSet:
    tensors = _named_tensors(model)
    param_names = frozenset(n for n, _ in model.named_parameters())
    ops = {w: (m, w, pos) for m, w, pos in ctx.ops}
    positions = {w: pos for _, w, pos in ctx.ops}
    groups: list[Group] = []
    frozen: dict[str, str] = {}
    roots = sorted({ctx.find(i) for i in range(len(ctx.spaces))})
    ordered: list[tuple[int, str, Group]] = []

    def cost(slices: Sequence[Slice], extra: int = 0) -> tuple[int, int]:
        p = f = 0
        for tname, dim, idx in slices:
            t = tensors[tname]
            n = len(idx) * (t.numel() // t.shape[dim])
            if tname in param_names:
                p += n
            f += n * positions.get(tname, 0)
        return p, f + extra

    for r in roots:
        sp = ctx.spaces[r]
        if not sp.producers:
            continue
        layer = sp.producers[0][0]
        if sp.frozen or not sp.consumers:
            frozen[layer] = sp.frozen or "no consumer"
            continue
        if layer in exclude:
            frozen[layer] = "excluded"
            continue
        kind = "channel" if sp.producers[0][1] == "conv" else (
            "ffn" if sp.producer_in_ndim >= 3 else "neuron")
        for i in range(sp.width):
            slices: list[Slice] = []
            for pname, _ in sp.producers:
                slices.append((f"{pname}.weight", 0, (i,)))
                if f"{pname}.bias" in tensors and tensors[f"{pname}.bias"] is not None:
                    slices.append((f"{pname}.bias", 0, (i,)))
            for bn in sp.percha:
                for t in ("weight", "bias", "running_mean", "running_var"):
                    if f"{bn}.{t}" in tensors:
                        slices.append((f"{bn}.{t}", 0, (i,)))
            cons = []
            for cname, e in sp.consumers:
                chans = tuple(range(i * e, (i + 1) * e))
                cons.append((cname, chans))
                slices.append((f"{cname}.weight", 1, chans))
            p, f = cost(slices)
            ordered.append((_order(model, layer), layer, Group(
                id=f"{layer}:{kind}:{i}", layer=layer, kind=kind, index=i, params=p, flops=f,
                slices=tuple(slices), consumer=cons[0][0], consumer_channels=cons[0][1],
                consumers=tuple(cons))))
    for g in ctx.extra_groups:
        if g.layer in exclude:
            frozen[g.layer] = "excluded"
            continue
        p, f = cost(g.slices, g.extra_flops)
        ordered.append((_order(model, g.layer), g.layer,
                        Group(**{**g.__dict__, "params": p, "flops": f})))
    ordered.sort(key=lambda t: (t[0], t[2].kind, t[2].index))
    groups = [g for _, _, g in ordered]
    extra_total = sum(g.extra_flops for g in ctx.extra_groups)
    ss = StructureSet(model=model, groups=groups, input_shape=input_shape,
                      dense_params=sum(p.numel() for p in model.parameters()), dense_flops=0,
                      ops=list(ops.values()), param_names=param_names, frozen=frozen)
    ss._fixed_extra_flops = extra_total - sum(g.extra_flops for g in groups)
    ss.dense_flops = ss.predict(np.ones(len(groups), dtype=bool))["flops"]
    return ss


def _order(model: nn.Module, layer: str) -> int:
    for i, (n, _) in enumerate(model.named_modules()):
        if n == layer:
            return i
    return 1 << 30


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Measured MACs of one forward pass on one sample, by hooks: every Linear and
    Conv2d costs weight.numel() times its positions (tokens / output pixels); each
    MultiHeadAttention adds 2*T*T*head_dim*num_heads. Independent of discovery,
    so tests can check ``StructureSet.predict``."""
    total = 0
    handles = []

    def lin(m, inp, out):
        nonlocal total
        total += m.weight.numel() * int(np.prod(inp[0].shape[1:-1], dtype=np.int64))

    def conv(m, inp, out):
        nonlocal total
        total += m.weight.numel() * int(np.prod(out.shape[2:], dtype=np.int64))

    def att(m, inp, out):
        nonlocal total
        t = int(np.prod(inp[0].shape[1:-1], dtype=np.int64))
        total += 2 * t * t * m.head_dim * m.num_heads

    for m in model.modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(lin))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv))
        elif isinstance(m, MultiHeadAttention):
            handles.append(m.register_forward_hook(att))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return int(total)
