"""Layers -> GEMMs -> cycles, and per-slot latency staircases for the allocation engine.

GEMM of a layer (inputs M x K times weights K x N), for a batch of B samples:

* ``Linear(in, out)`` applied to T tokens per sample: M = B T, K = in, N = out.
* ``Conv2d(Cin, Cout, kh x kw, groups=g)`` as im2col: each of the g groups is one
  GEMM with M = B H_out W_out, K = (Cin/g) kh kw, N = Cout/g.
* a transformer block (``optprune.nn.models.Block``) with h heads of size d_h, model
  width d, FFN width f and sequence length T: the Q, K, V projections
  (B T, d, h d_h) each, the output projection (B T, h d_h, d), the score product
  Q_h K_h^T (T, d_h, T) and the value product P_h V_h (T, T, d_h) once per sample
  and head (dense: they have no weights to prune), FFN in (B T, d, f) and out
  (B T, f, d).

Latency of a model = sum over its GEMMs of ``gemm_cycles`` (layers run one after
the other on one array). When a slot (layer, kind) of prunable structures keeps k
of its w structures, every weight the slot cuts shrinks along the cut dimension
(an output dimension shrinks N, an input dimension shrinks K), and a head slot also
runs k instead of w score/value products per sample. So the slot's latency is a
function ``table[k]`` (k = 0..w) of its own width only, provided no GEMM is cut by
two slots; the model's latency is ``fixed + sum_slots table[k_slot]``, exactly. That
is what ``AllocationProblem.add_latency_table`` takes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence, cast

import numpy as np
import torch
from torch import nn

from ..errors import UnsupportedModuleError, ValidationError, check
from .systolic import ArrayConfig, check_dataflow, gemm_cycles, parse_array

__all__ = ["Gemm", "linear_gemm", "conv2d_gemm", "transformer_block_gemms", "model_gemms",
           "total_cycles", "SlotLatency", "LatencyModel", "latency_model"]


@dataclass(frozen=True)
class Gemm:
    """``count`` identical GEMMs of M x K times K x N. ``module``/``weight`` name the
    layer and its weight tensor (empty for the weightless attention products);
    ``role`` is one of linear, conv, attn_score, attn_value."""

    name: str
    M: int
    K: int
    N: int
    count: int = 1
    role: str = "linear"
    module: str = ""
    weight: str = ""
    kernel_taps: int = 1  # kh * kw of a conv: one input channel is this many K rows

    def __post_init__(self) -> None:
        for what in ("M", "K", "N", "count"):
            v = getattr(self, what)
            check(isinstance(v, (int, np.integer)) and bool(v >= 1),
                  f"The {what} of GEMM {self.name!r}", "a positive integer", v)

    @property
    def macs(self) -> int:
        return self.count * self.M * self.K * self.N

    def cycles(self, array: Any, dataflow: str) -> int:
        return self.count * int(gemm_cycles(self.M, self.K, self.N, array, dataflow))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def linear_gemm(name: str, in_features: int, out_features: int, tokens: int, batch: int = 1) -> Gemm:
    """Linear on ``tokens`` tokens per sample: (batch*tokens) x in times in x out."""
    return Gemm(name, batch * tokens, in_features, out_features, module=name, weight=f"{name}.weight")


def conv2d_gemm(name: str, in_channels: int, out_channels: int, kernel: tuple[int, int],
                out_hw: tuple[int, int], batch: int = 1, groups: int = 1) -> Gemm:
    """Conv2d as im2col GEMMs: one per group of (B H_out W_out) x (Cin/g kh kw) x (Cout/g)."""
    kh, kw = kernel
    check(in_channels % groups == 0 and out_channels % groups == 0, f"The groups of conv {name!r}",
          "a divisor of both channel counts", groups)
    return Gemm(name, batch * out_hw[0] * out_hw[1], in_channels // groups * kh * kw,
                out_channels // groups, count=groups, role="conv", module=name,
                weight=f"{name}.weight", kernel_taps=kh * kw)


def transformer_block_gemms(prefix: str, d_model: int, heads: int, head_dim: int, ffn: int,
                            seq_len: int, batch: int = 1) -> list[Gemm]:
    """The GEMMs of one pre-norm encoder block (see the module docstring)."""
    for what, v in (("d_model", d_model), ("head_dim", head_dim), ("ffn", ffn),
                    ("seq_len", seq_len), ("batch", batch)):
        check(isinstance(v, int) and v >= 1, f"The '{what}' of a transformer block",
              "a positive integer", v)
    check(isinstance(heads, int) and heads >= 0, "The 'heads' of a transformer block",
          "a non-negative integer", heads)
    bt, inner = batch * seq_len, heads * head_dim
    out = []
    if heads:
        for p in ("q", "k", "v"):
            out.append(Gemm(f"{prefix}.attn.{p}", bt, d_model, inner, module=f"{prefix}.attn.{p}",
                            weight=f"{prefix}.attn.{p}.weight"))
        out.append(Gemm(f"{prefix}.attn.score", seq_len, head_dim, seq_len, count=batch * heads,
                        role="attn_score", module=f"{prefix}.attn"))
        out.append(Gemm(f"{prefix}.attn.value", seq_len, seq_len, head_dim, count=batch * heads,
                        role="attn_value", module=f"{prefix}.attn"))
        out.append(Gemm(f"{prefix}.attn.proj", bt, inner, d_model, module=f"{prefix}.attn.proj",
                        weight=f"{prefix}.attn.proj.weight"))
    out.append(linear_gemm(f"{prefix}.mlp.fc1", d_model, ffn, seq_len, batch))
    out.append(linear_gemm(f"{prefix}.mlp.fc2", ffn, d_model, seq_len, batch))
    return out


def model_gemms(model: nn.Module, input_shape: Sequence[int], batch: int = 1) -> list[Gemm]:
    """Every GEMM of one forward pass of ``model`` on a batch of ``batch`` samples of
    ``input_shape``, in execution order, found with forward hooks on Linear, Conv2d
    and ``optprune.nn.models.MultiHeadAttention`` (whose own q/k/v/proj Linears are
    hooked too; the hook adds its score and value products)."""
    from ..nn.models import MultiHeadAttention

    check(isinstance(model, nn.Module), "The 'model'", "a torch.nn.Module", type(model).__name__)
    check(isinstance(batch, int) and batch >= 1, "The 'batch'", "a positive integer", batch)
    input_shape = tuple(int(s) for s in input_shape)
    check(len(input_shape) >= 1 and all(s > 0 for s in input_shape), "The 'input_shape'",
          "positive ints without the batch dimension", input_shape)
    odd = [f"{n} ({type(m).__name__})" for n, m in model.named_modules()
           if isinstance(m, (nn.MultiheadAttention, nn.Conv1d, nn.Conv3d, nn.Bilinear))]
    if odd:
        raise UnsupportedModuleError(f"model_gemms cannot map {', '.join(odd)} to GEMMs; "
                                     "supported: Linear, Conv2d, optprune MultiHeadAttention.")
    gemms: list[Gemm] = []
    hooks = []

    def add(g_name, M, K, N, **kw):
        if min(M, K, N, kw.get("count", 1)) > 0:  # an emptied layer (0 heads / channels) costs nothing
            gemms.append(Gemm(g_name, M, K, N, **kw))

    def lin(name):
        def h(m, inp, out):
            tokens = math.prod(inp[0].shape[:-1])  # every leading dim is a token
            add(name, tokens, m.in_features, m.out_features, module=name, weight=f"{name}.weight")
        return h

    def conv(name):
        def h(m, inp, out):
            g = m.groups
            kh, kw = m.kernel_size
            add(name, out.shape[0] * out.shape[2] * out.shape[3], m.in_channels // g * kh * kw,
                m.out_channels // g, count=g, role="conv", module=name, weight=f"{name}.weight",
                kernel_taps=kh * kw)
        return h

    def att(name, m):
        def h(_proj, inp):
            b, t = inp[0].shape[0], inp[0].shape[1]
            add(f"{name}.score", t, m.head_dim, t, count=b * m.num_heads, role="attn_score",
                module=name)
            add(f"{name}.value", t, t, m.head_dim, count=b * m.num_heads, role="attn_value",
                module=name)
        return h

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin(name)))
        elif isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv(name)))
        elif isinstance(m, MultiHeadAttention):
            # the products run between q/k/v and proj: record them when proj starts
            hooks.append(m.proj.register_forward_pre_hook(att(name, m)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters(), None)
            model(torch.zeros(batch, *input_shape, dtype=p.dtype if p is not None else None))
    except Exception as exc:
        raise ValidationError(f"The model could not run on a batch of shape ({batch}, "
                              f"{', '.join(map(str, input_shape))}): {type(exc).__name__}: {exc}. "
                              "Give input_shape without the batch dimension.") from exc
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return gemms


def total_cycles(gemms: Sequence[Gemm], array: Any, dataflow: str) -> int:
    """Sum of the GEMMs' compute cycles (run one after another)."""
    return int(sum(g.cycles(array, dataflow) for g in gemms))


@dataclass(frozen=True)
class SlotLatency:
    """Latency of a slot's GEMMs with k structures kept, ``table[k]`` for k = 0..width;
    ``steps`` are the widths where the next structure costs cycles (the tops of
    the staircase's treads, the widths aligned to the array)."""

    layer: str
    kind: str
    width: int
    gemms: tuple[str, ...]
    table: np.ndarray = field(repr=False)

    @property
    def steps(self) -> list[int]:
        t = self.table
        return [k for k in range(self.width + 1) if k == self.width or t[k + 1] > t[k]]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "kind": self.kind, "width": self.width,
                "gemms": list(self.gemms), "table": [int(v) for v in self.table],
                "steps": self.steps}


@dataclass(frozen=True)
class LatencyModel:
    """Model latency = ``fixed_cycles + sum_slots slots[i].table[k_i]``."""

    array: str
    dataflow: str
    batch: int
    fixed_cycles: int
    slots: list[SlotLatency]
    gemms: list[Gemm] = field(repr=False)

    @property
    def dense_cycles(self) -> int:
        return int(self.fixed_cycles + sum(s.table[-1] for s in self.slots))

    def cycles(self, counts: dict[tuple[str, str], int]) -> int:
        """Latency with ``counts[(layer, kind)]`` structures kept per slot (missing = dense)."""
        known = {(s.layer, s.kind): s.width for s in self.slots}
        for key, k in counts.items():
            if key not in known:
                raise ValidationError(f"Unknown slot {key!r}; the latency model has slots "
                                      f"{sorted(known)}.")
            check(isinstance(k, (int, np.integer)) and 0 <= k <= known[key],
                  f"The kept width of slot {key!r}", f"an integer in [0, {known[key]}] (the "
                  "layer's width)", k, "A layer cannot keep more structures than it has.")
        return int(self.fixed_cycles + sum(s.table[counts.get((s.layer, s.kind), s.width)]
                                           for s in self.slots))

    def to_dict(self) -> dict[str, Any]:
        return {"array": self.array, "dataflow": self.dataflow, "batch": self.batch,
                "fixed_cycles": self.fixed_cycles, "dense_cycles": self.dense_cycles,
                "slots": [s.to_dict() for s in self.slots]}


def _slot_cuts(structures: Any, layer: str, kind: str, idx: np.ndarray,
               by_weight: dict[str, int]) -> dict[int, tuple[int, int]]:
    """GEMM index -> (dimension of its weight, entries per structure) that the slot's
    structures cut; every structure of a slot must cut the same amount."""
    per_slot: dict[int, tuple[int, int]] = {}
    for tname, dim, _ in structures.groups[int(idx[0])].slices:
        if tname not in by_weight:
            continue
        sizes = {sum(len(sl) for n, d, sl in structures.groups[int(i)].slices
                     if n == tname and d == dim) for i in idx}
        if len(sizes) != 1:
            raise ValidationError(f"The structures of slot ({layer!r}, {kind!r}) cut "
                                  f"{tname!r} by different amounts {sorted(sizes)}; latency "
                                  "tables need equal-size structures per slot.")
        per_slot[by_weight[tname]] = (dim, sizes.pop())
    return per_slot


def _cut_cycles(g: Gemm, dim: int, per: int, w: int, a: ArrayConfig, dataflow: str) -> np.ndarray:
    """Cycles of GEMM ``g`` with k = 0..w structures of ``per`` entries kept along ``dim``
    of its weight (0: output rows, N shrinks; 1: input columns, K shrinks, a conv input
    channel being ``kernel_taps`` rows); 0 where a dimension is empty."""
    removed = (w - np.arange(w + 1)) * per
    M = np.full(w + 1, g.M)
    if dim == 0:
        N, K = g.N - removed, np.full(w + 1, g.K)
    else:
        N, K = np.full(w + 1, g.N), g.K - removed * g.kernel_taps
    live = (N > 0) & (K > 0)
    c = np.zeros(w + 1, dtype=np.int64)
    if live.any():
        c[live] = gemm_cycles(M[live], K[live], N[live], a, dataflow) * g.count
    return c


def latency_model(structures: Any, array: Any, dataflow: str, batch: int = 1) -> LatencyModel:
    """Staircase latency tables for every slot of a ``StructureSet`` (see module doc).

    Raises ValidationError when a GEMM is cut by two slots (its latency is then not
    a sum of per-slot tables; exclude one of the layers from discovery)."""
    from ..nn.models import MultiHeadAttention

    a = parse_array(array)
    dataflow = check_dataflow(dataflow)
    model = structures.model
    gemms = model_gemms(model, structures.input_shape, batch)
    by_weight = {g.weight: i for i, g in enumerate(gemms) if g.weight}
    modules = dict(model.named_modules())
    owner: dict[int, tuple[str, str]] = {}
    cuts: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}  # slot -> gemm -> (dim, per)
    heads: dict[tuple[str, str], list[int]] = {}
    for (layer, kind), idx in structures.layer_kind_index().items():
        per_slot = _slot_cuts(structures, layer, kind, idx, by_weight)
        for gi in per_slot:
            if gi in owner and owner[gi] != (layer, kind):
                raise ValidationError(
                    f"GEMM {gemms[gi].name!r} is cut by two slots, {owner[gi]} and "
                    f"({layer!r}, {kind!r}): its latency is not a sum of per-slot tables. "
                    "Exclude one of these layers from discover(..., exclude=[...]).")
            owner[gi] = (layer, kind)
        cuts[(layer, kind)] = per_slot
        if isinstance(modules.get(layer), MultiHeadAttention):
            heads[(layer, kind)] = [i for i, g in enumerate(gemms)
                                    if g.module == layer and g.role.startswith("attn_")]
            for gi in heads[(layer, kind)]:
                owner[gi] = (layer, kind)
    slots = []
    for (layer, kind), idx in structures.layer_kind_index().items():
        w = int(idx.size)
        table = np.zeros(w + 1, dtype=np.int64)
        names = []
        for gi, (dim, per) in cuts[(layer, kind)].items():
            table += _cut_cycles(gemms[gi], dim, per, w, a, dataflow)
            names.append(gemms[gi].name)
        for gi in heads.get((layer, kind), []):
            g = gemms[gi]
            per_head = int(gemm_cycles(g.M, g.K, g.N, a, dataflow))
            n_heads = int(cast(MultiHeadAttention, modules[layer]).num_heads)
            table += per_head * (g.count // n_heads) * np.arange(w + 1)
            names.append(g.name)
        slots.append(SlotLatency(layer, kind, w, tuple(names), table))
    fixed = sum(g.cycles(a, dataflow) for i, g in enumerate(gemms) if i not in owner)
    return LatencyModel(str(a), dataflow, batch, int(fixed), slots, gemms)
