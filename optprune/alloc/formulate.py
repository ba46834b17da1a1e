"""AllocationProblem -> LinearModel, in two formulations (see formulations/allocation.md).

* structure: one binary x_i per structure.
* width: one binary y_{s,k} per slot s = (layer, kind) and allowed width k, with
  value = prefix sum of the slot's scores sorted in decreasing order (the top-k
  set is optimal among all k-subsets when every structure of the slot costs the
  same in every resource and no per-structure constraint touches the slot).

``formulation="auto"`` uses the width formulation for every slot where it is
exact and one binary per structure elsewhere (a hybrid when both occur).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ValidationError
from ..solve.model import LinearModel, ModelBuilder
from .problem import AllocationProblem, Slot


@dataclass
class _SlotVars:
    mode: str  # "width" | "structure"
    members: np.ndarray  # structure indices; sorted by decreasing score in width mode
    cols: np.ndarray  # width: one col per option; structure: one col per member
    options: np.ndarray | None = None  # width mode: the allowed counts
    # count of the slot as a linear expression sum(coef * x[col])
    count_cols: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    count_coef: np.ndarray = field(default_factory=lambda: np.zeros(0))
    count_const: float = 0.0


@dataclass
class Formulation:
    model: LinearModel
    slots: dict[Slot, _SlotVars]
    kind: str  # "width" | "structure" | "hybrid"
    budget_rows: list[int]
    latency_row: int | None
    n_structures: int
    aux: list = field(default_factory=list)  # (kind, slot, cols, data) of helper columns

    def decode(self, x: np.ndarray) -> np.ndarray:
        """The keep mask of a solution vector."""
        keep = np.zeros(self.n_structures, dtype=bool)
        for sv in self.slots.values():
            if sv.mode == "structure":
                keep[sv.members] = x[sv.cols] > 0.5
            else:
                k = int(sv.options[int(np.argmax(x[sv.cols]))])
                keep[sv.members[:k]] = True
        return keep

    def selection(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The selection binaries of a solution, (columns at 1, columns at 0): one
        per structure of a structure-mode slot, and the chosen width binary of each
        width-mode slot. They determine the keep mask and the mask determines them."""
        ones, zeros = [], []
        for sv in self.slots.values():
            v = x[sv.cols] > 0.5
            if sv.mode == "structure":
                ones.append(sv.cols[v])
                zeros.append(sv.cols[~v])
            else:
                ones.append(sv.cols[v])
        empty = np.zeros(0, np.int64)
        return (np.concatenate(ones) if ones else empty,
                np.concatenate(zeros) if zeros else empty)

    def exclude(self, selection: tuple[np.ndarray, np.ndarray]) -> None:
        """Add the no-good cut sum_{j in ones} x_j - sum_{j in zeros} x_j <= |ones| - 1,
        which removes exactly the keep mask of ``selection`` (width binaries are
        one-hot, so the chosen one at 1 fixes the slot's width)."""
        ones, zeros = selection
        cols = np.concatenate([ones, zeros])
        vals = np.concatenate([np.ones(ones.size), -np.ones(zeros.size)])
        self.model.add_row(cols, vals, -np.inf, ones.size - 1.0,
                           name=f"nogood{self.model.num_rows}")

    def encode(self, keep: np.ndarray, problem: AllocationProblem) -> np.ndarray | None:
        """A solution vector for ``keep`` (for warm starts); None if ``keep`` is not
        representable (a width-mode slot not kept as a top-k prefix of an option)."""
        x = np.zeros(self.model.num_cols)
        for _s, sv in self.slots.items():
            if sv.mode == "structure":
                x[sv.cols] = keep[sv.members]
            else:
                k = int(keep[sv.members].sum())
                pos = np.flatnonzero(sv.options == k)
                if pos.size == 0 or not keep[sv.members[:k]].all():
                    return None
                x[sv.cols[pos[0]]] = 1.0
        for kind, slot, cols, data in self.aux:
            sv = self.slots[slot]
            k = int(keep[sv.members].sum())
            if kind == "multiple":
                x[cols[0]] = k / data
            elif kind == "segments":
                lo, hi = data
                t = int(np.flatnonzero((lo <= k) & (k <= hi))[0])
                x[cols[t]] = 1.0
            elif kind == "counts":
                pos = np.flatnonzero(data == k)
                if pos.size == 0:
                    return None
                x[cols[pos[0]]] = 1.0
            elif kind == "pair":
                slot_b, ka, kb = data
                kb_ = int(keep[self.slots[slot_b].members].sum())
                i, j = np.flatnonzero(ka == k), np.flatnonzero(kb == kb_)
                if i.size == 0 or j.size == 0:
                    return None
                x[cols[i[0] * kb.size + j[0]]] = 1.0
        if self.model.max_violation(x) > 1e-6:
            return None
        return x


def width_exact_slots(problem: AllocationProblem) -> dict[Slot, bool]:
    """Per slot, whether the width formulation is exact there: equal cost vectors
    across the slot's members, and no group or implication touching them."""
    touched = np.zeros(problem.n, dtype=bool)
    for g in problem.groups:
        touched[[problem.index(s) for s in g]] = True
    for a, b in problem.implications:
        touched[problem.index(a)] = touched[problem.index(b)] = True
    out = {}
    for s, idx in problem.slots().items():
        same = all(np.ptp(problem.costs[r][idx]) == 0 for r in problem.costs)
        out[s] = bool(same and not touched[idx].any())
        if s in problem.slot_values and not out[s]:
            problem._check_width_slot(s, "slot values")  # raises, naming the reason
    return out


def formulate(problem: AllocationProblem, formulation: str = "auto",
              integer_pairs: bool = False) -> Formulation:
    """The model of ``problem``; ``integer_pairs`` declares the pair-cost product
    variables integer (for backends without continuous variables, CP-SAT)."""
    if formulation not in ("auto", "width", "structure"):
        raise ValidationError(
            f"The 'formulation' must be 'auto', 'width' or 'structure'; got {formulation!r}."
        )
    exact = width_exact_slots(problem)
    if formulation == "width" and not all(exact.values()):
        bad = [f"{s[0]}/{s[1]}" for s, ok in exact.items() if not ok][:5]
        raise ValidationError(
            "The width formulation is not exact for slots " + ", ".join(bad) + " (unequal "
            "costs, or groups/implications touch them); use formulation='auto' or 'structure'."
        )
    obj = problem.objective
    maximize = obj.kind == "max_importance"
    b = ModelBuilder(name=problem.name, sense="max" if maximize else "min")
    slots: dict[Slot, _SlotVars] = {}
    budgets = problem.budget_limits()
    resources = list(dict.fromkeys(r for r, _, _ in budgets))
    if not maximize and obj.resource != "latency" and obj.resource not in resources:
        resources.append(obj.resource)
    # Per resource, the sparse row of kept cost over the model's columns.
    cost_terms: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {r: ([], []) for r in resources}
    score_cols: list[np.ndarray] = []
    score_vals: list[np.ndarray] = []
    lat_cols: list[np.ndarray] = []
    lat_vals: list[np.ndarray] = []
    aux: list = []
    # Constant parts of the score, cost and latency sums (width-mode minimum widths).
    const: dict[str, float] = {"score": 0.0, "latency": 0.0, **{r: 0.0 for r in resources}}

    for s, idx in problem.slots().items():
        # A slot with values is defined by its width: width mode in every formulation.
        use_width = exact[s] if formulation != "structure" else s in problem.slot_values
        lo, hi, m, allow_zero = problem.slot_count_range(s)
        table = problem.latency_tables.get(s)
        if use_width:
            order = problem.slot_order(s)
            opts = problem.allowed_counts(s)
            prefix = problem.slot_curve(s)
            cols = b.add_columns(opts.size, 0.0, 1.0, 0.0, True,
                                 names=[f"w[{s[0]}|{s[1]}|{k}]" for k in opts])
            b.add_rows(np.zeros(opts.size), cols, np.ones(opts.size), 1.0, 1.0, count=1,
                       names=[f"one_width[{s[0]}|{s[1]}]"])
            score_cols.append(cols)
            score_vals.append(prefix[opts])
            for r in resources:
                unit = float(problem.costs[r][idx[0]]) if idx.size else 0.0
                cost_terms[r][0].append(cols)
                cost_terms[r][1].append(unit * opts.astype(np.float64))
            if table is not None:
                lat_cols.append(cols)
                lat_vals.append(table.table[opts])
            slots[s] = _SlotVars("width", order, cols, opts, cols, opts.astype(np.float64))
            continue
        cols = b.add_columns(idx.size, 0.0, 1.0, 0.0, True,
                             names=[f"x[{problem.ids[i]}]" for i in idx])
        score_cols.append(cols)
        score_vals.append(problem.score[idx])
        for r in resources:
            cost_terms[r][0].append(cols)
            cost_terms[r][1].append(problem.costs[r][idx])
        sv = _SlotVars("structure", idx, cols, None, cols, np.ones(idx.size))
        slots[s] = sv
        if lo > 0 or hi < idx.size:
            b.add_rows(np.zeros(idx.size), cols, np.ones(idx.size), lo, hi, count=1,
                       names=[f"count[{s[0]}|{s[1]}]"])
        if m > 1 or not allow_zero:
            q = b.add_columns(1, 0 if allow_zero else 1, idx.size // m, 0.0, True,
                              names=[f"q[{s[0]}|{s[1]}]"])
            b.add_rows(np.zeros(idx.size + 1), np.concatenate([cols, q]),
                       np.concatenate([np.ones(idx.size), [-float(m)]]), 0.0, 0.0, count=1,
                       names=[f"multiple[{s[0]}|{s[1]}]"])
            aux.append(("multiple", s, q, m))
        if table is not None:
            # Constant segments of the staircase over the allowed counts.
            t = table.table
            ks = problem.allowed_counts(s)
            seg_lo, seg_hi, seg_val = [], [], []
            for k in ks:
                if seg_val and t[k] == seg_val[-1]:
                    seg_hi[-1] = int(k)
                else:
                    seg_lo.append(int(k))
                    seg_hi.append(int(k))
                    seg_val.append(float(t[k]))
            nseg = len(seg_val)
            z = b.add_columns(nseg, 0.0, 1.0, 0.0, True,
                              names=[f"seg[{s[0]}|{s[1]}|{a}-{c}]" for a, c in zip(seg_lo, seg_hi)])
            b.add_rows(np.zeros(nseg), z, np.ones(nseg), 1.0, 1.0, count=1,
                       names=[f"one_seg[{s[0]}|{s[1]}]"])
            # sum lo_t z_t <= count <= sum hi_t z_t
            rows = np.concatenate([np.zeros(idx.size + nseg), np.ones(idx.size + nseg)])
            cc = np.concatenate([cols, z, cols, z])
            vv = np.concatenate([np.ones(idx.size), -np.array(seg_lo, float),
                                 np.ones(idx.size), -np.array(seg_hi, float)])
            b.add_rows(rows, cc, vv, [0.0, -np.inf], [np.inf, 0.0], count=2,
                       names=[f"seg_lo[{s[0]}|{s[1]}]", f"seg_hi[{s[0]}|{s[1]}]"])
            lat_cols.append(z)
            lat_vals.append(np.array(seg_val))
            aux.append(("segments", s, z, (np.array(seg_lo), np.array(seg_hi))))

    # Groups and implications (structure-mode slots only, by construction).
    col_of = np.full(problem.n, -1, dtype=np.int64)
    for sv in slots.values():
        if sv.mode == "structure":
            col_of[sv.members] = sv.cols
    pairs = []
    for g in problem.groups:
        c = [col_of[problem.index(sid)] for sid in g]
        pairs += [(c[0], cj, 0.0, 0.0) for cj in c[1:]]
    for a, bb in problem.implications:
        pairs.append((col_of[problem.index(a)], col_of[problem.index(bb)], -np.inf, 0.0))
    if pairs:
        p = np.array([(a, c) for a, c, _, _ in pairs], dtype=np.int64)
        k = len(pairs)
        b.add_rows(np.repeat(np.arange(k), 2), p.ravel(), np.tile([1.0, -1.0], k),
                   [lo for _, _, lo, _ in pairs], [hi for _, _, _, hi in pairs], count=k,
                   names=[f"couple{t}" for t in range(k)])

    for t, eq in enumerate(problem.equal_counts):
        s0 = slots[eq[0]]
        for j, s in enumerate(eq[1:]):
            sv = slots[s]
            b.add_rows(np.zeros(s0.count_cols.size + sv.count_cols.size),
                       np.concatenate([s0.count_cols, sv.count_cols]),
                       np.concatenate([s0.count_coef, -sv.count_coef]),
                       sv.count_const - s0.count_const, sv.count_const - s0.count_const, count=1,
                       names=[f"equal{t}_{j}"])

    # Pair costs coef * k_a * k_b: one-hot count variables u per slot (the width
    # binaries themselves in width mode) and w[k, l] >= 0 with row sums u_a[k] and
    # column sums u_b[l]; with one-hot u the only such w is u_a[k] * u_b[l].
    onehot: dict[Slot, tuple[np.ndarray, np.ndarray]] = {}

    def counts_onehot(s: Slot) -> tuple[np.ndarray, np.ndarray]:
        if s in onehot:
            return onehot[s]
        sv = slots[s]
        if sv.mode == "width":
            onehot[s] = (sv.cols, sv.options.astype(np.float64))
            return onehot[s]
        opts = problem.allowed_counts(s)
        u = b.add_columns(opts.size, 0.0, 1.0, 0.0, True,
                          names=[f"k[{s[0]}|{s[1]}|{k}]" for k in opts])
        b.add_rows(np.zeros(opts.size), u, np.ones(opts.size), 1.0, 1.0, count=1,
                   names=[f"one_count[{s[0]}|{s[1]}]"])
        b.add_rows(np.zeros(sv.cols.size + opts.size), np.concatenate([sv.cols, u]),
                   np.concatenate([np.ones(sv.cols.size), -opts.astype(np.float64)]), 0.0, 0.0,
                   count=1, names=[f"count_link[{s[0]}|{s[1]}]"])
        aux.append(("counts", s, u, opts))
        onehot[s] = (u, opts.astype(np.float64))
        return onehot[s]

    for t, pc in enumerate(problem.pair_costs):
        if pc.resource not in cost_terms:
            continue
        ua, ka = counts_onehot(pc.slot_a)
        if pc.slot_a == pc.slot_b:
            cost_terms[pc.resource][0].append(ua)
            cost_terms[pc.resource][1].append(pc.coef * ka * ka)
            continue
        ub, kb = counts_onehot(pc.slot_b)
        na, nb = ua.size, ub.size
        # w is integral at every integral u, so it stays continuous (HiGHS: 7 nodes and
        # 2 s instead of minutes on a residual CNN); CP-SAT needs it declared integer.
        w = b.add_columns(na * nb, 0.0, 1.0, 0.0, integer_pairs,
                          names=[f"w{t}[{i},{j}]" for i in range(na) for j in range(nb)])
        grid = w.reshape(na, nb)
        rows = np.concatenate([np.repeat(np.arange(na), nb + 1),
                               na + np.repeat(np.arange(nb), na + 1)])
        cols = np.concatenate([np.column_stack([grid, ua]).ravel(),
                               np.column_stack([grid.T, ub]).ravel()])
        vals = np.concatenate([np.tile(np.r_[np.ones(nb), -1.0], na),
                               np.tile(np.r_[np.ones(na), -1.0], nb)])
        b.add_rows(rows, cols, vals, 0.0, 0.0, count=na + nb,
                   names=[f"pair{t}_a[{i}]" for i in range(na)]
                   + [f"pair{t}_b[{j}]" for j in range(nb)])
        cost_terms[pc.resource][0].append(w)
        cost_terms[pc.resource][1].append(pc.coef * np.outer(ka, kb).ravel())
        aux.append(("pair", pc.slot_a, w, (pc.slot_b, ka, kb)))

    def sparse_row(terms: tuple[list[np.ndarray], list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        # Duplicate columns (several pair costs on one slot) are summed.
        cols = np.concatenate(terms[0]).astype(np.int64)
        vals = np.concatenate(terms[1]).astype(np.float64)
        uniq, inv = np.unique(cols, return_inverse=True)
        return uniq, np.bincount(inv, weights=vals, minlength=uniq.size)

    budget_rows = []
    for r, lo, hi in budgets:
        cols, vals = sparse_row(cost_terms[r])
        budget_rows.append(int(b.add_rows(np.zeros(cols.size), cols, vals, lo - const[r],
                                          hi - const[r], count=1,
                                          names=[f"budget[{r}]"])[0]))
    latency_row = None
    if lat_cols and problem.latency_cap is not None:
        cols, vals = np.concatenate(lat_cols), np.concatenate(lat_vals)
        latency_row = int(b.add_rows(np.zeros(cols.size), cols, vals, -np.inf,
                                     problem.latency_cap - const["latency"], count=1,
                                     names=["latency_cap"])[0])

    sc, sv_ = np.concatenate(score_cols), np.concatenate(score_vals)
    if maximize:
        b.set_cost(sc, sv_)
        b.offset = const["score"]
    else:
        floor = problem.importance_floor_abs()
        b.add_rows(np.zeros(sc.size), sc, sv_, floor - const["score"], np.inf, count=1,
                   names=["importance_floor"])
        if obj.resource == "latency":
            if not lat_cols:
                raise ValidationError("Minimizing latency needs latency tables.")
            b.set_cost(np.concatenate(lat_cols), np.concatenate(lat_vals))
            b.offset = const["latency"]
        else:
            cols, vals = sparse_row(cost_terms[obj.resource])
            b.set_cost(cols, vals)
            b.offset = problem.fixed_costs[obj.resource] + const[obj.resource]
    modes = {sv.mode for sv in slots.values()}
    kind = modes.pop() if len(modes) == 1 else "hybrid"
    b.metadata = {"formulation": kind}
    model = b.build()
    return Formulation(model, slots, kind, budget_rows, latency_row, problem.n, aux)
