"""Pyomo bridge: LinearModel <-> ``ConcreteModel``, and solving through any Pyomo
solver (HiGHS by default, through ``pyomo.contrib.solver``, the interface that
honours options passed to ``solve()``).

Users who want their own constraints call ``to_pyomo``, add to the ConcreteModel,
and either solve it with ``solve_pyomo`` or bring it back with ``from_pyomo``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from ...errors import ValidationError
from ..model import LinearModel
from ..result import SolveOptions, SolveResult, Termination, make_result
from .base import Backend, register


def to_pyomo(model: LinearModel) -> Any:
    """A ConcreteModel with ``x[j]`` (j = column index), rows ``rows[i]``, ``obj``."""
    import pyomo.environ as pe

    n = model.num_cols
    cm = pe.ConcreteModel(name=model.name)
    lo = [None if not math.isfinite(v) else float(v) for v in model.col_lower]
    hi = [None if not math.isfinite(v) else float(v) for v in model.col_upper]
    cm.x = pe.Var(
        range(n),
        domain=lambda _m, j: pe.Integers if model.integrality[j] else pe.Reals,
        bounds=lambda _m, j: (lo[j], hi[j]),
    )
    csr = model.A.tocsr()
    x = cm.x

    def row_rule(_m: Any, i: int) -> Any:
        a, b = csr.indptr[i], csr.indptr[i + 1]
        body = pe.quicksum(
            (float(v) * x[int(j)] for j, v in zip(csr.indices[a:b], csr.data[a:b]))
        )
        rl, ru = model.row_lower[i], model.row_upper[i]
        return (
            None if not math.isfinite(rl) else float(rl),
            body,
            None if not math.isfinite(ru) else float(ru),
        )

    cm.rows = pe.Constraint(range(model.num_rows), rule=row_rule)
    nz = np.flatnonzero(model.c)
    cm.obj = pe.Objective(
        expr=pe.quicksum((float(model.c[j]) * x[int(j)] for j in nz))
        + float(model.offset),
        sense=pe.maximize if model.sense == "max" else pe.minimize,
    )
    return cm


def from_pyomo(cm: Any, name: str | None = None) -> tuple[LinearModel, list[Any]]:
    """LinearModel of a linear ConcreteModel, and the Pyomo variables in column order.

    Only linear constraints and one active linear objective are accepted; anything
    else gets an error naming the component.
    """
    import pyomo.environ as pe
    from pyomo.repn.standard_repn import generate_standard_repn

    objs = list(cm.component_data_objects(pe.Objective, active=True))
    if len(objs) != 1:
        raise ValidationError(
            f"The Pyomo model must have exactly one active objective; got {len(objs)}."
        )
    variables: list[Any] = []
    index: dict[int, int] = {}

    def col(v: Any) -> int:
        k = id(v)  # Pyomo var data objects are unique per model; id is local to this call
        if k not in index:
            index[k] = len(variables)
            variables.append(v)
        return index[k]

    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    rl: list[float] = []
    ru: list[float] = []
    rnames: list[str] = []
    bad: list[str] = []
    for _r, con in enumerate(cm.component_data_objects(pe.Constraint, active=True)):
        repn = generate_standard_repn(con.body, quadratic=False)
        if not repn.is_linear():
            bad.append(con.name)
            continue
        i = len(rl)
        for v, a in zip(repn.linear_vars, repn.linear_coefs):
            rows.append(i)
            cols.append(col(v))
            vals.append(float(a))
        const = float(repn.constant)
        lo = pe.value(con.lower) if con.has_lb() else -np.inf
        hi = pe.value(con.upper) if con.has_ub() else np.inf
        rl.append(lo - const)
        ru.append(hi - const)
        rnames.append(con.name)
    if bad:
        raise ValidationError(
            "The Pyomo model has nonlinear constraints optprune cannot take: " + ", ".join(bad)
        )
    repn = generate_standard_repn(objs[0].expr, quadratic=False)
    if not repn.is_linear():
        raise ValidationError(f"The objective {objs[0].name!r} is not linear.")
    cobj = {col(v): float(a) for v, a in zip(repn.linear_vars, repn.linear_coefs)}
    for v in cm.component_data_objects(pe.Var, active=True):
        col(v)
    n = len(variables)
    c = np.zeros(n)
    for j, a in cobj.items():
        c[j] += a
    A = sp.csc_matrix((vals, (rows, cols)), shape=(len(rl), n))
    lb = np.array([-np.inf if v.lb is None else v.lb for v in variables], dtype=np.float64)
    ub = np.array([np.inf if v.ub is None else v.ub for v in variables], dtype=np.float64)
    integ = np.array([v.is_integer() or v.is_binary() for v in variables], dtype=bool)
    sense = "max" if objs[0].sense == pe.maximize else "min"
    lm = LinearModel(
        c=c, A=A, row_lower=np.array(rl), row_upper=np.array(ru), col_lower=lb, col_upper=ub,
        integrality=integ, sense=sense, offset=float(repn.constant),
        col_names=[v.name for v in variables], row_names=rnames,
        name=name or cm.name or "pyomo_model",
    )
    return lm, variables


_TERM = {
    "convergenceCriteriaSatisfied": Termination.OPTIMAL,
    "maxTimeLimit": Termination.TIME_LIMIT,
    "iterationLimit": Termination.OTHER,
    "objectiveLimit": Termination.OTHER,
    "minStepLength": Termination.OTHER,
    "provenInfeasible": Termination.INFEASIBLE,
    "locallyInfeasible": Termination.INFEASIBLE,
    "infeasibleOrUnbounded": Termination.INFEASIBLE_OR_UNBOUNDED,
    "unbounded": Termination.UNBOUNDED,
    "interrupted": Termination.INTERRUPTED,
    "licensingProblems": Termination.ERROR,
    "error": Termination.ERROR,
    "emptyModel": Termination.OPTIMAL,
}


def solve_pyomo(
    cm: Any, solver: str = "highs", options: SolveOptions | None = None
) -> tuple[Any, dict[str, Any]]:
    """Solve a ConcreteModel with a ``pyomo.contrib.solver`` solver; returns the
    Pyomo results and a dict of the common fields (termination, objective, bound)."""
    import pyomo.environ  # noqa: F401  (registers the solver plugins)
    from pyomo.contrib.solver.common.factory import SolverFactory

    options = options or SolveOptions()
    opt = SolverFactory(solver)
    if opt is None:
        raise ValidationError(f"Pyomo knows no solver called {solver!r}.")
    kw: dict[str, Any] = dict(
        tee=bool(options.log), load_solutions=False, raise_exception_on_nonoptimal_result=False,
        rel_gap=float(options.rel_gap), abs_gap=0.0,
    )
    if options.time_limit_s is not None:
        kw["time_limit"] = float(options.time_limit_s)
    if options.threads is not None:
        kw["threads"] = int(options.threads)
    res = opt.solve(cm, **kw)
    term = _TERM.get(res.termination_condition.name, Termination.OTHER)
    has = res.solution_status.name in ("feasible", "optimal")
    return res, {
        "termination": term,
        "has_solution": has,
        "objective": res.incumbent_objective if has else None,
        "bound": res.objective_bound,
        "version": ".".join(map(str, opt.version())) if opt.version() else "",
    }


@register
class PyomoBackend(Backend):
    name = "pyomo"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import pyomo.environ  # noqa: F401  (registers the solver plugins)
            from pyomo.contrib.solver.common.factory import SolverFactory

            if not SolverFactory("highs").available():
                return False, "Pyomo cannot find HiGHS (pip install highspy)"
        except ImportError as exc:  # pragma: no cover
            return False, f"pyomo cannot be imported ({exc}); pip install pyomo"
        return True, ""

    @classmethod
    def version(cls) -> str:
        import pyomo.version

        return f"pyomo {pyomo.version.version} (highs)"

    def solve(self, model: LinearModel, options: SolveOptions | None = None) -> SolveResult:
        import pyomo.environ as pe

        options = options or SolveOptions()
        solver = options.extra.get("pyomo_solver", "highs")
        t0 = time.perf_counter()
        cm = to_pyomo(model)
        if options.warm_start is not None:
            for j, v in enumerate(np.asarray(options.warm_start, dtype=np.float64)):
                cm.x[j].set_value(float(v), skip_validation=True)
        build = time.perf_counter() - t0
        t1 = time.perf_counter()
        res, info = solve_pyomo(cm, solver, options)
        solve_time = time.perf_counter() - t1
        x = None
        if info["has_solution"]:
            res.solution_loader.load_vars()
            x = np.array([pe.value(cm.x[j], exception=False) or 0.0 for j in range(model.num_cols)])
        bound = info["bound"]
        if bound is not None and not math.isfinite(bound):
            bound = None
        return make_result(
            termination=info["termination"],
            has_solution=info["has_solution"],
            objective=model.objective_value(x) if x is not None else None,
            bound=bound,
            sense=model.sense,
            rel_gap=options.rel_gap,
            build_time_s=build,
            solve_time_s=solve_time,
            nodes=None,
            backend=self.name,
            backend_version=self.version(),
            x=x,
            message=str(res.termination_condition.name),
            details={"pyomo_solver": solver},
        )
