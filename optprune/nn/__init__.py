"""The torch side: structures, importance scores, surgery and one-call pruning."""

from .bridge import problem_from_structures
from .importance import IMPORTANCE, register_importance, score
from .prune import PruneReport, build_problem, prune
from .structures import Group, StructureSet, count_flops, discover
from .surgery import apply_mask

__all__ = ["IMPORTANCE", "Group", "PruneReport", "StructureSet", "apply_mask", "build_problem",
           "count_flops", "discover", "problem_from_structures", "prune", "register_importance",
           "score"]
