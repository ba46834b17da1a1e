"""The torch side: structures, importance scores, surgery and one-call pruning.

Names are imported lazily so that ``optprune.nn.cli`` (and the command line) does not
load torch before a command needs it.
"""

from __future__ import annotations

from .._extras import lazy_getattr

_LAZY = {
    "bert_structures": "hf", "load_pruned_bert": "hf", "prune_bert": "hf", "load_pruned": "hf",
    "prune_hf": "hf_pipeline",
    "problem_from_structures": "bridge",
    "IMPORTANCE": "importance", "register_importance": "importance", "score": "importance",
    "PruneReport": "pruning", "build_problem": "pruning", "prune": "pruning",
    "Group": "structures", "StructureSet": "structures", "count_flops": "structures",
    "discover": "structures",
    "apply_mask": "surgery",
}

__all__ = ["IMPORTANCE", "Group", "PruneReport", "StructureSet", "apply_mask", "bert_structures",
           "build_problem", "count_flops", "discover", "load_pruned", "load_pruned_bert",
           "problem_from_structures", "prune", "prune_bert", "prune_hf", "register_importance",
           "score"]


__getattr__ = lazy_getattr(__name__, _LAZY)
