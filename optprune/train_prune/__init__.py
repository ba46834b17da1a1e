"""Training-based pruners whose final decision is an exact allocation:

* :mod:`.gates`: Compresso-style hard-concrete (L0) gates on heads, FFN channels and
  the hidden width, one implementation over model-family adapters
  (:mod:`.families`), a Lagrangian sparsity target, LoRA (peft) on the attention
  projections; final masks by the method's own rounding or by exact allocation; the
  family of optprune's ViT (:class:`ViTFamily`).
* :mod:`.gates_bert`: the BERT family (MiniLM): gate sites of post-norm layers, the
  size model in two scopes, LoRA on query and value, and the exact final allocation by
  enumerating counts.
* :mod:`.progressive`: LoRAShear-style progressive pruning: groups from discovery,
  protected groups, the removal set chosen exactly, shrinking to exactly zero over
  a period, physical removal and recovery fine-tuning.

Names are imported lazily so that the command line starts without torch.
"""

from __future__ import annotations

from .._extras import lazy_getattr
from ..errors import TrainingDivergedError

_MODULES = {
    "gates": ("BETA", "LIMIT_L", "LIMIT_R", "CompressoGates", "CompressoResult", "GateMasks",
              "HardConcreteGate", "apply_gate_masks", "evaluate_masks", "exact_allocation",
              "own_rounding", "prune_hidden", "size_problem", "train_compresso",
              "vit_param_count", "ViTFamily", "family_of", "apply_masks"),
    "families": ("GateFamily", "GateSites", "Widths"),
    "gates_bert": ("BertFamily", "BertGates", "ScatterHidden", "apply_bert_gate_masks",
                   "bert_masks_params", "bert_param_count", "exact_allocation_by_counts",
                   "prune_bert_hidden", "scoped_params", "train_compresso_bert"),
    "progressive": ("ProgressiveReport", "RemovalPlan", "add_lora", "max_reduction",
                    "merge_lora", "one_shot_prune", "plan_removal", "progressive_prune",
                    "progressive_shrink", "removal_masks", "shrink_factor", "train_steps"),
}
_LAZY = {name: mod for mod, names in _MODULES.items() for name in names}

__all__ = ["BETA", "LIMIT_L", "LIMIT_R", "CompressoGates", "CompressoResult", "GateMasks",
           "HardConcreteGate", "ProgressiveReport", "RemovalPlan", "TrainingDivergedError",
           "add_lora", "apply_gate_masks", "evaluate_masks", "exact_allocation", "max_reduction",
           "merge_lora", "one_shot_prune", "own_rounding", "plan_removal", "progressive_prune",
           "progressive_shrink", "prune_hidden", "removal_masks", "shrink_factor",
           "size_problem", "train_compresso", "train_steps", "vit_param_count"]
__all__ += ["ViTFamily", "family_of", "apply_masks", "GateFamily", "GateSites", "Widths",
            "BertFamily"]
__all__ += ["BertGates", "ScatterHidden", "apply_bert_gate_masks", "bert_masks_params",
            "bert_param_count", "exact_allocation_by_counts", "prune_bert_hidden",
            "scoped_params", "train_compresso_bert"]
assert set(__all__) == {*_LAZY, "TrainingDivergedError"}


__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return list(__all__)
