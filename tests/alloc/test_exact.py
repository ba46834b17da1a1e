"""The allocation MILP's optimum equals brute force over every keep mask, for
every constraint type, both formulations and several backends."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optprune.alloc import AllocationProblem, allocate, pareto_front
from optprune.errors import InfeasibleProblemError, ValidationError

SLOW_OK = settings(max_examples=60, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def brute(problem: AllocationProblem) -> tuple[float | None, np.ndarray | None]:
    """Best objective over all 2^n masks that break no constraint."""
    best, arg = None, None
    sign = 1.0 if problem.objective.kind == "max_importance" else -1.0
    for bits in itertools.product((False, True), repeat=problem.n):
        keep = np.asarray(bits)
        if problem.violations(keep):
            continue
        v = problem.objective_of(keep)
        if best is None or sign * v > sign * best + 1e-12:
            best, arg = v, keep
    return best, arg


@st.composite
def problems(draw, homogeneous: bool = False):
    n_layers = draw(st.integers(1, 3))
    widths = [draw(st.integers(1, 4)) for _ in range(n_layers)]
    layer, kind = [], []
    for i, w in enumerate(widths):
        k = draw(st.sampled_from(["head", "ffn"]))
        layer += [f"l{i}"] * w
        kind += [k] * w
    n = len(layer)
    score = np.array([draw(st.floats(0.0, 10.0, allow_nan=False)) for _ in range(n)])
    if homogeneous:
        per = [draw(st.integers(1, 9)) for _ in range(n_layers)]
        params = np.concatenate([[p] * w for p, w in zip(per, widths)]).astype(float)
    else:
        params = np.array([draw(st.integers(1, 9)) for _ in range(n)], float)
    flops = np.array([draw(st.integers(0, 5)) for _ in range(n)], float)
    if homogeneous:
        flops = np.concatenate([[flops[sum(widths[:i])]] * w for i, w in enumerate(widths)])
    p = AllocationProblem(None, layer, kind, score, {"params": params, "flops": flops},
                          fixed_costs={"params": draw(st.integers(0, 5))})
    slots = list(p.slots())
    if draw(st.booleans()):  # bilinear costs: weights pruned along two dimensions
        for _ in range(draw(st.integers(1, 2))):
            a, b = draw(st.sampled_from(slots)), draw(st.sampled_from(slots))
            p.add_pair_cost(draw(st.sampled_from(["params", "flops"])), a, b,
                            float(draw(st.integers(1, 4))))
    p.add_budget("params", max=draw(st.floats(0.2, 1.0)), relative=True)
    if draw(st.booleans()):
        p.add_budget("flops", min=float(draw(st.integers(0, 6))))
    if draw(st.booleans()):
        s = draw(st.sampled_from(slots))
        p.add_count_bounds(s[0], s[1], min=draw(st.integers(0, 2)), max=draw(st.integers(2, 4)))
    if draw(st.booleans()):
        s = draw(st.sampled_from(slots))
        p.add_multiple(s[0], None, draw(st.integers(1, 3)), allow_zero=draw(st.booleans()))
    if not homogeneous and n >= 3 and draw(st.booleans()):
        i, j = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
        p.add_group([p.ids[i], p.ids[j]])
    if not homogeneous and n >= 2 and draw(st.booleans()):
        i, j = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
        p.add_implication(p.ids[i], p.ids[j])
    if len(slots) >= 2 and draw(st.booleans()):
        p.add_equal_counts(slots[:2])
    if draw(st.booleans()):
        for s, idx in p.slots().items():
            steps = np.array([draw(st.integers(0, 3)) for _ in range(idx.size)], float)
            p.add_latency_table(s[0], s[1], np.concatenate([[0.5], 0.5 + np.cumsum(steps)]))
        p.add_latency_cap(draw(st.floats(0.3, 1.0)), relative=True)
    if draw(st.booleans()) and draw(st.booleans()):
        res = draw(st.sampled_from(["params", "flops"] + (["latency"] if p.latency_tables else [])))
        p.set_objective("min_resource", res, draw(st.floats(0.0, 0.9)), relative=True)
    return p


def check_against_brute(p: AllocationProblem, **kw) -> None:
    best, _ = brute(p)
    if best is None:
        with pytest.raises(InfeasibleProblemError):
            allocate(p, baselines=False, **kw)
        return
    r = allocate(p, baselines=False, **kw)
    assert r.solve.is_optimal
    assert r.keep is not None and p.violations(r.keep) == []
    assert p.objective_of(r.keep) == pytest.approx(best, rel=1e-6, abs=1e-6)
    assert r.solve.objective == pytest.approx(best, rel=1e-6, abs=1e-6)


@SLOW_OK
@given(problems())
def test_structure_formulation_equals_brute_force(p):
    check_against_brute(p, formulation="structure")


@SLOW_OK
@given(problems())
def test_auto_formulation_equals_brute_force(p):
    check_against_brute(p, formulation="auto")


@SLOW_OK
@given(problems(homogeneous=True))
def test_width_formulation_equals_brute_force(p):
    check_against_brute(p, formulation="width")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
@pytest.mark.parametrize("backend", ["scip", "cpsat"])
def test_other_backends_equal_brute_force(backend, p):
    check_against_brute(p, backend=backend)


@settings(max_examples=25, deadline=None)
@given(problems(), st.floats(0.2, 0.9))
def test_larger_budget_never_lowers_the_optimum(p, frac):
    p.set_objective("max_importance")
    p.budgets = []
    lo = p.dense_total("params") * frac
    pts = pareto_front(p, "params", [lo, lo * 1.1, p.dense_total("params")], relative=False)
    objs = [pt.objective for pt in pts]
    feas = [o for o in objs if o is not None]
    assert all(b >= a - 1e-9 * max(1.0, abs(a)) for a, b in zip(feas, feas[1:]))
    # Once feasible, every larger budget stays feasible.
    first = next((i for i, o in enumerate(objs) if o is not None), len(objs))
    assert all(o is not None for o in objs[first:])


@settings(max_examples=25, deadline=None)
@given(problems(), st.floats(0.01, 1000.0))
def test_scaling_the_scores_scales_the_optimum(p, scale):
    p.set_objective("max_importance")
    best, _ = brute(p)
    if best is None:
        return
    q = AllocationProblem(p.ids, p.layer, p.kind, p.score * scale, p.costs, p.fixed_costs)
    for attr in ("budgets", "count_bounds", "multiples", "groups", "implications",
                 "equal_counts", "latency_tables", "latency_cap", "pair_costs"):
        setattr(q, attr, getattr(p, attr))
    a = allocate(p, baselines=False)
    b = allocate(q, baselines=False)
    # Solvers resolve objective differences down to ~1e-7 of the largest score
    # (their absolute dual tolerance on the objective's scale), not below.
    tol = 1e-7 * max(1.0, float(np.abs(p.score).max()))
    assert b.solve.objective == pytest.approx(a.solve.objective * scale, rel=1e-6,
                                              abs=tol * scale)
    # The scaled problem's optimal set is optimal for the original too.
    assert p.objective_of(b.keep) == pytest.approx(a.solve.objective, rel=1e-6, abs=tol)


@pytest.mark.parametrize("suffix", [".mps", ".lp"])
def test_allocation_model_written_and_read_back_solves_the_same(tmp_path, suffix):
    from optprune.alloc.examples import llama_problem
    from optprune.alloc.formulate import formulate
    from optprune.solve import LinearModel, solve

    p = llama_problem("llama-7b")
    form = formulate(p)
    back = LinearModel.read(form.model.write(tmp_path / f"llama7b{suffix}"))
    opts = {"time_limit_s": 60, "extra": {"mip_allow_restart": False}}
    a = solve(form.model, **opts)
    b = solve(back, **opts)
    assert a.is_optimal and b.is_optimal
    assert b.objective == pytest.approx(a.objective, rel=1e-6)


def test_multiple_one_is_no_constraint():
    rng = np.random.default_rng(1)
    layer = ["a"] * 6 + ["b"] * 6
    p = AllocationProblem(None, layer, ["h"] * 12, rng.random(12),
                          {"params": rng.integers(1, 9, 12)})
    p.add_budget("params", max=0.5, relative=True)
    q = AllocationProblem(None, layer, ["h"] * 12, p.score, p.costs)
    q.add_budget("params", max=0.5, relative=True)
    q.add_multiple(None, None, 1)
    assert allocate(p, baselines=False).solve.objective == pytest.approx(
        allocate(q, baselines=False).solve.objective)


def test_baselines_are_feasible_or_flagged_and_never_beat_the_optimum():
    from optprune.alloc.examples import llama_problem

    p = llama_problem("llama-7b")
    r = allocate(p)
    assert r.solve.is_optimal
    for name, b in r.baselines.items():
        assert b.feasible == (p.violations(b.keep) == []), name
        if b.feasible:
            assert b.objective <= r.solve.objective + 1e-6 * abs(r.solve.objective), name
    pog = r.price_of_greedy()
    assert all(v is None or v >= -1e-6 for v in pog.values())


def test_infeasible_names_the_conflicting_families():
    p = AllocationProblem(None, ["a"] * 4, ["h"] * 4, np.ones(4), {"params": np.ones(4)})
    p.add_budget("params", max=1)
    p.add_count_bounds("a", "h", min=2)
    with pytest.raises(InfeasibleProblemError) as exc:
        allocate(p)
    msg = str(exc.value)
    assert "budget" in msg and "count" in msg


@pytest.mark.parametrize("kw,match", [
    (dict(score=[1.0, math.nan]), "finite"),
    (dict(costs={"params": [1, -1]}), "non-negative"),
    (dict(ids=["x", "x"]), "unique"),
    (dict(score=[1.0]), "length"),
])
def test_bad_problems_get_clear_errors(kw, match):
    args = dict(ids=["x", "y"], layer=["a", "a"], kind=["h", "h"], score=[1.0, 2.0],
                costs={"params": [1, 1]})
    args.update(kw)
    with pytest.raises(ValidationError, match=match):
        AllocationProblem(**args)


def test_bad_constraints_get_clear_errors():
    p = AllocationProblem(None, ["a"] * 3, ["h"] * 3, [1, 2, 3], {"params": [1, 1, 1]})
    with pytest.raises(ValidationError, match="resource"):
        p.add_budget("flops", max=1)
    with pytest.raises(ValidationError, match="relative"):
        p.add_budget("params", max=1.5, relative=True)
    with pytest.raises(ValidationError, match="multiple"):
        p.add_multiple("a", None, 0)
    with pytest.raises(ValidationError, match="width"):
        p.add_latency_table("a", "h", [1, 2])
    with pytest.raises(ValidationError):
        p.add_implication("a:h:0", "nope")
    with pytest.raises(ValidationError, match="formulation"):
        allocate(p, formulation="dense")


def test_infeasible_names_the_conflicting_rows():
    """HiGHS's IIS of the relaxation names the two slots' count bounds and the
    params budget; the flops budget, which plays no part, is not named."""
    from optprune.alloc.explain import explain_infeasible, iis_constraints

    p = AllocationProblem(None, ["a"] * 4 + ["b"] * 4, ["h"] * 8, np.ones(8),
                          {"params": np.ones(8), "flops": np.ones(8)})
    p.add_budget("params", max=3)
    p.add_budget("flops", max=8)
    p.add_count_bounds("a", "h", min=2)
    p.add_count_bounds("b", "h", min=2)
    rows = iis_constraints(p)
    assert len(rows) == 3
    assert any("'params'" in r for r in rows) and not any("'flops'" in r for r in rows)
    assert any("a/h (between 2 and 4" in r for r in rows)
    assert any("b/h (between 2 and 4" in r for r in rows)
    assert "irreducible infeasible" in explain_infeasible(p)
    # Removing any one of them makes the problem feasible.
    q = AllocationProblem(None, ["a"] * 4 + ["b"] * 4, ["h"] * 8, np.ones(8),
                          {"params": np.ones(8), "flops": np.ones(8)})
    q.add_budget("params", max=4).add_budget("flops", max=8)
    q.add_count_bounds("a", "h", min=2).add_count_bounds("b", "h", min=2)
    assert allocate(q).solve.is_optimal


def test_integrality_conflicts_fall_back_to_the_families():
    """Exactly 3 structures kept in multiples of 2: the relaxation is feasible
    (half of width 2 and half of width 4), so there is no IIS and the families
    whose removal resolves it are named."""
    from optprune.alloc.explain import iis_constraints

    p = AllocationProblem(None, ["a"] * 4, ["h"] * 4, np.ones(4), {"params": np.ones(4)})
    p.add_budget("params", max=3, min=3)
    p.add_multiple("a", "h", 2)
    assert iis_constraints(p) == []
    with pytest.raises(InfeasibleProblemError, match="families") as exc:
        allocate(p)
    assert "budgets" in str(exc.value) and "width multiples" in str(exc.value)
