"""The encoder against relations that cannot be faked: the MIP with a pinned input
equals the forward pass; bounds hold on random points of the region; a witness
flips the dense network's class; MPS round trips; HiGHS and SCIP agree; on a
2-input network the MIP optimum is attained by its witness and beats a dense grid."""

import numpy as np
import pytest
import torch

from optprune.encode import (
    AttackSpec, Layer, Network, Region, attack, compute_bounds, encode, from_torch,
    solve_encoding,
)
from optprune.encode.bounds import METHODS
from optprune.errors import UnsupportedModuleError, ValidationError
from optprune.solve import LinearModel, SolveOptions, solve


def _margin(y, label, target):
    return y[target] - y[label] if target is not None else np.max(np.delete(y, label)) - y[label]


# ------------------------------------------------------------------ fixed input
@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_pinned_input_outputs_equal_forward_pass(digits_mlp, norm):
    net_t, X, y = digits_mlp
    net = from_torch(net_t)
    for i in (0, 7, 33):
        wide = Region.make(net, X[i], norm, 0.2 if norm == "linf" else 3.0)
        b = compute_bounds(net, wide, "interval")
        assert b.unstable_count(net) > 0  # the pinned MIP still has binaries
        pinned = Region.make(net, X[i], norm, 0.2 if norm == "linf" else 3.0,
                             domain=(X[i], X[i]))
        target = (int(y[i]) + 1) % 10
        enc = encode(net, pinned, AttackSpec(int(y[i]), target), b)
        assert enc.model.num_integer > 0
        res = solve(enc.model, "highs", SolveOptions(
            time_limit_s=30, extra={"mip_feasibility_tolerance": 1e-9,
                                    "primal_feasibility_tolerance": 1e-9}))
        assert res.is_optimal
        logits = enc.logits_of(res.x)
        expect = net.forward(X[i])
        assert np.max(np.abs(logits - expect)) < 1e-6
        torch_logits = net_t.double()(torch.tensor(X[i]).reshape(1, -1))[0].detach().numpy()
        net_t.float()
        assert np.max(np.abs(logits - torch_logits)) < 1e-6
        assert abs(res.objective - (expect[target] - expect[int(y[i])])) < 1e-6


# ------------------------------------------------------------- bound soundness
@pytest.mark.parametrize("norm,radius", [("linf", 0.08), ("l1", 1.5)])
def test_bounds_hold_on_random_points(digits_mlp, norm, radius):
    net_t, X, y = digits_mlp
    net = from_torch(net_t)
    rng = np.random.default_rng(0)
    region = Region.make(net, X[5], norm, radius)
    pts = region.sample(400, rng)
    assert all(region.contains(p) for p in pts)
    _, zs = net.forward(pts, return_all=True)
    by_method = {}
    for m in METHODS:
        b = compute_bounds(net, region, m, mip_time_limit_s=0.2, total_time_limit_s=4.0)
        by_method[m] = b
        for k, z in enumerate(zs):
            assert np.all(z >= b.lower[k][None, :] - 1e-9), (m, k)
            assert np.all(z <= b.upper[k][None, :] + 1e-9), (m, k)
    # tighter methods never loosen (progressive ran under a total time limit here, so it
    # is compared with interval only; progressive within lp is checked on small nets below)
    for loose, tight in (("interval", "symbolic"), ("symbolic", "lp"), ("interval", "progressive")):
        for k in range(len(net.layers)):
            assert np.all(by_method[tight].lower[k] >= by_method[loose].lower[k] - 1e-9)
            assert np.all(by_method[tight].upper[k] <= by_method[loose].upper[k] + 1e-9)
    un = [by_method[m].unstable_count(net) for m in ("naive", "interval", "symbolic", "lp")]
    assert un[0] >= un[1] >= un[2] >= un[3]
    assert un[2] < un[1]  # back-substitution really tightens here


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_symbolic_concretization_is_exact(norm):
    """The max of a linear function over the region (box, or L1 ball within the domain)
    equals the LP optimum."""
    from scipy.optimize import linprog

    from optprune.encode.bounds import _max_linear
    from optprune.encode.network import Layer, Network

    rng = np.random.default_rng(11)
    n = 12
    net = Network([Layer(rng.normal(size=(3, n)), np.zeros(3), False)], (n,))
    x0 = rng.random(n)
    x0[:3] = [0.0, 1.0, 0.98]  # on and near the domain's faces
    region = Region.make(net, x0, norm, 0.7)
    A = rng.normal(size=(5, n))
    got = _max_linear(A, region)
    lo, hi = region.box()
    for a, v in zip(A, got):
        if norm == "linf":
            r = linprog(-a, bounds=list(zip(lo, hi)), method="highs")
        else:  # x = x0 + p - q, p, q >= 0, sum(p + q) <= r
            c = np.r_[-a, a]
            r = linprog(c, A_ub=np.ones((1, 2 * n)), b_ub=[0.7],
                        bounds=[(0, hi[i] - x0[i]) for i in range(n)]
                        + [(0, x0[i] - lo[i]) for i in range(n)], method="highs")
            r.fun -= a @ x0
        assert v == pytest.approx(-r.fun, abs=1e-9)


def test_lp_bounds_time_limit_is_per_bound(digits_mlp):
    """HiGHS's time_limit counts all run() calls of an instance; the limit must be
    re-armed per bound, or every bound after the first lp_time_limit_s seconds is left
    untightened. With a per-bound limit far above one LP's time, the bounds must not
    depend on it."""
    net_t, X, _ = digits_mlp
    net = from_torch(net_t)
    region = Region.make(net, X[3], "l1", 2.0)
    ref = compute_bounds(net, region, "lp", lp_time_limit_s=60.0)
    assert ref.lp_solves > 20
    short = compute_bounds(net, region, "lp", lp_time_limit_s=ref.time_s / 8)
    for k in range(len(net.layers)):
        np.testing.assert_allclose(short.lower[k], ref.lower[k], atol=1e-7)
        np.testing.assert_allclose(short.upper[k], ref.upper[k], atol=1e-7)


def test_bounds_sound_on_random_sparse_networks(random_network):
    rng = np.random.default_rng(3)
    for trial in range(4):
        net = random_network(rng, [6, 10, 8, 4], sparsity=0.3 * (trial % 2))
        x0 = rng.random(6)
        for norm, r in (("linf", 0.3), ("l1", 0.8)):
            region = Region.make(net, x0, norm, r)
            pts = region.sample(500, rng)
            _, zs = net.forward(pts, return_all=True)
            b = compute_bounds(net, region, "progressive", mip_time_limit_s=0.5)
            lp = compute_bounds(net, region, "lp")
            for k, z in enumerate(zs):
                assert np.all(z >= b.lower[k] - 1e-9) and np.all(z <= b.upper[k] + 1e-9)
                assert np.all(b.lower[k] >= lp.lower[k] - 1e-9)
                assert np.all(b.upper[k] <= lp.upper[k] + 1e-9)
            assert b.unstable_count(net) <= lp.unstable_count(net)


# ------------------------------------------------------- exactness, brute force
def test_margin_optimum_is_attained_and_beats_grid(random_network):
    """On 2 inputs the optimum must equal the margin at its witness and be >= every
    point of a 201 x 201 grid of the region."""
    rng = np.random.default_rng(7)
    for _ in range(4):
        net = random_network(rng, [2, 8, 8, 3])
        x0 = np.array([0.5, 0.5])
        label = int(np.argmax(net.forward(x0)))
        target = (label + 1) % 3
        for norm in ("linf", "l1"):
            r = attack(net, x0, label, radius=0.4, norm=norm, target=target, bounds="lp",
                       time_limit_s=30)
            assert r.termination == "optimal"
            g = np.linspace(0.1, 0.9, 201)
            G = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
            if norm == "l1":
                G = G[np.abs(G - x0).sum(1) <= 0.4 + 1e-12]
            Y = net.forward(G)
            grid_best = np.max(Y[:, target] - Y[:, label])
            assert r.objective >= grid_best - 1e-6
            assert abs(r.mip_margin - r.objective) < 1e-6
            assert r.objective - grid_best < 0.05  # and the grid comes close to it


# --------------------------------------------------------------- witness checks
def test_witness_flips_dense_class(digits_mlp):
    net_t, X, y = digits_mlp
    found = 0
    for i in (0, 1, 2, 3):
        r = attack(net_t, X[i], int(y[i]), radius=2.5, norm="l1", objective="decision",
                   time_limit_s=60)
        if r.outcome != "adversarial":
            continue
        found += 1
        assert r.verified
        dense = net_t.double()
        logits = dense(torch.tensor(r.witness).reshape(1, -1))[0].detach().numpy()
        net_t.float()
        assert int(np.argmax(logits)) != int(y[i])
        assert np.abs(r.witness - X[i]).sum() <= 2.5 + 1e-6
        assert np.all(r.witness >= -1e-9) and np.all(r.witness <= 1 + 1e-9)
        break
    assert found >= 1


def test_margin_and_min_distortion_agree(tiny_mlp):
    """Minimal L-inf distortion eps*: the margin at radius eps* (+) must be >= 0 and at
    radius 0.97 eps* it must be < threshold (no adversarial example that close)."""
    net_t, X, y = tiny_mlp
    net = from_torch(net_t)
    i = 3
    r = attack(net, X[i], int(y[i]), radius=0.3, norm="linf", objective="min_distortion",
               time_limit_s=60)
    assert r.outcome == "adversarial" and r.termination == "optimal"
    eps = r.objective
    assert abs(r.distance - eps) < 1e-6
    inside = attack(net, X[i], int(y[i]), radius=eps * 0.97, norm="linf", time_limit_s=60)
    assert inside.bound is not None and inside.bound < 1e-4
    at = attack(net, X[i], int(y[i]), radius=eps * 1.001, norm="linf", time_limit_s=60)
    assert at.objective >= 1e-4 - 1e-6


def test_stable_neurons_get_no_binary(digits_mlp):
    net_t, X, y = digits_mlp
    net = from_torch(net_t)
    region = Region.make(net, X[0], "linf", 0.05)
    for m in ("interval", "lp"):
        b = compute_bounds(net, region, m)
        enc = encode(net, region, AttackSpec(int(y[0]), 4), b)
        assert enc.model.num_integer == b.unstable_count(net)
        st = enc.stats()
        assert st["relu_binaries"] == st["unstable"]
    naive = encode(net, region, AttackSpec(int(y[0]), 4), compute_bounds(net, region, "naive"))
    assert naive.model.num_integer == net.num_relu  # one binary per ReLU, like OMLT


def test_zero_weights_and_pruned_neurons_never_enter(digits_mlp):
    net_t, X, y = digits_mlp
    net = from_torch(net_t)
    Ws = [L.W.copy() for L in net.layers]
    Ws[0][:10] = 0.0           # 10 neurons with no input: constants, folded away
    Ws[2][:, 20:] = 0.0        # 10 neurons of layer 2 feed nothing
    Ws[1][np.abs(Ws[1]) < 0.05] = 0.0
    sparse = Network(tuple(Layer(W, L.b, L.relu) for W, L in zip(Ws, net.layers)))
    small = sparse.compress()
    assert small.hidden_sizes[0] <= 20 and small.hidden_sizes[1] <= 20
    pts = Region.make(sparse, X[0], "linf", 0.3).sample(200, np.random.default_rng(1))
    assert np.max(np.abs(small.forward(pts) - sparse.forward(pts))) < 1e-9
    region = Region.make(sparse, X[0], "linf", 0.05)
    enc = encode(sparse, region, AttackSpec(int(y[0]), 2), compute_bounds(sparse, region, "interval"))
    # every nonzero of the affine rows is a nonzero weight (or the z coefficient 1)
    aff = [i for i, n in enumerate(enc.model.row_names) if "_aff" in n]
    assert enc.model.A[aff].nnz <= sparse.nnz + len(aff)


# ----------------------------------------------------------- files and solvers
def test_mps_round_trip_same_optimum(tmp_path, tiny_mlp):
    net_t, X, y = tiny_mlp
    net = from_torch(net_t)
    for norm, r, obj in (("linf", 0.1, "margin"), ("l1", 1.5, "margin"),
                         ("l1", 2.0, "min_distortion")):
        region = Region.make(net, X[2], norm, r)
        enc = encode(net, region, AttackSpec(int(y[2]), None, obj),
                     compute_bounds(net, region, "lp"))
        path = enc.model.write(tmp_path / f"a_{norm}_{obj}.mps")
        back = LinearModel.read(path)
        assert back.num_integer == enc.model.num_integer and back.sense == enc.model.sense
        a = solve(enc.model, "highs", time_limit_s=60)
        b = solve(back, "highs", time_limit_s=60)
        assert a.termination == b.termination
        if a.objective is not None:
            assert abs(a.objective - b.objective) <= 1e-6 * max(1.0, abs(a.objective))


def test_highs_and_scip_agree(tiny_mlp):
    net_t, X, y = tiny_mlp
    net = from_torch(net_t)
    for i, (norm, r) in enumerate((("linf", 0.1), ("l1", 1.5))):
        region = Region.make(net, X[10 + i], norm, r)
        enc = encode(net, region, AttackSpec(int(y[10 + i])), compute_bounds(net, region, "lp"))
        opts = SolveOptions(time_limit_s=60, rel_gap=1e-7)
        rh = solve_encoding(enc, "highs", opts)
        rs = solve_encoding(enc, "scip", opts)
        assert rh.termination == rs.termination == "optimal"
        assert abs(rh.objective - rs.objective) <= 1e-5 * max(1.0, abs(rh.objective))
        assert rh.outcome == rs.outcome


def test_surrogate_mode_judges_on_dense(digits_mlp):
    net_t, X, y = digits_mlp
    dense = from_torch(net_t)
    Ws = [L.W.copy() for L in dense.layers]
    keep = np.argsort(-np.linalg.norm(Ws[1], axis=0))[:20]  # prune layer-0 neurons
    mask = np.zeros(Ws[0].shape[0], bool)
    mask[keep] = True
    Ws[0][~mask] = 0.0
    bs = [L.b.copy() for L in dense.layers]
    bs[0][~mask] = 0.0
    pruned = Network(tuple(Layer(W, b, L.relu) for W, b, L in zip(Ws, bs, dense.layers))).compress()
    r = attack(pruned, X[1], int(y[1]), radius=3.0, norm="l1", reference=net_t, surrogate=True,
               time_limit_s=10)
    assert r.incumbents_checked >= 1
    assert r.witness is not None
    logits = dense.forward(r.witness)
    assert abs(r.reference_margin - _margin(logits, int(y[1]), None)) < 1e-6
    assert r.verified == (r.reference_margin > 0)
    assert r.outcome in ("adversarial", "unknown")  # never 'robust' from a surrogate


def test_time_limit_returns_incumbent_not_error(digits_mlp):
    net_t, X, y = digits_mlp
    r = attack(net_t, X[4], int(y[4]), radius=4.0, norm="l1", bounds="naive",
               time_limit_s=0.3)
    assert r.termination in ("time_limit", "optimal")
    if r.termination == "time_limit":
        assert r.outcome in ("unknown", "adversarial")


# -------------------------------------------------------------------- bad input
def test_bad_input_messages(digits_mlp):
    net_t, X, y = digits_mlp
    net = from_torch(net_t)
    with pytest.raises(ValidationError, match="64 values"):
        attack(net, X[0][:10], int(y[0]), radius=0.1)
    with pytest.raises(ValidationError, match="inside the input domain"):
        attack(net, X[0] + 2.0, int(y[0]), radius=0.1)
    with pytest.raises(ValidationError, match="radius"):
        attack(net, X[0], int(y[0]), radius=0.0)
    with pytest.raises(ValidationError, match="different from the true label"):
        attack(net, X[0], int(y[0]), radius=0.1, target=int(y[0]))
    with pytest.raises(ValidationError, match="norm"):
        attack(net, X[0], int(y[0]), radius=0.1, norm="l2")
    with pytest.raises(ValidationError, match="label"):
        attack(net, X[0], 12, radius=0.1)
    bad = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4),
                              torch.nn.Sigmoid(), torch.nn.Linear(4, 2))
    with pytest.raises(UnsupportedModuleError) as ei:
        from_torch(bad)
    assert "Tanh" in str(ei.value) and "Sigmoid" in str(ei.value) and "2 unsupported" in str(ei.value)
    assert isinstance(ei.value, TypeError)
