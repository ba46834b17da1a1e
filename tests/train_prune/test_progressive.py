"""LoRAShear-style progressive pruning: the shrink schedule reaches exactly zero at
the end of its period (with and without LoRA adapters), the pruned model equals
the masked model, the exact plan keeps the protected groups and meets the budget,
and bad input gets clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from optprune.errors import ValidationError
from optprune.nn import apply_mask, discover
from optprune.nn.models import MLP, ViT
from optprune.train_prune import (TrainingDivergedError, one_shot_prune, plan_removal,
                                  progressive_prune, progressive_shrink, shrink_factor,
                                  train_steps)
from optprune.train_prune.progressive import _tensor_masks

torch.set_num_threads(1)


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return ViT(image_size=8, patch=4, dim=8, heads=(2, 3), head_dim=4, ffn=(6, 5),
               n_classes=3).eval()


def toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long() + \
        (x[:, 0, :, :4].mean((1, 2)) > 0.5).long()
    return x, y


def test_shrink_factors_multiply_to_a_linear_ramp_and_end_at_zero():
    for period in (1, 2, 7, 50):
        prod = 1.0
        for t in range(period):
            prod *= shrink_factor(t, period)
            assert prod == pytest.approx((period - t - 1) / period, abs=1e-12)
        assert prod == 0.0 and shrink_factor(period - 1, period) == 0.0
    with pytest.raises(ValidationError, match="shrink step t"):
        shrink_factor(5, 5)
    with pytest.raises(ValidationError, match="period P"):
        shrink_factor(0, 0)


def test_without_gradient_the_removed_groups_follow_the_ramp_and_reach_exact_zero():
    vit = tiny_vit()
    x, y = toy_data()
    plan = plan_removal(vit, x, y, 0.3)
    masks = _tensor_masks(plan.structures, plan.keep, vit)
    start = {id(t): t.detach().clone() for t, _ in masks}
    norm0 = float(sum(float(t.detach()[m].double().pow(2).sum()) for t, m in masks)) ** 0.5
    period = 6
    out = progressive_shrink(vit, plan, x, y, period, lr=0.0)
    for t, n in enumerate(out["removed_norms"]):
        assert n == pytest.approx(norm0 * (period - t - 1) / period, rel=1e-5, abs=1e-12)
    for t, m in masks:
        assert torch.count_nonzero(t.detach()[m]) == 0
        # the kept entries are untouched (lr = 0)
        assert torch.equal(t.detach()[~m], start[id(t)][~m])


def test_progressive_reaches_zero_while_training_and_pruned_equals_masked():
    vit = tiny_vit()
    x, y = toy_data()
    plan = plan_removal(vit, x, y, 0.4)
    out = progressive_shrink(vit, plan, x, y, 8, lr=5e-2)
    assert out["removed_norms"][0] > 0 and out["removed_norms"][-1] == 0.0
    ss = discover(vit, (1, 8, 8))
    pruned = apply_mask(ss, plan.keep)
    xt = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        dense_zeroed = vit(xt)
        with ss.masked(plan.keep) as mm:
            masked = mm(xt)
        small = pruned(xt)
    assert torch.allclose(small, masked, atol=1e-5)
    assert torch.allclose(small, dense_zeroed, atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) == ss.predict(plan.keep)["params"]


def test_lora_adapter_rows_shrink_with_their_groups():
    peft = pytest.importorskip("peft")
    vit = tiny_vit()
    x, y = toy_data()
    plan = plan_removal(vit, x, y, 0.4)
    for p in vit.parameters():
        p.requires_grad_(False)
    pm = peft.get_peft_model(vit, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q", "v"],
                                                  lora_dropout=0.0))
    with torch.no_grad():  # non-zero B so that the adapters really carry the head rows
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_()
    masks = _tensor_masks(plan.structures, plan.keep, pm)
    names = {id(p): n for n, p in pm.named_parameters()}
    lora_b = [(t, m) for t, m in masks if "lora_B" in names.get(id(t), "")]
    removed_heads = [g for g, k in zip(plan.structures.groups, plan.keep)
                     if not k and g.kind == "head"]
    assert removed_heads and lora_b
    out = progressive_shrink(pm, plan, x, y, 5, lr=1e-2)
    assert out["removed_norms"][-1] == 0.0
    for t, m in lora_b:
        assert m.any() and torch.count_nonzero(t.detach()[m]) == 0
    merged = pm.merge_and_unload()
    ss = discover(merged, (1, 8, 8))
    for t, m in _tensor_masks(ss, plan.keep, merged):
        assert torch.count_nonzero(t.detach()[m]) == 0
    xt = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(apply_mask(ss, plan.keep)(xt), merged(xt), atol=1e-5)


def test_plan_keeps_protected_groups_and_meets_budget_exactly():
    vit = tiny_vit()
    x, y = toy_data()
    for red in (0.15, 0.3):
        plan = plan_removal(vit, x, y, red, protect_fraction=0.34)
        assert (plan.keep[plan.protected]).all()
        assert plan.predicted_params <= (1 - red) * plan.dense_params + 1e-9
        assert plan.allocation["gap"] <= 1e-6
        for _slot, ix in plan.structures.layer_kind_index().items():
            assert plan.protected[ix].sum() >= 1 and plan.keep[ix].sum() >= 1
            # within a slot the kept ones are the top scores (equal costs per slot)
            kept, dropped = plan.scores[ix][plan.keep[ix]], plan.scores[ix][~plan.keep[ix]]
            if dropped.size:
                assert kept.min() >= dropped.max()


def test_plan_with_given_structures_and_importance_options():
    vit = tiny_vit()
    x, y = toy_data()
    ss = discover(vit, (1, 8, 8))
    a = plan_removal(None, x, y, 0.3, structures=ss, importance="magnitude")
    b = plan_removal(vit, x, y, 0.3, importance="magnitude")
    assert np.array_equal(a.keep, b.keep) and a.predicted_params == b.predicted_params
    with pytest.raises(ValidationError, match="'structures' of plan_removal"):
        plan_removal(None, x, y, 0.3, structures="not a set")


def test_train_steps_refuses_a_model_with_nothing_to_train():
    vit = tiny_vit()
    for p in vit.parameters():
        p.requires_grad_(False)
    x, y = toy_data(8)
    with pytest.raises(ValidationError, match="requires_grad=False"):
        train_steps(vit, x, y, 2)


def test_progressive_prune_end_to_end_and_one_shot_baseline():
    vit = tiny_vit()
    x, y = toy_data()
    pruned, rep = progressive_prune(vit, x, y, 0.3, period_steps=6, recovery_steps=6, lr=1e-2)
    assert rep.params == rep.predicted_params <= 0.7 * rep.dense_params
    assert rep.removed_norm_last == 0.0 < rep.removed_norm_first
    assert sum(p.numel() for p in pruned.parameters()) == rep.params
    plan = plan_removal(vit, x, y, 0.3)
    base = one_shot_prune(vit, plan, x, y, 12, lr=1e-2)
    assert sum(p.numel() for p in base.parameters()) == rep.params
    assert rep.to_dict()["params_ratio"] < 0.7


def test_progressive_with_lora_end_to_end():
    pytest.importorskip("peft")
    vit = tiny_vit()
    x, y = toy_data()
    pruned, rep = progressive_prune(vit, x, y, 0.3, period_steps=4, recovery_steps=2, lr=1e-2,
                                    lora=True, lora_rank=2)
    assert rep.lora and rep.removed_norm_last == 0.0 and rep.params == rep.predicted_params
    assert all(p.requires_grad for p in pruned.parameters())


def test_progressive_works_on_an_mlp_too():
    torch.manual_seed(0)
    mlp = MLP(16, [12, 10], 3)
    x = torch.randn(64, 16)
    y = torch.randint(0, 3, (64,))
    pruned, rep = progressive_prune(mlp, x, y, 0.4, period_steps=5, recovery_steps=3)
    assert rep.params == rep.predicted_params == sum(p.numel() for p in pruned.parameters())


# ------------------------------------------------------------------ bad input
def test_unreachable_and_bad_reductions():
    vit = tiny_vit()
    x, y = toy_data(32)
    with pytest.raises(ValidationError, match=r"must be at most 0\.\d+ for this model"):
        plan_removal(vit, x, y, 0.95, protect_fraction=0.5)
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ValidationError, match="'reduction'"):
            plan_removal(vit, x, y, bad)


def test_model_without_prunable_groups_is_refused():
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.ln = nn.LayerNorm(3)

        def forward(self, x):
            return self.ln(self.lin(x))

    with pytest.raises(ValidationError, match="prunable groups"):
        plan_removal(Frozen(), torch.randn(8, 4), torch.zeros(8, dtype=torch.long), 0.3)


def test_diverging_training_keeps_last_good_checkpoint():
    vit = tiny_vit()
    x, y = toy_data()
    plan = plan_removal(vit, x, y, 0.3)
    calls = {"n": 0}
    states = {}

    def bad_loss(out, target):
        calls["n"] += 1
        if calls["n"] == 5:  # the start of step 4 is the checkpoint of checkpoint_every=4
            states["at_checkpoint"] = {k: v.clone() for k, v in vit.state_dict().items()}
        loss = nn.functional.cross_entropy(out, target)
        return loss + float("inf") if calls["n"] > 6 else loss

    with pytest.raises(TrainingDivergedError, match="diverged at step 6") as ei:
        progressive_shrink(vit, plan, x, y, 10, lr=1e-2, loss_fn=bad_loss, checkpoint_every=4)
    assert ei.value.step == 6
    for k, v in vit.state_dict().items():
        assert torch.equal(v, states["at_checkpoint"][k])
        assert torch.equal(v, ei.value.checkpoint[k])
    with pytest.raises(TrainingDivergedError):
        train_steps(vit, x, y, 3, loss_fn=lambda o, t: o.sum() * float("nan"))
