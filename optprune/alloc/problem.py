"""AllocationProblem: which structures to keep, as data (numpy only).

A structure has a stable string id, a layer, a kind (head, ffn, channel, ...),
an importance score and a cost in each named resource. A *slot* is one
(layer, kind) pair; count constraints, width multiples, latency tables and equal
counts act on slots. The math is in ``formulations/allocation.md``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, cast

import numpy as np

from ..errors import InfeasibleProblemError, ValidationError, check
from .schema import RESCALE, validate_document

FORMAT = "optprune.allocation/1"

# The usable range of scores, costs and the like (problem.schema.json states the
# same): float64 holds 15-16 significant digits, solvers compare against absolute
# tolerances, and CP-SAT needs every scaled coefficient in a 64-bit integer.
MAX_MAGNITUDE = 1e15
MAX_LIMIT = 1e18  # budgets, caps and floors: sums of many costs
MAX_MULTIPLE = 10**9


def check_range(values: Any, what: str, kind: str, limit: float = MAX_MAGNITUDE) -> None:
    """ValidationError if some finite entry of ``values`` exceeds ``limit`` in size."""
    a = np.asarray(values, dtype=np.float64).ravel()
    big = np.flatnonzero(np.isfinite(a) & (np.abs(a) > limit))
    if big.size:
        raise ValidationError(
            f"{what} must lie within [-{limit:.0e}, {limit:.0e}]; entry {big[0]} is "
            f"{a[big[0]]:.6g}. Rescale: {RESCALE[kind]}.")

Slot = tuple[str, str]


@dataclass(frozen=True)
class Budget:
    resource: str
    max: float | None = None
    min: float | None = None
    relative: bool = False


@dataclass(frozen=True)
class CountBound:
    layer: str | None
    kind: str | None
    min: float | None = None
    max: float | None = None
    relative: bool = False


@dataclass(frozen=True)
class Multiple:
    layer: str | None
    kind: str | None
    multiple: int
    allow_zero: bool = True


@dataclass(frozen=True)
class LatencyTable:
    layer: str
    kind: str
    table: np.ndarray  # table[k] = latency with k structures of the slot kept


@dataclass(frozen=True)
class SlotValues:
    """The objective contribution of a slot by its kept count: ``values[k]`` for
    k = 0..width (``-inf``: width k not allowed), the first k members of ``order``
    being the ones kept at width k. ``order`` holds positions within the slot
    (None: by score, descending)."""

    layer: str
    kind: str
    values: np.ndarray
    order: np.ndarray | None = None


@dataclass(frozen=True)
class PairCost:
    """``coef * k_a * k_b`` of ``resource``: the kept counts of two slots multiply
    (a weight matrix whose rows and columns are both pruned keeps k_out * k_in
    entries). ``slot_a == slot_b`` gives ``coef * k_a**2``."""

    resource: str
    slot_a: Slot
    slot_b: Slot
    coef: float


@dataclass(frozen=True)
class Objective:
    """``max_importance``, or ``min_resource`` of ``resource`` subject to retained
    importance >= ``importance_floor`` (a fraction of the total score when
    ``relative``)."""

    kind: str = "max_importance"
    resource: str | None = None
    importance_floor: float | None = None
    relative: bool = True

    def min_resource_terms(self) -> tuple[str, float]:
        """``(resource, importance_floor)`` of a ``min_resource`` objective (set_objective
        gives it both)."""
        if self.kind != "min_resource" or self.resource is None or self.importance_floor is None:
            raise ValidationError(
                f"A 'min_resource' objective with a resource and an importance floor is needed "
                f"here; the objective is {self}. Call set_objective('min_resource', resource, "
                "importance_floor) first.")
        return self.resource, self.importance_floor


class AllocationProblem:
    """Structures, their scores and costs, and the constraints on keeping them.

    Parameters
    ----------
    ids, layer, kind : sequences of str, one entry per structure. ``ids`` are
        unique stable strings such as ``"blocks.3.attn:head:5"``.
    score : array of float, the importance of keeping each structure.
    costs : {resource: array}, the non-negative cost of each structure.
    fixed_costs : {resource: float}, costs of the parts of the model no structure
        covers (embeddings, norms); relative budgets are fractions of
        ``fixed + sum of all structure costs`` (the dense model).
    name : a label for reports.
    """

    def __init__(
        self,
        ids: Sequence[str] | None,
        layer: Sequence[str] | np.ndarray,
        kind: Sequence[str] | np.ndarray,
        score: Sequence[float] | np.ndarray,
        costs: dict[str, Sequence[float] | np.ndarray],
        fixed_costs: dict[str, float] | None = None,
        name: str = "allocation",
    ) -> None:
        self.layer = np.asarray(layer, dtype=object)
        self.kind = np.asarray(kind, dtype=object)
        n = self.layer.size
        if ids is None:
            ids = _default_ids(self.layer, self.kind)
        self.ids = list(ids)
        self.score = np.asarray(score, dtype=np.float64).ravel()
        self.name = name
        check(n > 0, "The number of structures of AllocationProblem", "positive", n)
        for what, size in (("ids", len(self.ids)), ("kind", self.kind.size),
                           ("score", self.score.size)):
            check(size == n, f"The length of '{what}' of AllocationProblem",
                  f"{n} (one per structure, like 'layer')", size)
        bad = np.flatnonzero(~np.isfinite(self.score))
        if bad.size:
            raise ValidationError(
                f"The 'score' of AllocationProblem must be finite; {bad.size} are NaN or "
                f"infinite (first: structure {self.ids[bad[0]]!r} = {self.score[bad[0]]})."
            )
        check_range(self.score, "The 'score' of AllocationProblem", "score")
        if len(set(self.ids)) != n:
            seen, dup = set(), None
            for i in self.ids:
                if i in seen:
                    dup = i
                    break
                seen.add(i)
            raise ValidationError(f"The 'ids' of AllocationProblem must be unique; {dup!r} repeats.")
        check(isinstance(costs, dict) and len(costs) > 0, "The 'costs' of AllocationProblem",
              "a non-empty {resource: array} mapping", type(costs).__name__)
        self.costs: dict[str, np.ndarray] = {}
        for r, arr in costs.items():
            a = np.asarray(arr, dtype=np.float64).ravel()
            check(a.size == n, f"The length of costs[{r!r}] of AllocationProblem", str(n), a.size)
            if not np.all(np.isfinite(a)):
                raise ValidationError(f"The costs[{r!r}] of AllocationProblem must be finite; "
                                      "some are NaN or infinite.")
            neg = np.flatnonzero(a < 0)
            if neg.size:
                raise ValidationError(
                    f"The costs[{r!r}] of AllocationProblem must be non-negative; structure "
                    f"{self.ids[neg[0]]!r} costs {a[neg[0]]}."
                )
            check_range(a, f"The costs[{r!r}] of AllocationProblem", "cost")
            self.costs[str(r)] = a
        self.fixed_costs = {r: 0.0 for r in self.costs}
        for r, v in (fixed_costs or {}).items():
            self._check_resource(r, "fixed_costs")
            check(math.isfinite(v) and 0 <= v <= MAX_LIMIT,
                  f"fixed_costs[{r!r}] of AllocationProblem",
                  f"a non-negative number at most {MAX_LIMIT:.0e}", v)
            self.fixed_costs[r] = float(v)
        self.budgets: list[Budget] = []
        self.count_bounds: list[CountBound] = []
        self.multiples: list[Multiple] = []
        self.groups: list[list[str]] = []
        self.implications: list[tuple[str, str]] = []
        self.equal_counts: list[list[Slot]] = []
        self.latency_tables: dict[Slot, LatencyTable] = {}
        self.latency_cap: float | None = None
        self.pair_costs: list[PairCost] = []
        self.slot_values: dict[Slot, SlotValues] = {}
        self.objective = Objective()
        self._index: dict[str, int] | None = None
        self._slots: dict[Slot, np.ndarray] | None = None
        self._valued: np.ndarray | None = None
        self._orders: dict[Slot, np.ndarray] | None = None

    # ------------------------------------------------------------- structure
    @property
    def score(self) -> np.ndarray:
        return self._score

    @score.setter
    def score(self, value: np.ndarray) -> None:
        # Slot orders follow the scores; a new score array drops them.
        self._score = value
        self._orders = None

    @property
    def n(self) -> int:
        return self.layer.size

    @property
    def resources(self) -> list[str]:
        return list(self.costs)

    def ids_of(self, keep: np.ndarray) -> list[str]:
        """The ids of the structures ``keep`` selects, in index order."""
        ids: np.ndarray | None = getattr(self, "_ids_array", None)
        if ids is None or ids.size != self.n:
            ids = self._ids_array = np.asarray(self.ids, dtype=object)
        return ids[np.asarray(keep, dtype=bool)].tolist()

    def index(self, sid: str) -> int:
        if self._index is None:
            self._index = {s: i for i, s in enumerate(self.ids)}
        if sid not in self._index:
            raise ValidationError(f"Unknown structure id {sid!r} (not in the problem's ids).")
        return self._index[sid]

    def slots(self) -> dict[Slot, np.ndarray]:
        """(layer, kind) -> structure indices, in first-appearance order."""
        if self._slots is None:
            # Runs of equal (layer, kind) found in numpy; runs of one key joined.
            n = self.n
            change = np.flatnonzero((self.layer[1:] != self.layer[:-1])
                                    | (self.kind[1:] != self.kind[:-1])) + 1
            starts = np.concatenate([[0], change]).astype(np.int64)
            ends = np.concatenate([change, [n]]).astype(np.int64)
            runs: dict[Slot, list[int]] = {}
            for r, (lay, kd) in enumerate(zip(self.layer[starts].tolist(),
                                              self.kind[starts].tolist())):
                runs.setdefault((str(lay), str(kd)), []).append(r)
            out = {}
            for key, rs in runs.items():
                out[key] = (np.arange(starts[rs[0]], ends[rs[0]]) if len(rs) == 1 else
                            np.concatenate([np.arange(starts[r], ends[r]) for r in rs]))
            self._slots = out
        return self._slots

    def matching_slots(self, layer: str | None, kind: str | None) -> list[Slot]:
        out = [s for s in self.slots() if (layer is None or s[0] == layer)
               and (kind is None or s[1] == kind)]
        if not out:
            raise ValidationError(
                f"No structures match layer={layer!r}, kind={kind!r}; known layers include "
                f"{sorted({s[0] for s in self.slots()})[:5]} and kinds "
                f"{sorted({s[1] for s in self.slots()})}."
            )
        return out

    def dense_total(self, resource: str) -> float:
        sl = self.slots()
        pairs = sum(pc.coef * sl[pc.slot_a].size * sl[pc.slot_b].size
                    for pc in self.pair_costs if pc.resource == resource)
        return float(self.fixed_costs[resource] + self.costs[resource].sum() + pairs)

    def _check_resource(self, r: str, where: str) -> None:
        if r not in self.costs:
            raise ValidationError(
                f"Unknown resource {r!r} in {where}; the problem's resources are "
                f"{sorted(self.costs)}."
            )

    # ------------------------------------------------------------ constraints
    def add_budget(self, resource: str, max: float | None = None, min: float | None = None,
                   relative: bool = False) -> "AllocationProblem":
        """Usage of ``resource`` (fixed + kept) at most ``max`` / at least ``min``;
        with ``relative`` both are fractions of the dense model's total."""
        if resource == "latency":
            raise ValidationError(
                "A budget on 'latency' is a latency cap over the slots' staircase tables: "
                "in a problem file, constraints.latency.cap (with constraints.latency.tables); "
                "in Python, add_latency_table() and add_latency_cap().")
        self._check_resource(resource, "a budget")
        check(max is not None or min is not None, f"A budget on {resource!r}",
              "given a 'max' or a 'min'", None)
        for v, what in ((max, "max"), (min, "min")):
            if v is not None:
                check(math.isfinite(v) and 0 <= v <= MAX_LIMIT,
                      f"The '{what}' of the budget on {resource!r}",
                      f"a non-negative number at most {MAX_LIMIT:.0e}", v)
                if relative:
                    check(v <= 1.0 or what == "min", f"The relative '{what}' of the budget on "
                          f"{resource!r}", "in [0, 1]", v)
        self.budgets.append(Budget(resource, max, min, relative))
        return self

    def add_count_bounds(self, layer: str | None = None, kind: str | None = None,
                         min: float | None = None, max: float | None = None,
                         relative: bool = False) -> "AllocationProblem":
        """Each matching slot keeps between ``min`` and ``max`` structures
        (fractions of its width when ``relative``; min rounds up, max down)."""
        self.matching_slots(layer, kind)
        for v, what in ((min, "min"), (max, "max")):
            if v is not None:
                ok = math.isfinite(v) and v >= 0 and (not relative or v <= 1)
                check(ok, f"The '{what}' of a count bound", "in [0, 1]" if relative
                      else "a non-negative count", v)
        if min is not None and max is not None:
            check(min <= max, "A count bound's 'min'", f"at most its 'max' ({max})", min)
        self.count_bounds.append(CountBound(layer, kind, min, max, relative))
        return self

    def add_multiple(self, layer: str | None = None, kind: str | None = None, multiple: int = 1,
                     allow_zero: bool = True) -> "AllocationProblem":
        """Each matching slot keeps a multiple of ``multiple`` structures:
        {0, m, 2m, ...}, or {m, 2m, ...} when ``allow_zero`` is False."""
        self.matching_slots(layer, kind)
        check(isinstance(multiple, (int, np.integer)) and not isinstance(multiple, bool)
              and 1 <= multiple <= MAX_MULTIPLE,
              "The 'multiple' of a width multiple", f"an integer in [1, {MAX_MULTIPLE:.0e}]",
              multiple)
        self.multiples.append(Multiple(layer, kind, int(multiple), bool(allow_zero)))
        return self

    def add_group(self, ids: Iterable[str]) -> "AllocationProblem":
        """Structures kept or dropped together."""
        ids = list(ids)
        check(len(ids) >= 2, "A group", "at least two structure ids", len(ids))
        for s in ids:
            self.index(s)
        self._refuse_valued([self.index(s) for s in ids], "a group")
        self.groups.append(ids)
        return self

    def _refuse_valued(self, members: list[int], what: str) -> None:
        if not self.slot_values:
            return
        hit = self._valued_mask()[members]
        if hit.any():
            i = members[int(np.argmax(hit))]
            raise ValidationError(
                f"Structure {self.ids[i]!r} belongs to a slot with slot values, which is solved "
                f"by its width alone; {what} cannot involve it. Drop the slot values or {what}.")

    def add_implication(self, if_kept: str, then_kept: str) -> "AllocationProblem":
        """Keep ``if_kept`` only if ``then_kept`` is kept."""
        self._refuse_valued([self.index(if_kept), self.index(then_kept)], "an implication")
        self.implications.append((if_kept, then_kept))
        return self

    def add_equal_counts(self, slots: Iterable[Slot]) -> "AllocationProblem":
        """The listed (layer, kind) slots keep equal numbers of structures."""
        # A JSON list becomes a tuple; membership in self.slots() below checks it is a slot.
        listed = [cast(Slot, tuple(s)) for s in slots]
        check(len(listed) >= 2, "An equal-counts constraint", "at least two (layer, kind) slots",
              len(listed))
        for s in listed:
            if s not in self.slots():
                raise ValidationError(f"Unknown slot {s!r} in an equal-counts constraint.")
        self.equal_counts.append(listed)
        return self

    def add_pair_cost(self, resource: str, slot_a: Slot, slot_b: Slot,
                      coef: float) -> "AllocationProblem":
        """Usage of ``resource`` gains ``coef * k_a * k_b`` (k = kept counts of the two
        slots): the exact cost of a tensor pruned along two dimensions."""
        self._check_resource(resource, "a pair cost")
        # A JSON list becomes a tuple; membership in self.slots() below checks it is a slot.
        slot_a, slot_b = cast(Slot, tuple(slot_a)), cast(Slot, tuple(slot_b))
        for sl in (slot_a, slot_b):
            if sl not in self.slots():
                raise ValidationError(f"Unknown slot {sl!r} in a pair cost.")
        check(math.isfinite(coef) and 0 <= coef <= MAX_MAGNITUDE, "The 'coef' of a pair cost",
              f"a non-negative number at most {MAX_MAGNITUDE:.0e}", coef)
        self.pair_costs.append(PairCost(resource, slot_a, slot_b, float(coef)))
        return self

    def add_latency_table(self, layer: str, kind: str,
                          table: Sequence[float] | np.ndarray) -> "AllocationProblem":
        """``table[k]`` is the slot's latency with k structures kept, k = 0..width
        (any piecewise-constant function of the width)."""
        if (layer, kind) not in self.slots():
            raise ValidationError(f"Unknown slot ({layer!r}, {kind!r}) for a latency table.")
        t = np.asarray(table, dtype=np.float64).ravel()
        w = self.slots()[(layer, kind)].size
        check(t.size == w + 1, f"The latency table of ({layer!r}, {kind!r})",
              f"of length width + 1 = {w + 1}", t.size)
        check(bool(np.all(np.isfinite(t)) and np.all(t >= 0)),
              f"The latency table of ({layer!r}, {kind!r})", "finite and non-negative",
              "NaN, infinite or negative entries")
        check_range(t, f"The latency table of ({layer!r}, {kind!r})", "cost")
        self.latency_tables[(layer, kind)] = LatencyTable(layer, kind, t)
        return self

    def add_latency_cap(self, cap: float, relative: bool = False) -> "AllocationProblem":
        """Total latency (sum of the slots' tables) at most ``cap`` (a fraction of
        the dense latency when ``relative``)."""
        check(bool(self.latency_tables), "A latency cap", "preceded by latency tables",
              "no tables")
        check(math.isfinite(cap) and 0 <= cap <= MAX_LIMIT, "The latency cap",
              f"a non-negative number at most {MAX_LIMIT:.0e}", cap)
        self.latency_cap = float(cap * self.dense_latency() if relative else cap)
        return self

    def dense_latency(self) -> float:
        return float(sum(t.table[-1] for t in self.latency_tables.values()))

    def set_slot_values(self, layer: str, kind: str, values: Sequence[float] | np.ndarray,
                        order: Sequence[str] | Sequence[int] | np.ndarray | None = None
                        ) -> "AllocationProblem":
        """The slot contributes ``values[k]`` to the importance when it keeps k
        structures (k = 0..width) instead of the sum of their scores.

        values: width + 1 floats, finite or ``-inf`` (width k not allowed);
            negative values are allowed.
        order: the keep order of the slot's members, as structure ids or as
            positions within the slot; the first k are kept at width k. Default: by
            score, descending (ties by index), as the width formulation orders.
        The slot is solved in width mode, so its members must cost the same in every
        resource and no group or implication may touch them.
        """
        slot = (layer, kind)
        if slot not in self.slots():
            raise ValidationError(f"Unknown slot ({layer!r}, {kind!r}) for slot values; known "
                                  f"slots include {list(self.slots())[:5]}.")
        idx = self.slots()[slot]
        w = idx.size
        v = np.asarray(values, dtype=np.float64).ravel()
        check(v.size == w + 1, f"The slot values of ({layer!r}, {kind!r})",
              f"of length width + 1 = {w + 1} (values[k] for k = 0..{w})", v.size)
        bad = np.flatnonzero(np.isnan(v) | (v == np.inf))
        if bad.size:
            raise ValidationError(
                f"The slot values of ({layer!r}, {kind!r}) must be finite or -inf (width not "
                f"allowed); values[{bad[0]}] is {v[bad[0]]}.")
        check(bool(np.isfinite(v).any()), f"The slot values of ({layer!r}, {kind!r})",
              "finite for at least one width", "-inf everywhere")
        check_range(v, f"The slot values of ({layer!r}, {kind!r})", "score")
        pos = None
        if order is not None:
            pos = self._order_positions(slot, order)
        self._check_width_slot(slot, "slot values")
        self.slot_values[slot] = SlotValues(layer, kind, v, pos)
        self._valued = None
        self._orders = None
        return self

    def _order_positions(self, slot: Slot, order: Any) -> np.ndarray:
        idx = self.slots()[slot]
        items = list(order)
        where = f"The 'order' of the slot values of ({slot[0]!r}, {slot[1]!r})"
        check(len(items) == idx.size, where, f"a permutation of the slot's {idx.size} members",
              f"{len(items)} entries")
        if all(isinstance(o, str) for o in items):
            at = {int(g): t for t, g in enumerate(idx)}
            pos = []
            for o in items:
                g = self.index(o)
                if g not in at:
                    raise ValidationError(f"{where} names {o!r}, which is not in that slot.")
                pos.append(at[g])
            out = np.asarray(pos, dtype=np.int64)
        elif all(isinstance(o, (int, np.integer)) and not isinstance(o, bool) for o in items):
            out = np.asarray(items, dtype=np.int64)
        else:
            raise ValidationError(f"{where} must list structure ids (strings) or positions "
                                  "within the slot (integers), not a mix or other types.")
        if not np.array_equal(np.sort(out), np.arange(idx.size)):
            raise ValidationError(f"{where} must be a permutation of the slot's members "
                                  f"(positions 0..{idx.size - 1}, each once).")
        return out

    def _check_width_slot(self, slot: Slot, why: str) -> None:
        """A slot with values is solved in width mode: equal member costs, no
        group or implication touching it."""
        idx = self.slots()[slot]
        unequal = [r for r in self.costs if np.ptp(self.costs[r][idx]) != 0]
        if unequal:
            raise ValidationError(
                f"The slot ({slot[0]!r}, {slot[1]!r}) has {why}, so it is solved by its width "
                f"alone; its members must cost the same, but their {unequal[0]!r} costs differ. "
                "Give its members equal costs or drop the slot values.")
        members = set(idx.tolist())
        touching = [" = ".join(g) for g in self.groups if members & {self.index(x) for x in g}]
        touching += [f"{a} -> {b}" for a, b in self.implications
                     if self.index(a) in members or self.index(b) in members]
        if touching:
            raise ValidationError(
                f"The slot ({slot[0]!r}, {slot[1]!r}) has {why}, so it is solved by its width "
                f"alone; no group or implication may touch its members, but "
                f"{touching[0]!r} does. Drop that constraint or the slot values.")

    def slot_order(self, slot: Slot) -> np.ndarray:
        """The slot's members (structure indices) in keep order: the first k are
        kept at width k in width mode. Slot values' own order, else by score
        descending (ties by index)."""
        if self._orders is None:
            self._orders = {}
        if slot not in self._orders:
            idx = self.slots()[slot]
            sv = self.slot_values.get(slot)
            self._orders[slot] = (idx[sv.order] if sv is not None and sv.order is not None
                                  else idx[np.argsort(-self.score[idx], kind="stable")])
        return self._orders[slot]

    def slot_curve(self, slot: Slot) -> np.ndarray:
        """Importance of the slot by kept count k = 0..width along ``slot_order``:
        its slot values, else the prefix sums of its members' sorted scores."""
        sv = self.slot_values.get(slot)
        if sv is not None:
            return sv.values
        return np.concatenate([[0.0], np.cumsum(self.score[self.slot_order(slot)])])

    def _valued_mask(self) -> np.ndarray:
        if self._valued is None:
            m = np.zeros(self.n, dtype=bool)
            for s in self.slot_values:
                m[self.slots()[s]] = True
            self._valued = m
        return self._valued

    def total_importance(self) -> float:
        """The importance of the dense model (every structure kept)."""
        return self.retained(np.ones(self.n, dtype=bool))

    def set_objective(self, kind: str = "max_importance", resource: str | None = None,
                      importance_floor: float | None = None, relative: bool = True
                      ) -> "AllocationProblem":
        if kind == "max_importance":
            self.objective = Objective()
            return self
        check(kind == "min_resource", "The objective kind", "'max_importance' or 'min_resource'",
              kind)
        if resource != "latency":
            self._check_resource(str(resource), "the objective")
        check(importance_floor is not None and math.isfinite(importance_floor)
              and abs(importance_floor) <= MAX_LIMIT,
              "The 'importance_floor' of a min_resource objective",
              f"a number within [-{MAX_LIMIT:.0e}, {MAX_LIMIT:.0e}] (a fraction of the dense "
              "importance when 'relative', the default)", importance_floor)
        floor = cast(float, importance_floor)  # not None: checked above
        self.objective = Objective(kind, resource, float(floor), relative)
        return self

    # -------------------------------------------------------- derived limits
    def slot_count_range(self, slot: Slot) -> tuple[int, int, int, bool]:
        """(lo, hi, multiple, allow_zero) for a slot from every count bound and
        multiple that matches it; multiples combine by least common multiple."""
        w = self.slots()[slot].size
        lo, hi, m, allow_zero = 0, w, 1, True
        for b in self.count_bounds:
            if _matches(b.layer, b.kind, slot):
                if b.min is not None:
                    lo = max(lo, math.ceil(b.min * w - 1e-9) if b.relative else math.ceil(b.min))
                if b.max is not None:
                    hi = min(hi, math.floor(b.max * w + 1e-9) if b.relative else math.floor(b.max))
        for mu in self.multiples:
            if _matches(mu.layer, mu.kind, slot):
                m = m * mu.multiple // math.gcd(m, mu.multiple)
                allow_zero = allow_zero and mu.allow_zero
        return lo, hi, m, allow_zero

    def allowed_counts(self, slot: Slot) -> np.ndarray:
        lo, hi, m, allow_zero = self.slot_count_range(slot)
        ks = np.arange(0, hi + 1, m)
        ks = ks[ks >= lo]
        if not allow_zero:
            ks = ks[ks > 0]
        sv = self.slot_values.get(slot)
        if sv is not None:
            ks = ks[np.isfinite(sv.values[ks])]
        return ks

    def budget_limits(self) -> list[tuple[str, float, float]]:
        """(resource, lo, hi) on the *structure* part of usage (fixed costs removed)."""
        out = []
        for b in self.budgets:
            total = self.dense_total(b.resource)
            fixed = self.fixed_costs[b.resource]
            hi = (b.max * total if b.relative else b.max) if b.max is not None else math.inf
            lo = (b.min * total if b.relative else b.min) if b.min is not None else -math.inf
            out.append((b.resource, lo - fixed, hi - fixed))
        return out

    def importance_floor_abs(self) -> float | None:
        """The absolute importance floor, or None unless the objective is min_resource."""
        if self.objective.kind != "min_resource":
            return None
        return self.min_resource_floor()

    def min_resource_floor(self) -> float:
        """The absolute importance floor of the min_resource objective."""
        _, floor = self.objective.min_resource_terms()
        if not self.objective.relative:
            return floor
        total = self.total_importance()
        if not math.isfinite(total):
            raise ValidationError(
                "A relative importance floor is a fraction of the dense model's importance, "
                "which is -inf here (a slot's values forbid its full width); give an absolute "
                "floor (relative: false) instead.")
        return float(floor * total)

    # ------------------------------------------------------------- checking
    def usage(self, keep: np.ndarray) -> dict[str, float]:
        keep = np.asarray(keep, dtype=bool)
        u = {r: float(self.fixed_costs[r] + self.costs[r][keep].sum()) for r in self.costs}
        if self.pair_costs:
            sl = self.slots()
            for pc in self.pair_costs:
                u[pc.resource] += pc.coef * float(keep[sl[pc.slot_a]].sum()) * float(
                    keep[sl[pc.slot_b]].sum())
        if self.latency_tables:
            u["latency"] = self.latency_of(keep)
        return u

    def latency_of(self, keep: np.ndarray) -> float:
        sl = self.slots()
        return float(sum(t.table[int(keep[sl[s]].sum())] for s, t in self.latency_tables.items()))

    def retained(self, keep: np.ndarray) -> float:
        """Kept importance: the scores of kept structures outside valued slots plus
        ``values[k]`` of each valued slot keeping k."""
        keep = np.asarray(keep, dtype=bool)
        if not self.slot_values:
            return float(self.score[keep].sum())
        total = float(self.score[keep & ~self._valued_mask()].sum())
        sl = self.slots()
        for s, sv in self.slot_values.items():
            total += float(sv.values[int(keep[sl[s]].sum())])
        return total

    def violations(self, keep: np.ndarray, tol: float = 1e-6) -> list[str]:
        """Every constraint ``keep`` breaks, in words (empty when feasible)."""
        keep = np.asarray(keep, dtype=bool)
        u = self.usage(keep)
        counts = {s: int(keep[idx].sum()) for s, idx in self.slots().items()}
        return (self._budget_violations(u, tol) + self._width_violations(keep, counts)
                + self._link_violations(keep, counts) + self._limit_violations(keep, u, tol))

    def _budget_violations(self, u: dict[str, float], tol: float) -> list[str]:
        out: list[str] = []
        for r, lo, hi in self.budget_limits():
            used = u[r] - self.fixed_costs[r]
            scale = max(1.0, abs(hi) if math.isfinite(hi) else 1.0)
            if used > hi + tol * scale:
                out.append(f"budget {r} max: uses {u[r]:.6g} > {hi + self.fixed_costs[r]:.6g}")
            if used < lo - tol * max(1.0, abs(lo)):
                out.append(f"budget {r} min: uses {u[r]:.6g} < {lo + self.fixed_costs[r]:.6g}")
        return out

    def _width_violations(self, keep: np.ndarray, counts: dict[Slot, int]) -> list[str]:
        """Count bounds, multiples and slot values."""
        out: list[str] = []
        for s in self.slots():
            lo, hi, m, allow_zero = self.slot_count_range(s)
            k = counts[s]
            if k < lo or k > hi:
                out.append(f"count {s[0]}/{s[1]}: {k} not in [{lo}, {hi}]")
            if k % m or (k == 0 and not allow_zero):
                out.append(f"multiple {s[0]}/{s[1]}: {k} not an allowed multiple of {m}")
        for s, sv in self.slot_values.items():
            k = counts[s]
            if not math.isfinite(sv.values[k]):
                out.append(f"slot values {s[0]}/{s[1]}: width {k} not allowed (value -inf)")
            if not keep[self.slot_order(s)[:k]].all():
                out.append(f"slot values {s[0]}/{s[1]}: the kept set is not the first {k} of "
                           "the slot's order")
        return out

    def _link_violations(self, keep: np.ndarray, counts: dict[Slot, int]) -> list[str]:
        """Groups, implications and equal counts."""
        out: list[str] = []
        for g in self.groups:
            vals = {bool(keep[self.index(s)]) for s in g}
            if len(vals) > 1:
                out.append(f"group {g[0]}...: partly kept")
        for a, b in self.implications:
            if keep[self.index(a)] and not keep[self.index(b)]:
                out.append(f"implication {a} -> {b} broken")
        for slots in self.equal_counts:
            ks = {counts[s] for s in slots}
            if len(ks) > 1:
                out.append(f"equal counts {slots[0]}...: counts {sorted(ks)}")
        return out

    def _limit_violations(self, keep: np.ndarray, u: dict[str, float], tol: float) -> list[str]:
        """The latency cap and the importance floor."""
        out: list[str] = []
        if self.latency_cap is not None:
            lat = u["latency"]
            if lat > self.latency_cap + tol * max(1.0, self.latency_cap):
                out.append(f"latency {lat:.6g} > cap {self.latency_cap:.6g}")
        floor = self.importance_floor_abs()
        if floor is not None and self.retained(keep) < floor - tol * max(1.0, abs(floor)):
            out.append(f"importance {self.retained(keep):.6g} < floor {floor:.6g}")
        return out

    def objective_of(self, keep: np.ndarray) -> float:
        keep = np.asarray(keep, dtype=bool)
        o = self.objective
        if o.kind == "max_importance":
            return self.retained(keep)
        return self.usage(keep)[o.min_resource_terms()[0]]

    def diagnose(self) -> None:
        """Raise InfeasibleProblemError for conflicts that can be named without a solve."""
        slots = self.slots()
        mins: dict[Slot, int] = {}
        for s in slots:
            ks = self.allowed_counts(s)
            k_lo, k_hi, m, allow_zero = self.slot_count_range(s)
            if ks.size == 0:
                raise InfeasibleProblemError(
                    f"No width is allowed for {s[0]}/{s[1]} (width {slots[s].size}): count "
                    f"bounds [{k_lo}, {k_hi}] and multiple {m}"
                    f"{'' if allow_zero else ' (zero not allowed)'}"
                    f"{' and the widths its slot values allow' if s in self.slot_values else ''}"
                    " leave no option."
                )
            mins[s] = int(ks[0])
        for (r, lo, hi), _b in zip(self.budget_limits(), self.budgets):
            # The slots partition the structures: keeping all of them costs the sum.
            dearest = float(self.costs[r].sum())
            cheapest = 0.0
            for s, idx in slots.items():
                if mins[s]:
                    c = np.partition(self.costs[r][idx], mins[s] - 1)
                    cheapest += float(c[:mins[s]].sum())
            if cheapest > hi + 1e-9 * max(1.0, abs(hi)):
                raise InfeasibleProblemError(
                    f"The minimum widths alone need {cheapest + self.fixed_costs[r]:.6g} {r}, "
                    f"but the budget allows at most {hi + self.fixed_costs[r]:.6g}: the count "
                    "bounds / width multiples conflict with the budget on "
                    f"{r!r}. Raise the budget or lower the minimum widths."
                )
            dearest += sum(pc.coef * slots[pc.slot_a].size * slots[pc.slot_b].size
                           for pc in self.pair_costs if pc.resource == r)
            if dearest < lo - 1e-9 * max(1.0, abs(lo)):
                raise InfeasibleProblemError(
                    f"Keeping every structure uses {dearest + self.fixed_costs[r]:.6g} {r}, below "
                    f"the budget's minimum {lo + self.fixed_costs[r]:.6g}."
                )
            if hi < lo:
                raise InfeasibleProblemError(f"The budgets on {r!r} have max below min.")
        if self.latency_cap is not None:
            least = sum(float(np.min(t.table[self.allowed_counts(s)]))
                        for s, t in self.latency_tables.items())
            if least > self.latency_cap + 1e-9 * max(1.0, self.latency_cap):
                raise InfeasibleProblemError(
                    f"The lowest latency the allowed widths can reach is {least:.6g}, above the "
                    f"cap {self.latency_cap:.6g}."
                )
        floor = self.importance_floor_abs()
        if floor is not None:
            best = float(np.clip(self.score[~self._valued_mask()], 0, None).sum())
            best += sum(float(np.max(sv.values[self.allowed_counts(s)]))
                        for s, sv in self.slot_values.items() if self.allowed_counts(s).size)
            # The tolerance of violations(): a floor a selection meets within it is met.
            if floor > best + 1e-6 * max(1.0, abs(floor)):
                raise InfeasibleProblemError(
                    f"The importance floor {floor:.6g} exceeds the most any selection can "
                    f"retain ({best:.6g})."
                )

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        c: dict[str, Any] = {}
        if self.budgets:
            c["budgets"] = [_drop_none(b.__dict__) for b in self.budgets]
        if self.count_bounds:
            c["count_bounds"] = [_drop_none(b.__dict__) for b in self.count_bounds]
        if self.multiples:
            c["multiples"] = [_drop_none(b.__dict__) for b in self.multiples]
        if self.groups:
            c["groups"] = self.groups
        if self.implications:
            c["implications"] = [list(p) for p in self.implications]
        if self.equal_counts:
            c["equal_counts"] = [[list(s) for s in e] for e in self.equal_counts]
        if self.latency_tables:
            c["latency"] = {
                "tables": [{"layer": t.layer, "kind": t.kind, "table": t.table.tolist()}
                           for t in self.latency_tables.values()],
                "cap": self.latency_cap,
            }
        if self.pair_costs:
            c["pair_costs"] = [{"resource": pc.resource, "slot_a": list(pc.slot_a),
                                "slot_b": list(pc.slot_b), "coef": pc.coef}
                               for pc in self.pair_costs]
        return {
            "format": FORMAT,
            "name": self.name,
            "structures": {
                "ids": self.ids,
                "layer": self.layer.tolist(),
                "kind": self.kind.tolist(),
                "score": self.score.tolist(),
                "costs": {r: _compact(a) for r, a in self.costs.items()},
            },
            "fixed_costs": self.fixed_costs,
            "constraints": c,
            "objective": _drop_none(self.objective.__dict__),
            **({"slot_values": [_slot_values_doc(sv) for sv in self.slot_values.values()]}
               if self.slot_values else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AllocationProblem":
        validate_document(d)
        s = d["structures"]
        p = cls(ids=s.get("ids"), layer=s["layer"], kind=s["kind"], score=s["score"],
                costs=s["costs"], fixed_costs=d.get("fixed_costs"), name=d.get("name", "allocation"))
        c = d.get("constraints", {})
        for pc in c.get("pair_costs", []):  # costs first: relative budgets depend on them
            p.add_pair_cost(pc["resource"], tuple(pc["slot_a"]), tuple(pc["slot_b"]), pc["coef"])
        for b in c.get("budgets", []):
            p.add_budget(b["resource"], max=b.get("max"), min=b.get("min"),
                         relative=b.get("relative", False))  # defaults: see the schema
        for b in c.get("count_bounds", []):
            p.add_count_bounds(b.get("layer"), b.get("kind"), b.get("min"), b.get("max"),
                               b.get("relative", False))
        for m in c.get("multiples", []):
            p.add_multiple(m.get("layer"), m.get("kind"), m["multiple"], m.get("allow_zero", True))
        for g in c.get("groups", []):
            p.add_group(g)
        for a, b in c.get("implications", []):
            p.add_implication(a, b)
        for e in c.get("equal_counts", []):
            p.add_equal_counts([tuple(s) for s in e])
        lat = c.get("latency")
        if lat:
            for t in lat["tables"]:
                p.add_latency_table(t["layer"], t["kind"], t["table"])
            if lat.get("cap") is not None:
                p.add_latency_cap(lat["cap"], relative=lat.get("relative", False))
        for sv in d.get("slot_values", []):
            p.set_slot_values(sv["layer"], sv["kind"],
                              [-math.inf if v is None else v for v in sv["values"]],
                              sv.get("order"))
        o = d.get("objective", {"kind": "max_importance"})
        p.set_objective(o.get("kind", "max_importance"), o.get("resource"),
                        o.get("importance_floor"), o.get("relative", True))
        return p

    def write_json(self, path: str | os.PathLike) -> Path:
        from ..solve.model import write_json_atomic

        return write_json_atomic(path, self.to_dict())

    @classmethod
    def read_json(cls, path: str | os.PathLike) -> "AllocationProblem":
        path = Path(path)
        if not path.exists():
            raise ValidationError(f"The problem file {str(path)!r} does not exist.")
        if path.is_dir():
            raise ValidationError(f"The problem file {str(path)!r} is a directory; give a JSON file.")
        try:
            d = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ValidationError(f"The problem file {str(path)!r} is not UTF-8 text ({exc.reason} "
                                  f"at byte {exc.start}); save it as UTF-8 JSON.") from exc
        except json.JSONDecodeError as exc:
            raise ValidationError(f"The problem file {str(path)!r} is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise ValidationError(f"The problem file {str(path)!r} nests arrays or objects too "
                                  "deeply to read; a problem document is a few levels deep.") from exc
        except OSError as exc:
            raise ValidationError(f"The problem file {str(path)!r} cannot be read: "
                                  f"{exc.strerror or exc}.") from exc
        return cls.from_dict(d)


def _matches(layer: str | None, kind: str | None, slot: Slot) -> bool:
    return (layer is None or slot[0] == layer) and (kind is None or slot[1] == kind)


def _default_ids(layer: np.ndarray, kind: np.ndarray) -> list[str]:
    counter: dict[tuple[str, str], int] = {}
    out = []
    for lay, kd in zip(layer, kind):
        k = counter.get((lay, kd), 0)
        counter[(lay, kd)] = k + 1
        out.append(f"{lay}:{kd}:{k}")
    return out


def _slot_values_doc(sv: SlotValues) -> dict[str, Any]:
    d: dict[str, Any] = {"layer": sv.layer, "kind": sv.kind,
                         "values": [float(v) if math.isfinite(v) else None for v in sv.values]}
    if sv.order is not None:
        d["order"] = sv.order.tolist()
    return d


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _compact(a: np.ndarray) -> list[float] | list[int]:
    if np.all(a == np.round(a)) and np.all(np.abs(a) < 2**53):
        return a.astype(np.int64).tolist()
    return a.tolist()


__all__ = ["AllocationProblem", "Budget", "CountBound", "Multiple", "LatencyTable", "Objective",
           "SlotValues", "validate_document", "FORMAT"]
