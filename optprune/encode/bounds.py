"""Pre-activation bounds l <= z_k <= u for every neuron, over an input region.

Methods (``formulations/bounds.md``), each sound: every point of the region gives
pre-activations inside the bounds.

* ``naive``: one M for the whole network, M = the largest |interval bound|, and every
  ReLU unstable (l = -M, u = M). What a tool without bound tightening builds; kept for
  the ablation.
* ``interval``: with h_{k-1} in [hl, hu] (hl = max(l, 0), hu = max(u, 0) after a ReLU),
  ``l_k = W+ hl + W- hu + b`` and ``u_k = W+ hu + W- hl + b`` (W+ = max(W, 0),
  W- = min(W, 0)). The input box is the region's box.
* ``symbolic``: linear bounds by back-substitution (DeepPoly / CROWN style): each
  pre-activation is bounded by linear functions of the input, found by walking back
  through the layers with one linear upper and one linear lower bound per ReLU
  (upper: the triangle's chord ``u (z - l) / (u - l)``; lower: ``a z`` with a = 1 if
  u >= -l else 0; stable ReLUs exactly), then maximized / minimized exactly over the
  region (a box for L-inf; for L1 the ball within the domain, a fractional knapsack
  solved greedily). Intersected with the interval bounds. No solver, matrix products
  only: milliseconds where ``lp`` takes seconds, and usually most of its tightening.
* ``lp`` (optimization-based bound tightening, OBBT): layer by layer, symbolic bounds
  first (recomputed from the tightened layers before), then for each neuron still
  unstable, ``min z_ki`` and ``max z_ki`` over the LP relaxation of layers 0..k-1
  (triangle relaxation of the unstable ReLUs, the exact L1 ball). One HiGHS instance per
  layer holding layers 0..k-1 only: z_ki = W_k[i] h_{k-1} + b_ki is the objective (a
  cost vector on the live columns of h_{k-1}; no row of layer k, whose dense rows made
  every simplex iteration several times dearer before), so the 2 x (unstable) solves
  differ only in the cost and each starts from the previous optimal basis. Neurons are
  taken nearest-to-stable first (smallest min(-l, u) / (u - l)), and
  ``total_time_limit_s`` is a budget in seconds: the neurons not reached keep their
  symbolic bounds.
* ``progressive``: ``lp``, then for each ReLU still unstable the same two problems as
  MIPs (binaries for the unstable ReLUs before layer k) under ``mip_time_limit_s`` per
  bound; the MIP's dual bound is valid even when the limit stops it.

Each LP/MIP value is widened by ``1e-6 (1 + |v|)`` against solver tolerances, and a
bound only ever moves inward (intersection with the previous one). Every layer's bounds
are then rounded outward to 24 significant bits (``round_out``), so that the same
network and region give the same bounds, bit for bit, on every machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import check
from .formulate import NetBuilder, Region, add_network, neuron_status
from .network import Network

__all__ = ["Bounds", "compute_bounds", "interval_bounds", "symbolic_bounds", "METHODS",
           "round_out", "GRID_BITS"]

METHODS = ("naive", "interval", "symbolic", "lp", "progressive")
_TOL = 1e-6
GRID_BITS = 24
_USABLE: tuple = ()


@dataclass
class Bounds:
    lower: list[np.ndarray]
    upper: list[np.ndarray]
    method: str
    time_s: float = 0.0
    lp_solves: int = 0
    mip_solves: int = 0
    time_by_stage_s: dict[str, float] = field(default_factory=dict)

    def output_range(self) -> tuple[np.ndarray, np.ndarray]:
        return self.lower[-1], self.upper[-1]

    def report(self, net: Network) -> list[dict[str, Any]]:
        """Per layer: neurons, stably inactive, stably active, unstable."""
        out = []
        for k, layer in enumerate(net.layers):
            st = neuron_status(self.lower[k], self.upper[k], layer.relu)
            out.append({"layer": k, "neurons": int(st.size),
                        "stable_inactive": int(np.sum(st == 0)),
                        "stable_active": int(np.sum(st == 1)),
                        "unstable": int(np.sum(st == 2))})
        return out

    def unstable_count(self, net: Network) -> int:
        return sum(r["unstable"] for r in self.report(net))

    def to_dict(self, net: Network) -> dict[str, Any]:
        return {"method": self.method, "time_s": self.time_s, "lp_solves": self.lp_solves,
                "mip_solves": self.mip_solves, "time_by_stage_s": self.time_by_stage_s,
                "per_layer": self.report(net)}


def _interval_layer(W: np.ndarray, b: np.ndarray, hl: np.ndarray, hu: np.ndarray):
    Wp, Wn = np.maximum(W, 0.0), np.minimum(W, 0.0)
    return Wp @ hl + Wn @ hu + b, Wp @ hu + Wn @ hl + b


def round_out(lo: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``lo`` rounded down and ``up`` rounded up to ``GRID_BITS`` significant bits.

    Sound (the interval only grows, by at most 2^-24 relative, next to the 1e-6 every
    LP value is widened by), sign-preserving (a stable neuron stays stable), and what
    makes instance files portable: numpy's matrix products sum in an order that depends
    on the CPU's BLAS kernels, so the same bounds differ in their last bits between
    machines; on the grid they are equal unless a value straddles a grid point
    (probability about 2^-28 per value)."""
    scale = float(2 ** GRID_BITS)
    ml, el = np.frexp(lo)
    mu, eu = np.frexp(up)
    return np.ldexp(np.floor(ml * scale) / scale, el), np.ldexp(np.ceil(mu * scale) / scale, eu)


def _post(layer_relu: bool, lo: np.ndarray, up: np.ndarray):
    return (np.maximum(lo, 0.0), np.maximum(up, 0.0)) if layer_relu else (lo, up)


def interval_bounds(net: Network, region: Region) -> Bounds:
    t0 = time.perf_counter()
    hl, hu = region.box()
    lower, upper = [], []
    for layer in net.layers:
        lo, up = round_out(*_interval_layer(layer.W, layer.b, hl, hu))
        lower.append(lo)
        upper.append(up)
        hl, hu = _post(layer.relu, lo, up)
    dt = time.perf_counter() - t0
    return Bounds(lower, upper, "interval", dt, time_by_stage_s={"interval": dt})


def _relu_lines(lo: np.ndarray, up: np.ndarray) -> tuple:
    """Per neuron, ``sl z <= relu(z) <= su z + tu`` valid on [lo, up] (DeepPoly)."""
    act, dead = lo >= 0, up <= 0
    un = ~act & ~dead
    su = np.where(act, 1.0, 0.0)
    tu = np.zeros_like(lo)
    sl = su.copy()
    if np.any(un):
        lu, uu = lo[un], up[un]
        su[un] = uu / (uu - lu)
        tu[un] = -uu * lu / (uu - lu)
        sl[un] = (uu >= -lu).astype(np.float64)
    return sl, su, tu


def _max_linear(A: np.ndarray, region: Region) -> np.ndarray:
    """max over the region of each row of ``A @ x`` (exact)."""
    if region.norm == "linf":
        lo, hi = region.box()
        return np.maximum(A, 0.0) @ hi + np.minimum(A, 0.0) @ lo
    # L1 ball within the domain: from x0, move coordinate i towards the side its
    # coefficient favours; each unit of budget gains |a_i|, up to the room the domain
    # leaves. A fractional knapsack: fill by |a_i|, largest first.
    x0, r = region.x0, region.radius
    room = np.where(A > 0, region.domain_upper - x0, x0 - region.domain_lower)
    room = np.maximum(room, 0.0)
    order = np.argsort(-np.abs(A), axis=1, kind="stable")
    a_sorted = np.take_along_axis(np.abs(A), order, axis=1)
    room_sorted = np.take_along_axis(room, order, axis=1)
    before = np.cumsum(room_sorted, axis=1) - room_sorted
    step = np.clip(r - before, 0.0, room_sorted)
    return A @ x0 + np.sum(a_sorted * step, axis=1)


def _backsubstitute(net: Network, k: int, lines: list, region: Region) -> tuple:
    """Lower and upper bounds of z_k from linear bounds through layers k-1 .. 0."""
    layer = net.layers[k]
    out = []
    for sign in (1.0, -1.0):  # +1: upper bound of z; -1: upper bound of -z (a lower bound)
        A = sign * layer.W
        c = sign * layer.b
        for j in range(k - 1, -1, -1):
            prev = net.layers[j]
            if prev.relu:  # A h <= A+ (su z + tu) + A- (sl z)
                sl, su, tu = lines[j]
                Ap, An = np.maximum(A, 0.0), np.minimum(A, 0.0)
                c = c + Ap @ tu
                A = Ap * su + An * sl
            c = c + A @ prev.b
            A = A @ prev.W
        out.append(sign * (_max_linear(A, region) + c))
    up, lo = out
    return lo, up


def _symbolic_layer(net: Network, region: Region, k: int, lines: list, hl: np.ndarray,
                    hu: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple:
    """Bounds of z_k: ``[lower, upper]`` intersected with interval propagation from the
    post-activation box [hl, hu] and with back-substitution through ``lines``."""
    layer = net.layers[k]
    lo_i, up_i = _interval_layer(layer.W, layer.b, hl, hu)
    lo = np.maximum(lower, lo_i)
    up = np.minimum(upper, up_i)
    if not (k == 0 and region.norm == "linf"):  # an L-inf box: interval is exact at layer 0
        lo_s, up_s = _backsubstitute(net, k, lines, region)
        lo = np.maximum(lo, lo_s - _TOL * (1.0 + np.abs(lo_s)))
        up = np.minimum(up, up_s + _TOL * (1.0 + np.abs(up_s)))
    cross = lo > up  # numerically crossed: keep a valid interval
    if np.any(cross):
        mid = 0.5 * (lo[cross] + up[cross])
        lo[cross] = up[cross] = mid
    return lo, up


def symbolic_bounds(net: Network, region: Region) -> Bounds:
    """Back-substitution bounds (module docstring), intersected with interval bounds."""
    t0 = time.perf_counter()
    lower: list[np.ndarray] = []
    upper: list[np.ndarray] = []
    lines: list[tuple | None] = []
    hl, hu = region.box()
    for k, layer in enumerate(net.layers):
        n = layer.out_features
        lo, up = round_out(*_symbolic_layer(net, region, k, lines, hl, hu,
                                            np.full(n, -np.inf), np.full(n, np.inf)))
        lower.append(lo)
        upper.append(up)
        lines.append(_relu_lines(lo, up) if layer.relu else None)
        hl, hu = _post(layer.relu, lo, up)
    dt = time.perf_counter() - t0
    return Bounds(lower, upper, "symbolic", dt, time_by_stage_s={"symbolic": dt})


def compute_bounds(net: Network, region: Region, method: str = "lp", *,
                   lp_time_limit_s: float = 5.0, mip_time_limit_s: float = 1.0,
                   total_time_limit_s: float | None = None) -> Bounds:
    """Bounds by ``method`` (one of ``METHODS``); see the module docstring.

    ``lp_time_limit_s`` / ``mip_time_limit_s`` limit each single bound problem;
    ``total_time_limit_s`` stops tightening (keeping the sound bounds so far).
    """
    check(method in METHODS, "The bounds 'method' parameter", f"one of {METHODS}", method)
    if method == "interval":
        return interval_bounds(net, region)
    if method == "symbolic":
        return symbolic_bounds(net, region)
    if method == "naive":
        t0 = time.perf_counter()
        ib = interval_bounds(net, region)
        M = max(float(np.max(np.abs(np.r_[lo, up]))) for lo, up in zip(ib.lower, ib.upper))
        M = max(M, 1.0)
        lower = [np.full(L.out_features, -M) for L in net.layers]
        upper = [np.full(L.out_features, M) for L in net.layers]
        return Bounds(lower, upper, "naive", time.perf_counter() - t0)
    return _tighten(net, region, method, lp_time_limit_s, mip_time_limit_s, total_time_limit_s)


def _tighten(net: Network, region: Region, method: str, lp_limit: float, mip_limit: float,
             total_limit: float | None) -> Bounds:
    from ..solve.backends.highs import new_highs, pass_model

    t_start = time.perf_counter()
    deadline = math.inf if total_limit is None else t_start + total_limit
    L = len(net.layers)
    sb = symbolic_bounds(net, region)
    lower = [lo.copy() for lo in sb.lower]
    upper = [u.copy() for u in sb.upper]
    stage = {"symbolic": sb.time_s, "lp": 0.0, "mip": 0.0}
    res = Bounds(lower, upper, method)
    hl, hu = region.box()
    lines: list = []
    for k in range(L):
        layer = net.layers[k]
        if k > 0:  # re-propagate (interval and symbolic) from the tightened layers before
            t0 = time.perf_counter()
            lower[k], upper[k] = _symbolic_layer(net, region, k, lines, hl, hu, lower[k],
                                                 upper[k])
            stage["symbolic"] += time.perf_counter() - t0
        # An L-inf box is the exact input region: the LP cannot beat interval at layer 0.
        skip = k == 0 and region.norm == "linf"
        targets = _targets(layer.relu, lower[k], upper[k], k == L - 1)
        out_of_time = total_limit is not None and time.perf_counter() - t_start > total_limit
        if targets.size and not skip and not out_of_time:
            t0 = time.perf_counter()
            res.lp_solves += _optimize_bounds(net, region, lower, upper, k, targets, True,
                                              lp_limit, new_highs, pass_model, deadline)
            stage["lp"] += time.perf_counter() - t0
            # MIP stage: unstable ReLUs only; the logits' MIP bounds would cost as much as
            # the attack itself.
            if method == "progressive" and layer.relu:
                targets = _targets(layer.relu, lower[k], upper[k], False)
                if targets.size and k > 0:
                    t0 = time.perf_counter()
                    res.mip_solves += _optimize_bounds(net, region, lower, upper, k, targets,
                                                       False, mip_limit, new_highs, pass_model,
                                                       deadline)
                    stage["mip"] += time.perf_counter() - t0
        lower[k], upper[k] = round_out(lower[k], upper[k])
        hl, hu = _post(layer.relu, lower[k], upper[k])
        lines.append(_relu_lines(lower[k], upper[k]) if layer.relu else None)
    res.time_s = time.perf_counter() - t_start
    res.time_by_stage_s = stage
    return res


def _targets(relu: bool, lo: np.ndarray, up: np.ndarray, last: bool) -> np.ndarray:
    """Neurons worth tightening: unstable ReLUs; every neuron of a linear layer."""
    if not relu:
        # Logits and linear layers: every bound feeds a big-M (runner-up) or the next layer.
        return np.arange(lo.size)
    return np.flatnonzero((lo < 0) & (up > 0))


def _usable() -> tuple:
    import highspy

    S = highspy.HighsModelStatus
    return (S.kOptimal, S.kTimeLimit, S.kInterrupt, S.kSolutionLimit, S.kIterationLimit)


def _optimize_bounds(net: Network, region: Region, lower: list, upper: list, k: int,
                     targets: np.ndarray, relax: bool, limit_s: float, new_highs, pass_model,
                     deadline: float = math.inf) -> int:
    """min and max z_k[i] for i in targets; tightens lower[k], upper[k] in place.

    The problem holds layers 0..k-1 only, and z_k[i] = W_k[i] h_{k-1} + b_k[i] is the
    objective itself (a cost vector on the live columns of h_{k-1}), so no row or column
    of layer k enters and each solve is a cost change on one LP (or MIP) from the last
    basis; targets are taken nearest-to-stable first (smallest min(-l, u) / (u - l)), so
    that a time limit spends the budget where a neuron can still become stable."""
    import highspy

    global _USABLE
    if not _USABLE:
        _USABLE = _usable()
    b = NetBuilder(name=f"bounds_L{k}", sense="min", names=False)
    cols = add_network(b, net, region, lower, upper, n_layers=k, relax=relax)
    model = b.build()
    prev = cols.h[k - 1] if k > 0 else cols.x
    alive = np.flatnonzero(prev >= 0)
    pc = prev[alive].astype(np.int32)
    W, bias = net.layers[k].W, net.layers[k].b
    lo_k, up_k = lower[k], upper[k]
    width = np.maximum(up_k[targets] - lo_k[targets], 1e-12)
    order = targets[np.argsort(np.minimum(-lo_k[targets], up_k[targets]) / width,
                               kind="stable")]
    h = new_highs()
    pass_model(h, model)
    # No 'threads' option here: changing it after HiGHS's global scheduler has started
    # makes run() fail (status kNotset), which silently lost every bound before.
    if not relax:
        h.setOptionValue("mip_rel_gap", 1e-4)
    n_solves = 0
    for i in order:
        if time.perf_counter() > deadline:
            break
        w = W[i, alive]
        for direction in (1.0, -1.0):
            if relax is False and direction == 1.0 and lo_k[i] >= 0:
                continue
            if relax is False and direction == -1.0 and up_k[i] <= 0:
                continue
            h.changeColsCost(pc.size, pc, direction * w)
            # HiGHS's time_limit counts the instance's run time over all its run() calls
            # so far, not per call: re-arm it relative to getRunTime() for every bound,
            # or every bound after the first limit_s seconds would stop at once, untightened.
            h.setOptionValue("time_limit", h.getRunTime() + float(limit_s))
            run_status = h.run()
            n_solves += 1
            status = h.getModelStatus()
            info = h.getInfo()
            if run_status == highspy.HighsStatus.kError or status not in _USABLE:
                continue
            if relax:
                if status != highspy.HighsModelStatus.kOptimal:
                    continue
                v = float(info.objective_function_value)
            else:
                v = float(info.mip_dual_bound)
                if not np.isfinite(v) or abs(v) >= highspy.kHighsInf:
                    continue
                if status == highspy.HighsModelStatus.kInfeasible:
                    continue
            v = direction * v + bias[i]  # min z (direction +1) or max z = -min(-z)
            slack = _TOL * (1.0 + abs(v))
            if direction > 0:
                lo_k[i] = max(lo_k[i], v - slack)
            else:
                up_k[i] = min(up_k[i], v + slack)
            if lo_k[i] > up_k[i]:  # numerical crossing: keep a valid interval
                mid = 0.5 * (lo_k[i] + up_k[i])
                lo_k[i] = up_k[i] = mid
        if not relax:
            h.clearSolver()  # MIP: a fresh search per neuron keeps the limit per bound
    return n_solves
