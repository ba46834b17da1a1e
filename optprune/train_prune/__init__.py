"""Training-based pruners whose final decision is an exact allocation:

* :mod:`.gates`: Compresso-style hard-concrete (L0) gates on heads, FFN channels and
  the hidden width of optprune's ViT, a Lagrangian sparsity target, LoRA (peft) on
  q and v; final masks by the method's own rounding or by exact allocation.
* :mod:`.progressive`: LoRAShear-style progressive pruning: groups from discovery,
  protected groups, the removal set chosen exactly, shrinking to exactly zero over
  a period, physical removal and recovery fine-tuning.
"""

from ..errors import TrainingDivergedError
from .gates import (BETA, LIMIT_L, LIMIT_R, CompressoGates, CompressoResult, GateMasks,
                    HardConcreteGate, apply_gate_masks, evaluate_masks, exact_allocation,
                    own_rounding, prune_hidden, size_problem, train_compresso, vit_param_count)
from .progressive import (ProgressiveReport, RemovalPlan, fit, one_shot_prune, plan_removal,
                          progressive_prune, progressive_shrink, shrink_factor)

__all__ = ["BETA", "LIMIT_L", "LIMIT_R", "CompressoGates", "CompressoResult", "GateMasks",
           "HardConcreteGate", "ProgressiveReport", "RemovalPlan", "TrainingDivergedError",
           "apply_gate_masks", "evaluate_masks", "exact_allocation", "fit", "one_shot_prune",
           "own_rounding", "plan_removal", "progressive_prune", "progressive_shrink",
           "prune_hidden", "shrink_factor", "size_problem", "train_compresso",
           "vit_param_count"]
