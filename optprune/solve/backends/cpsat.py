"""OR-Tools CP-SAT. CP-SAT takes integer variables and integer coefficients only,
so the model is scaled:

* each constraint row whose coefficients are not all integers is multiplied by
  the smallest power of ten (up to 1e6) that makes them integral to 1e-9, or
  else scaled so its largest coefficient is 1e6 and rounded; its bounds are
  scaled alike and rounded inward (ceil of lower, floor of upper), which is
  exact for rows with integer coefficients over integer variables;
* the objective is multiplied by ``scale`` (a power of ten making it integral if
  one up to 1e6 does, else one that maps its largest coefficient near 1e7) and
  rounded.

``details`` reports ``objective_scale``, ``objective_rounding_error`` (the
worst-case difference between the true and the scaled objective over the
variable box: sum_j |round(c_j s) - c_j s| / s * max(|l_j|, |u_j|)), and
``max_row_rounding_error`` (largest relative change of a row coefficient). The
reported objective is the true objective of the returned point; the reported
bound is CP-SAT's bound unscaled and widened by the objective rounding error,
so it stays valid for the unscaled model.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from ...errors import ValidationError
from ..model import LinearModel
from ..result import SolveOptions, SolveResult, Termination, make_result
from .base import Backend, register

if TYPE_CHECKING:
    from ortools.sat.python import cp_model

_INT_BOX = 10**9  # infinite integer bounds are clamped here (CP-SAT needs finite domains)


def integer_scale(values: np.ndarray, max_power: int = 6, tol: float = 1e-9) -> float | None:
    """Smallest 10**k (k <= max_power) making every value integral within tol, or None."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 1.0
    for k in range(max_power + 1):
        s = 10.0**k
        v = values * s
        if np.all(np.abs(v - np.round(v)) <= tol * np.maximum(1.0, np.abs(v))):
            return s
    return None


_INT64_SAFE = 2.0**62


def _row_name(model: LinearModel, i: int) -> str:
    names = model.row_names or []
    return f"{i} ({names[i]})" if i < len(names) and names[i] else str(i)


def _check_int64(values: np.ndarray, what: str, box: np.ndarray | None = None) -> None:
    """CP-SAT keeps every coefficient, bound and partial sum of a linear expression
    in a 64-bit integer: each value and, with the columns' ``box`` (largest |x|), the
    largest |sum coef * x| must stay within 2^62."""
    big = np.flatnonzero(np.abs(values) > _INT64_SAFE)
    how = ("Rescale the problem's numbers (fewer decimals or smaller units) or use the "
           "'highs' or 'scip' backend.")
    if big.size:
        raise ValidationError(
            f"The 'cpsat' backend needs integer coefficients within +-2^62; {what} has "
            f"{values[big[0]]:.6g}. {how}")
    if box is not None:
        reach = float(np.sum(np.abs(values) * box))
        if reach > _INT64_SAFE:
            raise ValidationError(
                f"The 'cpsat' backend needs every linear expression within +-2^62; {what} "
                f"reaches {reach:.6g} (sum of |coefficient| x largest |variable|). {how}")


def scale_objective(c: np.ndarray, target: float = 1e7) -> float:
    s = integer_scale(c)
    if s is not None:
        return s
    cmax = float(np.max(np.abs(c)))
    return 10.0 ** math.floor(math.log10(target / cmax))


@register
class CpSatBackend(Backend):
    name = "cpsat"
    supports_continuous = False

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            from ortools.sat.python import cp_model  # noqa: F401
        except ImportError as exc:  # pragma: no cover
            return False, f"ortools cannot be imported ({exc}); pip install ortools"
        return True, ""

    @classmethod
    def version(cls) -> str:
        from importlib.metadata import version

        return f"ortools {version('ortools')} CP-SAT"

    def solve(self, model: LinearModel, options: SolveOptions | None = None) -> SolveResult:
        from ortools.sat.python import cp_model

        options = options or SolveOptions()
        if not model.integrality.all():
            raise ValidationError(
                f"The 'cpsat' backend needs every variable integer; the model "
                f"{model.name!r} has {model.num_cols - model.num_integer} continuous ones. "
                "Use the 'highs' or 'scip' backend for mixed-integer models."
            )
        t0 = time.perf_counter()
        n = model.num_cols
        lo = np.where(np.isfinite(model.col_lower), np.ceil(model.col_lower - 1e-9), -_INT_BOX)
        hi = np.where(np.isfinite(model.col_upper), np.floor(model.col_upper + 1e-9), _INT_BOX)
        lo, hi = lo.astype(np.int64), hi.astype(np.int64)
        details: dict = {}
        if np.any(lo > hi):
            return self._trivially_infeasible(model, options, time.perf_counter() - t0)
        cp = cp_model.CpModel()
        xs = [cp.new_int_var(int(lo[j]), int(hi[j]), f"x{j}") for j in range(n)]

        box = np.maximum(np.abs(lo), np.abs(hi)).astype(np.float64)
        max_row_err = _add_rows(cp, model, xs, box)
        scale, obj_err = _set_objective(cp, model, xs, box)
        if options.warm_start is not None:
            ws = np.round(np.asarray(options.warm_start, dtype=np.float64)).astype(np.int64)
            for j in range(n):
                cp.add_hint(xs[j], int(ws[j]))
        details.update(
            objective_scale=scale,
            objective_rounding_error=obj_err,
            max_row_rounding_error=max_row_err,
        )
        solver = cp_model.CpSolver()
        _set_parameters(solver.parameters, options)
        build = time.perf_counter() - t0
        t1 = time.perf_counter()
        status = solver.solve(cp)
        solve_time = time.perf_counter() - t1

        has = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
        term = _termination(status, options, solve_time)
        x = np.array([solver.value(v) for v in xs], dtype=np.float64) if has else None
        objective = model.objective_value(x) if x is not None else None
        bound = None
        if has or status == cp_model.UNKNOWN:
            raw = solver.best_objective_bound / scale + model.offset
            if math.isfinite(raw):
                bound = raw + obj_err if model.sense == "max" else raw - obj_err
        return make_result(
            termination=term,
            has_solution=has,
            objective=objective,
            bound=bound,
            sense=model.sense,
            rel_gap=options.rel_gap,
            build_time_s=build,
            solve_time_s=solve_time,
            nodes=int(solver.num_branches),
            backend=self.name,
            backend_version=self.version(),
            x=x,
            message=solver.status_name(status),
            details=details,
        )

    def _trivially_infeasible(self, model: LinearModel, options: SolveOptions, build: float):
        return make_result(
            termination=Termination.INFEASIBLE, has_solution=False, objective=None, bound=None,
            sense=model.sense, rel_gap=options.rel_gap, build_time_s=build, solve_time_s=0.0,
            nodes=0, backend=self.name, backend_version=self.version(), x=None,
            message="a column's integer range is empty",
        )


def _add_rows(cp: cp_model.CpModel, model: LinearModel, xs: list[cp_model.IntVar],
              box: np.ndarray) -> float:
    """Every row, scaled to integers (module docstring); returns the largest relative
    rounding change of a coefficient."""
    from ortools.sat.python import cp_model

    csr = model.A.tocsr()
    max_row_err = 0.0
    for i in range(model.num_rows):
        a, b = csr.indptr[i], csr.indptr[i + 1]
        cols, vals = csr.indices[a:b], csr.data[a:b]
        s = integer_scale(vals)
        if s is None:
            s = 1e6 / float(np.max(np.abs(vals)))
        iv = np.round(vals * s)
        if vals.size:
            err = float(np.max(np.abs(iv - vals * s) / np.maximum(np.abs(vals * s), 1e-12)))
            max_row_err = max(max_row_err, err)
        rl, ru = model.row_lower[i] * s, model.row_upper[i] * s
        _check_int64(np.concatenate([iv, [rl if np.isfinite(rl) else 0.0,
                                          ru if np.isfinite(ru) else 0.0]]),
                     f"row {_row_name(model, i)} scaled by {s:g}")
        _check_int64(iv, f"row {_row_name(model, i)} scaled by {s:g}", box[cols])
        lb = int(math.ceil(rl - 1e-9)) if np.isfinite(rl) else cp_model.INT_MIN
        ub = int(math.floor(ru + 1e-9)) if np.isfinite(ru) else cp_model.INT_MAX
        expr = cp_model.LinearExpr.weighted_sum([xs[j] for j in cols], iv.astype(np.int64).tolist())
        cp.add_linear_constraint(expr, lb, ub)
    return max_row_err


def _set_objective(cp: cp_model.CpModel, model: LinearModel, xs: list[cp_model.IntVar],
                   box: np.ndarray) -> tuple[float, float]:
    """The objective scaled to integers; returns (scale, worst-case rounding error)."""
    from ortools.sat.python import cp_model

    c = model.c
    scale = scale_objective(c) if np.any(c) else 1.0
    ic = np.round(c * scale)
    _check_int64(ic, f"the objective scaled by {scale:g}", box)
    obj_err = float(np.sum(np.abs(ic - c * scale) / scale * box))
    nz = np.flatnonzero(ic)
    obj = cp_model.LinearExpr.weighted_sum([xs[j] for j in nz], ic[nz].astype(np.int64).tolist())
    if model.sense == "max":
        cp.maximize(obj)
    else:
        cp.minimize(obj)
    return scale, obj_err


def _set_parameters(p: cp_model.cmh.SatParameters, options: SolveOptions) -> None:
    if options.time_limit_s is not None:
        p.max_time_in_seconds = float(options.time_limit_s)
    p.relative_gap_limit = float(options.rel_gap)
    p.random_seed = int(options.seed)
    p.log_search_progress = bool(options.log)
    if options.threads is not None:
        p.num_workers = int(options.threads)
    for k, v in options.extra.items():
        setattr(p, k, v)


def _termination(status: cp_model.CpSolverStatus, options: SolveOptions, solve_time: float
                 ) -> Termination:
    from ortools.sat.python import cp_model

    if status == cp_model.OPTIMAL:
        return Termination.OPTIMAL
    if status == cp_model.INFEASIBLE:
        return Termination.INFEASIBLE
    if status == cp_model.MODEL_INVALID:
        return Termination.ERROR
    if status in (cp_model.FEASIBLE, cp_model.UNKNOWN):
        limited = options.time_limit_s is not None and solve_time >= 0.95 * options.time_limit_s
        return Termination.TIME_LIMIT if limited else Termination.OTHER
    return Termination.ERROR
