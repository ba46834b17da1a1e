"""The digits ViT the training-based pruners are measured on: optprune's ViT with
hidden width 32, three blocks of 4 heads of 8 dims and 64 FFN channels (26,762
parameters), pre-trained on scikit-learn's digits (75/25 stratified split), and a
small file format for (pruned) ViTs: the widths plus the state dict, so a pruned
model loads without pickled code."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from ..errors import ValidationError, check
from ..nn.models import ViT
from ..nn.train import Digits, accuracy, load_digits_split, train

__all__ = ["VIT_FORMAT", "DigitsViT", "digits_vit", "pretrained_digits_vit", "vit_widths",
           "save_vit", "load_vit"]

VIT_FORMAT = "optprune.vit/1"


def digits_vit(seed: int = 0) -> ViT:
    """A fresh (untrained) digits ViT: dim 32, heads (4, 4, 4) of 8, FFN 64."""
    torch.manual_seed(seed)
    return ViT(dim=32, heads=(4, 4, 4), head_dim=8, ffn=64)


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


def pretrained_digits_vit(epochs: int = 15, seed: int = 0) -> DigitsViT:
    """Build :func:`digits_vit` and train it ``epochs`` epochs (AdamW, cosine schedule;
    about 10 s on one core for the default 15) on the digits split of ``seed``."""
    check(isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 0,
          "The pre-training 'epochs'", "a non-negative integer", epochs)
    data = load_digits_split(seed=seed)
    vit = digits_vit(seed)
    t = time.perf_counter()
    if epochs:
        train(vit, data.x_train, data.y_train, epochs=epochs, seed=seed)
    vit.eval()
    return DigitsViT(vit, data, sum(p.numel() for p in vit.parameters()),
                     accuracy(vit, data.x_test, data.y_test), epochs, seed,
                     time.perf_counter() - t)


def vit_widths(vit: ViT) -> dict[str, Any]:
    """The widths that rebuild ``vit``'s shapes (a pruned ViT's too): hidden dim,
    heads and FFN channels per block, head dim, patch, image size, input channels,
    classes."""
    check(isinstance(vit, ViT), "The model", "an optprune.nn.models.ViT", type(vit).__name__)
    patch = int(vit.patch_embed.kernel_size[0])
    side = int(round((vit.pos_embed.shape[1] - 1) ** 0.5))
    return {"dim": int(vit.patch_embed.out_channels),
            "heads": [int(b.attn.num_heads) for b in vit.blocks],
            "head_dim": int(vit.blocks[0].attn.head_dim) if len(vit.blocks) else 1,
            "ffn": [int(b.mlp.fc1.out_features) for b in vit.blocks],
            "patch": patch, "image_size": side * patch,
            "in_channels": int(vit.patch_embed.in_channels),
            "n_classes": int(vit.head.out_features)}


def save_vit(vit: ViT, path: str | os.PathLike, **meta: Any) -> None:
    """Write ``{"format", "widths", "state_dict", "meta"}`` with torch.save."""
    torch.save({"format": VIT_FORMAT, "widths": vit_widths(vit),
                "state_dict": {k: v.detach().clone() for k, v in vit.state_dict().items()},
                "meta": meta}, os.fspath(path))


def load_vit(path: str | os.PathLike) -> ViT:
    """Rebuild a ViT written by :func:`save_vit` (any widths) and load its weights
    strictly; eval mode."""
    try:
        blob = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ValidationError(f"The file {os.fspath(path)!r} must be a ViT written by "
                              f"save_vit; reading it failed: {exc}") from exc
    check(isinstance(blob, dict) and blob.get("format") == VIT_FORMAT, "The file's format",
          repr(VIT_FORMAT), blob.get("format") if isinstance(blob, dict) else type(blob).__name__)
    w = blob["widths"]
    vit = ViT(image_size=w["image_size"], patch=w["patch"], in_channels=w["in_channels"],
              dim=w["dim"], heads=w["heads"], head_dim=w["head_dim"], ffn=w["ffn"],
              n_classes=w["n_classes"])
    vit.load_state_dict(blob["state_dict"], strict=True)
    vit.eval()
    return vit
