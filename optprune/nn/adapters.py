"""Attention modules as leaves of structure discovery: heads as groups, exact costs,
and the attributes surgery must fix.

Attention reshapes its projections into heads, multiplies them pairwise and reshapes
back; a channel analysis cannot follow that, so each attention module family is one
leaf with an adapter that knows its layout. Head h (head size d_h, T tokens, hidden
width d) owns rows h*d_h .. (h+1)*d_h - 1 of the query, key and value projections (and
their biases) and the same input columns of the output projection; it adds
2 T^2 d_h MACs per sample (Q K^T and softmax(.) V) beside its weights' T * entries.

* ``q_proj/k_proj/v_proj/o_proj`` attention with ``head_dim`` (LLaMA, Mistral, Qwen2,
  Gemma... and ViT in transformers 5). With grouped-query attention (H query heads,
  H_kv < H key/value heads, g = H / H_kv query heads per key/value head) the groups are
  key/value head j (kind ``kv_head``: rows of k_proj and v_proj) and query head i (kind
  ``head``: rows of q_proj, columns of o_proj, 2 T^2 d_h MACs) with ``requires`` = its
  key/value head ``i // g``. Any set of query heads with their key/value heads is a
  valid layer: surgery keeps H'_kv key/value heads and, when every kept key/value head
  keeps the same number g' of query heads, sets ``num_key_value_groups = g'`` (the
  plain Hugging Face layout); otherwise each query head keeps a map to its key/value
  head (``optprune_kv_index``, an attention function registered with transformers).
* BERT-family self-attention (``query/key/value`` with ``attention_head_size``): the
  module returns the heads' concatenation, so its output is a *head space* of units
  of d_h channels, and the parent's output dense layer is found by the channel
  analysis as the consumer.
* GPT-2 attention: one fused ``c_attn`` Conv1D (weight (d, 3 d)): head h owns columns
  h*d_h.. of the query third, the key third and the value third; ``c_proj`` rows.
* ``nn.MultiheadAttention`` (fused ``in_proj_weight``): thirds of the rows; ``out_proj``
  columns. Pruned modules become :class:`optprune.nn.explicit.PrunedMultiheadAttention`.
* optprune's own :class:`~optprune.nn.models.MultiHeadAttention`.
"""

from __future__ import annotations

import copy
import sys
from typing import Any, Protocol, TypeGuard, cast

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .explicit import PrunedMultiheadAttention
from .models import MultiHeadAttention
from .structures import (Group, Slice, _Ann, _Ctx, _input, _is_hf_conv1d, _linear, _shape,
                         consumer_weight, register_leaf, register_matcher, register_resizer)

__all__ = ["EmptyAttention", "attention_macs", "attention_kind", "is_attention",
           "set_kv_index"]


# ----------------------------------------------------------------- recognising families
# What each family's predicate checks, as types: the handlers and resizers filed under a
# predicate take these (``register_matcher`` ties the two together).
class _ProjAttention(Protocol):
    head_dim: int
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear


class _HFProjAttention(_ProjAttention, Protocol):
    """A transformers q/k/v/o attention module (its config picks the attention function)."""

    num_key_value_groups: int
    config: Any  # transformers.PretrainedConfig
    optprune_kv_index: list[int]
    optprune_base_attn: str


class _BertAttention(Protocol):
    attention_head_size: int
    num_attention_heads: int
    all_head_size: int
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear


class _HFConv1D(Protocol):
    weight: torch.Tensor  # (in, out)
    bias: torch.Tensor


class _GPT2Attention(Protocol):
    head_dim: int
    split_size: int
    num_heads: int
    c_attn: _HFConv1D
    c_proj: _HFConv1D


def _lin(m: Any) -> bool:
    return isinstance(m, nn.Linear)


def _own_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def _proj_attention(m: nn.Module) -> TypeGuard[_ProjAttention]:
    """q_proj / k_proj / v_proj / o_proj Linear layers and an int head_dim, heads
    consistent, nothing else with parameters but per-head-dim norms (q_norm, k_norm)."""
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    if not all(_lin(getattr(m, n, None)) for n in names):
        return False
    dh = getattr(m, "head_dim", None)
    if not isinstance(dh, int) or dh <= 0 or _own_params(m):
        return False
    q, k, v, o = (getattr(m, n) for n in names)
    if q.out_features % dh or k.out_features % dh or k.out_features != v.out_features \
            or o.in_features != q.out_features or getattr(m, "is_cross_attention", False):
        return False
    hq, hk = q.out_features // dh, k.out_features // dh
    if hk == 0:
        return hq == 0  # every head removed
    if hq % hk and getattr(m, "optprune_kv_index", None) is None:
        return False
    for n, c in m.named_children():
        if n not in names and n not in ("q_norm", "k_norm", "rotary_emb") and \
                any(True for _ in c.parameters()):
            return False
    return True


def _bert_attention(m: nn.Module) -> TypeGuard[_BertAttention]:
    """BERT-family self-attention: query/key/value Linear, int attention_head_size,
    returns the concatenated heads (no output projection inside)."""
    q = getattr(m, "query", None)
    if not (isinstance(q, nn.Linear) and _lin(getattr(m, "key", None))
            and _lin(getattr(m, "value", None))):
        return False
    dh = getattr(m, "attention_head_size", None)
    if not isinstance(dh, int) or dh <= 0 or _own_params(m):
        return False
    if getattr(m, "is_cross_attention", False) or q.out_features % dh:
        return False
    if getattr(m, "position_embedding_type", "absolute") not in ("absolute", None):
        return False  # relative position embeddings are per head-dim of the whole width
    return all(n in ("query", "key", "value", "dropout") for n, _ in m.named_children())


def _gpt2_attention(m: nn.Module) -> TypeGuard[_GPT2Attention]:
    c_attn: Any = getattr(m, "c_attn", None)
    c_proj: Any = getattr(m, "c_proj", None)
    if not (_is_hf_conv1d(c_attn) and _is_hf_conv1d(c_proj)):
        return False
    dh, split = getattr(m, "head_dim", None), getattr(m, "split_size", None)
    return isinstance(dh, int) and isinstance(split, int) and \
        not getattr(m, "is_cross_attention", False) and c_attn.weight.shape[1] == 3 * split \
        and split % dh == 0 and c_proj.weight.shape[0] == split


def _gpt2_layout(m: nn.Module) -> TypeGuard[_GPT2Attention]:
    """GPT-2 attention by its parts alone (also while surgery has sliced its tensors)."""
    return _is_hf_conv1d(getattr(m, "c_attn", None)) and _is_hf_conv1d(getattr(m, "c_proj", None)) \
        and isinstance(getattr(m, "head_dim", None), int) and hasattr(m, "split_size")


def _torch_mha(m: nn.Module) -> TypeGuard[nn.MultiheadAttention]:
    return isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None and \
        m.bias_k is None and not m.add_zero_attn


def attention_kind(m: nn.Module) -> str | None:
    """The adapter family of an attention module, or None."""
    if isinstance(m, EmptyAttention):
        return "empty"
    if isinstance(m, MultiHeadAttention):
        return "optprune"
    if _torch_mha(m):
        return "torch"
    if _proj_attention(m):
        return "proj"
    if _bert_attention(m):
        return "bert"
    if _gpt2_attention(m):
        return "gpt2"
    return None


def is_attention(m: nn.Module) -> bool:
    return attention_kind(m) is not None


def _n_heads(m: nn.Module) -> tuple[int, int]:
    """(query heads, head size) of an attention module as it is now (the families in
    :func:`attention_kind`'s order)."""
    if isinstance(m, EmptyAttention):
        return 0, 1
    if isinstance(m, MultiHeadAttention):
        return m.num_heads, m.head_dim
    if _torch_mha(m):
        return int(m.in_proj_weight.shape[0]) // (3 * m.head_dim), m.head_dim
    if _proj_attention(m):
        return m.q_proj.out_features // m.head_dim, m.head_dim
    if _bert_attention(m):
        return m.query.out_features // m.attention_head_size, m.attention_head_size
    if _gpt2_attention(m):
        return int(m.c_attn.weight.shape[1]) // (3 * m.head_dim), m.head_dim
    return 0, 1


def _tokens(shape: tuple[int, ...] | None) -> int:
    return int(np.prod(shape[1:-1], dtype=np.int64)) if shape else 1


def attention_macs(m: nn.Module, args: tuple, kwargs: dict) -> int:
    """Measured score and value products of one call: 2 * T_q * T_k * d_h per query
    head, per sample (``count_flops`` runs one sample); for ``nn.MultiheadAttention``
    also its fused in-projection, which no Linear module computes."""
    h, dh = _n_heads(m)
    if _torch_mha(m):
        q = args[0] if args else kwargs["query"]
        k = args[1] if len(args) > 1 else kwargs.get("key", q)
        bf = m.batch_first and q.dim() == 3
        tq = q.shape[1] if bf else q.shape[0]
        tk = k.shape[1] if bf else k.shape[0]
        # The fused in-projection is not a module call: its thirds run on Tq and Tk tokens.
        third = m.in_proj_weight.numel() // 3
        return 2 * int(tq) * int(tk) * dh * h + third * (int(tq) + 2 * int(tk))
    x = args[0] if args else (kwargs.get("hidden_states") if kwargs else None)
    if x is None:
        x = next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
    t = _tokens(tuple(x.shape))
    return 2 * t * t * dh * h


# ----------------------------------------------------------------- discovery handlers
def _out_ann(ctx: _Ctx, like: tuple[int, ...] | None, width: int, reason: str) -> _Ann:
    nd = len(like) if like else 3
    return _Ann(ctx.new_space(width, reason), nd - 1, 1, nd)


def _freeze_inputs(ctx: _Ctx, node: fx.Node, reason: str) -> None:
    ctx.freeze([ctx.env_of(a) for a in node.args] + [ctx.env_of(v) for v in node.kwargs.values()],
               reason)


def _prologue(ctx: _Ctx, name: str, node: fx.Node) -> tuple[tuple[int, ...] | None, int]:
    """(input shape, tokens per sample) of an attention leaf; its inputs stay dense
    (the projections read the hidden width, which norms mix)."""
    shape = _shape(_input(node))
    _freeze_inputs(ctx, node, f"input of attention {name} (hidden width)")
    return shape, _tokens(shape)


def _rows(name: str, mod: nn.Linear, unit: int, offset: int = 0) -> list[tuple[str, int, int, int]]:
    out = [(f"{name}.weight", 0, unit, offset)]
    if mod.bias is not None:
        out.append((f"{name}.bias", 0, unit, offset))
    return out


def _head_space(ctx: _Ctx, layer: str, n: int, slots: list[tuple[str, int, int, int]], extra: int,
                consumer: tuple[str, str, int, int] | None = None) -> int:
    s = ctx.produce(n, layer, "head", slots, extra_per_unit=extra)
    if consumer is not None:
        ctx.space(s).consumers.append(consumer)
    return s


def _proj_leaf(ctx: _Ctx, name: str, m: _ProjAttention, node: fx.Node) -> Any:
    shape, t = _prologue(ctx, name, node)
    dh = m.head_dim
    hq, hk = m.q_proj.out_features // dh, m.k_proj.out_features // dh
    for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
        ctx.add_op(f"{name}.{p}", f"{name}.{p}.weight", t)
    extra = 2 * t * t * dh
    kv_index = getattr(m, "optprune_kv_index", None)
    if hq == hk and kv_index is None:
        slots = _rows(f"{name}.q_proj", m.q_proj, dh) + _rows(f"{name}.k_proj", m.k_proj, dh) + \
            _rows(f"{name}.v_proj", m.v_proj, dh)
        _head_space(ctx, name, hq, slots, extra, (f"{name}.o_proj", f"{name}.o_proj.weight", 1, dh))
    else:
        owner = _kv_owner(m, hq, hk)
        for j in range(hk):
            rows = tuple(range(j * dh, (j + 1) * dh))
            slices: list[Slice] = []
            for p in ("k_proj", "v_proj"):
                slices.append((f"{name}.{p}.weight", 0, rows))
                if getattr(m, p).bias is not None:
                    slices.append((f"{name}.{p}.bias", 0, rows))
            ctx.add_group(Group(id=f"{name}:kv_head:{j}", layer=name, kind="kv_head", index=j,
                                params=0, flops=0, slices=tuple(slices)))
        for i in range(hq):
            rows = tuple(range(i * dh, (i + 1) * dh))
            slices = [(f"{name}.q_proj.weight", 0, rows)]
            if m.q_proj.bias is not None:
                slices.append((f"{name}.q_proj.bias", 0, rows))
            slices.append((f"{name}.o_proj.weight", 1, rows))
            ctx.add_group(Group(
                id=f"{name}:head:{i}", layer=name, kind="head", index=i, params=0, flops=0,
                slices=tuple(slices), consumer=f"{name}.o_proj", consumer_channels=rows,
                consumers=((f"{name}.o_proj", rows),), extra_flops=extra,
                requires=(f"{name}:kv_head:{owner[i]}",)))
    return (_out_ann(ctx, shape, m.o_proj.out_features, f"output of attention {name}"), None)


def _kv_owner(m: _ProjAttention, hq: int, hk: int) -> list[int]:
    """The key/value head of every query head."""
    idx = getattr(m, "optprune_kv_index", None)
    if idx is not None:
        return [int(v) for v in idx]
    g = hq // hk
    return [i // g for i in range(hq)]


def _bert_leaf(ctx: _Ctx, name: str, m: _BertAttention, node: fx.Node) -> Any:
    shape, t = _prologue(ctx, name, node)
    dh = m.attention_head_size
    h = m.query.out_features // dh
    for p in ("query", "key", "value"):
        ctx.add_op(f"{name}.{p}", f"{name}.{p}.weight", t)
    slots = _rows(f"{name}.query", m.query, dh) + _rows(f"{name}.key", m.key, dh) + \
        _rows(f"{name}.value", m.value, dh)
    s = _head_space(ctx, name, h, slots, 2 * t * t * dh)
    nd = len(shape) if shape else 3
    return (_Ann(s, nd - 1, dh, nd), None)


def _gpt2_leaf(ctx: _Ctx, name: str, m: _GPT2Attention, node: fx.Node) -> Any:
    shape, t = _prologue(ctx, name, node)
    dh, split = m.head_dim, m.split_size
    for p in ("c_attn", "c_proj"):
        ctx.add_op(f"{name}.{p}", f"{name}.{p}.weight", t)
    slots = []
    for off in (0, split, 2 * split):
        slots.append((f"{name}.c_attn.weight", 1, dh, off))
        slots.append((f"{name}.c_attn.bias", 0, dh, off))
    _head_space(ctx, name, split // dh, slots, 2 * t * t * dh,
                (f"{name}.c_proj", f"{name}.c_proj.weight", 0, dh))
    return (_out_ann(ctx, shape, m.c_proj.weight.shape[1], f"output of attention {name}"), None)


def _torch_mha_leaf(ctx: _Ctx, name: str, m: nn.MultiheadAttention, node: fx.Node) -> Any:
    args = list(node.args) + [node.kwargs.get(k) for k in ("query", "key", "value")
                              if k in node.kwargs]
    q, k = args[0], args[1] if len(args) > 1 else args[0]
    sq, sk = _shape(q), _shape(k)
    bf = m.batch_first and sq is not None and len(sq) == 3
    tq = (sq[1] if bf else sq[0]) if sq else 1
    tk = (sk[1] if bf else sk[0]) if sk else tq
    _freeze_inputs(ctx, node, f"input of attention {name} (embedding width)")
    dh = m.head_dim
    h = m.in_proj_weight.shape[0] // (3 * dh)
    inner = h * dh
    # in_proj_weight's thirds run on Tq (query) and Tk (key, value) tokens; with Tq = Tk
    # (self-attention) one op of Tq positions is exact.
    if tq != tk:
        _freeze_inputs(ctx, node, f"{name} cross-attention (T_q != T_k)")
        return (_out_ann(ctx, sq, m.embed_dim, f"output of attention {name}"), None)
    ctx.add_op(name, f"{name}.in_proj_weight", tq)
    ctx.add_op(f"{name}.out_proj", f"{name}.out_proj.weight", tq)
    slots = []
    for off in (0, inner, 2 * inner):
        slots.append((f"{name}.in_proj_weight", 0, dh, off))
        if m.in_proj_bias is not None:
            slots.append((f"{name}.in_proj_bias", 0, dh, off))
    _head_space(ctx, name, h, slots, 2 * tq * tk * dh,
                (f"{name}.out_proj", f"{name}.out_proj.weight", 1, dh))
    return (_out_ann(ctx, sq, m.embed_dim, f"output of attention {name}"), None)


def _optprune_leaf(ctx: _Ctx, name: str, m: MultiHeadAttention, node: fx.Node) -> Any:
    """Heads of optprune's MultiHeadAttention: head h owns q/k/v rows and proj columns
    h*head_dim .. (h+1)*head_dim - 1."""
    shape, t = _prologue(ctx, name, node)
    dh = m.head_dim
    for lin in ("q", "k", "v", "proj"):
        ctx.add_op(f"{name}.{lin}", f"{name}.{lin}.weight", t)
    slots = _rows(f"{name}.q", m.q, dh) + _rows(f"{name}.k", m.k, dh) + _rows(f"{name}.v", m.v, dh)
    _head_space(ctx, name, m.num_heads, slots, 2 * t * t * dh,
                (f"{name}.proj", f"{name}.proj.weight", 1, dh))
    return _out_ann(ctx, shape, m.proj.out_features, f"output of attention {name}")


class EmptyAttention(nn.Module):
    """An attention module with every head removed: returns the output projection's
    bias (zeros without one) and no attention weights, keeping the emptied
    projections (0 rows) so the state dict has the keys of the pruned original.
    ``full`` = the module had an output projection (``out``), else it returns its
    0-wide head concatenation (BERT)."""

    def __init__(self, module: nn.Module, out: str | None) -> None:
        super().__init__()
        for n, c in module.named_children():
            self.add_module(n, c)
        self.out_name = out
        for attr in ("layer_idx", "is_causal", "head_dim", "attention_head_size"):
            if hasattr(module, attr):
                setattr(self, attr, getattr(module, attr))
        self.num_heads = 0

    def forward(self, hidden_states: torch.Tensor | None = None, *args: Any, **kwargs: Any):
        x = hidden_states if hidden_states is not None else kwargs.get("query", args[0])
        zeros = x.new_zeros(*x.shape[:-1], 0)
        cache = kwargs.get("past_key_values")
        if cache is not None and hasattr(cache, "update") and hasattr(self, "layer_idx"):
            # Keep the cache's length right: this layer adds zero key/value heads.
            dh = getattr(self, "head_dim", getattr(self, "attention_head_size", 1))
            kv = x.new_zeros(x.shape[0], 0, x.shape[1], dh)
            cache.update(kv, kv, self.layer_idx)
        if self.out_name is None:
            return zeros, None
        out = getattr(self, self.out_name)
        w, d = consumer_weight(out)
        y = x.new_zeros(*x.shape[:-1], w.shape[1 - d])  # no input features: the bias alone
        return (y + out.bias if out.bias is not None else y), None


# ----------------------------------------------------------------- surgery
def _resize_proj(m: _ProjAttention) -> None:
    dh = m.head_dim
    hq, hk = m.q_proj.out_features // dh, m.k_proj.out_features // dh
    sizes = [("num_heads", hq), ("num_attention_heads", hq), ("num_key_value_heads", hk)]
    if getattr(m, "optprune_kv_index", None) is None and hk:
        sizes.append(("num_key_value_groups", hq // hk))
    for attr, v in sizes:
        if hasattr(m, attr):
            setattr(m, attr, v)


def _resize_bert(m: _BertAttention) -> None:
    h = m.query.out_features // m.attention_head_size
    m.num_attention_heads = h
    m.all_head_size = h * m.attention_head_size


def _resize_gpt2(m: _GPT2Attention) -> None:
    m.split_size = m.c_attn.weight.shape[1] // 3
    m.num_heads = m.split_size // m.head_dim


def _resize_torch_mha(m: nn.MultiheadAttention) -> None:
    h = m.in_proj_weight.shape[0] // (3 * m.head_dim)
    if h != m.num_heads or isinstance(m, PrunedMultiheadAttention):
        m.num_heads = h
        m.__class__ = PrunedMultiheadAttention
        m._qkv_same_embed_dim = False  # keeps torch's fused fast path (embed = heads*d_h) off


def _resize_optprune(m: MultiHeadAttention) -> None:
    m.num_heads = m.q.out_features // m.head_dim


def set_kv_index(module: nn.Module, kv_index: list[int]) -> None:
    """Give a q/k/v/o attention module a map from each query head to its key/value
    head (``kv_index[i]``), for layers whose key/value heads keep unequal numbers of
    query heads. The module then runs the ``optprune_gqa`` attention function, which
    repeats key/value heads by that map and calls the model's own implementation."""
    m = cast(_HFProjAttention, module)  # the contract above; surgery calls it so
    hq = m.q_proj.out_features // m.head_dim
    kv = [int(v) for v in kv_index]
    if len(kv) != hq:
        raise ValueError(f"kv_index needs one entry per query head ({hq}); got {len(kv)}")
    g = hq // max(m.k_proj.out_features // m.head_dim, 1)
    if hq and g * (m.k_proj.out_features // m.head_dim) == hq and kv == [i // g for i in range(hq)]:
        if hasattr(m, "optprune_kv_index"):
            del m.optprune_kv_index
        m.num_key_value_groups = g
        return
    _register_gqa()
    base = getattr(m, "optprune_base_attn", None) or m.config._attn_implementation
    m.optprune_kv_index = kv
    m.optprune_base_attn = base
    m.num_key_value_groups = 1
    cfg = copy.copy(m.config)
    cfg._attn_implementation = "optprune_gqa"
    m.config = cfg


_GQA_REGISTERED = False


def _gqa_attention(module: _HFProjAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: Any, **kwargs: Any):
    from transformers import AttentionInterface

    idx = torch.as_tensor(module.optprune_kv_index, dtype=torch.long, device=key.device)
    key, value = key.index_select(1, idx), value.index_select(1, idx)
    base = module.optprune_base_attn
    # The model's own eager function (get_interface falls back to it for "eager" only).
    default: Any = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    fn = AttentionInterface().get_interface(base, default)
    return fn(module, query, key, value, attention_mask, **kwargs)


def _register_gqa() -> None:
    global _GQA_REGISTERED
    if _GQA_REGISTERED:
        return
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register("optprune_gqa", _gqa_attention)
    AttentionMaskInterface.register("optprune_gqa", AttentionMaskInterface()["sdpa"])
    _GQA_REGISTERED = True


# ----------------------------------------------------------------- registration
register_matcher(_is_hf_conv1d, _linear)
register_leaf(MultiHeadAttention, _optprune_leaf)
register_leaf(nn.MultiheadAttention, lambda c, n, m, node: (
    _torch_mha_leaf(c, n, m, node) if _torch_mha(m) else _opaque_leaf(c, n, m, node)))
register_matcher(_proj_attention, _proj_leaf)
register_matcher(_bert_attention, _bert_leaf)
register_matcher(_gpt2_attention, _gpt2_leaf)
register_matcher(lambda m: isinstance(m, EmptyAttention), lambda c, n, m, node: (
    _opaque_leaf(c, n, m, node), None))

register_resizer(MultiHeadAttention, _resize_optprune)
register_resizer(_torch_mha, _resize_torch_mha)
register_resizer(_proj_attention, _resize_proj)
register_resizer(_bert_attention, _resize_bert)
register_resizer(_gpt2_layout, _resize_gpt2)


def _opaque_leaf(ctx: _Ctx, name: str, m: nn.Module, node: fx.Node) -> Any:
    from .structures import _opaque

    return _opaque(ctx, name, m, node)
