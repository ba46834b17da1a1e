"""The digits ViT recipe every ViT experiment of the project shares, and the ViT's
checkpoint spec.

Recipe (the demo's): optprune's ViT on 8x8 digits with patch 2 (16 patches + a class
token = 17 tokens), hidden width 32, three blocks of 4 heads of 8 dims, FFN 64
(26,762 parameters), built after ``torch.manual_seed(seed)``; pre-trained by
:func:`optprune.experiments.fit` (AdamW, cosine schedule, batch 64, weight decay 1e-4)
with lr 2e-3 for 40 epochs on the split of :func:`load_digits_split` (seed ``seed``).
An experiment that trains it shorter says so (``epochs=``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from ..errors import check
from ..nn.models import Block, ViT
from .checkpoint import load_checkpoint, save_checkpoint
from .data import Digits, load_digits_split
from .training import accuracy, fit

__all__ = ["DIGITS_VIT", "VIT_EPOCHS", "VIT_LR", "DigitsViT", "digits_vit", "load_vit",
           "pretrained_digits_vit", "save_vit", "vit_from_spec", "vit_spec"]

DIGITS_VIT: dict[str, Any] = {"image_size": 8, "patch": 2, "in_channels": 1, "dim": 32,
                              "heads": (4, 4, 4), "head_dim": 8, "ffn": 64, "n_classes": 10}
VIT_EPOCHS = 40
VIT_LR = 2e-3


def digits_vit(seed: int = 0) -> ViT:
    """A fresh (untrained) ViT of the recipe, initialized after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return ViT(**DIGITS_VIT)


@dataclass(frozen=True)
class DigitsViT:
    """A pre-trained digits ViT, its data split and how it was made."""

    model: ViT
    data: Digits
    dense_params: int
    test_accuracy: float
    epochs: int
    seed: int
    pretrain_s: float


def pretrained_digits_vit(epochs: int = VIT_EPOCHS, seed: int = 0, lr: float = VIT_LR,
                          progress: str | None = None) -> DigitsViT:
    """:func:`digits_vit` trained ``epochs`` epochs by the recipe on the digits split of
    ``seed`` (the same seed draws the split, the initialization and the batch order)."""
    check(isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 0,
          "The pre-training 'epochs'", "a non-negative integer", epochs)
    data = load_digits_split(seed=seed)
    vit = digits_vit(seed)
    t = time.perf_counter()
    fit(vit, data.x_train, data.y_train, epochs=epochs, lr=lr, seed=seed, progress=progress)
    return DigitsViT(vit, data, sum(p.numel() for p in vit.parameters()),
                     accuracy(vit, data.x_test, data.y_test), epochs, seed,
                     time.perf_counter() - t)


def vit_spec(vit: ViT) -> dict[str, Any]:
    """The checkpoint spec of ``vit`` (a pruned one's too): hidden dim, heads and FFN
    channels per block, head dim, patch, image size, input channels, classes."""
    check(isinstance(vit, ViT), "The model", "an optprune.nn.models.ViT", type(vit).__name__)
    patch = int(vit.patch_embed.kernel_size[0])
    side = int(round((vit.pos_embed.shape[1] - 1) ** 0.5))
    blocks = [cast(Block, b) for b in vit.blocks]
    return {"kind": "vit", "dim": int(vit.patch_embed.out_channels),
            "heads": [int(b.attn.num_heads) for b in blocks],
            "head_dim": int(blocks[0].attn.head_dim) if blocks else 1,
            "ffn": [int(b.mlp.fc1.out_features) for b in blocks],
            "patch": patch, "image_size": side * patch,
            "in_channels": int(vit.patch_embed.in_channels),
            "n_classes": int(vit.head.out_features)}


def vit_from_spec(spec: dict[str, Any]) -> ViT:
    """An untrained ViT of the shapes of ``spec`` (see :func:`vit_spec`)."""
    return ViT(**{k: v for k, v in spec.items() if k != "kind"})


def save_vit(vit: ViT, path: str | os.PathLike, **meta: Any) -> Path:
    """Write ``vit`` (any widths) as a checkpoint of kind "vit"."""
    return save_checkpoint(path, vit, vit_spec(vit), **meta)


def load_vit(path: str | os.PathLike) -> ViT:
    """Rebuild a ViT written by :func:`save_vit` and load its weights strictly; eval mode."""
    ck = load_checkpoint(path, kind="vit")
    vit = vit_from_spec(ck.spec or {})
    vit.load_state_dict(ck.state_dict, strict=True)
    vit.eval()
    return vit
