"""The solve-time techniques: every PGD start and every cut is valid (never cuts off a
point of the network's graph evaluated in float64), the separation finds the most
violated ideal inequality, and a strategy never changes the optimum."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optprune.encode import (
    NO_STRATEGY, AttackSpec, Region, Strategy, attack, compute_bounds, encode, from_torch,
    solve_encoding,
)
from optprune.encode.bounds import GRID_BITS, round_out
from optprune.encode.cuts import layer_inputs, root_cut_loop, separate_ideal, with_rows
from optprune.encode.heuristics import lift, margins, pgd, project_l1
from optprune.solve import SolveOptions, solve


def _net(seed, sizes, sparsity=0.0):
    from optprune.encode import Layer, Network

    rng = np.random.default_rng(seed)
    layers = []
    for k in range(len(sizes) - 1):
        W = rng.normal(size=(sizes[k + 1], sizes[k])) / np.sqrt(sizes[k])
        W[rng.random(W.shape) < sparsity] = 0.0
        layers.append(Layer(W, rng.normal(size=sizes[k + 1]) * 0.3, k < len(sizes) - 2))
    return Network(tuple(layers))


def _instance(net, seed, norm, radius, target, objective="margin", relu="bigm",
              bounds="symbolic"):
    rng = np.random.default_rng(seed)
    x0 = rng.random(net.input_dim)
    region = Region.make(net, x0, norm, radius)
    label = int(net.predict(x0))
    if target == "other":
        target = (label + 1) % net.output_dim
    enc = encode(net, region, AttackSpec(label, target, objective),
                 compute_bounds(net, region, bounds), relu=relu)
    return enc, region, label, target


def _points(region, rng, n=200):
    return np.vstack([region.sample(n, rng), region.x0[None, :]])


# ------------------------------------------------------------------ PGD starts
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["linf", "l1"]),
       target=st.sampled_from([None, "other"]),
       objective=st.sampled_from(["margin", "min_distortion", "decision"]),
       relu=st.sampled_from(["bigm", "auto"]))
def test_every_pgd_start_is_a_valid_mip_point(seed, norm, target, objective, relu):
    net = _net(seed, [6, 8, 7, 4], sparsity=0.3)
    radius = 0.3 if norm == "linf" else 1.0
    enc, region, label, target = _instance(net, seed, norm, radius, target, objective, relu)
    p = pgd(net, region, label, target, steps=20, restarts=4, seed=seed)
    assert region.contains(p.x)
    assert p.margin == margins(net, p.x[None, :], label, target)[0]  # float64, re-checked
    v = lift(enc, p.x)
    viol = enc.model.max_violation(v)
    if objective == "margin" or p.margin >= enc.spec.margin_threshold:
        assert viol <= 1e-9
        if objective == "margin":
            assert enc.model.objective_value(v) == pytest.approx(p.margin, abs=1e-9)
    else:  # no adversarial point: the start violates exactly the adversarial row
        assert viol == pytest.approx(enc.spec.margin_threshold - p.margin, abs=1e-9)
    # and with the cuts appended it stays valid
    cuts = root_cut_loop(enc, rounds=5, time_limit_s=5.0)
    if objective == "margin":
        assert with_rows(enc.model, cuts).max_violation(v) <= 1e-9


def test_pgd_finds_the_optimum_of_a_small_attack(digits_mlp):
    net_t, X, y = digits_mlp
    net = from_torch(net_t)
    region = Region.make(net, X[11], "linf", 0.1)
    label = int(y[11])
    enc = encode(net, region, AttackSpec(label, None), compute_bounds(net, region, "symbolic"))
    res = solve(enc.model, "highs", SolveOptions(rel_gap=1e-9))
    p = pgd(net, region, label, None)
    assert p.margin <= res.objective + 1e-7  # a lower bound on the optimum, never above
    assert p.margin >= res.objective - 0.25 * abs(res.objective)  # and a good one here


def test_l1_projection_is_the_euclidean_projection():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = 6
        v = rng.normal(size=n) * 2
        lo, hi = -rng.random(n), rng.random(n)
        r = rng.uniform(0.1, 2.0)
        d = project_l1(v, r, lo, hi)[0]
        assert np.abs(d).sum() <= r + 1e-9 and np.all(d >= lo - 1e-12) and np.all(d <= hi + 1e-12)
        # no feasible point of a fine random cloud is closer to v
        cloud = np.clip(rng.normal(size=(4000, n)), lo, hi)
        cloud *= np.minimum(1.0, r / np.maximum(np.abs(cloud).sum(1), 1e-12))[:, None]
        assert np.min(np.linalg.norm(cloud - v, axis=1)) >= np.linalg.norm(d - v) - 1e-6


# ------------------------------------------------------------------------ cuts
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["linf", "l1"]),
       target=st.sampled_from([None, "other"]), bounds=st.sampled_from(["interval", "symbolic"]))
def test_every_cut_keeps_every_float64_point_of_the_graph(seed, norm, target, bounds):
    net = _net(seed, [5, 9, 9, 3], sparsity=0.2)
    radius = 0.35 if norm == "linf" else 1.2
    enc, region, label, target = _instance(net, seed, norm, radius, target, bounds=bounds)
    cuts = root_cut_loop(enc, rounds=10, time_limit_s=5.0)
    model = with_rows(enc.model, cuts)
    rng = np.random.default_rng(seed)
    pts = _points(region, rng)
    p = pgd(net, region, label, target, steps=15, restarts=3, seed=seed)
    res = solve(enc.model, "highs", SolveOptions(rel_gap=1e-9))
    pts = np.vstack([pts, p.x, np.clip(enc.input_of(res.x), *region.box())])
    worst = max(model.max_violation(lift(enc, x)) for x in pts)
    assert worst <= 1e-9
    # the cuts never move the optimum, and the LP bound only improves, never past it
    res2 = solve(model, "highs", SolveOptions(rel_gap=1e-9))
    assert res2.objective == pytest.approx(res.objective, abs=1e-6)
    lp = cuts.lp_bounds
    assert all(b >= a - 1e-9 for a, b in zip(lp[1:], lp[:-1]))
    if lp:
        assert lp[-1] >= res.objective - 1e-6


def test_separation_returns_the_most_violated_ideal_inequality():
    """Brute force over all 2^n subsets for one neuron at random fractional points."""
    rng = np.random.default_rng(8)
    for trial in range(15):
        n = int(rng.integers(2, 7))
        net = _net(100 + trial, [n, 1, 2])
        region = Region.make(net, rng.random(n), "linf", 0.4)
        b = compute_bounds(net, region, "interval")
        if not (b.lower[0][0] < 0 < b.upper[0][0]):
            continue
        enc = encode(net, region, AttackSpec(0, 1), b)
        prev, lo, up = layer_inputs(enc)[0]
        w, bias = net.layers[0].W[0], net.layers[0].b[0]
        hc, sc = enc.cols.h[0][0], enc.cols.s[0][0]
        for _ in range(20):
            v = np.zeros(enc.model.num_cols)
            v[prev] = lo + rng.random(n) * (up - lo)
            v[sc] = rng.random()
            v[hc] = rng.uniform(0, b.upper[0][0])
            Lb = np.where(w >= 0, lo, up)
            Ub = np.where(w >= 0, up, lo)
            best = min(
                sum(w[i] * (v[prev[i]] - Lb[i] * (1 - v[sc])) for i in sub)
                + (bias + sum(w[i] * Ub[i] for i in range(n) if i not in sub)) * v[sc]
                for r in range(n + 1) for sub in itertools.combinations(range(n), r))
            cut = separate_ideal(enc, v, tol=0.0)
            if v[hc] - best > 1e-9:
                assert cut.count == 1
                row = np.zeros(enc.model.num_cols)
                np.add.at(row, cut.cols, cut.vals)
                assert row @ v - cut.upper[0] == pytest.approx(v[hc] - best, abs=1e-9)
            elif v[hc] - best < -1e-9:
                assert cut.count == 0


# ------------------------------------------------------------ the strategy
@pytest.mark.parametrize("norm,radius,target", [("linf", 0.08, None), ("l1", 2.0, 3),
                                                ("linf", 0.1, 7)])
def test_strategy_keeps_the_optimum_and_verifies(digits_mlp, norm, radius, target):
    net_t, X, y = digits_mlp
    net = from_torch(net_t)
    i = 21
    label = int(y[i])
    if target == label:
        target = (label + 2) % 10
    region = Region.make(net, X[i], norm, radius)
    enc = encode(net, region, AttackSpec(label, target), compute_bounds(net, region, "symbolic"))
    opts = SolveOptions(time_limit_s=120, rel_gap=1e-9)
    bare = solve_encoding(enc, options=opts, reference=net_t, strategy=NO_STRATEGY)
    full = solve_encoding(enc, options=opts, reference=net_t, strategy=Strategy())
    assert bare.termination == full.termination == "optimal"
    assert full.objective == pytest.approx(bare.objective, abs=1e-6)
    assert full.outcome == bare.outcome
    assert "pgd_margin" in full.stats and full.stats["pgd_margin"] <= full.objective + 1e-7
    if full.outcome == "adversarial":
        assert full.verified and full.reference_margin > 0


def test_attack_defaults_use_the_strategy_and_symbolic_bounds(digits_mlp):
    net_t, X, y = digits_mlp
    r = attack(net_t, X[4], int(y[4]), radius=0.05, time_limit_s=60)
    assert r.stats["bounds_method"] == "symbolic"
    assert r.stats["strategy"] == {**Strategy().__dict__}
    assert r.termination == "optimal"


@pytest.mark.parametrize("objective", ["decision", "min_distortion"])
def test_strategy_on_decision_and_distortion(digits_mlp, objective):
    net_t, X, y = digits_mlp
    net = from_torch(net_t)
    region = Region.make(net, X[2], "linf", 0.15)
    enc = encode(net, region, AttackSpec(int(y[2]), None, objective),
                 compute_bounds(net, region, "symbolic"))
    opts = SolveOptions(time_limit_s=120, rel_gap=1e-6)
    bare = solve_encoding(enc, options=opts, strategy=NO_STRATEGY)
    full = solve_encoding(enc, options=opts, strategy=Strategy())
    assert full.outcome == bare.outcome
    if objective == "min_distortion" and bare.termination == "optimal":
        assert full.objective == pytest.approx(bare.objective, abs=1e-5)


def test_strategy_validation():
    from optprune.errors import ValidationError

    for bad in ({"start": "fgsm2"}, {"cuts": "all"}, {"highs_profile": "fast"},
                {"pgd_steps": 0}, {"cut_time_limit_s": -1.0}):
        with pytest.raises(ValidationError):
            Strategy(**bad)


# ---------------------------------------------------------------- bounds
def test_round_out_is_outward_on_the_grid_and_sign_preserving():
    rng = np.random.default_rng(0)
    lo = rng.normal(size=1000) * 10.0 ** rng.integers(-8, 8, size=1000)
    up = lo + np.abs(rng.normal(size=1000))
    rl, ru = round_out(lo, up)
    assert np.all(rl <= lo) and np.all(ru >= up)
    assert np.all(np.abs(rl - lo) <= 2.0 ** -(GRID_BITS - 1) * np.abs(lo))
    assert np.all(np.sign(rl) * np.sign(lo) >= 0) and np.all((ru <= 0) == (up <= 0))
    again = round_out(rl, ru)
    assert np.array_equal(again[0], rl) and np.array_equal(again[1], ru)  # idempotent
    # a last-bit difference (another BLAS's summation order) lands on the same grid point
    jitter = lo * (1 + 2.0 ** -50)
    assert np.mean(round_out(jitter, up)[0] == rl) > 0.99


def test_lp_bounds_with_a_budget_stay_sound_and_inside_symbolic(digits_mlp):
    net_t, X, y = digits_mlp
    net = from_torch(net_t)
    region = Region.make(net, X[9], "l1", 2.0)
    sym = compute_bounds(net, region, "symbolic")
    rng = np.random.default_rng(1)
    _, zs = net.forward(region.sample(300, rng), return_all=True)
    for budget in (1e-4, None):
        lp = compute_bounds(net, region, "lp", total_time_limit_s=budget)
        for k, z in enumerate(zs):
            assert np.all(lp.lower[k] >= sym.lower[k]) and np.all(lp.upper[k] <= sym.upper[k])
            assert np.all(z >= lp.lower[k] - 1e-9) and np.all(z <= lp.upper[k] + 1e-9)
    assert lp.unstable_count(net) <= sym.unstable_count(net)
