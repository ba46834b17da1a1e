"""Bayesian structured pruning: BMRS (multiplicative noise with a truncated
log-normal posterior, SVI training, Bayesian model reduction scores and their exact
allocation). The math is in ``formulations/bmrs.md``."""

from .bmrs import (METHODS, BMRSSelection, bmrs_allocate, bmrs_problem, bmrs_rule, bmrs_scores,
                   delta_f_normal, delta_f_uniform, evidence_change, posterior_scores)
from .noise import (LOG_THETA_RANGE, NoiseLayer, NoisyModel, attach_noise, sample_truncnorm,
                    theta_mean, theta_snr, truncnorm_kl_to_uniform, truncnorm_log_moment,
                    truncnorm_log_z)
from .train import SVIHistory, TrainingDivergedError, train_svi

__all__ = [
    "BMRSSelection", "LOG_THETA_RANGE", "METHODS", "NoiseLayer", "NoisyModel", "SVIHistory",
    "TrainingDivergedError", "attach_noise", "bmrs_allocate", "bmrs_problem", "bmrs_rule",
    "bmrs_scores", "delta_f_normal", "delta_f_uniform", "evidence_change", "posterior_scores",
    "sample_truncnorm", "theta_mean", "theta_snr", "train_svi", "truncnorm_kl_to_uniform",
    "truncnorm_log_moment", "truncnorm_log_z",
]
