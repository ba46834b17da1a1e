"""One float64 numpy network for every importer: a chain of affine layers, each
followed by a ReLU or by nothing.

    h_0 = x                          (the flattened input, C order as torch flattens)
    z_k = W_k h_{k-1} + b_k          (pre-activation of layer k)
    h_k = max(z_k, 0) if relu_k else z_k

The last layer's ``z`` are the logits. Importers (torch ``nn.Sequential``,
scikit-learn ``MLPClassifier``, ONNX) check every layer first and raise one
``UnsupportedModuleError`` that lists every layer they cannot take. A Conv2d enters
as its linear map: the matrix whose column j is the conv (without bias) of the j-th
unit input, so it is exact and sparse.

Files: ``Network.save``/``load_network`` use ``.npz`` with ``allow_pickle=False``
(never runs code). Torch ``.pt`` files and scikit-learn pickles are opened only when
the caller passes ``allow_pickle=True``: unpickling runs the file's code.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, cast

import numpy as np

from ..errors import OptpruneError, UnsupportedModuleError, ValidationError, check

__all__ = [
    "Layer", "Network", "from_torch", "from_sklearn", "from_onnx", "load_network",
    "as_network",
]


@dataclass(frozen=True)
class Layer:
    """``z = W @ h + b`` followed by ``max(z, 0)`` when ``relu``."""

    W: np.ndarray
    b: np.ndarray
    relu: bool

    def __post_init__(self) -> None:
        W = np.ascontiguousarray(np.asarray(self.W, dtype=np.float64))
        b = np.ascontiguousarray(np.asarray(self.b, dtype=np.float64)).ravel()
        check(W.ndim == 2, "A layer's weight matrix W", "2-dimensional (out x in)", W.shape)
        check(b.shape == (W.shape[0],), "A layer's bias b", f"of length {W.shape[0]}", b.shape)
        check(bool(np.all(np.isfinite(W)) and np.all(np.isfinite(b))),
              "A layer's weights and bias", "finite", "NaN or inf")
        object.__setattr__(self, "W", W)
        object.__setattr__(self, "b", b)

    @property
    def in_features(self) -> int:
        return int(self.W.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.W.shape[0])


@dataclass(frozen=True)
class Network:
    """A feed-forward ReLU network in float64. ``input_shape`` is the shape one sample
    has before flattening (e.g. ``(1, 8, 8)`` for a conv net, ``(64,)`` for an MLP)."""

    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...] = ()
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        check(len(layers) >= 1, "A Network", "at least one layer", len(layers))
        for k in range(1, len(layers)):
            if layers[k].in_features != layers[k - 1].out_features:
                raise ValidationError(
                    f"Layer {k} of the network takes {layers[k].in_features} inputs but layer "
                    f"{k - 1} gives {layers[k - 1].out_features}; the chain must match."
                )
        shape = tuple(int(s) for s in self.input_shape) or (layers[0].in_features,)
        check(int(np.prod(shape)) == layers[0].in_features, "The network's input_shape",
              f"of {layers[0].in_features} elements", shape)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "input_shape", shape)

    # ----------------------------------------------------------------- sizes
    @property
    def input_dim(self) -> int:
        return self.layers[0].in_features

    @property
    def output_dim(self) -> int:
        return self.layers[-1].out_features

    @property
    def hidden_sizes(self) -> list[int]:
        return [L.out_features for L in self.layers[:-1]]

    @property
    def num_relu(self) -> int:
        return sum(L.out_features for L in self.layers if L.relu)

    @property
    def nnz(self) -> int:
        return int(sum(np.count_nonzero(L.W) for L in self.layers))

    # ------------------------------------------------------------- evaluation
    def forward(self, x: np.ndarray, return_all: bool = False) -> Any:
        """Logits for a sample (``input_dim`` or ``input_shape``) or a batch (n x ...).

        With ``return_all`` also return the list of every layer's pre-activation ``z_k``.
        """
        x = np.asarray(x, dtype=np.float64)
        single = x.size == self.input_dim
        h = x.reshape(1 if single else -1, self.input_dim)
        zs = []
        for L in self.layers:
            z = h @ L.W.T + L.b
            zs.append(z[0] if single else z)
            h = np.maximum(z, 0.0) if L.relu else z
        out = h[0] if single else h
        return (out, zs) if return_all else out

    def predict(self, x: np.ndarray) -> np.ndarray | int:
        out = self.forward(x)
        return int(np.argmax(out)) if out.ndim == 1 else np.argmax(out, axis=1)

    def sha256(self) -> str:
        """Hash of the weights, biases, ReLU flags and input shape (not of ``source``);
        computed once (the network is immutable)."""
        cached = self.__dict__.get("_sha256")
        if cached is None:
            cached = self._hash()
            object.__setattr__(self, "_sha256", cached)
        return cached

    def _hash(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"input_shape": self.input_shape,
                             "relu": [L.relu for L in self.layers],
                             "shapes": [L.W.shape for L in self.layers]}).encode())
        for L in self.layers:
            h.update(np.ascontiguousarray(L.W, dtype="<f8").tobytes())
            h.update(np.ascontiguousarray(L.b, dtype="<f8").tobytes())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256(),
            "input_shape": list(self.input_shape),
            "sizes": [self.input_dim] + [L.out_features for L in self.layers],
            "relu": [L.relu for L in self.layers],
            "nonzero_weights": self.nnz,
            "source": self.source,
        }

    # -------------------------------------------------------------------- io
    def save(self, path: str | os.PathLike) -> Path:
        """Write a ``.npz`` file (plain arrays, no pickle). An array whose values are all
        float32 numbers (a network trained in float32) is stored as float32, which
        loses nothing and halves the file; it loads back as the same float64 values."""
        path = Path(path)
        check(path.suffix == ".npz", "The network file name", "ending in .npz", path.name)
        arrays: dict[str, np.ndarray] = {
            "input_shape": np.asarray(self.input_shape, dtype=np.int64),
            "relu": np.asarray([L.relu for L in self.layers], dtype=bool),
        }
        for k, L in enumerate(self.layers):
            arrays[f"W{k}"] = _compact(L.W)
            arrays[f"b{k}"] = _compact(L.b)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez_compressed(tmp, allow_pickle=False, **arrays)
        os.replace(tmp, path)
        return path

    def compress(self) -> "Network":
        """The same function with removable hidden neurons gone.

        A hidden ReLU neuron whose incoming row of W is all zero outputs the constant
        ``max(b, 0)``: it is folded into the next layer's bias and removed. A hidden
        neuron whose outgoing column is all zero cannot change the logits: removed.
        Repeated until nothing changes. The logits are unchanged for every input.
        """
        Ws = [L.W.copy() for L in self.layers]
        bs = [L.b.copy() for L in self.layers]
        relu = [L.relu for L in self.layers]
        changed = True
        while changed:
            changed = False
            for k in range(len(Ws) - 1):
                dead_in = ~np.any(Ws[k] != 0, axis=1)
                dead_out = ~np.any(Ws[k + 1] != 0, axis=0)
                drop = dead_in | dead_out
                if not drop.any():
                    continue
                const = dead_in & ~dead_out
                if const.any():
                    c = np.maximum(bs[k][const], 0.0) if relu[k] else bs[k][const]
                    bs[k + 1] = bs[k + 1] + Ws[k + 1][:, const] @ c
                keep = ~drop
                if not keep.any():  # keep one neuron so the chain stays well formed
                    keep[0] = True
                    Ws[k][0] = 0.0
                    bs[k][0] = 0.0 if relu[k] else bs[k][0]
                    Ws[k + 1][:, 0] = 0.0
                    if keep.sum() == Ws[k].shape[0]:
                        continue
                Ws[k], bs[k] = Ws[k][keep], bs[k][keep]
                Ws[k + 1] = Ws[k + 1][:, keep]
                changed = True
        layers = tuple(Layer(W, b, r) for W, b, r in zip(Ws, bs, relu))
        return Network(layers, self.input_shape, self.source, dict(self.info))


def _compact(a: np.ndarray) -> np.ndarray:
    """``a`` as float32 when that is exact, else as it is (float64)."""
    f = a.astype(np.float32)
    return f if np.array_equal(f.astype(np.float64), a) else a


# =================================================== the importers' chain
class _AffineChain:
    """The layers an importer has read and the affine map it holds open (``pending``,
    not yet closed by a ReLU or the end): two affine maps in a row compose into one.
    ``shape`` is the shape of one sample where the chain is (the torch importer's)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.layers: list[Layer] = []
        self.pending: tuple[np.ndarray, np.ndarray] | None = None
        self.shape = shape

    def push(self, W: np.ndarray, b: np.ndarray | None = None) -> None:
        """Apply ``h -> W h + b`` (``b`` None: no bias) after the open map."""
        if self.pending is None:
            self.pending = (W, np.zeros(W.shape[0]) if b is None else b)
            return
        W0, b0 = self.pending
        self.pending = (W @ W0, W @ b0 if b is None else W @ b0 + b)

    def close(self, relu: bool) -> None:
        """End the open map as a layer (followed by a ReLU when ``relu``)."""
        assert self.pending is not None
        self.layers.append(Layer(self.pending[0], self.pending[1], relu))
        self.pending = None


# ====================================================================== torch
def _torch_sequence(module: Any) -> list[tuple[str, Any]]:
    """(dotted name, module) of every layer of an ``nn.Sequential``, nested ones flattened."""
    from torch import nn

    if not isinstance(module, nn.Module):
        raise ValidationError(
            f"from_torch expects a torch.nn.Module; got {type(module).__name__}. "
            "Pass an nn.Sequential of Linear/ReLU/Flatten/Conv2d layers."
        )
    if not isinstance(module, nn.Sequential):
        raise UnsupportedModuleError(
            f"from_torch takes an nn.Sequential; got {type(module).__name__}, whose forward "
            "cannot be read as a chain of layers. Rewrite it as nn.Sequential(...)."
        )
    flat: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, m: nn.Module) -> None:
        if isinstance(m, nn.Sequential):
            for name, child in m.named_children():
                walk(f"{prefix}.{name}" if prefix else name, child)
        else:
            flat.append((prefix or type(m).__name__, m))

    walk("", module)
    return flat


def _torch_problem(name: str, m: Any) -> str | None:
    """Why the layer ``m`` cannot be read (``"name (what)"``), or None."""
    from torch import nn

    if not isinstance(m, (nn.Linear, nn.ReLU, nn.Flatten, nn.Conv2d, nn.Dropout, nn.Identity)):
        return f"{name} ({type(m).__name__})"
    if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"
                                     or isinstance(m.padding, str) and m.padding != "valid"
                                     and m.padding != "same"):
        return f"{name} (Conv2d with groups={m.groups}, padding_mode={m.padding_mode})"
    if isinstance(m, nn.Flatten) and (m.start_dim not in (1, -3, -2) or m.end_dim != -1):
        return f"{name} (Flatten(start_dim={m.start_dim}, end_dim={m.end_dim}))"
    return None


def _torch_input_shape(flat: list[tuple[str, Any]],
                       input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """``input_shape``, or the first Linear's input size when a net without Conv2d has none."""
    from torch import nn

    if input_shape is None:
        if any(isinstance(m, nn.Conv2d) for _, m in flat):
            raise ValidationError(
                "A network with Conv2d needs input_shape=(C, H, W) to become a linear map; "
                "got none. Pass input_shape."
            )
        first = next((m for _, m in flat if isinstance(m, nn.Linear)), None)
        if first is None:
            raise ValidationError("The network has no Linear or Conv2d layer to encode.")
        input_shape = (first.in_features,)
    return tuple(int(s) for s in input_shape)


def _torch_linear(chain: _AffineChain, name: str, m: Any) -> None:
    d = int(np.prod(chain.shape))
    if m.in_features != d:
        raise ValidationError(
            f"Layer {name} (Linear) expects {m.in_features} inputs but receives "
            f"{d} (shape {chain.shape}); check input_shape and the layer order."
        )
    W = m.weight.detach().double().cpu().numpy()
    b = (m.bias.detach().double().cpu().numpy() if m.bias is not None
         else np.zeros(m.out_features))
    chain.push(W, b)
    chain.shape = (m.out_features,)


def _torch_conv2d(chain: _AffineChain, name: str, m: Any) -> None:
    """The conv as the matrix whose column j is the conv (no bias) of the j-th unit input."""
    import torch
    from torch import nn

    cur = chain.shape
    if len(cur) != 3 or cur[0] != m.in_channels:
        raise ValidationError(
            f"Layer {name} (Conv2d) needs a (C={m.in_channels}, H, W) input; "
            f"it receives shape {cur}. Check input_shape."
        )
    d = int(np.prod(cur))
    # Conv2d's sizes are 2-tuples; its base class annotates them tuple[int, ...].
    kernel, stride, dilation = (cast("tuple[int, int]", t)
                                for t in (m.kernel_size, m.stride, m.dilation))
    padding = cast("str | tuple[int, int]", m.padding)
    conv = nn.Conv2d(m.in_channels, m.out_channels, kernel, stride, padding,
                     dilation, bias=False).double()
    conv.weight.copy_(m.weight.double())
    out = conv(torch.eye(d, dtype=torch.float64).reshape(d, *cur))  # row j: image of unit j
    out_shape = tuple(out.shape[1:])
    W = out.reshape(d, -1).T.numpy().copy()
    bias = (m.bias.detach().double().numpy() if m.bias is not None
            else np.zeros(m.out_channels))
    chain.push(W, np.repeat(bias, out_shape[1] * out_shape[2]))
    chain.shape = out_shape


def _torch_relu(chain: _AffineChain, name: str, m: Any) -> None:
    """Close the open map with a ReLU; with none open, the ReLU goes on the last layer
    (relu(relu(z)) = relu(z)), or on the identity map when it is the first layer."""
    if chain.pending is None:
        if chain.layers:
            last = chain.layers[-1]
            chain.layers[-1] = Layer(last.W, last.b, True) if not last.relu else last
            return
        d = int(np.prod(chain.shape))
        chain.pending = (np.eye(d), np.zeros(d))
    chain.close(True)


def _torch_flatten(chain: _AffineChain, name: str, m: Any) -> None:
    chain.shape = (int(np.prod(chain.shape)),)


def _torch_step(m: Any) -> Any:
    """What a layer does to the chain (None: Dropout in eval and Identity are the identity)."""
    from torch import nn

    steps = ((nn.Linear, _torch_linear), (nn.Conv2d, _torch_conv2d), (nn.ReLU, _torch_relu),
             (nn.Flatten, _torch_flatten))
    return next((step for kind, step in steps if isinstance(m, kind)), None)


def from_torch(module: Any, input_shape: Sequence[int] | None = None) -> Network:
    """An ``nn.Sequential`` (nested Sequentials are flattened) of Linear, ReLU, Flatten,
    Conv2d (as its linear map; needs ``input_shape`` = (C, H, W)), Dropout and Identity.

    The last affine layer's output are the logits; a trailing ReLU is kept.
    """
    import torch

    flat = _torch_sequence(module)
    bad = [p for p in (_torch_problem(name, m) for name, m in flat) if p is not None]
    if bad:
        raise UnsupportedModuleError(
            f"The network has {len(bad)} unsupported layer(s): {', '.join(bad)}. Supported: "
            "Linear, ReLU, Flatten, Conv2d (groups=1, zero padding), Dropout, Identity."
        )
    shape = _torch_input_shape(flat, input_shape)
    chain = _AffineChain(shape)
    with torch.no_grad():
        for name, m in flat:
            step = _torch_step(m)
            if step is not None:
                step(chain, name, m)
    if chain.pending is not None:
        chain.close(False)
    if not chain.layers:
        raise ValidationError("The network has no affine layer to encode.")
    return Network(tuple(chain.layers), shape, source=f"torch:{type(module).__name__}")


# ==================================================================== sklearn
def from_sklearn(clf: Any) -> Network:
    """A fitted ``MLPClassifier`` (or ``MLPRegressor``) with ``activation='relu'``.

    Softmax output: the logits are the last layer's pre-activations (same argmax).
    Binary logistic output (one unit z): the logits become ``[0, z]`` so that argmax
    is class 1 exactly when z > 0, as ``predict`` decides.
    """
    for attr in ("coefs_", "intercepts_", "activation"):
        if not hasattr(clf, attr):
            raise ValidationError(
                f"from_sklearn expects a fitted MLPClassifier; {type(clf).__name__} has no "
                f"'{attr}'. Call fit() first."
            )
    bad = []
    if clf.activation != "relu":
        bad.append(f"hidden activation '{clf.activation}'")
    out_act = getattr(clf, "out_activation_", "identity")
    if out_act not in ("softmax", "logistic", "identity"):
        bad.append(f"output activation '{out_act}'")
    if bad:
        raise UnsupportedModuleError(
            f"The MLP has unsupported parts: {', '.join(bad)}. Only activation='relu' hidden "
            "layers with a softmax, logistic or identity output can be encoded."
        )
    layers = []
    n = len(clf.coefs_)
    for k, (Wt, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        W = np.asarray(Wt, dtype=np.float64).T
        b = np.asarray(b, dtype=np.float64)
        if k == n - 1 and out_act == "logistic" and W.shape[0] == 1:
            W = np.vstack([np.zeros_like(W), W])
            b = np.concatenate([[0.0], b])
        layers.append(Layer(W, b, k < n - 1))
    return Network(tuple(layers), (layers[0].in_features,), source="sklearn:MLPClassifier",
                   info={"classes": [c.item() if hasattr(c, "item") else c
                                     for c in getattr(clf, "classes_", [])]})


# ======================================================================= onnx
_ONNX_OPS = {"Gemm", "MatMul", "Add", "Relu", "Flatten", "Identity", "Dropout", "Reshape"}


def _onnx_gemm(chain: _AffineChain, nd: Any, init: dict[str, np.ndarray],
               attrs: dict[str, Any]) -> None:
    """``alpha * A' B' + beta * C`` with A the data (transA=0) and B, C constants."""
    if attrs.get("transA", 0):
        raise UnsupportedModuleError(f"Gemm node {nd.name} with transA=1 is not supported.")
    W = init[nd.input[1]] * float(attrs.get("alpha", 1.0))
    W = W if attrs.get("transB", 0) else W.T
    b = (init[nd.input[2]] * float(attrs.get("beta", 1.0)) if len(nd.input) > 2
         and nd.input[2] else np.zeros(W.shape[0]))
    chain.push(W, np.broadcast_to(b.ravel(), (W.shape[0],)).copy())


def _onnx_matmul(chain: _AffineChain, nd: Any, init: dict[str, np.ndarray],
                 attrs: dict[str, Any]) -> None:
    chain.push(init[nd.input[1]].T)


def _onnx_add(chain: _AffineChain, nd: Any, init: dict[str, np.ndarray],
              attrs: dict[str, Any]) -> None:
    """A constant added after MatMul/Gemm: the open map's bias."""
    other = [i for i in nd.input if i in init]
    if chain.pending is None or len(other) != 1:
        raise UnsupportedModuleError(f"Add node {nd.name} is not a bias after MatMul/Gemm.")
    W, b = chain.pending
    chain.pending = (W, b + np.broadcast_to(init[other[0]].ravel(), b.shape))


def _onnx_relu(chain: _AffineChain, nd: Any, init: dict[str, np.ndarray],
               attrs: dict[str, Any]) -> None:
    if chain.pending is None:
        raise UnsupportedModuleError("The ONNX graph has a Relu without an affine node before it.")
    chain.close(True)


# What each node does to the chain; Flatten, Identity, Dropout and Reshape (to the flat
# vector the chain already is) leave it as it is.
_ONNX_STEPS = {"Gemm": _onnx_gemm, "MatMul": _onnx_matmul, "Add": _onnx_add, "Relu": _onnx_relu}


def _onnx_model(model: Any, onnx: Any) -> Any:
    """``model``, or the ModelProto read from the file it names."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise ValidationError(f"The ONNX file {str(path)!r} does not exist.")
        model = onnx.load(str(path))
    return model


def _onnx_constants(graph: Any) -> dict[str, np.ndarray]:
    """Every initializer and Constant node's value (float64), by tensor name."""
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    init[node.output[0]] = numpy_helper.to_array(a.t).astype(np.float64)
    return init


def _onnx_input(graph: Any, init: dict[str, np.ndarray]) -> tuple[str, tuple[int, ...]]:
    """The name of the one data input and its shape without the batch axis."""
    inputs = [i for i in graph.input if i.name not in init]
    if len(inputs) != 1:
        raise UnsupportedModuleError(
            f"The ONNX graph must have exactly one data input; it has {len(inputs)}."
        )
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, tuple(int(d) for d in dims[1:] if d > 0) if len(dims) > 1 else ()


def _onnx_chain(nodes: list[Any], init: dict[str, np.ndarray], cur: str,
                onnx: Any) -> _AffineChain:
    """Read the nodes in order from the data input ``cur``; each must take the previous
    node's output as its one non-constant input."""
    chain = _AffineChain()
    for nd in nodes:
        data_in = [i for i in nd.input if i and i not in init]
        if data_in != [cur]:
            raise UnsupportedModuleError(
                f"The ONNX graph is not a chain: node {nd.name or nd.op_type} reads "
                f"{list(nd.input)} but the chain is at {cur!r}."
            )
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nd.attribute}
        step = _ONNX_STEPS.get(nd.op_type)
        if step is not None:
            step(chain, nd, init, attrs)
        cur = nd.output[0]
    if chain.pending is not None:
        chain.close(False)
    return chain


def from_onnx(model: Any) -> Network:
    """An ONNX graph that is a chain of Gemm (or MatMul + Add), Relu and Flatten nodes
    with constant weights (initializers). Loaded through the ``onnx`` extra."""
    from .._extras import require

    onnx = require("onnx", "onnx", "reading ONNX networks")
    graph = _onnx_model(model, onnx).graph
    init = _onnx_constants(graph)
    nodes = [nd for nd in graph.node if nd.op_type != "Constant"]
    bad = [f"{nd.name or '?'} ({nd.op_type})" for nd in nodes if nd.op_type not in _ONNX_OPS]
    if bad:
        raise UnsupportedModuleError(
            f"The ONNX graph has {len(bad)} unsupported node(s): {', '.join(bad)}. Supported: "
            "Gemm, MatMul+Add, Relu, Flatten, Identity, Dropout, Reshape (to a flat vector)."
        )
    cur, shape = _onnx_input(graph, init)
    layers = _onnx_chain(nodes, init, cur, onnx).layers
    if not layers:
        raise ValidationError("The ONNX graph has no affine node to encode.")
    if int(np.prod(shape or (0,))) != layers[0].in_features:
        shape = (layers[0].in_features,)
    return Network(tuple(layers), shape, source="onnx")


# ======================================================================= load
def load_network(path: str | os.PathLike, allow_pickle: bool = False,
                 input_shape: Sequence[int] | None = None) -> Network:
    """Read a network file: ``.npz`` (optprune's own, safe), ``.onnx`` (safe), or, only
    with ``allow_pickle=True``, a torch ``.pt``/``.pth`` module or a scikit-learn
    ``.pkl``/``.joblib`` pickle. Pickles run code when loaded: only open files you trust.
    """
    path = Path(path)
    if not path.exists():
        raise ValidationError(f"The network file {str(path)!r} does not exist.")
    suf = path.suffix.lower()
    if suf not in (".npz", ".onnx", ".pt", ".pth", ".pkl", ".pickle", ".joblib"):
        raise ValidationError(
            f"The network file must end in .npz, .onnx, .pt, .pth, .pkl or .joblib; got "
            f"{path.name!r}.")
    if suf in (".pt", ".pth", ".pkl", ".pickle", ".joblib") and not allow_pickle:
        raise ValidationError(
            f"The file {path.name!r} is a pickle, and loading a pickle runs code from the "
            "file. Pass allow_pickle=True (CLI: --allow-pickle) only if you trust it, or "
            "convert the network to .onnx or optprune's .npz."
        )
    expected = {
        ".npz": "an optprune network (.npz with arrays input_shape, relu, W0, b0, W1, b1, ...; "
                "written by Network.save)",
        ".onnx": "an ONNX model (protobuf) of Gemm / MatMul+Add / Relu / Flatten nodes",
    }.get(suf, "a pickled torch nn.Sequential or scikit-learn MLP")
    try:
        return _load_network(path, suf, input_shape)
    except OptpruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure means an unreadable file
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise ValidationError(
            f"The network file {str(path)!r} cannot be read as {expected}: "
            f"{type(exc).__name__}{': ' + detail if detail else ''}. The file is corrupt, "
            "truncated or of another kind; regenerate or re-export it.") from exc


def _load_network(path: Path, suf: str, input_shape: Sequence[int] | None) -> Network:
    if suf == ".npz":
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("input_shape", "relu") if k not in z.files]
            relu = z["relu"].ravel().tolist() if "relu" in z.files else []
            missing += [f"{a}{k}" for k in range(len(relu)) for a in "Wb"
                        if f"{a}{k}" not in z.files]
            if missing:
                raise ValidationError(
                    f"The network file {str(path)!r} lacks the array(s) {', '.join(missing)}; "
                    "an optprune .npz network holds input_shape, relu, W0, b0, W1, b1, ... "
                    "(written by Network.save).")
            layers = tuple(Layer(z[f"W{k}"].astype(np.float64), z[f"b{k}"].astype(np.float64),
                                 bool(r)) for k, r in enumerate(relu))
            shape = tuple(int(s) for s in z["input_shape"].ravel())
        return Network(layers, shape, source=f"npz:{path.name}")
    if suf == ".onnx":
        return from_onnx(path)
    if suf in (".pt", ".pth"):
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=False)
    else:
        import pickle

        with open(path, "rb") as f:
            obj = pickle.load(f)  # noqa: S301 - the caller opted in
    return as_network(obj, input_shape)


def as_network(obj: Any, input_shape: Sequence[int] | None = None) -> Network:
    """Any supported network object (Network, torch module, sklearn MLP, ONNX model)."""
    if isinstance(obj, Network):
        return obj
    mod = type(obj).__module__
    if mod.startswith("torch"):
        return from_torch(obj, input_shape)
    if mod.startswith("sklearn"):
        return from_sklearn(obj)
    if mod.startswith("onnx"):
        return from_onnx(obj)
    try:
        import torch

        if isinstance(obj, torch.nn.Module):
            return from_torch(obj, input_shape)
    except ImportError:  # pragma: no cover
        pass
    raise UnsupportedModuleError(
        f"Cannot read a network from a {type(obj).__name__}; expected an optprune Network, a "
        "torch nn.Sequential, a fitted scikit-learn MLPClassifier or an ONNX ModelProto."
    )
