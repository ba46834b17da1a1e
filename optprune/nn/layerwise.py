"""Layerwise selection: which groups of a consumer layer's input columns to keep so that the
refitted layer reproduces its output best (cardinality-constrained ridge least squares).

A consumer layer computes ``Y = X W^T`` (calibration inputs X, n x d; weight W, m x d). Its
input columns come in groups (one column for an MLP neuron or FFN channel, ``head_dim``
columns for an attention head, ``k*k`` columns for a conv input channel on unfolded
patches). For a keep set S of groups (columns ``J(S)``, plus every column that belongs to
no group: those are always kept, e.g. the constant column of a bias),

    f(S) = min_B || Y - X_J B ||_F^2 + lam || B - W_J^T ||_F^2

(ridge toward the dense weights, on the kept rows only). With H = X^T X + lam I,
C = X^T Y + lam W^T and a_j = lam ||W_j||^2 (column j of W) this is

    f(S) = ||Y||^2 + sum_{j in J} a_j - tr(C_J^T H_JJ^{-1} C_J),   B*(S) = H_JJ^{-1} C_J,

so only the sufficient statistics X^T X, X^T Y, ||Y||^2 (and W) matter
(:class:`LayerStats`), never X itself; and C enters only through C C^T, so the m outputs are
compressed to r = rank(C) <= d columns by an SVD. The target Y may come from another input
than X (the dense model's output while X comes from an already pruned model): pass
X^T Y and ||Y||^2 accumulated from the pair.

``lam = 0`` is solved as the ridge ``lam = 1e-10 * mean(diag X^T X)`` (reported as
``ridge``), a jitter that lets Grams that are singular through dead or duplicated units
factor; with fewer samples than columns, ``lam = 0`` is refused (the refit would
interpolate the calibration data).

Functions: :func:`greedy_elimination` (backward elimination with OBS updates of the
inverse Gram: the whole curve of nested keep sets, widths G .. 0, in O(d^3)),
:func:`greedy_selection` (forward selection, the same curve built the other way),
:func:`swap_search` (local search by single, optionally pair, exchanges from any keep set),
:func:`heuristic_selection` (the best of that search from both greedy starts), :func:`refit`,
:func:`selection_error` (f from scratch), :func:`exact_selection` (the proven optimum of a
small layer by branch and cut in SCIP; optional extra ``scip``). The math, and why this
solver, is in formulations/layerwise.md.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import scipy.linalg as sla

from ..errors import ValidationError, check

__all__ = ["LayerStats", "ElimCurve", "Selection", "ExactSelection", "greedy_elimination",
           "greedy_selection", "swap_search", "heuristic_selection", "refit", "selection_error",
           "exact_selection", "column_groups"]

JITTER = 1e-10  # lam = 0 is solved with this ridge times mean(diag X^T X)


# ------------------------------------------------------------------ statistics
def _np64(a: Any, what: str) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor; the core does not import torch
        a = a.detach().cpu().double().numpy()
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} must be a numeric array; got {type(a).__name__}.") from exc
    return arr


def _finite(a: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(a)):
        raise ValidationError(f"{what} must be finite; it holds NaN or inf. Check the "
                              "calibration activations (a diverged model gives NaN).")


@dataclass(frozen=True)
class LayerStats:
    """Sufficient statistics of one consumer layer, in float64.

    gxx: X^T X (d x d); gxy: X^T Y (d x m); yy: ||Y||_F^2; n: rows of X seen (samples x
    positions); weight: the dense weight W (m x d) that the ridge pulls toward.
    ``has_intercept``: the last column of X is the constant 1 and the last column of W the
    dense bias (:meth:`from_batches` with ``bias``); it belongs to no group, so it is always
    kept, and the last row of :func:`refit` is the refitted bias.
    """

    gxx: np.ndarray
    gxy: np.ndarray
    yy: float
    n: int
    weight: np.ndarray
    has_intercept: bool = False

    def __post_init__(self) -> None:
        gxx = _np64(self.gxx, "LayerStats.gxx (X^T X)")
        gxy = _np64(self.gxy, "LayerStats.gxy (X^T Y)")
        w = _np64(self.weight, "LayerStats.weight (W)")
        check(gxx.ndim == 2 and gxx.shape[0] == gxx.shape[1] and gxx.shape[0] >= 1,
              "The shape of LayerStats.gxx (X^T X)", "(d, d) with d >= 1", gxx.shape)
        d = gxx.shape[0]
        check(w.ndim == 2 and w.shape[1] == d and w.shape[0] >= 1,
              "The shape of LayerStats.weight (W)", f"(m, {d}) (one column per input column)",
              w.shape)
        m = w.shape[0]
        check(gxy.shape == (d, m), "The shape of LayerStats.gxy (X^T Y)", f"({d}, {m})", gxy.shape)
        for a, what in ((gxx, "LayerStats.gxx"), (gxy, "LayerStats.gxy"), (w, "LayerStats.weight")):
            _finite(a, what)
        check(isinstance(self.yy, (int, float, np.floating, np.integer)) and math.isfinite(self.yy)
              and self.yy >= 0, "LayerStats.yy (||Y||^2)", "a finite number >= 0", self.yy)
        check(isinstance(self.n, (int, np.integer)) and not isinstance(self.n, bool) and self.n >= 1,
              "LayerStats.n (rows of X)", "a positive integer", self.n)
        scale = max(float(np.max(np.abs(gxx))), 1e-300)
        check(float(np.max(np.abs(gxx - gxx.T))) <= 1e-8 * scale, "LayerStats.gxx (X^T X)",
              "symmetric", "a non-symmetric matrix", "Pass X^T X accumulated in float64.")
        check(bool(np.all(np.diag(gxx) >= -1e-12 * scale)), "The diagonal of LayerStats.gxx",
              ">= 0 (squared column norms)", float(np.min(np.diag(gxx))))
        object.__setattr__(self, "gxx", (gxx + gxx.T) / 2)
        object.__setattr__(self, "gxy", gxy)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "yy", float(self.yy))
        object.__setattr__(self, "n", int(self.n))

    @property
    def d(self) -> int:
        return self.gxx.shape[0]

    @property
    def m(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def from_gram(cls, gxx: Any, weight: Any, n: int) -> "LayerStats":
        """The layer's own output as target: X^T Y = X^T X W^T, ||Y||^2 = tr(W X^T X W^T)."""
        g = _np64(gxx, "gxx (X^T X)")
        w = _np64(weight, "weight (W)")
        check(w.ndim == 2 and g.ndim == 2 and w.shape[1] == g.shape[0],
              "The shapes of gxx and weight", "(d, d) and (m, d)", (g.shape, w.shape))
        gw = g @ w.T
        return cls(g, gw, max(float(np.sum(w.T * gw)), 0.0), n, w)

    @classmethod
    def from_batches(cls, batches: Iterable[Any], weight: Any, bias: Any = None) -> "LayerStats":
        """Accumulate the statistics in float64 over batches, streaming.

        Each item is ``X`` or ``(X, Y)`` or ``(X, None)``: X of shape (..., d) (samples or
        tokens by input columns; a conv's unfolded patches), Y of shape (..., m) the target
        for those rows (another model's output, e.g. the dense layer's on the dense model's
        inputs). Y None means the layer's own output ``X W^T (+ bias)``. numpy arrays or torch
        tensors. With ``bias`` (m,), a constant column is appended (``has_intercept``).
        """
        w = _np64(weight, "The weight W")
        check(w.ndim == 2 and w.shape[0] >= 1 and w.shape[1] >= 1, "The shape of the weight W",
              "(m, d) (out by in features, as nn.Linear.weight)", w.shape)
        m, d_in = w.shape
        if bias is not None:
            b = _np64(bias, "The bias")
            check(b.shape == (m,), "The shape of the bias", f"({m},)", b.shape)
            w = np.hstack([w, b[:, None]])
        _finite(w, "The weight W (and bias)")
        d = w.shape[1]
        gxx = np.zeros((d, d))
        gself = np.zeros((d, d))
        gxy = np.zeros((d, m))
        yy, n, k = 0.0, 0, 0
        for item in batches:
            x, y = (item[0], item[1] if len(item) > 1 else None) \
                if isinstance(item, (tuple, list)) else (item, None)
            x = _np64(x, f"Calibration batch {k}'s X")
            check(x.ndim >= 2 and x.shape[-1] == d_in, f"The shape of calibration batch {k}'s X",
                  f"(..., {d_in}) (rows by the layer's input columns)", x.shape)
            x = x.reshape(-1, d_in)
            _finite(x, f"Calibration batch {k}'s X")
            if bias is not None:
                x = np.hstack([x, np.ones((x.shape[0], 1))])
            gram = x.T @ x
            gxx += gram
            if y is None:
                gself += gram
            else:
                y = _np64(y, f"Calibration batch {k}'s Y")
                check(y.ndim >= 1 and y.shape[-1] == m and y.size == x.shape[0] * m,
                      f"The shape of calibration batch {k}'s Y",
                      f"(..., {m}) with one row per row of X ({x.shape[0]})", y.shape)
                y = y.reshape(-1, m)
                _finite(y, f"Calibration batch {k}'s Y")
                gxy += x.T @ y
                yy += float(np.sum(y * y))
            n += x.shape[0]
            k += 1
        check(n > 0, "The number of calibration rows", "positive (at least one batch)", n)
        gw = gself @ w.T
        gxy += gw
        yy += max(float(np.sum(w.T * gw)), 0.0)
        return cls(gxx, gxy, yy, n, w, has_intercept=bias is not None)


def column_groups(n_groups: int, group_size: int = 1) -> list[np.ndarray]:
    """Groups of ``group_size`` consecutive columns: heads (head_dim columns each), or
    single channels/neurons (size 1), or conv input channels on patches unfolded
    channel-major as ``torch.nn.functional.unfold`` does (k*k columns each)."""
    check(isinstance(n_groups, int) and n_groups >= 1, "n_groups", "a positive integer", n_groups)
    check(isinstance(group_size, int) and group_size >= 1, "group_size", "a positive integer",
          group_size)
    return [np.arange(g * group_size, (g + 1) * group_size) for g in range(n_groups)]


# ------------------------------------------------------------------ the prepared problem
@dataclass(frozen=True)
class _Problem:
    """f(S) = yy + sum a_J - tr(Ct_J^T H_JJ^{-1} Ct_J) with Ct Ct^T = C C^T (r <= d columns)."""

    H: np.ndarray
    Ct: np.ndarray
    yy: float
    a: np.ndarray
    cols: tuple[np.ndarray, ...]
    fixed: np.ndarray
    lam: float
    ridge: float
    C: np.ndarray  # uncompressed, for the refit
    col_group: np.ndarray  # group of each column, -1 for the always-kept ones
    buckets: tuple[tuple[np.ndarray, np.ndarray], ...]  # (group ids, their columns (n, k)) by size

    @property
    def n_groups(self) -> int:
        return len(self.cols)

    def columns(self, keep: np.ndarray) -> np.ndarray:
        cg = self.col_group
        return np.flatnonzero((cg < 0) | keep[np.maximum(cg, 0)]).astype(np.intp)

    def bucketed(self, mask: np.ndarray):
        """(group ids, columns (n, k)) of the groups where ``mask``, by group size."""
        for ids, J in self.buckets:
            sel = mask[ids]
            if sel.any():
                yield ids[sel], J[sel]

    def error(self, keep: np.ndarray) -> float:
        j = self.columns(keep)
        if j.size == 0:
            return self.yy
        L = _chol(self.H[np.ix_(j, j)])
        z = sla.solve_triangular(L, self.Ct[j], lower=True, check_finite=False)
        return max(float(self.yy + self.a[j].sum() - np.sum(z * z)), 0.0)


def _chol(a: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.cholesky(a)
    except np.linalg.LinAlgError as exc:
        raise ValidationError(
            "The ridge-regularized Gram X^T X + lam I of the kept columns is not positive "
            "definite in float64 (X^T X is not a Gram matrix, or lam is too small for its "
            "conditioning). Accumulate X^T X in float64 or pass a larger lam.") from exc


def _groups(groups: Sequence[Any], d: int) -> tuple[np.ndarray, ...]:
    check(isinstance(groups, (list, tuple)) and len(groups) >= 1, "The 'groups'",
          "a non-empty list of column-index arrays (one per structure)",
          type(groups).__name__ if not isinstance(groups, (list, tuple)) else groups)
    out, seen = [], np.zeros(d, dtype=bool)
    for i, g in enumerate(groups):
        arr = np.asarray(g).ravel()
        check(arr.size >= 1 and np.issubdtype(arr.dtype, np.integer),
              f"Group {i} of 'groups'", "a non-empty array of integer column indices", g)
        check(bool(np.all((arr >= 0) & (arr < d))), f"The column indices of group {i}",
              f"in [0, {d}) (the layer has {d} input columns)", arr.tolist())
        check(np.unique(arr).size == arr.size and not bool(np.any(seen[arr])),
              f"The columns of group {i}", "disjoint from every other group's and distinct",
              arr.tolist())
        seen[arr] = True
        out.append(np.sort(arr).astype(np.intp))
    return tuple(out)


def _lam(lam: Any) -> float:
    check(bool(isinstance(lam, (int, float, np.floating, np.integer))
               and not isinstance(lam, bool) and math.isfinite(lam) and lam >= 0),
          "The ridge 'lam'", "a finite number >= 0", lam)
    return float(lam)


def _prepare(stats: LayerStats, groups: Sequence[Any], lam: float) -> _Problem:
    check(isinstance(stats, LayerStats), "The 'stats'", "a LayerStats", type(stats).__name__)
    lam = _lam(lam)
    d = stats.d
    cols = _groups(groups, d)
    grouped = np.zeros(d, dtype=bool)
    for c in cols:
        grouped[c] = True
    fixed = np.flatnonzero(~grouped).astype(np.intp)
    col_group = np.full(d, -1, dtype=np.intp)
    for g, c in enumerate(cols):
        col_group[c] = g
    sizes = np.array([c.size for c in cols])
    buckets = tuple((np.flatnonzero(sizes == k), np.stack([cols[g] for g in np.flatnonzero(sizes == k)]))
                    for k in np.unique(sizes))
    if lam == 0.0:
        check(stats.n >= d, "The number of calibration rows (samples x positions)",
              f"at least the layer's {d} input columns when lam = 0", stats.n,
              f"Collect more calibration data or pass a ridge lam > 0 (for example "
              f"lam = 1e-2 * trace(X^T X) / d = {1e-2 * np.trace(stats.gxx) / d:.3g}).")
        ridge = JITTER * max(float(np.mean(np.diag(stats.gxx))), 1e-300)
    else:
        ridge = lam
    H = stats.gxx + ridge * np.eye(d)
    C = stats.gxy + ridge * stats.weight.T
    a = ridge * np.sum(stats.weight * stats.weight, axis=0)
    if C.shape[1] > 1:
        u, s, _ = np.linalg.svd(C, full_matrices=False)
        r = int(np.sum(s > 1e-15 * max(s[0], 1e-300)))
        Ct = u[:, :r] * s[:r]
    else:
        Ct = C.copy()
    return _Problem(H, Ct, stats.yy, a, cols, fixed, lam, ridge, C, col_group, buckets)


def _mask(keep: Any, n_groups: int, what: str = "The keep mask") -> np.ndarray:
    k = np.asarray(keep)
    check(k.shape == (n_groups,) and (k.dtype == bool or np.issubdtype(k.dtype, np.integer)),
          what, f"a boolean array of one entry per group ({n_groups})", k.shape)
    if k.dtype != bool:
        check(bool(np.all((k == 0) | (k == 1))), what, "0/1 or boolean", np.unique(k).tolist())
    return k.astype(bool)


def _width(width: Any, n_groups: int) -> int:
    check(bool(isinstance(width, (int, np.integer)) and not isinstance(width, bool)
               and 0 <= width <= n_groups), "The 'width' (groups kept)",
          f"an integer in [0, {n_groups}]", width)
    return int(width)


def selection_error(stats: LayerStats, groups: Sequence[Any], keep: Any, lam: float = 0.0) -> float:
    """f(S) for the keep mask (one bool per group), computed from scratch (Cholesky)."""
    p = _prepare(stats, groups, lam)
    return p.error(_mask(keep, p.n_groups))


def refit(stats: LayerStats, groups: Sequence[Any], keep: Any, lam: float = 0.0) -> np.ndarray:
    """The refitted weights B*(S) = (X_J^T X_J + lam I)^{-1} (X_J^T Y + lam W_J^T), one row per
    kept column in increasing column order (ungrouped columns included; with an intercept the
    last row is the bias): shape (d_kept, m). The new layer weight is B.T."""
    p = _prepare(stats, groups, lam)
    j = p.columns(_mask(keep, p.n_groups))
    if j.size == 0:
        return np.zeros((0, stats.m))
    return sla.cho_solve((_chol(p.H[np.ix_(j, j)]), True), p.C[j], check_finite=False)


# ------------------------------------------------------------------ greedy elimination
@dataclass(frozen=True)
class ElimCurve:
    """Nested greedy keep sets: ``order[i]`` is the i-th group removed; ``error[w]`` is f of
    the keep set of width w (the G - w groups removed first are out), for w = 0 .. G.
    ``ridge`` is the ridge used (lam, or the jitter when lam = 0). ``direction``: "backward"
    (:func:`greedy_elimination`) or "forward" (:func:`greedy_selection`; ``order`` is then
    the order of addition reversed, so the keep set of width w is the first w groups added)."""

    order: np.ndarray
    error: np.ndarray
    lam: float
    ridge: float
    yy: float
    time_s: float
    direction: str = "backward"

    @property
    def n_groups(self) -> int:
        return int(self.order.size)

    def keep_mask(self, width: int) -> np.ndarray:
        """The greedy keep set of ``width`` groups, as one bool per group."""
        w = _width(width, self.n_groups)
        keep = np.ones(self.n_groups, dtype=bool)
        keep[self.order[:self.n_groups - w]] = False
        return keep

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["order"] = self.order.tolist()
        d["error"] = self.error.tolist()
        return d


def _removal_costs(p: _Problem, pdiag: np.ndarray, pblock, B: np.ndarray, pos: np.ndarray,
                   alive: np.ndarray) -> np.ndarray:
    """OBS cost of removing each alive group: tr(B_J^T P_JJ^{-1} B_J) - a_J, with P's diagonal
    ``pdiag`` and its blocks ``pblock(I)`` over the stored columns ``pos`` maps to."""
    cost = np.full(p.n_groups, np.inf)
    for gs, J in p.bucketed(alive):
        at = pos[J]
        BJ = B[at]  # (n, k, r)
        if J.shape[1] == 1:
            quad = np.einsum("nkr,nkr->n", BJ, BJ) / pdiag[at[:, 0]]
        else:
            quad = np.einsum("nkr,nkr->n", BJ, np.linalg.solve(pblock(at), BJ))
        cost[gs] = quad - p.a[J].sum(axis=1)
    return cost


def _inverse_and_fit(p: _Problem, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P = H_JJ^{-1} (Fortran order, symmetric) and B = P Ct_J over the columns ``cols``."""
    if cols.size == 0:
        return np.zeros((0, 0), order="F"), np.zeros((0, p.Ct.shape[1]))
    L = _chol(p.H[np.ix_(cols, cols)])
    P = sla.cho_solve((L, True), np.eye(cols.size), check_finite=False)
    P = np.asfortranarray((P + P.T) / 2)
    return P, P @ p.Ct[cols]


def _positions(d: int, cols: np.ndarray) -> np.ndarray:
    pos = np.full(d, -1, dtype=np.intp)
    pos[cols] = np.arange(cols.size)
    return pos


class _LazyInverse:
    """P = Pc - U U^T: the inverse Gram of the stored columns after rank-k downdates that are
    kept as the columns of U and applied to Pc in one BLAS-3 product every ``block`` columns
    (the per-step work is O(n * block) instead of a memory-bound O(n^2) update)."""

    def __init__(self, Pc: np.ndarray, block: int = 64) -> None:
        self.Pc = Pc
        self.U = np.zeros((Pc.shape[0], block), order="F")
        self.t = 0
        self.diag = np.diag(Pc).copy()

    def columns(self, idx: np.ndarray) -> np.ndarray:
        U = self.U[:, :self.t]
        return self.Pc[:, idx] - U @ U[idx].T

    def blocks(self, at: np.ndarray) -> np.ndarray:  # (n, k) indices -> (n, k, k)
        U = self.U[at, :self.t]
        return self.Pc[at[:, :, None], at[:, None, :]] - U @ U.transpose(0, 2, 1)

    def downdate(self, A: np.ndarray) -> None:
        """P <- P - A A^T."""
        k = A.shape[1]
        if self.t + k > self.U.shape[1]:
            self.flush()
            if k > self.U.shape[1]:
                self.U = np.zeros((self.U.shape[0], k), order="F")
        self.U[:, self.t:self.t + k] = A
        self.t += k
        self.diag -= np.einsum("ij,ij->i", A, A)

    def flush(self) -> None:
        from scipy.linalg.blas import dgemm

        if self.t:
            U = self.U[:, :self.t]
            self.Pc = dgemm(-1.0, U, U, beta=1.0, c=self.Pc, trans_b=True, overwrite_c=True)
            self.t = 0


def greedy_elimination(stats: LayerStats, groups: Sequence[Any], lam: float = 0.0) -> ElimCurve:
    """Remove, one at a time, the group whose removal increases f the least (OBS: with
    P = H_S^{-1} and B = P C_S the cost of removing group J is tr(B_J^T P_JJ^{-1} B_J) - a_J),
    then downdate P <- P - P_:J P_JJ^{-1} P_J: and B likewise. One pass gives the nested keep
    sets of every width G .. 0 in O(d^3): the downdates of P are applied in blocks (BLAS-3),
    P is compacted to the kept columns every few steps and refactored from scratch whenever
    the kept columns have halved since the last factorization (bounding rounding drift at a
    geometric-sum cost). Ties go to the lower group index."""
    t0 = time.perf_counter()
    p = _prepare(stats, groups, lam)
    G, d = p.n_groups, p.H.shape[0]
    keep = np.ones(G, dtype=bool)
    cols = p.columns(keep)
    Pc, B = _inverse_and_fit(p, cols)
    P = _LazyInverse(Pc)
    pos = _positions(d, cols)
    n_factor = n_stored = n_alive = cols.size
    err = np.empty(G + 1)
    err[G] = p.error(keep)
    f = err[G]
    order = np.empty(G, dtype=np.intp)
    for step in range(G):
        cost = _removal_costs(p, P.diag, P.blocks, B, pos, keep)
        g = int(np.argmin(cost))
        keep[g] = False
        order[step] = g
        f += cost[g]
        n_alive -= p.cols[g].size
        if n_alive <= n_factor // 2:
            cols = p.columns(keep)
            Pc, B = _inverse_and_fit(p, cols)
            P = _LazyInverse(Pc)
            pos = _positions(d, cols)
            n_factor = n_stored = cols.size
            f = p.error(keep)
        else:
            idx = pos[p.cols[g]]
            PJ = P.columns(idx)  # (n, k)
            L = np.linalg.cholesky(PJ[idx])
            A = sla.solve_triangular(L, PJ.T, lower=True, check_finite=False).T  # PJ L^-T
            P.downdate(A)
            B -= A @ sla.solve_triangular(L, B[idx], lower=True, check_finite=False)
            if n_alive <= n_stored - max(32, n_stored // 4):  # compact to the kept columns
                P.flush()
                cols = p.columns(keep)
                sub = pos[cols]
                P = _LazyInverse(np.asfortranarray(P.Pc[np.ix_(sub, sub)]))
                B = B[sub]
                pos = _positions(d, cols)
                n_stored = cols.size
        err[G - step - 1] = f
    return ElimCurve(order, np.maximum(err, 0.0), p.lam, p.ridge, p.yy, time.perf_counter() - t0)


def greedy_selection(stats: LayerStats, groups: Sequence[Any], lam: float = 0.0) -> ElimCurve:
    """Forward selection: add, one at a time, the group whose addition lowers f the most.
    Over the columns O not yet kept, with Hr = H_OO - H_OS H_SS^{-1} H_SO and
    Cr = Ct_O - H_OS H_SS^{-1} Ct_S (the Gram and the correlations left after projecting out
    the kept columns S), adding group h lowers f by tr(Cr_h^T Hr_hh^{-1} Cr_h) - a_h; then
    Hr and Cr are updated by the rank-k elimination of h. One pass gives the nested keep sets
    of every width 0 .. G in O(d^3) (the residual matrices shrink to the columns left; they
    are rebuilt from a fresh factorization whenever the kept columns have doubled, bounding
    rounding drift). Ties go to the lower group index. Backward elimination and forward
    selection reach different keep sets: :func:`heuristic_selection` starts from both."""
    t0 = time.perf_counter()
    p = _prepare(stats, groups, lam)
    G, d = p.n_groups, p.H.shape[0]
    keep = np.zeros(G, dtype=bool)
    err = np.empty(G + 1)

    def residual(keep):
        S = p.columns(keep)
        out = np.flatnonzero((p.col_group >= 0) & ~keep[np.maximum(p.col_group, 0)])
        Hr, Cr = p.H[np.ix_(out, out)], p.Ct[out]
        if S.size:
            L = _chol(p.H[np.ix_(S, S)])
            A = sla.solve_triangular(L, p.H[np.ix_(S, out)], lower=True, check_finite=False)
            Hr = Hr - A.T @ A
            Cr = Cr - A.T @ sla.solve_triangular(L, p.Ct[S], lower=True, check_finite=False)
        return Hr, Cr, _positions(d, out), out.size, p.error(keep)

    Hr, Cr, pos, n_stored, f = residual(keep)
    n_factor = p.fixed.size
    n_kept = p.fixed.size
    err[0] = f
    adds = np.empty(G, dtype=np.intp)
    for step in range(G):
        gain = np.full(G, -np.inf)
        for gs, J in p.bucketed(~keep):
            at = pos[J]
            CJ = Cr[at]  # (n, k, r)
            if J.shape[1] == 1:
                hjj = Hr[at[:, 0], at[:, 0]]
                quad = np.einsum("nkr,nkr->n", CJ, CJ) / np.maximum(hjj, p.ridge)
            else:
                quad = np.einsum("nkr,nkr->n", CJ,
                                 np.linalg.solve(Hr[at[:, :, None], at[:, None, :]], CJ))
            gain[gs] = quad - p.a[J].sum(axis=1)
        g = int(np.argmax(gain))
        keep[g] = True
        adds[step] = g
        n_kept += p.cols[g].size
        if n_kept >= 2 * max(n_factor, 1) or step == G - 1:
            Hr, Cr, pos, n_stored, f = residual(keep)
            n_factor = n_kept
        else:
            f -= gain[g]
            J = pos[p.cols[g]]
            L = np.linalg.cholesky(Hr[np.ix_(J, J)])
            A = sla.solve_triangular(L, Hr[J], lower=True, check_finite=False)  # L^-1 Hr_J:
            Hr = Hr - A.T @ A
            Cr = Cr - A.T @ sla.solve_triangular(L, Cr[J], lower=True, check_finite=False)
            if n_stored - (d - n_kept) >= max(32, n_stored // 4):  # compact to the columns left
                out = np.flatnonzero((p.col_group >= 0) & ~keep[np.maximum(p.col_group, 0)])
                sub = pos[out]
                Hr, Cr = Hr[np.ix_(sub, sub)], Cr[sub]
                pos = _positions(d, out)
                n_stored = out.size
        err[step + 1] = f
    return ElimCurve(adds[::-1].copy(), np.maximum(err, 0.0), p.lam, p.ridge, p.yy,
                     time.perf_counter() - t0, "forward")


# ------------------------------------------------------------------ swap local search
@dataclass(frozen=True)
class Selection:
    """A keep set (one bool per group) and its error f; ``swaps`` single exchanges and
    ``pair_swaps`` pair exchanges made from a start of error ``start_error``; ``start`` names
    the start it came from (``heuristic_selection``), ``time_s`` includes every start."""

    keep: np.ndarray
    error: float
    swaps: int
    start_error: float
    time_s: float
    pair_swaps: int = 0
    start: str = "given"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep"] = self.keep.tolist()
        return d


PAIR_EVALS = 1 << 18  # pair exchanges scored per pass at most (C(32, 2)^2 = 246,016 fit)


class _Exchanges:
    """Scores every exchange of ``m`` kept groups D for ``m`` dropped groups A of a keep set S
    in closed form, from one factorization of H_SS.

    With P = H_SS^{-1}, B = P Ct_S, over the columns O of the dropped groups Q = H_OS P,
    Sch = H_OO - Q H_SO (Schur complements given S) and R = Ct_O - H_OS B (residual
    correlations), removing the columns D and adding the columns A gives (block elimination;
    T = S - D):
        Sch_A(T) = Sch_AA + M Q_AD^T,   R_A(T) = R_A + M B_D,   M = Q_AD P_DD^{-1},
        f(T + A) - f(S) = [tr(B_D^T P_DD^{-1} B_D) - a_D] - tr(Sch_A(T)^{-1} R_A(T) R_A(T)^T) + a_A,
    and R_A(T) R_A(T)^T = RR_AA + RB_AD M^T + M RB_AD^T + M BB_DD M^T only needs the Grams
    RR = R R^T, RB = R B^T, BB = B B^T, so each exchange costs O(|A| |D| (|A| + |D|)), not a
    factorization."""

    def __init__(self, p: _Problem, keep: np.ndarray) -> None:
        self.p, self.keep = p, keep
        cg = p.col_group
        S = p.columns(keep)
        out = np.flatnonzero((cg >= 0) & ~keep[np.maximum(cg, 0)]).astype(np.intp)
        d = p.H.shape[0]
        self.posS, self.posO = _positions(d, S), _positions(d, out)
        P = sla.cho_solve((_chol(p.H[np.ix_(S, S)]), True), np.eye(S.size), check_finite=False)
        self.P = (P + P.T) / 2
        B = self.P @ p.Ct[S]
        HOS = p.H[np.ix_(out, S)]
        self.Q = HOS @ self.P
        self.Sch = p.H[np.ix_(out, out)] - self.Q @ HOS.T
        R = p.Ct[out] - HOS @ B
        self.RR, self.RB, self.BB = R @ R.T, R @ B.T, B @ B.T
        self.a_g = np.array([p.a[c].sum() for c in p.cols])

    def _side(self, groups: np.ndarray, m: int, pos: np.ndarray, limit: int | None,
              score: np.ndarray | None):
        """Candidate m-tuples of ``groups`` (of the ``limit`` best by ``score`` when there are
        more), as (group tuples (n, m), column positions (n, k)) per total column count k."""
        if groups.size < m:
            return []
        if limit is not None and score is not None and groups.size > limit:
            groups = groups[np.argsort(score[groups], kind="stable")[:limit]]
        tuples = np.array(list(itertools.combinations(groups.tolist(), m)), dtype=np.intp)
        cols = [np.concatenate([self.p.cols[g] for g in t]) for t in tuples]
        size = np.array([c.size for c in cols])
        return [(tuples[size == k], pos[np.stack([c for c, s in zip(cols, size) if s == k])])
                for k in np.unique(size)]

    def single_scores(self) -> np.ndarray:
        """Per group: the cost of removing it alone (kept groups) and minus the gain of
        adding it alone (dropped groups), both as changes of f (lower is better)."""
        p = self.p
        score = np.zeros(p.n_groups)
        for gs, J in p.bucketed(self.keep):
            at = self.posS[J]
            score[gs] = np.einsum("nkl,nkl->n", np.linalg.inv(self.P[at[:, :, None], at[:, None, :]]),
                                  self.BB[at[:, :, None], at[:, None, :]]) - p.a[J].sum(axis=1)
        for gs, J in p.bucketed(~self.keep):
            at = self.posO[J]
            score[gs] = p.a[J].sum(axis=1) - np.einsum(
                "nkl,nkl->n", np.linalg.inv(self.Sch[at[:, :, None], at[:, None, :]]),
                self.RR[at[:, :, None], at[:, None, :]])
        return score

    def best(self, m: int, max_evals: int | None = None,
             max_block: int = 1 << 18) -> tuple[float, np.ndarray, np.ndarray]:
        """The best exchange of m groups: (f(S - D + A) - f(S), D, A); (inf, [], []) if none.
        With ``max_evals`` and more candidate exchanges than that, D and A are drawn from the
        n best groups of each side by their single scores, C(n, m) <= sqrt(max_evals)."""
        kept, dropped = np.flatnonzero(self.keep), np.flatnonzero(~self.keep)
        limit = None
        if max_evals is not None and \
                math.comb(kept.size, m) * math.comb(dropped.size, m) > max_evals:
            n_side, limit = math.isqrt(max_evals), m
            while math.comb(limit + 1, m) <= n_side:
                limit += 1
        score = self.single_scores() if limit is not None else None
        best = (math.inf, np.zeros(0, np.intp), np.zeros(0, np.intp))
        for Dg, Id in self._side(kept, m, self.posS, limit, score):
            kd = Id.shape[1]
            Pinv = np.linalg.inv(self.P[Id[:, :, None], Id[:, None, :]])  # (nD, kd, kd)
            BBd = self.BB[Id[:, :, None], Id[:, None, :]]
            rem = np.einsum("nkl,nkl->n", Pinv, BBd) - self.a_g[Dg].sum(axis=1)  # (nD,)
            for Ag, Ia in self._side(dropped, m, self.posO, limit, score):
                ka = Ia.shape[1]
                SchA = self.Sch[Ia[:, :, None], Ia[:, None, :]]  # (nA, ka, ka)
                RRA = self.RR[Ia[:, :, None], Ia[:, None, :]]
                aA = self.a_g[Ag].sum(axis=1)
                chunk = max(1, max_block // max(1, Ia.shape[0] * ka * max(ka, kd)))
                for c0 in range(0, Id.shape[0], chunk):
                    sl = slice(c0, c0 + chunk)
                    if ka == kd == 2:  # pairs of single columns: 2 x 2 algebra, written out
                        gain = self._gains_2x2(Ia, Id[sl], SchA, RRA, Pinv[sl], BBd[sl])
                    else:
                        gain = self._gains(Ia, Id[sl], SchA, RRA, Pinv[sl], BBd[sl])
                    delta = rem[None, sl] - gain + aA[:, None]  # (nA, nD)
                    i, j = np.unravel_index(int(np.argmin(delta)), delta.shape)
                    if delta[i, j] < best[0]:
                        best = (float(delta[i, j]), Dg[c0 + j], Ag[i])
        return best

    def _gains(self, Ia, Id, SchA, RRA, Pinv, BBd) -> np.ndarray:
        """tr(Sch_A(T)^{-1} R_A(T) R_A(T)^T) for every (A, D): shape (nA, nD)."""
        Qad = self.Q[Ia[:, None, :, None], Id[None, :, None, :]]  # (nA, nD, ka, kd)
        RBad = self.RB[Ia[:, None, :, None], Id[None, :, None, :]]
        M = Qad @ Pinv[None]
        Sch_t = SchA[:, None] + M @ Qad.transpose(0, 1, 3, 2)
        MRB = M @ RBad.transpose(0, 1, 3, 2)
        N = RRA[:, None] + MRB + MRB.transpose(0, 1, 3, 2) \
            + M @ BBd[None] @ M.transpose(0, 1, 3, 2)
        if Ia.shape[1] == 1:
            return N[..., 0, 0] / Sch_t[..., 0, 0]
        return np.trace(np.linalg.solve(Sch_t, N), axis1=2, axis2=3)

    def _gains_2x2(self, Ia, Id, SchA, RRA, Pinv, BBd) -> np.ndarray:
        """:meth:`_gains` when A and D are two columns each, entry by entry on (nA, nD) arrays
        (numpy's batched 2 x 2 products cost more per matrix than their arithmetic). With
        P_DD^{-1} = L L^T, V = Q_:D L and U = RB_:D L over every dropped column, and
        K = L^T BB_DD L: M Q_AD^T = V_A V_A^T and R_A(T) R_A(T)^T = RR_AA + V_A U_A^T
        + U_A V_A^T + V_A K V_A^T, so the terms of one column are shared by all its pairs."""
        l00 = np.sqrt(Pinv[:, 0, 0])
        l10 = Pinv[:, 0, 1] / l00
        l11 = np.sqrt(np.maximum(Pinv[:, 1, 1] - l10 * l10, 0.0))
        b00, b01, b11 = BBd[:, 0, 0], BBd[:, 0, 1], BBd[:, 1, 1]
        k00 = l00 * (l00 * b00 + 2 * l10 * b01) + l10 * l10 * b11
        k01, k11 = l11 * (l00 * b01 + l10 * b11), l11 * l11 * b11
        Qd, Rd = self.Q[:, Id], self.RB[:, Id]  # (o, nD, 2) over every dropped column
        V0, V1 = Qd[..., 0] * l00 + Qd[..., 1] * l10, Qd[..., 1] * l11
        U0, U1 = Rd[..., 0] * l00 + Rd[..., 1] * l10, Rd[..., 1] * l11
        W0, W1 = U0 + k00 * V0 + k01 * V1, U1 + k01 * V0 + k11 * V1  # U + V K
        vv = V0 * V0 + V1 * V1
        dd = V0 * (U0 + W0) + V1 * (U1 + W1)  # 2 V.U + V K V^T on the diagonal
        u, v = Ia[:, 0], Ia[:, 1]
        Vu0, Vu1, Vv0, Vv1 = V0[u], V1[u], V0[v], V1[v]
        s00 = SchA[:, None, 0, 0] + vv[u]
        s11 = SchA[:, None, 1, 1] + vv[v]
        s01 = SchA[:, None, 0, 1] + Vu0 * Vv0 + Vu1 * Vv1
        n00 = RRA[:, None, 0, 0] + dd[u]
        n11 = RRA[:, None, 1, 1] + dd[v]
        n01 = RRA[:, None, 0, 1] + Vu0 * W0[v] + Vu1 * W1[v] + U0[u] * Vv0 + U1[u] * Vv1
        return (s11 * n00 - 2 * s01 * n01 + s00 * n11) / (s00 * s11 - s01 * s01)


def _local_search(p: _Problem, keep: np.ndarray, max_swaps: int | None, pairs: bool,
                  max_pair_evals: int | None) -> tuple[np.ndarray, float, int, int, float]:
    """Best-improvement exchanges from ``keep``: the best single exchange while one improves;
    once none does (a 1-swap local optimum) and ``pairs``, the best pair exchange, then single
    ones again. Every accepted exchange is re-evaluated from scratch, so f never rises.
    Returns (keep, f, single exchanges, pair exchanges, f of the start)."""
    f0 = f = p.error(keep)
    swaps = pair_swaps = 0
    while (max_swaps is None or swaps + pair_swaps < max_swaps) and 0 < keep.sum() < p.n_groups:
        tol = 1e-12 * (abs(f) + p.yy)
        ex = _Exchanges(p, keep)
        delta, D, A = ex.best(1)
        m = 1
        if not delta < -tol and pairs:
            delta, D, A = ex.best(2, max_pair_evals)
            m = 2
        if not delta < -tol:
            break
        cand = keep.copy()
        cand[D], cand[A] = False, True
        f_new = p.error(cand)
        if not f_new < f - tol:  # the closed form and the factorization disagree: stop
            break
        keep, f = cand, f_new
        swaps += m == 1
        pair_swaps += m == 2
    return keep, f, swaps, pair_swaps, f0


def swap_search(stats: LayerStats, groups: Sequence[Any], keep: Any, lam: float = 0.0,
                max_swaps: int | None = None, pairs: bool = False,
                max_pair_evals: int | None = PAIR_EVALS) -> Selection:
    """Local search by exchanges: swap the kept group g and the dropped group h of the best
    improvement f(S - g + h) < f(S) (all pairs scored in closed form, see :class:`_Exchanges`)
    until no exchange improves (a 1-swap local optimum) or ``max_swaps`` exchanges were made.
    With ``pairs``, a 1-swap local optimum is left by the best improving exchange of two kept
    for two dropped groups (every such exchange scored while there are at most
    ``max_pair_evals``; beyond that, those among the best groups of each side by their single
    scores), and the search goes on. Every accepted exchange is re-evaluated from scratch, so
    the error never rises."""
    t0 = time.perf_counter()
    p = _prepare(stats, groups, lam)
    keep = _mask(keep, p.n_groups).copy()
    if max_swaps is not None:
        check(isinstance(max_swaps, int) and max_swaps >= 0, "'max_swaps'",
              "None or an integer >= 0", max_swaps)
    if max_pair_evals is not None:
        check(isinstance(max_pair_evals, int) and max_pair_evals >= 1, "'max_pair_evals'",
              "None or a positive integer", max_pair_evals)
    keep, f, swaps, pair_swaps, f0 = _local_search(p, keep, max_swaps, pairs, max_pair_evals)
    return Selection(keep, f, swaps, f0, time.perf_counter() - t0, pair_swaps)


def heuristic_selection(stats: LayerStats, groups: Sequence[Any], width: int, lam: float = 0.0,
                        curves: Sequence[ElimCurve] | None = None, pairs: bool = True,
                        max_pair_evals: int | None = PAIR_EVALS) -> Selection:
    """The best keep set of ``width`` groups that the local search reaches from several
    starts: the greedy keep sets of width ``width`` of backward elimination and of forward
    selection (or of the given ``curves``, from :func:`greedy_elimination` /
    :func:`greedy_selection` on the same statistics, groups and lam), each improved by
    :func:`swap_search` with pair exchanges (``pairs``) until no single or pair exchange
    improves. Returns the one of least error (recomputed from scratch): with the backward
    curve among the starts (the default), never worse than 1-swap from its keep set, since
    that start makes the same single exchanges first. ``start`` names where it came from; ``time_s``
    counts the curves computed here and every search. formulations/layerwise.md has the
    measurements behind this choice."""
    t0 = time.perf_counter()
    p = _prepare(stats, groups, lam)
    G = p.n_groups
    width = _width(width, G)
    if max_pair_evals is not None:
        check(isinstance(max_pair_evals, int) and max_pair_evals >= 1, "'max_pair_evals'",
              "None or a positive integer", max_pair_evals)
    if curves is None:
        curves = [greedy_elimination(stats, groups, lam), greedy_selection(stats, groups, lam)]
    check(isinstance(curves, (list, tuple)) and len(curves) >= 1
          and all(isinstance(c, ElimCurve) and c.n_groups == G for c in curves), "The 'curves'",
          f"a non-empty list of ElimCurve over the same {G} groups", curves)
    best: Selection | None = None
    seen: list[np.ndarray] = []
    for c in curves:
        start = c.keep_mask(width)
        if any(np.array_equal(start, k) for k in seen):
            continue
        seen.append(start)
        keep, f, swaps, pair_swaps, f0 = _local_search(p, start, None, pairs, max_pair_evals)
        if best is None or f < best.error:
            best = Selection(keep, f, swaps, f0, 0.0, pair_swaps, c.direction)
    assert best is not None
    return Selection(best.keep, best.error, best.swaps, best.start_error,
                     time.perf_counter() - t0, best.pair_swaps, best.start)


# ------------------------------------------------------------------ exact selection
class _Oracle:
    """The convex extension F of f over z in [0, 1]^G used for outer-approximation cuts.

    With blocks D_g = t H_gg (t = 0.999 * the smallest eigenvalue of H scaled by its
    block-Jacobi diagonal, so that K = H - blkdiag(D_g) is positive semidefinite):

        F(z) = yy + a.z + min_B  tr(B^T K B) + sum_g tr(B_g^T D_g B_g) / z_g - 2 tr(B^T Ct)

    (the perspective of the D part; B_g = 0 where z_g = 0). F is jointly convex, equals f
    on binary z, and its gradient is a_g - tr(B_g^T D_g B_g) / z_g^2 where z_g > 0 and
    a_g - tr(R_g^T D_g^-1 R_g), R_g = Ct_g - K_g: B, where z_g = 0 (the max-of-affine dual
    form of the inner minimum), so F(z) >= F(z0) + grad F(z0).(z - z0) for every z."""

    def __init__(self, p: _Problem) -> None:
        self.p = p
        d = p.H.shape[0]
        blocks = [c for c in p.cols] + ([p.fixed] if p.fixed.size else [])
        scale = np.zeros((d, d))
        for c in blocks:  # blkdiag(H_gg)^(-1/2)
            w, v = np.linalg.eigh(p.H[np.ix_(c, c)])
            scale[np.ix_(c, c)] = (v / np.sqrt(w)) @ v.T
        t = float(np.linalg.eigvalsh(scale @ p.H @ scale)[0])
        self.t = 0.999 * max(min(t, 1.0), 0.0)
        self.D = [self.t * p.H[np.ix_(c, c)] for c in p.cols]
        self.Dinv = [np.linalg.inv(Dg) if self.t > 0 else None for Dg in self.D]
        self.K = p.H.copy()
        for c, Dg in zip(p.cols, self.D):
            self.K[np.ix_(c, c)] -= Dg

    def cut(self, z: np.ndarray) -> tuple[float, np.ndarray] | None:
        """(F(z), grad F(z)); entries of z below 1e-9 count as 0. Without a positive definite
        part to put in perspective (t = 0), only binary z get a cut: the no-good cut
        eta >= f(z0) (1 - Hamming(z, z0)) (valid as f >= 0); fractional z get None."""
        p = self.p
        if self.t <= 0.0:
            zb = np.round(z)
            if np.any(np.abs(z - zb) > 1e-6):
                return None
            f = p.error(zb.astype(bool))
            return f, np.where(zb > 0.5, f, -f)
        z = np.where(z < 1e-9, 0.0, np.minimum(z, 1.0))
        act = z > 0
        A = p.columns(act)
        M = self.K[np.ix_(A, A)].copy()
        pos = _positions(p.H.shape[0], A)
        for g in np.flatnonzero(act).tolist():
            i = pos[p.cols[g]]
            M[np.ix_(i, i)] += self.D[g] / z[g]
        Ba = sla.cho_solve((_chol(M), True), p.Ct[A], check_finite=False) if A.size else \
            np.zeros((0, p.Ct.shape[1]))
        a_g = np.array([p.a[c].sum() for c in p.cols])
        val = p.yy + float(a_g @ z) + float(p.a[p.fixed].sum()) - float(np.sum(p.Ct[A] * Ba))
        grad = a_g.copy()
        for g in range(p.n_groups):
            c = p.cols[g]
            if act[g]:
                Bg = Ba[pos[c]]
                grad[g] -= float(np.sum(Bg * (self.D[g] @ Bg))) / z[g] ** 2
            else:
                R = p.Ct[c] - self.K[np.ix_(c, A)] @ Ba
                grad[g] -= float(np.sum(R * (self.Dinv[g] @ R)))
        return val, grad


@dataclass(frozen=True)
class ExactSelection:
    """The exact layerwise selection of one width.

    keep: one bool per group (the best keep set found); objective: its f, recomputed from
    scratch; bound: a proven lower bound on f over all keep sets of that width; gap: the
    project's relative gap (optprune.solve.result); termination / solution_status as in
    optprune.solve: OPTIMAL only when the solver proved the gap below ``rel_gap``.
    heuristic_error: f of the start (:func:`heuristic_selection`, or the given start after
    single and pair exchanges)."""

    keep: np.ndarray
    objective: float
    bound: float | None
    gap: float
    termination: Any
    solution_status: Any
    width: int
    heuristic_error: float
    time_s: float
    nodes: int | None
    backend: str
    backend_version: str
    details: dict = field(default_factory=dict)

    @property
    def is_optimal(self) -> bool:
        return self.solution_status.name == "OPTIMAL"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep"] = self.keep.tolist()
        d["termination"] = self.termination.value
        d["solution_status"] = self.solution_status.name.lower()
        d["gap"] = None if not math.isfinite(self.gap) else self.gap
        return d


def exact_selection(stats: LayerStats, groups: Sequence[Any], width: int, lam: float = 0.0,
                    time_limit_s: float | None = None, rel_gap: float = 1e-6,
                    backend: str = "scip", start: Any = None, log: bool = False) -> ExactSelection:
    """The keep set of ``width`` groups that minimizes f, proven by branch and cut.

    backend "scip" (PySCIPOpt, the optional extra ``scip``): minimize eta subject to
    sum z = width, z binary, and the outer-approximation cuts eta >= F(z0) + grad F(z0).(z - z0)
    of the convex extension F of f (:class:`_Oracle`), added lazily at integral LP solutions
    (where F = f, so an accepted solution is exact) and as cuts at fractional ones (which
    drive the LP bound to the perspective relaxation). Starts from :func:`heuristic_selection`
    (or from ``start``, a keep mask, improved by single and pair exchanges).
    formulations/layerwise.md has the math and why this solver.
    A time limit is a result: termination "time_limit", the incumbent and its proven bound."""
    from ..solve.result import SolveOptions, Termination, make_result

    t0 = time.perf_counter()
    p = _prepare(stats, groups, lam)
    G = p.n_groups
    width = _width(width, G)
    SolveOptions(time_limit_s=time_limit_s, rel_gap=rel_gap)  # validates both
    check(backend in ("scip",), "The exact selection 'backend'", "'scip'", backend)
    if start is None:
        start_sel = heuristic_selection(stats, groups, width, lam)
    else:
        start_sel = swap_search(stats, groups, _mask(start, G, "The 'start' keep mask"), lam,
                                pairs=True)
        check(int(start_sel.keep.sum()) == width, "The 'start' keep mask",
              f"a mask of {width} kept groups", int(start_sel.keep.sum()))
    floor = 1e-10 * p.yy  # f below this is rounding of ||Y||^2 - tr(...): f >= 0 proves it
    if width in (0, G) or start_sel.error <= floor:  # one keep set only, or an exact fit
        f = 0.0 if start_sel.error <= floor else start_sel.error
        res = make_result(termination=Termination.OPTIMAL, has_solution=True, objective=f,
                          bound=f, sense="min", rel_gap=rel_gap, build_time_s=0.0,
                          solve_time_s=0.0, nodes=0, backend=backend, backend_version="-",
                          x=start_sel.keep.astype(float),
                          message="one keep set" if width in (0, G) else
                          "exact fit: error below 1e-10 ||Y||^2 (rounding), and f >= 0")
        return _exact_result(res, start_sel, width, time.perf_counter() - t0, {})
    res, keep, details = _solve_oa_scip(p, width, start_sel.keep, start_sel.error,
                                        _neutral_groups(stats, p), time_limit_s, rel_gap, log, t0)
    return _exact_result(res, start_sel, width, time.perf_counter() - t0, details, keep)


def _exact_result(res, start_sel: Selection, width: int, time_s: float, details: dict,
                  keep: np.ndarray | None = None) -> ExactSelection:
    keep = start_sel.keep if keep is None else keep
    return ExactSelection(keep, float(res.objective), res.bound, res.gap, res.termination,
                          res.solution_status, width, start_sel.error, time_s, res.nodes,
                          res.backend, res.backend_version, {**res.details, **details})


def _neutral_groups(stats: LayerStats, p: _Problem) -> np.ndarray:
    """Groups whose columns are zero in X^T X and X^T Y (dead units): f is the same with them
    or without (their refit rows stay the dense ones and explain nothing)."""
    return np.array([not np.any(stats.gxx[c]) and not np.any(stats.gxy[c]) for c in p.cols])


def _node_bound(p: _Problem, inside: np.ndarray, fixed_in: np.ndarray,
                width: int) -> tuple[float, float, np.ndarray]:
    """Lower bounds on f(S) over S subset of ``inside`` (groups not fixed out), S containing
    ``fixed_in``, |S| <= width. With T = inside, at least r = |T| - width free groups R go.
    With P = H_TT^{-1}, B = P C_T and e_j = tr(B_j^T P_jj^{-1} B_j) (OBS: the loss of the
    explained part g when j alone goes), f(T - R) = f(T) + [g(T) - g(T - R)] - a(R) and

    * g is monotone, so g(T) - g(T - R) >= max_{j in R} e_j;
    * g(T) - g(T - R) = tr(B_R^T P_RR^{-1} B_R) >= sum_{j in R} e_j / kappa, where kappa is the
      largest eigenvalue of P_UU scaled by its block diagonal (U = the free groups; P_RR's
      scaled spectrum interlaces it), since P_RR <= kappa blkdiag(P_jj).

    Returns (constant bound, f(T), c): the larger of the two bounds minimized over R in
    closed form, and the linear one f(S) >= f(T) + sum_{j in T - S} c_j, c_j = e_j / kappa - a_j
    (c is 0 outside the free groups)."""
    r = int(inside.sum()) - width
    cols = p.columns(inside)
    L = _chol(p.H[np.ix_(cols, cols)])
    P = sla.cho_solve((L, True), np.eye(cols.size), check_finite=False)
    B = P @ p.Ct[cols]
    f_T = float(p.yy + p.a[cols].sum() - np.sum(p.Ct[cols] * B))
    c = np.zeros(p.n_groups)
    free_mask = inside & ~fixed_in
    free = np.flatnonzero(free_mask)
    if free.size == 0:
        return (f_T if r <= 0 else math.inf), f_T, c
    pos = _positions(p.H.shape[0], cols)
    e = np.empty(p.n_groups)
    a_g = np.zeros(p.n_groups)
    blocks = []
    for gs, J in p.bucketed(free_mask):
        at = pos[J]
        Pjj = P[at[:, :, None], at[:, None, :]]
        Bg = B[at]
        e[gs] = np.einsum("nkr,nkr->n", Bg, np.linalg.solve(Pjj, Bg))
        a_g[gs] = p.a[J].sum(axis=1)
        w_, v_ = np.linalg.eigh(Pjj)
        blocks.append((at.ravel(), ((v_ / np.sqrt(w_)[:, None, :]) @ v_.transpose(0, 2, 1))))
    fu = np.concatenate([at for at, _ in blocks])
    Sc = sla.block_diag(*[m for _, ms in blocks for m in ms])
    kappa = float(sla.eigvalsh(Sc @ P[np.ix_(fu, fu)] @ Sc, subset_by_index=[fu.size - 1] * 2)[0])
    kappa *= 1 + 1e-9
    c[free] = e[free] / kappa - a_g[free]
    if r <= 0:
        return f_T - float(a_g.sum()), f_T, c
    if r > free.size:
        return math.inf, f_T, c
    ef, af = e[free], a_g[free]
    order = np.argsort(ef, kind="stable")
    by_max = float(np.min((ef[order] - np.cumsum(af[order]))[r - 1:]))
    s_ = np.sort(c[free])
    by_sum = float(s_[:r].sum() + np.minimum(s_[r:], 0.0).sum())
    return f_T + max(by_max, by_sum), f_T, c


def _solve_oa_scip(p: _Problem, width: int, keep0: np.ndarray, f0: float, neutral: np.ndarray,
                   time_limit_s: float | None, rel_gap: float, log: bool, t0: float):
    from .._extras import require
    from ..solve.result import Termination, make_result

    scip = require("pyscipopt", "scip", "the exact layerwise selection")
    oracle = _Oracle(p)
    G = p.n_groups
    # eta = f / scale is about 1 at the optimum; errors below 1e-12 ||Y||^2 are rounding noise
    # of the statistics (||Y||^2 - tr(...)), so that is the absolute gap that counts as closed
    scale = max(f0, 1e-10 * p.yy, 1e-300)
    tol = 1e-9
    model = scip.Model("layerwise")
    if not log:
        model.hideOutput()
    model.setParam("presolving/maxrounds", 0)
    model.setParam("presolving/maxrestarts", 0)
    model.setParam("limits/gap", rel_gap)
    model.setParam("limits/absgap", 1e-12 * p.yy / scale)
    model.setParam("numerics/feastol", 1e-9)
    model.setParam("timing/clocktype", 2)
    model.setParam("randomization/randomseedshift", 0)
    # the master is tiny and its bound comes from our cuts: SCIP's own primal heuristics and
    # general-purpose cuts only cost time per node here
    model.setHeuristics(scip.SCIP_PARAMSETTING.OFF)
    model.setSeparating(scip.SCIP_PARAMSETTING.OFF)
    if time_limit_s is not None:
        model.setParam("limits/time", max(time_limit_s - (time.perf_counter() - t0), 1e-3))
    # neutral groups (dead units) are left out and fill the keep set at the end: at most
    # ``width`` of the others are kept
    z = [model.addVar(f"z{g}", vtype="B", ub=0.0 if neutral[g] else 1.0) for g in range(G)]
    eta = model.addVar("eta", lb=0.0, obj=1.0)
    if neutral.any():
        model.addCons(scip.quicksum(z) <= width, "width")
    else:
        model.addCons(scip.quicksum(z) == width, "width")
    keep0 = keep0 & ~neutral
    stats = {"cuts_lazy": 0, "cuts_sepa": 0, "cuts_node": 0, "oracle_calls": 0,
             "neutral_groups": int(neutral.sum())}
    last_node = [-1]

    def cut_expr(zbar: np.ndarray):
        out = oracle.cut(zbar)
        stats["oracle_calls"] += 1
        if out is None:
            return None
        val, grad = out
        const = (val - float(grad @ zbar)) / scale
        return val / scale, grad / scale, const

    def add_initial(zbar):
        cut = cut_expr(zbar)
        if cut is not None:
            model.addCons(eta - scip.quicksum(float(cut[1][g]) * z[g] for g in range(G)) >= cut[2])

    add_initial(keep0.astype(float))
    add_initial(np.full(G, width / G))

    conshdlr: Any = scip.Conshdlr  # pyscipopt is imported at run time (an optional extra)

    class OA(conshdlr):
        def _values(self, sol=None):
            zz = np.array([self.model.getSolVal(sol, v) for v in z])
            return zz, self.model.getSolVal(sol, eta)

        def _integral(self, zz):
            return bool(np.all(np.abs(zz - np.round(zz)) <= 1e-6))

        def conscheck(self, constraints, solution, checkintegrality, checklprows, printreason,
                      completely, **kw):
            zz, e = self._values(solution)
            if not self._integral(zz):
                return {"result": scip.SCIP_RESULT.INFEASIBLE}
            f = p.error(np.round(zz).astype(bool)) / scale
            ok = e >= f - tol * max(1.0, abs(f))
            return {"result": scip.SCIP_RESULT.FEASIBLE if ok else scip.SCIP_RESULT.INFEASIBLE}

        def _enforce(self):
            zz, e = self._values()
            if not self._integral(zz):
                return {"result": scip.SCIP_RESULT.FEASIBLE}  # integrality is SCIP's to enforce
            zr = np.round(zz)
            f, gr, const = cut_expr(zr)
            if e >= f - tol * max(1.0, abs(f)):
                return {"result": scip.SCIP_RESULT.FEASIBLE}
            self.model.addCons(eta - scip.quicksum(float(gr[g]) * z[g] for g in range(G)) >= const,
                               removable=False)
            stats["cuts_lazy"] += 1
            return {"result": scip.SCIP_RESULT.CONSADDED}

        def consenfolp(self, constraints, nusefulconss, solinfeasible):
            return self._enforce()

        def consenfops(self, constraints, nusefulconss, solinfeasible, objinfeasible):
            return self._enforce()

        def _node_cut(self, e):
            """Once per node: the local bound of _node_bound from the local fixings."""
            node = self.model.getCurrentNode().getNumber()
            if node == last_node[0]:
                return False
            last_node[0] = node
            tz = [self.model.getTransformedVar(v) for v in z]
            inside = np.array([v.getUbLocal() > 0.5 for v in tz])
            fixed_in = np.array([v.getLbLocal() > 0.5 for v in tz])
            lb, f_T, c = _node_bound(p, inside, fixed_in, width)
            lb, f_T, c = lb / scale, f_T / scale, c / scale
            if not lb > e + 1e-9 * max(1.0, abs(lb)):
                return False
            row = self.model.createEmptyRowUnspec(name="node", lhs=min(lb, 1e20), rhs=None,
                                                  local=True, removable=True)
            self.model.addVarToRow(row, eta, 1.0)
            self.model.addCut(row, forcecut=True)
            self.model.releaseRow(row)
            if math.isfinite(lb):  # eta >= f(T) + sum_j c_j (1 - z_j) over the free groups
                free = np.flatnonzero(c != 0.0)
                row = self.model.createEmptyRowUnspec(name="node_lin", lhs=f_T + float(c[free].sum()),
                                                      rhs=None, local=True, removable=True)
                self.model.cacheRowExtensions(row)
                self.model.addVarToRow(row, eta, 1.0)
                for g in free:
                    self.model.addVarToRow(row, tz[g], float(c[g]))
                self.model.flushRowExtensions(row)
                self.model.addCut(row, forcecut=True)
                self.model.releaseRow(row)
            stats["cuts_node"] += 1
            return True

        def conssepalp(self, constraints, nusefulconss):
            zz, e = self._values()
            if self._node_cut(e):
                return {"result": scip.SCIP_RESULT.SEPARATED}
            if self.model.getDepth() > 0 or stats["cuts_sepa"] >= 20 * G:
                return {"result": scip.SCIP_RESULT.DIDNOTRUN}  # OA cuts: root only
            cut = cut_expr(zz)
            if cut is None:
                return {"result": scip.SCIP_RESULT.DIDNOTFIND}
            f, gr, const = cut
            if e >= f - 1e-6 * max(1.0, abs(f)):
                return {"result": scip.SCIP_RESULT.DIDNOTFIND}
            row = self.model.createEmptyRowUnspec(name="oa", lhs=const, rhs=None, local=False,
                                                  removable=True)
            self.model.cacheRowExtensions(row)
            self.model.addVarToRow(row, eta, 1.0)
            for g in range(G):
                if gr[g] != 0.0:
                    self.model.addVarToRow(row, z[g], -float(gr[g]))
            self.model.flushRowExtensions(row)
            infeasible = self.model.addCut(row, forcecut=True)
            self.model.releaseRow(row)
            stats["cuts_sepa"] += 1
            if infeasible:
                return {"result": scip.SCIP_RESULT.CUTOFF}
            return {"result": scip.SCIP_RESULT.SEPARATED}

        def conslock(self, constraint, locktype, nlockspos, nlocksneg):
            self.model.addVarLocks(eta, nlockspos, nlocksneg)  # eta may not round down
            for v in z:
                self.model.addVarLocks(v, nlockspos + nlocksneg, nlockspos + nlocksneg)

    hdlr = OA()
    model.includeConshdlr(hdlr, "layerwise_oa", "outer approximation of the refit error",
                          sepapriority=1, enfopriority=-1, chckpriority=-1, sepafreq=1,
                          propfreq=-1, eagerfreq=-1, maxprerounds=0, needscons=True)
    model.addPyCons(model.createCons(hdlr, "oa", initial=False, separate=True, enforce=True,
                                     check=True, propagate=False, local=False, modifiable=False,
                                     dynamic=False, removable=False, stickingatnode=False))
    sol = model.createSol()
    for g in range(G):
        model.setSolVal(sol, z[g], float(keep0[g]))
    model.setSolVal(sol, eta, f0 / scale)
    model.addSol(sol)
    build = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.optimize()
    solve = time.perf_counter() - t1
    status = model.getStatus()
    term = {"optimal": Termination.OPTIMAL, "timelimit": Termination.TIME_LIMIT,
            "nodelimit": Termination.NODE_LIMIT, "gaplimit": Termination.OPTIMAL,
            "userinterrupt": Termination.INTERRUPTED}.get(status, Termination.OTHER)
    best = model.getBestSol()
    keep = np.array([model.getSolVal(best, v) > 0.5 for v in z]) if best is not None else keep0
    if int(keep.sum()) > width:
        keep = keep0
    f = p.error(keep)
    if f > f0:  # never hand back worse than the start
        keep, f = keep0, f0
    fill = np.flatnonzero(neutral & ~keep)[:width - int(keep.sum())]
    keep = keep.copy()
    keep[fill] = True
    bound = float(model.getDualbound()) * scale
    res = make_result(termination=term, has_solution=True, objective=f, bound=bound, sense="min",
                      rel_gap=rel_gap, build_time_s=build, solve_time_s=solve,
                      nodes=int(model.getNNodes()), backend="scip",
                      backend_version=f"PySCIPOpt {scip.__version__}, SCIP {model.version()}",
                      x=keep.astype(float), message=status,
                      details={**stats, "perspective_t": oracle.t, "objective_scale": scale})
    return res, keep, res.details
