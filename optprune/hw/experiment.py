"""The small encoder transformer of the SASP experiment: optprune's ViT on the 8x8
digits of scikit-learn (1797 images, 10 classes), trained for a few seconds on CPU.

Split: a stratified 70/30 train/test split with a fixed seed; pixels scaled to [0, 1].
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import check

__all__ = ["digits_data", "train_vit_digits", "accuracy", "finetune_masked", "DIGITS_SHAPE"]

DIGITS_SHAPE = (1, 8, 8)


def digits_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X_train, y_train, X_test, y_test) as float32 (N, 1, 8, 8) / int64 tensors."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None]
    Xtr, Xte, ytr, yte = train_test_split(X, d.target, test_size=0.3, random_state=seed,
                                          stratify=d.target)
    return (torch.from_numpy(Xtr), torch.from_numpy(ytr).long(), torch.from_numpy(Xte),
            torch.from_numpy(yte).long())


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        acc = float((model(X).argmax(1) == y).float().mean())
    model.train(was)
    return acc


def _train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int,
           after_step=None) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(X.shape[0], generator=g)
        for i in range(0, X.shape[0], 64):
            idx = perm[i: i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
            if after_step is not None:
                after_step()
    model.eval()


def train_vit_digits(epochs: int = 30, seed: int = 0, dim: int = 64,
                     heads: Sequence[int] = (4, 4), head_dim: int = 16, ffn: int = 128,
                     lr: float = 3e-3) -> tuple[nn.Module, dict[str, Any]]:
    """A ViT (patch 2, so 16 patches + class token = 17 tokens) trained on digits.
    Returns (model, info) with the data, test accuracy and training time."""
    from ..nn.models import ViT

    check(isinstance(epochs, int) and epochs >= 0, "The 'epochs'", "a non-negative integer", epochs)
    torch.manual_seed(seed)
    Xtr, ytr, Xte, yte = digits_data(seed)
    model = ViT(image_size=8, patch=2, in_channels=1, dim=dim, heads=tuple(heads),
                head_dim=head_dim, ffn=ffn, n_classes=10)
    t0 = time.perf_counter()
    _train(model, Xtr, ytr, epochs, lr, seed)
    info = {"X_train": Xtr, "y_train": ytr, "X_test": Xte, "y_test": yte,
            "train_time_s": time.perf_counter() - t0, "test_accuracy": accuracy(model, Xte, yte),
            "epochs": epochs}
    return model, info


def finetune_masked(model: nn.Module, masks: dict[str, torch.Tensor], X: torch.Tensor,
                    y: torch.Tensor, epochs: int = 3, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Fine-tune with the dropped tiles held at zero (masks re-applied after every step)."""
    mods = dict(model.named_modules())

    def reapply() -> None:
        with torch.no_grad():
            for name, m in masks.items():
                mods[name].weight.mul_(m)

    reapply()
    _train(model, X, y, epochs, lr, seed, after_step=reapply)
    return model
