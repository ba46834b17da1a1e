"""The ideal ReLU formulation (Anderson et al. 2020) for small fan-in neurons: every
added row holds at the network's own values on random points of the region; for one
neuron the LP relaxation optimizes to the MIP value on random objectives (while big-M's
does not); a pinned input gives the forward pass; bigm, ideal and auto agree on the
attack optimum; bad options raise clear errors."""

import numpy as np
import pytest

from optprune.cli import main
from optprune.encode import AttackSpec, Layer, Network, Region, attack, compute_bounds, encode
from optprune.encode.formulate import DEFAULT_MAX_FAN_IN, add_network
from optprune.errors import ValidationError
from optprune.solve import LinearModel, ModelBuilder, SolveOptions, solve

EXACT = SolveOptions(time_limit_s=30, rel_gap=1e-9,
                     extra={"mip_feasibility_tolerance": 1e-9,
                            "primal_feasibility_tolerance": 1e-9})


def _build(net, region, bounds, relu, max_fan_in=None):
    b = ModelBuilder(sense="max")
    cols = add_network(b, net, region, bounds.lower, bounds.upper, relu=relu,
                       max_fan_in=max_fan_in)
    return b.build(), cols


def _point(model, cols, net, region, x):
    """The full column vector of the MIP at input x: the network's own z, h and phases."""
    v = np.zeros(model.num_cols)
    v[cols.x] = x
    if cols.d is not None:
        free = np.flatnonzero(region.box()[1] > region.box()[0])
        v[cols.d] = np.abs(x[free] - region.x0[free])
    hk = x
    for k, layer in enumerate(net.layers):
        z = layer.W @ hk + layer.b
        h = np.maximum(z, 0.0) if layer.relu else z
        for arr, val in ((cols.z[k], z), (cols.h[k], h), (cols.s[k], (z > 0).astype(float))):
            m = arr >= 0
            v[arr[m]] = val[m]
        hk = h
    return v


def _relaxed(model):
    return LinearModel(model.c, model.A, model.row_lower, model.row_upper, model.col_lower,
                       model.col_upper, np.zeros(model.num_cols, bool), model.sense)


# --------------------------------------------------------------------------- validity
@pytest.mark.parametrize("norm,radius", [("linf", 0.3), ("l1", 1.0)])
def test_rows_hold_at_the_network_values(random_network, norm, radius):
    rng = np.random.default_rng(11)
    added = 0
    for trial in range(3):
        net = random_network(rng, [6, 9, 7, 3], sparsity=0.5)
        region = Region.make(net, rng.random(6), norm, radius)
        for method in ("interval", "lp", "naive"):
            bounds = compute_bounds(net, region, method)
            model, cols = _build(net, region, bounds, "ideal", max_fan_in=9)
            added += cols.ideal_rows
            for x in region.sample(60, rng):
                v = _point(model, cols, net, region, x)
                scale = 1 + np.max(np.abs(v))
                assert model.max_violation(v) <= 1e-9 * scale, (trial, method)
    assert added > 100


# --------------------------------------------------------------------------- strength
def _single_neuron(rng, n, method):
    """64 -> 1 ReLU -> identity; an unstable neuron with n inputs over a random box."""
    w = rng.normal(size=n) * rng.uniform(0.5, 2.0, size=n)
    lo = rng.uniform(-1.0, 0.5, size=n)
    hi = lo + rng.uniform(0.2, 1.5, size=n)
    mid = 0.5 * (lo + hi)
    b = -float(w @ mid) + rng.normal() * 0.1  # unstable: the box straddles the hyperplane
    net = Network((Layer(w[None, :], [b], True), Layer(np.ones((1, 1)), [0.0], False)))
    region = Region.make(net, mid, "linf", 10.0, domain=(lo, hi))
    bounds = compute_bounds(net, region, method)
    assert bounds.lower[0][0] < 0 < bounds.upper[0][0]
    return net, region, bounds


@pytest.mark.parametrize("method", ["interval", "naive"])
def test_single_neuron_lp_relaxation_is_exact(method):
    rng = np.random.default_rng(5)
    bigm_gap = 0.0
    for n in (2, 3, 4):
        for _ in range(3):
            net, region, bounds = _single_neuron(rng, n, method)
            ideal, ci = _build(net, region, bounds, "ideal")
            bigm, cb = _build(net, region, bounds, "bigm")
            # naive bounds are looser than the box's: I = {} / supp(w) then add a row each
            ib = compute_bounds(net, region, "interval")
            extra = (int(ib.lower[0][0] > bounds.lower[0][0])
                     + int(ib.upper[0][0] < bounds.upper[0][0]))
            assert (extra == 0) == (method == "interval")
            assert ci.ideal_rows == 2 ** n - 2 + extra
            assert np.array_equal(ci.x, cb.x) and np.array_equal(ci.s[0], cb.s[0])
            obj_cols = np.r_[ci.x, ci.h[0], ci.s[0]]
            for _ in range(8):
                c = np.zeros(ideal.num_cols)
                c[obj_cols] = rng.normal(size=obj_cols.size)
                ideal.c, bigm.c = c, c.copy()
                mip = solve(ideal, "highs", EXACT)
                lp = solve(_relaxed(ideal), "highs", EXACT)
                assert mip.is_optimal and lp.is_optimal
                assert abs(lp.objective - mip.objective) <= 1e-7 * (1 + abs(mip.objective))
                mip_b = solve(bigm, "highs", EXACT)
                assert abs(mip_b.objective - mip.objective) <= 1e-7 * (1 + abs(mip.objective))
                bigm_gap = max(bigm_gap, solve(_relaxed(bigm), "highs", EXACT).objective
                               - mip.objective)
    assert bigm_gap > 1e-3  # the big-M relaxation is weaker on the same objectives


# ------------------------------------------------------------------ fixed input
@pytest.mark.parametrize("relu", ["ideal", "auto"])
def test_pinned_input_outputs_equal_forward_pass(random_network, relu):
    rng = np.random.default_rng(2)
    net = random_network(rng, [8, 12, 10, 4], sparsity=0.65)
    for _ in range(3):
        x = rng.random(8)
        wide = compute_bounds(net, Region.make(net, x, "linf", 0.5), "interval")
        pinned = Region.make(net, x, "linf", 0.5, domain=(x, x))
        y = net.forward(x)
        label = int(np.argmax(y))
        target = (label + 1) % 4
        enc = encode(net, pinned, AttackSpec(label, target), wide, relu=relu,
                     max_fan_in=12 if relu == "ideal" else 3)
        assert enc.model.num_integer > 0 and enc.cols.ideal_rows > 0
        res = solve(enc.model, "highs", EXACT)
        assert res.is_optimal
        assert np.max(np.abs(enc.logits_of(res.x) - y)) < 1e-6
        assert abs(res.objective - (y[target] - y[label])) < 1e-6


# ------------------------------------------------------------- same optimum as big-M
@pytest.mark.parametrize("norm,radius,method", [("linf", 0.15, "lp"), ("l1", 1.2, "lp"),
                                                ("linf", 0.15, "naive")])
def test_same_optimum_as_bigm(random_network, norm, radius, method):
    rng = np.random.default_rng(7)
    for _ in range(2):
        net = random_network(rng, [10, 14, 12, 5], sparsity=0.7)
        x = rng.random(10)
        region = Region.make(net, x, norm, radius)
        bounds = compute_bounds(net, region, method)
        label = int(net.predict(x))
        objs = {}
        for relu, k in (("bigm", None), ("ideal", 14), ("auto", 3)):
            enc = encode(net, region, AttackSpec(label), bounds, relu=relu, max_fan_in=k)
            res = solve(enc.model, "highs", EXACT)
            assert res.is_optimal
            xs = enc.input_of(res.x)
            ys = net.forward(xs)
            assert abs(res.objective - (np.max(np.delete(ys, label)) - ys[label])) < 1e-6
            objs[relu] = res.objective
            if relu != "bigm":
                assert enc.cols.ideal_rows > 0
        assert abs(objs["ideal"] - objs["bigm"]) < 1e-6
        assert abs(objs["auto"] - objs["bigm"]) < 1e-6


def test_attack_passes_the_option_and_metadata_records_it(random_network):
    rng = np.random.default_rng(4)
    net = random_network(rng, [6, 8, 6, 3], sparsity=0.5)
    x = rng.random(6)
    label = int(net.predict(x))
    region = Region.make(net, x, "linf", 0.2)
    b = compute_bounds(net, region, "lp")
    default = encode(net, region, AttackSpec(label), b)
    bigm = encode(net, region, AttackSpec(label), b, relu="bigm")
    assert "relu_formulation" not in default.model.metadata  # old sidecars unchanged
    assert default.model.metadata == bigm.model.metadata
    assert (default.model.A != bigm.model.A).nnz == 0
    # with threshold 1 no neuron qualifies: auto is big-M row for row
    auto1 = encode(net, region, AttackSpec(label), b, relu="auto", max_fan_in=1)
    assert auto1.cols.ideal_rows == 0 and (auto1.model.A != default.model.A).nnz == 0
    auto = encode(net, region, AttackSpec(label), b, relu="auto")
    meta = auto.model.metadata
    assert meta["relu_formulation"] == "auto" and meta["max_fan_in"] == DEFAULT_MAX_FAN_IN
    assert meta["ideal_rows"] == auto.model.num_rows - default.model.num_rows > 0
    assert auto.stats()["ideal_neurons"] == meta["ideal_neurons"] > 0
    r1 = attack(net, x, label, radius=0.2, relu="auto", time_limit_s=20)
    r0 = attack(net, x, label, radius=0.2, time_limit_s=20)
    assert r1.stats["relu_formulation"] == "auto" and r0.stats["relu_formulation"] == "bigm"
    assert r1.outcome == r0.outcome
    assert abs(r1.objective - r0.objective) <= 1e-3 * (1 + abs(r0.objective))


def test_cli_relu_option(random_network, tmp_path, capsys):
    rng = np.random.default_rng(8)
    net = random_network(rng, [64, 10, 10], sparsity=0.9)
    path = net.save(tmp_path / "sparse.npz")
    rc = main(["encode", str(path), "--digits-index", "2", "--radius", "0.05", "--relu", "auto",
               "--max-fan-in", "8", "--out", str(tmp_path), "--name", "inst", "--json"])
    assert rc == 0
    meta = LinearModel.read(tmp_path / "inst.mps").metadata
    assert meta["relu_formulation"] == "auto" and meta["max_fan_in"] == 8
    capsys.readouterr()
    assert main(["encode", str(path), "--digits-index", "2", "--radius", "0.05",
                 "--relu", "auto", "--max-fan-in", "0", "--out", str(tmp_path)]) == 2
    assert "max_fan_in" in capsys.readouterr().err


# ------------------------------------------------------------------------ bad input
def test_bad_options_raise_clear_errors(random_network):
    rng = np.random.default_rng(1)
    net = random_network(rng, [5, 40, 3])  # dense: fan-in 5 in layer 0, up to 40 after
    x = rng.random(5)
    region = Region.make(net, x, "linf", 0.3)
    b = compute_bounds(net, region, "interval")
    spec = AttackSpec(int(net.predict(x)))
    with pytest.raises(ValidationError, match="'relu' parameter must be one of"):
        encode(net, region, spec, b, relu="convex")
    for bad in (0, -3, 17, 2.5, True):
        with pytest.raises(ValidationError, match="'max_fan_in' parameter"):
            encode(net, region, spec, b, relu="auto", max_fan_in=bad)
    with pytest.raises(ValidationError, match="fan-in <= max_fan_in = 4.*relu='auto'"):
        encode(net, region, spec, b, relu="ideal", max_fan_in=4)
    with pytest.raises(ValidationError, match="'bigm' when relax=True"):
        add_network(ModelBuilder(), net, region, b.lower, b.upper, relax=True, relu="auto")
    with pytest.raises(ValidationError, match="'relu' parameter"):
        attack(net, x, spec.label, radius=0.3, relu="Ideal")
