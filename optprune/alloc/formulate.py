"""AllocationProblem -> LinearModel. Each builder below is one section of
``formulations/allocation.md``:

* ``_slot_columns``: the selection variables, one binary per structure
  ("structure", formulation 1) or one per slot and allowed width ("width",
  formulation 2), with the slot's own rows (counts, multiples, latency segments);
* ``_couplings``: groups and implications; ``_equal_counts``;
* ``_pair_terms``: one product variable per slot pair with pair costs;
* ``_budgets``, ``_latency_cap``, ``_objective``;
* ``_disaggregate``: the rows that make each product exact (appended last, so a
  model built with ``exact_pairs=False`` has the same columns and rows before them;
  see ``optprune.alloc.bilinear``).

``formulation="auto"`` uses the width formulation for every slot where it is
exact and one binary per structure elsewhere (a hybrid when both occur).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ValidationError
from ..solve.model import LinearModel, ModelBuilder
from ..solve.result import SolveResult
from .problem import AllocationProblem, Slot

# Coefficient ranges left alone; outside them the objective (or a row) is scaled by
# a power of two, which changes no digit of any coefficient. Rows are only scaled
# down: the problem's own check (``violations``) has an absolute tolerance for
# small limits, which a row scaled up would no longer share.
_OBJECTIVE_RANGE = (2.0**-7, 2.0**30)
_ROW_RANGE = (0.0, 2.0**30)


@dataclass
class _SlotVars:
    mode: str  # "width" | "structure"
    members: np.ndarray  # structure indices; in keep order in width mode
    cols: np.ndarray  # width: one col per option; structure: one col per member
    options: np.ndarray | None = None  # width mode: the allowed counts
    # The slot's count as the linear expression sum(count_coef * x[count_cols]).
    count_cols: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    count_coef: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # One-hot count columns (the width binaries in width mode) and their counts.
    onehot: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class PairTerm:
    """The product k_a * k_b of two slots' kept counts, as the column ``col``
    (``scale * x[col] = k_a * k_b`` at every integral solution of the exact model),
    with its coefficient in each resource. ``cols_a``/``opts_a`` are slot a's one-hot
    count columns and their counts (likewise b)."""

    slot_a: Slot
    slot_b: Slot
    col: int
    scale: float
    coef: dict[str, float]
    cols_a: np.ndarray
    opts_a: np.ndarray
    cols_b: np.ndarray
    opts_b: np.ndarray


@dataclass
class Formulation:
    model: LinearModel
    slots: dict[Slot, _SlotVars]
    kind: str  # "width" | "structure" | "hybrid"
    budget_rows: list[int]
    latency_row: int | None
    n_structures: int
    aux: list = field(default_factory=list)  # (kind, slot, cols, data) of helper columns
    pairs: list[PairTerm] = field(default_factory=list)
    exact_pairs: bool = True
    objective_scale: float = 1.0
    row_scale: dict[int, float] = field(default_factory=dict)
    # Columns and rows of the disaggregation (exact products), after all others.
    first_exact_col: int | None = None
    first_exact_row: int | None = None

    def decode(self, x: np.ndarray) -> np.ndarray:
        """The keep mask of a solution vector."""
        keep = np.zeros(self.n_structures, dtype=bool)
        for sv in self.slots.values():
            if sv.mode == "structure":
                keep[sv.members] = x[sv.cols] > 0.5
            else:
                assert sv.options is not None  # width mode always has its allowed counts
                k = int(sv.options[int(np.argmax(x[sv.cols]))])
                keep[sv.members[:k]] = True
        return keep

    def counts(self, keep: np.ndarray) -> dict[Slot, int]:
        return {s: int(keep[sv.members].sum()) for s, sv in self.slots.items()}

    def selection(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The selection binaries of a solution, (columns at 1, columns at 0): one
        per structure of a structure-mode slot, and the chosen width binary of each
        width-mode slot. They determine the keep mask and the mask determines them."""
        ones, zeros = [], []
        for sv in self.slots.values():
            v = x[sv.cols] > 0.5
            ones.append(sv.cols[v])
            if sv.mode == "structure":
                zeros.append(sv.cols[~v])
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
        representable (a width-mode slot not kept as a prefix of its order at an
        allowed width) or breaks a row of the model."""
        x = np.zeros(self.model.num_cols)
        counts = self.counts(keep)
        for s, sv in self.slots.items():
            if sv.mode == "structure":
                x[sv.cols] = keep[sv.members]
            else:
                k = counts[s]
                pos = np.flatnonzero(sv.options == k)
                if pos.size == 0 or not keep[sv.members[:k]].all():
                    return None
                x[sv.cols[pos[0]]] = 1.0
        for kind, slot, cols, data in self.aux:
            k = counts[slot]
            if kind == "multiple":
                x[cols[0]] = k / data
            elif kind == "segments":
                lo, hi = data
                x[cols[int(np.flatnonzero((lo <= k) & (k <= hi))[0])]] = 1.0
            elif kind == "counts":
                pos = np.flatnonzero(data == k)
                if pos.size == 0:
                    return None
                x[cols[pos[0]]] = 1.0
            elif kind == "disaggregation":  # z[k] = k_b at the chosen count of side a
                opts_a, slot_b = data
                pos = np.flatnonzero(opts_a == k)
                if pos.size == 0:
                    return None
                x[cols[pos[0]]] = counts[slot_b]
        for pt in self.pairs:
            x[pt.col] = counts[pt.slot_a] * counts[pt.slot_b] / pt.scale
        # The tolerance of AllocationProblem.violations (relative to each limit).
        if self.model.max_violation(x, relative=True) > 1e-6:
            return None
        return x

    def unscale(self, res: SolveResult) -> SolveResult:
        """A result of ``self.model`` in the problem's units (the objective was
        multiplied by ``objective_scale``)."""
        import dataclasses

        if self.objective_scale == 1.0:
            return res
        s = self.objective_scale
        return dataclasses.replace(
            res, objective=None if res.objective is None else res.objective / s,
            bound=None if res.bound is None else res.bound / s)

    def set_budget(self, i: int, lower: float, upper: float) -> None:
        """Set the limits of budget ``i`` (problem units, fixed costs removed)."""
        row = self.budget_rows[i]
        s = self.row_scale.get(row, 1.0)
        self.model.row_lower[row] = lower * s
        self.model.row_upper[row] = upper * s


def width_exact_slots(problem: AllocationProblem) -> dict[Slot, bool]:
    """Per slot, whether the width formulation is exact there: equal cost vectors
    across the slot's members, and no group or implication touching them."""
    touched = np.zeros(problem.n, dtype=bool)
    for g in problem.groups:
        touched[[problem.index(s) for s in g]] = True
    for a, b in problem.implications:
        touched[problem.index(a)] = touched[problem.index(b)] = True
    slots = problem.slots()
    # Per slot, max - min of each cost and whether a member is touched, all slots in
    # one reduceat over the structures laid out slot by slot.
    order = np.concatenate(list(slots.values())) if slots else np.zeros(0, dtype=np.int64)
    starts = np.cumsum([0] + [idx.size for idx in slots.values()])[:-1]
    same = np.ones(len(slots), dtype=bool)
    for c in problem.costs.values():
        co = c[order]
        same &= np.maximum.reduceat(co, starts) == np.minimum.reduceat(co, starts)
    hit = np.logical_or.reduceat(touched[order], starts) if slots else np.zeros(0, bool)
    out = {}
    for t, s in enumerate(slots):
        out[s] = bool(same[t] and not hit[t])
        if s in problem.slot_values and not out[s]:
            problem._check_width_slot(s, "slot values")  # raises, naming the reason
    return out


class _Build:
    """The state the builders share: the problem, the model under construction,
    and the sparse terms of the score, cost and latency sums."""

    def __init__(self, problem: AllocationProblem, formulation: str, integer_only: bool,
                 exact_pairs: bool) -> None:
        self.p = problem
        self.integer_only = integer_only
        self.exact_pairs = exact_pairs
        self.exact = width_exact_slots(problem)
        obj = problem.objective
        self.maximize = obj.kind == "max_importance"
        self.b = ModelBuilder(name=problem.name, sense="max" if self.maximize else "min")
        self.budgets = problem.budget_limits()
        self.resources = list(dict.fromkeys(r for r, _, _ in self.budgets))
        if not self.maximize:
            res, _ = obj.min_resource_terms()
            if res != "latency" and res not in self.resources:
                self.resources.append(res)
        self.cost: dict[str, tuple[list, list]] = {r: ([], []) for r in self.resources}
        self.score: tuple[list, list] = ([], [])
        self.lat: tuple[list, list] = ([], [])
        self.slots: dict[Slot, _SlotVars] = {}
        self.aux: list = []
        self.pairs: list[PairTerm] = []
        self.row_scale: dict[int, float] = {}
        self.budget_rows: list[int] = []
        self.latency_row: int | None = None
        self.objective_scale = 1.0
        self.formulation = formulation

    def use_width(self, s: Slot) -> bool:
        # A slot with values is defined by its width: width mode in every formulation.
        if self.formulation == "structure":
            return s in self.p.slot_values
        return self.exact[s]

    def add_cost(self, r: str, cols: ArrayLike, vals: ArrayLike) -> None:
        if r in self.cost:
            self.cost[r][0].append(np.asarray(cols, np.int64))
            self.cost[r][1].append(np.asarray(vals, np.float64))


def formulate(problem: AllocationProblem, formulation: str = "auto", integer_only: bool = False,
              exact_pairs: bool = True) -> Formulation:
    """The model of ``problem``.

    integer_only: every column integer, no power-of-two row or objective scaling
        (CP-SAT, which scales rows to integers itself).
    exact_pairs: add the disaggregation rows that make every pair product exact;
        without them the product columns are bounded only by the cuts
        ``optprune.alloc.bilinear`` adds (a relaxation, used by its outer
        approximation).
    """
    if formulation not in ("auto", "width", "structure"):
        raise ValidationError(
            f"The 'formulation' must be 'auto', 'width' or 'structure'; got {formulation!r}."
        )
    st = _Build(problem, formulation, integer_only, exact_pairs)
    if formulation == "width" and not all(st.exact.values()):
        bad = [f"{s[0]}/{s[1]}" for s, ok in st.exact.items() if not ok][:5]
        raise ValidationError(
            "The width formulation is not exact for slots " + ", ".join(bad) + " (unequal "
            "costs, or groups/implications touch them); use formulation='auto' or 'structure'."
        )
    _slot_columns(st)
    _couplings(st)
    _equal_counts(st)
    _pair_terms(st)
    _budgets(st)
    _latency_cap(st)
    _objective(st)
    first_col, first_row = st.b.n, st.b.m
    if exact_pairs:
        _disaggregate(st)
    modes = {sv.mode for sv in st.slots.values()}
    kind = modes.pop() if len(modes) == 1 else "hybrid"
    st.b.metadata = {"formulation": kind, "objective_scale": st.objective_scale}
    model = st.b.build()
    return Formulation(model, st.slots, kind, st.budget_rows, st.latency_row, problem.n, st.aux,
                       st.pairs, exact_pairs, st.objective_scale, st.row_scale,
                       first_col if exact_pairs else None, first_row if exact_pairs else None)


# ------------------------------------------------------------------ selection
def _slot_columns(st: _Build) -> None:
    for s, idx in st.p.slots().items():
        if st.use_width(s):
            _width_slot(st, s)
        else:
            _structure_slot(st, s, idx)


def _width_slot(st: _Build, s: Slot) -> None:
    """Formulation 2: y[s, k] for allowed widths k, one of them chosen."""
    p, b = st.p, st.b
    idx = p.slots()[s]
    opts = p.allowed_counts(s)
    cols = b.add_columns(opts.size, 0.0, 1.0, 0.0, True,
                         names=[f"w[{s[0]}|{s[1]}|{k}]" for k in opts])
    b.add_rows(np.zeros(opts.size), cols, np.ones(opts.size), 1.0, 1.0, count=1,
               names=[f"one_width[{s[0]}|{s[1]}]"])
    st.score[0].append(cols)
    st.score[1].append(p.slot_curve(s)[opts])
    for r in st.resources:
        st.add_cost(r, cols, float(p.costs[r][idx[0]]) * opts.astype(np.float64))
    table = p.latency_tables.get(s)
    if table is not None:
        st.lat[0].append(cols)
        st.lat[1].append(table.table[opts])
    k = opts.astype(np.float64)
    st.slots[s] = _SlotVars("width", p.slot_order(s), cols, opts, cols, k, (cols, k))


def _structure_slot(st: _Build, s: Slot, idx: np.ndarray) -> None:
    """Formulation 1: x[i] per structure, with the slot's count rows."""
    p, b = st.p, st.b
    cols = b.add_columns(idx.size, 0.0, 1.0, 0.0, True,
                         names=[f"x[{p.ids[i]}]" for i in idx])
    st.score[0].append(cols)
    st.score[1].append(p.score[idx])
    for r in st.resources:
        st.add_cost(r, cols, p.costs[r][idx])
    st.slots[s] = _SlotVars("structure", idx, cols, None, cols, np.ones(idx.size))
    lo, hi, m, allow_zero = p.slot_count_range(s)
    if lo > 0 or hi < idx.size:
        b.add_rows(np.zeros(idx.size), cols, np.ones(idx.size), lo, hi, count=1,
                   names=[f"count[{s[0]}|{s[1]}]"])
    if m > 1 or not allow_zero:
        _multiple_rows(st, s, cols, m, allow_zero)
    if s in p.latency_tables:
        _latency_segments(st, s, cols)


def _multiple_rows(st: _Build, s: Slot, cols: np.ndarray, m: int, allow_zero: bool) -> None:
    """sum_{i in S} x_i = m q_S with integer q_S."""
    q = st.b.add_columns(1, 0 if allow_zero else 1, cols.size // m, 0.0, True,
                         names=[f"q[{s[0]}|{s[1]}]"])
    st.b.add_rows(np.zeros(cols.size + 1), np.concatenate([cols, q]),
                  np.concatenate([np.ones(cols.size), [-float(m)]]), 0.0, 0.0, count=1,
                  names=[f"multiple[{s[0]}|{s[1]}]"])
    st.aux.append(("multiple", s, q, m))


def _latency_segments(st: _Build, s: Slot, cols: np.ndarray) -> None:
    """Binaries z[s, t] for the maximal runs [a_t, b_t] of allowed counts on which
    the staircase is constant; sum_t a_t z_t <= count <= sum_t b_t z_t."""
    t = st.p.latency_tables[s].table
    ks = st.p.allowed_counts(s)
    change = np.flatnonzero(np.diff(t[ks]) != 0) + 1
    starts = np.concatenate([[0], change]).astype(np.int64) if ks.size else np.zeros(0, np.int64)
    ends = np.concatenate([change, [ks.size]]).astype(np.int64) - 1 if ks.size else starts
    seg_lo, seg_hi, seg_val = ks[starts], ks[ends], t[ks[starts]]
    nseg = seg_val.size
    z = st.b.add_columns(nseg, 0.0, 1.0, 0.0, True,
                         names=[f"seg[{s[0]}|{s[1]}|{a}-{c}]" for a, c in zip(seg_lo, seg_hi)])
    st.b.add_rows(np.zeros(nseg), z, np.ones(nseg), 1.0, 1.0, count=1,
                  names=[f"one_seg[{s[0]}|{s[1]}]"])
    n = cols.size
    rows = np.concatenate([np.zeros(n + nseg), np.ones(n + nseg)])
    cc = np.concatenate([cols, z, cols, z])
    vv = np.concatenate([np.ones(n), -seg_lo.astype(float), np.ones(n), -seg_hi.astype(float)])
    st.b.add_rows(rows, cc, vv, [0.0, -np.inf], [np.inf, 0.0], count=2,
                  names=[f"seg_lo[{s[0]}|{s[1]}]", f"seg_hi[{s[0]}|{s[1]}]"])
    st.lat[0].append(z)
    st.lat[1].append(seg_val.astype(np.float64))
    st.aux.append(("segments", s, z, (seg_lo, seg_hi)))


# ------------------------------------------------------------------ couplings
def _couplings(st: _Build) -> None:
    """Groups x_i = x_j and implications x_i <= x_j (structure-mode slots only)."""
    p = st.p
    col_of = np.full(p.n, -1, dtype=np.int64)
    for sv in st.slots.values():
        if sv.mode == "structure":
            col_of[sv.members] = sv.cols
    pairs = []
    for g in p.groups:
        c = [col_of[p.index(sid)] for sid in g]
        pairs += [(c[0], cj, 0.0) for cj in c[1:]]
    for a, bb in p.implications:
        pairs.append((col_of[p.index(a)], col_of[p.index(bb)], -np.inf))
    if pairs:
        k = len(pairs)
        cols = np.array([(a, c) for a, c, _ in pairs], dtype=np.int64)
        st.b.add_rows(np.repeat(np.arange(k), 2), cols.ravel(), np.tile([1.0, -1.0], k),
                      [lo for _, _, lo in pairs], 0.0, count=k,
                      names=[f"couple{t}" for t in range(k)])


def _equal_counts(st: _Build) -> None:
    for t, eq in enumerate(st.p.equal_counts):
        s0 = st.slots[eq[0]]
        for j, s in enumerate(eq[1:]):
            sv = st.slots[s]
            st.b.add_rows(np.zeros(s0.count_cols.size + sv.count_cols.size),
                          np.concatenate([s0.count_cols, sv.count_cols]),
                          np.concatenate([s0.count_coef, -sv.count_coef]), 0.0, 0.0, count=1,
                          names=[f"equal{t}_{j}"])


# ---------------------------------------------------------------- pair costs
def _onehot(st: _Build, s: Slot) -> tuple[np.ndarray, np.ndarray]:
    """One-hot count columns of a slot: its width binaries in width mode, else
    u[s, k] over the allowed counts with sum_i x_i = sum_k k u[s, k]."""
    sv = st.slots[s]
    if sv.onehot is None:
        opts = st.p.allowed_counts(s)
        u = st.b.add_columns(opts.size, 0.0, 1.0, 0.0, True,
                             names=[f"k[{s[0]}|{s[1]}|{k}]" for k in opts])
        st.b.add_rows(np.zeros(opts.size), u, np.ones(opts.size), 1.0, 1.0, count=1,
                      names=[f"one_count[{s[0]}|{s[1]}]"])
        st.b.add_rows(np.zeros(sv.cols.size + opts.size), np.concatenate([sv.cols, u]),
                      np.concatenate([np.ones(sv.cols.size), -opts.astype(np.float64)]), 0.0, 0.0,
                      count=1, names=[f"count_link[{s[0]}|{s[1]}]"])
        st.aux.append(("counts", s, u, opts))
        sv.onehot = (u, opts.astype(np.float64))
    return sv.onehot


def merged_pair_costs(problem: AllocationProblem) -> dict[tuple[Slot, Slot], dict[str, float]]:
    """Pair costs summed per unordered slot pair and resource (the cost of a conv
    from a to b and of one from b to a share one product)."""
    out: dict[tuple[Slot, Slot], dict[str, float]] = {}
    for pc in problem.pair_costs:
        first, second = sorted((pc.slot_a, pc.slot_b))
        d = out.setdefault((first, second), {})
        d[pc.resource] = d.get(pc.resource, 0.0) + pc.coef
    return out


def _pair_terms(st: _Build) -> None:
    """coef * k_a * k_b: a square (a = b) is linear in a's one-hot counts; a pair
    of two slots gets one product column P with k_a * k_b = scale * P."""
    for (a, bb), coef in merged_pair_costs(st.p).items():
        if not any(r in st.cost for r in coef):
            continue
        ua, ka = _onehot(st, a)
        if a == bb:
            for r, c in coef.items():
                st.add_cost(r, ua, c * ka * ka)
            continue
        ub, kb = _onehot(st, bb)
        if ka.size == 0 or kb.size == 0:
            continue  # a slot without an allowed count: its one_count row is already infeasible
        lo, hi = float(ka.min() * kb.min()), float(ka.max() * kb.max())
        scale = 1.0 if st.integer_only or hi <= 0 else hi
        col = int(st.b.add_columns(1, lo / scale, hi / scale, 0.0, st.integer_only,
                                   names=[f"prod[{a[0]}|{a[1]}*{bb[0]}|{bb[1]}]"])[0])
        for r, c in coef.items():
            st.add_cost(r, [col], [c * scale])
        st.pairs.append(PairTerm(a, bb, col, scale, coef, ua, ka, ub, kb))


def _disaggregate(st: _Build) -> None:
    """Exact products: on the side a with fewer options, z_k = y_{a,k} * k_b with
    min(B) y_{a,k} <= z_k <= max(B) y_{a,k}, sum_k z_k = k_b, scale P = sum_k k z_k."""
    for t, pt in enumerate(st.pairs):
        if pt.opts_a.size <= pt.opts_b.size:
            ua, ka, ub, kb, sa, sb = pt.cols_a, pt.opts_a, pt.cols_b, pt.opts_b, pt.slot_a, pt.slot_b
        else:
            ua, ka, ub, kb, sa, sb = pt.cols_b, pt.opts_b, pt.cols_a, pt.opts_a, pt.slot_b, pt.slot_a
        n = ua.size
        z = st.b.add_columns(n, 0.0, float(kb.max()), 0.0, st.integer_only,
                             names=[f"z{t}[{int(k)}]" for k in ka])
        st.b.add_rows(np.zeros(n + ub.size), np.concatenate([z, ub]),
                      np.concatenate([np.ones(n), -kb]), 0.0, 0.0, count=1,
                      names=[f"z{t}_sum"])
        rows = np.concatenate([np.arange(n), np.arange(n)])
        cols = np.concatenate([z, ua])
        st.b.add_rows(rows, cols, np.concatenate([np.ones(n), np.full(n, -kb.max())]),
                      -np.inf, 0.0, count=n, names=[f"z{t}_hi[{int(k)}]" for k in ka])
        if kb.min() > 0:
            st.b.add_rows(rows, cols, np.concatenate([np.ones(n), np.full(n, -kb.min())]),
                          0.0, np.inf, count=n, names=[f"z{t}_lo[{int(k)}]" for k in ka])
        st.b.add_rows(np.zeros(n + 1), np.concatenate([[pt.col], z]),
                      np.concatenate([[pt.scale], -ka]), 0.0, 0.0, count=1,
                      names=[f"prod{t}"])
        st.aux.append(("disaggregation", sa, z, (ka, sb)))


# --------------------------------------------------------- budgets, objective
def _sparse_row(terms: tuple[list, list]) -> tuple[np.ndarray, np.ndarray]:
    # Duplicate columns (several costs on one column) are summed.
    if not terms[0]:
        return np.zeros(0, np.int64), np.zeros(0)
    cols = np.concatenate(terms[0]).astype(np.int64)
    vals = np.concatenate(terms[1]).astype(np.float64)
    uniq, inv = np.unique(cols, return_inverse=True)
    return uniq, np.bincount(inv, weights=vals, minlength=uniq.size)


def _power_of_two(vals: np.ndarray, window: tuple[float, float]) -> float:
    """1, or the power of two that brings max |vals| to about 1 when it lies
    outside ``window``."""
    m = float(np.max(np.abs(vals))) if vals.size else 0.0
    if m == 0.0 or not math.isfinite(m) or window[0] <= m <= window[1]:
        return 1.0
    return 2.0 ** min(max(-round(math.log2(m)), -256), 64)


def _budgets(st: _Build) -> None:
    for r, lo, hi in st.budgets:
        cols, vals = _sparse_row(st.cost[r])
        s = 1.0 if st.integer_only else _power_of_two(vals, _ROW_RANGE)
        row = int(st.b.add_rows(np.zeros(cols.size), cols, vals * s, lo * s, hi * s, count=1,
                                names=[f"budget[{r}]"])[0])
        st.budget_rows.append(row)
        if s != 1.0:
            st.row_scale[row] = s


def _latency_cap(st: _Build) -> None:
    if st.lat[0] and st.p.latency_cap is not None:
        cols, vals = np.concatenate(st.lat[0]), np.concatenate(st.lat[1])
        st.latency_row = int(st.b.add_rows(np.zeros(cols.size), cols, vals, -np.inf,
                                           st.p.latency_cap, count=1, names=["latency_cap"])[0])


def _objective(st: _Build) -> None:
    """max sum of scores (slot curves in width mode), or min a resource's usage
    subject to the importance floor."""
    p, b = st.p, st.b
    sc, sv = _sparse_row(st.score)
    if st.maximize:
        cols, vals, offset = sc, sv, 0.0
    else:
        res, _ = p.objective.min_resource_terms()
        floor = p.min_resource_floor()
        s = 1.0 if st.integer_only else _power_of_two(sv, _ROW_RANGE)
        b.add_rows(np.zeros(sc.size), sc, sv * s, floor * s, np.inf, count=1,
                   names=["importance_floor"])
        if res == "latency":
            if not st.lat[0]:
                raise ValidationError("Minimizing latency needs latency tables.")
            cols, vals = _sparse_row(st.lat)
            offset = 0.0
        else:
            cols, vals = _sparse_row(st.cost[res])
            offset = p.fixed_costs[res]
    s = 1.0 if st.integer_only else _power_of_two(vals, _OBJECTIVE_RANGE)
    b.set_cost(cols, vals * s)
    b.offset = offset * s
    st.objective_scale = s


__all__ = ["Formulation", "PairTerm", "formulate", "merged_pair_costs", "width_exact_slots"]
