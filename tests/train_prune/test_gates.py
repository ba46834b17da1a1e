"""Compresso-style gates: deterministic limits, P(open) and the expected size against
Monte Carlo counts, the size formula against physically pruned models, the exact
final allocation against brute force, and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from optprune.errors import UnsupportedModuleError, ValidationError
from optprune.nn.models import MLP, ViT
from optprune.train_prune import (CompressoGates, GateMasks, HardConcreteGate,
                                  TrainingDivergedError, apply_gate_masks, exact_allocation,
                                  own_rounding, size_problem, train_compresso)
from optprune.train_prune.gates import masks_params, vit_param_count

torch.set_num_threads(1)


def tiny_vit(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(image_size=8, patch=4, dim=8, heads=(2, 3), head_dim=4, ffn=(6, 5), n_classes=3)
    args.update(kw)
    return ViT(**args).eval()


def random_masks(vit, rng, p=0.6, min_hidden=1):
    hid = rng.random(vit.patch_embed.out_channels) < p
    hid[rng.integers(hid.size)] = True
    heads = tuple(rng.random(b.attn.num_heads) < p for b in vit.blocks)
    ffn = tuple(rng.random(b.mlp.fc1.out_features) < p for b in vit.blocks)
    return GateMasks(hid, heads, ffn)


# ------------------------------------------------------------------ the gate itself
def test_gate_deterministic_limits():
    g = HardConcreteGate(5000)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        g.log_alpha.fill_(40.0)
        assert torch.equal(g.sample(gen), torch.ones(5000))
        assert torch.equal(g.deterministic(), torch.ones(5000))
        assert float(g.prob_open().min()) == pytest.approx(1.0)
        g.log_alpha.fill_(-40.0)
        assert torch.equal(g.sample(gen), torch.zeros(5000))
        assert torch.equal(g.deterministic(), torch.zeros(5000))
        assert float(g.prob_open().max()) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("log_alpha", [-2.0, 0.0, 1.5])
def test_prob_open_and_exact_ends_match_monte_carlo(log_alpha):
    """P(z > 0) formula vs frequency; z is exactly 0 or exactly 1 with the
    probabilities of the stretched concrete's tails."""
    n = 200_000
    g = HardConcreteGate(n, init_std=0.0)
    with torch.no_grad():
        g.log_alpha.fill_(log_alpha)
        z = g.sample(torch.Generator().manual_seed(1)).double().numpy()
        p_open = float(g.prob_open()[0])
    se = np.sqrt(p_open * (1 - p_open) / n)
    assert abs((z > 0).mean() - p_open) < 5 * se
    # P(z = 1) = P(s >= c), c = (1 - l)/(r - l): s >= c <=> logistic noise >= beta logit(c)
    # - log_alpha, so P(z = 1) = sigmoid(log_alpha - beta logit(c)).
    c = (1 - (-0.1)) / (1.1 - (-0.1))
    p_one = 1 / (1 + np.exp(-(log_alpha - (2 / 3) * np.log(c / (1 - c)))))
    assert abs((z == 1).mean() - p_one) < 5 * np.sqrt(p_one * (1 - p_one) / n) + 1e-9
    assert ((z >= 0) & (z <= 1)).all()


def test_fixed_mask_overrides_samples_and_checks_shape():
    g = HardConcreteGate(3).train()
    g.fix([1, 0, 1])
    assert torch.equal(g(), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValidationError, match=r"of shape \(3,\)"):
        g.fix([1, 0])
    g.fix(None)
    assert g().shape == (3,)


# ------------------------------------------------------------------ sizes
def test_size_formula_equals_physically_pruned_model_and_outputs_match():
    vit = tiny_vit()
    rng = np.random.default_rng(0)
    gates = CompressoGates(vit)
    assert gates.dense_params() == sum(p.numel() for p in vit.parameters())
    assert vit_param_count(vit, 8.0, [2, 3], [6, 5]) == gates.dense_params()
    x = torch.randn(6, 1, 8, 8)
    prob = size_problem(gates)
    for _ in range(6):
        m = random_masks(vit, rng)
        pruned = apply_gate_masks(vit, m)
        assert sum(p.numel() for p in pruned.parameters()) == masks_params(vit, m)
        keep = np.concatenate([m.hidden] + [a for hb, fb in zip(m.heads, m.ffn) for a in (hb, fb)])
        assert prob.usage(keep)["params"] == pytest.approx(masks_params(vit, m))
        # The gated dense model (binary gates) computes what the pruned model computes.
        vd, pd = vit.double(), pruned.double()
        gates.attach()
        gates.fix(m)
        gates.eval()
        try:
            with torch.no_grad():
                a, b = vd(x.double()), pd(x.double())
        finally:
            gates.detach()
            gates.fix(None)
        vit.float()
        assert torch.allclose(a, b, atol=1e-10), float((a - b).abs().max())


def test_expected_size_matches_monte_carlo_count():
    vit = tiny_vit(dim=12, heads=(3, 2, 4), ffn=(10, 7, 9))
    gates = CompressoGates(vit, seed=3)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for g in [gates.hidden, *gates.head, *gates.ffn]:
            g.log_alpha.copy_(torch.as_tensor(rng.normal(0.5, 1.5, g.n), dtype=torch.float32))
        expected = float(gates.expected_params())
        gen = torch.Generator().manual_seed(0)
        counts = []
        for _ in range(4000):
            hid = float((gates.hidden.sample(gen) > 0).sum())
            heads = [float((g.sample(gen) > 0).sum()) for g in gates.head]
            ffn = [float((g.sample(gen) > 0).sum()) for g in gates.ffn]
            counts.append(vit_param_count(vit, hid, heads, ffn))
    counts = np.asarray(counts)
    se = counts.std() / np.sqrt(counts.size)
    assert abs(counts.mean() - expected) < 5 * se, (counts.mean(), expected, se)
    # and not the naive "size at the mean log_alpha": the bilinear terms matter
    assert 0 < gates.max_sparsity() < 1


# ------------------------------------------------------------------ final masks
def test_exact_allocation_equals_brute_force_and_meets_the_budget():
    vit = tiny_vit(dim=3, heads=(2,), head_dim=2, ffn=(3,))
    gates = CompressoGates(vit)
    rng = np.random.default_rng(5)
    with torch.no_grad():
        for g in [gates.hidden, *gates.head, *gates.ffn]:
            g.log_alpha.copy_(torch.as_tensor(rng.normal(0, 2, g.n), dtype=torch.float32))
    dense = gates.dense_params()
    prob = size_problem(gates)
    logit = np.concatenate([gates.scores()["hidden"], gates.scores()["heads"][0],
                            gates.scores()["ffn"][0]])
    assert np.allclose(prob.score, logit) and (logit < 0).any() and (logit > 0).any()
    usage = {}
    for bits in itertools.product([0, 1], repeat=prob.n):
        keep = np.array(bits, dtype=bool)
        if keep[:3].sum() >= 1:
            usage[bits] = (prob.usage(keep)["params"], prob.retained(keep))
    for target in (0.2, 0.35, 0.5):
        for fill in (None, 0.9):
            masks, proof = exact_allocation(gates, target, min_fill=fill)
            n = masks_params(vit, masks)
            hi = (1 - target) * dense
            lo = 0 if fill is None else fill * hi
            assert lo - 1e-9 <= n <= hi + 1e-9
            best = max(v for u, v in usage.values() if lo - 1e-9 <= u <= hi + 1e-9)
            assert proof["objective"] == pytest.approx(best, rel=1e-6, abs=1e-9)


def test_own_rounding_keeps_round_expected_count_by_log_alpha():
    vit = tiny_vit()
    gates = CompressoGates(vit)
    with torch.no_grad():
        gates.head[1].log_alpha.copy_(torch.tensor([5.0, -5.0, 0.3]))
    m = own_rounding(gates)
    k = int(round(float(gates.head[1].prob_open().detach().sum())))
    assert m.heads[1].sum() == k == 2
    assert m.heads[1].tolist() == [True, False, True]


# ------------------------------------------------------------------ training
def _toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long() + \
        (x[:, 0, :, :4].mean((1, 2)) > 0.5).long()
    return x, y


def test_training_moves_towards_target_with_frozen_base_and_lora():
    pytest.importorskip("peft")
    vit = tiny_vit()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    x, y = _toy_data()
    res = train_compresso(vit, x, y, 0.4, steps=60, warmup_steps=20, batch_size=32,
                          gate_lr=0.1, lambda_lr=0.2, init_log_alpha=3.0)
    # the caller's model is untouched, the copy's base weights are frozen
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    base = res.peft_model.get_base_model()
    trainable = {n for n, p in res.peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(torch.equal(before[n.replace(".base_layer", "")], p)
               for n, p in base.named_parameters() if "lora_" not in n)
    h = res.history
    assert h[-1]["expected_sparsity"] > h[0]["expected_sparsity"] + 0.1
    assert h[-1]["target_now"] == pytest.approx(0.4)
    # exact allocation hits the target from below; a physically pruned model agrees
    masks, proof = exact_allocation(res.gates, 0.4)
    merged = res.merged_vit()
    n = sum(p.numel() for p in apply_gate_masks(merged, masks).parameters())
    assert n <= 0.6 * res.gates.dense_params() and proof["gap"] <= 1e-6


def test_diverging_training_stops_with_checkpoint():
    pytest.importorskip("peft")
    vit = tiny_vit()
    x, y = _toy_data()
    calls = {"n": 0}

    def bad_loss(out, target):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(out, target)
        return loss * float("nan") if calls["n"] > 7 else loss

    with pytest.raises(TrainingDivergedError, match="diverged at step 7") as ei:
        train_compresso(vit, x, y, 0.3, steps=20, loss_fn=bad_loss, checkpoint_every=5)
    assert ei.value.step == 7 and ei.value.checkpoint
    assert all(torch.isfinite(v).all() for v in ei.value.checkpoint.values())


# ------------------------------------------------------------------ bad input
def test_unreachable_target_and_bad_targets():
    pytest.importorskip("peft")
    vit = tiny_vit()
    gates = CompressoGates(vit)
    smax = gates.max_sparsity()
    x, y = _toy_data(16)
    for t in (smax + 0.01, 1.0, 0.0, -0.2):
        with pytest.raises(ValidationError, match="sparsity 'target'"):
            exact_allocation(gates, t)
        with pytest.raises(ValidationError, match="Lower the target"):
            train_compresso(vit, x, y, t, steps=1)


def test_models_without_gate_sites_are_refused():
    with pytest.raises(UnsupportedModuleError, match="optprune.nn.models.ViT"):
        CompressoGates(MLP(4, [3], 2))
    vit = tiny_vit()
    vit.blocks[1].attn = nn.Identity()
    vit.blocks[0].mlp = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(UnsupportedModuleError, match=r"blocks\.1\.attn.*|blocks\.0\.mlp") as ei:
        CompressoGates(vit)
    assert "blocks.1.attn" in str(ei.value) and "blocks.0.mlp" in str(ei.value)


def test_without_hidden_gates_the_hidden_width_stays_whole():
    vit = tiny_vit()
    gates = CompressoGates(vit, hidden=False)
    assert float(gates.expected_counts()["hidden"]) == 8
    with torch.no_grad():
        for g in [*gates.head, *gates.ffn]:
            g.log_alpha.normal_(0, 2)
    masks, _ = exact_allocation(gates, 0.3)
    assert masks.hidden.all() and own_rounding(gates).hidden.all()
    assert masks_params(vit, masks) <= 0.7 * gates.dense_params()
    # the largest reachable sparsity keeps the whole hidden width
    assert gates.max_sparsity() == pytest.approx(
        1 - vit_param_count(vit, 8.0, [0, 0], [0, 0]) / gates.dense_params())
    with pytest.raises(ValidationError, match="sparsity 'target'"):
        exact_allocation(gates, gates.max_sparsity() + 1e-3)
