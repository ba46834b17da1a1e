"""StructureSet -> AllocationProblem with exact costs.

Every tensor of the model keeps ``prod_d kept_d`` entries, where ``kept_d`` is the
size of dimension d after pruning. A dimension owned by slot S (the groups of one
(layer, kind) remove indices on it) keeps ``c0_d + e_S * k_S`` entries (c0_d: the
indices no group owns, e_S: indices per group, k_S: kept groups of S). So with
``rest`` = the product of the unowned dimensions:

* no owned dimension: a fixed cost ``numel``;
* one owned dimension: fixed ``rest * c0_d`` plus ``rest * e_S`` per kept group of S;
* two owned dimensions (slots A and B: a weight whose outputs and inputs are both
  pruned, as the hidden layers of an MLP): fixed ``rest * c0_1 * c0_2``, per kept
  group ``rest * c0_2 * e_A`` (A) and ``rest * c0_1 * e_B`` (B), and the pair cost
  ``rest * e_A * e_B * k_A * k_B`` (``AllocationProblem.add_pair_cost``, linearized
  exactly in formulations/allocation.md).

Parameters count every parameter tensor; MACs count every Linear/Conv2d weight
times its positions per sample plus the attention products of kept heads. The
resulting ``problem.usage(keep)`` equals ``StructureSet.predict(keep)`` for every
mask that keeps each group's requirements (tested), so budgets hold on the real pruned
model, not on an additive approximation. A group's requirements (a grouped-query head
needs its key/value head) become implications of the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..alloc import AllocationProblem
from ..errors import ValidationError
from .structures import Group, StructureSet, _named_tensors

__all__ = ["problem_from_structures"]

Slot = tuple[str, str]
# One owned dimension of a tensor: (group -> indices it removes there, c0 = indices no
# group owns, the distinct per-group index counts).
_Owned = tuple[dict[int, int], int, set[int]]


def problem_from_structures(structures: StructureSet, scores: Any, name: str = "model"
                            ) -> AllocationProblem:
    """The allocation problem of ``structures`` with ``scores`` (one per group) and the
    exact costs ``params`` and ``flops`` (MACs per sample)."""
    groups = structures.groups
    n = len(groups)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (n,):
        raise ValidationError(f"The scores must have shape ({n},) (one per group); got "
                              f"{scores.shape}.")
    tensors = _named_tensors(structures.model)
    slot_of_group = [(g.layer, g.kind) for g in groups]
    per_dim = _owned_dims(groups, slot_of_group)
    positions = {w: pos for _, w, pos in structures.ops}
    costs = _Costs({"params": np.zeros(n),
                    "flops": np.asarray([g.extra_flops for g in groups], dtype=np.float64)},
                   {"params": 0.0, "flops": float(structures._fixed_extra_flops)})
    for tname, t in tensors.items():
        mults = []
        if tname in structures.param_names:
            mults.append(("params", 1.0))
        if positions.get(tname):
            mults.append(("flops", float(positions[tname])))
        if not mults:
            continue
        rest, owned = _tensor_dims(tname, tuple(t.shape), per_dim.get(tname, {}))
        for res, w in mults:
            costs.add(res, w, tname, t.numel(), rest, owned, slot_of_group)
    p = AllocationProblem([g.id for g in groups], [g.layer for g in groups],
                          [g.kind for g in groups], scores, {**costs.per_group},
                          fixed_costs=costs.fixed, name=name)
    for (res, sa, sb), coef in costs.pairs.items():
        p.add_pair_cost(res, sa, sb, coef)
    for i, j in structures.requirements():
        p.add_implication(groups[i].id, groups[j].id)
    dense = structures.predict(np.ones(n, dtype=bool))
    for res in ("params", "flops"):
        got = p.dense_total(res)
        if abs(got - dense[res]) > 1e-6 * max(1.0, dense[res]):
            raise ValidationError(f"Internal cost mismatch for {res}: problem {got} vs model "
                                  f"{dense[res]}.")
    return p


def _owned_dims(groups: list[Group], slot_of_group: list[Slot]) -> dict[str, dict[int, dict[int, int]]]:
    """tensor -> dim -> {group: indices it removes there}, for every dimension groups
    prune; a dimension pruned by the groups of two slots is an error."""
    owner: dict[tuple[str, int], Slot] = {}
    per_dim: dict[str, dict[int, dict[int, int]]] = {}
    for gi, g in enumerate(groups):
        for tname, dim, idx in g.slices:
            key = (tname, dim)
            s = slot_of_group[gi]
            if owner.setdefault(key, s) != s:
                raise ValidationError(
                    f"Dimension {dim} of {tname!r} is pruned by two slots ({owner[key]} and "
                    f"{s}); exact costs need one owner per dimension.")
            pg = per_dim.setdefault(tname, {}).setdefault(dim, {})
            pg[gi] = pg.get(gi, 0) + len(idx)
    return per_dim


def _tensor_dims(tname: str, shape: tuple[int, ...], dims: dict[int, dict[int, int]]
                 ) -> tuple[int, list[_Owned]]:
    """(product of the unowned dimensions, the owned ones in order of dim)."""
    rest = int(np.prod([shape[d] for d in range(len(shape)) if d not in dims], dtype=np.int64))
    owned = []
    for d in sorted(dims):
        members = dims[d]
        c0 = shape[d] - sum(members.values())
        if c0 < 0:
            raise ValidationError(f"The groups remove more indices of {tname!r} dim {d} than "
                                  "it has; discovery produced overlapping groups.")
        owned.append((members, c0, set(members.values())))
    return rest, owned


@dataclass
class _Costs:
    """Per-group, fixed and pair costs of each resource, summed over the tensors."""

    per_group: dict[str, np.ndarray]
    fixed: dict[str, float]
    pairs: dict[tuple[str, Slot, Slot], float] = field(default_factory=dict)

    def add(self, res: str, w: float, tname: str, numel: int, rest: int,
            owned: list[_Owned], slot_of_group: list[Slot]) -> None:
        """Add ``w`` times the kept entries of one tensor (module docstring's cases)."""
        arr = self.per_group[res]
        if not owned:
            self.fixed[res] += w * numel
        elif len(owned) == 1:
            members, c0, _ = owned[0]
            self.fixed[res] += w * rest * c0
            for gi, cnt in members.items():
                arr[gi] += w * rest * cnt
        elif len(owned) == 2:
            (m1, c01, e1), (m2, c02, e2) = owned
            if len(e1) != 1 or len(e2) != 1:
                raise ValidationError(
                    f"{tname!r} is pruned along two dimensions by groups of unequal sizes; "
                    "exact bilinear costs need equal group sizes per dimension.")
            ea, eb = next(iter(e1)), next(iter(e2))
            self.fixed[res] += w * rest * c01 * c02
            for gi in m1:
                arr[gi] += w * rest * c02 * ea
            for gi in m2:
                arr[gi] += w * rest * c01 * eb
            pair = (res, slot_of_group[next(iter(m1))], slot_of_group[next(iter(m2))])
            self.pairs[pair] = self.pairs.get(pair, 0.0) + w * rest * ea * eb
        else:
            raise ValidationError(f"{tname!r} is pruned along {len(owned)} dimensions; at most "
                                  "two are supported.")
