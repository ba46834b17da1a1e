"""Resuming a forward pass from cached module outputs.

The pipeline runs the same calibration batches through a model many times, changing only
what happens from some layer on: a curve point masks one slot's consumer; a
reconstruction stage refits one layer while everything before it is final. Every module
whose forward *ends* before the first changed layer starts computes exactly what it
computed last time, so its output can be cached and its forward skipped.

:class:`ForwardTrace` records, on one forward pass, when every submodule starts and ends
(forward pre-hook and forward hook) and how often it runs. ``closed_before(names)`` are
the outermost modules that run once, end before the first of ``names`` starts, and do not
contain any of them: skipping exactly those (``skipping``: their ``forward`` replaced by
the cached output of the current batch) leaves the rest of the pass unchanged. A module
called more than once per pass is never skipped, and cached outputs are stored and
returned as copies, so a caller that changes them in place changes no cache.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

__all__ = ["ForwardTrace", "skipping", "capture_outputs", "clone"]


def clone(o: Any) -> Any:
    """A copy of a module output: tensors cloned, tuples/lists/dicts (and Hugging Face
    output classes, which are dicts) rebuilt around the clones, anything else as is."""
    if isinstance(o, torch.Tensor):
        return o.detach().clone()
    if isinstance(o, tuple) and hasattr(o, "_fields"):  # a namedtuple
        return type(o)(*(clone(v) for v in o))
    if isinstance(o, (tuple, list)):
        return type(o)(clone(v) for v in o)
    if isinstance(o, dict):
        items = {k: clone(v) for k, v in o.items()}
        try:
            return type(o)(**items)
        except TypeError:
            return dict(items)
    return o


class ForwardTrace:
    """Start/end order of every submodule of ``model`` on one call of ``run()``."""

    def __init__(self, model: nn.Module, run: Callable[[], Any]) -> None:
        self.start: dict[str, int] = {}
        self.end: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        clock = [0]

        def pre(name: str):
            def hook(_m, _a):
                self.calls[name] = self.calls.get(name, 0) + 1
                self.start.setdefault(name, clock[0])
                clock[0] += 1
            return hook

        def post(name: str):
            def hook(_m, _a, _o):
                self.end[name] = clock[0]
                clock[0] += 1
            return hook

        hs = []
        for name, mod in model.named_modules():
            if name:
                hs.append(mod.register_forward_pre_hook(pre(name)))
                hs.append(mod.register_forward_hook(post(name)))
        try:
            with torch.no_grad():
                run()
        finally:
            for h in hs:
                h.remove()

    def closed_before(self, names: Iterable[str]) -> list[str]:
        """The outermost modules that run once and end before the first of ``names``
        starts (so they contain none of them)."""
        starts = [self.start[n] for n in names if n in self.start]
        if not starts:
            return []
        t = min(starts)
        done = sorted(n for n, e in self.end.items()
                      if e < t and self.calls.get(n) == 1)
        out: list[str] = []
        for n in done:  # sorted: a parent comes before its children
            if not any(n.startswith(p + ".") for p in out):
                out.append(n)
        return out


@contextlib.contextmanager
def skipping(model: nn.Module, outputs: dict[str, Any]) -> Iterator[None]:
    """Within the context, each named module returns ``outputs[name]`` instead of
    running its forward (hooks still run)."""
    named = dict(model.named_modules())
    saved = []
    try:
        for n, out in outputs.items():
            mod = named[n]
            saved.append((mod, mod.__dict__.get("forward")))
            mod.forward = types.MethodType(lambda _self, *a, _o=out, **k: clone(_o), mod)
        yield
    finally:
        for mod, fwd in saved:
            if fwd is None:
                del mod.forward
            else:
                mod.forward = fwd


@contextlib.contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str], into: dict[str, Any]
                    ) -> Iterator[None]:
    """Within the context, the output of every named module is stored in ``into``."""
    named = dict(model.named_modules())
    hs = [named[n].register_forward_hook(lambda _m, _a, o, n=n: into.__setitem__(n, clone(o)))
          for n in names]
    try:
        yield
    finally:
        for h in hs:
            h.remove()
