"""Anderson et al.'s ideal ReLU cuts, separated in linear time, in a cutting-plane loop at
the root (``formulations/adversarial.md``, section "Ideal cuts").

For an unstable neuron h = max(0, w.x + b) with binary s and inputs x in the box [L, U]
(the region's box at layer 0, [max(l, 0), max(u, 0)] of the previous layer's bounds
after a ReLU), every subset I of supp(w) gives a valid inequality (Anderson, Huchette,
Ma, Tjandraatmadja, Vielma 2020, Theorem 1)::

    h <= sum_{i in I} w_i (x_i - L'_i (1 - s)) + (b + sum_{i not in I} w_i U'_i) s
    L'_i = L_i if w_i >= 0 else U_i,   U'_i = U_i if w_i >= 0 else L_i

and together with the big-M rows they describe the convex hull of the neuron's graph.
There are 2^n of them, but the most violated one at a point (x*, h*, s*) is found in
O(n) (their Proposition 12): the right-hand side is a sum of independent terms, so
i enters I exactly when ``w_i (x*_i - L'_i (1 - s*)) < w_i U'_i s*``. The inequality is
violated when h* exceeds that minimum.

The loop: solve the LP relaxation of the encoding with HiGHS, separate the most
violated inequality of every unstable neuron, add those whose violation exceeds
``tol (1 + |h*|)`` as rows, re-solve from the previous basis (dual simplex), until no cut
is violated, the LP bound moves by less than ``min_gain`` (relative) in a round, or
``rounds`` / ``time_limit_s`` are reached. The cuts active (slack <= 1e-6) at the last LP
solution are kept and appended to the model as ordinary rows; any MIP solver then
starts from the tightened relaxation. Cuts are valid for every integer point, so no
point of the network's graph is cut off (tested on float64 forward passes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..solve import LinearModel
from .formulate import Encoding

__all__ = ["CutRows", "separate_ideal", "root_cut_loop", "with_rows", "layer_inputs"]


@dataclass
class CutRows:
    """Rows ``A x <= upper`` (COO, local row numbers) and what the loop measured."""

    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cols: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    vals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    upper: np.ndarray = field(default_factory=lambda: np.zeros(0))
    names: list[str] = field(default_factory=list)
    lp_bounds: list[float] = field(default_factory=list)   # LP value before each round
    separated: int = 0                                      # cuts added over all rounds
    rounds: int = 0
    time_s: float = 0.0

    @property
    def count(self) -> int:
        return int(self.upper.size)

    def stats(self) -> dict[str, Any]:
        return {"cuts_kept": self.count, "cuts_separated": self.separated,
                "cut_rounds": self.rounds, "cut_time_s": self.time_s,
                "lp_bound_first": self.lp_bounds[0] if self.lp_bounds else None,
                "lp_bound_last": self.lp_bounds[-1] if self.lp_bounds else None}


def layer_inputs(enc: Encoding) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per layer: (input columns, -1 for constant 0; input box lower; upper), as the
    encoding built them (``formulate.add_network``)."""
    net, cols, b = enc.network, enc.cols, enc.bounds
    out = []
    prev = cols.x
    lo, up = enc.region.box()
    for k, layer in enumerate(net.layers):
        out.append((prev, lo, up))
        prev = cols.h[k] if k < len(cols.h) else prev
        lo, up = ((np.maximum(b.lower[k], 0.0), np.maximum(b.upper[k], 0.0)) if layer.relu
                  else (b.lower[k], b.upper[k]))
    return out


def separate_ideal(enc: Encoding, v: np.ndarray, tol: float = 1e-6,
                   layers: list | None = None) -> CutRows:
    """The most violated ideal inequality of every unstable neuron at the point ``v``
    (a value per column), where violated by more than ``tol (1 + |h|)``."""
    out = CutRows()
    ri, cj, vals, ups, names = [], [], [], [], []
    m = 0
    for k, (prev, lo, up) in enumerate(layers or layer_inputs(enc)):
        if k >= len(enc.cols.s):
            break
        s_cols = enc.cols.s[k]
        un = np.flatnonzero(s_cols >= 0)
        if un.size == 0:
            continue
        layer = enc.network.layers[k]
        alive = prev >= 0
        fixed = alive & (up <= lo)
        var = np.flatnonzero(alive & ~fixed)
        W = layer.W[np.ix_(un, var)]
        const = layer.b[un] + layer.W[np.ix_(un, np.flatnonzero(fixed))] @ lo[fixed]
        xv = v[prev[var]]
        sv = v[s_cols[un]]
        hv = v[enc.cols.h[k][un]]
        Lb = np.where(W >= 0, lo[var][None, :], up[var][None, :])
        Ub = np.where(W >= 0, up[var][None, :], lo[var][None, :])
        left = W * (xv[None, :] - Lb * (1.0 - sv[:, None]))
        right = W * Ub * sv[:, None]
        inI = (left < right) & (W != 0)
        rhs = np.where(inI, left, right).sum(axis=1) + const * sv
        viol = hv - rhs
        hit = np.flatnonzero(viol > tol * (1.0 + np.abs(hv)))
        for t in hit:
            i = un[t]
            sub = np.flatnonzero(inI[t])  # the set I
            wI = W[t, sub]
            s_coef = -(const[t] + wI @ Lb[t, sub] + W[t, ~inI[t]] @ Ub[t, ~inI[t]])
            ri.append(np.full(sub.size + 2, m))
            cj.append(np.r_[enc.cols.h[k][i], prev[var[sub]], s_cols[i]])
            vals.append(np.r_[1.0, -wI, s_coef])
            ups.append(-(wI @ Lb[t, sub]))
            names.append(f"L{k}_ideal_cut{i}")
            m += 1
    if m:
        r, c, x = np.concatenate(ri), np.concatenate(cj), np.concatenate(vals)
        nz = x != 0.0
        out.rows, out.cols, out.vals = r[nz], c[nz], x[nz]
        out.upper = np.asarray(ups, dtype=np.float64)
        out.names = names
    out.separated = m
    return out


def _append(a: CutRows, b: CutRows) -> CutRows:
    off = a.count
    return replace(a, rows=np.r_[a.rows, b.rows + off], cols=np.r_[a.cols, b.cols],
                   vals=np.r_[a.vals, b.vals], upper=np.r_[a.upper, b.upper],
                   names=a.names + b.names)


def _select(c: CutRows, keep: np.ndarray) -> CutRows:
    idx = np.flatnonzero(keep)
    newpos = np.full(c.count, -1, dtype=np.int64)
    newpos[idx] = np.arange(idx.size)
    sel = keep[c.rows]
    return replace(c, rows=newpos[c.rows[sel]], cols=c.cols[sel], vals=c.vals[sel],
                   upper=c.upper[idx], names=[c.names[i] for i in idx])


def with_rows(model: LinearModel, cuts: CutRows) -> LinearModel:
    """``model`` with the rows ``cuts`` (``<= upper``) appended (a new LinearModel)."""
    if cuts.count == 0:
        return model
    extra = sp.csc_matrix((cuts.vals, (cuts.rows, cuts.cols)),
                          shape=(cuts.count, model.num_cols))
    names = None if model.row_names is None else list(model.row_names) + list(cuts.names)
    out = replace(model, A=sp.vstack([model.A, extra], format="csc"),
                  row_lower=np.r_[model.row_lower, np.full(cuts.count, -np.inf)],
                  row_upper=np.r_[model.row_upper, cuts.upper], row_names=names,
                  metadata=dict(model.metadata))
    return out


def root_cut_loop(enc: Encoding, rounds: int = 30, time_limit_s: float = 10.0,
                  min_gain: float = 1e-4, tol: float = 1e-6) -> CutRows:
    """The cutting-plane loop of the module docstring; returns the cuts kept."""
    import highspy

    from ..solve.backends.highs import new_highs, pass_model

    t0 = time.perf_counter()
    model = enc.model
    lp = replace(model, integrality=np.zeros(model.num_cols, dtype=bool))
    h = new_highs()
    pass_model(h, lp)
    h.setOptionValue("time_limit", float(time_limit_s))
    layers = layer_inputs(enc)
    sense = 1.0 if model.sense == "max" else -1.0
    kept = CutRows()
    total = 0
    prev_obj = None
    n_rounds = 0
    while True:
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            break
        obj = float(h.getInfo().objective_function_value)
        kept.lp_bounds.append(obj)
        if prev_obj is not None and sense * (prev_obj - obj) < min_gain * (1.0 + abs(obj)):
            break
        if n_rounds >= rounds or time.perf_counter() - t0 > time_limit_s:
            break
        v = np.asarray(h.getSolution().col_value)
        new = separate_ideal(enc, v, tol, layers)
        if new.count == 0:
            break
        n_rounds += 1
        total += new.count
        indptr = np.searchsorted(new.rows, np.arange(new.count + 1))
        h.addRows(new.count, np.full(new.count, -highspy.kHighsInf), new.upper,
                  int(new.vals.size), indptr.astype(np.int32), new.cols.astype(np.int32),
                  new.vals)
        kept = _append(kept, new)
        prev_obj = obj
    if kept.count and h.getModelStatus() == highspy.HighsModelStatus.kOptimal:
        act = np.asarray(h.getSolution().row_value)[model.num_rows:]
        kept = _select(kept, act >= kept.upper - 1e-6 * (1.0 + np.abs(kept.upper)))
    kept.separated, kept.rounds = total, n_rounds
    kept.time_s = time.perf_counter() - t0
    return kept
