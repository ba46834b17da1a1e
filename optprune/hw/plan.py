"""Tile-aligned allocation: which heads and FFN channels to keep so that a model
runs within a cycle cap on a given systolic array (or runs fastest above an
importance floor), solved exactly by the allocation engine.

The problem (details in ``formulations/systolic.md``): structures i with scores
s_i are grouped into slots (layer, kind) of width w; slot latency is the staircase
``table[k]`` of :func:`optprune.hw.mapping.latency_model`; model latency is
``fixed + sum_slots table[k_slot]`` cycles exactly. Then

    max  sum_i s_i x_i   s.t.  fixed + sum_s table_s[k_s] <= cap * dense,  k_s = sum_{i in s} x_i

(plus any parameter budget), or  min fixed + sum_s table_s[k_s]  s.t.  sum_i s_i x_i >= floor.

Alignment: within one tread of a staircase every width costs the same cycles, so
rounding a width up to the top of its tread never costs latency. With
``align=True`` each slot whose tread tops are {0, m, 2m, ..., w} is restricted to
multiples of m (for an FFN on an R x R array, m = R; for heads of size d_h, m is
R / gcd(R, d_h)); with a latency cap as the only budget this loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ValidationError, check
from .mapping import LatencyModel, latency_model

__all__ = ["PlanResult", "plan_allocation", "aligned_multiple"]


def aligned_multiple(steps: list[int], width: int) -> int | None:
    """m when the staircase's tread tops are exactly {0, m, 2m, ..., width}, else None."""
    if len(steps) < 2:
        return None
    m = steps[1] - steps[0]
    if steps[0] != 0 or width % m or steps != list(range(0, width + 1, m)):
        return None
    return m


@dataclass(frozen=True)
class PlanResult:
    """A solved tile-aligned allocation (JSON-ready through ``to_dict``)."""

    array: str
    dataflow: str
    batch: int
    termination: str
    objective: float | None
    bound: float | None
    gap: float | None
    retained_importance: float | None
    total_importance: float
    dense_cycles: int
    cycles: int | None
    speedup: float | None
    layers: list[dict[str, Any]]
    aligned: dict[str, int]
    keep: np.ndarray | None = field(repr=False)
    solve_time_s: float = 0.0
    baselines: dict[str, Any] = field(default_factory=dict)
    baseline_keep: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self, with_keep: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("keep", "baseline_keep")}
        if with_keep and self.keep is not None:
            d["keep"] = self.keep.astype(int).tolist()
        return d


def build_problem(structures: Any, scores: np.ndarray, lm: LatencyModel, align: bool = True,
                  name: str = "systolic-plan"):
    """AllocationProblem with the latency tables of ``lm`` (and alignment multiples)."""
    from ..alloc import AllocationProblem

    costs = structures.costs()
    p = AllocationProblem(structures.ids, structures.layers, structures.kinds, scores,
                          {"params": costs["params"]},
                          fixed_costs={"params": float(structures.fixed_params)}, name=name)
    aligned: dict[str, int] = {}
    for s in lm.slots:
        p.add_latency_table(s.layer, s.kind, s.table.tolist())
        m = aligned_multiple(s.steps, s.width) if align else None
        if m is not None and m > 1:
            p.add_multiple(s.layer, s.kind, m)
            aligned[f"{s.layer}|{s.kind}"] = m
    return p, aligned


def plan_allocation(structures: Any, scores: Any, array: Any, dataflow: str = "ws",
                    batch: int = 1, latency_cap: float | None = None,
                    importance_floor: float | None = None, params_budget: float | None = None,
                    min_keep: float = 0.0, align: bool = True, backend: str = "highs",
                    time_limit_s: float | None = None, baselines: bool = True) -> PlanResult:
    """Solve the tile-aligned allocation.

    latency_cap: total model cycles at most this fraction of the dense model's.
    importance_floor: instead, minimize cycles keeping at least this fraction of the
        total score. Exactly one of the two must be given.
    params_budget: optional cap on parameters, a fraction of the dense model's.
    min_keep: every slot keeps at least this fraction of its width.
    """
    from ..alloc import allocate

    scores = np.asarray(scores, dtype=np.float64)
    check(scores.shape == (len(structures.groups),), "The 'scores'",
          f"one per structure, shape ({len(structures.groups)},)", scores.shape)
    check((latency_cap is None) != (importance_floor is None), "The plan's goal",
          "exactly one of latency_cap (fraction of dense cycles) or importance_floor",
          f"latency_cap={latency_cap}, importance_floor={importance_floor}")
    if latency_cap is not None:
        check(isinstance(latency_cap, (int, float)) and 0 < latency_cap <= 1,
              "The 'latency_cap'", "a fraction of the dense cycles in (0, 1]", latency_cap)
    if importance_floor is not None:
        check(isinstance(importance_floor, (int, float)) and 0 <= importance_floor <= 1,
              "The 'importance_floor'", "a fraction of the total score in [0, 1]", importance_floor)
    check(0 <= min_keep <= 1, "The 'min_keep'", "a fraction in [0, 1]", min_keep)
    lm = latency_model(structures, array, dataflow, batch)
    p, aligned = build_problem(structures, scores, lm, align)
    if min_keep > 0:
        p.add_count_bounds(min=min_keep, relative=True)
    if params_budget is not None:
        p.add_budget("params", max=params_budget, relative=True)
    if latency_cap is not None:
        cap_tables = latency_cap * lm.dense_cycles - lm.fixed_cycles
        if cap_tables < 0:
            raise ValidationError(
                f"The latency cap {latency_cap} x {lm.dense_cycles} dense cycles is below the "
                f"{lm.fixed_cycles} cycles of the layers no structure can shrink; raise the cap "
                f"to at least {lm.fixed_cycles / lm.dense_cycles:.4f}.")
        p.add_latency_cap(cap_tables)
    else:
        p.set_objective("min_resource", "latency", importance_floor, relative=True)
    res = allocate(p, backend=backend, time_limit_s=time_limit_s,
                   baselines=baselines and latency_cap is not None)
    keep = res.keep
    layers = []
    cycles = None
    if keep is not None:
        counts = {}
        for s in lm.slots:
            k = int(keep[p.slots()[(s.layer, s.kind)]].sum())
            counts[(s.layer, s.kind)] = k
            layers.append({"layer": s.layer, "kind": s.kind, "width": s.width, "kept": k,
                           "dense_cycles": int(s.table[-1]), "cycles": int(s.table[k]),
                           "speedup": float(s.table[-1] / s.table[k]) if s.table[k] else None,
                           "aligned_multiple": aligned.get(f"{s.layer}|{s.kind}")})
        cycles = lm.cycles(counts)
    base = {}
    for nm, b in res.baselines.items():
        base[nm] = {"retained_importance": b.objective, "feasible": b.feasible,
                    "cycles": int(round(b.usage["latency"] + lm.fixed_cycles))}
    sol = res.solve
    return PlanResult(
        array=lm.array, dataflow=lm.dataflow, batch=batch, termination=sol.termination.value,
        objective=sol.objective, bound=sol.bound,
        gap=None if sol.gap is None or not np.isfinite(sol.gap) else float(sol.gap),
        retained_importance=res.retained_importance, total_importance=res.total_importance,
        dense_cycles=lm.dense_cycles, cycles=cycles,
        speedup=(lm.dense_cycles / cycles) if cycles else None, layers=layers, aligned=aligned,
        keep=keep, solve_time_s=sol.solve_time_s, baselines=base,
        baseline_keep={nm: b.keep for nm, b in res.baselines.items()})
