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

from typing import Any

import numpy as np

from ..alloc import AllocationProblem
from ..errors import ValidationError
from .structures import StructureSet, _named_tensors

__all__ = ["problem_from_structures"]


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
    # (tensor, dim) -> slot, and per group the indices it removes there.
    owner: dict[tuple[str, int], tuple[str, str]] = {}
    per_group: dict[tuple[str, int], dict[int, int]] = {}
    for gi, g in enumerate(groups):
        for tname, dim, idx in g.slices:
            key = (tname, dim)
            s = slot_of_group[gi]
            if owner.setdefault(key, s) != s:
                raise ValidationError(
                    f"Dimension {dim} of {tname!r} is pruned by two slots ({owner[key]} and "
                    f"{s}); exact costs need one owner per dimension.")
            pg = per_group.setdefault(key, {})
            pg[gi] = pg.get(gi, 0) + len(idx)

    positions = {w: pos for _, w, pos in structures.ops}
    params_ = np.zeros(n)
    flops_ = np.zeros(n)
    fixed = {"params": 0.0, "flops": float(structures._fixed_extra_flops)}
    pairs: dict[tuple[str, tuple[str, str], tuple[str, str]], float] = {}
    for gi, g in enumerate(groups):
        flops_[gi] += g.extra_flops

    for tname, t in tensors.items():
        weights = []
        if tname in structures.param_names:
            weights.append(("params", params_, 1))
        if positions.get(tname):
            weights.append(("flops", flops_, positions[tname]))
        if not weights:
            continue
        shape = tuple(t.shape)
        dims = sorted(d for (tn, d) in owner if tn == tname)
        rest = int(np.prod([shape[d] for d in range(len(shape)) if d not in dims], dtype=np.int64))
        info = []
        for d in dims:
            members = per_group[(tname, d)]
            e = set(members.values())
            c0 = shape[d] - sum(members.values())
            if c0 < 0:
                raise ValidationError(f"The groups remove more indices of {tname!r} dim {d} than "
                                      "it has; discovery produced overlapping groups.")
            info.append((d, members, c0, e))
        for res, arr, mult in weights:
            w = float(mult)
            if not dims:
                fixed[res] += w * t.numel()
            elif len(dims) == 1:
                _, members, c0, _ = info[0]
                fixed[res] += w * rest * c0
                for gi, cnt in members.items():
                    arr[gi] += w * rest * cnt
            elif len(dims) == 2:
                (_, m1, c01, e1), (_, m2, c02, e2) = info
                if len(e1) != 1 or len(e2) != 1:
                    raise ValidationError(
                        f"{tname!r} is pruned along two dimensions by groups of unequal sizes; "
                        "exact bilinear costs need equal group sizes per dimension.")
                ea, eb = next(iter(e1)), next(iter(e2))
                fixed[res] += w * rest * c01 * c02
                for gi in m1:
                    arr[gi] += w * rest * c02 * ea
                for gi in m2:
                    arr[gi] += w * rest * c01 * eb
                sa, sb = slot_of_group[next(iter(m1))], slot_of_group[next(iter(m2))]
                pair = (res, sa, sb)
                pairs[pair] = pairs.get(pair, 0.0) + w * rest * ea * eb
            else:
                raise ValidationError(f"{tname!r} is pruned along {len(dims)} dimensions; at most "
                                      "two are supported.")
    p = AllocationProblem([g.id for g in groups], [g.layer for g in groups],
                          [g.kind for g in groups], scores,
                          {"params": params_, "flops": flops_}, fixed_costs=fixed, name=name)
    for (res, sa, sb), coef in pairs.items():
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
