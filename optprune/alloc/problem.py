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
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import InfeasibleProblemError, ValidationError, check

FORMAT = "optprune.allocation/1"
SCHEMA_PATH = Path(__file__).with_name("problem.schema.json")

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
        layer: Sequence[str],
        kind: Sequence[str],
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
            self.costs[str(r)] = a
        self.fixed_costs = {r: 0.0 for r in self.costs}
        for r, v in (fixed_costs or {}).items():
            self._check_resource(r, "fixed_costs")
            check(math.isfinite(v) and v >= 0, f"fixed_costs[{r!r}] of AllocationProblem",
                  "a finite non-negative number", v)
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
        self.objective = Objective()
        self._index: dict[str, int] | None = None
        self._slots: dict[Slot, np.ndarray] | None = None

    # ------------------------------------------------------------- structure
    @property
    def n(self) -> int:
        return self.layer.size

    @property
    def resources(self) -> list[str]:
        return list(self.costs)

    def index(self, sid: str) -> int:
        if self._index is None:
            self._index = {s: i for i, s in enumerate(self.ids)}
        if sid not in self._index:
            raise ValidationError(f"Unknown structure id {sid!r} (not in the problem's ids).")
        return self._index[sid]

    def slots(self) -> dict[Slot, np.ndarray]:
        """(layer, kind) -> structure indices, in first-appearance order."""
        if self._slots is None:
            groups: dict[Slot, list[int]] = {}
            for i, key in enumerate(zip(self.layer.tolist(), self.kind.tolist())):
                groups.setdefault(key, []).append(i)
            out = {(str(k[0]), str(k[1])): np.asarray(v, dtype=np.int64) for k, v in groups.items()}
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
            raise ValidationError("Use add_latency_cap() for the staircase latency budget.")
        self._check_resource(resource, "a budget")
        check(max is not None or min is not None, f"A budget on {resource!r}",
              "given a 'max' or a 'min'", None)
        for v, what in ((max, "max"), (min, "min")):
            if v is not None:
                check(math.isfinite(v) and v >= 0, f"The '{what}' of the budget on {resource!r}",
                      "a finite non-negative number", v)
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
        check(isinstance(multiple, (int, np.integer)) and multiple >= 1,
              "The 'multiple' of a width multiple", "a positive integer", multiple)
        self.multiples.append(Multiple(layer, kind, int(multiple), bool(allow_zero)))
        return self

    def add_group(self, ids: Iterable[str]) -> "AllocationProblem":
        """Structures kept or dropped together."""
        ids = list(ids)
        check(len(ids) >= 2, "A group", "at least two structure ids", len(ids))
        for s in ids:
            self.index(s)
        self.groups.append(ids)
        return self

    def add_implication(self, if_kept: str, then_kept: str) -> "AllocationProblem":
        """Keep ``if_kept`` only if ``then_kept`` is kept."""
        self.index(if_kept)
        self.index(then_kept)
        self.implications.append((if_kept, then_kept))
        return self

    def add_equal_counts(self, slots: Iterable[Slot]) -> "AllocationProblem":
        """The listed (layer, kind) slots keep equal numbers of structures."""
        slots = [tuple(s) for s in slots]
        check(len(slots) >= 2, "An equal-counts constraint", "at least two (layer, kind) slots",
              len(slots))
        for s in slots:
            if s not in self.slots():
                raise ValidationError(f"Unknown slot {s!r} in an equal-counts constraint.")
        self.equal_counts.append(slots)  # type: ignore[arg-type]
        return self

    def add_pair_cost(self, resource: str, slot_a: Slot, slot_b: Slot,
                      coef: float) -> "AllocationProblem":
        """Usage of ``resource`` gains ``coef * k_a * k_b`` (k = kept counts of the two
        slots): the exact cost of a tensor pruned along two dimensions."""
        self._check_resource(resource, "a pair cost")
        slot_a, slot_b = tuple(slot_a), tuple(slot_b)
        for sl in (slot_a, slot_b):
            if sl not in self.slots():
                raise ValidationError(f"Unknown slot {sl!r} in a pair cost.")
        check(math.isfinite(coef) and coef >= 0, "The 'coef' of a pair cost",
              "a finite non-negative number", coef)
        self.pair_costs.append(PairCost(resource, slot_a, slot_b, float(coef)))  # type: ignore[arg-type]
        return self

    def add_latency_table(self, layer: str, kind: str, table: Sequence[float]) -> "AllocationProblem":
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
        self.latency_tables[(layer, kind)] = LatencyTable(layer, kind, t)
        return self

    def add_latency_cap(self, cap: float, relative: bool = False) -> "AllocationProblem":
        """Total latency (sum of the slots' tables) at most ``cap`` (a fraction of
        the dense latency when ``relative``)."""
        check(bool(self.latency_tables), "A latency cap", "preceded by latency tables",
              "no tables")
        check(math.isfinite(cap) and cap >= 0, "The latency cap", "finite and non-negative", cap)
        self.latency_cap = float(cap * self.dense_latency() if relative else cap)
        return self

    def dense_latency(self) -> float:
        return float(sum(t.table[-1] for t in self.latency_tables.values()))

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
        check(importance_floor is not None and math.isfinite(importance_floor),
              "The 'importance_floor' of a min_resource objective", "a finite number",
              importance_floor)
        self.objective = Objective(kind, resource, float(importance_floor), relative)
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
        o = self.objective
        if o.kind != "min_resource":
            return None
        return float(o.importance_floor * self.score.sum()) if o.relative else o.importance_floor

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
        return float(self.score[np.asarray(keep, dtype=bool)].sum())

    def violations(self, keep: np.ndarray, tol: float = 1e-6) -> list[str]:
        """Every constraint ``keep`` breaks, in words (empty when feasible)."""
        keep = np.asarray(keep, dtype=bool)
        out: list[str] = []
        u = self.usage(keep)
        for r, lo, hi in self.budget_limits():
            used = u[r] - self.fixed_costs[r]
            scale = max(1.0, abs(hi) if math.isfinite(hi) else 1.0)
            if used > hi + tol * scale:
                out.append(f"budget {r} max: uses {u[r]:.6g} > {hi + self.fixed_costs[r]:.6g}")
            if used < lo - tol * max(1.0, abs(lo)):
                out.append(f"budget {r} min: uses {u[r]:.6g} < {lo + self.fixed_costs[r]:.6g}")
        counts = {s: int(keep[idx].sum()) for s, idx in self.slots().items()}
        for s in self.slots():
            lo, hi, m, allow_zero = self.slot_count_range(s)
            k = counts[s]
            if k < lo or k > hi:
                out.append(f"count {s[0]}/{s[1]}: {k} not in [{lo}, {hi}]")
            if k % m or (k == 0 and not allow_zero):
                out.append(f"multiple {s[0]}/{s[1]}: {k} not an allowed multiple of {m}")
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
        return self.usage(keep)[o.resource]

    def diagnose(self) -> None:
        """Raise InfeasibleProblemError for conflicts that can be named without a solve."""
        slots = self.slots()
        mins: dict[Slot, int] = {}
        for s in slots:
            ks = self.allowed_counts(s)
            lo, hi, m, allow_zero = self.slot_count_range(s)
            if ks.size == 0:
                raise InfeasibleProblemError(
                    f"No width is allowed for {s[0]}/{s[1]} (width {slots[s].size}): count "
                    f"bounds [{lo}, {hi}] and multiple {m}"
                    f"{'' if allow_zero else ' (zero not allowed)'} leave no option."
                )
            mins[s] = int(ks[0])
        for (r, lo, hi), _b in zip(self.budget_limits(), self.budgets):
            cheapest = 0.0
            dearest = 0.0
            for s, idx in slots.items():
                c = np.sort(self.costs[r][idx])
                cheapest += float(c[:mins[s]].sum())
                dearest += float(c.sum())
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
            best = float(np.clip(self.score, 0, None).sum())
            if floor > best + 1e-9 * max(1.0, abs(best)):
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
                         relative=b.get("relative", False))
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
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValidationError(f"The problem file {str(path)!r} is not valid JSON: {exc}") from exc
        return cls.from_dict(d)


def validate_document(d: Any) -> None:
    """Check a problem document against ``problem.schema.json``; the error names
    the path of the first violation.

    The per-structure arrays can hold millions of entries, which a JSON Schema
    validator walks one Python object at a time; the schema therefore sees each
    array cut to its first entries, and the arrays are checked whole with numpy
    (types, lengths, finiteness, signs) here.
    """
    import jsonschema

    schema = _schema()
    skeleton = d
    if isinstance(d, dict) and isinstance(d.get("structures"), dict):
        s = d["structures"]
        skeleton = dict(d)
        skel = {k: (v[:3] if isinstance(v, list) else v) for k, v in s.items()}
        if isinstance(s.get("costs"), dict):
            skel["costs"] = {r: (v[:3] if isinstance(v, list) else v)
                             for r, v in s["costs"].items()}
        skeleton["structures"] = skel
    lat = d.get("constraints", {}).get("latency") if isinstance(d, dict) else None
    if isinstance(lat, dict) and isinstance(lat.get("tables"), list):
        skeleton = dict(skeleton)
        skeleton["constraints"] = dict(d["constraints"])
        skeleton["constraints"]["latency"] = dict(lat, tables=[
            dict(t, table=t["table"][:3]) if isinstance(t, dict) and isinstance(t.get("table"), list)
            else t for t in lat["tables"]])
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(skeleton), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        more = f" ({len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValidationError(f"The problem document is invalid at {where}: {e.message}{more}")
    s = d["structures"]
    for key in ("ids", "layer", "kind"):
        if key in s and not all(isinstance(v, str) for v in s[key]):
            raise ValidationError(f"The problem document is invalid at structures/{key}: "
                                  "every entry must be a string.")
    arrays = {"structures/score": s["score"],
              **{f"structures/costs/{r}": v for r, v in s["costs"].items()}}
    if isinstance(lat, dict):
        for i, t in enumerate(lat.get("tables", [])):
            arrays[f"constraints/latency/tables/{i}/table"] = t["table"]
    for key, v in arrays.items():
        try:
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"The problem document is invalid at {key}: "
                                  "every entry must be a number.") from exc
        if a.ndim != 1:
            raise ValidationError(f"The problem document is invalid at {key}: "
                                  "expected a flat list of numbers.")


_SCHEMA: dict[str, Any] | None = None


def _schema() -> dict[str, Any]:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = json.loads(SCHEMA_PATH.read_text())
    return _SCHEMA


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


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _compact(a: np.ndarray) -> list[float] | list[int]:
    if np.all(a == np.round(a)) and np.all(np.abs(a) < 2**53):
        return a.astype(np.int64).tolist()
    return a.tolist()


__all__ = ["AllocationProblem", "Budget", "CountBound", "Multiple", "LatencyTable", "Objective",
           "validate_document", "FORMAT"]
