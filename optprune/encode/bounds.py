"""Pre-activation bounds l <= z_k <= u for every neuron, over an input region.

Methods (``formulations/bounds.md``), each sound: every point of the region gives
pre-activations inside the bounds.

* ``naive``: one M for the whole network, M = the largest |interval bound|, and every
  ReLU unstable (l = -M, u = M). What a tool without bound tightening builds; kept for
  the ablation.
* ``interval``: with h_{k-1} in [hl, hu] (hl = max(l, 0), hu = max(u, 0) after a ReLU),
  ``l_k = W+ hl + W- hu + b`` and ``u_k = W+ hu + W- hl + b`` (W+ = max(W, 0),
  W- = min(W, 0)). The input box is the region's box.
* ``lp``: layer by layer, interval bounds first, then for each neuron still unstable,
  ``min z_ki`` and ``max z_ki`` over the LP relaxation of layers 0..k-1 (triangle
  relaxation of the unstable ReLUs, the exact L1 ball). One HiGHS instance per layer;
  only the objective changes between the 2 x (unstable) solves, so each starts from
  the previous optimal basis (hot start).
* ``progressive``: ``lp``, then for each ReLU still unstable the same two problems as
  MIPs (binaries for the unstable ReLUs before layer k) under ``mip_time_limit_s`` per
  bound; the MIP's dual bound is valid even when the limit stops it.

Each LP/MIP value is widened by ``1e-6 (1 + |v|)`` against solver tolerances, and a
bound only ever moves inward (intersection with the previous one).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import check
from ..solve import ModelBuilder
from .formulate import Region, add_network, neuron_status
from .network import Network

__all__ = ["Bounds", "compute_bounds", "interval_bounds", "METHODS"]

METHODS = ("naive", "interval", "lp", "progressive")
_TOL = 1e-6
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


def _post(layer_relu: bool, lo: np.ndarray, up: np.ndarray):
    return (np.maximum(lo, 0.0), np.maximum(up, 0.0)) if layer_relu else (lo, up)


def interval_bounds(net: Network, region: Region) -> Bounds:
    t0 = time.perf_counter()
    hl, hu = region.box()
    lower, upper = [], []
    for layer in net.layers:
        lo, up = _interval_layer(layer.W, layer.b, hl, hu)
        lower.append(lo)
        upper.append(up)
        hl, hu = _post(layer.relu, lo, up)
    dt = time.perf_counter() - t0
    return Bounds(lower, upper, "interval", dt, time_by_stage_s={"interval": dt})


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
    ib = interval_bounds(net, region)
    lower = [lo.copy() for lo in ib.lower]
    upper = [u.copy() for u in ib.upper]
    stage = {"interval": ib.time_s, "lp": 0.0, "mip": 0.0}
    res = Bounds(lower, upper, method)
    hl, hu = region.box()
    for k in range(L):
        layer = net.layers[k]
        if k > 0:  # re-propagate from the tightened layer before
            lo, up = _interval_layer(layer.W, layer.b, hl, hu)
            lower[k] = np.maximum(lower[k], lo)
            upper[k] = np.minimum(upper[k], up)
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
        hl, hu = _post(layer.relu, lower[k], upper[k])
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
    """min and max z_k[i] for i in targets; tightens lower[k], upper[k] in place."""
    import highspy

    global _USABLE
    if not _USABLE:
        _USABLE = _usable()
    b = ModelBuilder(name=f"bounds_L{k}", sense="min")
    cols = add_network(b, net, region, lower, upper, n_layers=k, relax=relax,
                       last_pre_activation=True)
    model = b.build()
    zc = cols.z[k]
    h = new_highs()
    pass_model(h, model)
    # No 'threads' option here: changing it after HiGHS's global scheduler has started
    # makes run() fail (status kNotset), which silently lost every bound before.
    if not relax:
        h.setOptionValue("mip_rel_gap", 1e-4)
    n_solves = 0
    for i in targets:
        if time.perf_counter() > deadline:
            break
        for direction in (1.0, -1.0):
            if relax is False and direction == 1.0 and lower[k][i] >= 0:
                continue
            if relax is False and direction == -1.0 and upper[k][i] <= 0:
                continue
            h.changeColCost(int(zc[i]), direction)
            h.setOptionValue("time_limit", float(limit_s))  # per run() (measured)
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
            v = direction * v  # min z (direction +1) or max z = -min(-z)
            slack = _TOL * (1.0 + abs(v))
            if direction > 0:
                lower[k][i] = max(lower[k][i], v - slack)
            else:
                upper[k][i] = min(upper[k][i], v + slack)
            if lower[k][i] > upper[k][i]:  # numerical crossing: keep a valid interval
                mid = 0.5 * (lower[k][i] + upper[k][i])
                lower[k][i] = upper[k][i] = mid
            h.changeColCost(int(zc[i]), 0.0)
        h.changeColCost(int(zc[i]), 0.0)
        if not relax:
            h.clearSolver()  # MIP: a fresh search per neuron keeps the limit per bound
    return n_solves
