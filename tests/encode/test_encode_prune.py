"""The encoder's neuron pruning: layerwise and exact selection, physical surgery."""

import numpy as np
import pytest
import torch

from optprune.encode.prune import neuron_scores, prune_neurons
from optprune.errors import OptpruneError


def _params(m):
    return sum(p.numel() for p in m.parameters())


def _widths(m):
    return [L.out_features for L in m if isinstance(L, torch.nn.Linear)][:-1]


def test_layerwise_keeps_fraction_and_function_of_kept_neurons(digits_mlp):
    net, X, _ = digits_mlp
    small = prune_neurons(net, 0.5)
    assert _widths(small) == [15, 15]
    # a neuron kept in both layers computes exactly what it computed before
    x = torch.tensor(X[:20], dtype=torch.float32)
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    scores = neuron_scores(net)
    keep0 = np.sort(np.argsort(-scores[0], kind="stable")[:15])
    h_dense = torch.relu(lin[0](x))[:, keep0]
    h_small = torch.relu(small[0](x))
    torch.testing.assert_close(h_small, h_dense)


def test_exact_selection_is_optimal_at_the_layerwise_size(digits_mlp):
    net, X, y = digits_mlp
    layerwise = prune_neurons(net, 0.4)
    exact, info = prune_neurons(net, 0.4, "exact", return_info=True)
    assert info["status"] == "optimal" and info["gap"] <= 1e-9
    assert _params(exact) <= _params(layerwise) == info["budget_params"]
    # its objective (sum of kept neuron scores) is at least the layerwise choice's
    scores = neuron_scores(net)
    lw = sum(np.sort(s)[::-1][:w].sum() for s, w in zip(scores, _widths(layerwise)))
    assert info["objective"] >= lw - 1e-9
    # and equals the total score of the neurons it kept, found back from the weights
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    small = [m for m in exact if isinstance(m, torch.nn.Linear)]
    cols = torch.arange(lin[0].in_features)
    total = 0.0
    for k in range(len(scores)):
        dense_w = lin[k].weight.detach()[:, cols]
        idx = [int(torch.nonzero((dense_w == r).all(1))[0]) for r in small[k].weight.detach()]
        assert len(set(idx)) == len(idx) == small[k].out_features
        total += scores[k][idx].sum()
        cols = torch.tensor(idx)
    assert total == pytest.approx(info["objective"], rel=1e-9)


def test_exact_with_explicit_budget_and_taylor(digits_mlp):
    net, X, y = digits_mlp
    small, info = prune_neurons(net, 0.5, "exact", budget_params=900, importance="taylor",
                                data=(X, y), return_info=True)
    assert _params(small) <= 900 and info["status"] == "optimal"
    assert all(w >= 1 for w in _widths(small))


@pytest.mark.parametrize("kw, match", [
    ({"keep_fraction": 0.0}, "keep_fraction"),
    ({"keep_fraction": 0.5, "selection": "greedy"}, "selection"),
    ({"keep_fraction": 0.5, "selection": "exact", "importance": "taylor"}, "data"),
    ({"keep_fraction": 0.5, "selection": "exact", "importance": "bogus"}, "importance"),
    ({"keep_fraction": 0.5, "selection": "exact", "budget_params": 50}, "budget"),
])
def test_bad_input(digits_mlp, kw, match):
    net, _, _ = digits_mlp
    with pytest.raises(OptpruneError, match=match):
        prune_neurons(net, **kw)


def test_not_an_mlp():
    with pytest.raises(OptpruneError, match="nn.Sequential"):
        prune_neurons(torch.nn.Linear(3, 2), 0.5)


def test_exact_min_keep_bounds_every_layer(digits_mlp):
    net, _, _ = digits_mlp
    held, info = prune_neurons(net, 0.3, "exact", min_keep=0.25, return_info=True)
    assert min(_widths(held)) >= 8  # ceil(0.25 * 30)
    assert _params(held) <= _params(prune_neurons(net, 0.3))
    assert info["status"] == "optimal"
