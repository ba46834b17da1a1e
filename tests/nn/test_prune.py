"""Torch side: pruned models equal masked models, costs are exact, scores match
hand computations, and bad input gets one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import optprune
from optprune.errors import InfeasibleProblemError, UnsupportedModuleError, ValidationError
from optprune.nn import apply_mask, count_flops, discover, problem_from_structures, score
from optprune.nn.models import MLP, SmallCNN, ViT

MODELS = {
    "mlp": (lambda: MLP(16, [12, 10], 4), (16,)),
    "cnn": (lambda: SmallCNN(1, 8, n_blocks=2, n_classes=4), (1, 8, 8)),
    "vit": (lambda: ViT(dim=16, heads=(2, 3), head_dim=4, ffn=(12, 10), n_classes=4), (1, 8, 8)),
}


def build(name):
    torch.manual_seed(0)
    make, shape = MODELS[name]
    m = make().eval()
    # Non-trivial BatchNorm statistics, so the slicing of buffers is exercised.
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m, shape


@pytest.mark.parametrize("name", list(MODELS))
def test_pruned_equals_masked_and_costs_are_exact(name):
    model, shape = build(name)
    ss = discover(model, shape)
    problem = problem_from_structures(ss, np.ones(len(ss)))
    rng = np.random.default_rng(0)
    x = torch.randn(7, *shape)
    for trial in range(6):
        keep = rng.random(len(ss)) < rng.uniform(0.2, 0.9)
        for ix in ss.layer_kind_index().values():
            keep[ix[0]] |= name == "cnn"  # torch cannot run a Conv2d with no channels
        with ss.masked(keep):
            ref = model(x)
        pruned = apply_mask(ss, keep)
        assert torch.allclose(pruned(x), ref, atol=1e-5), trial
        n_params = sum(p.numel() for p in pruned.parameters())
        pred = ss.predict(keep)
        assert n_params == pred["params"]
        assert count_flops(pruned, shape) == pred["flops"]
        use = problem.usage(keep)
        assert use["params"] == pytest.approx(n_params, abs=1e-6)
        assert use["flops"] == pytest.approx(pred["flops"], abs=1e-6)
    assert sum(p.numel() for p in model.parameters()) == ss.dense_params  # original untouched


def test_an_emptied_linear_layer_or_head_set_still_runs():
    model, shape = build("vit")
    ss = discover(model, shape)
    keep = np.ones(len(ss), dtype=bool)
    for (lay, _kd), ix in ss.layer_kind_index().items():
        if lay.startswith("blocks.0"):
            keep[ix] = False
    x = torch.randn(3, *shape)
    with ss.masked(keep):
        ref = model(x)
    with pytest.raises(ValidationError, match="allow_empty"):
        apply_mask(ss, keep, allow_empty=False)
    pruned = apply_mask(ss, keep)
    assert pruned.blocks[0].attn.num_heads == 0
    assert torch.allclose(pruned(x), ref, atol=1e-5)


def test_group_discovery_on_the_vit_matches_its_shape():
    model, shape = build("vit")
    ss = discover(model, shape)
    kinds = {}
    for g in ss.groups:
        kinds[(g.layer, g.kind)] = kinds.get((g.layer, g.kind), 0) + 1
    assert kinds[("blocks.0.attn", "head")] == 2 and kinds[("blocks.1.attn", "head")] == 3
    assert kinds[("blocks.0.mlp.fc1", "ffn")] == 12 and kinds[("blocks.1.mlp.fc1", "ffn")] == 10
    assert ss.groups[0].id == "blocks.0.attn:head:0"


def test_residual_channels_are_one_group():
    model, shape = build("cnn")
    ss = discover(model, shape)
    stem = [g for g in ss.groups if g.layer.startswith("stem")]
    # The stem's channels feed both residual blocks' adds: every producer of the
    # merged space slices the same channel.
    producers = {n for g in stem[:1] for n, d, _ in g.slices if d == 0 and n.endswith("weight")}
    assert len(producers) >= 3


def test_hand_computed_scores_on_a_tiny_mlp():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    ss = discover(m, (3,))
    W1, b1 = m[0].weight.detach().double(), m[0].bias.detach().double()
    W2 = m[2].weight.detach().double()
    mag = score(ss, "magnitude")
    hand = [float(torch.sqrt((W1[j] ** 2).sum() + b1[j] ** 2 + (W2[:, j] ** 2).sum()))
            for j in range(4)]
    assert np.allclose(mag, hand)
    x = torch.randn(50, 3)
    h = torch.relu(x.double() @ W1.T + b1)
    wanda = score(ss, "wanda", x)
    assert np.allclose(wanda, [float(W2[:, j].abs().sum() * h[:, j].norm()) for j in range(4)])
    flap = score(ss, "flap", x)
    assert np.allclose(flap, [float(h[:, j].var(unbiased=True) * (W2[:, j] ** 2).sum())
                              for j in range(4)])
    y = torch.randint(0, 2, (50,))
    tay = score(ss, "taylor", (x, y))
    m.zero_grad()
    loss = nn.functional.cross_entropy(m(x), y)
    loss.backward()
    with torch.no_grad():
        hand_t = [abs(float((m[0].weight.grad[j] * m[0].weight[j]).sum()
                            + m[0].bias.grad[j] * m[0].bias[j]
                            + (m[2].weight.grad[:, j] * m[2].weight[:, j]).sum())) for j in range(4)]
    assert np.allclose(tay, hand_t, rtol=1e-4)


def test_prune_meets_the_budget_exactly_with_multiples():
    model, shape = build("vit")
    x = torch.randn(32, *shape)
    y = torch.randint(0, 4, (32,))
    pruned, rep = optprune.prune(model, "flap", 0.6, data=(x, y), flops=0.7,
                                 multiples={"ffn": 2})
    assert rep.allocation["termination"] == "optimal"
    assert rep.after == rep.predicted
    assert rep.after["params"] <= 0.6 * rep.before["params"]
    assert rep.after["flops"] <= 0.7 * rep.before["flops"]
    for blk in pruned.blocks:
        assert blk.mlp.fc1.out_features % 2 == 0 and blk.mlp.fc1.out_features >= 2
        assert blk.attn.num_heads >= 1
    assert pruned(x).shape == (32, 4)
    # The exact selection retains at least as much score as every feasible baseline.
    for name, b in rep.baselines.items():
        if b["feasible"]:
            assert b["objective"] <= rep.allocation["objective"] + 1e-9, name


def test_bias_compensation_equals_mean_filled_masking():
    model, shape = build("mlp")
    ss = discover(model, shape)
    x = torch.randn(40, *shape)
    keep = np.random.default_rng(2).random(len(ss)) < 0.5
    from optprune.nn.surgery import channel_means

    means = channel_means(ss, x)
    with ss.masked(keep, fill=means):
        ref = model(x)
    pruned = apply_mask(ss, keep, bias_compensation=True, data=x)
    assert torch.allclose(pruned(x), ref, atol=1e-5)


def test_reinit_changes_only_pruned_modules():
    model, shape = build("mlp")
    ss = discover(model, shape)
    keep = np.ones(len(ss), dtype=bool)
    keep[0] = False  # first hidden layer loses a neuron
    torch.manual_seed(5)
    pruned = apply_mask(ss, keep, reinit=True)
    assert not torch.equal(pruned[0].weight, model[0].weight[1:])
    assert torch.equal(pruned[4].weight, model[4].weight)  # untouched output layer


def test_a_budget_that_empties_a_layer_is_an_error_unless_allowed():
    model, shape = build("mlp")
    with pytest.raises(InfeasibleProblemError):
        optprune.prune(model, "magnitude", 0.03, input_shape=shape, baselines=False)
    pruned, rep = optprune.prune(model, "magnitude", 0.03, input_shape=shape,
                                 allow_empty_layers=True, baselines=False)
    assert rep.after["params"] <= 0.03 * rep.before["params"]


def test_bad_input_is_named():
    model, shape = build("mlp")
    with pytest.raises(ValidationError, match="shape of the calibration inputs"):
        optprune.prune(model, "wanda", 0.5, input_shape=shape, data=torch.randn(4, 5))
    with pytest.raises(ValidationError, match="dtype"):
        optprune.prune(model, "wanda", 0.5, input_shape=shape,
                       data=torch.zeros(4, 16, dtype=torch.long))
    with pytest.raises(ValidationError, match="finite"):
        optprune.prune(model, np.full(22, np.nan), 0.5, input_shape=shape)
    with pytest.raises(ValidationError, match="budget"):
        optprune.prune(model, "magnitude", 1.5, input_shape=shape)
    with pytest.raises(ValidationError, match="importance"):
        optprune.prune(model, "no-such-score", 0.5, input_shape=shape)

    class Odd(nn.Module):
        def forward(self, x):
            return x

    bad = nn.Sequential(nn.Linear(4, 4), Odd(), nn.Linear(4, 2), nn.RNN(2, 2))
    with pytest.raises(UnsupportedModuleError) as exc:
        discover(bad, (4,))
    assert "RNN" in str(exc.value)


def test_diverging_training_stops_and_keeps_the_last_good_weights():
    from optprune.errors import TrainingDivergedError
    from optprune.nn.train import train

    torch.manual_seed(0)
    m = nn.Linear(4, 3)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    x[3, 0] = float("nan")
    before = m.weight.detach().clone()
    with pytest.raises(TrainingDivergedError) as exc:
        train(m, x, y, epochs=2)
    assert exc.value.epoch == 0
    assert torch.equal(m.weight, before)
