"""The subset selection: exact on both backends (== brute force), errors on bad input."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optprune.errors import InfeasibleProblemError, ValidationError
from optprune.sprint.subset import (SubsetProblem, brute_force, build_milp, greedy,
                                    solve_cpsat, solve_milp, solve_subset)


def _problem(seed, c=8, n=3, lam=0.8, budget=True, grid=None, signed=False):
    rng = np.random.default_rng(seed)
    p = rng.random(c)
    d = rng.random((c, c)) - (0.5 if signed else 0.0)
    d = (d + d.T) / 2
    if grid:  # values on a 1/grid lattice: CP-SAT's integer scaling is then exact
        p = np.round(p * grid) / grid
        d = np.round(d * grid) / grid
    costs = rng.integers(10, 20, c)
    b = float(np.sort(costs)[:n].sum() + 8) if budget else None
    return SubsetProblem(p, d, n, lam, costs, b)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(2, 9), n=st.integers(1, 5),
       lam=st.floats(0.0, 3.0), budget=st.booleans(), strengthen=st.booleans())
def test_highs_milp_equals_brute_force(seed, c, n, lam, budget, strengthen):
    n = min(n, c)
    pr = _problem(seed, c, n, lam, budget)
    best = brute_force(pr)
    got = solve_milp(pr, "highs", strengthen=strengthen)
    assert got.optimal
    assert pr.feasible(got.selected)
    assert got.objective == pytest.approx(best.objective, abs=1e-7)
    assert got.bound == pytest.approx(best.objective, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.integers(2, 9), n=st.integers(1, 5),
       lam=st.sampled_from([0.0, 0.5, 1.0, 2.0]), budget=st.booleans(), strengthen=st.booleans())
def test_cpsat_equals_brute_force_when_scaling_is_exact(seed, c, n, lam, budget, strengthen):
    n = min(n, c)
    # pair weight w = lam/(n-1) times a 1/100 lattice is exact at scale 1e4 iff 100 w is integral
    pr = _problem(seed, c, n, lam, budget, grid=100)
    if n > 1 and not float(100 * lam / (n - 1)).is_integer():
        pr = SubsetProblem(pr.scores, pr.dissimilarity, n, 0.0, pr.costs, pr.budget)
    best = brute_force(pr)
    got = solve_cpsat(pr, strengthen=strengthen)
    assert got.optimal and pr.feasible(got.selected)
    assert got.details["rounding_bound"] == pytest.approx(0.0, abs=1e-12)
    assert got.objective == pytest.approx(best.objective, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_cpsat_within_reported_rounding_bound_on_real_values(seed):
    pr = _problem(seed, c=9, n=4, lam=1.3)
    best = brute_force(pr)
    got = solve_cpsat(pr, scale=100.0)  # coarse on purpose
    eps = got.details["rounding_bound"]
    assert 0 < eps < 1
    assert best.objective - 2 * eps - 1e-12 <= got.objective <= best.objective + 1e-12
    assert got.bound >= best.objective - 1e-9  # the widened bound stays valid


@pytest.mark.parametrize("seed", range(4))
def test_signed_dissimilarity_uses_the_other_linearization(seed):
    pr = _problem(seed, c=8, n=4, lam=1.5, signed=True)
    best = brute_force(pr)
    for strengthen in (False, True):
        got = solve_milp(pr, strengthen=strengthen).objective
        assert got == pytest.approx(best.objective, abs=1e-7)
        got = solve_cpsat(pr, scale=1e6, strengthen=strengthen).objective
        assert got == pytest.approx(best.objective, abs=1e-4)


def test_linearization_rows_and_y_values_at_the_optimum():
    from optprune.solve import solve

    pr = _problem(1, c=6, n=3, lam=1.0)
    npairs = 15
    weak = build_milp(pr, strengthen=False)
    assert weak.num_cols == 6 + npairs and weak.num_integer == 6
    assert weak.num_rows == 2 + 2 * npairs  # choose-N, budget, two rows per pair
    strong = build_milp(pr, strengthen=True)
    assert strong.num_rows == weak.num_rows + 2 * 6  # + RLT rows of choose-N and budget
    iu, ju = np.triu_indices(6, 1)
    for model in (weak, strong):
        res = solve(model, "highs", rel_gap=1e-9)
        x = np.round(res.x[:6])
        y = res.x[6:]
        assert np.allclose(y, x[iu] * x[ju], atol=1e-7)  # y_ij = x_i x_j at the optimum
    # the RLT rows tighten the LP relaxation (never loosen it)
    relax = [solve(type(m)(**{**m.__dict__, "integrality": np.zeros(m.num_cols, bool)}),
                   "highs").objective for m in (weak, strong)]
    assert relax[1] <= relax[0] + 1e-9
    assert relax[1] >= brute_force(pr).objective - 1e-9


def test_larger_budget_and_lambda_zero_relations():
    pr = _problem(2, c=9, n=4, lam=0.0, budget=False)
    top = np.sort(np.argsort(-pr.scores)[:4])
    assert solve_milp(pr).selected == tuple(top)  # no diversity: top-N by score
    costs = pr.costs
    vals = []
    for slack in (0, 5, 10, 40):
        b = float(np.sort(costs)[:4].sum() + slack)
        q = SubsetProblem(pr.scores, pr.dissimilarity, 4, 0.7, costs, b)
        vals.append(solve_milp(q).objective)
    assert all(b >= a - 1e-9 for a, b in zip(vals, vals[1:]))  # larger budget never worse


def test_greedy_is_feasible_and_never_above_the_optimum():
    for seed in range(8):
        pr = _problem(seed, c=9, n=4, lam=2.0)
        g = greedy(pr)
        assert pr.feasible(g.selected)
        assert g.objective <= brute_force(pr).objective + 1e-12


def test_backends_through_solve_subset_agree():
    pr = _problem(5, c=10, n=5, lam=1.0, grid=100)
    vals = {b: solve_subset(pr, b).objective for b in ("highs", "cpsat", "brute")}
    assert max(vals.values()) - min(vals.values()) < 1e-7


def test_bad_input_errors():
    p = np.array([0.5, 0.2, 0.9])
    d = np.ones((3, 3))
    with pytest.raises(ValidationError, match=r"N .*must be an integer in \[1, 3\].*got 5"):
        SubsetProblem(p, d, 5)
    with pytest.raises(ValidationError, match="of shape"):
        SubsetProblem(p, np.ones((2, 2)), 2)
    with pytest.raises(ValidationError, match="symmetric"):
        SubsetProblem(p, np.triu(np.ones((3, 3))), 2)
    with pytest.raises(InfeasibleProblemError, match="budget 2 is below the cost of the 2"):
        SubsetProblem(p, d, 2, costs=[2, 3, 4], budget=2)
    with pytest.raises(ValidationError, match="finite"):
        SubsetProblem([math.nan, 1, 2], d, 1)


def test_objective_counts_each_pair_once():
    p = np.zeros(4)
    d = np.ones((4, 4))
    pr = SubsetProblem(p, d, 3, lam=2.0)
    # 3 pairs, weight lam / (N - 1) = 1
    assert pr.objective((0, 1, 2)) == pytest.approx(3.0)
    for s in itertools.combinations(range(4), 3):
        assert solve_milp(pr).objective == pytest.approx(pr.objective(s))
