"""The closed forms of BMRS against numerical integration (scipy) of the same
densities, the KL term against Monte Carlo, and the sampler against the CDF."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from optprune.bayes import (delta_f_normal, delta_f_uniform, sample_truncnorm, theta_mean,
                            theta_snr, truncnorm_kl_to_uniform, truncnorm_log_z)
from optprune.errors import ValidationError

A, B = -20.0, 0.0
# (mu, sigma): inside, at the edges, far outside [a, b] on both sides, wide and narrow.
POSTERIORS = [(-3.0, 1.0), (-0.2, 0.3), (0.5, 2.0), (-10.0, 4.0), (-19.0, 0.5), (-22.0, 1.5),
              (-30.0, 3.0), (-1.0, 25.0), (2.0, 0.7), (-20.0, 0.05)]


def q_pdf(z, mu, sigma, a=A, b=B):
    """The posterior density on z = log theta, from scipy (independent of optprune)."""
    return stats.truncnorm.pdf(z, (a - mu) / sigma, (b - mu) / sigma, loc=mu, scale=sigma)


def t64(*xs):
    return [torch.tensor(float(x), dtype=torch.float64) for x in xs]


def quad(f, lo, hi, points=None):
    val, err = integrate.quad(f, lo, hi, points=points, limit=500, epsabs=0, epsrel=1e-11)
    return val


@pytest.mark.parametrize("alpha,beta", [(-1.0, 2.0), (-40.0, -35.0), (30.0, 31.0), (3.0, 50.0),
                                        (-5.0, 1e-3), (0.1, 0.2)])
def test_log_z_matches_integral_in_both_tails(alpha, beta):
    # Integrate exp(-(x^2 - c^2)/2) to keep the far-tail values representable.
    c = min(abs(alpha), abs(beta)) if alpha * beta > 0 else 0.0
    val = quad(lambda x: math.exp(-(x * x - c * c) / 2) / math.sqrt(2 * math.pi), alpha, beta)
    want = math.log(val) - c * c / 2
    got = float(truncnorm_log_z(*t64(alpha, beta)))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("mu,sigma", POSTERIORS)
def test_kl_matches_integral(mu, sigma):
    lo, hi = max(A, mu - 12 * sigma), min(B, mu + 12 * sigma)
    if lo >= hi:  # all mass piled at one edge: integrate over the whole interval
        lo, hi = A, B
    pts = [p for p in (mu,) if lo < p < hi]
    want = quad(lambda z: (lambda q: q * math.log(q * (B - A)) if q > 0 else 0.0)(
        q_pdf(z, mu, sigma)), lo, hi, pts or None)
    got = float(truncnorm_kl_to_uniform(*t64(mu, sigma), A, B))
    assert got == pytest.approx(want, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("mu,sigma", [(-3.0, 1.0), (-12.0, 5.0), (-25.0, 2.0), (0.3, 0.4)])
def test_kl_matches_monte_carlo_with_own_sampler(mu, sigma):
    g = torch.Generator().manual_seed(0)
    n = 200_000
    u = torch.rand(n, dtype=torch.float64, generator=g)
    mu_t, s_t = t64(mu, sigma)
    z = sample_truncnorm(mu_t, s_t, u, A, B).numpy()
    logr = np.log(q_pdf(z, mu, sigma)) + math.log(B - A)  # ln q(z) - ln p(z)
    est, se = logr.mean(), logr.std() / math.sqrt(n)
    got = float(truncnorm_kl_to_uniform(mu_t, s_t, A, B))
    assert abs(got - est) < 5 * se + 1e-9


@pytest.mark.parametrize("mu,sigma", [(-3.0, 1.0), (-35.0, 2.0), (4.0, 1.0), (-1.0, 25.0),
                                      (-20.0, 0.05)])
def test_sampler_follows_the_truncated_normal(mu, sigma):
    g = torch.Generator().manual_seed(1)
    u = torch.rand(20_000, dtype=torch.float64, generator=g)
    z = sample_truncnorm(*t64(mu, sigma), u, A, B).numpy()
    assert z.min() >= A and z.max() <= B
    cdf = stats.truncnorm(a=(A - mu) / sigma, b=(B - mu) / sigma, loc=mu, scale=sigma).cdf
    assert stats.kstest(z, cdf).pvalue > 1e-3


def test_sampler_is_differentiable_in_mu_and_sigma():
    mu = torch.tensor([-3.0, -30.0], dtype=torch.float64, requires_grad=True)
    ls = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    u = torch.rand(1000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.exp(sample_truncnorm(mu, torch.exp(ls), u, A, B)).mean().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(ls.grad).all()
    assert (mu.grad > 0).all()  # a larger mean gives larger theta


@pytest.mark.parametrize("mu,sigma", POSTERIORS)
def test_e_theta_and_snr_match_integrals(mu, sigma):
    lo, hi = A, B
    pts = [p for p in (mu, mu - 5 * sigma, mu + 5 * sigma) if lo < p < hi]
    m1 = quad(lambda z: math.exp(z) * q_pdf(z, mu, sigma), lo, hi, pts or None)
    m2 = quad(lambda z: math.exp(2 * z) * q_pdf(z, mu, sigma), lo, hi, pts or None)
    e = float(theta_mean(*t64(mu, sigma), A, B))
    assert e == pytest.approx(m1, rel=1e-6)
    if m2 - m1 * m1 > 1e-12 * m2:
        snr = float(theta_snr(*t64(mu, sigma), A, B))
        assert snr == pytest.approx(m1 / math.sqrt(m2 - m1 * m1), rel=1e-4)


@pytest.mark.parametrize("mu,sigma", POSTERIORS)
@pytest.mark.parametrize("mp,sp", [(-20.0, 0.5), (-12.0, 2.0), (-5.0, 1.0), (-20.0, 3.0)])
def test_delta_f_normal_matches_integral_broad_reduced_prior(mu, sigma, mp, sp):
    """dF = ln int q(z) p~(z) / p(z) dz with p~ a truncated normal wide enough to
    integrate directly over [a, b]."""
    def f(z):
        pt = stats.truncnorm.pdf(z, (A - mp) / sp, (B - mp) / sp, loc=mp, scale=sp)
        return q_pdf(z, mu, sigma) * pt * (B - A)

    pts = [p for p in (mu, mp, mp - 6 * sp, mp + 6 * sp) if A < p < B]
    val = quad(f, A, B, sorted(set(pts)) or None)
    got = float(delta_f_normal([mu], [sigma], A, B, prior_mean=mp, prior_sd=sp)[0])
    if val > 1e-280:
        assert got == pytest.approx(math.log(val), rel=1e-6, abs=1e-6)
    else:
        assert got < math.log(1e-250)


@pytest.mark.parametrize("mu,sigma", POSTERIORS)
def test_delta_f_normal_matches_integral_published_spike(mu, sigma):
    """The published reduced prior: mean a, sd 1e-6. Substituting z = a + t sp,
    int q p~/p dz = (b - a) / Zp~ int_0^inf q(a + t sp) phi(t) dt (Zp~ = 1/2)."""
    sp = 1e-6
    zp = stats.norm.cdf((B - A) / sp) - 0.5
    # Keep the integrand representable: factor out q's value at a (ratio stays O(1)).
    qa = q_pdf(A, mu, sigma)
    if qa <= 0:
        pytest.skip("q(a) underflows in scipy; the far-tail case is covered below")
    val = quad(lambda t: q_pdf(A + t * sp, mu, sigma) / qa * stats.norm.pdf(t), 0.0, 40.0)
    want = math.log((B - A) / zp) + math.log(qa) + math.log(val)
    got = float(delta_f_normal([mu], [sigma], A, B)[0])
    assert got == pytest.approx(want, rel=1e-7, abs=1e-7)
    # ... which is the Savage-Dickey ratio at theta = e^a to first order in sp.
    assert got == pytest.approx(math.log((B - A) * qa), abs=1e-4)


def test_delta_f_normal_far_tail_stays_finite():
    df = delta_f_normal([5.0, -60.0, 0.0], [0.01, 0.01, 1e-3])
    assert np.all(np.isfinite(df))
    assert df[0] < -1e5 and df[2] < -1e5  # posterior at theta ~ 1: keep
    assert df[1] > 0  # posterior piled at theta = e^a: prune


@pytest.mark.parametrize("mu,sigma", POSTERIORS)
@pytest.mark.parametrize("p", [8, 4])
def test_delta_f_uniform_matches_integral(mu, sigma, p):
    ar, br = -23 * math.log(2), -p * math.log(2)
    pts = [x for x in (mu, mu - 5 * sigma, mu + 5 * sigma) if ar < x < br]
    val = quad(lambda z: q_pdf(z, mu, sigma) * (B - A) / (br - ar), ar, br, pts or None)
    got = float(delta_f_uniform([mu], [sigma], p)[0])
    if val > 1e-280:
        assert got == pytest.approx(math.log(val), rel=1e-6, abs=1e-6)
    else:
        assert got < math.log(1e-250)


def test_posterior_equal_to_prior_has_zero_evidence_change():
    # q = p (sigma -> infinity) gives E_q[p~/p] = 1 for every reduced prior.
    for df in (delta_f_normal([-10.0], [1e6]), delta_f_uniform([-10.0], [1e6], 8),
               delta_f_uniform([-10.0], [1e6], 4)):
        assert abs(df[0]) < 1e-6


def test_bad_posteriors_are_rejected():
    with pytest.raises(ValidationError, match="positive"):
        delta_f_normal([0.0], [0.0])
    with pytest.raises(ValidationError, match="finite"):
        delta_f_uniform([float("nan")], [1.0])
    with pytest.raises(ValidationError, match="bit width"):
        delta_f_uniform([0.0], [1.0], p=30)
    with pytest.raises(ValidationError, match="shape"):
        delta_f_normal([0.0, 1.0], [1.0])
