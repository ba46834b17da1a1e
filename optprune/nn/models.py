"""Small models of optprune's own: an MLP, a small CNN with residual blocks and a
small ViT whose attention layers may have different head counts.

The ViT is written for exact structured pruning:

* ``MultiHeadAttention`` has separate q, k, v projections of ``num_heads * head_dim``
  outputs and an output projection ``proj``; head h owns rows
  ``h*head_dim .. (h+1)*head_dim - 1`` of q, k and v and the same columns of proj.
  Removing a head leaves every other head's output unchanged, so the pruned layer
  equals the dense one with that head's proj-input columns zeroed. ``num_heads`` may
  differ per block and may be 0 (the layer then outputs proj's bias).
* ``FeedForward`` is fc1 -> GELU -> fc2; channel j owns row j of fc1 and column j
  of fc2.
* The hidden (residual) width is not pruned: LayerNorm mixes all its channels.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["MLP", "SmallCNN", "ResBlock", "MultiHeadAttention", "FeedForward", "Block", "ViT"]


class MLP(nn.Sequential):
    """``nn.Sequential`` of Linear + ReLU layers: in_features -> hidden... -> out."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        layers: list[nn.Module] = []
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), activation()]
            d = h
        layers.append(nn.Linear(d, out_features))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """conv-bn-relu-conv-bn plus identity: the block's output channels are coupled
    with its input channels (channel i of every conv writing the residual stream
    is one structure)."""

    def __init__(self, channels: int, mid: int | None = None) -> None:
        super().__init__()
        mid = mid or channels
        self.conv1 = nn.Conv2d(channels, mid, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(mid, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class SmallCNN(nn.Module):
    """stem conv -> residual blocks -> pool -> flatten -> linear head.

    For 1x8x8 digits: ``SmallCNN(1, 16, n_blocks=2, n_classes=10)``.
    """

    def __init__(self, in_channels: int = 1, width: int = 16, n_blocks: int = 2,
                 n_classes: int = 10, pool_to: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[ResBlock(width) for _ in range(n_blocks)])
        self.pool = nn.AdaptiveAvgPool2d(pool_to)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(width * pool_to * pool_to, 32)
        self.act = nn.ReLU()
        self.head = nn.Linear(32, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(self.act(self.fc1(self.flatten(self.pool(x)))))


class MultiHeadAttention(nn.Module):
    """Self-attention with ``num_heads`` heads of ``head_dim`` each (any count, even 0).

    out = proj(concat_h softmax(q_h k_h^T / sqrt(head_dim)) v_h)
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.dim, self.num_heads, self.head_dim = dim, num_heads, head_dim
        inner = num_heads * head_dim
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(dim, inner)
        self.v = nn.Linear(dim, inner)
        self.proj = nn.Linear(inner, dim)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head outputs before proj: (B, num_heads, T, head_dim)."""
        b, t, _ = x.shape
        h, dh = self.num_heads, self.head_dim
        q = self.q(x).view(b, t, h, dh).transpose(1, 2)
        k = self.k(x).view(b, t, h, dh).transpose(1, 2)
        v = self.v(x).view(b, t, h, dh).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) * dh ** -0.5, dim=-1)
        return att @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        o = self.heads(x).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.proj(o)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then + mlp(ln2(x))."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, ffn: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, head_dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, ffn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """A small vision transformer: conv patch embedding, class token, learned
    position embedding, pre-norm blocks, final LayerNorm, linear head on the class
    token.

    ``heads`` gives each block's head count (heterogeneous allowed), ``ffn`` each
    block's FFN width (an int applies to all).
    """

    def __init__(self, image_size: int = 8, patch: int = 2, in_channels: int = 1,
                 dim: int = 64, heads: Sequence[int] = (4, 4, 4, 4), head_dim: int = 16,
                 ffn: int | Sequence[int] = 128, n_classes: int = 10) -> None:
        super().__init__()
        check_div = image_size % patch == 0
        if not check_div:
            raise ValueError(f"image_size {image_size} must be a multiple of patch {patch}")
        n_tokens = (image_size // patch) ** 2
        ffns = [ffn] * len(heads) if isinstance(ffn, int) else list(ffn)
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, h, head_dim, f) for h, f in zip(heads, ffns)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
