"""Compresso-style L0 gates on a Hugging Face BERT-family encoder (e.g. all-MiniLM-L6-v2):
hard-concrete gates on attention heads, FFN channels and the hidden (residual) width,
the Lagrangian sparsity target, LoRA (peft) on query and value with the base frozen,
and physical surgery of all three (hidden width included).

The gate itself (:class:`~optprune.train_prune.gates.CompressoGates`), the Lagrangian
loop, the final masks (:func:`own_rounding`, :func:`exact_allocation`), the allocation
problem (:func:`size_problem`) and the surgery are those of
:mod:`optprune.train_prune.gates`; this module supplies BERT's family adapter
(:class:`BertFamily`: gate sites, exact size model, the tensors of the hidden width) and
the exact final allocation by counts.

BERT is post-norm. Layer l computes (hf.py's notation)

    A = LN_1(x + W_o [head_1(x); ...] + b_o),   y = LN_2(A + W_2 act(W_1 A + b_1) + b_2),

and the embeddings e = LN_e(word + position + token_type). Gate sites (forward hooks
only, transformers' code is untouched):

* head h of layer l: its d_h columns of the input of ``attention.output.dense``
  (the head's context output) times z_head[l, h];
* FFN channel j of layer l: input column j of ``output.dense`` (the intermediate
  activation) times z_ffn[l, j];
* hidden channel i (CoFi's hidden mask): the outputs of ``attention.output.dense``
  and ``output.dense`` (before the residual add) and the outputs of the three kinds of
  LayerNorm (embeddings, ``attention.output``, ``output``) times z_hid[i]. In a
  post-norm model the LayerNorm output *is* the residual stream, so the mask is applied
  after each LayerNorm (where the pre-norm ViT masks the embeddings and the block
  outputs instead).

LayerNorm: every LayerNorm normalizes over the channels with z_hid > 0 only (mean and
variance over those channels, their weight and bias) and outputs 0 on the others, as
CoFi and Compresso do. So with binary gates the gated model computes exactly what the
model with those hidden channels physically removed computes (:func:`prune_bert_hidden`;
tested), the removed channels being exactly 0 in the gated model's hidden states. The
caveat: closing a hidden channel is *not* the same as zeroing it in the original
model, whose LayerNorm would still average over all d channels; the gated model with
some z_hid = 0 is already the smaller model's function (mean and variance over the H
open channels), not the dense model with a channel zeroed. With all gates open the
hooks change nothing (the ungated model's output, tested).

Exact parameter count, scope ``"encoder"`` (the Transformer layers ``encoder.*``,
the convention of CoFi / Compresso: embeddings and pooler are sliced along the
hidden width too but not counted), with H hidden channels, h_l heads and f_l FFN
channels kept in layer l (head size d_h, B layers):

    N_enc(H, h, f) = 6 B H + sum_l [3 d_h h_l + f_l + 4 d_h H h_l + 2 H f_l]

(Q, K, V: h_l d_h rows of H columns plus biases; W_o: H rows of h_l d_h plus H
biases; W_1: f_l rows of H plus f_l biases; W_2: H rows of f_l plus H biases; two
LayerNorms 2H each). Scope ``"all"`` (every parameter of the BertModel, word
embeddings included; V words, P positions, T token types, pooler of d_p outputs)
adds the embedding tables and their LayerNorm (V + P + T + 2) H and the pooler,
whose input columns follow the hidden width and whose d_p outputs stay (d_p H + d_p):

    N_all = d_p + (V + P + T + 2 + d_p) H + N_enc(H, h, f).

N is bilinear in H and the head/FFN counts, so E[N] = N(E[H], E[h], E[f]) under
independent gates, as for the ViT. The final exact mask comes from
:func:`exact_allocation_by_counts` (same optimum as the allocation layer's MILP,
computed by enumerating the kept totals, since N depends on them only).

The sentence embedding of a hidden-pruned model lives on the kept coordinates;
:class:`ScatterHidden` puts it back at those coordinates of the dense width (zeros
elsewhere), which is what the gated model outputs, so both compare to the dense
model's embeddings in one space.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._extras import require
from ..errors import InfeasibleProblemError, UnsupportedModuleError, check
from ..nn.hf import base_model_hint
from .families import (GateFamily, GateSites, Widths, base_named_params, keep_array,
                       param_count, prune_hidden_width, unwrap_peft)
from .gates import (CompressoGates, CompressoResult, GateMasks, _check_schedule, _check_target,
                    _lora_gates, apply_masks, lagrangian_train, size_problem)

__all__ = ["BERT_SCOPES", "BertFamily", "BertGates", "ScatterHidden", "apply_bert_gate_masks",
           "bert_masks_params", "bert_param_count", "exact_allocation_by_counts",
           "prune_bert_hidden", "scoped_params", "train_compresso_bert"]

BERT_SCOPES = ("encoder", "all")


# ------------------------------------------------------------------ the family
def _linear_like(mod: Any) -> nn.Linear | None:
    """The nn.Linear of ``mod`` (itself, or the base layer of a peft LoRA layer)."""
    if isinstance(mod, nn.Linear):
        return mod
    base = getattr(mod, "base_layer", None)
    return base if isinstance(base, nn.Linear) else None


def _layers(bert: nn.Module) -> list[nn.Module]:
    return list(cast(nn.ModuleList, bert.get_submodule("encoder.layer")))


def _lin(root: nn.Module, path: str) -> nn.Linear:
    # BertFamily.base checked every site
    return cast(nn.Linear, _linear_like(root.get_submodule(path)))


def _head_size(layer: nn.Module) -> int:
    sa: Any = layer.get_submodule("attention.self")
    return int(sa.attention_head_size)


def _check_scope(scope: str) -> None:
    check(scope in BERT_SCOPES, "The parameter-count 'scope'",
          "'encoder' (encoder.* parameters, embeddings and pooler not counted) or 'all' "
          "(every parameter, word embeddings included)", scope)


@dataclass(frozen=True)
class BertFamily(GateFamily):
    """A BERT-family base model (transformers.BertModel and its kin: ``embeddings``, an
    ``encoder.layer`` ModuleList of post-norm layers, optional pooler) for the gates.
    ``scope`` says which parameters the size model (and so the sparsity) counts:
    ``"encoder"`` or ``"all"`` (module docstring)."""

    scope: str = "encoder"
    name = "BERT-family"

    def __post_init__(self) -> None:
        _check_scope(self.scope)

    def base(self, model: nn.Module, gates: bool = False) -> nn.Module:
        """The BERT-family base model under ``model`` (itself or the base model of a
        peft wrapper), with every gate site checked up front; all problems are listed at
        once. ``gates``: also ask for at least one head and FFN channel per layer."""
        bert = unwrap_peft(model)
        layers = getattr(getattr(bert, "encoder", None), "layer", None)
        if not isinstance(layers, nn.ModuleList) or not isinstance(
                getattr(bert, "embeddings", None), nn.Module):
            raise UnsupportedModuleError(
                f"BERT gates attach to a BERT-family base model (transformers.BertModel: "
                f"'embeddings' and an 'encoder.layer' ModuleList); got {type(model).__name__}."
                f"{base_model_hint(bert)}")
        problems: list[str] = []

        def need(path: str, mod: Any, kind: type, bias: bool = True) -> None:
            m = _linear_like(mod) if kind is nn.Linear else mod
            if not isinstance(m, kind):
                problems.append(f"{path} is {type(mod).__name__}, expected {kind.__name__}")
            elif bias and getattr(m, "bias", None) is None:
                problems.append(f"{path} has no bias (the size model counts one)")
            elif kind is nn.LayerNorm and getattr(m, "weight", None) is None:
                problems.append(f"{path} has no elementwise affine weight")

        emb = bert.get_submodule("embeddings")
        for n in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            need(f"embeddings.{n}", getattr(emb, n, None), nn.Embedding, bias=False)
        need("embeddings.LayerNorm", getattr(emb, "LayerNorm", None), nn.LayerNorm)
        head_sizes = set()
        for i, layer in enumerate(layers):
            p = f"encoder.layer.{i}"
            att = getattr(layer, "attention", None)
            sa = getattr(att, "self", None)
            for n in ("query", "key", "value"):
                need(f"{p}.attention.self.{n}", getattr(sa, n, None), nn.Linear)
            out = getattr(att, "output", None)
            need(f"{p}.attention.output.dense", getattr(out, "dense", None), nn.Linear)
            need(f"{p}.attention.output.LayerNorm", getattr(out, "LayerNorm", None),
                 nn.LayerNorm)
            need(f"{p}.intermediate.dense", getattr(getattr(layer, "intermediate", None),
                                                    "dense", None), nn.Linear)
            need(f"{p}.output.dense", getattr(getattr(layer, "output", None), "dense", None),
                 nn.Linear)
            need(f"{p}.output.LayerNorm", getattr(getattr(layer, "output", None), "LayerNorm",
                                                  None), nn.LayerNorm)
            if getattr(layer, "crossattention", None) is not None:
                problems.append(f"{p} has cross-attention (decoder), not supported")
            dh = getattr(sa, "attention_head_size", None)
            if not isinstance(dh, int) or dh <= 0:
                problems.append(f"{p}.attention.self has no positive int attention_head_size")
                continue
            head_sizes.add(dh)
            od = _linear_like(getattr(out, "dense", None))
            inter = _linear_like(getattr(getattr(layer, "intermediate", None), "dense", None))
            if gates and od is not None and od.in_features == 0:
                problems.append(f"{p} has no attention head left (a gate vector needs one)")
            if gates and inter is not None and inter.out_features == 0:
                problems.append(f"{p} has no FFN channel left (a gate vector needs one)")
        if len(head_sizes) > 1:
            problems.append(f"the layers have different head sizes {sorted(head_sizes)}")
        pooler = getattr(bert, "pooler", None)
        if pooler is not None:
            need("pooler.dense", getattr(pooler, "dense", None), nn.Linear)
        if not len(layers):
            problems.append("encoder.layer is empty")
        if problems:
            raise UnsupportedModuleError(
                f"{len(problems)} problem(s) leave {type(bert).__name__} without BERT gate "
                f"sites: {'; '.join(problems)}.")
        return bert

    def widths(self, base: nn.Module) -> Widths:
        heads, ffn = [], []
        layers = _layers(base)
        for layer in layers:
            heads.append(_lin(layer, "attention.output.dense").in_features // _head_size(layer))
            ffn.append(_lin(layer, "intermediate.dense").out_features)
        emb = cast(nn.Embedding, base.get_submodule("embeddings.word_embeddings"))
        return Widths(emb.embedding_dim, tuple(heads), tuple(ffn), _head_size(layers[0]))

    def sites(self, base: nn.Module) -> GateSites:
        layers = _layers(base)

        def ln(root: nn.Module, path: str) -> nn.LayerNorm:
            return cast(nn.LayerNorm, root.get_submodule(path))

        return GateSites(
            root=base,
            head_in=tuple(la.get_submodule("attention.output.dense") for la in layers),
            ffn_in=tuple(la.get_submodule("output.dense") for la in layers), hidden_in=(),
            hidden_out=tuple(la.get_submodule(p) for la in layers
                             for p in ("attention.output.dense", "output.dense")),
            norms=(ln(base, "embeddings.LayerNorm"),) + tuple(
                ln(la, p) for la in layers
                for p in ("attention.output.LayerNorm", "output.LayerNorm")),
            post_norm=True)

    def size_coefficients(self, base: nn.Module) -> dict[str, float]:
        layers = _layers(base)
        dh = float(_head_size(layers[0]))
        c = {"const": 0.0, "hidden": 6.0 * len(layers), "head": 3.0 * dh, "ffn": 1.0,
             "hidden_head": 4.0 * dh, "hidden_ffn": 2.0}
        if self.scope == "all":
            c["hidden"] += sum(cast(nn.Embedding, base.get_submodule(f"embeddings.{n}"))
                               .num_embeddings for n in ("word_embeddings", "position_embeddings",
                                                         "token_type_embeddings")) + 2
            if getattr(base, "pooler", None) is not None:
                d_p = float(_lin(base, "pooler.dense").out_features)
                c["hidden"] += d_p
                c["const"] += d_p
        return c

    def dense_params(self, base: nn.Module) -> int:
        return scoped_params(base, self.scope)

    def slot_layers(self, b: int) -> tuple[str, str]:
        # the layer names of optprune.nn.hf.bert_structures
        return f"encoder.layer.{b}.attention", f"encoder.layer.{b}.intermediate"

    def prune_slots(self, base: nn.Module, keep: Mapping[str, bool]) -> nn.Module:
        """Heads and FFN channels removed by :func:`optprune.nn.hf.prune_bert`."""
        from ..nn.hf import bert_structures, prune_bert

        m = copy.deepcopy(base)
        ss = bert_structures(m, seq_len=1)
        return prune_bert(m, keep_array(ss, keep), ss)

    def set_hidden_width(self, base: nn.Module, k: int) -> None:
        """Nothing: ``config.hidden_size`` keeps the dense width (the modules' sizes are
        fixed by the shared surgery)."""

    def hidden_tensors(self, base: nn.Module) -> list[tuple[str, int]]:
        """Embedding table columns (word, position, token type) and the embeddings'
        LayerNorm entries; per layer the input columns of query/key/value and
        intermediate.dense, the output rows (and biases) of attention.output.dense and
        output.dense, both LayerNorms' entries; the pooler's input columns (its outputs
        stay)."""
        out = [(f"embeddings.{n}_embeddings.weight", 1) for n in ("word", "position",
                                                                    "token_type")]
        out += [(f"embeddings.LayerNorm.{t}", 0) for t in ("weight", "bias")]
        for i in range(len(_layers(base))):
            p = f"encoder.layer.{i}"
            out += [(f"{p}.{lin}.weight", 1) for lin in ("attention.self.query",
                                                         "attention.self.key",
                                                         "attention.self.value",
                                                         "intermediate.dense")]
            out += [(f"{p}.{m}.{t}", 0) for m in ("attention.output.dense", "output.dense",
                                                  "attention.output.LayerNorm",
                                                  "output.LayerNorm")
                    for t in ("weight", "bias")]
        if getattr(base, "pooler", None) is not None:
            out.append(("pooler.dense.weight", 1))
        return out


def bert_param_count(model: nn.Module, hidden: Any, heads: Any, ffn: Any,
                     scope: str = "encoder") -> Any:
    """N(H, h, f) of the module docstring for kept counts (numbers or tensors);
    ``heads``/``ffn`` have one count per layer."""
    fam = BertFamily(scope)
    return param_count(fam.size_coefficients(fam.base(model)), hidden, heads, ffn)


def scoped_params(model: nn.Module, scope: str = "encoder") -> int:
    """The parameters of ``model`` in ``scope`` (LoRA adapters not counted)."""
    _check_scope(scope)
    return int(sum(p.numel() for n, p in base_named_params(model)
                   if scope == "all" or n.startswith("encoder.")))


# ------------------------------------------------------------------ gates
class BertGates(CompressoGates):
    """:class:`~optprune.train_prune.gates.CompressoGates` with the BERT family: gates
    on every head, FFN channel and hidden channel of a BERT-family base model (or a
    peft wrapper of one). ``scope`` says which parameters the size model (and so the
    sparsity) counts: ``"encoder"`` or ``"all"`` (module docstring).
    Final masks: :func:`own_rounding`, or :func:`exact_allocation_by_counts` (the
    allocation layer's :func:`exact_allocation` gives the same optimum but its
    bilinear terms grow with the product of the widths: use it on small models only)."""

    def __init__(self, model: nn.Module, init_log_alpha: float = 2.0, seed: int = 0,
                 hidden: bool = True, scope: str = "encoder") -> None:
        super().__init__(model, init_log_alpha, seed, hidden, family=BertFamily(scope))
        self.scope = scope


def bert_masks_params(gates: CompressoGates, masks: GateMasks) -> int:
    """N of the masks in the gates' scope."""
    return gates.masks_params(masks)


# ------------------------------------------------------------------ exact allocation
def exact_allocation_by_counts(gates: CompressoGates, target: float, min_hidden: int = 1,
                               min_fill: float | None = 0.99) -> tuple[GateMasks, dict[str, Any]]:
    """The optimum of :func:`optprune.train_prune.gates.exact_allocation` (the most
    probable mask, the largest sum of gate logits sigma_g, with params <= (1 - t)
    N_dense as a hard budget and >= ``min_fill`` of it), computed exactly by
    enumerating counts instead of a MILP. Needed for MiniLM: the allocation layer
    writes each bilinear term H f_l with one product variable per pair of widths,
    385 x 1,537 per layer there (millions of columns).

    Why enumeration is exact. The size model gives every gate of one kind (hidden,
    head, FFN) the same cost coefficient, and the bilinear terms sum over layers:
    sum_l c_hh H h_l = c_hh H K_A with K_A = sum_l h_l (likewise K_F for FFN). So

        N = const + a H + (c_A + c_hh H) K_A + (c_F + c_hf H) K_F

    depends on the three totals (H, K_A, K_F) only. For given totals, the best mask
    keeps the H (K_A, K_F) largest logits of that kind, across all layers (an exchange
    argument: swapping a kept gate for a dropped one of the same kind with a larger
    logit keeps N and raises the score). Let P_X(k) be the sum of the k largest logits
    of kind X. For each (H, K_A) the feasible K_F form an interval [lo, hi] (cost
    c_F + c_hf H > 0 per FFN channel), and P_F is concave (sorted increments), so the
    best K_F is the number of positive FFN logits clamped to [lo, hi]. Enumerating all
    (H, K_A) in [min_hidden, d] x [0, total heads] (28,032 pairs for MiniLM) gives
    the optimum; ties are broken towards the first in the enumeration order.

    The mask's size is re-evaluated with :func:`size_problem`'s ``usage`` (the
    allocation layer's own cost model) and with the gates' size formula, and checked
    against the budget. Returns the masks and a record of the optimum (its bound
    equals the objective: the enumeration is complete)."""
    check(isinstance(min_hidden, (int, np.integer)) and 1 <= min_hidden <= gates.hidden.n,
          "The 'min_hidden' of exact_allocation_by_counts", f"an int in [1, {gates.hidden.n}]",
          min_hidden)
    _check_target(gates, target, min_hidden, min_fill, "exact_allocation_by_counts")
    t0 = time.perf_counter()
    c = gates.size_coefficients()
    check(c["ffn"] > 0, "The FFN cost coefficient of the size model", "positive", c["ffn"])
    sc = gates.scores()
    kinds = {"hidden": [np.asarray(sc["hidden"], dtype=np.float64)],
             "head": [np.asarray(v, dtype=np.float64) for v in sc["heads"]],
             "ffn": [np.asarray(v, dtype=np.float64) for v in sc["ffn"]]}
    flat = {k: np.concatenate(v) for k, v in kinds.items()}
    order = {k: np.argsort(-v, kind="stable") for k, v in flat.items()}
    prefix = {k: np.r_[0.0, np.cumsum(flat[k][order[k]])] for k in flat}
    nh, na, nf = flat["hidden"].size, flat["head"].size, flat["ffn"].size
    dense = gates.dense_params()
    hi = (1.0 - target) * dense
    lo = -np.inf if min_fill is None else min_fill * hi
    hs = np.arange(min_hidden if gates.use_hidden else nh, nh + 1, dtype=np.float64)[:, None]
    ka = np.arange(na + 1, dtype=np.float64)[None, :]
    base = c["const"] + c["hidden"] * hs + (c["head"] + c["hidden_head"] * hs) * ka
    w_f = c["ffn"] + c["hidden_ffn"] * hs
    tol = 1e-9 * dense
    kf_hi = np.minimum(np.floor((hi - base + tol) / w_f), nf)
    kf_lo = np.maximum(np.ceil((lo - base - tol) / w_f), 0) if min_fill is not None \
        else np.zeros_like(base)
    ok = kf_lo <= kf_hi
    if not ok.any():
        raise InfeasibleProblemError(
            f"No mask has between {lo:.0f} and {hi:.0f} parameters (min_fill {min_fill} of "
            f"(1 - {target}) x {dense}): the sizes of masks are too coarse there. Lower "
            "min_fill or pass min_fill=None.")
    k_pos = int((flat["ffn"] > 0).sum())
    kf = np.clip(k_pos, kf_lo, kf_hi)
    kf = np.where(ok, kf, 0).astype(np.int64)
    value = prefix["hidden"][hs.astype(np.int64)] + prefix["head"][ka.astype(np.int64)] \
        + prefix["ffn"][kf]
    value = np.where(ok, value, -np.inf)
    i, j = np.unravel_index(int(np.argmax(value)), value.shape)
    counts = {"hidden": int(hs[i, 0]), "head": int(ka[0, j]), "ffn": int(kf[i, j])}
    parts = []
    for k in ("hidden", "head", "ffn"):
        keep_flat = np.zeros(flat[k].size, dtype=bool)
        keep_flat[order[k][:counts[k]]] = True
        parts.append(np.split(keep_flat, np.cumsum([v.size for v in kinds[k]])[:-1]))
    masks = GateMasks(parts[0][0], tuple(parts[1]), tuple(parts[2]))
    keep = np.concatenate([masks.hidden] + [a for h, f in zip(masks.heads, masks.ffn)
                                            for a in (h, f)])
    used = size_problem(gates).usage(keep)["params"]
    n = float(gates.param_count(float(masks.hidden.sum()), [float(h.sum()) for h in masks.heads],
                                [float(f.sum()) for f in masks.ffn]))
    assert abs(used - n) <= 1e-6 * dense and lo - tol <= n <= hi + tol, "budget broken"
    objective = float(value[i, j])
    return masks, {"termination": "optimal", "objective": objective, "bound": objective,
                   "gap": 0.0, "solve_time_s": time.perf_counter() - t0,
                   "method": "enumeration over (hidden, heads, FFN) totals",
                   "candidates": int(value.size)}


# ------------------------------------------------------------------ surgery
def prune_bert_hidden(model: nn.Module, keep_hidden: Any, inplace: bool = False) -> nn.Module:
    """Remove the dropped hidden channels of a BERT-family base model physically
    (the tensors of :meth:`BertFamily.hidden_tensors`). Merge LoRA adapters first.
    ``config.hidden_size`` keeps the dense width; :func:`optprune.nn.hf.load_pruned_bert`
    does not rebuild a hidden-pruned model."""
    return prune_hidden_width(BertFamily(), model, keep_hidden, inplace)


def apply_bert_gate_masks(model: nn.Module, masks: GateMasks) -> nn.Module:
    """The physically pruned model (a copy): heads and FFN channels removed with
    :func:`optprune.nn.hf.prune_bert`, hidden channels with :func:`prune_bert_hidden`."""
    return apply_masks(BertFamily(), model, masks)


class ScatterHidden(nn.Module):
    """``module``'s output (..., H) placed at the kept coordinates of the dense
    width d (zeros elsewhere): the sentence embedding of a hidden-pruned model in the
    dense model's coordinates, exactly what the gated model outputs."""

    idx: torch.Tensor

    def __init__(self, module: nn.Module, keep_hidden: Any) -> None:
        super().__init__()
        keep = np.asarray(keep_hidden, dtype=bool)
        check(keep.ndim == 1 and bool(keep.any()), "The hidden keep mask of ScatterHidden",
              "a 1-d mask keeping at least one channel", keep.shape)
        self.module = module
        self.dim = int(keep.size)
        self.register_buffer("idx", torch.as_tensor(np.flatnonzero(keep), dtype=torch.long),
                             persistent=False)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.module(*args, **kwargs)
        check(out.shape[-1] == self.idx.numel(), "The output width of ScatterHidden's module",
              f"the number of kept channels ({self.idx.numel()})", out.shape[-1])
        full = out.new_zeros(*out.shape[:-1], self.dim)
        return full.index_copy(out.dim() - 1, self.idx, out)


# ------------------------------------------------------------------ training
def _cos_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(out, target, dim=-1)).mean()


def train_compresso_bert(bert: nn.Module, x: torch.Tensor, y: torch.Tensor, target: float, *,
                         steps: int = 200, warmup_steps: int | None = None, batch_size: int = 16,
                         lr: float = 1e-3, gate_lr: float = 0.05, lambda_lr: float = 0.2,
                         lora_rank: int = 8, lora_alpha: float = 16.0,
                         init_log_alpha: float = 2.0, hidden: bool = True,
                         scope: str = "encoder", min_hidden: int = 1,
                         loss_fn: Callable | None = None, pad_token_id: int | None = None,
                         seed: int = 0, checkpoint_every: int = 20, log_every: int = 10
                         ) -> CompressoResult:
    """Train the gates of :class:`BertGates` and LoRA (rank ``lora_rank`` on query and
    value, base weights frozen) towards the sparsity ``target`` (fraction of the
    parameters of ``scope`` to remove), with the Lagrangian of
    :mod:`optprune.train_prune.gates`.

    x: token ids (N, T) (pad positions masked out); y: targets (N, d) compared with the
    model's mean-pooled, L2-normalised sentence embeddings by ``loss_fn`` (default
    mean 1 - cos, i.e. distilling the dense model's embeddings when y holds them).
    ``bert`` is not modified (a deep copy is trained). Divergence restores the last
    checkpoint and raises TrainingDivergedError.
    """
    from ..nn.hf import TokenIdsEncoder

    require("peft", "hf", "LoRA adapters of Compresso")
    BertFamily(scope).base(bert)
    warmup_steps = _check_schedule("train_compresso_bert", steps, warmup_steps)
    check(x.dim() == 2 and y.dim() == 2 and x.shape[0] == y.shape[0] and x.shape[0] > 0,
          "The data of train_compresso_bert", "token ids (N, T) and targets (N, d), N > 0",
          (tuple(x.shape), tuple(y.shape)))
    pm, gates = _lora_gates(
        bert, ["query", "value"], target,
        lambda m: BertGates(m, init_log_alpha, seed, hidden, scope=scope),
        lora_rank=lora_rank, lora_alpha=lora_alpha, min_hidden=min_hidden, seed=seed)
    enc = TokenIdsEncoder(gates.model, pad_token_id)
    loss_fn = loss_fn or _cos_loss

    def batch_loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return loss_fn(enc(xb), yb)

    return lagrangian_train(pm, gates, batch_loss, x, y, target, steps=steps,
                            warmup_steps=warmup_steps, batch_size=batch_size, lr=lr,
                            gate_lr=gate_lr, lambda_lr=lambda_lr, seed=seed,
                            checkpoint_every=checkpoint_every, log_every=log_every)
