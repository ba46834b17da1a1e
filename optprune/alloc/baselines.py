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
from .problem import AllocationProblem, Slot


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
    Without pair costs, and with latency tables only on such slots, the walk runs
    in numpy blocks (``_walk_blocks``); otherwise one structure at a time.
    """
    homogeneous = _homogeneous(p)
    table_on_mixed = any(not homogeneous[t] for t, s in enumerate(p.slots())
                         if s in p.latency_tables)
    if not p.pair_costs and not table_on_mixed:
        return _walk_blocks(p, order, stop_at_first_misfit, homogeneous)
    return _walk_loop(p, order, stop_at_first_misfit)


def _homogeneous(p: AllocationProblem) -> list[bool]:
    return [all(np.ptp(p.costs[r][idx]) == 0 for r in p.costs) for idx in p.slots().values()]


def _walk_blocks(p: AllocationProblem, order: np.ndarray, stop_at_first_misfit: bool,
                 homogeneous: list[bool]) -> np.ndarray:
    """The walk of ``_walk_loop``, a block at a time: the longest prefix of the
    remaining order whose running usage fits is kept, the structure after it does
    not fit and is skipped (closing its slot if homogeneous), and structures that
    alone exceed what is left are dropped, since what is left only shrinks. Latency
    steps are known in advance: in a homogeneous slot the j-th structure visited is
    kept only if the j - 1 before it were, so it adds lat(j) - lat(j - 1)."""
    order = np.asarray(order, dtype=np.int64)
    slot_of = np.empty(p.n, dtype=np.int64)
    slots = list(p.slots())
    for t, idx in enumerate(p.slots().values()):
        slot_of[idx] = t
    limits = [(r, hi) for r, _, hi in p.budget_limits() if math.isfinite(hi)]
    rows = [p.costs[r][order] for r, _ in limits]
    cap = [hi + 1e-9 * max(1.0, abs(hi)) for _, hi in limits]
    shrinking = True
    so = slot_of[order]
    # Rank of each structure among its slot's structures in walk order.
    # (slot numbers as int16 when they fit: numpy's stable sort is then a radix sort)
    by_slot = np.argsort(so.astype(np.int16) if len(slots) < 2 ** 15 else so, kind="stable")
    first = np.searchsorted(so[by_slot], so[by_slot])
    rank = np.empty(order.size, dtype=np.int64)
    rank[by_slot] = np.arange(order.size) - first
    if p.latency_cap is not None:
        # All tables' steps in one array; slot t's steps start at offset[t].
        diffs = [np.diff(p.latency_tables[s].table) if s in p.latency_tables
                 else np.zeros(p.slots()[s].size) for s in slots]
        offset = np.concatenate([[0], np.cumsum([d.size for d in diffs])[:-1]]).astype(np.int64)
        step = np.concatenate(diffs)[offset[so] + rank]
        lat0 = sum(float(p.latency_tables[s].table[0]) for s in slots if s in p.latency_tables)
        rows.append(step)
        cap.append(p.latency_cap - lat0 + 1e-9 * max(1.0, p.latency_cap))
        shrinking = bool(np.all(step >= 0))
    cost = np.vstack(rows) if rows else np.zeros((0, order.size))
    # Which rows each structure is checked against: the latency row only for
    # structures of slots with a table (as in the sequential walk).
    checked = np.ones(cost.shape, dtype=bool)
    if p.latency_cap is not None:
        in_table = np.isin(slot_of[order], [t for t, s in enumerate(slots)
                                            if s in p.latency_tables])
        checked[-1] = in_table
    left = np.asarray(cap, dtype=np.float64)
    closes = np.asarray(homogeneous, dtype=bool)[slot_of[order]]
    kept = np.zeros(order.size, dtype=bool)
    rest = np.arange(order.size)
    nb = len(limits)
    while rest.size:
        run = np.cumsum(cost[:, rest], axis=1)
        over = np.any((run > left[:, None]) & checked[:, rest], axis=0)
        j = int(np.argmax(over)) if over.any() else rest.size
        kept[rest[:j]] = True
        if j:
            left = left - run[:, j - 1]
        if j == rest.size or stop_at_first_misfit:
            break
        misfit, rest = rest[j], rest[j + 1:]
        if closes[misfit]:
            rest = rest[slot_of[order[rest]] != slot_of[order[misfit]]]
        rows_ = cost.shape[0] if shrinking else nb
        alone = np.any((cost[:rows_, rest] > left[:rows_, None]) & checked[:rows_, rest], axis=0)
        # A homogeneous slot closes at its first structure that cannot fit: drop its
        # members visited after that one.
        shut = alone & closes[rest]
        if shut.any():
            first_shut = np.full(len(slots), np.iinfo(np.int64).max)
            np.minimum.at(first_shut, so[rest[shut]], rank[rest[shut]])
            alone |= rank[rest] > first_shut[so[rest]]
        rest = rest[~alone]
    keep = np.zeros(p.n, dtype=bool)
    keep[order[kept]] = True
    return keep


def _walk_loop(p: AllocationProblem, order: np.ndarray, stop_at_first_misfit: bool
               ) -> np.ndarray:
    """``_walk`` one structure at a time (pair costs; tables on mixed-cost slots)."""
    slot_keys = list(p.slots())
    slot_of = np.empty(p.n, dtype=np.int64)
    for t, idx in enumerate(p.slots().values()):
        slot_of[idx] = t
    limits = [(r, hi) for r, _, hi in p.budget_limits() if math.isfinite(hi)]
    costs = [p.costs[r].tolist() for r, _ in limits]
    his = [hi + 1e-9 * max(1.0, abs(hi)) for _, hi in limits]
    used = [0.0] * len(limits)
    tables, latency, cap = _walk_latency(p, slot_keys)
    homogeneous = _homogeneous(p)
    pairs = _walk_pairs(p, [r for r, _ in limits], slot_keys)
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
        table_t = tables[t]
        if ok and table_t is not None:
            k = count[t]
            dl = table_t[k + 1] - table_t[k]
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


def _walk_latency(p: AllocationProblem, slot_keys: list[Slot]
                  ) -> tuple[list[list[float] | None], float, float | None]:
    """(each slot's latency table or None, the latency of empty slots, the cap with
    its tolerance); no tables without a cap."""
    cap = p.latency_cap
    tables: list[list[float] | None] = [None] * len(slot_keys)
    latency = 0.0
    if cap is not None:
        for t, s in enumerate(slot_keys):
            if s in p.latency_tables:
                table = p.latency_tables[s].table.tolist()
                tables[t] = table
                latency += table[0]
        cap = cap + 1e-9 * max(1.0, cap)
    return tables, latency, cap


def _walk_pairs(p: AllocationProblem, resources: list[str], slot_keys: list[Slot]
                ) -> list[list[tuple[int, int, float, bool]]]:
    """Per slot t, its pair costs as (resource row, other slot, coef, t is both):
    adding one structure to slot t raises coef * k_other (k_other only grows, so a
    homogeneous slot's misfit still closes it)."""
    res_index = {r: j for j, r in enumerate(resources)}
    slot_index = {s: t for t, s in enumerate(slot_keys)}
    pairs: list[list[tuple[int, int, float, bool]]] = [[] for _ in slot_keys]
    for pc in p.pair_costs:
        if pc.resource in res_index:
            a, b = slot_index[pc.slot_a], slot_index[pc.slot_b]
            pairs[a].append((res_index[pc.resource], b, pc.coef, a == b))
            if a != b:
                pairs[b].append((res_index[pc.resource], a, pc.coef, False))
    return pairs


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
        kept = kept[np.argsort(-p.score[kept], kind="stable")][:k]
        out[kept] = True
    return _finish_valued(p, out)


def descending(values: np.ndarray) -> np.ndarray:
    """Indices by decreasing value, ties by index: the stable order, computed by the
    3-4x faster unstable sort when no two values tie (then both orders are the same)."""
    order = np.argsort(-values)
    v = values[order]
    if np.any(v[1:] == v[:-1]):
        order = np.argsort(-values, kind="stable")
    return order


def _by_score(eff: np.ndarray) -> np.ndarray:
    """Structures of non-negative score by decreasing score (ties by index)."""
    order = descending(eff)
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
        order = descending(dens)
        order = order[eff[order] >= 0]
    else:
        order = _by_score(eff)
    return _round_down(p, _walk(p, order, stop_at_first_misfit=False))


def uniform(p: AllocationProblem) -> np.ndarray:
    """Per slot, the first floor(ratio * width) of its order, lowered to the best
    allowed multiple (never a negative tail); the largest ratio whose widths fit
    every max budget and the latency cap (bisection, each step O(slots) from the
    slots' prefix costs)."""
    slots = list(p.slots())
    ranked = [p.slot_order(s) for s in slots]
    limits = [(r, hi) for r, _, hi in p.budget_limits() if math.isfinite(hi)]
    prefix = [np.vstack([np.concatenate([[0.0], np.cumsum(p.costs[r][o])]) for r, _ in limits])
              if limits else np.zeros((0, o.size + 1)) for o in ranked]
    # The tolerance of AllocationProblem.violations, which judges the result.
    his = np.array([hi + 1e-6 * max(1.0, abs(hi)) for _, hi in limits])
    best = [_best_widths(p, s) for s in slots]
    res_index = {r: j for j, (r, _) in enumerate(limits)}
    index = {s: t for t, s in enumerate(slots)}
    pairs = [(res_index[pc.resource], index[pc.slot_a], index[pc.slot_b], pc.coef)
             for pc in p.pair_costs if pc.resource in res_index]
    tables = [(t, p.latency_tables[s].table) for t, s in enumerate(slots)
              if s in p.latency_tables]
    cap = p.latency_cap

    def widths(ratio: float) -> np.ndarray:
        return np.array([b[int(math.floor(ratio * o.size + 1e-9))] for b, o in zip(best, ranked)])

    def fits(k: np.ndarray) -> bool:
        use = sum((pre[:, kk] for pre, kk in zip(prefix, k)), np.zeros(len(limits)))
        for j, a, b, c in pairs:
            use[j] += c * k[a] * k[b]
        if np.any(use > his):
            return False
        return cap is None or sum(tab[k[t]] for t, tab in tables) <= cap + 1e-6 * max(1.0, cap)

    lo, hi = 0.0, 1.0
    if not fits(widths(1.0)):
        for _ in range(40):
            mid = (lo + hi) / 2
            if fits(widths(mid)):
                lo = mid
            else:
                hi = mid
        hi = lo
    keep = np.zeros(p.n, dtype=bool)
    for o, k in zip(ranked, widths(hi)):
        keep[o[:k]] = True
    return keep


def _best_widths(p: AllocationProblem, s) -> np.ndarray:
    """``_best_width(p, s, k)`` for every k = 0..width: a running argmax of the
    slot's curve over multiples of its multiple (and widths its values allow),
    ties to the smaller width."""
    _, _, m, _ = p.slot_count_range(s)
    curve = p.slot_curve(s)
    ks = np.arange(curve.size)
    val = np.where((ks % m == 0) & np.isfinite(curve), curve, -np.inf)
    run = np.maximum.accumulate(val)
    prev = np.concatenate([[-np.inf], run[:-1]])
    new = np.isfinite(val) & (val > prev)
    at = np.maximum.accumulate(np.where(new, ks, -1))
    return np.where(at >= 0, at, (ks // m) * m)


RULES = {
    "topk_rounded": topk_rounded,
    "score_fill": score_fill,
    "density_greedy": density_greedy,
    "uniform": uniform,
}


# Seconds per structure one rule takes, measured at a load of 6-8 on 2 cores (1.1-1.6 s
# per rule on 10^6 unequal-cost structures, 1-1.5 s on LLaMA-70B's 2.3M).


def run_baselines(p: AllocationProblem, names: list[str] | None = None,
                  deadline: float | None = None) -> dict[str, BaselineResult]:
    """The rules named (all by default) on ``p``; a rule whose expected time would
    end after ``deadline`` (a ``time.perf_counter()`` value) is skipped, with the
    rules after it."""
    out = {}
    for name in names or list(RULES):
        if name not in RULES:
            raise ValidationError(f"Unknown baseline {name!r}; expected some of {sorted(RULES)}.")
        if deadline is not None and time.perf_counter() + 1.5e-6 * p.n > deadline:
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
