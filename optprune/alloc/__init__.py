"""The allocation engine: which structures to keep, solved exactly."""

from .baselines import BaselineResult, run_baselines
from .engine import (AllocationResult, ParetoPoint, allocate, allocate_k_best, explain_infeasible,
                     pareto_front)
from .formulate import Formulation, formulate, width_exact_slots
from .problem import AllocationProblem, validate_document

__all__ = [
    "AllocationProblem", "AllocationResult", "BaselineResult", "Formulation", "ParetoPoint",
    "allocate", "allocate_k_best", "explain_infeasible", "formulate", "pareto_front", "run_baselines",
    "validate_document", "width_exact_slots",
]
