"""Stochastic variational inference for a :class:`NoisyModel`, with BMRS pruning
during training and divergence detection.

The loss per mini-batch is the negative ELBO per training example,

    L = mean_batch CE(f(x; W, theta), y) + kl_weight(t) * KL(q || p) / N_train,

theta sampled per example by the reparameterization of ``noise.sample_truncnorm``,
W point estimates (AdamW), KL the closed form of ``noise.truncnorm_kl_to_uniform``
summed over unpruned structures. ``kl_weight`` ramps linearly from 0 to 1 over
``kl_warmup_epochs``.

With ``prune_during`` = "N", "U8" or "U4", every ``prune_every_epochs`` epochs the
BMRS rule prunes the structures with dF >= 0 (continuous pruning; they stay pruned).

Training runs on the kit's :func:`optprune.experiments.fit`. A NaN or infinite loss,
gradient or parameter stops training with :class:`TrainingDivergedError`; the model is
restored to the last good checkpoint (the end of the last completed epoch, or the start),
which the error also carries (and which is written to ``checkpoint_path`` when given, in
the kit's checkpoint format; the final state is written there at the end).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import TrainingDivergedError, check
from ..experiments.training import fit
from .noise import NoisyModel, require_noisy

__all__ = ["TrainingDivergedError", "SVIHistory", "train_svi"]


@dataclass
class SVIHistory:
    """Per epoch: mean loss, mean cross-entropy, KL (nats, whole model), structures
    kept, and the epochs at which continuous pruning removed structures."""

    loss: list[float] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    pruned_at: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "nll": self.nll, "kl": self.kl, "kept": self.kept,
                "pruned_at": {str(k): v for k, v in self.pruned_at.items()}}


def train_svi(model: NoisyModel, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 50,
              lr: float = 3e-3, noise_lr: float = 1e-2, batch_size: int = 64,
              weight_decay: float = 1e-4, kl_weight: float = 1.0, kl_warmup_epochs: int = 5,
              prune_during: str | None = None, prune_every_epochs: int = 1,
              prune_start_epoch: int = 0, seed: int = 0,
              checkpoint_path: str | os.PathLike | None = None) -> SVIHistory:
    """Train ``model`` (weights and noise posteriors) by SVI; see the module docstring.

    x, y: training inputs (N, ...) and integer labels (N,). noise_lr: Adam learning rate
    of the posteriors (they move on a log scale, faster than the weights). The model is
    left in eval mode.
    """
    from .bmrs import bmrs_rule

    model = require_noisy(model, "train_svi")
    check(isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), "The data of train_svi",
          "torch tensors x (N, ...) and y (N,)", (type(x).__name__, type(y).__name__))
    check(x.shape[0] == y.shape[0] and x.shape[0] > 0, "The number of labels 'y'",
          f"equal to the number of inputs {x.shape[0]} (and positive)", y.shape[0])
    check(tuple(x.shape[1:]) == tuple(model.structures.input_shape), "The sample shape of 'x'",
          f"the model's input shape {tuple(model.structures.input_shape)}", tuple(x.shape[1:]))
    for v, what in ((epochs, "epochs"), (batch_size, "batch_size"),
                    (prune_every_epochs, "prune_every_epochs")):
        check(isinstance(v, int) and v >= 1, f"The '{what}' of train_svi", "a positive integer", v)
    for rate, what in ((lr, "lr"), (noise_lr, "noise_lr")):
        check(math.isfinite(rate) and rate > 0, f"The '{what}' of train_svi", "a positive number",
              rate)
    check(math.isfinite(kl_weight) and kl_weight >= 0, "The 'kl_weight' of train_svi",
          "a non-negative number", kl_weight)
    if prune_during is not None:
        from .bmrs import _method

        _method(prune_during)  # validates the name
    torch.manual_seed(seed)
    noise_params = [p for lay in model.layers() for p in (lay.mu, lay.log_sigma)]
    ids = {id(p) for p in noise_params}
    weights = [p for p in model.base.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay},
              {"params": noise_params, "lr": noise_lr, "weight_decay": 0.0}]
    n = x.shape[0]
    hist = SVIHistory()
    sums = {"nll": 0.0, "kl": math.nan}

    def elbo(xb: torch.Tensor, yb: torch.Tensor, _step: int, ep: int) -> torch.Tensor:
        ramp = kl_weight * min(1.0, (ep + 1) / kl_warmup_epochs) if kl_warmup_epochs > 0 \
            else kl_weight
        nll = nn.functional.cross_entropy(model(xb), yb)
        kl = model.kl()
        sums["nll"] += nll.item() * xb.shape[0]
        sums["kl"] = kl.item()
        return nll + ramp * kl.to(nll.dtype) / n

    def end_of_epoch(ep: int) -> None:
        if prune_during is not None and ep >= prune_start_epoch \
                and (ep + 1 - prune_start_epoch) % prune_every_epochs == 0:
            before = int(model.keep_mask().sum())
            model.set_keep(bmrs_rule(model, prune_during))
            after = int(model.keep_mask().sum())
            if after < before:
                hist.pruned_at[ep] = before - after
        hist.nll.append(sums["nll"] / n)
        hist.kl.append(sums["kl"])
        hist.kept.append(int(model.keep_mask().sum()))
        sums["nll"] = 0.0

    fh = fit(model, x, y, epochs=epochs, batch_size=batch_size, params=groups,
             schedule="constant", seed=seed, batch_loss=elbo,
             after_step=lambda _step: model.freeze_pruned(), after_epoch=end_of_epoch,
             check_finite="all", checkpoint_path=checkpoint_path,
             hint="Lower lr/noise_lr, check the data for NaN or infinite values, or lengthen "
                  "kl_warmup_epochs.")
    hist.loss = fh.epoch_loss
    return hist
