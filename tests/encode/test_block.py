"""A network as a block of the user's model: exact over its box (the optimum is the
network's own value at the optimizer and beats every sampled input), the same optimum
through ModelBuilder, LinearModel and Pyomo, and one clear error per bad input."""

import numpy as np
import pytest

from optprune.encode import (
    Layer, Network, add_network_block, add_network_to_pyomo, append_network_block,
)
from optprune.errors import ValidationError
from optprune.solve import LinearModel, ModelBuilder, SolveOptions, solve

OPTS = SolveOptions(rel_gap=1e-9, time_limit_s=60)


def _net(seed, sizes):
    rng = np.random.default_rng(seed)
    return Network(tuple(
        Layer(rng.normal(size=(sizes[k + 1], sizes[k])) / np.sqrt(sizes[k]),
              rng.normal(size=sizes[k + 1]) * 0.3, k < len(sizes) - 2)
        for k in range(len(sizes) - 1)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_optimum_is_exact_over_its_box(seed):
    net = _net(seed, [3, 12, 10, 2])
    lo, hi = np.array([-1.0, 0.0, -2.0]), np.array([1.0, 0.5, 1.0])
    b = ModelBuilder("user", "max")
    blk = add_network_block(b, net, ["a", "b", "c"], ["y", "z"], (lo, hi))
    # the user's own variable and row: t <= y - z, maximize t
    t = b.add_columns(1, lower=-100.0, upper=100.0, names=["t"])
    b.add_rows([0, 0, 0], [t[0], blk.outputs["y"], blk.outputs["z"]], [1.0, -1.0, 1.0],
               -np.inf, 0.0, count=1)
    b.set_cost(t, np.ones(1))
    res = solve(b.build(), "highs", OPTS)
    assert res.is_optimal
    x = res.x[blk.input_columns]
    assert np.all(x >= lo - 1e-9) and np.all(x <= hi + 1e-9)
    assert blk.forward_error(res.x) <= 1e-7
    y = net.forward(x)
    assert res.objective == pytest.approx(y[0] - y[1], abs=1e-6)
    rng = np.random.default_rng(seed)
    pts = lo + rng.random((20000, 3)) * (hi - lo)
    Y = net.forward(pts)
    assert res.objective >= np.max(Y[:, 0] - Y[:, 1]) - 1e-7


def test_pinned_block_reproduces_the_forward_pass():
    net = _net(5, [4, 8, 8, 3])
    x = np.array([0.3, -0.2, 0.9, 0.0])
    b = ModelBuilder("pin", "min")
    blk = add_network_block(b, net, list("pqrs"), ["u", "v", "w"], (x, x))
    res = solve(b.build(), "highs", OPTS)
    assert np.allclose(res.x[blk.output_columns], net.forward(x), atol=1e-7)


def test_linear_model_and_pyomo_hosts_agree_with_the_builder():
    import pyomo.environ as pyo

    net = _net(3, [2, 9, 9, 1])
    box = {"u": (-1.0, 1.0), "v": (-0.5, 2.0)}
    b = ModelBuilder("user", "max")
    blk = add_network_block(b, net, ["u", "v"], ["f"], box)
    b.set_cost(np.array([blk.outputs["f"]]), np.ones(1))
    ref = solve(b.build(), "highs", OPTS)
    # a LinearModel host with a row of its own: s = u + v >= 0.5 through column s
    host = LinearModel(c=np.zeros(1), A=np.zeros((0, 1)), row_lower=[], row_upper=[],
                       col_lower=[-10.0], col_upper=[10.0], integrality=[False], sense="max",
                       col_names=["s"])
    m2, blk2 = append_network_block(host, net, ["u", "v"], ["f"], box, name="g")
    assert blk2.first_column == 1 and m2.col_names[blk2.inputs["u"]] == "g.u"
    m2.c[blk2.outputs["f"]] = 1.0
    res2 = solve(m2, "highs", OPTS)
    assert res2.objective == pytest.approx(ref.objective, abs=1e-6)
    pm = pyo.ConcreteModel()
    nn = add_network_to_pyomo(pm, "nn", net, ["u", "v"], ["f"], box)
    pm.obj = pyo.Objective(expr=pm.nn.outputs["f"], sense=pyo.maximize)
    pm.extra = pyo.Constraint(expr=pm.nn.inputs["u"] + pm.nn.inputs["v"] >= -10)
    pyo.SolverFactory("appsi_highs").solve(pm)
    assert pyo.value(pm.obj) == pytest.approx(ref.objective, abs=1e-6)
    xv = np.array([pyo.value(pm.nn.inputs[k]) for k in ("u", "v")])
    assert net.forward(xv)[0] == pytest.approx(pyo.value(pm.obj), abs=1e-6)
    assert nn.optprune.inputs == {"u": 0, "v": 1}


def test_two_blocks_in_one_model():
    f, g = _net(7, [2, 6, 1]), _net(8, [2, 6, 1])
    b = ModelBuilder("two", "max")
    bf = add_network_block(b, f, ["x0", "x1"], ["out"], (-1.0, 1.0), name="f")
    bg = add_network_block(b, g, ["x0", "x1"], ["out"], (-1.0, 1.0), name="g")
    for k in ("x0", "x1"):  # the same input feeds both
        b.add_rows([0, 0], [bf.inputs[k], bg.inputs[k]], [1.0, -1.0], 0.0, 0.0, count=1)
    b.set_cost(np.array([bf.outputs["out"], bg.outputs["out"]]), np.array([1.0, -1.0]))
    m = b.build()
    assert len(set(m.col_names)) == m.num_cols  # no clash between the two blocks
    res = solve(m, "highs", OPTS)
    x = res.x[bf.input_columns]
    assert res.objective == pytest.approx(f.forward(x)[0] - g.forward(x)[0], abs=1e-6)
    pts = np.random.default_rng(0).uniform(-1, 1, (20000, 2))
    assert res.objective >= np.max(f.forward(pts)[:, 0] - g.forward(pts)[:, 0]) - 1e-7


@pytest.mark.parametrize("kw, match", [
    ({"input_bounds": {"a": (0, 1), "b": (0, np.inf), "c": (0, 1)}}, "'b'.*finite bounds"),
    ({"input_bounds": (np.array([0, -np.inf, 0]), 1.0)}, "'b'.*finite bounds"),
    ({"input_bounds": {"a": (0, 1), "c": (0, 1)}}, "missing 'b'"),
    ({"input_bounds": {"a": (0, 1), "b": (0, 1), "c": (0, 1), "d": (0, 1)}}, "unknown 'd'"),
    ({"input_bounds": {"a": (1, 0), "b": (0, 1), "c": (0, 1)}}, "'a'.*lower bound"),
    ({"input_names": ["a", "b"]}, "3 inputs, but 2 input name"),
    ({"input_names": ["a", "a", "b"]}, "distinct"),
    ({"output_names": ["y"]}, "2 outputs, but 1 output name"),
    ({"input_bounds": "wide"}, "mapping name"),
])
def test_bad_block_input(kw, match):
    args = {"input_names": ["a", "b", "c"], "output_names": ["y", "z"],
            "input_bounds": (0.0, 1.0), **kw}
    with pytest.raises(ValidationError, match=match):
        add_network_block(ModelBuilder(), _net(0, [3, 4, 2]), **args)


def test_pyomo_name_clash():
    import pyomo.environ as pyo

    pm = pyo.ConcreteModel()
    pm.nn = pyo.Var()
    with pytest.raises(ValidationError, match="already has a component 'nn'"):
        add_network_to_pyomo(pm, "nn", _net(0, [2, 3, 1]), ["a", "b"], ["y"], (0.0, 1.0))


def test_to_omlt_gives_the_same_optimum():
    pytest.importorskip("omlt")
    import pyomo.environ as pyo
    from omlt import OmltBlock
    from omlt.neuralnet import ReluBigMFormulation

    from optprune.encode import to_omlt

    net = _net(4, [3, 10, 10, 1])
    lo, hi = -np.ones(3), np.ones(3)
    m = pyo.ConcreteModel()
    m.nn = OmltBlock()
    m.nn.build_formulation(ReluBigMFormulation(to_omlt(net, (lo, hi))))
    m.obj = pyo.Objective(expr=m.nn.outputs[0], sense=pyo.maximize)
    pyo.SolverFactory("appsi_highs").solve(m)
    b = ModelBuilder("user", "max")
    blk = add_network_block(b, net, ["a", "b", "c"], ["y"], (lo, hi))
    b.set_cost(np.array([blk.outputs["y"]]), np.ones(1))
    assert solve(b.build(), "highs", OPTS).objective == pytest.approx(pyo.value(m.obj), abs=1e-6)
