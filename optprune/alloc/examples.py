"""LLaMA-shaped allocation problems with seeded synthetic scores.

Shapes (per decoder layer): attention heads of size d_head = d / n_heads and FFN
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

from dataclasses import dataclass

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
