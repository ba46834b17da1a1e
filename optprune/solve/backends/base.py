"""The backend interface and its registry."""

from __future__ import annotations

import abc
from typing import ClassVar

from ...errors import BackendUnavailableError
from ..model import LinearModel
from ..result import SolveOptions, SolveResult


class Backend(abc.ABC):
    """One solver behind the common interface.

    ``available()`` says whether the solver can be used here and, if not, why;
    ``solve()`` never raises for a limit, infeasibility or unboundedness: those are
    results. It raises only for input the solver cannot take (ValidationError).
    """

    name: ClassVar[str]
    supports_continuous: ClassVar[bool] = True
    supports_warm_start: ClassVar[bool] = True

    @classmethod
    @abc.abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(True, "") or (False, reason)."""

    @classmethod
    @abc.abstractmethod
    def version(cls) -> str: ...

    @abc.abstractmethod
    def solve(self, model: LinearModel, options: SolveOptions | None = None) -> SolveResult: ...


_REGISTRY: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    _REGISTRY[cls.name] = cls
    return cls


def backend_names() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; a clear error if unknown or unavailable."""
    _load_all()
    if name not in _REGISTRY:
        raise BackendUnavailableError(
            f"Unknown backend {name!r}; expected one of {sorted(_REGISTRY)}."
        )
    cls = _REGISTRY[name]
    ok, why = cls.available()
    if not ok:
        raise BackendUnavailableError(f"The backend {name!r} is not available here: {why}")
    return cls()


def available_backends() -> dict[str, tuple[bool, str]]:
    """Every registered backend with (available, reason)."""
    _load_all()
    return {name: cls.available() for name, cls in _REGISTRY.items()}


def _load_all() -> None:
    from . import cpsat, highs, pyomo_backend, scip  # noqa: F401
