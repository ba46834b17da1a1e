"""Small, deterministic training loops for the demo, tests and experiments, and the
embedded dataset (scikit-learn's digits: 1,797 8x8 images, no download)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import TrainingDivergedError

__all__ = ["Digits", "load_digits_split", "train", "accuracy"]


@dataclass(frozen=True)
class Digits:
    x_train: torch.Tensor  # (N, 1, 8, 8), scaled to [0, 1]
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def flat(self) -> "Digits":
        return Digits(self.x_train.flatten(1), self.y_train, self.x_test.flatten(1), self.y_test)


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> Digits:
    """scikit-learn's digits, stratified train/test split, pixels / 16."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=test_fraction,
                                          random_state=seed, stratify=d.target)
    return Digits(torch.from_numpy(xtr), torch.from_numpy(ytr).long(),
                  torch.from_numpy(xte), torch.from_numpy(yte).long())


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    model.train(was)
    return correct / x.shape[0]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 20,
          lr: float = 3e-3, batch_size: int = 64, weight_decay: float = 1e-4, seed: int = 0,
          loss_fn: Callable | None = None, progress: str | None = None,
          extra_loss: Callable[[], torch.Tensor] | None = None) -> list[float]:
    """AdamW with a cosine schedule; returns the mean loss per epoch. A NaN or
    infinite loss stops with a clear error (the model keeps its last good weights)."""
    g = torch.Generator().manual_seed(seed)
    loss_fn = loss_fn or nn.functional.cross_entropy
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            weight_decay=weight_decay)
    steps = epochs * math.ceil(x.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / steps)))
    history = []
    it = range(epochs)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=progress, leave=False, unit="epoch")
    model.train()
    for ep in it:
        perm = torch.randperm(x.shape[0], generator=g)
        total, n = 0.0, 0
        good = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            if extra_loss is not None:
                loss = loss + extra_loss()
            if not torch.isfinite(loss):
                model.load_state_dict(good)
                raise TrainingDivergedError(
                    f"Training diverged (loss {loss.item()}) in epoch {ep}; the model was reset "
                    "to the weights at the start of that epoch. Lower the learning rate.",
                    step=i // batch_size, checkpoint=good, epoch=ep)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * idx.numel()
            n += idx.numel()
        history.append(total / n)
    model.eval()
    return history
