"""The noise layers on real networks, the rule, and its exact allocation."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from optprune.bayes import (NoisyModel, attach_noise, bmrs_allocate, bmrs_problem, bmrs_rule,
                            delta_f_normal, evidence_change, posterior_scores,
                            truncnorm_kl_to_uniform)
from optprune.errors import InfeasibleProblemError, UnsupportedModuleError, ValidationError
from optprune.nn.models import MLP, SmallCNN, ViT


def lenet():
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def randomize(nm: NoisyModel, seed: int, lo: float = -28.0, hi: float = 1.0) -> None:
    """Posteriors spread over every regime: important, collapsed to the prior, piled at a."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lay in nm.layers():
            lay.mu.copy_(lo + (hi - lo) * torch.rand(lay.n, generator=g))
            lay.log_sigma.copy_(-2.0 + 5.0 * torch.rand(lay.n, generator=g))


MODELS = {
    "mlp": (lambda: MLP(64, [50] * 5, 10), (64,)),
    "lenet": (lenet, (1, 8, 8)),
    "smallcnn": (lambda: SmallCNN(1, 8, 2, 10), (1, 8, 8)),
    "vit": (lambda: ViT(8, 2, 1, dim=32, heads=(2, 2), head_dim=8, ffn=32), (1, 8, 8)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_noise_attaches_and_folded_pruned_model_equals_masked_noisy_model(name):
    torch.manual_seed(0)
    make, shape = MODELS[name]
    model = make().eval()
    x = torch.randn(16, *shape)
    with torch.no_grad():
        dense = model(x)
    nm = attach_noise(model, shape)
    assert nm.n_structures == len(nm.structures.groups) > 0
    randomize(nm, 1, lo=-6.0, hi=1.0)
    nm.eval()
    with torch.no_grad():
        assert torch.equal(nm.base(x), dense)  # the hooks are idle outside the wrapper
        # An all-ones multiplier reproduces the plain network.
        keep = np.random.default_rng(0).random(nm.n_structures) > 0.4
        nm.set_keep(keep)
        y = nm(x)
        pruned = nm.pruned_model()
        assert torch.allclose(pruned(x), y, atol=1e-4, rtol=1e-4)
        assert sum(p.numel() for p in pruned.parameters()) == nm.structures.predict(keep)["params"]
        assert sum(p.numel() for p in pruned.parameters()) < sum(
            p.numel() for p in model.parameters())


def test_training_mode_samples_theta_per_example_within_bounds():
    nm = attach_noise(MLP(8, [6], 3), (8,))
    randomize(nm, 0, lo=-5.0, hi=0.0)
    nm.train()
    torch.manual_seed(0)
    with torch.no_grad():
        th = nm.sample_theta(20_000)[:, :-1].double()
        mean = nm.mean_theta()[0, :-1].double()
    assert th.shape == (20_000, 6)
    assert (th > 0).all() and (th <= 1).all()
    se = th.std(0) / 20_000 ** 0.5
    assert ((th.mean(0) - mean).abs() < 5 * se).all()  # E[theta] closed form vs samples
    nm.set_keep(np.array([True, False, True, True, True, True]))
    assert (nm.sample_theta(10)[:, 1] == 0).all()


def test_model_kl_is_sum_of_closed_forms_over_kept_structures():
    nm = attach_noise(MLP(10, [7, 5], 3), (10,))
    randomize(nm, 3)
    mu, sigma = nm.posterior()
    kl = truncnorm_kl_to_uniform(torch.tensor(mu), torch.tensor(sigma)).numpy()
    assert float(nm.kl().detach()) == pytest.approx(kl.sum(), rel=1e-9)
    keep = np.arange(12) % 3 != 0
    nm.set_keep(keep)
    assert float(nm.kl().detach()) == pytest.approx(kl[keep].sum(), rel=1e-9)
    per_layer = sum(float(lay.kl().detach()) for lay in nm.layers())
    assert per_layer == pytest.approx(kl[keep].sum(), rel=1e-9)


def test_evidence_change_uses_group_order():
    nm = attach_noise(MLP(10, [7, 5], 3), (10,))
    randomize(nm, 4)
    mu, sigma = nm.posterior()
    np.testing.assert_allclose(evidence_change(nm, "N"), delta_f_normal(mu, sigma))
    assert nm.structures.ids[0].startswith("0:") and nm.structures.ids[-1].startswith("2:")


@pytest.mark.parametrize("method", ["N", "U8", "U4"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_unconstrained_allocation_equals_the_rule(method, seed, name):
    make, shape = MODELS[name]
    nm = attach_noise(make(), shape)
    randomize(nm, seed)
    rule = bmrs_rule(nm, method)
    assert 0 < rule.sum() < rule.size  # the random posteriors give both decisions
    sel = bmrs_allocate(nm, method, force_solver=True, apply=False)
    np.testing.assert_array_equal(sel.keep, rule)
    df = evidence_change(nm, method)
    # The optimum is -sum(dF over kept) = sum(dF over pruned) - sum(dF).
    assert sel.allocation.solve.objective == pytest.approx(-df[rule].sum(), rel=1e-7)
    assert sel.evidence_pruned == pytest.approx(df[df >= 0].sum())


def _brute(nm, df, budget_params):
    best, arg = -math.inf, None
    n = nm.n_structures
    dense = nm.structures.dense_params
    for bits in itertools.product([False, True], repeat=n):
        keep = np.array(bits)
        if nm.structures.predict(keep)["params"] > budget_params * dense + 1e-9:
            continue
        v = df[~keep].sum()
        if v > best:
            best, arg = v, keep
    return best, arg


@pytest.mark.parametrize("seed", range(4))
def test_budgeted_allocation_equals_brute_force(seed):
    nm = attach_noise(MLP(5, [4, 3], 2), (5,))
    randomize(nm, seed, lo=-22.0, hi=0.0)
    df = evidence_change(nm, "U8")
    best, _ = _brute(nm, df, 0.55)
    sel = bmrs_allocate(nm, "U8", budget=0.55, apply=False)
    assert sel.evidence_pruned == pytest.approx(best, rel=1e-7, abs=1e-9)
    assert sel.predicted["params"] <= 0.55 * nm.structures.dense_params + 1e-9


def test_budget_multiples_and_latency_cap_hold_and_cost_evidence():
    nm = attach_noise(MLP(64, [32, 32, 32], 10), (64,))
    randomize(nm, 5)
    free = bmrs_allocate(nm, "N", apply=False, force_solver=True)
    sel = bmrs_allocate(nm, "N", apply=False, budget=0.3, multiples={"neuron": 8})
    counts = [int(sel.keep[idx].sum()) for idx in nm.structures.layer_kind_index().values()]
    assert all(c % 8 == 0 for c in counts)
    assert sel.predicted["params"] <= 0.3 * nm.structures.dense_params + 1e-6
    assert sel.evidence_pruned <= free.evidence_pruned + 1e-9  # constraints never gain evidence
    tables = {key: np.ceil(np.arange(33) / 8) * 10.0 for key in nm.structures.layer_kind_index()}
    lat = bmrs_allocate(nm, "N", apply=False, latency_tables=tables, latency_cap=0.5,
                        latency_relative=True)
    used = sum(tables[k][int(lat.keep[idx].sum())]
               for k, idx in nm.structures.layer_kind_index().items())
    assert used <= 0.5 * sum(t[-1] for t in tables.values()) + 1e-9
    assert lat.evidence_pruned <= free.evidence_pruned + 1e-9


def test_apply_sets_mask_and_pruned_structures_stay_pruned():
    nm = attach_noise(MLP(16, [12, 12], 4), (16,))
    randomize(nm, 6)
    sel = bmrs_allocate(nm, "N")
    np.testing.assert_array_equal(nm.keep_mask(), sel.keep)
    before = nm.posterior()
    with torch.no_grad():  # optimizer drift on a pruned structure is undone
        for lay in nm.layers():
            lay.mu.add_(3.0)
    nm.freeze_pruned()
    after = nm.posterior()
    np.testing.assert_allclose(after[0][~sel.keep], before[0][~sel.keep])
    # Further selections cannot revive them.
    again = bmrs_allocate(nm, "N", budget=0.9, apply=False)
    assert not (again.keep & ~sel.keep).any()


def test_posterior_scores_order_like_theta():
    nm = attach_noise(MLP(6, [5], 2), (6,))
    with torch.no_grad():
        nm.layers()[0].mu.copy_(torch.tensor([-15.0, -8.0, -3.0, -1.0, 0.0]))
        nm.layers()[0].log_sigma.fill_(-1.0)
    s = posterior_scores(nm)
    assert np.all(np.diff(s["e_theta"]) > 0)
    assert np.all(s["snr"] > 0)


def test_budget_below_reach_is_a_clear_error():
    nm = attach_noise(MLP(64, [8], 10), (64,))
    randomize(nm, 0)
    # Without noise on the output layer, its 10 biases stay: 0.001 of the dense is unreachable.
    with pytest.raises(InfeasibleProblemError, match="below what BMRS_N can reach"):
        bmrs_problem(nm, "N", budget=0.001)
    with pytest.raises(InfeasibleProblemError):
        bmrs_allocate(nm, "N", budget=0.02, min_keep=4)


def test_plain_models_and_models_without_prunable_layers_are_rejected():
    with pytest.raises(ValidationError, match="noise layers"):
        evidence_change(MLP(4, [3], 2), "N")
    with pytest.raises(ValidationError, match="noise layers"):
        bmrs_allocate(nn.Linear(3, 2), "N")
    with pytest.raises(UnsupportedModuleError, match="no prunable structure"):
        attach_noise(nn.Sequential(nn.Linear(4, 2)), (4,))
    nm = attach_noise(MLP(4, [3], 2), (4,))
    with pytest.raises(ValidationError, match="already carries noise"):
        attach_noise(nm, (4,))
    with pytest.raises(ValidationError, match="method"):
        evidence_change(nm, "X")
    with pytest.raises(ValidationError, match="latency_tables"):
        bmrs_problem(nm, "N", latency_cap=1.0)


def test_cli_runs_end_to_end(tmp_path, capsys):
    import json

    from optprune.cli import main

    out = tmp_path / "r.json"
    assert main(["bmrs", "--epochs", "2", "--method", "U4", "--budget", "0.5",
                 "--multiple", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["params_pruned_model"] <= 0.5 * r["params_dense"]
    assert r["selection"]["allocation"]["termination"] == "optimal"
    assert "BMRS_U4 on mlp" in capsys.readouterr().out


def test_deep_copies_carry_their_own_noise_and_folded_models_none():
    import copy

    torch.manual_seed(0)
    nm = attach_noise(lenet(), (1, 8, 8))
    randomize(nm, 2, lo=-6.0, hi=1.0)
    nm.eval()
    x = torch.randn(8, 1, 8, 8)
    twin = copy.deepcopy(nm)
    with torch.no_grad():
        assert torch.equal(twin(x), nm(x))
        keep = np.ones(nm.n_structures, dtype=bool)
        keep[:3] = False
        twin.set_keep(keep)  # the copy's mask acts on the copy only
        assert not torch.allclose(twin(x), nm(x))
        assert nm.keep_mask().all()
        folded = nm.fold()
        assert not any("_bmrs_owner" in m.__dict__ for m in folded.modules())
        assert all(len(m._forward_pre_hooks) == 0 for m in folded.modules())
        assert torch.allclose(folded(x), nm(x), atol=1e-5)


def test_layers_left_without_noise_are_never_pruned_and_bound_the_budget():
    nm = attach_noise(MLP(64, [32, 32], 10), (64,), exclude=["0"])
    assert {g.layer for g in nm.structures.groups} == {"2"}
    randomize(nm, 0)
    sel = bmrs_allocate(nm, "U8", budget=0.9, apply=False)
    assert sel.predicted["params"] <= 0.9 * nm.structures.dense_params
    # Layer 0 (64 x 32 weights + biases) has no noise, so ~0.5 of the parameters stay.
    with pytest.raises(InfeasibleProblemError, match="attach noise to more layers"):
        bmrs_allocate(nm, "U8", budget=0.2)
