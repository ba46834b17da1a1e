"""Compresso-style L0 gates on optprune's ViT: hard-concrete gates on attention heads,
FFN channels and the hidden (residual) dimension, a Lagrangian sparsity target, base
weights frozen with LoRA adapters (peft) on q and v, and two ways to turn the learned
gates into a final mask (the method's own rounding, and exact allocation).

Hard-concrete gate (Louizos et al. 2018; stretch (l, r) = (-0.1, 1.1), beta = 2/3),
one ``log_alpha`` per gate:

    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log_alpha) / beta),
    z = min(1, max(0, l + (r - l) s)).

z is exactly 0 with positive probability and exactly 1 with positive probability;
the gate is *open* (z > 0) with probability

    P(z > 0) = sigmoid(log_alpha - beta log(-l / r)).

At the deterministic limits log_alpha -> +inf every sample is z = 1, log_alpha ->
-inf every sample is z = 0 (tested). The deterministic test-time value is
``clamp(l + (r - l) sigmoid(log_alpha), 0, 1)``.

The gates are one implementation over model-family adapters
(:mod:`optprune.train_prune.families`): :class:`ViTFamily` here, the BERT family in
:mod:`optprune.train_prune.gates_bert`. Where the gates act on the ViT (all through
forward hooks, the ViT's code is untouched):

* head h of block b: the input columns of ``attn.proj`` of that head times z_head[b, h];
* FFN channel j of block b: input column j of ``mlp.fc2`` times z_ffn[b, j];
* hidden channel i: the token embeddings entering the blocks, every ``attn.proj`` and
  ``mlp.fc2`` output times z_hid[i]; every LayerNorm normalizes over the channels with
  z_hid > 0 only and outputs 0 on the others (as CoFi/Compresso do), so that a binary
  hidden mask computes exactly what the model with those channels physically removed
  computes (tested against :func:`prune_hidden`).

Exact parameter count of the ViT with H hidden channels, h_b heads and f_b FFN
channels kept in block b (head_dim d_h, C*p*p patch inputs, T tokens + 1 class
token, n_c classes):

    N(H, h, f) = n_c + a H + sum_b [3 d_h h_b + f_b + 4 d_h H h_b + 2 H f_b],
    a = C p^2 + 1 (patch conv) + 1 (cls) + (T + 1) (positions)
        + 6 per block (two LayerNorms, proj and fc2 biases) + 2 (final norm) + n_c (head).

N is bilinear in the hidden count and the head/FFN counts. The gates are
independent, so the expected size under the gate distribution is N evaluated at the
expected counts (E[H h_b] = E[H] E[h_b]):

    E[N] = n_c + a E[H] + sum_b [3 d_h E[h_b] + E[f_b] + 4 d_h E[H] E[h_b] + 2 E[H] E[f_b]],
    E[H] = sum_i P(z_hid_i > 0),  E[h_b] = sum_h P(z_head_bh > 0), ...

(tested against a Monte Carlo count). The expected sparsity is s = 1 - E[N] / N_dense
(fractions of the whole model's parameters, embeddings included). The Lagrangian
(Wang et al. 2020; CoFi; Compresso) with a target t(step) ramped linearly from 0 to
the target over ``warmup_steps``:

    L = L_task + lambda_1 (s - t) + lambda_2 (s - t)^2,

minimized over LoRA weights and log_alpha, maximized over lambda_1, lambda_2 (their
gradients are reversed). The math of the final allocation is in
``formulations/compresso.md``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._extras import require
from ..alloc import AllocationProblem, allocate
from ..errors import UnsupportedModuleError, ValidationError, check
from ..experiments.training import accuracy, fit
from ..nn.models import Block, FeedForward, MultiHeadAttention, ViT
from .families import (GateFamily, GateSites, Widths, base_named_params, keep_array,
                       param_count, prune_hidden_width, unwrap_peft)

__all__ = [
    "LIMIT_L", "LIMIT_R", "BETA", "HardConcreteGate", "CompressoGates", "GateMasks",
    "CompressoResult", "train_compresso", "own_rounding", "exact_allocation",
    "apply_gate_masks", "prune_hidden", "vit_param_count", "size_problem", "evaluate_masks",
    "masks_params", "ViTFamily", "family_of", "apply_masks",
]

LIMIT_L, LIMIT_R, BETA = -0.1, 1.1, 2.0 / 3.0
_EPS = 1e-6


class HardConcreteGate(nn.Module):
    """``n`` hard-concrete gates with one trainable ``log_alpha`` each.

    ``forward()`` returns a sample (training), the deterministic value (eval), or the
    fixed mask set with :meth:`fix`.
    """

    fixed: torch.Tensor

    def __init__(self, n: int, init_log_alpha: float = 2.0, init_std: float = 0.01,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        check(isinstance(n, int) and n > 0, "The number of gates", "a positive integer", n)
        self.n = n
        self.log_alpha = nn.Parameter(torch.full((n,), float(init_log_alpha))
                                      + init_std * torch.randn(n, generator=generator))
        self.register_buffer("fixed", torch.empty(0), persistent=False)

    def fix(self, mask: Any | None) -> None:
        """Use ``mask`` (n values, e.g. 0/1) instead of samples; None releases it."""
        if mask is None:
            self.fixed = torch.empty(0)
            return
        m = torch.as_tensor(np.asarray(mask, dtype=np.float32)).to(self.log_alpha.device)
        check(m.shape == (self.n,), "A fixed gate mask", f"of shape ({self.n},)", tuple(m.shape))
        self.fixed = m

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(self.n, generator=generator, dtype=self.log_alpha.dtype)
        u = u.clamp(_EPS, 1 - _EPS).to(self.log_alpha.device)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / BETA)
        return (s * (LIMIT_R - LIMIT_L) + LIMIT_L).clamp(0.0, 1.0)

    def deterministic(self) -> torch.Tensor:
        return (torch.sigmoid(self.log_alpha) * (LIMIT_R - LIMIT_L) + LIMIT_L).clamp(0.0, 1.0)

    def prob_open(self) -> torch.Tensor:
        """P(z > 0) = sigmoid(log_alpha - beta log(-l / r)), differentiable."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-LIMIT_L / LIMIT_R))

    def forward(self, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.fixed.numel():
            return self.fixed.to(self.log_alpha.dtype)
        return self.sample(generator) if self.training else self.deterministic()


@dataclass(frozen=True)
class GateMasks:
    """Binary keep masks: hidden channels, heads per block, FFN channels per block."""

    hidden: np.ndarray
    heads: tuple[np.ndarray, ...]
    ffn: tuple[np.ndarray, ...]

    def counts(self) -> dict[str, Any]:
        return {"hidden": int(self.hidden.sum()), "heads": [int(h.sum()) for h in self.heads],
                "ffn": [int(f.sum()) for f in self.ffn]}


def _blocks(vit: ViT) -> list[Block]:
    # ViTFamily.base checked every block's attention, FFN and LayerNorms
    return [cast(Block, b) for b in vit.blocks]


@dataclass(frozen=True)
class ViTFamily(GateFamily):
    """optprune's ViT (:class:`optprune.nn.models.ViT`, pre-norm) for the gates; the
    gate sites and the size model of the module docstring."""

    name = "optprune ViT"

    def base(self, model: nn.Module, gates: bool = False) -> ViT:
        """The ViT under ``model`` (itself, or the base model of a peft wrapper); every
        block must have optprune's MultiHeadAttention, FeedForward and two LayerNorms
        (all offenders are listed)."""
        vit = unwrap_peft(model)
        if not isinstance(vit, ViT):
            raise UnsupportedModuleError(
                f"Compresso gates attach to optprune.nn.models.ViT (heads, FFN channels and "
                f"the hidden width); got {type(model).__name__}. Build the model with ViT(...) "
                "or wrap it with peft's get_peft_model around a ViT.")
        bad = []
        for i, b in enumerate(vit.blocks):
            for attr, kind in (("attn", MultiHeadAttention), ("mlp", FeedForward),
                               ("ln1", nn.LayerNorm), ("ln2", nn.LayerNorm)):
                if not isinstance(getattr(b, attr, None), kind):
                    bad.append(f"blocks.{i}.{attr} ({type(getattr(b, attr, None)).__name__}, "
                               f"needs {kind.__name__})")
        if bad:
            raise UnsupportedModuleError("These layers have no gate site: " + "; ".join(bad)
                                         + ".")
        return vit

    def widths(self, base: nn.Module) -> Widths:
        vit = cast(ViT, base)
        blocks = _blocks(vit)
        return Widths(vit.patch_embed.out_channels, tuple(b.attn.num_heads for b in blocks),
                      tuple(b.mlp.fc1.out_features for b in blocks),
                      blocks[0].attn.head_dim if blocks else 0)

    def sites(self, base: nn.Module) -> GateSites:
        vit = cast(ViT, base)
        blocks = _blocks(vit)
        return GateSites(
            root=vit, head_in=tuple(b.attn.proj for b in blocks),
            ffn_in=tuple(b.mlp.fc2 for b in blocks), hidden_in=(vit.blocks,),
            hidden_out=tuple(m for b in blocks for m in (b.attn.proj, b.mlp.fc2)),
            norms=tuple(n for b in blocks for n in (b.ln1, b.ln2)) + (vit.norm,),
            post_norm=False)

    def size_coefficients(self, base: nn.Module) -> dict[str, float]:
        vit = cast(ViT, base)
        pe = vit.patch_embed
        n_c = vit.head.out_features
        tokens = vit.pos_embed.shape[1]
        blocks = _blocks(vit)
        dh = blocks[0].attn.head_dim if blocks else 0
        a = (pe.in_channels * pe.kernel_size[0] * pe.kernel_size[1] + 1) + 1 + tokens \
            + 6 * len(blocks) + 2 + n_c
        return {"const": float(n_c), "hidden": float(a), "head": 3.0 * dh, "ffn": 1.0,
                "hidden_head": 4.0 * dh, "hidden_ffn": 2.0}

    def dense_params(self, base: nn.Module) -> int:
        return int(sum(p.numel() for _, p in base_named_params(base)))

    def slot_layers(self, b: int) -> tuple[str, str]:
        return f"blocks.{b}.attn", f"blocks.{b}.mlp.fc1"

    def prune_slots(self, base: nn.Module, keep: Mapping[str, bool]) -> nn.Module:
        """Heads and FFN channels removed by optprune.nn.surgery.apply_mask."""
        from ..nn.structures import discover
        from ..nn.surgery import apply_mask

        vit = cast(ViT, base)
        pe = vit.patch_embed
        image = pe.kernel_size[0] * int(round(math.sqrt(vit.pos_embed.shape[1] - 1)))
        ss = discover(vit, (pe.in_channels, image, image))
        return apply_mask(ss, keep_array(ss, keep))

    def hidden_tensors(self, base: nn.Module) -> list[tuple[str, int]]:
        """Patch conv rows, class token and position columns, LayerNorm entries, q/k/v/
        fc1/head input columns, proj/fc2 output rows."""
        out = [("patch_embed.weight", 0), ("patch_embed.bias", 0), ("cls_token", 2),
               ("pos_embed", 2), ("norm.weight", 0), ("norm.bias", 0), ("head.weight", 1)]
        for i in range(len(_blocks(cast(ViT, base)))):
            p = f"blocks.{i}"
            out += [(f"{p}.{ln}.{t}", 0) for ln in ("ln1", "ln2") for t in ("weight", "bias")]
            out += [(f"{p}.{lin}.weight", 1) for lin in ("attn.q", "attn.k", "attn.v", "mlp.fc1")]
            out += [(f"{p}.{lin}.{t}", 0) for lin in ("attn.proj", "mlp.fc2")
                    for t in ("weight", "bias")]
        return out

    def set_hidden_width(self, base: nn.Module, k: int) -> None:
        for blk in _blocks(cast(ViT, base)):
            blk.attn.dim = k


def family_of(model: nn.Module) -> GateFamily:
    """The gate family of ``model`` (or of the base model of a peft wrapper): the
    project's ViT or a BERT-family encoder (scope ``"encoder"``)."""
    from .gates_bert import BertFamily

    base = unwrap_peft(model)
    if isinstance(base, ViT):
        return ViTFamily()
    if isinstance(getattr(getattr(base, "encoder", None), "layer", None), nn.ModuleList) \
            and isinstance(getattr(base, "embeddings", None), nn.Module):
        return BertFamily()
    raise UnsupportedModuleError(
        f"Compresso gates attach to optprune.nn.models.ViT or a BERT-family base model "
        f"(transformers.BertModel); got {type(model).__name__}. Build the model with "
        "ViT(...), pass a BertModel, or pass family= a GateFamily of your model.")


def vit_param_count(vit: ViT, hidden: float | torch.Tensor, heads: Any, ffn: Any) -> Any:
    """N(H, h, f) of the module docstring for kept counts (numbers or tensors, so the
    same formula gives the exact count of a mask and the expected count of gates).
    ``heads``/``ffn`` are sequences with one count per block."""
    fam = ViTFamily()
    return param_count(fam.size_coefficients(fam.base(vit)), hidden, heads, ffn)


class _GateList(nn.ModuleList):
    """A ModuleList of HardConcreteGate (typed iteration)."""

    def __iter__(self) -> Iterator[HardConcreteGate]:
        return cast(Iterator[HardConcreteGate], super().__iter__())


class CompressoGates(nn.Module):
    """Hard-concrete gates on every head, FFN channel and hidden channel of a model of
    a gate family (:mod:`optprune.train_prune.families`), applied through hooks.
    ``attach()`` installs the hooks, ``detach()`` removes them. One sample of every gate
    is drawn per forward pass (shared by the batch).

    ``model``: the model or a peft wrapper of it; ``family``: its :class:`GateFamily`
    (default :func:`family_of`: the project's ViT or a BERT-family encoder).
    ``hidden=False`` keeps the hidden gates fixed open."""

    def __init__(self, model: nn.Module, init_log_alpha: float = 2.0, seed: int = 0,
                 hidden: bool = True, family: GateFamily | None = None) -> None:
        super().__init__()
        if family is None:
            family = family_of(model)
        check(isinstance(family, GateFamily), "The 'family' of CompressoGates",
              "a GateFamily (optprune.train_prune.families)", type(family).__name__)
        base = family.base(model, gates=True)
        w = family.widths(base)
        self.family = family
        self._model = [base]  # a list keeps the model out of this module's parameters
        self.head_dim = int(w.head_dim)
        gen = torch.Generator().manual_seed(seed)
        self.head = _GateList([HardConcreteGate(h, init_log_alpha, generator=gen)
                               for h in w.heads])
        self.ffn = _GateList([HardConcreteGate(f, init_log_alpha, generator=gen)
                              for f in w.ffn])
        self.use_hidden = hidden
        self.hidden = HardConcreteGate(w.hidden, init_log_alpha, generator=gen)
        if not hidden:
            self.hidden.fix(np.ones(w.hidden))
        self._handles: list[RemovableHandle] = []
        self._z: dict[str, Any] = {}
        self.generator = torch.Generator().manual_seed(seed)
        self._coef = family.size_coefficients(base)
        dense, formula = self.dense_params(), self.param_count(w.hidden, w.heads, w.ffn)
        if abs(formula - dense) > 0.5:
            raise UnsupportedModuleError(
                f"The size model of {type(base).__name__} predicts {formula:.0f} parameters "
                f"at its own widths, the model has {dense}: it holds parameters the "
                f"{family.name} layout does not (extra modules, a tied or shared tensor?).")

    @property
    def model(self) -> nn.Module:
        """The gated base model."""
        return self._model[0]

    # ------------------------------------------------------------ hooks
    def attach(self) -> "CompressoGates":
        check(not self._handles, "The gates", "detached before attaching again", "attached")
        s = self.family.sites(self.model)
        h = self._handles
        h.append(s.root.register_forward_pre_hook(self._draw))
        for m in s.hidden_in:
            h.append(m.register_forward_pre_hook(self._scale_hidden_in))
        for b, (head_in, ffn_in) in enumerate(zip(s.head_in, s.ffn_in)):
            h.append(head_in.register_forward_pre_hook(self._head_in(b)))
            h.append(ffn_in.register_forward_pre_hook(self._ffn_in(b)))
        for m in s.hidden_out:
            h.append(m.register_forward_hook(self._hidden_out))
        for ln in s.norms:
            h.append(ln.register_forward_hook(self._ln_out if s.post_norm else self._masked_ln))
        return self

    def detach(self) -> None:
        for hd in self._handles:
            hd.remove()
        self._handles.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def _draw(self, _m: nn.Module, _args: tuple[Any, ...]) -> None:
        g = self.generator if self.training else None
        self._z = {"hidden": self.hidden(g), "head": [gt(g) for gt in self.head],
                   "ffn": [gt(g) for gt in self.ffn]}

    def _scale_hidden_in(self, _m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * self._z["hidden"],) + tuple(args[1:])

    def _hidden_out(self, _m: nn.Module, _args: tuple[Any, ...],
                    out: torch.Tensor) -> torch.Tensor:
        return out * self._z["hidden"]

    def _head_in(self, b: int) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            z = self._z["head"][b].repeat_interleave(self.head_dim)
            return (args[0] * z,) + tuple(args[1:])
        return hook

    def _ffn_in(self, b: int) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (args[0] * self._z["ffn"][b],) + tuple(args[1:])
        return hook

    def _masked_ln(self, m: nn.Module, args: tuple[Any, ...],
                   _out: torch.Tensor) -> torch.Tensor | None:
        """LayerNorm over the open hidden channels only, 0 on the closed ones."""
        assert isinstance(m, nn.LayerNorm)
        z = self._z["hidden"]
        if bool((z > 0).all()):
            return None
        x = args[0]
        idx = torch.nonzero(z > 0).flatten()
        if idx.numel() == 0:
            return torch.zeros_like(x)
        y = F.layer_norm(x.index_select(-1, idx), (idx.numel(),), m.weight.index_select(0, idx),
                         m.bias.index_select(0, idx), m.eps)
        return torch.zeros_like(x).index_copy(x.dim() - 1, idx, y)

    def _ln_out(self, m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        """LayerNorm over the open hidden channels, then the hidden mask (post-norm:
        the LayerNorm output is the residual stream)."""
        y = self._masked_ln(m, args, out)
        return (out if y is None else y) * self._z["hidden"]

    # ------------------------------------------------------------ sizes
    def expected_counts(self) -> dict[str, Any]:
        """E[H], E[h_b], E[f_b] as differentiable tensors."""
        eh = self.hidden.prob_open().sum() if self.use_hidden else \
            torch.tensor(float(self.hidden.n))
        return {"hidden": eh, "heads": [g.prob_open().sum() for g in self.head],
                "ffn": [g.prob_open().sum() for g in self.ffn]}

    def param_count(self, hidden: Any, heads: Any, ffn: Any) -> Any:
        """N(H, h, f) for kept counts (numbers or tensors)."""
        return param_count(self._coef, hidden, heads, ffn)

    def size_coefficients(self) -> dict[str, float]:
        """The coefficients of N: const, hidden, head, ffn, hidden_head, hidden_ffn."""
        return dict(self._coef)

    def slot_layers(self, b: int) -> tuple[str, str]:
        """Layer names of block b's head and FFN slots (structure ids are
        ``<layer>:head:<h>`` and ``<layer>:ffn:<j>``)."""
        return self.family.slot_layers(b)

    def expected_params(self) -> torch.Tensor:
        """E[N] of the module docstring (differentiable in every log_alpha)."""
        c = self.expected_counts()
        return cast(torch.Tensor, self.param_count(c["hidden"], c["heads"], c["ffn"]))

    def dense_params(self) -> int:
        return self.family.dense_params(self.model)

    def masks_params(self, masks: GateMasks) -> int:
        """N of ``masks``."""
        return _count_of(self._coef, masks)

    def expected_sparsity(self) -> torch.Tensor:
        return 1.0 - self.expected_params() / self.dense_params()

    def max_sparsity(self, min_hidden: int = 1) -> float:
        """The largest reachable sparsity: every head and FFN channel closed and
        ``min_hidden`` hidden channels open."""
        dense = self.dense_params()
        h = min_hidden if self.use_hidden else self.hidden.n
        least = self.param_count(float(h), [0] * len(self.head), [0] * len(self.ffn))
        return 1.0 - float(least) / dense

    def fix(self, masks: GateMasks | None) -> None:
        """Run with binary ``masks`` (None: back to sampled / deterministic gates)."""
        if masks is None:
            for g in [*self.head, *self.ffn]:
                g.fix(None)
            self.hidden.fix(None if self.use_hidden else np.ones(self.hidden.n))
            return
        self.hidden.fix(masks.hidden)
        for g, m in zip(self.head, masks.heads):
            g.fix(m)
        for g, m in zip(self.ffn, masks.ffn):
            g.fix(m)

    def scores(self, kind: str = "logit") -> dict[str, Any]:
        """The learned gate scores as float64 numpy arrays: ``"logit"`` (default) is
        log P(z > 0) - log P(z = 0) = log_alpha - beta log(-l / r), so that the sum
        over kept gates plus a constant is the log-probability of the mask under the
        learned gates; ``"prob"`` is P(z > 0)."""
        check(kind in ("logit", "prob"), "The gate score kind", "'logit' or 'prob'", kind)

        def one(g: HardConcreteGate) -> np.ndarray:
            la = g.log_alpha.detach().double()
            v = la - BETA * math.log(-LIMIT_L / LIMIT_R)
            return (v if kind == "logit" else torch.sigmoid(v)).numpy()

        return {"hidden": one(self.hidden), "heads": [one(g) for g in self.head],
                "ffn": [one(g) for g in self.ffn]}


def _count_of(c: Mapping[str, float], masks: GateMasks) -> int:
    return int(round(float(param_count(c, float(masks.hidden.sum()),
                                       [float(h.sum()) for h in masks.heads],
                                       [float(f.sum()) for f in masks.ffn]))))


def masks_params(vit: ViT, masks: GateMasks) -> int:
    """N of ``masks`` on the ViT ``vit``."""
    fam = ViTFamily()
    return _count_of(fam.size_coefficients(fam.base(vit)), masks)


# ------------------------------------------------------------------ final masks
def own_rounding(gates: CompressoGates) -> GateMasks:
    """Compresso's (CoFi's) deterministic mask: in every gate vector keep
    k = round(sum_i P(z_i > 0)) gates, those with the largest log_alpha."""
    def one(g: HardConcreteGate) -> np.ndarray:
        with torch.no_grad():
            k = int(round(float(g.prob_open().sum())))
            order = np.argsort(-g.log_alpha.detach().numpy(), kind="stable")
        keep = np.zeros(g.n, dtype=bool)
        keep[order[:k]] = True
        return keep

    hidden = one(gates.hidden) if gates.use_hidden else np.ones(gates.hidden.n, dtype=bool)
    return GateMasks(hidden, tuple(one(g) for g in gates.head), tuple(one(g) for g in gates.ffn))


def size_problem(gates: CompressoGates, scores: dict[str, Any] | None = None,
                 min_hidden: int = 1) -> AllocationProblem:
    """The allocation problem of the gates: one structure per gate, cost ``params``
    exact: N(H, h, f) with the bilinear terms as pair costs
    (formulations/compresso.md). The score of a gate is its logit
    log P(z > 0) - log P(z = 0) (or ``scores``): the maximum over masks within the
    budget is then the most probable mask under the learned (independent) gates
    that meets the budget."""
    s = scores or gates.scores()
    c = gates.size_coefficients()
    ids: list[str] = []
    layers: list[str] = []
    kinds: list[str] = []
    sc: list[Any] = []
    cost: list[float] = []

    def add(n: int, layer: str, kind: str, id_prefix: str, scores: Any) -> None:
        """``n`` structures of one (layer, kind), each costing the kind's coefficient."""
        ids.extend(f"{id_prefix}:{i}" for i in range(n))
        layers.extend([layer] * n)
        kinds.extend([kind] * n)
        sc.extend(list(scores))
        cost.extend([c[kind]] * n)

    nh = gates.hidden.n
    add(nh, "hidden", "hidden", "hidden", s["hidden"])
    for b, (gh, gf) in enumerate(zip(gates.head, gates.ffn)):
        attn, mlp = gates.slot_layers(b)
        add(gh.n, attn, "head", f"{attn}:head", s["heads"][b])
        add(gf.n, mlp, "ffn", f"{mlp}:ffn", s["ffn"][b])
    p = AllocationProblem(ids, layers, kinds, np.asarray(sc),
                          {"params": np.asarray(cost, dtype=np.float64)},
                          fixed_costs={"params": c["const"]}, name="compresso")
    for b in range(len(gates.head)):
        attn, mlp = gates.slot_layers(b)
        p.add_pair_cost("params", ("hidden", "hidden"), (attn, "head"), c["hidden_head"])
        p.add_pair_cost("params", ("hidden", "hidden"), (mlp, "ffn"), c["hidden_ffn"])
    if gates.use_hidden:
        p.add_count_bounds("hidden", "hidden", min=min_hidden)
    else:
        p.add_count_bounds("hidden", "hidden", min=nh)
    return p


def _masks_from_keep(gates: CompressoGates, keep: np.ndarray) -> GateMasks:
    nh = gates.hidden.n
    hidden = keep[:nh].astype(bool)
    pos = nh
    heads, ffn = [], []
    for gh, gf in zip(gates.head, gates.ffn):
        heads.append(keep[pos:pos + gh.n].astype(bool))
        pos += gh.n
        ffn.append(keep[pos:pos + gf.n].astype(bool))
        pos += gf.n
    return GateMasks(hidden, tuple(heads), tuple(ffn))


def exact_allocation(gates: CompressoGates, target: float, min_hidden: int = 1,
                     min_fill: float | None = 0.99, time_limit_s: float | None = 60.0,
                     backend: str = "highs") -> tuple[GateMasks, dict[str, Any]]:
    """The most probable mask under the learned gates (largest sum of gate logits)
    with params <= (1 - target) N_dense as a hard budget, exactly (optprune.alloc).
    ``min_fill`` also asks params >= min_fill (1 - target) N_dense, so the mask lands
    on the target rather than below it when the gates' own preference is sparser
    (None: no lower bound). Returns the masks and the solver's proof."""
    _check_target(gates, target, min_hidden, min_fill, "exact_allocation")
    p = size_problem(gates, min_hidden=min_hidden)
    dense = gates.dense_params()
    assert abs(p.dense_total("params") - dense) < 1e-6 * dense, "size model != model"
    hi = (1.0 - target) * dense
    p.add_budget("params", max=hi, min=None if min_fill is None else min_fill * hi)
    r = allocate(p, backend=backend, time_limit_s=time_limit_s, rel_gap=1e-6, baselines=False)
    if r.keep is None:
        raise ValidationError(f"The solver stopped ({r.solve.termination.value}) without a mask; "
                              "raise time_limit_s.")
    d = r.to_dict()
    proof = {k: d[k] for k in ("termination", "objective", "bound", "gap", "solve_time_s")}
    return _masks_from_keep(gates, r.keep), proof


def _check_target(gates: CompressoGates, target: float, min_hidden: int = 1,
                  min_fill: float | None = None, fn: str = "") -> None:
    """``target`` reachable by the gates; ``min_fill`` (of the final allocation ``fn``)
    in (0, 1] or None."""
    smax = gates.max_sparsity(min_hidden)
    check(isinstance(target, (int, float)) and math.isfinite(target) and 0 < target < smax,
          "The sparsity 'target'", f"in (0, {smax:.4f}) (the most these gates can remove: "
          f"every head and FFN channel and all but {min_hidden} hidden channels)", target,
          "Lower the target.")
    if min_fill is not None:
        check(isinstance(min_fill, (int, float)) and 0 < min_fill <= 1,
              f"The 'min_fill' of {fn}", "in (0, 1] or None", min_fill)


# ------------------------------------------------------------------ surgery
def apply_masks(family: GateFamily, model: nn.Module, masks: GateMasks) -> nn.Module:
    """The physically pruned model (a copy) of a gate family: heads and FFN channels
    removed by the family's surgery, hidden channels by
    :func:`~optprune.train_prune.families.prune_hidden_width`."""
    base = family.base(model)
    w = family.widths(base)
    ok = (len(masks.heads) == len(w.heads) == len(masks.ffn)
          and all(np.asarray(h).shape == (n,) for h, n in zip(masks.heads, w.heads))
          and all(np.asarray(f).shape == (n,) for f, n in zip(masks.ffn, w.ffn)))
    check(ok, "The gate masks", f"one head mask per block of sizes {list(w.heads)} and one FFN "
          f"mask of sizes {list(w.ffn)}", {"heads": [np.asarray(h).size for h in masks.heads],
                                           "ffn": [np.asarray(f).size for f in masks.ffn]})
    keep: dict[str, bool] = {}
    for b, (hm, fm) in enumerate(zip(masks.heads, masks.ffn)):
        attn, mlp = family.slot_layers(b)
        keep.update((f"{attn}:head:{h}", bool(k)) for h, k in enumerate(hm))
        keep.update((f"{mlp}:ffn:{j}", bool(k)) for j, k in enumerate(fm))
    return prune_hidden_width(family, family.prune_slots(base, keep), masks.hidden,
                              inplace=True)


def prune_hidden(vit: ViT, keep_hidden: Any, inplace: bool = False) -> ViT:
    """Remove the dropped hidden channels of a plain ViT physically: patch conv rows,
    class token and position columns, LayerNorm entries, q/k/v/fc1/head input
    columns, proj/fc2 output rows."""
    return cast(ViT, prune_hidden_width(ViTFamily(), vit, keep_hidden, inplace))


def apply_gate_masks(vit: ViT, masks: GateMasks) -> ViT:
    """The physically pruned ViT (a copy): heads and FFN channels removed with
    optprune.nn.surgery.apply_mask, hidden channels with :func:`prune_hidden`."""
    return cast(ViT, apply_masks(ViTFamily(), vit, masks))


# ------------------------------------------------------------------ training
@dataclass
class CompressoResult:
    """The trained gates, the peft model (LoRA on the frozen base model) and the history."""

    gates: CompressoGates
    peft_model: nn.Module
    target: float
    history: list[dict[str, float]] = field(default_factory=list)
    lambdas: tuple[float, float] = (0.0, 0.0)
    train_time_s: float = 0.0

    def merged_model(self) -> nn.Module:
        """A copy of the base model with the LoRA adapters merged in."""
        peft_copy: Any = copy.deepcopy(self.peft_model)
        model: nn.Module = peft_copy.merge_and_unload()
        for p in model.parameters():  # the base was frozen for the gate training only
            p.requires_grad_(True)
        return model

    def merged_vit(self) -> ViT:
        """A copy of the ViT with the LoRA adapters merged into q and v."""
        return cast(ViT, self.merged_model())


def _check_schedule(fn: str, steps: int, warmup_steps: int | None) -> int:
    """``steps`` and ``warmup_steps`` of a gate training (default warmup: half the
    steps); the warmup."""
    check(isinstance(steps, int) and steps > 0, f"The 'steps' of {fn}", "a positive integer",
          steps)
    warmup = max(1, steps // 2) if warmup_steps is None else warmup_steps
    check(isinstance(warmup, int) and 0 < warmup <= steps, f"The 'warmup_steps' of {fn}",
          f"an integer in [1, steps={steps}]", warmup)
    return warmup


def _lora_gates(model: nn.Module, lora_targets: list[str], target: float,
                gates_of: Callable[[nn.Module], CompressoGates], *, lora_rank: int,
                lora_alpha: float, min_hidden: int, seed: int
                ) -> tuple[nn.Module, CompressoGates]:
    """A deep copy of ``model`` with its weights frozen and LoRA adapters (peft) on the
    layers named ``lora_targets`` (after ``torch.manual_seed(seed)``), and its gates
    ``gates_of(peft model)``, checked to reach ``target``."""
    peft = require("peft", "hf", "LoRA adapters of Compresso")
    torch.manual_seed(seed)
    base = copy.deepcopy(model)
    for p in base.parameters():
        p.requires_grad_(False)
    cfg = peft.LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=lora_targets,
                          lora_dropout=0.0)
    pm = peft.get_peft_model(base, cfg)
    gates = gates_of(pm)
    _check_target(gates, target, min_hidden)
    return pm, gates


def train_compresso(vit: ViT, x: torch.Tensor, y: torch.Tensor, target: float, *,
                    steps: int = 300, warmup_steps: int | None = None, batch_size: int = 64,
                    lr: float = 3e-3, gate_lr: float = 0.05, lambda_lr: float = 0.2,
                    lora_rank: int = 8, lora_alpha: float = 16.0, init_log_alpha: float = 2.0,
                    hidden: bool = True, min_hidden: int = 1, teacher: nn.Module | None = None,
                    distill_weight: float = 0.0, loss_fn: Callable | None = None,
                    seed: int = 0, checkpoint_every: int = 20, log_every: int = 10
                    ) -> CompressoResult:
    """Train hard-concrete gates and LoRA (rank ``lora_rank`` on q and v, base weights
    frozen) on (x, y) towards the sparsity ``target`` (fraction of the ViT's
    parameters to remove), with the Lagrangian of the module docstring.

    ``vit`` is not modified (a deep copy is trained). A non-finite loss restores the
    last good checkpoint (taken every ``checkpoint_every`` steps) and raises
    TrainingDivergedError.
    """
    require("peft", "hf", "LoRA adapters of Compresso")
    family = ViTFamily()
    family.base(vit)
    warmup_steps = _check_schedule("train_compresso", steps, warmup_steps)
    check(x.shape[0] == y.shape[0] and x.shape[0] > 0, "The data of train_compresso",
          "non-empty x and y of equal length", (tuple(x.shape), tuple(y.shape)))
    pm, gates = _lora_gates(
        vit, ["q", "v"], target,
        lambda m: CompressoGates(m, init_log_alpha, seed, hidden, family=family),
        lora_rank=lora_rank, lora_alpha=lora_alpha, min_hidden=min_hidden, seed=seed)
    loss_fn = loss_fn or F.cross_entropy

    def batch_loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        out = pm(xb)
        task = loss_fn(out, yb)
        if teacher is not None and distill_weight > 0:
            with torch.no_grad():
                t_out = teacher(xb)
            task = task + distill_weight * F.kl_div(
                F.log_softmax(out, -1), F.log_softmax(t_out, -1), log_target=True,
                reduction="batchmean")
        return task

    return lagrangian_train(pm, gates, batch_loss, x, y, target, steps=steps,
                            warmup_steps=warmup_steps, batch_size=batch_size, lr=lr,
                            gate_lr=gate_lr, lambda_lr=lambda_lr, seed=seed,
                            checkpoint_every=checkpoint_every, log_every=log_every)


class _Lagrangian(nn.Module):
    """What the gate training updates, in one module: the peft model (only its LoRA
    adapters train), the gates and the two multipliers."""

    def __init__(self, pm: nn.Module, gates: CompressoGates) -> None:
        super().__init__()
        self.pm, self.gates = pm, gates
        self.lam = nn.Parameter(torch.zeros(2))


def lagrangian_train(pm: nn.Module, gates: CompressoGates,
                     batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     x: torch.Tensor, y: torch.Tensor, target: float, *, steps: int,
                     warmup_steps: int, batch_size: int, lr: float, gate_lr: float,
                     lambda_lr: float, seed: int = 0, checkpoint_every: int = 20,
                     log_every: int = 10) -> CompressoResult:
    """The training shared by every architecture's gates, by the kit's
    :func:`~optprune.experiments.fit` (``steps`` random batches, constant learning
    rates): AdamW on the trainable parameters of ``pm`` (the LoRA adapters), the gates'
    log_alpha and the two multipliers (gradient reversed), with ``batch_loss(xb, yb)``
    the task loss of a batch and the Lagrangian of the module docstring. A non-finite
    loss restores adapters, gates and multipliers to the last checkpoint (every
    ``checkpoint_every`` steps) and raises TrainingDivergedError."""
    dense = gates.dense_params()
    work = _Lagrangian(pm, gates)
    lam = work.lam
    lam.register_hook(lambda g: -g)  # gradient ascent on the multipliers
    groups = [
        {"params": [p for p in pm.parameters() if p.requires_grad], "lr": lr, "weight_decay": 0.0},
        {"params": list(gates.parameters()), "lr": gate_lr, "weight_decay": 0.0},
        {"params": [lam], "lr": lambda_lr, "weight_decay": 0.0},
    ]
    history: list[dict[str, float]] = []
    now: dict[str, Any] = {}

    def loss(xb: torch.Tensor, yb: torch.Tensor, step: int, _epoch: int) -> torch.Tensor:
        task = batch_loss(xb, yb)
        s = 1.0 - gates.expected_params() / dense
        t = target * min(1.0, (step + 1) / warmup_steps)
        now.update(task=task, s=s, t=t)
        return task + lam[0] * (s - t) + lam[1] * (s - t) ** 2

    def log(step: int) -> None:  # after the update, as the multipliers stand then
        if step % log_every == 0 or step == steps - 1:
            history.append({"step": step, "task_loss": float(now["task"].detach()),
                            "expected_sparsity": float(now["s"].detach()),
                            "target_now": now["t"], "lambda_1": float(lam[0].detach()),
                            "lambda_2": float(lam[1].detach())})

    gates.attach()
    try:
        h = fit(work, x, y, steps=steps, batch_size=batch_size, params=groups,
                schedule="constant", seed=seed, batch_loss=loss, after_step=log,
                checkpoint_every=checkpoint_every, hint="Lower lr / gate_lr / lambda_lr.")
    finally:
        gates.detach()
    return CompressoResult(gates, pm, target, history,
                           (float(lam[0].detach()), float(lam[1].detach())), h.time_s)


def evaluate_masks(result: CompressoResult, masks: GateMasks, x: torch.Tensor, y: torch.Tensor
                   ) -> dict[str, Any]:
    """Physically prune the merged ViT to ``masks``; its parameters, sparsity, distance
    from the target and accuracy on (x, y)."""
    merged = result.merged_vit()
    dense = sum(p.numel() for p in merged.parameters())
    pruned = apply_gate_masks(merged, masks)
    n = sum(p.numel() for p in pruned.parameters())
    assert n == masks_params(merged, masks), "size formula != pruned model"
    sparsity = 1.0 - n / dense
    return {"params": n, "dense_params": dense, "sparsity": sparsity,
            "distance_from_target": sparsity - result.target,
            "accuracy": accuracy(pruned, x, y), "counts": masks.counts(), "model": pruned}
