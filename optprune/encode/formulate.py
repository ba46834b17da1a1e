"""Adversarial-example MIPs over a ReLU network, built as sparse arrays.

Variables and constraints (``formulations/adversarial.md`` has the full statement):

Input region, an L-inf or L1 ball of radius r around x0 intersected with the input
domain [lo, hi] (the domain is a box, e.g. pixels in [0, 1])::

    max(lo, x0 - r) <= x <= min(hi, x0 + r)                  (both norms)
    L1 only:  d >= x - x0,  d >= x0 - x,  sum(d) <= r,  d >= 0

Layer k with pre-activation bounds l <= z <= u (from ``bounds.py``)::

    z_k = W_k h_{k-1} + b_k        only the nonzero W entries whose input is alive
    stably inactive (u <= 0):  h = 0, neither z nor h is a variable
    stably active   (l >= 0):  h = z, no binary
    unstable (l < 0 < u):      h >= 0, h >= z, h <= z - l (1 - s), h <= u s, s binary

A hidden neuron that is stably inactive vanishes with every weight leaving it, so a
pruned or dead neuron costs nothing. The LP relaxation used while tightening bounds
replaces the last two rows by the triangle ``h <= u (z - l) / (u - l)``, the projection
of the big-M relaxation onto (z, h), without the column s.

``relu="ideal"`` / ``"auto"`` add, for an unstable neuron ``h = max(0, w.x + b)`` whose
inputs x lie in the box [L, U] and whose live, non-fixed nonzero weights number
``n <= max_fan_in``, the ideal (convex-hull) inequalities of Anderson et al. (2020)::

    h <= sum_{i in I} w_i (x_i - L'_i (1 - s)) + (b + sum_{i not in I} w_i U'_i) s
    for every I with {} != I != supp(w)
    L'_i = L_i if w_i >= 0 else U_i,   U'_i = U_i if w_i >= 0 else L_i

The big-M rows above are kept: they are the cases I = supp(w) and I = {} with the tighter
[l, u] in place of the box-implied ones. ``"ideal"`` requires every unstable neuron to have
``n <= max_fan_in``; ``"auto"`` gives the others big-M alone.

Objectives on the logits y (``y = z_L``), true label t:

* margin, targeted at class c:      max  y_c - y_t
* margin, untargeted (runner-up):   max  m - y_t,  m <= y_j + (U - l_j)(1 - q_j),
  sum q_j = 1, q binary, over the classes j != t that can be the largest (u_j >= max l);
  maximization drives m to max_j y_j. U = max_j u_j.
* minimal distortion:  min eps  s.t.  ||x - x0|| <= eps <= r,  margin >= delta
* decision:  find any x with margin >= delta; the objective is 0, so every solver stops
  at the first adversarial example (objective = bound) or proves there is none
  (infeasible).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ValidationError, check
from ..solve import LinearModel, ModelBuilder
from .network import Network

__all__ = ["Region", "AttackSpec", "Encoding", "encode", "add_network", "add_ideal_relu",
           "neuron_status", "RELU_FORMULATIONS", "DEFAULT_MAX_FAN_IN"]

OBJECTIVES = ("margin", "min_distortion", "decision")
NORMS = ("linf", "l1")
RELU_FORMULATIONS = ("bigm", "ideal", "auto")
# 2^n - 2 rows per neuron (14 at n = 4); larger n closed more of the root gap but slowed
# HiGHS down in benchmarks/bench_ideal_relu.py (formulations/adversarial.md).
DEFAULT_MAX_FAN_IN = 4
MAX_FAN_IN_LIMIT = 16


@dataclass(frozen=True)
class Region:
    """The ball ``||x - x0||_norm <= radius`` intersected with ``[domain_lower, domain_upper]``."""

    x0: np.ndarray
    norm: str
    radius: float
    domain_lower: np.ndarray
    domain_upper: np.ndarray

    @classmethod
    def make(cls, net: Network, x0: Any, norm: str = "linf", radius: float = 0.1,
             domain: tuple[Any, Any] = (0.0, 1.0)) -> "Region":
        x0 = np.asarray(x0, dtype=np.float64).ravel()
        check(x0.size == net.input_dim, "The input x0", f"of {net.input_dim} values "
              f"(the network's input shape {net.input_shape})", f"{x0.size} values")
        check(bool(np.all(np.isfinite(x0))), "The input x0", "finite", "NaN or inf")
        norm = str(norm).lower().replace("-", "").replace("_", "")
        norm = {"inf": "linf", "linfinity": "linf", "1": "l1"}.get(norm, norm)
        check(norm in NORMS, "The 'norm' parameter", "'linf' or 'l1'", norm)
        check(np.isfinite(radius) and radius > 0, "The 'radius' parameter",
              "a positive finite number", radius, "Use e.g. radius=0.05 for L-inf on [0, 1].")
        lo = np.broadcast_to(np.asarray(domain[0], dtype=np.float64), x0.shape).copy()
        hi = np.broadcast_to(np.asarray(domain[1], dtype=np.float64), x0.shape).copy()
        check(bool(np.all(lo <= hi)), "The input domain", "lower <= upper everywhere",
              "lower > upper somewhere")
        tol = 1e-9
        out = np.flatnonzero((x0 < lo - tol) | (x0 > hi + tol))
        if out.size:
            raise ValidationError(
                f"The input x0 must lie inside the input domain; {out.size} coordinate(s) do not "
                f"(first: x0[{out[0]}] = {x0[out[0]]:g} outside [{lo[out[0]]:g}, {hi[out[0]]:g}]). "
                "Scale x0 like the training data or pass the right domain."
            )
        return cls(np.clip(x0, lo, hi), norm, float(radius), lo, hi)

    def box(self, radius: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        r = self.radius if radius is None else radius
        return np.maximum(self.domain_lower, self.x0 - r), np.minimum(self.domain_upper, self.x0 + r)

    def contains(self, x: np.ndarray, tol: float = 1e-7) -> bool:
        x = np.asarray(x, dtype=np.float64).ravel()
        if np.any(x < self.domain_lower - tol) or np.any(x > self.domain_upper + tol):
            return False
        d = x - self.x0
        dist = np.max(np.abs(d)) if self.norm == "linf" else np.sum(np.abs(d))
        return bool(dist <= self.radius * (1 + tol) + tol)

    def distance(self, x: np.ndarray) -> float:
        d = np.asarray(x, dtype=np.float64).ravel() - self.x0
        return float(np.max(np.abs(d)) if self.norm == "linf" else np.sum(np.abs(d)))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points of the region (corners, boundary and interior mixed)."""
        lo, hi = self.box()
        k = self.x0.size
        if self.norm == "linf":
            u = rng.random((n, k))
            corner = rng.random(n) < 0.5
            u[corner] = np.round(u[corner])
            return lo + u * (hi - lo)
        out = np.empty((n, k))
        for i in range(n):
            # a random direction scaled onto (or inside) the L1 sphere, then clipped
            g = rng.laplace(size=k) * (rng.random(k) < rng.uniform(0.02, 1.0))
            s = np.abs(g).sum()
            g = g / s * self.radius * (1.0 if rng.random() < 0.5 else rng.random()) if s else g
            out[i] = np.clip(self.x0 + g, self.domain_lower, self.domain_upper)
        return out


@dataclass(frozen=True)
class AttackSpec:
    """What to look for. ``target=None`` means any class other than ``label``."""

    label: int
    target: int | None = None
    objective: str = "margin"
    margin_threshold: float = 1e-4

    def validate(self, num_classes: int) -> None:
        check(isinstance(self.label, (int, np.integer)) and 0 <= self.label < num_classes,
              "The 'label' parameter", f"a class index in [0, {num_classes - 1}]", self.label)
        if self.target is not None:
            check(isinstance(self.target, (int, np.integer)) and 0 <= self.target < num_classes,
                  "The 'target' parameter", f"a class index in [0, {num_classes - 1}] or None",
                  self.target)
            check(self.target != self.label, "The 'target' parameter",
                  "different from the true label", self.target,
                  "Pass target=None for an untargeted attack.")
        check(num_classes >= 2, "The network's output", "at least 2 logits", num_classes)
        check(self.objective in OBJECTIVES, "The 'objective' parameter",
              f"one of {OBJECTIVES}", self.objective)
        check(np.isfinite(self.margin_threshold) and self.margin_threshold >= 0,
              "The 'margin_threshold' parameter", "a finite number >= 0", self.margin_threshold)


def _cat(*parts: Any) -> np.ndarray:
    return np.concatenate(parts)


def _full(v: Any, n: int, dtype: Any = np.float64) -> np.ndarray:
    a = np.asarray(v, dtype=dtype)
    return np.full(n, a, dtype=dtype) if a.ndim == 0 else a.ravel().copy()


class NetBuilder(ModelBuilder):
    """A ModelBuilder that can skip the column and row names (building them is a good
    part of the encoder's time, and a model handed straight to a solver needs none) and
    takes its many small column batches with less overhead; the model is the same."""

    def __init__(self, name: str = "model", sense: str = "min", names: bool = True) -> None:
        super().__init__(name=name, sense=sense)
        self.keep_names = bool(names)

    def add_columns(self, count: int, lower: Any = 0.0, upper: Any = np.inf, cost: Any = 0.0,
                    integer: Any = False, names: Any = None) -> np.ndarray:
        count = int(count)
        self._c.append(_full(cost, count))
        self._lb.append(_full(lower, count))
        self._ub.append(_full(upper, count))
        self._int.append(_full(integer, count, bool))
        self._cnames.append(names)
        self.n += count
        return np.arange(self.n - count, self.n)


def _nm(b: ModelBuilder, prefix: str, idx: Any) -> list[str] | None:
    """``prefix + str(i)`` for each i, or None when ``b`` keeps no names."""
    if not getattr(b, "keep_names", True):
        return None
    return [f"{prefix}{i}" for i in idx]


def neuron_status(lower: np.ndarray, upper: np.ndarray, relu: bool) -> np.ndarray:
    """Per neuron: 0 stably inactive, 1 stably active, 2 unstable, 3 linear (no ReLU)."""
    if not relu:
        return np.full(lower.shape, 3, dtype=np.int8)
    st = np.full(lower.shape, 2, dtype=np.int8)
    st[upper <= 0] = 0
    st[(lower >= 0) & (upper > 0)] = 1
    return st


def check_relu_formulation(relu: str, max_fan_in: int | None) -> int:
    """Validate the ReLU formulation options; return the fan-in threshold to use."""
    check(isinstance(relu, str) and relu in RELU_FORMULATIONS, "The 'relu' parameter",
          f"one of {RELU_FORMULATIONS}", relu,
          "'bigm' is the default; 'auto' adds the ideal rows for small fan-in neurons.")
    k = DEFAULT_MAX_FAN_IN if max_fan_in is None else max_fan_in
    check(isinstance(k, (int, np.integer)) and not isinstance(k, bool)
          and 1 <= k <= MAX_FAN_IN_LIMIT, "The 'max_fan_in' parameter",
          f"an integer in [1, {MAX_FAN_IN_LIMIT}] (a neuron with fan-in n gets 2^n - 2 rows)",
          max_fan_in)
    return int(k)


@dataclass
class NetCols:
    """Column indices of one network inside a model; -1 where no column exists.

    ``fan_in``: per layer, the live non-fixed nonzero inputs of each unstable neuron (-1
    elsewhere); ``ideal_neurons`` / ``ideal_rows``: what the ideal formulation added."""

    x: np.ndarray
    d: np.ndarray | None = None
    eps: int | None = None
    z: list[np.ndarray] = field(default_factory=list)
    h: list[np.ndarray] = field(default_factory=list)
    s: list[np.ndarray] = field(default_factory=list)
    fan_in: list[np.ndarray] = field(default_factory=list)
    ideal_neurons: int = 0
    ideal_rows: int = 0


def add_input(b: ModelBuilder, region: Region, eps_variable: bool = False) -> NetCols:
    """Input columns and the ball rows (see the module docstring)."""
    lo, hi = region.box()
    n = lo.size
    x = b.add_columns(n, lower=lo, upper=hi, names=_nm(b, "x", range(n)))
    cols = NetCols(x=x)
    eps = None
    if eps_variable:
        eps = int(b.add_columns(1, lower=0.0, upper=region.radius, names=_nm(b, "eps", [""]))[0])
        cols.eps = eps
    free = np.flatnonzero(hi > lo)  # fixed coordinates need no distance rows
    if region.norm == "l1":
        x0 = region.x0[free]
        dmax = np.maximum(hi[free] - x0, x0 - lo[free])
        d = b.add_columns(free.size, lower=0.0, upper=dmax, names=_nm(b, "d", free))
        cols.d = d
        k = free.size
        r = np.arange(k)
        # d - x >= -x0 ; d + x >= x0
        b.add_rows(_cat(r, r), _cat(d, x[free]), _cat(np.ones(k), -np.ones(k)),
                   -x0, np.inf, count=k)
        b.add_rows(_cat(r, r), _cat(d, x[free]), np.ones(2 * k), x0, np.inf, count=k)
        if eps is None:
            b.add_rows(np.zeros(k), d, np.ones(k), -np.inf, region.radius, count=1,
                       names=_nm(b, "l1_ball", [""]))
        else:
            b.add_rows(np.zeros(k + 1), _cat(d, [eps]), _cat(np.ones(k), [-1.0]), -np.inf, 0.0,
                       count=1, names=_nm(b, "l1_ball", [""]))
    elif eps is not None:
        k = free.size
        r = np.arange(k)
        x0 = region.x0[free]
        # x - eps <= x0 ; x + eps >= x0
        b.add_rows(_cat(r, r), _cat(x[free], np.full(k, eps)), _cat(np.ones(k), -np.ones(k)),
                   -np.inf, x0, count=k)
        b.add_rows(_cat(r, r), _cat(x[free], np.full(k, eps)), np.ones(2 * k), x0, np.inf,
                   count=k)
    return cols


def add_affine(b: ModelBuilder, W: np.ndarray, bias: np.ndarray, prev: np.ndarray,
               need: np.ndarray, lower: np.ndarray, upper: np.ndarray, tag: str) -> np.ndarray:
    """Columns z[need] with rows ``z - W[need][:, alive] h[alive] = bias[need]``.

    ``prev`` holds the column of each input (-1: constant 0). Only nonzero weights enter.
    Returns the z column per neuron (-1 where not needed).
    """
    rows = np.flatnonzero(need)
    alive = np.flatnonzero(prev >= 0)
    z = np.full(W.shape[0], -1, dtype=np.int64)
    if rows.size == 0:
        return z
    z[rows] = b.add_columns(rows.size, lower=lower[rows], upper=upper[rows],
                            names=_nm(b, f"{tag}_z", rows))
    sub = W[np.ix_(rows, alive)]
    sr, sc = np.nonzero(sub)
    k = rows.size
    b.add_rows(_cat(np.arange(k), sr), _cat(z[rows], prev[alive][sc]),
               _cat(np.ones(k), -sub[sr, sc]), bias[rows], bias[rows], count=k,
               names=_nm(b, f"{tag}_aff", rows))
    return z


def add_relu(b: ModelBuilder, z: np.ndarray, lower: np.ndarray, upper: np.ndarray,
             status: np.ndarray, relax: bool, tag: str, force_cols: bool = False) -> tuple:
    """Post-activation columns h and binaries s for one layer (module docstring)."""
    h = np.full(z.shape, -1, dtype=np.int64)
    s = np.full(z.shape, -1, dtype=np.int64)
    act = status == 1
    lin = status == 3
    h[act | lin] = z[act | lin]
    if force_cols and np.any(status == 0):  # logits must exist even when constant 0
        dead = np.flatnonzero(status == 0)
        h[dead] = b.add_columns(dead.size, lower=0.0, upper=0.0,
                                names=_nm(b, f"{tag}_h", dead))
    un = np.flatnonzero(status == 2)
    if un.size == 0:
        return h, s
    k = un.size
    lo, u = lower[un], upper[un]
    hu = b.add_columns(k, lower=0.0, upper=u, names=_nm(b, f"{tag}_h", un))
    h[un] = hu
    r = np.arange(k)
    zu = z[un]
    b.add_rows(_cat(r, r), _cat(hu, zu), _cat(np.ones(k), -np.ones(k)), 0.0, np.inf,
               count=k, names=_nm(b, f"{tag}_ge", un))
    if relax:
        slope = u / (u - lo)
        b.add_rows(_cat(r, r), _cat(hu, zu), _cat(np.ones(k), -slope), -np.inf, -slope * lo,
                   count=k, names=_nm(b, f"{tag}_tri", un))
        return h, s
    su = b.add_columns(k, lower=0.0, upper=1.0, integer=True, names=_nm(b, f"{tag}_s", un))
    s[un] = su
    # h - z - l s <= -l   (h <= z - l (1 - s))
    b.add_rows(_cat(r, r, r), _cat(hu, zu, su), _cat(np.ones(k), -np.ones(k), -lo),
               -np.inf, -lo, count=k, names=_nm(b, f"{tag}_bigm_lo", un))
    # h - u s <= 0
    b.add_rows(_cat(r, r), _cat(hu, su), _cat(np.ones(k), -u), -np.inf, 0.0,
               count=k, names=_nm(b, f"{tag}_bigm_up", un))
    return h, s


_MASKS: dict[int, np.ndarray] = {}


def _subsets(n: int) -> np.ndarray:
    """All subsets of range(n) as a (2^n, n) bool array; row r is the set of r's bits."""
    if n not in _MASKS:
        _MASKS[n] = ((np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)
    return _MASKS[n]


def add_ideal_relu(b: ModelBuilder, W: np.ndarray, bias: np.ndarray, prev: np.ndarray,
                   in_lower: np.ndarray, in_upper: np.ndarray, h: np.ndarray, s: np.ndarray,
                   lower: np.ndarray, upper: np.ndarray, max_fan_in: int, strict: bool,
                   tag: str) -> tuple[np.ndarray, int, int]:
    """The ideal rows of Anderson et al. for the unstable neurons of one layer.

    ``prev``: input columns (-1: constant 0); inputs lie in ``[in_lower, in_upper]``;
    ``h``, ``s``: post-activation and binary columns (-1 where the neuron is stable).
    For each unstable neuron with fan-in n (its nonzero weights on live inputs whose box
    is not a point; a fixed input only adds a constant) and ``n <= max_fan_in``, adds the
    rows of every subset I other than {} and supp(w) (none when n <= 1), as

        h - sum_{i in I} w_i x_i - (b' + sum_{i in I} w_i L'_i + sum_{i not in I} w_i U'_i) s
            <= -sum_{i in I} w_i L'_i        (b' = b + the fixed inputs' w_i x_i).

    I = supp(w) and I = {} are the big-M rows with the box-implied bounds
    l' = b' + sum w_i L'_i and u' = b' + sum w_i U'_i; they are added only where they
    beat the big-M rows already present by more than the bounds' outward rounding
    (l' > l or u' < u by 1e-7 relative, e.g. with ``naive`` bounds).
    With ``strict``, a neuron with n > max_fan_in is an error; otherwise it keeps big-M.
    Returns (fan-in per neuron, -1 where stable; neurons given rows; rows added).
    """
    fan_in = np.full(W.shape[0], -1, dtype=np.int64)
    un = np.flatnonzero(s >= 0)
    if un.size == 0:
        return fan_in, 0, 0
    alive = prev >= 0
    fixed = in_upper <= in_lower
    ri, cj, vals, rhs, names = [], [], [], [], []
    m = 0
    neurons = 0
    too_wide: list[tuple[int, int]] = []
    for i in un:
        w = W[i]
        nz = (w != 0) & alive
        var = np.flatnonzero(nz & ~fixed)
        fx = np.flatnonzero(nz & fixed)
        n = var.size
        fan_in[i] = n
        if n > max_fan_in:
            too_wide.append((int(i), n))
            continue
        wv = w[var]
        lo_c = np.where(wv >= 0, in_lower[var], in_upper[var])   # L'_i
        up_c = np.where(wv >= 0, in_upper[var], in_lower[var])   # U'_i
        const = float(bias[i] + w[fx] @ in_lower[fx])
        masks = _subsets(n)
        keep = np.ones(masks.shape[0], dtype=bool)
        l_box = const + float(wv @ lo_c)
        u_box = const + float(wv @ up_c)
        keep[0] = u_box < upper[i] - 1e-7 * (1 + abs(upper[i]))          # I = {}
        keep[-1] = l_box > lower[i] + 1e-7 * (1 + abs(lower[i]))         # I = supp(w)
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            continue
        M = masks[rows]
        wl = M @ (wv * lo_c)                      # sum_{i in I} w_i L'_i
        wu = (~M) @ (wv * up_c)                   # sum_{i not in I} w_i U'_i
        s_coef = -(const + wl + wu)
        r_loc, c_loc = np.nonzero(M)
        k = rows.size
        ri += [m + np.arange(k), m + r_loc, m + np.arange(k)]
        cj += [np.full(k, h[i]), prev[var][c_loc], np.full(k, s[i])]
        vals += [np.ones(k), -wv[c_loc], s_coef]
        rhs.append(-wl)
        names += _nm(b, f"{tag}_ideal{i}_", rows) or []
        m += k
        neurons += 1
    if strict and too_wide:
        widest, widest_fan_in = max(too_wide, key=lambda t: t[1])
        raise ValidationError(
            f"relu='ideal' needs every unstable neuron's fan-in <= max_fan_in = {max_fan_in}; "
            f"{len(too_wide)} neuron(s) of layer {tag} exceed it (widest: neuron {widest}, fan-in "
            f"{widest_fan_in}). Raise max_fan_in (2^n - 2 rows per neuron) or use relu='auto', which "
            "keeps big-M for them.")
    if m:
        r, c, v = np.concatenate(ri), np.concatenate(cj), np.concatenate(vals)
        nzv = v != 0.0
        b.add_rows(r[nzv], c[nzv], v[nzv], -np.inf, np.concatenate(rhs), count=m,
                   names=names or None)
    return fan_in, neurons, m


def add_network(b: ModelBuilder, net: Network, region: Region, lower: list[np.ndarray],
                upper: list[np.ndarray], n_layers: int | None = None, relax: bool = False,
                last_pre_activation: bool = False, eps_variable: bool = False,
                relu: str = "bigm", max_fan_in: int | None = None) -> NetCols:
    """Input region plus layers ``0 .. n_layers-1`` (with their ReLUs). With
    ``last_pre_activation`` also the z columns of layer ``n_layers`` (all its neurons),
    which is what bound tightening optimizes over. ``relu``, ``max_fan_in``: the ReLU
    formulation of unstable neurons (module docstring; not with ``relax``)."""
    k_max = check_relu_formulation(relu, max_fan_in)
    check(not (relax and relu != "bigm"), "The 'relu' parameter", "'bigm' when relax=True "
          "(the relaxation is the triangle, without binaries)", relu)
    L = len(net.layers)
    n_layers = L if n_layers is None else n_layers
    cols = add_input(b, region, eps_variable)
    prev = cols.x
    in_lo, in_up = region.box()
    for k in range(n_layers):
        layer = net.layers[k]
        st = neuron_status(lower[k], upper[k], layer.relu)
        last = k == L - 1
        need = st != 0 if not last else np.ones(layer.out_features, dtype=bool)
        z = add_affine(b, layer.W, layer.b, prev, need, lower[k], upper[k], f"L{k}")
        h, s = add_relu(b, z, lower[k], upper[k], st, relax, f"L{k}", force_cols=last)
        if relu != "bigm":
            fan, nn_, nr = add_ideal_relu(b, layer.W, layer.b, prev, in_lo, in_up, h, s,
                                          lower[k], upper[k], k_max, relu == "ideal", f"L{k}")
            cols.fan_in.append(fan)
            cols.ideal_neurons += nn_
            cols.ideal_rows += nr
        cols.z.append(z)
        cols.h.append(h)
        cols.s.append(s)
        prev = h
        # the next layer's input box: [max(l, 0), max(u, 0)] after a ReLU, else [l, u]
        in_lo, in_up = ((np.maximum(lower[k], 0.0), np.maximum(upper[k], 0.0)) if layer.relu
                        else (lower[k], upper[k]))
    if last_pre_activation and n_layers < L:
        layer = net.layers[n_layers]
        need = np.ones(layer.out_features, dtype=bool)
        z = add_affine(b, layer.W, layer.b, prev, need, lower[n_layers], upper[n_layers],
                       f"L{n_layers}")
        cols.z.append(z)
    return cols


@dataclass
class Encoding:
    """A built attack MIP with the map from its columns back to the network."""

    model: LinearModel
    network: Network
    region: Region
    spec: AttackSpec
    bounds: Any  # bounds.Bounds
    cols: NetCols
    logit_cols: np.ndarray
    build_time_s: float
    relu: str = "bigm"
    max_fan_in: int | None = None
    # untargeted margin: the runner-up column "m", its indicators "q" and their "classes"
    runner_up: dict[str, Any] | None = None

    def input_of(self, solution: np.ndarray) -> np.ndarray:
        return np.asarray(solution, dtype=np.float64)[self.cols.x]

    def logits_of(self, solution: np.ndarray) -> np.ndarray:
        return np.asarray(solution, dtype=np.float64)[self.logit_cols]

    def stats(self) -> dict[str, Any]:
        per_layer = []
        for k, layer in enumerate(self.network.layers):
            st = neuron_status(self.bounds.lower[k], self.bounds.upper[k], layer.relu)
            per_layer.append({
                "layer": k, "neurons": int(st.size),
                "stable_inactive": int(np.sum(st == 0)), "stable_active": int(np.sum(st == 1)),
                "unstable": int(np.sum(st == 2)), "linear": int(np.sum(st == 3)),
            })
        return {
            **self.model.stats(),
            "binaries": self.model.num_integer,
            "relu_binaries": int(sum(np.sum(s >= 0) for s in self.cols.s)),
            "unstable": int(sum(p["unstable"] for p in per_layer)),
            "stable": int(sum(p["stable_inactive"] + p["stable_active"] for p in per_layer)),
            "per_layer": per_layer,
            "build_time_s": self.build_time_s,
            "bounds_time_s": self.bounds.time_s,
            "bounds_method": self.bounds.method,
            "relu_formulation": self.relu,
            "max_fan_in": self.max_fan_in,
            "ideal_neurons": self.cols.ideal_neurons,
            "ideal_rows": self.cols.ideal_rows,
        }


def encode(net: Network, region: Region, spec: AttackSpec, bounds: Any,
           name: str = "attack", relu: str = "bigm", max_fan_in: int | None = None,
           names: bool = True) -> Encoding:
    """The attack MIP of ``spec`` over ``region`` with the pre-activation ``bounds``.

    ``relu``: ``"bigm"`` (default), ``"ideal"`` (the ideal rows for every unstable neuron;
    an error if one has fan-in > ``max_fan_in``) or ``"auto"`` (ideal rows where fan-in
    <= ``max_fan_in``, big-M alone elsewhere); ``max_fan_in`` defaults to
    ``DEFAULT_MAX_FAN_IN``. The choice is recorded in the metadata unless it is big-M.
    """
    spec.validate(net.output_dim)
    k_max = check_relu_formulation(relu, max_fan_in)
    t0 = time.perf_counter()
    obj = spec.objective
    sense = {"margin": "max", "min_distortion": "min", "decision": "min"}[obj]
    b = NetBuilder(name=name, sense=sense, names=names)
    cols = add_network(b, net, region, bounds.lower, bounds.upper,
                       eps_variable=obj == "min_distortion", relu=relu, max_fan_in=k_max)
    y = cols.h[-1]
    lo_out, up_out = bounds.output_range()
    t = int(spec.label)
    # margin = coef @ cols + (margin row built below)
    runner_up = None
    if spec.target is not None:
        mcols = np.array([y[spec.target], y[t]])
        mvals = np.array([1.0, -1.0])
    else:
        others = np.array([j for j in range(net.output_dim) if j != t])
        floor = float(np.max(lo_out[others]))
        cand = others[up_out[others] >= floor]
        if cand.size == 1:
            mcols = np.array([y[cand[0]], y[t]])
            mvals = np.array([1.0, -1.0])
        else:
            U = float(np.max(up_out[cand]))
            m = int(b.add_columns(1, lower=floor, upper=U, names=_nm(b, "runner_up", [""]))[0])
            q = b.add_columns(cand.size, lower=0.0, upper=1.0, integer=True,
                              names=_nm(b, "q", cand))
            k = cand.size
            r = np.arange(k)
            Mj = U - lo_out[cand]
            # m - y_j + M_j q_j <= M_j
            b.add_rows(_cat(r, r, r), _cat(np.full(k, m), y[cand], q),
                       _cat(np.ones(k), -np.ones(k), Mj), -np.inf, Mj, count=k,
                       names=_nm(b, "runner_up_", cand))
            b.add_rows(np.zeros(k), q, np.ones(k), 1.0, 1.0, count=1,
                       names=_nm(b, "one_runner_up", [""]))
            runner_up = {"m": m, "q": q, "classes": cand}
            mcols = np.array([m, y[t]])
            mvals = np.array([1.0, -1.0])
    if obj == "margin":
        b.set_cost(mcols, mvals)
    else:
        b.add_rows(np.zeros(mcols.size), mcols, mvals, spec.margin_threshold, np.inf, count=1,
                   names=_nm(b, "adversarial", [""]))
        if obj == "min_distortion":
            b.set_cost(np.array([cols.eps]), np.array([1.0]))
    model = b.build()
    enc = Encoding(model, net, region, spec, bounds, cols, np.asarray(y), 0.0, relu,
                   None if relu == "bigm" else k_max, runner_up)
    enc.build_time_s = time.perf_counter() - t0
    model.metadata.update({
        "kind": "optprune.adversarial/1",
        "network_sha256": net.sha256(),
        "network_sizes": [net.input_dim] + [L.out_features for L in net.layers],
        "x0": region.x0.tolist(),
        "label": t,
        "target": spec.target,
        "norm": region.norm,
        "radius": region.radius,
        "domain": [region.domain_lower.tolist(), region.domain_upper.tolist()]
        if np.ptp(region.domain_lower) or np.ptp(region.domain_upper)
        else [float(region.domain_lower[0]), float(region.domain_upper[0])],
        "objective": obj,
        "margin_threshold": spec.margin_threshold,
        "bounds_method": bounds.method,
        "variables": model.num_cols,
        "binaries": model.num_integer,
        "x_columns": [int(cols.x[0]), int(cols.x[-1]) + 1],
        "logit_columns": [int(c) for c in y],
    })
    if relu != "bigm":  # big-M sidecars stay byte-identical to those written before
        model.metadata.update({"relu_formulation": relu, "max_fan_in": k_max,
                               "ideal_neurons": cols.ideal_neurons,
                               "ideal_rows": cols.ideal_rows})
    return enc
