"""The four backends agree on small MILPs and LPs, report limits as results,
and a model written to MPS/LP reads back to the same optimum."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp

from optprune.errors import BackendUnavailableError, ValidationError
from optprune.solve import LinearModel, ModelBuilder, SolveOptions, available_backends, solve
from optprune.solve.result import SolutionStatus, Termination, relative_gap

BACKENDS = ["highs", "cpsat", "scip", "pyomo"]


def knapsack(seed: int, n: int = 8, m: int = 2) -> LinearModel:
    rng = np.random.default_rng(seed)
    w = rng.integers(1, 20, size=(m, n)).astype(float)
    v = rng.integers(1, 30, size=n).astype(float)
    cap = w.sum(axis=1) * 0.4
    return LinearModel(c=v, A=sp.csc_matrix(w), row_lower=np.full(m, -np.inf), row_upper=cap,
                       col_lower=np.zeros(n), col_upper=np.ones(n),
                       integrality=np.ones(n, bool), sense="max", name=f"knap{seed}")


def brute_force(model: LinearModel) -> float:
    n = model.num_cols
    best = -math.inf
    A = model.A.toarray()
    for bits in itertools.product((0, 1), repeat=n):
        x = np.asarray(bits, float)
        ax = A @ x
        if np.all(ax <= model.row_upper + 1e-9) and np.all(ax >= model.row_lower - 1e-9):
            best = max(best, float(model.c @ x))
    return best


def test_every_backend_is_available_here():
    avail = available_backends()
    for name in BACKENDS:
        ok, why = avail[name]
        assert ok is True, why


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_equal_brute_force_on_knapsacks(backend, seed):
    model = knapsack(seed)
    res = solve(model, backend=backend)
    assert res.termination is Termination.OPTIMAL
    assert res.solution_status is SolutionStatus.OPTIMAL
    assert res.objective == pytest.approx(brute_force(model), abs=1e-6)
    assert res.bound >= res.objective - 1e-6  # maximization: the bound sits above
    assert res.gap <= 1e-6
    assert model.max_violation(res.x) <= 1e-6
    assert model.objective_value(res.x) == pytest.approx(res.objective, abs=1e-6)
    assert res.build_time_s >= 0 and res.solve_time_s >= 0
    assert res.backend == backend and res.backend_version


def test_fractional_coefficients_agree_and_cpsat_reports_its_scale():
    rng = np.random.default_rng(7)
    n = 9
    w = rng.uniform(0.1, 3.0, size=(1, n))
    v = rng.uniform(0.0, 1.0, size=n)
    model = LinearModel(c=v, A=w, row_lower=[-np.inf], row_upper=[w.sum() / 3],
                        col_lower=np.zeros(n), col_upper=np.ones(n),
                        integrality=np.ones(n, bool), sense="max")
    exact = brute_force(model)
    objs = {b: solve(model, backend=b).objective for b in BACKENDS}
    for b, o in objs.items():
        assert o == pytest.approx(exact, rel=1e-6), (b, objs)
    r = solve(model, backend="cpsat")
    assert r.details["objective_scale"] > 1
    assert r.details["objective_rounding_error"] >= 0
    assert r.details["max_row_rounding_error"] >= 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_infeasible_is_a_termination_not_an_exception(backend):
    model = LinearModel(c=[1, 1], A=[[1, 1]], row_lower=[3], row_upper=[np.inf],
                        col_lower=[0, 0], col_upper=[1, 1], integrality=[True, True])
    res = solve(model, backend=backend)
    assert res.termination in (Termination.INFEASIBLE, Termination.INFEASIBLE_OR_UNBOUNDED)
    assert res.solution_status is SolutionStatus.NONE
    assert res.x is None and res.objective is None


@pytest.mark.parametrize("backend", ["highs", "scip", "pyomo"])
def test_lp_with_continuous_columns(backend):
    # min -x - 2y st x + y <= 4, x + 3y <= 6, 0 <= x, y <= 3: optimum at (3, 1) -> -5
    model = LinearModel(c=[-1, -2], A=[[1, 1], [1, 3]], row_lower=[-np.inf, -np.inf],
                        row_upper=[4, 6], col_lower=[0, 0], col_upper=[3, 3],
                        integrality=[False, False])
    res = solve(model, backend=backend)
    assert res.objective == pytest.approx(-5.0, abs=1e-7)
    assert np.allclose(res.x, [3, 1], atol=1e-6)


def test_time_limit_is_a_result():
    rng = np.random.default_rng(0)
    n, m = 120, 30
    A = rng.integers(1, 100, size=(m, n)).astype(float)
    model = LinearModel(c=rng.integers(1, 100, size=n).astype(float), A=A,
                        row_lower=np.full(m, -np.inf), row_upper=A.sum(1) / 2,
                        col_lower=np.zeros(n), col_upper=np.ones(n),
                        integrality=np.ones(n, bool), sense="max")
    res = solve(model, backend="highs", time_limit_s=0.05, rel_gap=0.0)
    assert res.termination in (Termination.TIME_LIMIT, Termination.OPTIMAL)
    if res.termination is Termination.TIME_LIMIT:
        assert res.gap >= 0
        if res.has_solution:
            assert res.solution_status is SolutionStatus.FEASIBLE
            assert res.bound >= res.objective - 1e-6


def test_warm_start_is_accepted_and_result_unchanged():
    model = knapsack(3)
    plain = solve(model)
    warm = solve(model, options=SolveOptions(warm_start=np.zeros(model.num_cols)))
    assert warm.objective == pytest.approx(plain.objective)


@pytest.mark.parametrize("suffix", [".mps", ".lp"])
def test_written_model_reads_back_to_the_same_optimum(tmp_path, suffix):
    model = knapsack(5)
    model.metadata["purpose"] = "round trip"
    path = model.write(tmp_path / f"k{suffix}")
    back = LinearModel.read(path)
    assert back.num_cols == model.num_cols and back.num_rows == model.num_rows
    assert back.sense == model.sense
    assert back.metadata.get("purpose") == "round trip"
    assert solve(back).objective == pytest.approx(solve(model).objective)


def test_pyomo_round_trip_and_user_constraint():
    pyo = pytest.importorskip("pyomo.environ")
    from optprune.solve.backends.pyomo_backend import from_pyomo, solve_pyomo, to_pyomo

    model = knapsack(2)
    pm = to_pyomo(model)
    back, variables = from_pyomo(pm)
    assert len(variables) == model.num_cols
    assert solve(back).objective == pytest.approx(solve(model).objective)
    # A user's own constraint: keep at most two items.
    pm.user_cap = pyo.Constraint(expr=sum(pm.x[j] for j in pm.x) <= 2)
    _, res = solve_pyomo(pm)
    A = model.A.toarray()
    best = max(float(model.c @ x) for x in map(np.asarray, itertools.product((0, 1), repeat=8))
               if x.sum() <= 2 and np.all(A @ x <= model.row_upper + 1e-9))
    assert res["objective"] == pytest.approx(best)
    assert res["termination"] is Termination.OPTIMAL


def test_builder_assembles_rows_and_costs():
    b = ModelBuilder("t", sense="max")
    x = b.add_columns(3, upper=1, cost=[1, 2, 3], integer=True)
    b.add_rows([0, 0, 0], x, [1, 1, 1], lower=-np.inf, upper=2)
    b.set_cost(x[:1], np.array([10.0]))
    m = b.build()
    assert m.c.tolist() == [10, 2, 3]
    assert solve(m).objective == pytest.approx(13)


def test_gap_formula():
    assert relative_gap(10.0, 11.0) == pytest.approx(0.1)
    assert relative_gap(-10.0, -11.0) == pytest.approx(0.1)
    assert relative_gap(5.0, 5.0) == 0.0
    assert relative_gap(None, 1.0) == math.inf


def test_bad_input_is_named():
    with pytest.raises(ValidationError, match="columns"):
        LinearModel(c=[1, 2], A=[[1, 2, 3]], row_lower=[0], row_upper=[1],
                    col_lower=[0, 0], col_upper=[1, 1], integrality=[0, 0])
    with pytest.raises(ValidationError, match="finite"):
        LinearModel(c=[np.nan], A=[[1]], row_lower=[0], row_upper=[1],
                    col_lower=[0], col_upper=[1], integrality=[0])
    with pytest.raises(ValidationError, match="time_limit_s"):
        SolveOptions(time_limit_s=-1)
    with pytest.raises(ValidationError, match="rel_gap"):
        SolveOptions(rel_gap=2)
    with pytest.raises(BackendUnavailableError, match="expected one of"):
        solve(knapsack(0), backend="gurobi")


def test_cpsat_refuses_coefficients_beyond_64_bits_and_names_the_scale():
    """A coefficient or a whole expression that does not fit CP-SAT's 64-bit
    integers after scaling is refused with the scale named; HiGHS solves the
    objective cases."""
    fine = dict(A=[[1.0, 1.0]], row_lower=[-np.inf], row_upper=[1.0], col_lower=[0, 0],
                col_upper=[1, 1], integrality=[True, True], sense="max")
    one = LinearModel(c=[1e-6, 1e13], **fine)  # integral at scale 1e6: 1e19 > 2^62
    with pytest.raises(ValidationError, match=r"objective scaled by 1e\+06 has 1e\+19"):
        solve(one, backend="cpsat")
    assert solve(one, backend="highs").objective == pytest.approx(1e13)
    many = LinearModel(c=[3e18, 3e18], **fine)  # each fits, their sum does not
    with pytest.raises(ValidationError, match=r"objective scaled by 1 reaches 6e\+18"):
        solve(many, backend="cpsat")
    row = LinearModel(c=[1.0, 1.0], **(fine | dict(A=[[3e18, 3e18]], row_upper=[3e18])))
    with pytest.raises(ValidationError, match=r"row 0 scaled by 1 reaches"):
        solve(row, backend="cpsat")
