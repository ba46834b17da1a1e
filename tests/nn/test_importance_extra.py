"""Bonsai, SNIP, GraSP, SynFlow and GOHSP against independent computations:
hand-written numpy backprop, finite-difference Hessian-vector products, exact
linear utilities with known coefficients, scikit-learn's ridge, eigenvectors."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F
from torch import nn

from optprune.errors import ValidationError
from optprune.nn import discover
from optprune.nn.importance import IMPORTANCE, score
from optprune.nn.importance_extra import (bonsai, bonsai_masks, gohsp, grasp, head_graphs, ridge,
                                          snip, stationary_distribution, synflow)
from optprune.nn.models import MLP, ViT

torch.set_num_threads(1)


def _discover(m, shape):
    # discover's default example input is float32; these models run in float64
    dt = next(m.parameters()).dtype
    return discover(m, shape, example_input=torch.randn(2, *shape, dtype=dt))


def _np(t):
    return t.detach().double().numpy()


def _mlp(seed, in_f, hidden, out_f, act=nn.ReLU):
    torch.manual_seed(seed)
    m = MLP(in_f, hidden, out_f, activation=act).double()
    with torch.no_grad():  # non-zero biases so they enter every formula
        for p in m.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    return m


# ------------------------------------------------------------------ registry
def test_registry_loads_extras_by_name():
    m = _mlp(0, 3, [2], 2)
    ss = _discover(m, (3,))
    s = score(ss, "synflow")
    assert s.shape == (2,)
    for name in ("bonsai", "snip", "grasp", "synflow", "gohsp"):
        assert name in IMPORTANCE


# ------------------------------------------------------------------ Bonsai
def test_bonsai_masks_are_antithetic_pairs_with_marginal_p():
    keep = bonsai_masks(50, 400, 0.3, seed=1)
    assert keep.shape == (400, 50) and keep.dtype == bool
    drop = ~keep
    assert not np.any(drop[0::2] & drop[1::2])  # a pair drops disjoint sets
    assert abs(drop.mean() - 0.3) < 0.01  # 20000 Bernoulli(0.3) draws
    union = drop[0::2] | drop[1::2]
    assert abs(union.mean() - 0.6) < 0.015
    assert bonsai_masks(7, 5, 0.5).shape == (5, 7)
    np.testing.assert_array_equal(bonsai_masks(9, 10, 0.2, seed=3), bonsai_masks(9, 10, 0.2, seed=3))


@pytest.mark.parametrize("m,n", [(12, 30), (60, 8)])
def test_ridge_equals_sklearn(m, n):
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(m)
    z = (rng.random((m, n)) < 0.7).astype(float)
    u = rng.normal(size=m)
    beta, b = ridge(z, u, 0.3)
    ref = Ridge(alpha=0.3, fit_intercept=True).fit(z, u)
    np.testing.assert_allclose(beta, ref.coef_, atol=1e-10)
    assert b == pytest.approx(ref.intercept_, abs=1e-10)


def test_bonsai_recovers_exact_linear_effects():
    """Identity activations and utility = mean output: U(z) = b2 + sum_i z_i w2_i
    mean(h_i) exactly, so the regression recovers every w2_i mean(h_i)."""
    m = _mlp(2, 4, [6], 1, act=nn.Identity)
    ss = _discover(m, (4,))
    assert ss.ids == [f"0:neuron:{i}" for i in range(6)]
    x = torch.randn(40, 4, dtype=torch.float64)
    h = _np(x) @ _np(m[0].weight).T + _np(m[0].bias)
    true = _np(m[2].weight)[0] * h.mean(0)
    beta, masks, util = bonsai(ss, x, n_submodels=48, drop_fraction=0.3, alpha=1e-12, seed=5,
                               loss_fn=lambda out, ref: -out.sum(), return_samples=True)
    np.testing.assert_allclose(beta, true, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(np.argsort(beta), np.argsort(true))
    # each utility is the masked model's mean output, computed here without hooks
    pred = _np(m[2].bias)[0] + (masks * _np(m[2].weight)[0] * h.mean(0)).sum(1)
    np.testing.assert_allclose(util, pred, rtol=1e-10)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(seed=st.integers(0, 10_000), hidden=st.integers(1, 6), frac=st.floats(0.05, 0.5),
       extra=st.integers(2, 12))
def test_bonsai_exact_on_random_linear_models(seed, hidden, frac, extra):
    """Whenever the sampled design identifies the effects (centred masks of full
    column rank), the nearly unregularised fit equals them."""
    m = _mlp(seed, 3, [hidden], 1, act=nn.Identity)
    ss = _discover(m, (3,))
    x = torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    h = _np(x) @ _np(m[0].weight).T + _np(m[0].bias)
    true = _np(m[2].weight)[0] * h.mean(0)
    beta, masks, _ = bonsai(ss, x, n_submodels=2 * hidden + extra, drop_fraction=frac,
                            alpha=1e-12, seed=seed, loss_fn=lambda out, ref: -out.sum(),
                            return_samples=True)
    z = masks - masks.mean(0)
    assume(np.linalg.matrix_rank(z) == hidden)
    np.testing.assert_allclose(beta, true, rtol=1e-6, atol=1e-8 * np.abs(true).max())


def test_bonsai_default_distortion_planted_order():
    """Without labels the utility is minus the squared distortion from the dense
    output. With W1 = I and the 16 sign vectors as inputs (orthogonal columns),
    dropping set D costs sum_{i in D} w2_i^2 exactly, so beta_i = w2_i^2."""
    m = MLP(4, [4], 1, activation=nn.Identity).double()
    w2 = np.array([3.0, 0.5, 2.0, 1.0])
    with torch.no_grad():
        m[0].weight.copy_(torch.eye(4))
        m[0].bias.zero_()
        m[2].weight.copy_(torch.from_numpy(w2)[None])
        m[2].bias.fill_(0.7)
    ss = _discover(m, (4,))
    x = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)), dtype=torch.float64)
    beta = bonsai(ss, x, n_submodels=40, drop_fraction=0.25, alpha=1e-12, seed=0)
    np.testing.assert_allclose(beta, w2 ** 2, rtol=1e-8)
    assert list(np.argsort(-beta)) == [0, 2, 3, 1]
    assert list(np.argsort(-score(ss, "bonsai", x, n_submodels=40, alpha=1e-12))) == [0, 2, 3, 1]


def test_bonsai_labelled_loss_and_dead_neuron():
    """With labels the default utility is minus the mean cross-entropy of the
    masked model; the score is the ridge fit of those utilities."""
    m = _mlp(3, 5, [6], 3)
    ss = _discover(m, (5,))
    x = torch.randn(30, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    beta, masks, util = bonsai(ss, (x, y), n_submodels=16, seed=1, return_samples=True)
    np.testing.assert_allclose(beta, ridge(masks.astype(float), util, 1e-2)[0])
    never = masks.all(0)
    assert never.any() and np.all(beta[never] == 0)  # never dropped: no evidence, score 0
    with torch.no_grad(), ss.masked(masks[3]) as mm:
        assert util[3] == pytest.approx(-F.cross_entropy(mm(x), y).item(), rel=1e-12)


# ------------------------------------------------------------------ SNIP
def test_snip_equals_hand_backprop():
    m = _mlp(4, 5, [4], 3)
    ss = _discover(m, (5,))
    torch.manual_seed(1)
    x = torch.randn(17, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (17,))
    w1, b1, w2, b2 = (_np(t) for t in (m[0].weight, m[0].bias, m[2].weight, m[2].bias))
    X, n = _np(x), x.shape[0]
    z = X @ w1.T + b1
    h = np.maximum(z, 0)
    o = h @ w2.T + b2
    p = np.exp(o - o.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    do = (p - np.eye(3)[y.numpy()]) / n  # d mean CE / d logits
    dw2 = do.T @ h  # (the output bias b2 belongs to no group)
    dz = (do @ w2) * (z > 0)
    dw1, db1 = dz.T @ X, dz.sum(0)
    hand = (np.abs(dw1 * w1).sum(1) + np.abs(db1 * b1) + np.abs(dw2 * w2).sum(0))
    np.testing.assert_allclose(snip(ss, (x, y)), hand, rtol=1e-10)
    np.testing.assert_allclose(snip(ss, (x, y), batch_size=5), hand, rtol=1e-10)


# ------------------------------------------------------------------ GraSP
def _mean_loss_grad(m, x, y):
    params = list(m.parameters())
    return torch.autograd.grad(F.cross_entropy(m(x), y), params)


def test_grasp_equals_finite_difference_hessian_gradient_product():
    m = _mlp(5, 4, [5, 3], 3, act=nn.Tanh)
    ss = _discover(m, (4,))
    torch.manual_seed(2)
    x = torch.randn(23, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (23,))
    names = [n for n, _ in m.named_parameters()]
    params = list(m.parameters())
    g = [t.detach().clone() for t in _mean_loss_grad(m, x, y)]
    eps = 1e-5
    with torch.no_grad():
        for p, d in zip(params, g):
            p += eps * d
    plus = [t.detach().clone() for t in _mean_loss_grad(m, x, y)]
    with torch.no_grad():
        for p, d in zip(params, g):
            p -= 2 * eps * d
    minus = [t.detach().clone() for t in _mean_loss_grad(m, x, y)]
    with torch.no_grad():
        for p, d in zip(params, g):
            p += eps * d
    hg = {n: (a - b) / (2 * eps) for n, a, b in zip(names, plus, minus)}
    pd = dict(m.named_parameters())
    want = np.zeros(len(ss.groups))
    for k, grp in enumerate(ss.groups):
        for n, d, idx in grp.slices:
            sl = torch.as_tensor(idx)
            want[k] += float((pd[n].detach().index_select(d, sl) * hg[n].index_select(d, sl)).sum())
    got = grasp(ss, (x, y), batch_size=7)  # several batches accumulate
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert np.abs(want).max() > 1e-4  # not vacuous


def test_grasp_temperature_scales_logits():
    m = _mlp(6, 3, [4], 2, act=nn.Tanh)
    ss = _discover(m, (3,))
    x, y = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 2, (9,))
    a = grasp(ss, (x, y), temperature=4.0)
    b = grasp(ss, (x, y), loss_fn=lambda o, t: F.cross_entropy(o / 4.0, t, reduction="sum"))
    np.testing.assert_allclose(a, b, rtol=1e-10)


# ------------------------------------------------------------------ SynFlow
def _synflow_hand(m):
    a1, c1_, a2, c2_, a3, c3_ = (np.abs(_np(t)) for t in (m[0].weight, m[0].bias, m[2].weight,
                                                        m[2].bias, m[4].weight, m[4].bias))
    h1 = a1 @ np.ones(a1.shape[1]) + c1_
    h2 = a2 @ h1 + c2_
    g2 = a3.T @ np.ones(a3.shape[0])  # dR/dh2
    g1 = a2.T @ g2  # dR/dh1
    # |dR/dw * w| per weight: dR/dA1 = g1 1^T, dR/dA2 = g2 h1^T, dR/dA3 = 1 h2^T
    s_a1, s_b1 = a1 * g1[:, None], c1_ * g1
    s_a2, s_b2 = a2 * np.outer(g2, h1), c2_ * g2
    s_a3 = a3 * h2[None, :]
    layer1 = s_a1.sum(1) + s_b1 + s_a2.sum(0)
    layer2 = s_a2.sum(1) + s_b2 + s_a3.sum(0)
    return np.concatenate([layer1, layer2])


def test_synflow_equals_hand_path_products():
    torch.manual_seed(7)
    m = MLP(3, [4, 3], 2)  # float32, signed weights: synflow must not change it
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ss = _discover(m, (3,))
    got = synflow(ss)
    np.testing.assert_allclose(got, _synflow_hand(m), rtol=1e-6)
    for k, v in m.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k])
    # data is ignored (data-free)
    np.testing.assert_allclose(score(ss, "synflow", torch.randn(5, 3)), got)


def test_synflow_iterative_schedule():
    torch.manual_seed(8)
    m = MLP(6, [8, 8], 3)
    ss = _discover(m, (6,))
    n = len(ss.groups)
    one = synflow(ss)
    np.testing.assert_allclose(synflow(ss, iterations=1, keep_fraction=0.2), one)
    it = synflow(ss, iterations=3, keep_fraction=0.25)
    rounds = np.floor(it)
    for r in range(1, 4):  # survivors of round r: ceil(n * 0.25^(r/3))
        assert (rounds >= r).sum() == math.ceil(n * 0.25 ** (r / 3))
    first_out = set(np.flatnonzero(rounds == 0))
    assert first_out == set(np.argsort(one)[:n - math.ceil(n * 0.25 ** (1 / 3))])
    # the survivors' fractional parts rank them by synflow of the model with every
    # dropped group's parameters zeroed (computed here on a hand-zeroed copy)
    import copy
    m2 = copy.deepcopy(m)
    pd = dict(m2.named_parameters())
    with torch.no_grad():
        for k in np.flatnonzero(rounds < 2):
            for name, d, idx in ss.groups[k].slices:
                pd[name].index_fill_(d, torch.as_tensor(idx), 0.0)
    last = synflow(_discover(m2, (6,)))
    surv = np.flatnonzero(rounds == 3)
    top = last[rounds >= 2].max()
    np.testing.assert_allclose(it[surv] - 3, last[surv] / (1.000001 * top), rtol=1e-9)


# ------------------------------------------------------------------ GOHSP
def _vit_with_duplicate(seed=0):
    torch.manual_seed(seed)
    v = ViT(image_size=4, patch=2, dim=8, heads=(3,), head_dim=2, ffn=6, n_classes=3).double()
    at = v.blocks[0].attn
    with torch.no_grad():  # head 1 := head 0 (same q, k, v rows and proj columns)
        for lin in (at.q, at.k, at.v):
            lin.weight[2:4] = lin.weight[0:2]
            lin.bias[2:4] = lin.bias[0:2]
        at.proj.weight[:, 2:4] = at.proj.weight[:, 0:2]
    return v


def _contribs(v, x):
    """Per-head contributions through the module's own heads() method."""
    at = v.blocks[0].attn
    cap = {}
    hk = at.register_forward_pre_hook(lambda _m, a: cap.setdefault("x", a[0]))
    with torch.no_grad():
        v(x)
        o = at.heads(cap["x"])  # (B, H, T, dh)
    hk.remove()
    w = _np(at.proj.weight)
    return [(_np(o[:, h]) @ w[:, 2 * h:2 * h + 2].T).ravel() for h in range(3)]


def test_gohsp_chain_and_duplicate_head():
    v = _vit_with_duplicate()
    ss = _discover(v, (1, 4, 4))
    x = torch.randn(25, 1, 4, 4, dtype=torch.float64)
    (g,) = head_graphs(ss, x, temperature=0.2, damping=0.9, batch_size=10)
    # the chain built independently from the heads' contributions
    c = _contribs(v, x)
    cos = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in c] for a in c])
    w = np.exp(cos / 0.2)
    np.fill_diagonal(w, 0)
    np.testing.assert_allclose(g.transition, 0.9 * w / w.sum(1, keepdims=True) + 0.1 / 3,
                               rtol=1e-9)
    np.testing.assert_allclose(g.energy, [a @ a / (25 * 5) for a in c], rtol=1e-9)
    np.testing.assert_allclose(g.pi @ g.transition, g.pi, atol=1e-12)
    assert g.pi.sum() == pytest.approx(1.0) and np.all(g.pi > 0)
    assert g.pi[0] == pytest.approx(g.pi[1], rel=1e-9) and g.pi[0] > g.pi[2]
    assert np.all(g.pi >= 0.1 / 3 - 1e-12)  # teleport floor (1 - d) / H
    # undamped walk on a symmetric graph is reversible: pi proportional to degree
    (g1,) = head_graphs(ss, x, temperature=0.2, damping=1.0)
    np.testing.assert_allclose(g1.pi, w.sum(1) / w.sum(), rtol=1e-9)
    s = gohsp(ss, x, temperature=0.2, damping=0.9, base="uniform")
    heads = [ss.ids.index(f"blocks.0.attn:head:{h}") for h in range(3)]
    np.testing.assert_allclose(s[heads], 1 / (3 * g.pi), rtol=1e-9)
    assert s[heads[2]] > s[heads[0]] and s[heads[0]] == pytest.approx(s[heads[1]])
    se = gohsp(ss, x, temperature=0.2, damping=0.9)
    np.testing.assert_allclose(se[heads], g.energy / (3 * g.pi), rtol=1e-9)


def test_gohsp_kl_duplicate_and_ffn_energy():
    v = _vit_with_duplicate(1)
    ss = _discover(v, (1, 4, 4))
    x = torch.randn(12, 1, 4, 4, dtype=torch.float64)
    (g,) = head_graphs(ss, x, similarity="kl", temperature=0.5)
    np.testing.assert_allclose(g.pi @ g.transition, g.pi, atol=1e-12)
    np.testing.assert_allclose(g.weights[0, 1], 1.0)  # KL(A_0 || A_1) = 0
    assert g.weights[0, 2] < 1 and g.pi[0] > g.pi[2]
    assert g.pi[0] == pytest.approx(g.pi[1], rel=1e-9)
    # ffn channels: ||W_fc2[:, j]||^2 * mean x_j^2 with x the fc2 input
    mlp = v.blocks[0].mlp
    cap = []
    hk = mlp.fc2.register_forward_pre_hook(lambda _m, a: cap.append(_np(a[0]).reshape(-1, 6)))
    with torch.no_grad():
        v(x)
    hk.remove()
    want = (_np(mlp.fc2.weight) ** 2).sum(0) * (cap[0] ** 2).mean(0)
    s = gohsp(ss, x, similarity="kl", temperature=0.5)
    ffn = [ss.ids.index(f"blocks.0.mlp.fc1:ffn:{j}") for j in range(6)]
    np.testing.assert_allclose(s[ffn], want, rtol=1e-9)


def test_stationary_distribution_matches_eigenvector():
    rng = np.random.default_rng(0)
    p = rng.random((6, 6)) + 0.01
    p /= p.sum(1, keepdims=True)
    pi = stationary_distribution(p)
    vals, vecs = np.linalg.eig(p.T)
    e = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    np.testing.assert_allclose(pi, e / e.sum(), rtol=1e-9)
    with pytest.raises(ValidationError, match="row-stochastic"):
        stationary_distribution(p * 2)


# ------------------------------------------------------------------ errors
def test_errors_on_bad_input():
    m = _mlp(9, 4, [3], 2)
    ss = _discover(m, (4,))
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (6,))
    with pytest.raises(ValidationError, match="'data' of snip"):
        snip(ss, None)
    with pytest.raises(ValidationError, match="must include targets"):
        snip(ss, x)
    with pytest.raises(ValidationError, match="must include targets"):
        grasp(ss, x)
    with pytest.raises(ValidationError, match=r"shape of the calibration inputs of bonsai"):
        bonsai(ss, torch.randn(6, 5))
    with pytest.raises(ValidationError, match="'data' of bonsai"):
        bonsai(ss, None)
    for frac in (0.0, 0.7, -0.1, "half", True):
        with pytest.raises(ValidationError, match="drop_fraction"):
            bonsai(ss, (x, y), drop_fraction=frac)
    with pytest.raises(ValidationError, match="n_submodels"):
        bonsai(ss, (x, y), n_submodels=1)
    with pytest.raises(ValidationError, match="alpha"):
        bonsai(ss, (x, y), alpha=-1.0)
    with pytest.raises(ValidationError, match="iterations"):
        synflow(ss, iterations=0)
    with pytest.raises(ValidationError, match="keep_fraction"):
        synflow(ss, iterations=2, keep_fraction=1.5)
    with pytest.raises(ValidationError, match="temperature"):
        grasp(ss, (x, y), temperature=0.0)
    with pytest.raises(ValidationError, match="holds none|hold none"):
        gohsp(ss, x)
    v = _vit_with_duplicate()
    sv = _discover(v, (1, 4, 4))
    xv = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValidationError, match="similarity"):
        gohsp(sv, xv, similarity="euclid")
    with pytest.raises(ValidationError, match="heads only"):
        gohsp(sv, xv, heads_only=True)
    for d in (0.0, 1.5, True):
        with pytest.raises(ValidationError, match="damping"):
            gohsp(sv, xv, damping=d)
    with pytest.raises(ValidationError, match="temperature"):
        head_graphs(sv, xv, temperature=-1.0)
    with pytest.raises(ValidationError, match="'base'"):
        gohsp(sv, xv, base="other")
    with pytest.raises(ValidationError, match="'data' of gohsp"):
        gohsp(sv, None)


@pytest.mark.parametrize("name,kw", [("bonsai", {"n_submodels": 6}), ("snip", {}), ("grasp", {}),
                                     ("synflow", {}), ("synflow", {"iterations": 2}),
                                     ("gohsp", {}), ("gohsp", {"similarity": "kl"})])
def test_every_score_on_float32_vit_and_cnn(name, kw):
    """Through the registry on the project's float32 models: one finite score per
    group, the model's weights and mode untouched."""
    from optprune.nn.models import SmallCNN

    torch.manual_seed(0)
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    models = [ViT(heads=(2, 3), dim=16, head_dim=4, ffn=8)]
    if name != "gohsp":
        models.append(SmallCNN(1, 4, n_blocks=1))
    for m in models:
        m.train()
        before = {k: v.clone() for k, v in m.state_dict().items()}
        ss = discover(m, (1, 8, 8))
        s = score(ss, name, (x, y), **kw)
        assert s.shape == (len(ss.groups),) and np.all(np.isfinite(s))
        assert m.training
        for k, v in m.state_dict().items():
            assert torch.equal(v, before[k]), k
