"""Explicit forward passes for modules whose native forward hides a sub-module call.

``nn.MultiheadAttention`` runs ``F.multi_head_attention_forward`` with its
``out_proj.weight``; its ``out_proj`` module is never called, so a forward pre-hook on
it (``StructureSet.masked``, consumer statistics, reconstruction) would never fire.
:func:`mha_forward` computes the same function with ``self.out_proj(...)`` as a module
call and with any number of heads (``num_heads * head_dim`` rows per projection of
``in_proj_weight``; the embedding width stays that of ``out_proj``'s output), which is
what a head-pruned attention needs.

:class:`PrunedMultiheadAttention` is ``nn.MultiheadAttention`` with that forward; surgery
gives pruned attention modules this class. :func:`explicit_modules` lends it to the
dense modules of a model for the duration of a context (and switches off torch's fused
transformer fast path, which would bypass every hook).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PrunedMultiheadAttention", "explicit_modules", "mha_forward", "no_fastpath"]


def _mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, b: int,
          h: int, tq: int, tk: int, dtype: torch.dtype) -> torch.Tensor | None:
    """One additive float mask of shape broadcastable to (B, H, Tq, Tk) from
    nn.MultiheadAttention's masks (boolean True = not allowed, or additive float)."""
    out = None
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        m = m.to(dtype)
        m = m.view(b, h, tq, tk) if m.dim() == 3 else m.view(1, 1, tq, tk)
        out = m
    if key_padding_mask is not None:
        k = key_padding_mask
        if k.dtype == torch.bool:
            k = torch.zeros(k.shape, dtype=dtype, device=k.device).masked_fill(k, float("-inf"))
        k = k.to(dtype).view(b, 1, 1, tk)
        out = k if out is None else out + k
    return out


def mha_forward(self: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = True, attn_mask: torch.Tensor | None = None,
                average_attn_weights: bool = True, is_causal: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``nn.MultiheadAttention.forward`` with ``self.num_heads`` heads of
    ``self.head_dim`` (the projections hold ``num_heads * head_dim`` rows each) and
    ``self.out_proj`` called as a module. ``add_bias_kv`` / ``add_zero_attn`` are not
    supported (discovery leaves such modules dense)."""
    if self.bias_k is not None or self.add_zero_attn:
        raise NotImplementedError("mha_forward does not support add_bias_kv / add_zero_attn")
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
        batch_first = False
    else:
        batch_first = self.batch_first
    if not batch_first:  # (T, B, E) -> (B, T, E)
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    h, dh = int(self.num_heads), int(self.head_dim)
    inner = h * dh
    if self._qkv_same_embed_dim or self.q_proj_weight is None:
        w = self.in_proj_weight
        wq, wk, wv = w[:inner], w[inner:2 * inner], w[2 * inner:3 * inner]
    else:
        wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
    b_all = self.in_proj_bias
    bq, bk, bv = (None, None, None) if b_all is None else \
        (b_all[:inner], b_all[inner:2 * inner], b_all[2 * inner:3 * inner])
    b, tq, tk = query.shape[0], query.shape[1], key.shape[1]
    q = F.linear(query, wq, bq).view(b, tq, h, dh).transpose(1, 2)
    k = F.linear(key, wk, bk).view(b, tk, h, dh).transpose(1, 2)
    v = F.linear(value, wv, bv).view(b, tk, h, dh).transpose(1, 2)
    mask = _mask(attn_mask, key_padding_mask, b, h, tq, tk, q.dtype)
    p = self.dropout if self.training else 0.0
    weights = None
    if h == 0:
        ctx = q.new_zeros(b, tq, 0)
    else:
        causal = bool(is_causal) and mask is None
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        ctx = ctx.transpose(1, 2).reshape(b, tq, inner)
        if need_weights:
            s = (q @ k.transpose(-2, -1)) / (dh ** 0.5)
            if mask is not None:
                s = s + mask
            elif causal:
                s = s.masked_fill(torch.ones(tq, tk, dtype=torch.bool, device=s.device).triu(1),
                                  float("-inf"))
            weights = s.softmax(-1)
            if average_attn_weights:
                weights = weights.mean(1)
    out = self.out_proj(ctx)
    if not batch_first:
        out = out.transpose(0, 1)
    if unbatched:
        out = out.squeeze(1)
        weights = None if weights is None else weights.squeeze(0)
    return out, weights


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose forward is :func:`mha_forward` (any number of
    heads; ``out_proj`` called as a module). ``_qkv_same_embed_dim`` is False so that
    torch's fused transformer fast path, which assumes ``embed_dim = num_heads *
    head_dim``, is never taken."""

    forward = mha_forward


@contextlib.contextmanager
def explicit_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Within the context every ``nn.MultiheadAttention`` of ``model`` runs
    :func:`mha_forward` (the same function, with ``out_proj`` called as a module) and
    torch's fused multi-head attention fast path is off. Yields ``model``."""
    swapped = []
    try:
        for m in model.modules():
            if type(m) is nn.MultiheadAttention and m.bias_k is None and not m.add_zero_attn:
                m.__class__ = PrunedMultiheadAttention
                swapped.append(m)
        with no_fastpath():
            yield model
    finally:
        for m in swapped:
            m.__class__ = nn.MultiheadAttention


@contextlib.contextmanager
def no_fastpath() -> Iterator[None]:
    """torch's fused transformer/attention fast path off within the context (it runs a
    whole encoder layer as one op, so hooks and the recorded graph would not see it)."""
    fast = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
