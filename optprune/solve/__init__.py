"""The neutral model, solve options and results, and the backends."""

from .backends import available_backends, backend_names, get_backend
from .model import LinearModel, ModelBuilder
from .result import SolutionStatus, SolveOptions, SolveResult, Termination


def solve(model: LinearModel, backend: str = "highs", options: SolveOptions | None = None,
          **option_kwargs) -> SolveResult:
    """Solve ``model`` with the named backend. Keyword options build SolveOptions."""
    if options is None:
        options = SolveOptions(**option_kwargs)
    elif option_kwargs:
        raise TypeError("Pass either options= or keyword options, not both.")
    return get_backend(backend).solve(model, options)


__all__ = [
    "LinearModel", "ModelBuilder", "SolveOptions", "SolveResult", "SolutionStatus",
    "Termination", "available_backends", "backend_names", "get_backend", "solve",
]
