"""One file format for every model the project saves.

A checkpoint is ``torch.save`` of a dict with four keys:

* ``format``: ``"optprune.checkpoint/1"``;
* ``spec``: what rebuilds the model's shapes without pickled code (a dict of JSON-like
  values whose ``"kind"`` names the model family, e.g. ``{"kind": "vit", "dim": 32,
  ...}``), or None for a bare state dict (load it into a model you build);
* ``state_dict``: name -> tensor (plus nested dicts / lists of tensors and numbers
  where a family needs them);
* ``meta``: free JSON-like facts (epochs, accuracy, the training step ...).

Files are read with ``torch.load(weights_only=True)``: a file can hold tensors, numbers,
strings, lists and dicts only, never code. Every failure to read (missing, truncated,
corrupt, another program's pickle, another format) raises
:class:`optprune.errors.CheckpointError` naming the file. Writes go through a uniquely
named temporary file and a rename, so a crash never leaves a partial checkpoint.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "optprune.checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as read back: the model's ``spec`` (None for a bare state dict), its
    ``state_dict`` and ``meta``."""

    spec: dict[str, Any] | None
    state_dict: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str | None:
        return None if self.spec is None else self.spec.get("kind")


def save_checkpoint(path: str | os.PathLike, model: nn.Module | Mapping[str, Any],
                    spec: Mapping[str, Any] | None, **meta: Any) -> Path:
    """Write ``model`` (a module, or a state dict) with its ``spec`` and ``meta`` to
    ``path`` in the format of the module docstring; returns the path."""
    path = Path(path)
    if spec is not None and not isinstance(spec.get("kind"), str):
        raise CheckpointError(f"The spec of a checkpoint must name its model family in a "
                              f"string 'kind'; got {dict(spec)!r}.")
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    blob = {"format": CHECKPOINT_FORMAT, "spec": None if spec is None else dict(spec),
            "state_dict": {k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                           for k, v in sd.items()},
            "meta": dict(meta)}
    if not path.parent.is_dir():
        raise CheckpointError(f"The folder of the checkpoint {str(path)!r} does not exist; "
                              "create it first.")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, kind: str | None = None,
                    hint: str = "") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU). With
    ``kind``, the spec must name that model family. Raises CheckpointError naming the
    file for anything else; ``hint`` (how to make such a file) ends a missing file's
    message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The checkpoint {str(path)!r} does not exist (or is not a "
                              f"file).{' ' + hint if hint else ''}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # every way torch.load fails on a foreign or broken file
        raise CheckpointError(
            f"The file {str(path)!r} is not a readable optprune checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            f"Expected a {CHECKPOINT_FORMAT!r} file written by "
            "optprune.experiments.save_checkpoint.") from exc
    got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
    if not isinstance(blob, dict) or got != CHECKPOINT_FORMAT:
        raise CheckpointError(f"The file {str(path)!r} must be a {CHECKPOINT_FORMAT!r} "
                              f"checkpoint; its format is {got!r}. Save models with "
                              "optprune.experiments.save_checkpoint.")
    spec, sd, meta = blob.get("spec"), blob.get("state_dict"), blob.get("meta", {})
    if not (spec is None or isinstance(spec, dict)) or not isinstance(sd, dict) \
            or not isinstance(meta, dict):
        raise CheckpointError(f"The checkpoint {str(path)!r} is damaged: 'spec' must be a "
                              "dict or None, 'state_dict' and 'meta' dicts.")
    ck = Checkpoint(spec, sd, meta)
    if kind is not None and ck.kind != kind:
        raise CheckpointError(f"The checkpoint {str(path)!r} must hold a {kind!r} model; it "
                              f"holds {ck.kind!r}.")
    return ck
