"""optprune: structured pruning of neural networks as exact optimization problems.

The main entry points, imported lazily so that ``import optprune`` stays light
(torch is loaded only when the torch side is used):

* ``optprune.prune(model, importance=..., budget=..., ...)``: model -> pruned model + report;
* ``optprune.AllocationProblem`` / ``optprune.allocate``: the exact allocation engine;
* ``optprune.LinearModel`` / ``optprune.solve``: one MILP format, four backends.
"""

from __future__ import annotations

from ._extras import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "prune": "optprune.nn.pruning",
    "discover": "optprune.nn.structures",
    "AllocationProblem": "optprune.alloc",
    "allocate": "optprune.alloc",
    "pareto_front": "optprune.alloc",
    "LinearModel": "optprune.solve",
    "SolveOptions": "optprune.solve",
    "solve": "optprune.solve",
}

__all__ = ["AllocationProblem", "LinearModel", "SolveOptions", "__version__", "allocate",
           "discover", "pareto_front", "prune", "solve"]


__getattr__ = lazy_getattr(__name__, _LAZY)
