"""Loss-unit saliency of every structure: the mask-gradient Fisher (math in
formulations/reconstruction.md, section "Fisher").

Put a mask m_g = 1 on every group (it multiplies the group's input channels at every
consumer, so m_g = 0 is exactly the removal of g). The loss of the pruned model is
measured against the dense model's own outputs (``divergence``): the KL divergence
of the dense predictive distribution to the pruned one for logits, 1 - cos for
L2-normalised embeddings, half the mean squared error otherwise. At m = 1 that loss
is 0 and so is its gradient; its Hessian in m is the Gauss-Newton matrix
H = E_x[J^T F_out J] (J = d output / d m, F_out the output Fisher: diag(p) - p p^T
for a softmax, the identity for squared errors). Its diagonal is estimated without
ever forming J, from per-sample gradients of a *pseudo-loss* whose squared gradient
has expectation J^T F_out J:

* logits: the cross-entropy of labels drawn from the model's own prediction
  (E_y[(p - e_y)(p - e_y)^T] = diag(p) - p p^T);
* embeddings / hidden states: r . output with r ~ N(0, I) (E[r r^T] = I).

Removing a set R then costs about 1/2 sum_{g,h in R} H_gh (second order; the first
order term is 0 at the dense model). ``saliency`` = 1/2 H_gg is that cost for one
group alone, in the unit of the loss, comparable across heads, FFN channels,
neurons, conv channels and layers. ``blocks`` holds H restricted to each (layer, kind):
the within-layer interactions. With ``labels="data"`` and targets given, the
pseudo-loss uses the true labels instead (the empirical Fisher of Kwon et al. 2022).

Per-sample gradients come from one backward per batch: the masks are (batch, channels)
tensors, so d(sum of per-sample losses)/d m[b] is sample b's own gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ValidationError, check
from .calib import model_device, model_output, n_samples, run_model
from .importance import register_importance
from .structures import StructureSet

__all__ = ["FisherResult", "divergence", "mask_fisher", "output_kind"]

OUTPUT_KINDS = ("logits", "embedding", "hidden")


def output_kind(structures: StructureSet, out: torch.Tensor | None = None) -> str:
    """How the model's output is compared with the dense one: "embedding" for a
    sentence encoder's normalised embeddings (``TokenIdsEncoder``), "hidden" for its
    token states, else "logits"."""
    mode = getattr(structures.model, "output", None)
    if mode == "embedding":
        return "embedding"
    if mode == "hidden":
        return "hidden"
    return "logits"


def divergence(out: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample loss of ``out`` against the dense ``ref`` (shape (N,)): mean over
    positions of KL(softmax(ref) || softmax(out)) for logits, 1 - cos for embeddings,
    1/2 mean over positions of ||out - ref||^2 for hidden states."""
    check(kind in OUTPUT_KINDS, "The output kind", f"one of {OUTPUT_KINDS}", kind)
    if kind == "logits":
        lp, lq = F.log_softmax(ref.float(), -1), F.log_softmax(out.float(), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        return kl.reshape(kl.shape[0], -1).mean(1)
    if kind == "embedding":
        cos = F.cosine_similarity(out.float(), ref.float(), dim=-1)
        return 1.0 - cos.reshape(out.shape[0], -1).mean(1)
    d = 0.5 * ((out.float() - ref.float()) ** 2).sum(-1)
    return d.reshape(d.shape[0], -1).mean(1)


def _pseudo_loss(out: torch.Tensor, kind: str, gen: torch.Generator,
                 labels: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Sum over samples of a loss whose per-sample gradient g satisfies
    E[g g^T] = positions * (the Gauss-Newton matrix of ``divergence``); returns it and
    the number of positions per sample."""
    if kind == "logits":
        logits = out.reshape(out.shape[0], -1, out.shape[-1]).float()
        t = logits.shape[1]
        if labels is None:
            with torch.no_grad():
                p = logits.softmax(-1).reshape(-1, logits.shape[-1]).cpu()
                y = torch.multinomial(p, 1, generator=gen).view(logits.shape[0], t)
            y = y.to(logits.device)
        else:
            y = labels.reshape(logits.shape[0], -1).to(logits.device).long()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                               reduction="sum"), t
    o = out.reshape(out.shape[0], -1, out.shape[-1]).float()
    r = torch.randn(o.shape, generator=gen).to(o.device)
    return (o * r).sum(), o.shape[1]


@dataclass(frozen=True)
class FisherResult:
    """``diag``: H_gg per group; ``saliency`` = 1/2 diag (loss increase of removing g
    alone); ``blocks``: (layer, kind) -> H over that slot's groups (slot order of
    ``StructureSet.layer_kind_index``); ``n_samples``; ``kind`` of the output."""

    diag: np.ndarray
    blocks: dict[tuple[str, str], np.ndarray] = field(repr=False)
    n_samples: int
    kind: str
    draws: int

    @property
    def saliency(self) -> np.ndarray:
        return 0.5 * self.diag


def _in_width(mod: nn.Module) -> int:
    if isinstance(mod, nn.Linear):
        return mod.in_features
    if isinstance(mod, nn.Conv2d):
        return mod.in_channels
    raise ValidationError(f"Fisher masks need Linear or Conv2d consumers; got {type(mod).__name__}.")


def mask_fisher(structures: StructureSet, data: Any, *, labels: str = "model", draws: int = 1,
                seed: int = 0, batch_size: int = 64, blocks: bool = True,
                max_block: int = 4096) -> FisherResult:
    """The Gauss-Newton diagonal (and per-slot blocks) of the loss against the dense
    model in the structures' masks, averaged over the samples of ``data`` and
    ``draws`` pseudo-loss draws. ``labels="data"`` uses the data's targets (the
    empirical Fisher; the data must carry labels); ``"model"`` draws them from the
    model (the Gauss-Newton matrix of the KL to the dense model)."""
    check(labels in ("model", "data"), "The 'labels' of mask_fisher", "'model' or 'data'", labels)
    check(isinstance(draws, int) and draws >= 1, "The 'draws' of mask_fisher", "an int >= 1", draws)
    model = structures.model
    named = dict(model.named_modules())
    members = {c: (ch, gs) for c, (_w, ch, gs) in structures.consumer_index().items()}
    n = len(structures.groups)
    kind = output_kind(structures)
    slots = structures.layer_kind_index()
    block_acc = {s: np.zeros((ix.size, ix.size)) for s, ix in slots.items()
                 if blocks and ix.size <= max_block}
    diag = np.zeros(n)
    gen = torch.Generator().manual_seed(seed)
    masks: dict[str, torch.Tensor] = {}

    def make_hook(cname: str, conv: bool):
        def hook(_m, args):
            x = args[0]
            m = masks[cname]
            if x.shape[0] != m.shape[0]:
                raise ValidationError(
                    f"The input of {cname!r} does not have the batch as its first dimension "
                    f"(shape {tuple(x.shape)}); Fisher masks need per-sample inputs.")
            shape = (m.shape[0], -1, 1, 1) if conv else \
                (m.shape[0],) + (1,) * (x.dim() - 2) + (m.shape[1],)
            return (x * m.to(x.dtype).view(shape),) + tuple(args[1:])
        return hook

    handles = [named[c].register_forward_pre_hook(make_hook(c, isinstance(named[c], nn.Conv2d)))
               for c in members]
    was = model.training
    model.eval()
    total = 0
    dev = model_device(model)
    try:
        for x, y in structures.batches(data, batch_size, "the Fisher saliency",
                                       need_targets=labels == "data"):
            b = n_samples(x)
            # One forward per batch; each draw's pseudo-loss is differentiated through it.
            for c in members:
                masks[c] = torch.ones(b, _in_width(named[c]), device=dev, requires_grad=True)
            out = model_output(run_model(model, x, "the Fisher saliency"))
            if not bool(torch.isfinite(out).all()):
                raise ValidationError(
                    "The model's output on the calibration data must be finite; got NaN "
                    "or inf. Check the data for NaN and the model for diverged weights.")
            for d in range(draws):
                loss, positions = _pseudo_loss(out, kind, gen, y if labels == "data" else None)
                grads = torch.autograd.grad(loss, [masks[c] for c in members], allow_unused=True,
                                            retain_graph=d < draws - 1)
                per_group = np.zeros((b, n))
                for (ch, gs), gr in zip(members.values(), grads):
                    if gr is None:
                        continue
                    g64 = gr.detach().to(torch.float64).cpu().numpy()
                    np.add.at(per_group.T, gs, g64[:, ch].T)
                per_group /= np.sqrt(positions)
                diag += (per_group ** 2).sum(0)
                for s, acc in block_acc.items():
                    gsl = per_group[:, slots[s]]
                    acc += gsl.T @ gsl
            total += b
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    norm = 1.0 / max(total * draws, 1)
    return FisherResult(diag * norm, {s: a * norm for s, a in block_acc.items()}, total, kind,
                        draws)


@register_importance("fisher")
def fisher(structures: StructureSet, data: Any = None, **kw: Any) -> np.ndarray:
    """1/2 H_gg of :func:`mask_fisher` (options passed through; ``blocks`` off): the
    loss increase of removing each group alone, in the unit of the loss."""
    kw.setdefault("blocks", False)
    return mask_fisher(structures, data, **kw).saliency
