"""Pair costs at scale: the transportation cuts are the exact per-pair hull, the
width heuristic evaluates masks like the problem does, the exact (disaggregated)
model equals brute force, and the CNN examples have the real models' costs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optprune.alloc import AllocationProblem, allocate
from optprune.alloc.bilinear import transport_cut
from optprune.alloc.examples import EXAMPLES, mobilenet_v2_problem, resnet_problem
from optprune.alloc.formulate import formulate
from optprune.alloc.widths import WidthSpace
from optprune.errors import InfeasibleProblemError
from optprune.solve import solve


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_transport_cut_is_the_transportation_optimum_and_dual_feasible(data):
    from scipy.optimize import linprog

    def values(n):
        return np.array(sorted(data.draw(st.lists(st.integers(0, 30), min_size=n, max_size=n,
                                                  unique=True))), float)

    def dist(n):
        w = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 2.0]),
                                        min_size=n, max_size=n)))
        if w.sum() == 0:
            w[0] = 1.0
        return w / w.sum()

    na, nb = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    a, b = values(na), values(nb)
    ya, yb = dist(na), dist(nb)
    cost = np.outer(a, b)
    eq = np.zeros((na + nb, na * nb))
    for i in range(na):
        eq[i, i * nb:(i + 1) * nb] = 1
    for j in range(nb):
        eq[na + j, j::nb] = 1
    for lower in (True, False):
        sign = 1.0 if lower else -1.0
        lp = linprog(sign * cost.ravel(), A_eq=eq, b_eq=np.concatenate([ya, yb]),
                     bounds=(0, None), method="highs")
        value, alpha, beta = transport_cut(a, ya, b, yb, lower)
        assert value == pytest.approx(sign * lp.fun, abs=1e-9)
        pot = alpha[:, None] + beta[None, :]
        assert np.all(sign * (cost - pot) >= -1e-9)  # valid at every integral point
        assert alpha @ ya + beta @ yb == pytest.approx(value, abs=1e-9)  # tight here


@st.composite
def pair_problems(draw):
    n_slots = draw(st.integers(2, 3))
    layer, per = [], []
    for i in range(n_slots):
        w = draw(st.integers(1, 4))
        layer += [f"l{i}"] * w
        per.append((w, float(draw(st.integers(0, 3)))))
    params = np.concatenate([[c] * w for w, c in per])
    score = np.array([draw(st.floats(-1.0, 5.0, allow_nan=False)) for _ in layer])
    p = AllocationProblem(None, layer, ["c"] * len(layer), score, {"params": params})
    slots = list(p.slots())
    for a, b in itertools.combinations(slots, 2):
        if draw(st.booleans()):
            p.add_pair_cost("params", a, b, float(draw(st.integers(1, 4))))
    if not p.pair_costs:
        p.add_pair_cost("params", slots[0], slots[1], 2.0)
    p.add_budget("params", max=draw(st.floats(0.1, 0.9)), relative=True)
    if draw(st.booleans()):
        p.add_budget("params", min=draw(st.floats(0.0, 0.3)), relative=True)
    if draw(st.booleans()):
        p.add_count_bounds(kind="c", min=1)
    return p


def best_mask_value(p):
    best = None
    for bits in itertools.product((False, True), repeat=p.n):
        keep = np.asarray(bits)
        if not p.violations(keep):
            v = p.objective_of(keep)
            best = v if best is None else max(best, v)
    return best


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair_problems(), st.sampled_from(["highs", "scip", "cpsat"]))
def test_exact_disaggregated_model_equals_brute_force(p, backend):
    best = best_mask_value(p)
    form = formulate(p, integer_only=backend == "cpsat")
    assert form.exact_pairs and form.pairs
    r = form.unscale(solve(form.model, backend=backend, rel_gap=0.0))
    if best is None:
        assert not r.has_solution
        return
    keep = form.decode(r.x)
    assert p.violations(keep) == []
    assert r.objective == pytest.approx(best, abs=1e-6)
    assert p.objective_of(keep) == pytest.approx(best, abs=1e-6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pair_problems(), st.sampled_from(["highs", "scip", "cpsat", "pyomo"]))
def test_outer_approximation_equals_brute_force(p, backend):
    best = best_mask_value(p)
    if best is None:
        with pytest.raises(InfeasibleProblemError):
            allocate(p, backend=backend, rel_gap=0.0)
        return
    r = allocate(p, backend=backend, rel_gap=0.0, baselines=False)
    assert r.solve.is_optimal and r.solve.details["method"].startswith("pair hull")
    assert r.solve.objective == pytest.approx(best, abs=1e-6)
    assert r.solve.bound >= best - 1e-6


@pytest.mark.parametrize("formulation", ["width", "structure"])
def test_a_pair_cost_on_a_slot_without_an_allowed_width_is_an_infeasible_model(formulation):
    """Width 2 in multiples of 3 without zero leaves slot a no width: the model says
    infeasible (what a pareto front, which formulates without diagnose(), relies on)."""
    p = AllocationProblem(None, ["a", "a", "b", "b"], ["c"] * 4, [1.0, 2.0, 3.0, 4.0],
                          {"params": [1.0] * 4})
    p.add_multiple(layer="a", multiple=3, allow_zero=False)
    p.add_pair_cost("params", ("a", "c"), ("b", "c"), 1.0)
    p.add_budget("params", max=100.0)
    with pytest.raises(InfeasibleProblemError, match="No width is allowed"):
        p.diagnose()
    r = solve(formulate(p, formulation).model, backend="highs")
    assert r.termination == "infeasible" and not r.has_solution


@pytest.mark.parametrize("name", ["resnet-18", "resnet-50", "mobilenet-v2"])
def test_width_space_evaluates_like_the_problem(name):
    p = EXAMPLES[name]()
    ws = WidthSpace(p)
    rng = np.random.default_rng(0)
    for _ in range(10):
        pos = np.array([rng.integers(0, ws.size[g]) for g in range(len(ws.members))])
        keep = ws.keep(pos)
        use = p.usage(keep)
        assert ws.usage(pos) == pytest.approx([use[r] - p.fixed_costs[r] for r in ws.resources])
        assert ws.objective(pos) == pytest.approx(p.retained(keep))
        assert ws.feasible(pos) == (p.violations(keep) == [])
    start = ws.round_down(0.7 * ws.opts[np.arange(len(ws.members)), ws.size - 1])
    pos = ws.search(start)
    assert pos is not None and p.violations(ws.keep(pos)) == []
    if ws.feasible(start):  # from a feasible start the search never loses value
        assert ws.objective(pos) >= ws.objective(start) - 1e-9
    half = ws.round_down(0.5 * ws.opts[np.arange(len(ws.members)), ws.size - 1])
    assert ws.feasible(half)
    assert ws.objective(ws.search(half)) >= ws.objective(half)


def _hf_counts(model) -> tuple[int, int]:
    import torch

    macs = [0]

    def hook(mod, inp, out):
        w = mod.weight.numel()
        macs[0] += w * (out.shape[2] * out.shape[3] if isinstance(mod, torch.nn.Conv2d) else 1)

    for mod in model.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    return sum(q.numel() for q in model.parameters()), macs[0]


@pytest.mark.parametrize("name", ["resnet-50", "resnet-18", "mobilenet-v2"])
def test_cnn_examples_cost_what_the_hugging_face_models_cost(name):
    tr = pytest.importorskip("transformers")
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if name == "mobilenet-v2":
        model = tr.MobileNetV2ForImageClassification(tr.MobileNetV2Config(num_labels=1000))
    elif name == "resnet-50":
        model = tr.ResNetForImageClassification(tr.ResNetConfig(num_labels=1000))
    else:
        model = tr.ResNetForImageClassification(tr.ResNetConfig(
            num_labels=1000, layer_type="basic", depths=[2, 2, 2, 2],
            hidden_sizes=[64, 128, 256, 512]))
    params, macs = _hf_counts(model.eval())
    p = EXAMPLES[name]()
    dense = p.usage(np.ones(p.n, dtype=bool))
    assert dense["params"] == params
    assert dense["macs"] == macs


def test_resnet18_is_proven_within_the_gap():
    p = resnet_problem("resnet-18")
    r = allocate(p, rel_gap=1e-4, time_limit_s=300)
    assert r.solve.is_optimal and r.solve.gap <= 1e-4
    assert p.violations(r.keep) == []
    assert p.objective_of(r.keep) == pytest.approx(r.solve.objective)
    # Bilinear costs are exact: the usage reported is the pruned network's.
    assert r.usage["params"] <= 0.5 * r.dense_usage["params"] + 1e-6
    assert r.usage["macs"] <= 0.6 * r.dense_usage["macs"] + 1e-6
    for name, b in r.baselines.items():
        if b.feasible:
            assert b.objective <= r.solve.bound + 1e-9, name


@pytest.mark.slow
@pytest.mark.parametrize("make", [lambda: resnet_problem("resnet-50"), mobilenet_v2_problem])
def test_large_cnns_are_proven_within_the_gap(make):
    p = make()
    r = allocate(p, rel_gap=1e-4, time_limit_s=600)
    assert r.solve.is_optimal and r.solve.gap <= 1e-4
    assert p.violations(r.keep) == []


# ------------------------------------------------------------------ time limits
@pytest.mark.parametrize("limit,gap", [(0.3, 1e-6), (2.0, 1e-6), (2.0, 0.0)])
def test_a_time_limited_answer_carries_its_bound_and_is_checked(limit, gap):
    """gap 0: the quick stage cannot close it, so HiGHS runs into the limit."""
    from optprune.alloc.examples import unequal_cost_problem

    p = unequal_cost_problem(20_000, seed=3)
    r = allocate(p, time_limit_s=limit, rel_gap=gap)
    assert r.solve.termination.value in ("optimal", "time_limit")
    if r.keep is None:  # no incumbent: said so, with no objective
        assert r.solve.objective is None and not r.solve.has_solution
        return
    assert r.solve.bound is not None and np.isfinite(r.solve.gap)
    assert r.solve.bound >= r.solve.objective - 1e-9 * abs(r.solve.objective)
    assert p.violations(r.keep) == []
    assert p.objective_of(r.keep) == pytest.approx(r.solve.objective)
    assert r.solve.is_optimal == (r.solve.gap <= gap)


def test_quick_stage_bound_is_valid_and_closes_large_knapsacks():
    from optprune.alloc.examples import unequal_cost_problem
    from optprune.alloc.relax import lagrangian_bound, quick_solution, trivial_bound

    p = unequal_cost_problem(5_000, seed=1, slot_width=100)
    exact = allocate(p, baselines=False, rel_gap=0.0, warm_start=False)
    bound, keep = quick_solution(p)
    assert keep is not None and p.violations(keep) == []
    assert bound >= exact.solve.objective - 1e-9 * exact.solve.objective
    assert p.objective_of(keep) <= exact.solve.objective + 1e-9 * exact.solve.objective
    assert trivial_bound(p) >= bound - 1e-9 * bound
    assert (bound - p.objective_of(keep)) / bound < 1e-4
    q = EXAMPLES["llama-7b"]()
    lb = lagrangian_bound(q)
    assert lb >= allocate(q, baselines=False).solve.objective * (1 - 1e-9)
