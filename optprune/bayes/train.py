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

A NaN or infinite loss, gradient or parameter stops training with
:class:`TrainingDivergedError`; the model is restored to the last good checkpoint
(the end of the last completed epoch, or the start), which the error also carries
(and which is written to ``checkpoint_path`` when given).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TrainingDivergedError, ValidationError, check
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


def _finite_params(model: nn.Module) -> str | None:
    """Name of the first parameter (or gradient) holding NaN/inf, else None; one
    fused reduction per kind, so the check costs two syncs per step."""
    params = [p for p in model.parameters()]
    for kind in ("param", "grad"):
        ts = [p if kind == "param" else p.grad for p in params]
        ts = [t for t in ts if t is not None]
        if not ts:
            continue
        norms = torch.stack(torch._foreach_norm(ts))
        if not bool(torch.isfinite(norms).all()):
            names = [n for n, p in model.named_parameters()
                     if (p if kind == "param" else p.grad) is not None]
            bad = names[int(torch.nonzero(~torch.isfinite(norms))[0])]
            return bad if kind == "param" else bad + ".grad"
    return None


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
    for v, what in ((lr, "lr"), (noise_lr, "noise_lr")):
        check(math.isfinite(v) and v > 0, f"The '{what}' of train_svi", "a positive number", v)
    check(math.isfinite(kl_weight) and kl_weight >= 0, "The 'kl_weight' of train_svi",
          "a non-negative number", kl_weight)
    if prune_during is not None:
        from .bmrs import _method

        _method(prune_during)  # validates the name
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    noise_params = [p for lay in model.layers() for p in (lay.mu, lay.log_sigma)]
    ids = {id(p) for p in noise_params}
    weights = [p for p in model.base.parameters() if p.requires_grad and id(p) not in ids]
    opt = torch.optim.AdamW([
        {"params": weights, "lr": lr, "weight_decay": weight_decay},
        {"params": noise_params, "lr": noise_lr, "weight_decay": 0.0},
    ])
    n = x.shape[0]
    hist = SVIHistory()
    good = _snapshot(model, opt)
    step = 0
    for ep in range(epochs):
        model.train()
        ramp = kl_weight * min(1.0, (ep + 1) / kl_warmup_epochs) if kl_warmup_epochs > 0 \
            else kl_weight
        perm = torch.randperm(n, generator=g)
        tot = tot_nll = 0.0
        kl_val = float("nan")
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            out = model(x[idx])
            nll = nn.functional.cross_entropy(out, y[idx])
            kl = model.kl()
            loss = nll + ramp * kl.to(nll.dtype) / n
            bad = None if torch.isfinite(loss) else f"loss {loss.item()}"
            if bad is None:
                opt.zero_grad()
                loss.backward()
                bad = _finite_params(model)
                if bad is None:
                    opt.step()
                    model.freeze_pruned()
                    bad = _finite_params(model)
                    bad = None if bad is None else f"parameter {bad} after the update"
                else:
                    bad = f"gradient of {bad}"
            if bad is not None:
                _restore(model, opt, good)
                path = _write(good, checkpoint_path)
                where = f" and written to {path}" if path else ""
                raise TrainingDivergedError(
                    f"SVI training diverged at epoch {ep}, step {step}: non-finite {bad}. The "
                    f"model was restored to the last good checkpoint (end of epoch "
                    f"{good['epoch']}){where}. Lower lr/noise_lr, check the data for NaN or "
                    "infinite values, or lengthen kl_warmup_epochs.",
                    step=step, checkpoint=good["state"], epoch=ep, checkpoint_path=path)
            step += 1
            tot += loss.item() * idx.numel()
            tot_nll += nll.item() * idx.numel()
            kl_val = kl.item()
        if prune_during is not None and ep >= prune_start_epoch \
                and (ep + 1 - prune_start_epoch) % prune_every_epochs == 0:
            before = int(model.keep_mask().sum())
            model.set_keep(bmrs_rule(model, prune_during))
            after = int(model.keep_mask().sum())
            if after < before:
                hist.pruned_at[ep] = before - after
        hist.loss.append(tot / n)
        hist.nll.append(tot_nll / n)
        hist.kl.append(kl_val)
        hist.kept.append(int(model.keep_mask().sum()))
        good = _snapshot(model, opt, ep)
    _write(good, checkpoint_path)
    model.eval()
    return hist


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer, epoch: int = -1) -> dict[str, Any]:
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(opt.state_dict()), "epoch": epoch}


def _restore(model: nn.Module, opt: torch.optim.Optimizer, good: dict[str, Any]) -> None:
    model.load_state_dict(good["state"])
    opt.load_state_dict(good["optimizer"])
    model.eval()


def _write(good: dict[str, Any], path: str | os.PathLike | None) -> str | None:
    if path is None:
        return None
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ValidationError(f"The folder of checkpoint_path {str(path)!r} does not exist.")
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": good["state"], "epoch": good["epoch"]}, tmp)
    os.replace(tmp, path)
    return str(path)

