"""SCIP, the copy inside OR-Tools, through MathOpt.

The model goes in as a MathOpt ModelProto filled from numpy arrays (no per-variable
Python calls). MathOpt reports some failures as an AttributeError whose real cause
is in ``__context__``; ``_unwrap`` reports that cause.
"""

from __future__ import annotations

import datetime
import time

import numpy as np

from ...errors import SolverError
from ..model import LinearModel
from ..result import SolveOptions, SolveResult, Termination, make_result
from .base import Backend, register


def model_proto(model: LinearModel):
    from ortools.math_opt import model_pb2

    mp = model_pb2.ModelProto(name=model.name)
    n, m = model.num_cols, model.num_rows
    v = mp.variables
    v.ids.extend(range(n))
    v.lower_bounds.extend(model.col_lower.tolist())
    v.upper_bounds.extend(model.col_upper.tolist())
    v.integers.extend(model.integrality.tolist())
    o = mp.objective
    o.maximize = model.sense == "max"
    o.offset = float(model.offset)
    nz = np.flatnonzero(model.c)
    o.linear_coefficients.ids.extend(nz.tolist())
    o.linear_coefficients.values.extend(model.c[nz].tolist())
    lc = mp.linear_constraints
    lc.ids.extend(range(m))
    lc.lower_bounds.extend(model.row_lower.tolist())
    lc.upper_bounds.extend(model.row_upper.tolist())
    coo = model.A.tocsr().tocoo()  # CSR order: sorted by row, then column
    mat = mp.linear_constraint_matrix
    mat.row_ids.extend(coo.row.tolist())
    mat.column_ids.extend(coo.col.tolist())
    mat.coefficients.extend(coo.data.tolist())
    return mp


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, AttributeError) and exc.__context__ is not None:
        exc = exc.__context__
    return exc


@register
class ScipBackend(Backend):
    name = "scip"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            from ortools.math_opt.python import mathopt  # noqa: F401
        except ImportError as exc:  # pragma: no cover
            return False, f"ortools MathOpt cannot be imported ({exc}); pip install ortools"
        return True, ""

    @classmethod
    def version(cls) -> str:
        from importlib.metadata import version

        return f"ortools {version('ortools')} SCIP (MathOpt GSCIP)"

    def solve(self, model: LinearModel, options: SolveOptions | None = None) -> SolveResult:
        from ortools.math_opt.python import mathopt

        options = options or SolveOptions()
        t0 = time.perf_counter()
        mo = mathopt.Model.from_model_proto(model_proto(model))
        variables = [mo.get_variable(j) for j in range(model.num_cols)]
        params = mathopt.SolveParameters(
            relative_gap_tolerance=float(options.rel_gap),
            random_seed=int(options.seed),
            enable_output=bool(options.log),
        )
        if options.time_limit_s is not None:
            params.time_limit = datetime.timedelta(seconds=float(options.time_limit_s))
        details: dict = {}
        if options.threads not in (None, 1):
            details["threads_note"] = "SCIP in OR-Tools runs one thread; 'threads' ignored"
        mparams = None
        if options.warm_start is not None:
            ws = np.asarray(options.warm_start, dtype=np.float64)
            hint = mathopt.SolutionHint(variable_values=dict(zip(variables, ws.tolist())))
            mparams = mathopt.ModelSolveParameters(solution_hints=[hint])
        build = time.perf_counter() - t0
        t1 = time.perf_counter()
        try:
            kwargs = {"params": params}
            if mparams is not None:
                kwargs["model_params"] = mparams
            res = mathopt.solve(mo, mathopt.SolverType.GSCIP, **kwargs)
        except Exception as exc:  # noqa: BLE001 - report the real cause
            cause = _unwrap(exc)
            raise SolverError(f"SCIP (MathOpt) failed: {type(cause).__name__}: {cause}") from exc
        solve_time = time.perf_counter() - t1

        R = mathopt.TerminationReason
        reason = res.termination.reason
        has = res.has_primal_feasible_solution()
        if reason == R.OPTIMAL:
            term = Termination.OPTIMAL
        elif reason == R.INFEASIBLE:
            term = Termination.INFEASIBLE
        elif reason == R.UNBOUNDED:
            term = Termination.UNBOUNDED
        elif reason == R.INFEASIBLE_OR_UNBOUNDED:
            term = Termination.INFEASIBLE_OR_UNBOUNDED
        elif reason in (R.FEASIBLE, R.NO_SOLUTION_FOUND):
            lim = res.termination.limit
            term = {
                mathopt.Limit.TIME: Termination.TIME_LIMIT,
                mathopt.Limit.NODE: Termination.NODE_LIMIT,
                mathopt.Limit.SOLUTION: Termination.SOLUTION_LIMIT,
                mathopt.Limit.INTERRUPTED: Termination.INTERRUPTED,
            }.get(lim, Termination.OTHER)
        else:
            term = Termination.ERROR
        x: np.ndarray | None = None
        if has:
            vals = res.variable_values()
            x = np.array([vals[v] for v in variables], dtype=np.float64)
        bounds = res.termination.objective_bounds
        dual = float(bounds.dual_bound)
        bound = dual if np.isfinite(dual) else None
        return make_result(
            termination=term,
            has_solution=has,
            objective=model.objective_value(x) if x is not None else None,
            bound=bound,
            sense=model.sense,
            rel_gap=options.rel_gap,
            build_time_s=build,
            solve_time_s=solve_time,
            nodes=int(res.solve_stats.node_count),
            backend=self.name,
            backend_version=self.version(),
            x=x,
            message=f"{reason.name}: {res.termination.detail}".strip(": "),
            details=details,
        )
