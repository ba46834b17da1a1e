"""The selection rules exact allocation is measured against, on the same instance.

* ``topk_rounded``: global top-k by score under the primary budget (a global
  threshold, as Torch-Pruning's global pruning), then each slot rounded *down* to
  its width multiple (post-hoc rounding).
* ``score_fill``: walk structures by decreasing score and keep each one that still
  fits every budget (FLAP's fill by score, not score per cost); no rounding.
* ``density_greedy``: the same walk by decreasing score per unit of the primary
  resource, then rounding down to multiples.
* ``uniform``: one keep ratio for every slot (top structures of each slot by
  score), the largest ratio whose rounded widths fit every budget.

No rule keeps a structure of negative score (keeping it lowers the importance
and only costs). A slot with slot values ranks its members by the marginal value of
its curve (``values`` interpolated over the forbidden widths) and keeps the first k of
its order, k lowered to the allowed width of highest value at most k.

Each baseline reports its retained importance (with the slot values), its usage and
every constraint it breaks; none of them is guaranteed feasible (that is the point
of comparing).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ValidationError
from .problem import AllocationProblem


@dataclass(frozen=True)
class BaselineResult:
    name: str
    objective: float
    usage: dict[str, float]
    feasible: bool
    violations: list[str]
    kept: int
    keep: np.ndarray = field(repr=False)
    time_s: float = 0.0

    def to_dict(self, with_keep: bool = False) -> dict[str, Any]:
        d = {
            "objective": self.objective,
            "usage": self.usage,
            "feasible": self.feasible,
            "violations": self.violations[:20],
            "n_violations": len(self.violations),
            "kept": self.kept,
            "time_s": self.time_s,
        }
        if with_keep:
            d["keep"] = self.keep.tolist()
        return d


def _walk(p: AllocationProblem, order: np.ndarray, stop_at_first_misfit: bool) -> np.ndarray:
    """Keep structures in ``order`` while every max budget and the latency cap hold.

    A structure that does not fit is skipped (or ends the walk when
    ``stop_at_first_misfit``). In a slot whose members all cost the same, a misfit
    closes the slot: its later members cost the same and add the same latency step
    while the remaining capacity only shrinks, so none of them can fit either.
    """
    slot_keys = list(p.slots())
    slot_of = np.empty(p.n, dtype=np.int64)
    for t, idx in enumerate(p.slots().values()):
        slot_of[idx] = t
    limits = [(r, hi) for r, _, hi in p.budget_limits() if math.isfinite(hi)]
    costs = [p.costs[r].tolist() for r, _ in limits]
    his = [hi + 1e-9 * max(1.0, abs(hi)) for _, hi in limits]
    used = [0.0] * len(limits)
    cap = p.latency_cap
    tables = [None] * len(slot_keys)
    latency = 0.0
    if cap is not None:
        for t, s in enumerate(slot_keys):
            if s in p.latency_tables:
                tables[t] = p.latency_tables[s].table.tolist()
                latency += tables[t][0]
        cap = cap + 1e-9 * max(1.0, cap)
    homogeneous = [all(np.ptp(p.costs[r][idx]) == 0 for r in p.costs)
                   for idx in p.slots().values()]
    # Pair costs: adding one structure to slot t raises coef * k_other (k_other
    # only grows, so a homogeneous slot's misfit still closes it).
    res_index = {r: j for j, (r, _) in enumerate(limits)}
    slot_index = {s: t for t, s in enumerate(slot_keys)}
    pairs: list[list[tuple[int, int, float, bool]]] = [[] for _ in slot_keys]
    for pc in p.pair_costs:
        if pc.resource in res_index:
            a, b = slot_index[pc.slot_a], slot_index[pc.slot_b]
            pairs[a].append((res_index[pc.resource], b, pc.coef, a == b))
            if a != b:
                pairs[b].append((res_index[pc.resource], a, pc.coef, False))
    closed = [False] * len(slot_keys)
    count = [0] * len(slot_keys)
    slot_list = slot_of.tolist()
    kept: list[int] = []
    nres = range(len(limits))
    for i in order.tolist():
        t = slot_list[i]
        if closed[t]:
            continue
        ok = True
        add = [costs[r][i] for r in nres]
        for r, other, coef, same in pairs[t]:
            add[r] += coef * (2 * count[t] + 1 if same else count[other])
        for r in nres:
            if used[r] + add[r] > his[r]:
                ok = False
                break
        dl = 0.0
        if ok and tables[t] is not None:
            k = count[t]
            dl = tables[t][k + 1] - tables[t][k]
            ok = latency + dl <= cap
        if not ok:
            if stop_at_first_misfit:
                break
            closed[t] = homogeneous[t]
            continue
        for r in nres:
            used[r] += add[r]
        latency += dl
        count[t] += 1
        kept.append(i)
    keep = np.zeros(p.n, dtype=bool)
    keep[kept] = True
    return keep


def effective_scores(p: AllocationProblem) -> np.ndarray:
    """Per structure, the score the rules rank by: its own score, or in a slot with
    values the marginal value of its position along the slot's order (the curve
    interpolated linearly over forbidden widths, held flat beyond the allowed ones)."""
    eff = p.score.copy()
    for s in p.slot_values:
        curve = p.slot_curve(s)
        ks = np.arange(curve.size)
        ok = np.isfinite(curve)
        filled = np.interp(ks, ks[ok], curve[ok])
        eff[p.slot_order(s)] = np.diff(filled)
    return eff


def _best_width(p: AllocationProblem, s, k: int) -> int:
    """The width of highest value at most ``k`` among multiples of the slot's
    multiple (and widths its values allow); ties go to the smaller width. ``k``
    rounded down to the multiple when no width qualifies."""
    _, _, m, _ = p.slot_count_range(s)
    curve = p.slot_curve(s)
    ks = np.arange(0, k + 1, m)
    ks = ks[np.isfinite(curve[ks])]
    if ks.size == 0:
        return (k // m) * m
    return int(ks[np.argmax(curve[ks])])


def _finish_valued(p: AllocationProblem, keep: np.ndarray) -> np.ndarray:
    """A slot with values keeps the first k of its order, k its best width at
    most the count the rule chose."""
    if not p.slot_values:
        return keep
    keep = keep.copy()
    for s in p.slot_values:
        idx = p.slot_order(s)
        k = _best_width(p, s, int(keep[idx].sum()))
        keep[idx] = False
        keep[idx[:k]] = True
    return keep


def _round_down(p: AllocationProblem, keep: np.ndarray) -> np.ndarray:
    """Per slot, keep the top ``floor(count / m) * m`` of the kept structures."""
    out = np.zeros_like(keep)
    for s, idx in p.slots().items():
        _, _, m, _ = p.slot_count_range(s)
        kept = idx[keep[idx]]
        k = (kept.size // m) * m
        kept = kept[np.lexsort((kept, -p.score[kept]))][:k]
        out[kept] = True
    return _finish_valued(p, out)


def _by_score(eff: np.ndarray) -> np.ndarray:
    """Structures of non-negative score by decreasing score (ties by index)."""
    order = np.lexsort((np.arange(eff.size), -eff))
    return order[eff[order] >= 0]


def topk_rounded(p: AllocationProblem) -> np.ndarray:
    return _round_down(p, _walk(p, _by_score(effective_scores(p)), stop_at_first_misfit=True))


def score_fill(p: AllocationProblem) -> np.ndarray:
    keep = _walk(p, _by_score(effective_scores(p)), stop_at_first_misfit=False)
    return _finish_valued(p, keep)


def density_greedy(p: AllocationProblem) -> np.ndarray:
    eff = effective_scores(p)
    limits = [r for r, _, hi in p.budget_limits() if math.isfinite(hi)]
    if limits:
        cost = p.costs[limits[0]]
        with np.errstate(divide="ignore", invalid="ignore"):
            dens = np.where(cost > 0, eff / np.where(cost > 0, cost, 1.0),
                            np.where(eff >= 0, np.inf, -np.inf))
        order = np.lexsort((np.arange(p.n), -dens))
        order = order[eff[order] >= 0]
    else:
        order = _by_score(eff)
    return _round_down(p, _walk(p, order, stop_at_first_misfit=False))


def uniform(p: AllocationProblem) -> np.ndarray:
    """Per slot, the first floor(ratio * width) of its order, lowered to the best
    allowed multiple (never a negative tail)."""
    ranked = {s: p.slot_order(s) for s in p.slots()}

    def keep_at(ratio: float) -> np.ndarray:
        keep = np.zeros(p.n, dtype=bool)
        for s, order in ranked.items():
            k = int(math.floor(ratio * order.size + 1e-9))
            keep[order[:_best_width(p, s, k)]] = True
        return keep

    def fits(keep: np.ndarray) -> bool:
        return not any((v.startswith("budget") and " max:" in v) or v.startswith("latency")
                       for v in p.violations(keep))

    lo, hi = 0.0, 1.0
    if fits(keep_at(1.0)):
        return keep_at(1.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        if fits(keep_at(mid)):
            lo = mid
        else:
            hi = mid
    return keep_at(lo)


RULES = {
    "topk_rounded": topk_rounded,
    "score_fill": score_fill,
    "density_greedy": density_greedy,
    "uniform": uniform,
}


def run_baselines(p: AllocationProblem, names: list[str] | None = None,
                  deadline: float | None = None) -> dict[str, BaselineResult]:
    """The rules named (all by default) on ``p``; once ``deadline`` (a
    ``time.perf_counter()`` value) has passed, the rules not yet run are skipped."""
    out = {}
    for name in names or list(RULES):
        if name not in RULES:
            raise ValidationError(f"Unknown baseline {name!r}; expected some of {sorted(RULES)}.")
        if deadline is not None and time.perf_counter() > deadline:
            break
        t0 = time.perf_counter()
        keep = RULES[name](p)
        t = time.perf_counter() - t0
        viol = p.violations(keep)
        out[name] = BaselineResult(
            name=name,
            objective=p.objective_of(keep),
            usage=p.usage(keep),
            feasible=not viol,
            violations=viol,
            kept=int(keep.sum()),
            keep=keep,
            time_s=t,
        )
    return out
