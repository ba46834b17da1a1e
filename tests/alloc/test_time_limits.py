"""The stages of a time-limited allocation: what comes back when there is no time for
the solver, and a solve moved to a child process."""

from __future__ import annotations

import numpy as np
import pytest

from optprune.alloc import allocate
from optprune.alloc import engine
from optprune.alloc.examples import unequal_cost_problem
from optprune.alloc.relax import prefix_greedy, trivial_bound
from optprune.solve.result import SolutionStatus, Termination

from test_exact import brute  # (tests/alloc is on sys.path: rootdir-relative test modules)


@pytest.mark.parametrize("seed", range(6))
def test_prefix_greedy_is_feasible_and_never_above_the_optimum(seed):
    p = unequal_cost_problem(12, seed=seed, slot_width=4, param_budget=0.4, flop_budget=0.5)
    keep = prefix_greedy(p)
    best, _ = brute(p)
    assert keep is not None and p.violations(keep) == []
    assert 0 <= p.objective_of(keep) <= best + 1e-9


def test_prefix_greedy_declines_constraints_it_does_not_know():
    p = unequal_cost_problem(12, slot_width=4)
    p.add_count_bounds("layers.0", "unit", min=2)
    assert prefix_greedy(p) is None


def no_time_for(monkeypatch, *stages):
    real = engine._stage_costs

    def costs(problem):
        c = real(problem)
        return {**c, **{s: 1e9 for s in stages}}

    monkeypatch.setattr(engine, "_stage_costs", costs)


def test_without_time_to_formulate_the_answer_still_has_a_mask_a_bound_and_a_gap(monkeypatch):
    p = unequal_cost_problem(12, seed=3, slot_width=4, param_budget=0.4, flop_budget=0.5)
    no_time_for(monkeypatch, "quick", "formulate")
    r = allocate(p, time_limit_s=30, baselines=False)
    best, _ = brute(p)
    assert r.solve.termination is Termination.TIME_LIMIT
    assert r.solve.solution_status is SolutionStatus.FEASIBLE
    assert r.keep is not None and p.violations(r.keep) == []
    assert r.solve.objective == pytest.approx(p.objective_of(r.keep))
    assert r.solve.bound == pytest.approx(trivial_bound(p))
    assert r.solve.objective <= best + 1e-9 <= r.solve.bound + 2e-9
    assert np.isfinite(r.solve.gap)
    assert r.solve.details["completed_with"] == ["best known mask", "trivial_bound"]


def test_without_any_mask_the_answer_still_has_a_bound(monkeypatch):
    p = unequal_cost_problem(12, seed=3, slot_width=4)
    p.add_count_bounds("layers.0", "unit", min=1)  # no greedy mask for this one
    no_time_for(monkeypatch, "quick", "formulate")
    r = allocate(p, time_limit_s=30, baselines=False)
    assert r.keep is None and r.solve.objective is None
    assert r.solve.bound == pytest.approx(trivial_bound(p))
    assert r.solve.gap == np.inf


def test_a_solve_in_a_child_process_gives_the_in_process_answer(monkeypatch):
    p = unequal_cost_problem(40, seed=1, slot_width=8)
    p.add_multiple("layers.0", "unit", 2)  # no quick mask: the solver must run
    here = allocate(p, time_limit_s=60, rel_gap=0.0, baselines=False)
    monkeypatch.setattr(engine, "ISOLATE_ENTRIES", 0)
    there = allocate(p, time_limit_s=60, rel_gap=0.0, baselines=False)
    assert "isolated" not in here.solve.details
    assert there.solve.details["isolated"] is True
    assert here.solve.is_optimal and there.solve.is_optimal
    assert there.solve.objective == pytest.approx(here.solve.objective, rel=1e-9)
    assert p.violations(there.keep) == []
