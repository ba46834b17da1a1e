"""Tracing by running: the graph of one real forward pass on the given inputs.

``torch.fx`` traces symbolically and fails on most Hugging Face models (control flow on
shapes and configs, cache objects, mask builders); transformers 5 no longer ships its
own fx tracer, and ``torch.export`` needs seconds per small model and loses module
boundaries in an aten-level graph (measurements in benchmarks/BENCHMARKS.md,
"Structure discovery"). :func:`record` instead runs the model once under a
``TorchFunctionMode`` and writes every torch function and tensor method applied to a
tensor, with the tensors' shapes, into a ``torch.fx.Graph`` of the same vocabulary a
symbolic trace has (``call_module`` for leaf modules, ``call_function`` /
``call_method`` for the rest), so the channel analysis of :mod:`optprune.nn.structures`
reads either. Control flow is whatever the given inputs take.

* Leaf modules (``is_leaf(module)``) are recorded as one ``call_module`` node; nothing
  inside them is recorded. Other modules are traced through.
* A tensor that no recorded op produced and that is not a model input (a parameter or
  buffer read directly, a constant built from Python data) becomes a ``get_attr`` node
  named after the parameter when it is one.
* Tuple outputs become ``operator.getitem`` nodes, one per tensor.
* In-place ops (``x += y``, ``x.add_(y)``) rebind the tensor to the op's node.
* Every tensor met is kept alive until the trace ends, so Python ids are never reused.

What the mode cannot see: computations outside torch (numpy round trips) and custom C++
extensions; a tensor that leaves torch and comes back is a new constant. Discovery is
exact only for models whose tensors stay in torch, which is every model of the zoo.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["record", "TensorMeta"]


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype


_DUNDER = {
    "__add__": (operator.add, False), "__radd__": (operator.add, True),
    "__iadd__": (operator.add, False), "__sub__": (operator.sub, False),
    "__rsub__": (operator.sub, True), "__isub__": (operator.sub, False),
    "__mul__": (operator.mul, False), "__rmul__": (operator.mul, True),
    "__imul__": (operator.mul, False), "__truediv__": (operator.truediv, False),
    "__rtruediv__": (operator.truediv, True), "__itruediv__": (operator.truediv, False),
    "__matmul__": (operator.matmul, False), "__rmatmul__": (operator.matmul, True),
    "__getitem__": (operator.getitem, False), "__neg__": (operator.neg, False),
    "__pow__": (operator.pow, False), "__rpow__": (operator.pow, True),
    "__and__": (operator.and_, False), "__or__": (operator.or_, False),
    "__invert__": (operator.invert, False), "__eq__": (operator.eq, False),
    "__ne__": (operator.ne, False), "__lt__": (operator.lt, False),
    "__gt__": (operator.gt, False), "__le__": (operator.le, False),
    "__ge__": (operator.ge, False), "__floordiv__": (operator.floordiv, False),
    "__mod__": (operator.mod, False),
}


def _target(func: Callable) -> tuple[str, Any, bool]:
    """(fx op, target, swap the first two args) of a function seen by the mode."""
    name = getattr(func, "__name__", "")
    if name in _DUNDER:
        f, swap = _DUNDER[name]
        return "call_function", f, swap
    if name and getattr(torch.Tensor, name, None) is func:
        if name.endswith("_") and not name.startswith("_"):
            name = name[:-1]  # in-place method: same channel semantics
        return "call_method", name, False
    return "call_function", func, False


class _Recorder(TorchFunctionMode):
    def __init__(self, model: nn.Module, is_leaf: Callable[[nn.Module], bool]) -> None:
        super().__init__()
        self.graph = fx.Graph()
        self.node_of: dict[int, fx.Node] = {}
        self.alive: list[torch.Tensor] = []
        self.depth = 0
        self.pending: list[fx.Node] = []
        self.tensor_names: dict[int, str] = {}
        for n, t in model.named_parameters(remove_duplicate=False):
            self.tensor_names.setdefault(id(t), n)
        for n, b in model.named_buffers(remove_duplicate=False):
            self.tensor_names.setdefault(id(b), n)
        self.module_names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self.is_leaf = is_leaf

    # -------------------------------------------------------------- values
    def bind(self, t: torch.Tensor, node: fx.Node) -> None:
        node.meta["tensor_meta"] = TensorMeta(tuple(int(s) for s in t.shape), t.dtype)
        self.node_of[id(t)] = node
        self.alive.append(t)

    def node(self, t: torch.Tensor) -> fx.Node:
        n = self.node_of.get(id(t))
        if n is None:
            name = self.tensor_names.get(id(t), "")
            n = self.graph.create_node("get_attr", name or f"constant{tuple(t.shape)}")
            self.bind(t, n)
        return n

    def arg(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            return self.node(a)
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(x) for x in a) if not hasattr(a, "_fields") else \
                tuple(self.arg(x) for x in a)
        if isinstance(a, Mapping):
            return {k: self.arg(v) for k, v in a.items() if isinstance(k, str)}
        if a is None or isinstance(a, (bool, int, float, str, slice, torch.dtype,
                                       torch.device, type(Ellipsis))):
            return a
        return None

    def outputs(self, node: fx.Node, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            self.bind(out, node)
        elif isinstance(out, (tuple, list)):
            for i, o in enumerate(out):
                if isinstance(o, torch.Tensor):
                    self.bind(o, self.graph.create_node("call_function", operator.getitem, (node, i)))

    # -------------------------------------------------------------- functions
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0 and _has_tensor(out):
            op, target, swap = _target(func)
            a = [self.arg(x) for x in args]
            if swap and len(a) >= 2:
                a[0], a[1] = a[1], a[0]
            node = self.graph.create_node(op, target, tuple(a),
                                          {k: self.arg(v) for k, v in kwargs.items()})
            self.outputs(node, out)
        return out

    # -------------------------------------------------------------- leaf modules
    def pre_hook(self, mod: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.depth == 0:
            node = self.graph.create_node(
                "call_module", self.module_names[id(mod)], tuple(self.arg(a) for a in args),
                {k: self.arg(v) for k, v in kwargs.items()})
            self.pending.append(node)
        self.depth += 1

    def post_hook(self, mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.outputs(self.pending.pop(), out)


def _has_tensor(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, (tuple, list)):
        return any(isinstance(v, torch.Tensor) for v in x)
    return False


def _tensors_of(x: Any, depth: int = 0) -> list[torch.Tensor]:
    """Every tensor of a model output: tensors, tuples, dicts (ModelOutput) and, one
    level down, the attributes of other objects (cache objects hold tensors)."""
    if isinstance(x, torch.Tensor):
        return [x]
    if depth > 4:
        return []
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _tensors_of(v, depth + 1)]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors_of(v, depth + 1)]
    if hasattr(x, "__dict__") and not isinstance(x, (nn.Module, type)):
        return [t for v in vars(x).values() for t in _tensors_of(v, depth + 1)]
    return []


def record(model: nn.Module, inputs: Any, is_leaf: Callable[[nn.Module], bool],
           run: Callable[[nn.Module, Any], Any]) -> tuple[fx.Graph, Any]:
    """Run ``run(model, inputs)`` once (the caller sets eval mode and grad) and return
    (the recorded graph, the model's output). ``inputs`` is a tensor or a dict of
    tensors; each tensor becomes a placeholder."""
    rec = _Recorder(model, is_leaf)
    leaves = [m for m in model.modules() if is_leaf(m)]
    if isinstance(inputs, Mapping):
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                rec.bind(v, rec.graph.create_node("placeholder", k))
    elif isinstance(inputs, torch.Tensor):
        rec.bind(inputs, rec.graph.create_node("placeholder", "x"))
    handles = []
    try:
        for m in leaves:
            handles.append(m.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(rec.post_hook, with_kwargs=True))
        with rec:
            out = run(model, inputs)
    finally:
        for h in handles:
            h.remove()
    rec.graph.output(tuple(rec.node(t) for t in _tensors_of(out)))
    return rec.graph, out
