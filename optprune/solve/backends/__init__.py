"""Solver backends: highs, cpsat, scip, pyomo."""

from .base import Backend, available_backends, backend_names, get_backend

__all__ = ["Backend", "available_backends", "backend_names", "get_backend"]
