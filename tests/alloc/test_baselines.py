"""The vectorized baseline rules do exactly what their one-structure-at-a-time
definitions do."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optprune.alloc import AllocationProblem
from optprune.alloc.baselines import (_best_width, _best_widths, _by_score, _walk_blocks,
                                      _walk_loop, _homogeneous, descending, effective_scores,
                                      uniform)


@st.composite
def walk_problems(draw):
    n_slots = draw(st.integers(1, 4))
    layer, params, flops = [], [], []
    for i in range(n_slots):
        w = draw(st.integers(1, 6))
        layer += [f"l{i}"] * w
        if draw(st.booleans()):  # homogeneous slot
            c = float(draw(st.integers(1, 5)))
            params += [c] * w
            flops += [float(draw(st.integers(0, 3)))] * w
        else:
            params += [float(draw(st.integers(1, 5))) for _ in range(w)]
            flops += [float(draw(st.integers(0, 3))) for _ in range(w)]
    score = [draw(st.floats(-1, 5, allow_nan=False)) for _ in layer]
    p = AllocationProblem(None, layer, ["h"] * len(layer), score,
                          {"params": params, "flops": flops})
    p.add_budget("params", max=draw(st.floats(0.05, 1.0)), relative=True)
    if draw(st.booleans()):
        p.add_budget("flops", max=draw(st.floats(0.05, 1.0)), relative=True)
    if draw(st.booleans()):
        hom = _homogeneous(p)
        for t, (s, idx) in enumerate(p.slots().items()):
            if hom[t]:
                steps = [float(draw(st.integers(0, 2))) for _ in range(idx.size)]
                p.add_latency_table(s[0], s[1], np.concatenate([[1.0], 1.0 + np.cumsum(steps)]))
        if p.latency_tables:
            p.add_latency_cap(draw(st.floats(0.2, 1.0)), relative=True)
    if draw(st.booleans()):
        s = draw(st.sampled_from(list(p.slots())))
        p.add_multiple(s[0], s[1], draw(st.integers(1, 3)))
    return p


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walk_problems(), st.booleans(), st.booleans())
def test_block_walk_equals_the_sequential_walk(p, stop, by_density):
    eff = effective_scores(p)
    order = _by_score(eff)
    if by_density:
        order = order[np.argsort(-eff[order] / p.costs["params"][order], kind="stable")]
    fast = _walk_blocks(p, order, stop, _homogeneous(p))
    slow = _walk_loop(p, order, stop)
    assert np.array_equal(fast, slow)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(walk_problems())
def test_uniform_equals_its_definition(p):
    """The largest ratio (bisection) whose per-slot best widths break no max budget
    or latency cap, evaluated by the problem's own check."""
    ranked = {s: p.slot_order(s) for s in p.slots()}

    def keep_at(ratio):
        keep = np.zeros(p.n, dtype=bool)
        for s, order in ranked.items():
            keep[order[:_best_width(p, s, int(math.floor(ratio * order.size + 1e-9)))]] = True
        return keep

    def fits(keep):
        return not any((v.startswith("budget") and " max:" in v) or v.startswith("latency")
                       for v in p.violations(keep))

    lo, hi = 0.0, 1.0
    if fits(keep_at(1.0)):
        expect = keep_at(1.0)
    else:
        for _ in range(40):
            mid = (lo + hi) / 2
            if fits(keep_at(mid)):
                lo = mid
            else:
                hi = mid
        expect = keep_at(lo)
    assert np.array_equal(uniform(p), expect)
    for s in p.slots():
        table = _best_widths(p, s)
        assert [int(v) for v in table] == [_best_width(p, s, k) for k in range(table.size)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([-2.0, -0.0, 0.0, 0.5, 1.0, 3.0, float("inf")]) | st.floats(
    -1e6, 1e6, allow_nan=False), min_size=0, max_size=40))
def test_descending_is_the_stable_order(values):
    v = np.asarray(values, dtype=np.float64)
    assert np.array_equal(descending(v), np.argsort(-v, kind="stable"))
