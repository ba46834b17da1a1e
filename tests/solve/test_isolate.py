"""A solve in a child process: the same answer as in process, killed at its deadline,
and the child's errors raised in the caller."""

from __future__ import annotations

import time

import numpy as np
import pytest

from optprune.errors import OptpruneError
from optprune.solve import ModelBuilder, SolveOptions, solve
from optprune.solve.isolate import run_isolated
from optprune.solve.result import SolutionStatus, Termination


def knapsack(n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    b = ModelBuilder("knap", sense="max")
    x = b.add_columns(n, lower=0, upper=1, integer=True, cost=rng.integers(1, 50, n))
    w = rng.integers(1, 30, n).astype(float)
    b.add_rows(np.zeros(n, dtype=np.int64), x, w, lower=-np.inf, upper=w.sum() / 3, count=1)
    return b.build()


def test_isolated_solve_equals_the_in_process_one():
    model = knapsack()
    opts = SolveOptions(rel_gap=0.0, time_limit_s=60)
    here = solve(model, "highs", opts)
    there = run_isolated(solve, (model, "highs", opts), wall_s=60)
    assert there.is_optimal and here.is_optimal
    assert there.objective == pytest.approx(here.objective, abs=1e-9)
    assert model.max_violation(there.x) <= 1e-9
    assert model.objective_value(there.x) == pytest.approx(there.objective, abs=1e-9)
    assert there.details["isolated"] is True and "killed" not in there.details


def test_a_child_that_does_not_return_is_killed_and_reports_no_solution():
    t0 = time.perf_counter()
    res = run_isolated(time.sleep, (60,), wall_s=0.5, backend="highs")
    waited = time.perf_counter() - t0
    assert waited < 60  # killed, not waited for
    assert res.termination is Termination.TIME_LIMIT
    assert res.solution_status is SolutionStatus.NONE
    assert res.objective is None and res.bound is None and res.x is None
    assert res.details["killed"] is True


def test_an_error_in_the_child_is_raised_in_the_caller():
    with pytest.raises(OptpruneError) as here:
        solve(knapsack(5), "no-such-backend")
    with pytest.raises(type(here.value), match="no-such-backend"):
        run_isolated(solve, (knapsack(5), "no-such-backend"), wall_s=60)
