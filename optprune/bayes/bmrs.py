"""BMRS: Bayesian model reduction for structured pruning, and its exact allocation.

For one structure with posterior q(z) = N(mu, sigma^2) truncated to [a, b] (z = log
theta) trained under the prior p(z) = U[a, b], Bayesian model reduction gives the
change in (variational) log evidence when p is replaced by a *reduced* prior p~,
without retraining:

    dF = ln E_q[ p~(z) / p(z) ] = ln integral_a^b q(z) p~(z) / p(z) dz.

A structure is pruned when dF >= 0: the data are at least as well explained with the
structure switched off. No threshold is tuned. Two reduced priors (formulations/bmrs.md):

* BMRS_N: p~ = N(m_p, s_p^2) truncated to [a, b], m_p = a, s_p = 1e-6 (a spike at
  theta = e^a ~ 2e-9). With s2q = (1/sigma^2 + 1/s_p^2)^-1, mq = s2q (mu/sigma^2 + m_p/s_p^2),

      dF = ln[Zq~ (b - a) / (Zq Zp~)] - 0.5 ln(2 pi (sigma^2 + s_p^2))
           - 0.5 (mu - m_p)^2 / (sigma^2 + s_p^2)

  since N(z; mu, sigma^2) N(z; m_p, s_p^2) = N(mu; m_p, sigma^2 + s_p^2) N(z; mq, s2q).
  Note 0.5 ln(s2q / (sigma^2 s_p^2)) = -0.5 ln(sigma^2 + s_p^2) and
  mu^2/sigma^2 + m_p^2/s_p^2 - mq^2/s2q = (mu - m_p)^2 / (sigma^2 + s_p^2): the form above
  is the textbook one without its catastrophic cancellation (m_p^2/s_p^2 = 4e14), and it
  keeps the -0.5 ln(2 pi) of the Gaussian normalizer that the usual summary of the closed
  form leaves out (formulations/bmrs.md; checked against numerical integration in the
  tests).
  As s_p -> 0, dF -> ln((b - a) q(a)): the Savage-Dickey ratio at theta = e^a.
* BMRS_U: p~ = U[a', b'] with a' = ln 2^-23, b' = ln 2^-p (p = 8 or 4: the values an
  8- or 4-bit fixed-point number rounds to zero):

      dF = ln Q(z in [a', b']) - ln((b' - a') / (b - a)).

dF adds up over structures (the posterior factorizes), so "keep the set that loses
the least evidence" under hardware constraints is the allocation problem with score
``-dF`` (retained importance = - sum of dF over kept = sum over pruned - constant):
unconstrained, its optimum keeps exactly the structures with dF < 0, the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import InfeasibleProblemError, ValidationError, check
from .noise import NoisyModel, require_noisy, theta_mean, theta_snr, truncnorm_log_z

__all__ = [
    "METHODS", "delta_f_normal", "delta_f_uniform", "evidence_change", "bmrs_rule",
    "bmrs_scores", "bmrs_problem", "bmrs_allocate", "BMRSSelection", "posterior_scores",
]

# method name -> (reduced prior kind, p); BMRS_U's p is the bit width of the fixed-point
# format whose zero bin [2^-23, 2^-p] becomes the reduced prior's support.
METHODS = {"N": ("normal", None), "U8": ("uniform", 8), "U4": ("uniform", 4)}
_LN2 = math.log(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _as64(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if not bool(torch.isfinite(t).all()):
        raise ValidationError(f"The {what} must be finite; some are NaN or infinite.")
    return t


def _check_posterior(mu: Any, sigma: Any, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    check(math.isfinite(a) and math.isfinite(b) and a < b, "The prior interval [a, b]",
          "finite with a < b", (a, b))
    m, s = _as64(mu, "posterior means 'mu'"), _as64(sigma, "posterior scales 'sigma'")
    check(m.shape == s.shape, "The shape of 'sigma'", f"equal to the shape of 'mu' {tuple(m.shape)}",
          tuple(s.shape))
    if bool((s <= 0).any()):
        raise ValidationError("The posterior scales 'sigma' must be positive; got "
                              f"{float(s.min())}. Pass exp(log_sigma).")
    return m, s


def delta_f_normal(mu: Any, sigma: Any, a: float = -20.0, b: float = 0.0,
                   prior_mean: float | None = None, prior_sd: float = 1e-6) -> np.ndarray:
    """dF of BMRS_N per structure (see the module docstring): reduced prior
    N(prior_mean, prior_sd^2) truncated to [a, b], prior_mean defaulting to a."""
    m, s = _check_posterior(mu, sigma, a, b)
    mp = float(a if prior_mean is None else prior_mean)
    check(math.isfinite(prior_sd) and prior_sd > 0, "The 'prior_sd' of BMRS_N",
          "a positive number", prior_sd)
    check(a <= mp <= b, "The 'prior_mean' of BMRS_N", f"in [a, b] = [{a}, {b}]", mp)
    sp = float(prior_sd)
    v = s ** 2 + sp ** 2
    s2q = s ** 2 * sp ** 2 / v
    sq = torch.sqrt(s2q)
    mq = (m * sp ** 2 + mp * s ** 2) / v
    log_zq = truncnorm_log_z((a - m) / s, (b - m) / s)
    log_zp = truncnorm_log_z(torch.tensor((a - mp) / sp), torch.tensor((b - mp) / sp))
    log_zqt = truncnorm_log_z((a - mq) / sq, (b - mq) / sq)
    df = (log_zqt + math.log(b - a) - log_zq - log_zp - _LOG_SQRT_2PI - 0.5 * torch.log(v)
          - 0.5 * (m - mp) ** 2 / v)
    return df.numpy()


def delta_f_uniform(mu: Any, sigma: Any, p: int = 8, a: float = -20.0, b: float = 0.0,
                    a_reduced: float = -23 * _LN2) -> np.ndarray:
    """dF of BMRS_U per structure: reduced prior U[a', b'] with a' = ``a_reduced``
    (ln 2^-23) and b' = ln 2^-p; dF = ln Q([a', b']) - ln((b' - a') / (b - a))."""
    m, s = _check_posterior(mu, sigma, a, b)
    check(isinstance(p, (int, np.integer)) and 1 <= p < 23, "The bit width 'p' of BMRS_U",
          "an integer in [1, 22] (8 and 4 are the published choices)", p)
    br = -float(p) * _LN2
    ar = float(a_reduced)
    check(a <= ar < br <= b, "The reduced interval [a', b'] of BMRS_U",
          f"inside [a, b] = [{a}, {b}] with a' < b'", (ar, br))
    log_q = truncnorm_log_z((ar - m) / s, (br - m) / s) - truncnorm_log_z((a - m) / s, (b - m) / s)
    return (log_q - math.log((br - ar) / (b - a))).numpy()


def _method(method: str) -> tuple[str, int | None]:
    key = str(method).upper().replace("BMRS_", "").replace("BMRS", "")
    if key == "U":
        key = "U8"
    if key not in METHODS:
        raise ValidationError(f"The BMRS 'method' must be one of 'N', 'U8', 'U4' (or "
                              f"'BMRS_N', 'BMRS_U8', 'BMRS_U4'); got {method!r}.")
    return METHODS[key]


def evidence_change(model: NoisyModel, method: str = "N") -> np.ndarray:
    """dF per group of ``model.structures`` (in that order) from the current posteriors.
    Pruned groups get the dF of their posterior frozen when they were pruned."""
    model = require_noisy(model, "BMRS evidence")
    kind, p = _method(method)
    a, b = model.interval
    mu, sigma = _frozen_aware_posterior(model)
    if kind == "normal" or p is None:
        return delta_f_normal(mu, sigma, a, b)
    return delta_f_uniform(mu, sigma, p, a, b)


def _frozen_aware_posterior(model: NoisyModel) -> tuple[np.ndarray, np.ndarray]:
    model.freeze_pruned()
    return model.posterior()


def bmrs_rule(model: NoisyModel, method: str = "N") -> np.ndarray:
    """The threshold-free rule: keep mask, False where dF >= 0 (pruned structures stay
    pruned)."""
    df = evidence_change(model, method)
    return (df < 0) & model.keep_mask()


def posterior_scores(model: NoisyModel) -> dict[str, np.ndarray]:
    """Baseline scores from the posterior, per group: E[theta] and SNR(theta)."""
    model = require_noisy(model, "Posterior scores")
    a, b = model.interval
    mu, sigma = _frozen_aware_posterior(model)
    m, s = torch.as_tensor(mu), torch.as_tensor(sigma)
    return {"e_theta": theta_mean(m, s, a, b).numpy(), "snr": theta_snr(m, s, a, b).numpy()}


def bmrs_scores(model: NoisyModel, method: str = "N") -> np.ndarray:
    """Allocation scores: -dF (keeping a structure with dF < 0 gains evidence)."""
    return -evidence_change(model, method)


def bmrs_problem(model: NoisyModel, method: str = "N", *, budget: float | dict | None = None,
                 flops: float | None = None, multiples: int | Mapping[str, int] | None = None,
                 min_keep: int | float = 0,
                 latency_tables: Mapping[tuple[str, str], Sequence[float]] | None = None,
                 latency_cap: float | None = None, latency_relative: bool = False,
                 constraints: Callable | Sequence[Callable] | None = None):
    """The allocation problem "prune the set of largest total dF" with hard constraints.

    budget: kept fraction of the dense parameters (or {"params": f, "flops": g});
    flops: cap on kept MACs per sample (fraction of dense); multiples: width multiple
    per slot (int) or per kind ({"neuron": 8, "channel": 4}); min_keep: least kept
    structures per layer (0 allows the rule to empty a layer, as published);
    latency_tables: {(layer, kind): table} with table[k] the latency of k kept;
    latency_cap: cap on their sum (fraction of dense when ``latency_relative``).
    Already pruned structures are fixed to pruned. Scores are -dF, so without
    constraints the optimum is :func:`bmrs_rule`.
    """
    from ..nn.pruning import build_problem

    model = require_noisy(model, "bmrs_problem")
    scores = bmrs_scores(model, method)
    alive = model.keep_mask()
    extra: list[Callable] = []
    if latency_tables:
        tables = dict(latency_tables)

        def _latency(p: Any) -> None:
            for (lay, kind), t in tables.items():
                p.add_latency_table(lay, kind, t)
            if latency_cap is not None:
                p.add_latency_cap(latency_cap, relative=latency_relative)

        extra.append(_latency)
    elif latency_cap is not None:
        raise ValidationError("A 'latency_cap' needs 'latency_tables' ({(layer, kind): table} "
                              "with table[k] = latency with k structures kept).")
    for fn in ([constraints] if callable(constraints) else list(constraints or [])):
        extra.append(fn)
    check(isinstance(min_keep, (int, float)) and min_keep >= 0, "The 'min_keep' of bmrs_problem",
          "a non-negative count or fraction", min_keep)
    p, budgets = build_problem(model.structures, scores, budget, flops,
                               dict(multiples) if isinstance(multiples, Mapping) else multiples,
                               min_keep if min_keep > 0 else 1,
                               allow_empty_layers=min_keep == 0, constraints=extra,
                               name=f"bmrs_{_method(method)[0]}")
    if not alive.all():
        # Dead structures cannot come back: their score is replaced by a penalty larger
        # than every live score sum, so any feasible optimum drops them when it can, and
        # a constraint that forces one back is reported below by bmrs_allocate.
        big = float(np.abs(p.score).sum() + 1.0)
        p.score = np.where(alive, p.score, -big)
    _check_reachable(p, budgets, method)
    return p


def _check_reachable(p: Any, budgets: dict[str, float], method: str) -> None:
    """A budget below what BMRS can reach (the parameters no noise layer covers plus
    the minimum widths) is an error that names the smallest reachable fraction."""
    for r, frac in budgets.items():
        floor = p.fixed_costs[r]
        sl = p.slots()
        for s, idx in sl.items():
            k = int(p.allowed_counts(s)[0]) if p.allowed_counts(s).size else 0
            floor += float(np.sort(p.costs[r][idx])[:k].sum())
        dense = p.dense_total(r)
        if floor > frac * dense * (1 + 1e-12):
            raise InfeasibleProblemError(
                f"The {r} budget {frac:g} of the dense model is below what BMRS_{method} can "
                f"reach: the smallest model it can prune to keeps {floor / dense:.4f} of the "
                f"{r} (the parts without noise layers and the minimum widths). Raise the "
                f"budget to at least {floor / dense:.4f}, lower min_keep, or attach noise to "
                "more layers.")


@dataclass(frozen=True)
class BMRSSelection:
    """The outcome of :func:`bmrs_allocate`: the keep mask, dF per group, and the
    allocation result (None when the rule was applied without constraints)."""

    method: str
    keep: np.ndarray = field(repr=False)
    delta_f: np.ndarray = field(repr=False)
    rule_keep: np.ndarray = field(repr=False)
    allocation: Any = field(repr=False)
    predicted: dict[str, int]

    @property
    def n_pruned(self) -> int:
        return int((~self.keep).sum())

    @property
    def evidence_pruned(self) -> float:
        """Sum of dF over the pruned structures (what the allocation maximizes)."""
        return float(self.delta_f[~self.keep].sum())

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "n_structures": int(self.keep.size),
                "n_kept": int(self.keep.sum()), "n_pruned": self.n_pruned,
                "n_pruned_by_rule": int((~self.rule_keep).sum()),
                "evidence_pruned": self.evidence_pruned, "predicted": self.predicted,
                "allocation": None if self.allocation is None else self.allocation.to_dict()}


def bmrs_allocate(model: NoisyModel, method: str = "N", *, apply: bool = True,
                  backend: str = "highs", time_limit_s: float | None = None,
                  force_solver: bool = False, **constraints: Any) -> BMRSSelection:
    """Choose what to prune by BMRS; with constraints (``bmrs_problem``'s keywords)
    the exact allocation maximizes the total dF of the pruned set subject to them.
    Without constraints the rule is applied directly (``force_solver`` solves the
    allocation anyway; the two agree, see tests/bayes). ``apply`` sets the model's
    mask."""
    from ..alloc import allocate

    model = require_noisy(model, "bmrs_allocate")
    df = evidence_change(model, method)
    rule = (df < 0) & model.keep_mask()
    constrained = any(v is not None and v != 0 for k, v in constraints.items()
                      if k != "min_keep") or constraints.get("min_keep", 0) != 0
    result = None
    if constrained or force_solver:
        p = bmrs_problem(model, method, **constraints)
        result = allocate(p, backend=backend, time_limit_s=time_limit_s, baselines=False)
        if result.keep is None:
            raise ValidationError(f"The solver stopped ({result.termination.value}) without a "
                                  "selection; raise time_limit_s.")
        keep = result.keep
        revived = keep & ~model.keep_mask()
        if revived.any():
            ids = [model.structures.ids[i] for i in np.flatnonzero(revived)][:5]
            raise InfeasibleProblemError(
                f"The constraints can only be met by reviving {int(revived.sum())} structures "
                f"BMRS already pruned (e.g. {ids}); relax the width multiples or minimum widths.")
    else:
        keep = rule
    if apply:
        model.set_keep(keep)
    predicted = model.structures.predict(keep)
    return BMRSSelection(str(method), keep, df, rule, result, predicted)
