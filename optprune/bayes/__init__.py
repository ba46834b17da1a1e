"""Bayesian structured pruning: BMRS (multiplicative noise with a truncated
log-normal posterior, SVI training, Bayesian model reduction scores and their exact
allocation). The math is in ``formulations/bmrs.md``.

Names are imported lazily so that the command line starts without torch.
"""

from __future__ import annotations

from .._extras import lazy_getattr

_LAZY = {
    "METHODS": "bmrs",
    "BMRSSelection": "bmrs",
    "bmrs_allocate": "bmrs",
    "bmrs_problem": "bmrs",
    "bmrs_rule": "bmrs",
    "bmrs_scores": "bmrs",
    "delta_f_normal": "bmrs",
    "delta_f_uniform": "bmrs",
    "evidence_change": "bmrs",
    "posterior_scores": "bmrs",
    "LOG_THETA_RANGE": "noise",
    "NoiseLayer": "noise",
    "NoisyModel": "noise",
    "attach_noise": "noise",
    "sample_truncnorm": "noise",
    "theta_mean": "noise",
    "theta_snr": "noise",
    "truncnorm_kl_to_uniform": "noise",
    "truncnorm_log_moment": "noise",
    "truncnorm_log_z": "noise",
    "SVIHistory": "train",
    "TrainingDivergedError": "train",
    "train_svi": "train",
}

__all__ = [
    "BMRSSelection",
    "LOG_THETA_RANGE",
    "METHODS",
    "NoiseLayer",
    "NoisyModel",
    "SVIHistory",
    "TrainingDivergedError",
    "attach_noise",
    "bmrs_allocate",
    "bmrs_problem",
    "bmrs_rule",
    "bmrs_scores",
    "delta_f_normal",
    "delta_f_uniform",
    "evidence_change",
    "posterior_scores",
    "sample_truncnorm",
    "theta_mean",
    "theta_snr",
    "train_svi",
    "truncnorm_kl_to_uniform",
    "truncnorm_log_moment",
    "truncnorm_log_z",
]


__getattr__ = lazy_getattr(__name__, _LAZY)
