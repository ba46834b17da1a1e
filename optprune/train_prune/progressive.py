"""LoRAShear-style progressive structured pruning with knowledge recovery.

1. Minimally removable groups: ``optprune.nn.structures.discover`` (coupled
   parameters that must go together: a head's q/k/v rows and proj columns, an FFN
   channel's fc1 row and fc2 column; with LoRA on q/v also the matching rows of the
   adapters' B matrices, see :func:`removal_masks`).
2. Importance per group (``optprune.nn.importance``; default Taylor); within every
   (layer, kind) slot the ``protect_fraction`` most important groups are marked
   unprunable.
3. The set to remove is chosen exactly by ``optprune.alloc``: maximize the retained
   importance subject to kept parameters <= (1 - reduction) N_dense (exact costs from
   ``problem_from_structures``), at least ``min_keep`` per slot, and per slot at
   least as many kept groups as it has protected ones. Within a slot every group
   costs the same, so an optimal selection with k >= m kept groups keeps the top-k
   by score, which contains the m protected ones (checked after the solve).
4. Progressive shrinking: for P steps training continues on every parameter (or on
   the LoRA adapters only, base frozen); after optimizer step t = 0..P-1 every entry
   of a removed group is multiplied by

       (P - t - 1) / (P - t),

   so without gradient changes its value after step t is w0 (P - t - 1) / P (a linear
   ramp), and after the last step (factor 0/1) it is exactly zero whatever the
   gradients did (tested).
5. Physical removal (``optprune.nn.surgery.apply_mask``; the pruned model computes
   exactly what the zeroed dense model computes, tested), then recovery
   fine-tuning of the small model.

Every training loop checks the loss: a NaN or infinite loss restores the last good
checkpoint and raises :class:`TrainingDivergedError` carrying it.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .._extras import require
from ..alloc import allocate
from ..errors import ValidationError, check
from ..experiments.training import FitHistory, fit
from ..nn.importance import score
from ..nn.pruning import build_problem
from ..nn.structures import StructureSet, discover
from ..nn.surgery import apply_mask

__all__ = ["RemovalPlan", "ProgressiveReport", "plan_removal", "shrink_factor", "train_steps",
           "progressive_shrink", "progressive_prune", "one_shot_prune", "add_lora",
           "merge_lora", "removal_masks", "max_reduction"]


def shrink_factor(t: int, period: int) -> float:
    """(P - t - 1) / (P - t) for step t = 0..P-1 (0 at the last step)."""
    check(isinstance(period, int) and period > 0, "The shrink period P", "a positive integer",
          period)
    check(isinstance(t, int) and 0 <= t < period, "The shrink step t", f"in [0, {period - 1}]", t)
    return (period - t - 1) / (period - t)


@dataclass(frozen=True)
class RemovalPlan:
    """Which groups go (``keep`` False), which are protected, and the solver's proof."""

    structures: StructureSet = field(repr=False)
    scores: np.ndarray = field(repr=False)
    keep: np.ndarray = field(repr=False)
    protected: np.ndarray = field(repr=False)
    reduction: float
    predicted_params: int
    dense_params: int
    max_reduction: float
    allocation: dict[str, Any]

    @property
    def removed_ids(self) -> list[str]:
        return [g.id for g, k in zip(self.structures.groups, self.keep) if not k]


def _protected_mask(structures: StructureSet, scores: np.ndarray, protect_fraction: float
                    ) -> np.ndarray:
    prot = np.zeros(len(structures.groups), dtype=bool)
    for _slot, ix in structures.layer_kind_index().items():
        m = int(math.ceil(protect_fraction * ix.size - 1e-9))
        if m:
            order = ix[np.argsort(-scores[ix], kind="stable")]
            prot[order[:m]] = True
    return prot


def max_reduction(structures: StructureSet, protect_fraction: float = 0.1, min_keep: int = 1
                  ) -> float:
    """The largest ``reduction`` :func:`plan_removal` accepts: every (layer, kind) slot
    keeps max(ceil(protect_fraction n), min(min_keep, n)) of its n groups and nothing
    else. Groups of one slot cost the same, so which ones are kept does not matter
    and the bound needs no scores."""
    check(isinstance(protect_fraction, (int, float)) and 0 <= protect_fraction < 1,
          "The 'protect_fraction'", "in [0, 1)", protect_fraction)
    least = np.zeros(len(structures.groups), dtype=bool)
    for _slot, ix in structures.layer_kind_index().items():
        m = max(int(math.ceil(protect_fraction * ix.size - 1e-9)), min(min_keep, ix.size))
        least[ix[:m]] = True
    return 1.0 - structures.predict(least)["params"] / structures.dense_params


def plan_removal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: float, *,
                 input_shape: Sequence[int] | None = None, importance: str | Callable = "taylor",
                 protect_fraction: float = 0.1, min_keep: int = 1, exclude: Sequence[str] = (),
                 backend: str = "highs", time_limit_s: float | None = 60.0,
                 structures: StructureSet | None = None,
                 importance_kw: dict[str, Any] | None = None) -> RemovalPlan:
    """Steps 1-3 of the module docstring: groups, importance, protected groups and the
    exact choice of the groups to remove for a ``reduction`` of the parameters.

    ``structures``: groups found elsewhere (e.g. ``optprune.nn.hf.bert_structures``;
    ``model`` is then ignored); ``importance_kw`` goes to the importance score (e.g. a
    ``loss_fn`` for Taylor)."""
    check(isinstance(reduction, (int, float)) and math.isfinite(reduction) and 0 < reduction < 1,
          "The parameter 'reduction'", "a fraction in (0, 1)", reduction)
    check(isinstance(protect_fraction, (int, float)) and 0 <= protect_fraction < 1,
          "The 'protect_fraction'", "in [0, 1)", protect_fraction)
    if structures is None:
        input_shape = tuple(input_shape or x.shape[1:])
        structures = discover(model, input_shape, exclude=exclude)
    else:
        check(isinstance(structures, StructureSet), "The 'structures' of plan_removal",
              "a StructureSet", type(structures).__name__)
        model = structures.model
    check(len(structures.groups) > 0, "The number of prunable groups", "positive", 0,
          f"Nothing in {type(model).__name__} is prunable: {structures.frozen}")
    scores = score(structures, importance, (x, y), **(importance_kw or {}))
    prot = _protected_mask(structures, scores, protect_fraction)
    dense = structures.dense_params
    max_red = max_reduction(structures, protect_fraction, min_keep)
    if reduction > max_red + 1e-12:
        raise ValidationError(
            f"The parameter 'reduction' must be at most {max_red:.4f} for this model; got "
            f"{reduction!r}. Keeping the protected groups (protect_fraction="
            f"{protect_fraction}) and min_keep={min_keep} per layer already uses "
            f"{dense * (1 - max_red):.0f} of {dense} parameters. Lower the reduction, the "
            "protect_fraction or min_keep.")
    p, _ = build_problem(structures, scores, 1.0 - reduction, min_keep=min_keep,
                         name=type(model).__name__)
    for (lay, kd), ix in structures.layer_kind_index().items():
        m = int(prot[ix].sum())
        if m:
            p.add_count_bounds(lay, kd, min=m)
    r = allocate(p, backend=backend, time_limit_s=time_limit_s, rel_gap=1e-6, baselines=False)
    if r.keep is None:
        raise ValidationError(f"The solver stopped ({r.solve.termination.value}) without a "
                              "selection; raise time_limit_s.")
    keep = np.asarray(r.keep, dtype=bool)
    if (prot & ~keep).any():
        # Ties in score within a slot can swap a protected group for an equal one.
        swap = keep.copy()
        for _slot, ix in structures.layer_kind_index().items():
            k = int(keep[ix].sum())
            order = np.lexsort((-scores[ix], ~prot[ix]))
            swap[ix] = False
            swap[ix[order[:k]]] = True
        keep = swap
    d = r.to_dict()
    return RemovalPlan(structures, scores, keep, prot, float(reduction),
                       structures.predict(keep)["params"], dense, max_red,
                       {k: d[k] for k in ("termination", "objective", "bound", "gap",
                                          "solve_time_s")})


# ------------------------------------------------------------------ training
def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, *,
                lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
                params: Sequence[nn.Parameter] | None = None, loss_fn: Callable | None = None,
                after_step: Callable[[int], None] | None = None,
                checkpoint_every: int = 10) -> FitHistory:
    """The step-counted training of the training-based pruners (shrink period,
    recovery, fine-tuning of a pruned model): ``steps`` AdamW steps at a constant
    ``lr``, no weight decay, on batches drawn with replacement, by the kit's
    :func:`~optprune.experiments.fit` (a non-finite loss restores the last checkpoint,
    every ``checkpoint_every`` steps, and raises TrainingDivergedError)."""
    return fit(model, x, y, steps=steps, lr=lr, batch_size=batch_size, weight_decay=0.0,
               seed=seed, params=params, schedule="constant", loss_fn=loss_fn,
               after_step=after_step, checkpoint_every=checkpoint_every)


def removal_masks(structures: StructureSet, keep: np.ndarray, target: nn.Module
                  ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name in ``target``, tensor, bool mask of its removed entries) for every tensor a
    removed group touches. ``target`` is the model the groups were found on, a module
    sharing its parameter names (e.g. ``optprune.nn.hf.TokenIdsEncoder``), or either
    of them with LoRA adapters injected by peft (:func:`add_lora`). For a LoRA-wrapped
    layer ``m``, ``m.weight`` is ``m.base_layer.weight`` and its effective weight is
    ``W + s B A``: output rows of a removed group are the same rows of ``lora_B`` (and
    of ``W``), input columns are the same columns of ``lora_A``, so zeroing those
    adapter entries with the base entries zeroes the merged rows/columns exactly."""
    named: dict[str, torch.Tensor] = dict(target.named_parameters())
    named.update(dict(target.named_buffers()))
    prefix = "base_model.model." if any(n.startswith("base_model.model.") for n in named) else ""
    out: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for tname, dims in structures.removed_indices(keep).items():
        mod, _, attr = tname.rpartition(".")
        direct = prefix + tname
        targets: list[tuple[str, dict[int, np.ndarray]]] = []
        if direct in named:
            targets.append((direct, dims))
        else:
            base = f"{prefix}{mod}.base_layer.{attr}"
            check(base in named, f"The tensor {tname!r} of a removed group", "present in the "
                  "trained model (plain or peft-wrapped)", "missing")
            targets.append((base, dims))
            if attr == "weight":
                for a, b in _lora_pairs(named, f"{prefix}{mod}"):
                    if 0 in dims:
                        targets.append((b, {0: dims[0]}))
                    if 1 in dims:
                        targets.append((a, {1: dims[1]}))
        for name, dd in targets:
            t = named[name]
            m = torch.zeros(t.shape, dtype=torch.bool)
            for d, idx in dd.items():
                sel: list[slice | torch.Tensor] = [slice(None)] * t.dim()
                sel[d] = torch.as_tensor(idx, dtype=torch.long)
                m[tuple(sel)] = True
            out.append((name, t, m))
    return out


def _tensor_masks(structures: StructureSet, keep: np.ndarray, target: nn.Module
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`removal_masks` without the names."""
    return [(t, m) for _n, t, m in removal_masks(structures, keep, target)]


def _lora_pairs(named: dict[str, torch.Tensor], mod: str) -> list[tuple[str, str]]:
    pairs = []
    for n in named:
        if n.startswith(f"{mod}.lora_A.") and n.endswith(".weight"):
            adapter = n[len(f"{mod}.lora_A."):-len(".weight")]
            b = f"{mod}.lora_B.{adapter}.weight"
            if b in named:
                pairs.append((n, b))
    return pairs


def add_lora(model: nn.Module, rank: int = 8, targets: Sequence[str] = ("q", "v"),
             alpha: float | None = None) -> nn.Module:
    """Freeze every parameter of ``model`` and inject LoRA adapters (peft; rank
    ``rank``, scale alpha / rank with alpha = 2 rank by default, no dropout) into the
    Linear layers whose names end in ``targets`` (``("query", "value")`` for BERT).
    peft injects in place: ``model`` itself now holds the LoRA layers and only their
    adapters train. Returns the peft model; :func:`merge_lora` undoes the wrapping."""
    peft = require("peft", "hf", "LoRA adapters of progressive pruning")
    check(isinstance(rank, int) and not isinstance(rank, bool) and rank > 0, "The LoRA 'rank'",
          "a positive integer", rank)
    targets = [targets] if isinstance(targets, str) else list(targets)
    check(len(targets) > 0 and all(isinstance(t, str) and t for t in targets),
          "The LoRA 'targets'", "a non-empty list of module name suffixes (e.g. ['q', 'v'])",
          targets)
    found = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and n.rpartition(".")[2] in targets]
    check(len(found) > 0, "The LoRA 'targets'", f"names of Linear layers of "
          f"{type(model).__name__}", targets, "For BERT use ('query', 'value'); for "
          "optprune's ViT ('q', 'v').")
    for p in model.parameters():
        p.requires_grad_(False)
    return peft.get_peft_model(model, peft.LoraConfig(
        r=rank, lora_alpha=2 * rank if alpha is None else alpha, target_modules=targets,
        lora_dropout=0.0))


def merge_lora(peft_model: nn.Module, trainable: bool = True) -> nn.Module:
    """Merge the adapters into the base weights (W <- W + s B A) and return the plain
    model (the one given to :func:`add_lora`), every parameter's ``requires_grad`` set
    to ``trainable``."""
    check(hasattr(peft_model, "merge_and_unload"), "The model of merge_lora",
          "a peft model (from add_lora)", type(peft_model).__name__)
    peft: Any = peft_model  # a PeftModel (checked above); torch types it as a Module
    plain: nn.Module = peft.merge_and_unload()
    for p in plain.parameters():
        p.requires_grad_(trainable)
    return plain


def progressive_shrink(model: nn.Module, plan: RemovalPlan, x: torch.Tensor, y: torch.Tensor,
                       period_steps: int, *, lr: float = 1e-3, batch_size: int = 64,
                       seed: int = 0, loss_fn: Callable | None = None,
                       trainable: Sequence[nn.Parameter] | None = None,
                       checkpoint_every: int = 10) -> dict[str, Any]:
    """Train ``model`` (the plan's model, or a peft wrapper of it) for ``period_steps``
    while shrinking the removed groups by (P - t - 1)/(P - t) after every step.
    Returns the loss of every step and the norm of the removed entries after every step
    (the last is exactly 0)."""
    check(isinstance(period_steps, int) and period_steps > 0, "The shrink 'period_steps'",
          "a positive integer", period_steps)
    masks = _tensor_masks(plan.structures, plan.keep, model)
    norms: list[float] = []

    def shrink(t: int) -> None:
        f = shrink_factor(t, period_steps)
        with torch.no_grad():
            for tensor, m in masks:
                tensor.mul_(torch.where(m, torch.as_tensor(f, dtype=tensor.dtype),
                                        torch.ones((), dtype=tensor.dtype)))
            norms.append(float(sum(float(tensor[m].double().pow(2).sum()) for tensor, m in masks))
                         ** 0.5)

    hist = train_steps(model, x, y, period_steps, lr=lr, batch_size=batch_size, seed=seed,
                       params=trainable, loss_fn=loss_fn, after_step=shrink,
                       checkpoint_every=checkpoint_every)
    return {"loss": hist.loss, "removed_norms": norms}


@dataclass(frozen=True)
class ProgressiveReport:
    reduction: float
    n_groups: int
    n_removed: int
    n_protected: int
    dense_params: int
    predicted_params: int
    params: int
    allocation: dict[str, Any]
    removed_norm_first: float
    removed_norm_last: float
    steps: dict[str, int]
    times_s: dict[str, float]
    lora: bool
    history: dict[str, list] = field(repr=False, default_factory=dict)

    @property
    def params_ratio(self) -> float:
        return self.params / self.dense_params

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "history"}
        d["params_ratio"] = self.params_ratio
        return d


def progressive_prune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: float, *,
                      period_steps: int = 100, recovery_steps: int = 100, lr: float = 1e-3,
                      recovery_lr: float | None = None, batch_size: int = 64,
                      importance: str | Callable = "taylor", protect_fraction: float = 0.1,
                      min_keep: int = 1, lora: bool = False, lora_rank: int = 8,
                      lora_targets: Sequence[str] = ("q", "v"), seed: int = 0,
                      loss_fn: Callable | None = None, plan: RemovalPlan | None = None,
                      input_shape: Sequence[int] | None = None, checkpoint_every: int = 10,
                      backend: str = "highs") -> tuple[nn.Module, ProgressiveReport]:
    """The whole LoRAShear-style pipeline on a copy of ``model``: plan, progressive
    shrinking over ``period_steps`` (all weights trained, or with ``lora`` only LoRA
    adapters on ``lora_targets`` with the base frozen), physical removal, and
    ``recovery_steps`` of full fine-tuning of the pruned model."""
    t0 = time.perf_counter()
    work = copy.deepcopy(model)
    input_shape = tuple(input_shape or x.shape[1:])
    if plan is None:
        plan = plan_removal(work, x, y, reduction, input_shape=input_shape,
                            importance=importance, protect_fraction=protect_fraction,
                            min_keep=min_keep, backend=backend)
    else:
        check(len(plan.keep) == len(discover(work, input_shape).groups), "The given 'plan'",
              "made for this model", f"{len(plan.keep)} groups")
        plan = RemovalPlan(discover(work, input_shape), plan.scores, plan.keep, plan.protected,
                           plan.reduction, plan.predicted_params, plan.dense_params,
                           plan.max_reduction, plan.allocation)
    t1 = time.perf_counter()
    trained = add_lora(work, lora_rank, lora_targets) if lora else work
    shr = progressive_shrink(trained, plan, x, y, period_steps, lr=lr, batch_size=batch_size,
                             seed=seed, loss_fn=loss_fn, checkpoint_every=checkpoint_every)
    dense = merge_lora(trained) if lora else trained
    t2 = time.perf_counter()
    ss = discover(dense, input_shape)
    check([g.id for g in ss.groups] == [g.id for g in plan.structures.groups],
          "The groups after shrinking", "the planned ones", "different")
    for tensor, m in _tensor_masks(ss, plan.keep, dense):
        if bool(tensor.detach()[m].ne(0).any()):
            raise ValidationError("Internal: a removed group is not exactly zero after its "
                                  "shrinking period.")
    pruned = apply_mask(ss, plan.keep)
    t3 = time.perf_counter()
    rec = train_steps(pruned, x, y, recovery_steps, lr=recovery_lr or lr,
                      batch_size=batch_size, seed=seed + 1, loss_fn=loss_fn,
                      checkpoint_every=checkpoint_every)
    t4 = time.perf_counter()
    n = sum(p.numel() for p in pruned.parameters())
    report = ProgressiveReport(
        reduction=plan.reduction, n_groups=len(plan.keep), n_removed=int((~plan.keep).sum()),
        n_protected=int(plan.protected.sum()), dense_params=plan.dense_params,
        predicted_params=plan.predicted_params, params=n, allocation=plan.allocation,
        removed_norm_first=shr["removed_norms"][0], removed_norm_last=shr["removed_norms"][-1],
        steps={"period": period_steps, "recovery": recovery_steps}, lora=lora,
        times_s={"plan": t1 - t0, "shrink": t2 - t1, "surgery": t3 - t2, "recovery": t4 - t3},
        history={"shrink_loss": shr["loss"], "removed_norms": shr["removed_norms"],
                 "recovery_loss": rec.loss})
    return pruned, report


def one_shot_prune(model: nn.Module, plan: RemovalPlan, x: torch.Tensor, y: torch.Tensor,
                   finetune_steps: int, *, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
                   loss_fn: Callable | None = None, input_shape: Sequence[int] | None = None
                   ) -> nn.Module:
    """The baseline: remove the plan's groups at once, then ``finetune_steps`` of full
    fine-tuning (give it the progressive run's period + recovery steps)."""
    input_shape = tuple(input_shape or x.shape[1:])
    ss = discover(copy.deepcopy(model), input_shape)
    pruned = apply_mask(ss, plan.keep)
    train_steps(pruned, x, y, finetune_steps, lr=lr, batch_size=batch_size, seed=seed,
                loss_fn=loss_fn)
    return pruned
