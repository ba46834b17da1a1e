"""Primal heuristics for the attack MIPs: projected gradient ascent on the margin, and the
lift of an input to a complete MIP point (a MIP start).

PGD (Madry et al., 2018) with FGSM (Goodfellow et al., 2015) as its one-step case, on the
network itself in float64 (numpy, batched over restarts)::

    margin(x) = y_c(x) - y_t(x)            targeted at c
              = max_{j != t} y_j(x) - y_t(x)   untargeted
    L-inf:  x <- clip_box(x + a sign(grad))
    L1:     x <- P(x + a e_i sign(grad_i)) for the coordinates i of largest |grad_i|
            (steepest ascent in L1), P = Euclidean projection onto the L1 ball within
            the domain box, computed exactly by bisection on the soft threshold:
            d_i = clip(sign(v_i) max(|v_i| - lam, 0), lo_i - x0_i, hi_i - x0_i)

(the ReLU's derivative at 0 is taken as 0). Every returned point is clipped into the
region and evaluated again by ``Network.forward`` in float64: its margin is the exact
float64 margin of the network, not the ascent's running value.

``lift(enc, x)`` completes an input x of the region into a value for every column of
the encoding: the pre-activations z and post-activations h of the forward pass, s = 1
where z > 0 (else 0) for the unstable ReLUs, the L1 distance columns d = |x - x0|, eps
= ||x - x0||, and for the untargeted margin m = max_j y_j with q the indicator of the
arg max. For any x in the region this point satisfies every row of the encoding (the
big-M rows, the ideal rows and every Anderson cut are valid for all of them), up to
floating-point rounding: it is a MIP start (tested: ``max_violation`` below 1e-9).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .formulate import Encoding, NetCols, Region
from .network import Network

__all__ = ["PGDResult", "pgd", "lift", "lift_network", "margins", "project_l1"]


def margins(net: Network, X: np.ndarray, label: int, target: int | None) -> np.ndarray:
    """The margin of each row of X (float64 forward pass)."""
    Y = np.atleast_2d(net.forward(np.atleast_2d(X)))
    if target is not None:
        return Y[:, target] - Y[:, label]
    other = Y.copy()
    other[:, label] = -np.inf
    return other.max(axis=1) - Y[:, label]


def _margin_grad(net: Network, X: np.ndarray, label: int, target: int | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(margins, d margin / d x) for a batch X (n x input_dim)."""
    h = X
    masks = []
    for L in net.layers:
        z = h @ L.W.T + L.b
        if L.relu:
            m = z > 0
            masks.append(m)
            h = np.where(m, z, 0.0)
        else:
            masks.append(None)
            h = z
    Y = h
    n = X.shape[0]
    g = np.zeros_like(Y)
    if target is not None:
        j = np.full(n, target)
    else:
        other = Y.copy()
        other[:, label] = -np.inf
        j = other.argmax(axis=1)
    rows = np.arange(n)
    g[rows, j] = 1.0
    g[:, label] -= 1.0
    marg = Y[rows, j] - Y[:, label]
    for L, m in zip(reversed(net.layers), reversed(masks)):
        if m is not None:
            g = g * m
        g = g @ L.W
    return marg, g


def project_l1(v: np.ndarray, radius: float, lo: np.ndarray, hi: np.ndarray,
               iters: int = 60) -> np.ndarray:
    """Euclidean projection of each row of ``v`` (offsets from x0) onto
    ``{d : ||d||_1 <= radius, lo <= d <= hi}`` (lo <= 0 <= hi), by bisection on the
    soft threshold (module docstring)."""
    v = np.atleast_2d(v)

    def clip_soft(lam: np.ndarray) -> np.ndarray:
        d = np.sign(v) * np.maximum(np.abs(v) - lam[:, None], 0.0)
        return np.clip(d, lo, hi)

    d0 = clip_soft(np.zeros(v.shape[0]))
    inside = np.abs(d0).sum(axis=1) <= radius
    a = np.zeros(v.shape[0])
    b = np.abs(v).max(axis=1) + 1.0
    for _ in range(iters):
        mid = 0.5 * (a + b)
        over = np.abs(clip_soft(mid)).sum(axis=1) > radius
        a = np.where(over, mid, a)
        b = np.where(over, b, mid)
    d = clip_soft(b)  # b: the side whose norm is <= radius
    return np.where(inside[:, None], d0, d)


@dataclass(frozen=True)
class PGDResult:
    x: np.ndarray            # the best input found (in the region)
    margin: float            # its float64 margin on the network
    evaluations: int         # forward + backward passes
    time_s: float


def pgd(net: Network, region: Region, label: int, target: int | None = None, *,
        steps: int = 60, restarts: int = 16, step_size: float | None = None,
        seed: int = 0) -> PGDResult:
    """Projected gradient ascent on the margin over ``region`` (module docstring):
    ``restarts`` starts (x0, then uniform points of the region) run ``steps`` steps
    each, with the step size decaying from ``step_size`` (default radius / 4 for L-inf,
    radius / 2 for L1) to a tenth of it. FGSM is ``steps=1, restarts=1``."""
    import time

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    lo, hi = region.box()
    x0 = region.x0
    k = max(1, int(restarts))
    X = np.vstack([x0[None, :], region.sample(k - 1, rng)]) if k > 1 else x0[None, :].copy()
    linf = region.norm == "linf"
    a0 = step_size if step_size is not None else region.radius * (0.25 if linf else 0.5)
    best_x = X.copy()
    best_m = np.full(k, -np.inf)
    evals = 0
    dlo, dhi = region.domain_lower - x0, region.domain_upper - x0
    for it in range(max(1, int(steps))):
        m, g = _margin_grad(net, X, label, target)
        evals += k
        better = m > best_m
        best_m[better], best_x[better] = m[better], X[better]
        a = a0 * (1.0 - 0.9 * it / max(1, steps - 1)) if steps > 1 else a0
        if linf:
            X = np.clip(X + a * np.sign(g), lo, hi)
        else:  # steepest L1 ascent on the few largest coordinates, then project
            top = np.argsort(-np.abs(g), axis=1)[:, :4]
            step = np.zeros_like(X)
            rows = np.arange(k)[:, None]
            step[rows, top] = np.sign(g[rows, top]) * (a / 4)
            X = x0 + project_l1(X + step - x0, region.radius, dlo, dhi)
    m = margins(net, X, label, target)
    evals += k
    better = m > best_m
    best_m[better], best_x[better] = m[better], X[better]
    # the exact float64 margin of the returned point, clipped into the region
    i = int(np.argmax(best_m))
    x = np.clip(best_x[i], lo, hi)
    return PGDResult(x, float(margins(net, x[None, :], label, target)[0]), evals,
                     time.perf_counter() - t0)


def lift_network(v: np.ndarray, net: Network, cols: NetCols, x: np.ndarray) -> None:
    """Fill the network's columns of ``v`` (input x, z, h, s; ``formulate.add_network``'s
    ``cols``) from the float64 forward pass at ``x``."""
    v[cols.x] = x
    _, zs = net.forward(x, return_all=True)
    for k, layer in enumerate(net.layers):
        z = zs[k]
        h = np.maximum(z, 0.0) if layer.relu else z
        if k < len(cols.z):
            zc = cols.z[k]
            v[zc[zc >= 0]] = z[zc >= 0]
        if k < len(cols.h):
            hc = cols.h[k]
            v[hc[hc >= 0]] = h[hc >= 0]
            sc = cols.s[k]
            v[sc[sc >= 0]] = (z[sc >= 0] > 0).astype(np.float64)


def lift(enc: Encoding, x: np.ndarray) -> np.ndarray:
    """A value for every column of ``enc.model`` from the input ``x`` (module docstring)."""
    net, region, cols = enc.network, enc.region, enc.cols
    x = np.clip(np.asarray(x, dtype=np.float64).ravel(), *region.box())
    v = np.zeros(enc.model.num_cols)
    lift_network(v, net, cols, x)
    if cols.d is not None:
        free = np.flatnonzero(region.box()[1] > region.box()[0])
        v[cols.d] = np.abs(x[free] - region.x0[free])
    if cols.eps is not None:
        v[cols.eps] = region.distance(x)
    ru = enc.runner_up
    if ru is not None:
        y = net.forward(x)
        cand = ru["classes"]
        j = int(np.argmax(y[cand]))
        v[ru["m"]] = y[cand[j]]
        q = np.zeros(cand.size)
        q[j] = 1.0
        v[ru["q"]] = q
    return v
