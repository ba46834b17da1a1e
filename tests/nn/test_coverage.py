"""Structure discovery on every covered family: the groups found match the models'
configs, the pruned model equals the masked dense model on random inputs, and its
measured parameters and MACs equal the predicted ones (and the allocation problem's
usage) for random keep masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optprune.nn import zoo
from optprune.nn.bridge import problem_from_structures
from optprune.nn.calib import model_output, run_model
from optprune.nn.structures import count_flops, discover
from optprune.nn.surgery import apply_mask

pytest.importorskip("transformers")
torch.set_num_threads(1)

# (layer, kind) -> width, from the zoo's configs.
EXPECTED = {
    "bert": {("encoder.layer.0.attention.self", "head"): 4,
             ("encoder.layer.0.intermediate.dense", "ffn"): 48,
             ("encoder.layer.1.attention.self", "head"): 4,
             ("encoder.layer.1.intermediate.dense", "ffn"): 48},
    "vit-cls": {("vit.layers.0.attention", "head"): 4, ("vit.layers.0.mlp.fc1", "ffn"): 48,
                ("vit.layers.1.attention", "head"): 4, ("vit.layers.1.mlp.fc1", "ffn"): 48},
    "gpt2": {("transformer.h.0.attn", "head"): 4, ("transformer.h.0.mlp.c_fc", "ffn"): 48,
             ("transformer.h.1.attn", "head"): 4, ("transformer.h.1.mlp.c_fc", "ffn"): 48},
    "llama-gqa": {("model.layers.0.self_attn", "kv_head"): 2,
                  ("model.layers.0.self_attn", "head"): 8,
                  ("model.layers.0.mlp.gate_proj", "ffn"): 40,
                  ("model.layers.1.self_attn", "kv_head"): 2,
                  ("model.layers.1.self_attn", "head"): 8,
                  ("model.layers.1.mlp.gate_proj", "ffn"): 40},
    "llama-mha": {("model.layers.0.self_attn", "head"): 8,
                  ("model.layers.0.mlp.gate_proj", "ffn"): 40,
                  ("model.layers.1.self_attn", "head"): 8,
                  ("model.layers.1.mlp.gate_proj", "ffn"): 40},
    "torch-mha": {("attn", "head"): 4},
    "torch-encoder": {("encoder.layers.0.self_attn", "head"): 4,
                      ("encoder.layers.0.linear1", "ffn"): 24,
                      ("encoder.layers.1.self_attn", "head"): 4,
                      ("encoder.layers.1.linear1", "ffn"): 24},
    "conv1d": {("conv1", "channel"): 8, ("conv2", "channel"): 8},
}
FAMILIES = ["bert", "bert-cls", "vit", "vit-cls", "gpt2", "llama-gqa", "llama-mha",
            "resnet-basic", "resnet-bottleneck", "mobilenetv2", "torch-mha", "torch-encoder",
            "conv1d", "mlp", "cnn", "vit-own"]


def _fresh_inputs(x, seed=7):
    """Other random inputs of the same form (ids stay in the vocabulary)."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            if k == "input_ids":
                out[k] = torch.randint(3, int(v.max()) + 1, v.shape, generator=g)
            elif v.is_floating_point():
                out[k] = torch.randn(v.shape, generator=g)
            else:
                out[k] = v.clone()
        return out
    return torch.randn(x.shape, generator=g)


def _keep(ss, rng, p):
    keep = rng.random(len(ss)) < p
    for ix in ss.layer_kind_index().values():
        keep[ix[0]] = True  # torch cannot run a convolution with no channels
    return keep


@pytest.mark.parametrize("name", FAMILIES)
def test_pruned_equals_masked_and_costs_are_exact(name):
    model, x = zoo.build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ss = discover(model, data=x)
    assert len(ss) > 0
    if name in EXPECTED:
        widths = {k: int(ix.size) for k, ix in ss.layer_kind_index().items()}
        assert widths == EXPECTED[name]
    problem = problem_from_structures(ss, np.ones(len(ss)))
    x2 = _fresh_inputs(x)
    rng = np.random.default_rng(0)
    for trial in range(3):
        keep = _keep(ss, rng, (0.3, 0.6, 0.85)[trial])
        with torch.no_grad():
            with ss.masked(keep):
                ref = model_output(run_model(model, x2))
            pruned = apply_mask(ss, keep)
            out = model_output(run_model(pruned, x2))
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4), (trial, (out - ref).abs().max())
        pred = ss.predict(keep)
        assert sum(p.numel() for p in pruned.parameters()) == pred["params"]
        assert count_flops(pruned, inputs=x) == pred["flops"]
        eff = ss.effective(keep)
        use = problem.usage(eff)
        assert use["params"] == pytest.approx(pred["params"], abs=1e-6)
        assert use["flops"] == pytest.approx(pred["flops"], abs=1e-6)
    for k, v in model.state_dict().items():  # the dense model is untouched
        assert torch.equal(v, before[k]), k


def test_hand_counted_costs_of_a_gqa_layer():
    """LLaMA, d = 32, d_h = 4, 8 query heads over 2 key/value heads, no biases: a query
    head owns d_h*d rows of q_proj and d*d_h columns of o_proj; a key/value head d_h*d
    rows of k_proj and of v_proj. Dropping key/value head 0 drops its 4 query heads."""
    model, x = zoo.build("llama-gqa")
    ss = discover(model, data=x)
    g = {gr.id: gr for gr in ss.groups}
    a = "model.layers.0.self_attn"
    assert g[f"{a}:head:5"].params == 2 * 4 * 32
    assert g[f"{a}:kv_head:1"].params == 2 * 4 * 32
    assert g[f"{a}:head:5"].requires == (f"{a}:kv_head:1",)
    t = 8  # tokens of the example
    assert g[f"{a}:head:5"].flops == t * 2 * 4 * 32 + 2 * t * t * 4
    keep = np.ones(len(ss), dtype=bool)
    keep[ss.ids.index(f"{a}:kv_head:0")] = False
    assert ss.predict(keep)["params"] == ss.dense_params - 2 * 4 * 32 - 4 * 2 * 4 * 32
    pruned = apply_mask(ss, keep)
    att = pruned.model.layers[0].self_attn
    assert att.num_key_value_groups == 4 and att.k_proj.out_features == 4
    assert not hasattr(att, "optprune_kv_index")


def test_gqa_unequal_groups_run_through_a_kv_map_and_generate():
    model, x = zoo.build("llama-gqa")
    ss = discover(model, data=x)
    a = "model.layers.1.self_attn"
    keep = np.ones(len(ss), dtype=bool)
    for i in (1, 2, 7):  # key/value head 0 keeps query heads 0, 3; head 1 keeps 4, 5, 6
        keep[ss.ids.index(f"{a}:head:{i}")] = False
    pruned = apply_mask(ss, keep)
    att = pruned.model.layers[1].self_attn
    assert att.optprune_kv_index == [0, 0, 1, 1, 1]
    with torch.no_grad(), ss.masked(keep):
        ref = model_output(run_model(model, x))
    out = model_output(run_model(pruned, x))
    assert torch.allclose(out, ref, atol=1e-5)
    _generation_matches_uncached_greedy(pruned, x["input_ids"][:1])


def _generation_matches_uncached_greedy(model, ids, n=5):
    """generate() (with its key/value cache) == greedy decoding by full forwards."""
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)
        seq = ids
        for _ in range(n):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(gen, seq)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "llama-mha"])
def test_pruned_decoders_generate(name):
    model, x = zoo.build(name)
    ss = discover(model, data=x)
    rng = np.random.default_rng(3)
    pruned = apply_mask(ss, _keep(ss, rng, 0.5))
    ids = x["input_ids"][:1]
    _generation_matches_uncached_greedy(pruned, ids)
    assert pruned(ids).logits.shape == model(ids).logits.shape


def test_depthwise_and_residual_coupling():
    model, x = zoo.build("mobilenetv2")
    ss = discover(model, data=x)
    g = {gr.id: gr for gr in ss.groups}
    grp = g["mobilenet_v2.layer.0.expand_1x1.convolution:channel:3"]
    names = {n for n, _, _ in grp.slices}
    # expand 1x1 rows, its BatchNorm, the depthwise conv's filter and BatchNorm, and
    # the reduce 1x1's input column are one structure
    assert "mobilenet_v2.layer.0.conv_3x3.convolution.weight" in names
    assert "mobilenet_v2.layer.0.conv_3x3.normalization.running_var" in names
    assert "mobilenet_v2.layer.0.reduce_1x1.convolution.weight" in names
    model, x = zoo.build("resnet-bottleneck")
    ss = discover(model, data=x)
    # a residual stage's channel spans the shortcut and every block writing the stream
    res = [gr for gr in ss.groups if gr.layer.endswith("stages.1.layers.0.layer.2.convolution")
           or gr.layer.endswith("stages.1.layers.1.layer.2.convolution")]
    assert res and any("shortcut" in n for n, _, _ in res[0].slices)


def test_data_dependent_control_flow_is_traced_by_running():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 6)
            self.b = torch.nn.Linear(6, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            if h.shape[0] > 1:  # symbolic tracing cannot take this branch
                h = h * 2.0
            return self.b(h)

    torch.manual_seed(0)
    m = Branchy().eval()
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(m)
    ss = discover(m, data=torch.randn(3, 4))
    assert [g.id for g in ss.groups] == [f"a:neuron:{i}" for i in range(6)]


def test_the_allocation_keeps_gqa_layouts_valid():
    """Query heads imply their key/value heads in the problem; exact selections under
    tight budgets drop whole key/value heads and single query heads, never a key/value
    head a kept query head needs."""
    from optprune.alloc import allocate

    model, x = zoo.build("llama-gqa")
    ss = discover(model, data=x)
    problem = problem_from_structures(ss, np.random.default_rng(0).random(len(ss)))
    assert len(problem.implications) == 16
    kinds_dropped = set()
    for frac in (0.3, 0.5, 0.7):
        p = problem_from_structures(ss, np.random.default_rng(1).random(len(ss)))
        p.add_budget("params", max=frac, relative=True)
        keep = allocate(p, baselines=False).keep
        assert np.array_equal(ss.effective(keep), keep)
        kinds_dropped |= {g.kind for g, k in zip(ss.groups, keep) if not k}
        assert ss.predict(keep)["params"] <= frac * ss.dense_params + 1e-9
    assert {"kv_head", "head"} <= kinds_dropped
