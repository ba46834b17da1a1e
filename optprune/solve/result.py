"""Solve options and results, shared by every backend.

Termination says why the solver stopped; SolutionStatus says what you hold
(none < feasible < optimal). A time limit reached is a result, not an exception.

Gap, one formula for every backend:

    gap = |bound - objective| / max(|objective|, 1e-9)

0 when objective and bound are equal; ``inf`` when there is no solution or no
finite bound. (This is HiGHS's relative MIP gap, with the denominator guarded.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import Enum, IntEnum
from typing import Any

import numpy as np

from ..errors import check


class Termination(str, Enum):
    OPTIMAL = "optimal"
    TIME_LIMIT = "time_limit"
    NODE_LIMIT = "node_limit"
    SOLUTION_LIMIT = "solution_limit"
    INFEASIBLE = "infeasible"
    UNBOUNDED = "unbounded"
    INFEASIBLE_OR_UNBOUNDED = "infeasible_or_unbounded"
    INTERRUPTED = "interrupted"
    ERROR = "error"
    OTHER = "other"


class SolutionStatus(IntEnum):
    NONE = 0
    FEASIBLE = 1
    OPTIMAL = 2


@dataclass(frozen=True)
class SolveOptions:
    """Options every backend understands (each maps them to its own names).

    time_limit_s: wall-clock limit, None for none.
    rel_gap: relative gap at which a MIP counts as solved (HiGHS's default
        is 1e-4; optprune's is 1e-6 so that "optimal" means what it says). No
        absolute gap ends a solve early (HiGHS's default 1e-6 is turned off).
    threads: solver threads, None for the solver's default.
    seed: random seed for reproducible runs.
    log: print the solver's log.
    warm_start: a full primal point (length = columns) to start from, where
        the backend supports it (HiGHS setSolution, CP-SAT hints, SCIP hints).
    """

    time_limit_s: float | None = None
    rel_gap: float = 1e-6
    threads: int | None = None
    seed: int = 0
    log: bool = False
    warm_start: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.time_limit_s is not None:
            check(
                math.isfinite(self.time_limit_s) and self.time_limit_s > 0,
                "The 'time_limit_s' option", "a positive number of seconds", self.time_limit_s,
            )
        check(
            math.isfinite(self.rel_gap) and 0 <= self.rel_gap < 1,
            "The 'rel_gap' option", "in [0, 1)", self.rel_gap,
        )
        if self.threads is not None:
            check(
                isinstance(self.threads, int) and self.threads >= 1,
                "The 'threads' option", "a positive integer", self.threads,
            )


def relative_gap(objective: float | None, bound: float | None) -> float:
    if objective is None or bound is None:
        return math.inf
    if not (math.isfinite(objective) and math.isfinite(bound)):
        return math.inf
    diff = abs(bound - objective)
    if diff == 0.0:
        return 0.0
    return diff / max(abs(objective), 1e-9)


@dataclass(frozen=True)
class SolveResult:
    termination: Termination
    solution_status: SolutionStatus
    objective: float | None
    bound: float | None
    gap: float
    build_time_s: float
    solve_time_s: float
    nodes: int | None
    backend: str
    backend_version: str
    x: np.ndarray | None = field(default=None, repr=False)
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def has_solution(self) -> bool:
        return self.solution_status >= SolutionStatus.FEASIBLE

    @property
    def is_optimal(self) -> bool:
        return self.solution_status == SolutionStatus.OPTIMAL

    def to_dict(self, with_solution: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["termination"] = self.termination.value
        d["solution_status"] = self.solution_status.name.lower()
        d["gap"] = None if not math.isfinite(self.gap) else self.gap
        for k in ("objective", "bound"):
            v = d[k]
            if v is not None and not math.isfinite(v):
                d[k] = None
        if with_solution and self.x is not None:
            d["x"] = self.x.tolist()
        else:
            d.pop("x")
        return d


def make_result(
    *,
    termination: Termination,
    has_solution: bool,
    objective: float | None,
    bound: float | None,
    sense: str,
    rel_gap: float,
    build_time_s: float,
    solve_time_s: float,
    nodes: int | None,
    backend: str,
    backend_version: str,
    x: np.ndarray | None,
    message: str = "",
    details: dict[str, Any] | None = None,
) -> SolveResult:
    """Fill the fields every backend computes the same way.

    A solution is OPTIMAL when the solver proved it (termination OPTIMAL), and
    FEASIBLE otherwise. The bound is clipped so it never sits on the wrong side of
    the objective by floating noise.
    """
    if not has_solution:
        objective, x = None, None
    if objective is not None and bound is not None and math.isfinite(bound):
        if sense == "max" and bound < objective:
            bound = objective if objective - bound <= 1e-9 * max(1.0, abs(objective)) else bound
        if sense == "min" and bound > objective:
            bound = objective if bound - objective <= 1e-9 * max(1.0, abs(objective)) else bound
    gap = relative_gap(objective, bound)
    if has_solution and termination == Termination.OPTIMAL:
        status = SolutionStatus.OPTIMAL
    elif has_solution:
        status = SolutionStatus.FEASIBLE
    else:
        status = SolutionStatus.NONE
    return SolveResult(
        termination=termination,
        solution_status=status,
        objective=objective,
        bound=bound,
        gap=gap,
        build_time_s=build_time_s,
        solve_time_s=solve_time_s,
        nodes=nodes,
        backend=backend,
        backend_version=backend_version,
        x=x,
        message=message,
        details=details or {},
    )
