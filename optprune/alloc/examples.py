"""Allocation problems shaped like real models, with seeded synthetic scores.

LLaMA shapes (``llama_problem``) and convolutional networks with exact bilinear
costs (``resnet_problem``, ``mobilenet_v2_problem``; see ``conv_problem``).

LLaMA shapes (per decoder layer): attention heads of size d_head = d / n_heads and FFN
(SwiGLU) channels.

* a query head (with its share of K and V when there is no grouping) costs
  4 * d_head * d parameters (Q, K, V rows and O columns); with grouped-query
  attention (70B: 64 query heads share 8 key/value groups), a query head costs
  2 * d_head * d (Q rows, O columns) and a key/value group 2 * d_head * d (K, V rows),
  and a query head may be kept only if its group is kept (an implication);
* an FFN channel costs 3 * d parameters (gate and up rows, down column);
* FLOPs per token at sequence length S: 2 * params for the projections, plus
  4 * S * d_head per query head for the score and value products.

Scores are log-normal with a median proportional to each structure's parameter
count times a per-layer factor (log-normal, sigma 0.5), so layers differ and an
exact allocation has something to decide. Latency is a staircase: each slot's
latency is its padded FLOPs, the width rounded up to 8 heads / 128 channels,
plus a fixed launch overhead when the slot is not empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ValidationError
from .problem import AllocationProblem


@dataclass(frozen=True)
class LlamaShape:
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    ffn: int


SHAPES = {
    "llama-7b": LlamaShape(32, 4096, 32, 32, 11008),
    "llama-13b": LlamaShape(40, 5120, 40, 40, 13824),
    "llama-70b": LlamaShape(80, 8192, 64, 8, 28672),
}


def llama_problem(
    name: str = "llama-7b",
    seed: int = 0,
    param_budget: float = 0.5,
    latency_cap: float | None = 0.6,
    head_multiple: int = 8,
    ffn_multiple: int = 128,
    seq_len: int = 2048,
    overhead: float = 0.02,
    gqa_implications: bool = False,
) -> AllocationProblem:
    """The problem of `optprune allocate --example NAME`.

    param_budget: kept fraction of the prunable (attention + FFN) parameters plus
        the fixed embeddings (fixed costs are counted at full size).
    latency_cap: total staircase latency at most this fraction of dense (None: no cap).
    gqa_implications: for grouped-query shapes (70B), make the key/value groups
        prunable structures too, with "keep a query head only if its group is
        kept" implications (one binary per head then; slower). By default the
        key/value projections are fixed costs and only query heads are pruned.
    """
    if name not in SHAPES:
        raise ValidationError(f"Unknown example {name!r}; expected one of {sorted(SHAPES)}.")
    s = SHAPES[name]
    rng = np.random.default_rng(seed)
    dh = s.d_model // s.heads
    grouped = s.kv_heads != s.heads
    gqa = grouped and gqa_implications
    head_params = (2 if grouped else 4) * dh * s.d_model
    kv_params = 2 * dh * s.d_model
    ffn_params = 3 * s.d_model
    head_flops = 2 * head_params + 4 * seq_len * dh
    kv_flops = 2 * kv_params
    ffn_flops = 2 * ffn_params

    layer_names = [f"layers.{i}" for i in range(s.layers)]
    per_layer = [("head", s.heads, head_params, head_flops)]
    if gqa:
        per_layer.append(("kv", s.kv_heads, kv_params, kv_flops))
    per_layer.append(("ffn", s.ffn, ffn_params, ffn_flops))
    width = sum(w for _, w, _, _ in per_layer)
    n = s.layers * width

    layer = np.repeat(np.array(layer_names, dtype=object), width)
    kind = np.tile(np.concatenate([np.full(w, k, dtype=object) for k, w, _, _ in per_layer]),
                   s.layers)
    params = np.tile(np.concatenate([np.full(w, c, np.float64) for _, w, c, _ in per_layer]),
                     s.layers)
    flops = np.tile(np.concatenate([np.full(w, f, np.float64) for _, w, _, f in per_layer]),
                    s.layers)
    layer_factor = np.repeat(rng.lognormal(0.0, 0.5, size=s.layers), width)
    score = params * layer_factor * rng.lognormal(0.0, 1.0, size=n) / ffn_params
    idx = np.tile(np.concatenate([np.arange(w) for _, w, _, _ in per_layer]), s.layers)
    ids = [f"{lay}:{k}:{i}" for lay, k, i in zip(layer.tolist(), kind.tolist(), idx.tolist())]
    vocab = 32000
    fixed_params = 2 * vocab * s.d_model + s.layers * 2 * s.d_model + s.d_model
    if grouped and not gqa:
        fixed_params += s.layers * s.kv_heads * kv_params
    p = AllocationProblem(ids, layer, kind, score, {"params": params, "flops": flops},
                          fixed_costs={"params": float(fixed_params), "flops": 0.0}, name=name)
    p.add_budget("params", max=param_budget, relative=True)
    p.add_multiple(kind="head", multiple=head_multiple, allow_zero=True)
    p.add_multiple(kind="ffn", multiple=ffn_multiple, allow_zero=True)
    if gqa:
        group = s.heads // s.kv_heads
        for lay in layer_names:
            for h in range(s.heads):
                p.add_implication(f"{lay}:head:{h}", f"{lay}:kv:{h // group}")
    if latency_cap is not None:
        steps = {"head": head_multiple, "kv": 1, "ffn": ffn_multiple}
        for lay in layer_names:
            for k, w, _, f in per_layer:
                ks = np.arange(w + 1)
                padded = np.ceil(ks / steps[k]) * steps[k]
                table = padded * f / 1e9
                table[1:] += overhead * table[-1] / max(1, (w + steps[k] - 1) // steps[k])
                p.add_latency_table(lay, k, table)
        p.add_latency_cap(latency_cap, relative=True)
    return p


# --------------------------------------------------------------------------- CNNs
@dataclass(frozen=True)
class Op:
    """One weight layer of a CNN: ``src`` -> ``dst`` channels (a slot name, or an
    int for a fixed channel count: the image's 3, the classifier's 1000 labels),
    ``kernel`` = kh * kw, ``hw`` = output positions (H * W; 1 for a Linear).
    ``depthwise``: groups = channels, ``src`` and ``dst`` the same slot.
    ``norm``: a BatchNorm after it (2 parameters per output channel); ``bias``:
    one parameter per output channel."""

    name: str
    src: str | int
    dst: str | int
    kernel: int
    hw: int
    depthwise: bool = False
    norm: bool = True
    bias: bool = False


def conv_problem(name: str, ops: list[Op], widths: dict[str, int], seed: int = 0,
                 param_budget: float = 0.5, mac_budget: float = 0.6,
                 min_channels: int = 1) -> AllocationProblem:
    """The channel allocation of a CNN given as a list of weight layers.

    One structure per channel of each slot (a set of channels that must be pruned
    together: a residual stream, the hidden channels of a depthwise block, the
    output of a plain conv). Costs are exact for every keep mask: a conv between
    slots a and b has ``kernel * k_a * k_b`` parameters and ``kernel * hw * k_a * k_b``
    multiply-accumulates (a pair cost), a conv with a fixed side is linear in the
    other, a depthwise conv and a BatchNorm are linear in their slot. MACs count
    conv and Linear multiply-accumulates (not norms, activations or pooling).
    Scores: log-normal per channel (sigma 1) times a per-slot factor (sigma 0.5),
    times the channel's share of the dense parameters, so slots differ in value
    per parameter. Every slot keeps at least ``min_channels``.
    """
    rng = np.random.default_rng(seed)
    slots = list(widths)
    costs = _ConvCosts({s: 0.0 for s in slots}, {s: 0.0 for s in slots})
    for op in ops:
        for side in (op.src, op.dst):
            if isinstance(side, str) and side not in widths:
                raise ValidationError(f"The op {op.name!r} names an unknown slot {side!r}.")
        costs.add(op)
    lin_params, lin_macs, pairs, fixed = costs.params, costs.macs, costs.pairs, costs.fixed
    # Dense parameters attributable to one channel of each slot (pair costs split
    # evenly between their two slots), for the scale of the scores.
    share = dict(lin_params)
    for (a, b), (cp, _) in pairs.items():
        share[a] += cp * widths[b] / 2
        share[b] += cp * widths[a] / 2
    layer = np.repeat(np.array(slots, dtype=object), [widths[s] for s in slots])
    kind = np.full(layer.size, "channel", dtype=object)
    factor = np.repeat(rng.lognormal(0.0, 0.5, len(slots)) * np.array([share[s] for s in slots]),
                       [widths[s] for s in slots])
    score = factor * rng.lognormal(0.0, 1.0, layer.size)
    score = score / score.mean()
    params = np.repeat([lin_params[s] for s in slots], [widths[s] for s in slots])
    macs = np.repeat([lin_macs[s] for s in slots], [widths[s] for s in slots])
    p = AllocationProblem(None, layer, kind, score, {"params": params, "macs": macs},
                          fixed_costs={"params": fixed, "macs": 0.0}, name=name)
    for (a, b), (cp, cm) in pairs.items():
        p.add_pair_cost("params", (a, "channel"), (b, "channel"), cp)
        p.add_pair_cost("macs", (a, "channel"), (b, "channel"), cm)
    if min_channels:
        p.add_count_bounds(kind="channel", min=min_channels)
    p.add_budget("params", max=param_budget, relative=True)
    p.add_budget("macs", max=mac_budget, relative=True)
    return p


@dataclass
class _ConvCosts:
    """The exact costs of a CNN's ops: per channel of a slot (parameters, MACs), pair
    coefficients (a, b) -> [parameters, MACs] of k_a * k_b, and fixed parameters."""

    params: dict[str, float]
    macs: dict[str, float]
    pairs: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    fixed: float = 0.0

    def add(self, op: Op) -> None:
        per_out = (2.0 if op.norm else 0.0) + (1.0 if op.bias else 0.0)
        if isinstance(op.dst, str):
            self.params[op.dst] += per_out
        else:
            self.fixed += per_out * op.dst
        if op.depthwise:
            if not isinstance(op.dst, str):
                raise ValidationError(
                    f"The depthwise op {op.name!r} needs a slot name as dst (its groups are "
                    f"the slot's channels); got {op.dst!r}.")
            self.params[op.dst] += op.kernel
            self.macs[op.dst] += op.kernel * op.hw
        elif isinstance(op.src, str) and isinstance(op.dst, str):
            c = self.pairs.setdefault((op.src, op.dst), [0.0, 0.0])
            c[0] += op.kernel
            c[1] += op.kernel * op.hw
        elif isinstance(op.src, str) and isinstance(op.dst, int):
            self.params[op.src] += op.kernel * op.dst
            self.macs[op.src] += op.kernel * op.hw * op.dst
        elif isinstance(op.dst, str) and isinstance(op.src, int):
            self.params[op.dst] += op.kernel * op.src
            self.macs[op.dst] += op.kernel * op.hw * op.src
        elif isinstance(op.src, int) and isinstance(op.dst, int):
            self.fixed += op.kernel * op.src * op.dst


def _conv_out(hw: int, stride: int) -> int:
    return -(-hw // stride)  # "same" padding: ceil(hw / stride)


def resnet_ops(depths: list[int], hidden: list[int], bottleneck: bool, embedding: int = 64,
               image: int = 224, labels: int = 1000) -> tuple[list[Op], dict[str, int]]:
    """The weight layers of a Hugging Face ``ResNetModel`` (+ classifier) with one
    slot per stage's residual stream (the stem's output joins stage 1's stream
    when stage 1 has no projection shortcut, as in ResNet-18/34)."""
    side = _conv_out(_conv_out(image, 2), 2)  # stem conv stride 2, max pool stride 2
    ops = [Op("embedder", 3, "stem", 49, _conv_out(image, 2) ** 2)]
    widths = {"stem": embedding}
    prev = "stem"
    prev_w = embedding
    for s, (depth, out) in enumerate(zip(depths, hidden)):
        stride = 1 if s == 0 else 2
        first_proj = prev_w != out or stride != 1
        res = f"stage{s}" if first_proj else prev
        if first_proj:
            widths[res] = out
        for i in range(depth):
            st = stride if i == 0 else 1
            out_side = _conv_out(side, st)
            src = prev if i == 0 else res
            pre = f"stage{s}.layer{i}"
            if bottleneck:
                mid = out // 4
                widths[f"{pre}.conv1"] = mid
                widths[f"{pre}.conv2"] = mid
                ops += [Op(f"{pre}.conv1", src, f"{pre}.conv1", 1, side ** 2),
                        Op(f"{pre}.conv2", f"{pre}.conv1", f"{pre}.conv2", 9, out_side ** 2),
                        Op(f"{pre}.conv3", f"{pre}.conv2", res, 1, out_side ** 2)]
            else:
                widths[f"{pre}.conv1"] = out
                ops += [Op(f"{pre}.conv1", src, f"{pre}.conv1", 9, out_side ** 2),
                        Op(f"{pre}.conv2", f"{pre}.conv1", res, 9, out_side ** 2)]
            if i == 0 and first_proj:
                ops.append(Op(f"{pre}.shortcut", prev, res, 1, out_side ** 2))
            side = out_side
        prev, prev_w = res, out
    ops.append(Op("classifier", prev, labels, 1, 1, norm=False, bias=True))
    return ops, widths


def resnet_problem(name: str = "resnet-50", seed: int = 0, param_budget: float = 0.5,
                   mac_budget: float = 0.6) -> AllocationProblem:
    """ResNet-50 (``transformers.ResNetConfig()`` defaults: bottleneck blocks
    [3, 4, 6, 3], widths 256/512/1024/2048 with 64/128/256/512 mid channels) or
    ResNet-18 (basic blocks [2, 2, 2, 2], widths 64/128/256/512), 1000 labels,
    224 x 224 images: exact parameters and MACs (``conv_problem``)."""
    if name == "resnet-50":
        ops, widths = resnet_ops([3, 4, 6, 3], [256, 512, 1024, 2048], bottleneck=True)
    elif name == "resnet-18":
        ops, widths = resnet_ops([2, 2, 2, 2], [64, 128, 256, 512], bottleneck=False)
    else:
        raise ValidationError(f"Unknown ResNet example {name!r}; expected 'resnet-50' or "
                              "'resnet-18'.")
    return conv_problem(name, ops, widths, seed, param_budget, mac_budget)


def mobilenet_v2_ops(image: int = 224, labels: int = 1000) -> tuple[list[Op], dict[str, int]]:
    """The weight layers of a Hugging Face ``MobileNetV2Model`` (default config,
    depth multiplier 1) + classifier: one slot per residual stream (blocks whose
    stride is 1 and width unchanged add into the previous block's output), one per
    block's expanded (depthwise) channels, the stem and the final 1x1 conv."""
    table = [(6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1)]
    side = _conv_out(image, 2)
    ops = [Op("stem.first_conv", 3, "stem", 9, side ** 2),
           Op("stem.conv_3x3", "stem", "stem", 9, side ** 2, depthwise=True),
           Op("stem.reduce_1x1", "stem", "res0", 1, side ** 2)]
    widths = {"stem": 32, "res0": 16}
    prev, prev_w, r = "res0", 16, 0
    layer = 0
    for t, c, n, s in table:
        for i in range(n):
            st = s if i == 0 else 1
            if st != 1 or c != prev_w:
                r += 1
                res = f"res{r}"
                widths[res] = c
            else:
                res = prev
            hid = f"layer{layer}.hidden"
            widths[hid] = prev_w * t
            out_side = _conv_out(side, st)
            ops += [Op(f"layer{layer}.expand_1x1", prev, hid, 1, side ** 2),
                    Op(f"layer{layer}.conv_3x3", hid, hid, 9, out_side ** 2, depthwise=True),
                    Op(f"layer{layer}.reduce_1x1", hid, res, 1, out_side ** 2)]
            prev, prev_w, side = res, c, out_side
            layer += 1
    widths["head"] = 1280
    ops += [Op("conv_1x1", prev, "head", 1, side ** 2),
            Op("classifier", "head", labels, 1, 1, norm=False, bias=True)]
    return ops, widths


def mobilenet_v2_problem(seed: int = 0, param_budget: float = 0.5, mac_budget: float = 0.6
                         ) -> AllocationProblem:
    """MobileNetV2 (Hugging Face default config, 1000 labels, 224 x 224): exact
    parameters and MACs (``conv_problem``)."""
    ops, widths = mobilenet_v2_ops()
    return conv_problem("mobilenet-v2", ops, widths, seed, param_budget, mac_budget)


def unequal_cost_problem(n: int = 20000, seed: int = 0, slot_width: int = 500,
                         param_budget: float = 0.5, flop_budget: float = 0.6
                         ) -> AllocationProblem:
    """``n`` structures in slots of ``slot_width`` whose members all cost differently
    (so one binary per structure): parameters log-normal (median 1000, sigma 1),
    FLOPs the parameters times a per-slot factor (log-uniform over 1..100), scores
    log-normal and correlated with the parameters. At most ``param_budget`` of the
    parameters and ``flop_budget`` of the FLOPs. The shape of a time-limit benchmark:
    a knapsack with two budgets and no structure for the width formulation."""
    rng = np.random.default_rng(seed)
    slots = -(-n // slot_width)
    layer = np.repeat(np.array([f"layers.{i}" for i in range(slots)], dtype=object),
                      slot_width)[:n]
    params = np.round(rng.lognormal(np.log(1000.0), 1.0, n)) + 1.0
    flops = params * np.repeat(np.exp(rng.uniform(0, np.log(100.0), slots)), slot_width)[:n]
    score = params ** 0.8 * rng.lognormal(0.0, 1.0, n)
    p = AllocationProblem(None, layer, np.full(n, "unit", dtype=object), score / score.mean(),
                          {"params": params, "flops": np.round(flops)}, name=f"unequal-{n}")
    p.add_budget("params", max=param_budget, relative=True)
    p.add_budget("flops", max=flop_budget, relative=True)
    return p


EXAMPLES = {
    **{k: (lambda k=k, **kw: llama_problem(k, **kw)) for k in SHAPES},
    "resnet-50": lambda **kw: resnet_problem("resnet-50", **kw),
    "resnet-18": lambda **kw: resnet_problem("resnet-18", **kw),
    "mobilenet-v2": lambda **kw: mobilenet_v2_problem(**kw),
    "unequal-20k": lambda **kw: unequal_cost_problem(20_000, **kw),
    "unequal-100k": lambda **kw: unequal_cost_problem(100_000, **kw),
    "unequal-1m": lambda **kw: unequal_cost_problem(1_000_000, **kw),
}
