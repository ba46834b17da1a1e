"""Slot value tables and k-best masks: the exact optimum equals brute force over
every width vector for every backend, and allocate_k_best equals the brute-force
ranking of all feasible masks."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optprune.alloc import AllocationProblem, allocate, allocate_k_best
from optprune.errors import InfeasibleProblemError, ValidationError

FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BACKENDS = ["highs", "cpsat", "scip", "pyomo"]


def all_masks(p: AllocationProblem):
    """Every keep mask a width vector allows: a valued slot keeps the first k of its
    order (k = 0..width), any other slot any subset of its members."""
    per_slot = []
    for s, idx in p.slots().items():
        if s in p.slot_values:
            order = p.slot_order(s)
            per_slot.append([order[:k] for k in range(idx.size + 1)])
        else:
            per_slot.append([idx[list(b)] for r in range(idx.size + 1)
                             for b in itertools.combinations(range(idx.size), r)])
    for choice in itertools.product(*per_slot):
        keep = np.zeros(p.n, dtype=bool)
        for kept in choice:
            keep[kept] = True
        yield keep


def feasible_objectives(p: AllocationProblem) -> list[tuple[float, np.ndarray]]:
    """(objective, mask) of every feasible mask, best first."""
    sign = 1.0 if p.objective.kind == "max_importance" else -1.0
    out = [(p.objective_of(k), k) for k in all_masks(p) if not p.violations(k)]
    return sorted(out, key=lambda t: -sign * t[0])


@st.composite
def valued_problems(draw, max_slots: int = 3):
    n_slots = draw(st.integers(1, max_slots))
    layer, kind, params, flops = [], [], [], []
    valued = []
    for i in range(n_slots):
        w = draw(st.integers(1, 4))
        has_values = draw(st.booleans()) or i == 0
        if not has_values:
            w = min(w, 3)
        layer += [f"l{i}"] * w
        kind += ["h"] * w
        if has_values:  # a valued slot is solved by width: equal member costs
            params += [float(draw(st.integers(1, 6)))] * w
            flops += [float(draw(st.integers(0, 3)))] * w
        else:
            params += [float(draw(st.integers(1, 6))) for _ in range(w)]
            flops += [float(draw(st.integers(0, 3))) for _ in range(w)]
        valued.append(has_values)
    n = len(layer)
    score = [draw(st.floats(-3.0, 5.0, allow_nan=False)) for _ in range(n)]
    p = AllocationProblem(None, layer, kind, score, {"params": params, "flops": flops},
                          fixed_costs={"params": draw(st.integers(0, 4))})
    slots = list(p.slots())
    for s, has_values in zip(slots, valued):
        if not has_values:
            continue
        w = p.slots()[s].size
        vals = [draw(st.one_of(st.floats(-4.0, 8.0, allow_nan=False), st.just(-math.inf)))
                for _ in range(w + 1)]
        if all(v == -math.inf for v in vals):
            vals[draw(st.integers(0, w))] = 0.0
        order = draw(st.permutations(list(range(w))))
        use_ids = draw(st.booleans())
        order_arg = [p.ids[p.slots()[s][j]] for j in order] if use_ids else list(order)
        p.set_slot_values(s[0], s[1], vals, order_arg if draw(st.booleans()) else None)
    if draw(st.booleans()):  # bilinear cost
        a, b = draw(st.sampled_from(slots)), draw(st.sampled_from(slots))
        p.add_pair_cost("params", a, b, float(draw(st.integers(1, 3))))
    p.add_budget("params", max=draw(st.floats(0.2, 1.0)), relative=True)
    if draw(st.booleans()):
        p.add_budget("flops", min=float(draw(st.integers(0, 4))))
    if draw(st.booleans()):
        s = draw(st.sampled_from(slots))
        p.add_count_bounds(s[0], s[1], min=draw(st.integers(0, 1)), max=draw(st.integers(1, 4)))
    if draw(st.booleans()):
        s = draw(st.sampled_from(slots))
        p.add_multiple(s[0], s[1], draw(st.integers(1, 2)), allow_zero=draw(st.booleans()))
    if len(slots) >= 2 and draw(st.booleans()):
        p.add_equal_counts(slots[:2])
    if draw(st.booleans()):
        for s, idx in p.slots().items():
            steps = np.array([draw(st.integers(0, 2)) for _ in range(idx.size)], float)
            p.add_latency_table(s[0], s[1], np.concatenate([[0.5], 0.5 + np.cumsum(steps)]))
        p.add_latency_cap(draw(st.floats(0.3, 1.0)), relative=True)
    if draw(st.integers(0, 3)) == 0:
        res = draw(st.sampled_from(["params", "flops"] + (["latency"] if p.latency_tables else [])))
        floor = draw(st.floats(-5.0, 6.0))
        p.set_objective("min_resource", res, floor, relative=False)
    return p


def check(p: AllocationProblem, **kw) -> None:
    ranked = feasible_objectives(p)
    if not ranked:
        with pytest.raises(InfeasibleProblemError):
            allocate(p, baselines=False, **kw)
        return
    best = ranked[0][0]
    r = allocate(p, **kw)
    assert r.solve.is_optimal
    assert p.violations(r.keep) == []
    assert p.objective_of(r.keep) == pytest.approx(best, rel=1e-6, abs=1e-6)
    assert r.solve.objective == pytest.approx(best, rel=1e-6, abs=1e-6)
    for name, b in r.baselines.items():  # evaluated with the values; flagged if broken
        assert b.objective == pytest.approx(p.objective_of(b.keep)), name
        assert b.feasible == (p.violations(b.keep) == []), name
        if b.feasible:
            assert b.objective <= best + 1e-6 * max(1.0, abs(best)), name


@FAST
@given(valued_problems())
def test_slot_values_equal_brute_force_highs(p):
    check(p)


@FAST
@given(valued_problems())
def test_slot_values_equal_brute_force_structure_formulation(p):
    # Valued slots stay in width mode; the others get one binary per structure.
    check(p, formulation="structure")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valued_problems(max_slots=2))
@pytest.mark.parametrize("backend", ["cpsat", "scip", "pyomo"])
def test_slot_values_equal_brute_force_other_backends(backend, p):
    check(p, backend=backend)


def test_values_replace_the_scores_and_order_sets_the_kept_members():
    p = AllocationProblem(None, ["a"] * 4 + ["b"] * 3, ["h"] * 7, np.arange(7.0),
                          {"params": [2, 2, 2, 2, 3, 3, 3]})
    p.set_slot_values("a", "h", [0.0, 5.0, -math.inf, 7.0, 7.5], order=[3, 2, 1, 0])
    p.add_budget("params", max=0.5, relative=True)
    # Budget 8.5: a keeps 1 (value 5, cost 2), b keeps its best two (5 + 6, cost 6).
    for backend in BACKENDS:
        r = allocate(p, backend=backend)
        assert r.solve.objective == pytest.approx(16.0), backend
        assert r.kept_ids == ["a:h:3", "b:h:1", "b:h:2"], backend
    assert p.total_importance() == pytest.approx(7.5 + 3 + 4 + 5 + 6 - 3 - 4 - 5 - 6 + 15)
    # The width 2 is forbidden: keeping the first two of the order is a violation.
    keep = np.isin(p.ids, ["a:h:3", "a:h:2"])
    assert any("not allowed" in v for v in p.violations(keep))
    # A mask that is not a prefix of the order is a violation too.
    keep = np.isin(p.ids, ["a:h:0"])
    assert any("first 1" in v for v in p.violations(keep))


def test_min_resource_with_values_meets_the_floor():
    p = AllocationProblem(None, ["a"] * 3 + ["b"] * 3, ["h"] * 6, np.zeros(6),
                          {"params": [1, 1, 1, 2, 2, 2]})
    p.set_slot_values("a", "h", [-1.0, 2.0, 3.0, 3.5])
    p.set_slot_values("b", "h", [0.0, 1.0, 4.0, 4.0])
    p.set_objective("min_resource", "params", 5.0, relative=False)
    ranked = feasible_objectives(p)
    r = allocate(p)
    assert r.solve.objective == pytest.approx(ranked[0][0])
    assert p.retained(r.keep) >= 5.0 - 1e-9
    # Relative floor: a fraction of the dense importance (3.5 + 4.0).
    p.set_objective("min_resource", "params", 0.8, relative=True)
    assert p.importance_floor_abs() == pytest.approx(0.8 * 7.5)


def test_slot_values_round_trip_through_json(tmp_path):
    p = AllocationProblem(None, ["a"] * 3 + ["b"] * 2, ["h"] * 5, [1.0, 2, 3, 4, 5],
                          {"params": [1, 1, 1, 2, 3]})
    p.set_slot_values("a", "h", [0.0, -1.0, -math.inf, 2.5], order=["a:h:2", "a:h:0", "a:h:1"])
    p.add_budget("params", max=0.6, relative=True)
    path = p.write_json(tmp_path / "p.json")
    d = json.loads(path.read_text())
    assert d["slot_values"][0]["values"] == [0.0, -1.0, None, 2.5]
    q = AllocationProblem.read_json(path)
    assert q.to_dict() == p.to_dict()
    assert list(q.slot_order(("a", "h"))) == [2, 0, 1]
    assert allocate(q).solve.objective == pytest.approx(allocate(p).solve.objective)


@pytest.mark.parametrize("values,order,match", [
    ([0.0, 1.0], None, "length"),
    ([0.0, math.nan, 1.0, 2.0], None, "finite or -inf"),
    ([0.0, math.inf, 1.0, 2.0], None, "finite or -inf"),
    ([-math.inf] * 4, None, "at least one"),
    ([0.0, 1.0, 2.0, 3.0], [0, 0, 1], "permutation"),
    ([0.0, 1.0, 2.0, 3.0], [0, 1], "permutation"),
    ([0.0, 1.0, 2.0, 3.0], ["a:h:0", "b:h:0", "a:h:1"], "not in that slot"),
    ([0.0, 1.0, 2.0, 3.0], ["a:h:0", 1, 2], "not a mix"),
])
def test_bad_slot_values_are_named(values, order, match):
    p = AllocationProblem(None, ["a"] * 3 + ["b"], ["h"] * 4, np.ones(4), {"params": np.ones(4)})
    with pytest.raises(ValidationError, match=match):
        p.set_slot_values("a", "h", values, order)


def test_slot_values_need_width_mode():
    p = AllocationProblem(None, ["a"] * 3, ["h"] * 3, np.ones(3), {"params": [1, 2, 1]})
    with pytest.raises(ValidationError, match="costs differ"):
        p.set_slot_values("a", "h", [0, 1, 2, 3])
    q = AllocationProblem(None, ["a"] * 3 + ["b"], ["h"] * 4, np.ones(4), {"params": np.ones(4)})
    q.add_implication("a:h:0", "b:h:0")
    with pytest.raises(ValidationError, match="implication"):
        q.set_slot_values("a", "h", [0, 1, 2, 3])
    q = AllocationProblem(None, ["a"] * 3 + ["b"], ["h"] * 4, np.ones(4), {"params": np.ones(4)})
    q.set_slot_values("a", "h", [0, 1, 2, 3])
    with pytest.raises(ValidationError, match="group"):
        q.add_group(["a:h:0", "b:h:0"])
    with pytest.raises(ValidationError, match="implication"):
        q.add_implication("b:h:0", "a:h:1")
    with pytest.raises(ValidationError, match="Unknown slot"):
        q.set_slot_values("c", "h", [0, 1])


# ------------------------------------------------------------------ k-best
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valued_problems(max_slots=2), st.integers(1, 6))
def test_k_best_equals_the_brute_force_ranking(p, k):
    ranked = feasible_objectives(p)
    if not ranked:
        with pytest.raises(InfeasibleProblemError):
            allocate_k_best(p, k, baselines=False)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = allocate_k_best(p, k, rel_gap=0.0)
    expect = [o for o, _ in ranked[:k]]
    assert [r.solve.objective for r in res] == pytest.approx(expect, rel=1e-6, abs=1e-6)
    masks = {tuple(r.keep) for r in res}
    assert len(masks) == len(res)  # distinct
    for r in res:
        assert r.solve.is_optimal and p.violations(r.keep) == []
        assert p.objective_of(r.keep) == pytest.approx(r.solve.objective, abs=1e-9)
    if len(ranked) < k:
        assert len(res) == len(ranked)
        assert any(f"Only {len(ranked)} distinct" in str(w.message) for w in caught)


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_best_every_backend_on_a_structure_problem(backend):
    rng = np.random.default_rng(5)
    p = AllocationProblem(None, ["a"] * 3 + ["b"] * 3, ["h"] * 6, rng.normal(1, 2, 6).round(2),
                          {"params": rng.integers(1, 5, 6).astype(float)})
    p.add_budget("params", max=0.5, relative=True)
    ranked = feasible_objectives(p)
    res = allocate_k_best(p, 5, backend=backend, rel_gap=0.0)
    assert [r.solve.objective for r in res] == pytest.approx([o for o, _ in ranked[:5]])
    assert len({tuple(r.keep) for r in res}) == 5


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_k_best_refuses_bad_k(k):
    p = AllocationProblem(None, ["a"], ["h"], [1.0], {"params": [1.0]})
    with pytest.raises(ValidationError, match="positive integer"):
        allocate_k_best(p, k)


def test_a_floor_met_within_the_feasibility_tolerance_is_not_called_infeasible():
    # Found by the property test above: nothing can retain more than 0, the floor is
    # 3e-7; the checker (violations, tolerance 1e-6) accepts every selection, so the
    # up-front diagnosis must not refuse the problem.
    p = AllocationProblem(None, ["a"] * 3, ["neuron"] * 3, [-1.0, -2.0, 0.0],
                          {"params": np.ones(3)})
    p.set_objective("min_resource", "params", 3e-7, relative=False)
    r = allocate(p, baselines=False)
    assert r.solve.is_optimal and p.violations(r.keep) == []
    assert r.solve.objective == pytest.approx(p.objective_of(r.keep))
