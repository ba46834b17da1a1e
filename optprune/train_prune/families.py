"""Model-family adapters of the Compresso gates: what a transformer family gives the one
gate implementation (:class:`optprune.train_prune.gates.CompressoGates`).

A family is a small stateless object (:class:`GateFamily`) that, for a model of the
family (or a peft wrapper of one), says

* which module is the base model, checking every gate site up front (:meth:`~GateFamily.base`);
* its widths: the hidden width d, heads and FFN channels per block, the head size d_h
  (:class:`Widths`);
* where the gates attach (:class:`GateSites`): the modules whose input columns are the
  heads' outputs (d_h columns per head, head-major) and the FFN channels, the modules
  whose output or input is the residual stream, and the LayerNorms, which normalize over
  the open hidden channels only;
* its exact parameter count as the six coefficients of

      N(H, h, f) = const + hidden H + sum_b [head h_b + ffn f_b + hidden_head H h_b
                                              + hidden_ffn H f_b]

  (:func:`param_count`; every family of the project has this bilinear form);
* the surgery of heads and FFN channels from a keep map over structure ids
  (``<attention layer>:head:<h>``, ``<FFN layer>:ffn:<j>``; :meth:`~GateFamily.slot_layers`
  names the layers), and the tensors whose dimension is the hidden width, from which
  :func:`prune_hidden_width` removes dropped hidden channels with the shared slicing of
  :mod:`optprune.nn.surgery`.

The project's ViT is :class:`optprune.train_prune.gates.ViTFamily`, BERT-family encoders
are :class:`optprune.train_prune.gates_bert.BertFamily`.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from torch import nn

from ..errors import check
from ..nn.structures import StructureSet

__all__ = ["GateFamily", "GateSites", "Widths", "base_named_params", "keep_array",
           "param_count", "prune_hidden_width", "unwrap_peft"]


@dataclass(frozen=True)
class Widths:
    """The current widths of a model: hidden width, heads and FFN channels per block,
    the head size (shared by every block)."""

    hidden: int
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    head_dim: int


@dataclass(frozen=True)
class GateSites:
    """Where the gates act, as forward hooks (the model's code is untouched).

    * ``root``: draws one sample of every gate per forward pass;
    * ``head_in[b]``: its input is block b's heads' outputs (d_h columns per head, in
      head order), scaled by the head gates;
    * ``ffn_in[b]``: its input is block b's FFN channels, scaled by the FFN gates;
    * ``hidden_in``: their first input is the residual stream, scaled by the hidden
      gates (pre-norm: the embeddings entering the blocks);
    * ``hidden_out``: their output is added to the residual stream, scaled by the hidden
      gates;
    * ``norms``: LayerNorms computed over the open hidden channels only (0 on the closed
      ones); with ``post_norm`` their output is the residual stream and is scaled by the
      hidden gates too.
    """

    root: nn.Module
    head_in: tuple[nn.Module, ...]
    ffn_in: tuple[nn.Module, ...]
    hidden_in: tuple[nn.Module, ...]
    hidden_out: tuple[nn.Module, ...]
    norms: tuple[nn.LayerNorm, ...]
    post_norm: bool


class GateFamily(abc.ABC):
    """What a model family must provide to the gates (module docstring). Every method
    takes the *base* model, as returned by :meth:`base`."""

    #: the family's name in messages
    name: str = ""

    @abc.abstractmethod
    def base(self, model: nn.Module, gates: bool = False) -> nn.Module:
        """The base model under ``model`` (itself, or the base of a peft wrapper), with
        every gate site checked (UnsupportedModuleError listing all problems).
        ``gates``: also ask for what a gate vector needs (at least one head and FFN
        channel per block)."""

    @abc.abstractmethod
    def widths(self, base: nn.Module) -> Widths:
        """The current widths of ``base``."""

    @abc.abstractmethod
    def sites(self, base: nn.Module) -> GateSites:
        """The modules the gates hook into."""

    @abc.abstractmethod
    def size_coefficients(self, base: nn.Module) -> dict[str, float]:
        """The coefficients of N: const, hidden, head, ffn, hidden_head, hidden_ffn."""

    @abc.abstractmethod
    def dense_params(self, base: nn.Module) -> int:
        """The parameters N counts at the current widths (LoRA adapters not counted)."""

    @abc.abstractmethod
    def slot_layers(self, b: int) -> tuple[str, str]:
        """Layer names of block b's head and FFN structures (ids ``<layer>:head:<h>``
        and ``<layer>:ffn:<j>``)."""

    @abc.abstractmethod
    def prune_slots(self, base: nn.Module, keep: Mapping[str, bool]) -> nn.Module:
        """A copy of ``base`` with the heads and FFN channels whose id maps to False
        physically removed (``keep`` has one entry per head and FFN channel)."""

    @abc.abstractmethod
    def hidden_tensors(self, base: nn.Module) -> list[tuple[str, int]]:
        """(parameter name in ``base``, dimension) of every tensor whose dimension is
        the hidden width."""

    @abc.abstractmethod
    def set_hidden_width(self, base: nn.Module, k: int) -> None:
        """After the hidden width became ``k``: the family's own size attributes
        (torch modules' are fixed by the shared surgery)."""


def unwrap_peft(model: nn.Module) -> nn.Module:
    """``model``, or the base model of a peft wrapper (it has ``get_base_model``)."""
    get = getattr(model, "get_base_model", None)
    if callable(get):
        base = get()
        if isinstance(base, nn.Module):
            return base
    return model


def base_named_params(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Parameters of the base model, without LoRA adapters (names as in the plain
    model)."""
    for n, p in model.named_parameters():
        if "lora_" in n:
            continue
        yield n.replace(".base_layer", ""), p


def param_count(c: Mapping[str, float], hidden: Any, heads: Iterable[Any],
                ffn: Iterable[Any]) -> Any:
    """N(H, h, f) of the module docstring with coefficients ``c``, for kept counts
    (numbers or tensors, so the same formula gives the exact count of a mask and the
    expected count of gates); ``heads``/``ffn`` have one count per block."""
    total = c["const"] + c["hidden"] * hidden
    for hb, fb in zip(heads, ffn):
        total = total + c["head"] * hb + c["ffn"] * fb + c["hidden_head"] * hidden * hb \
            + c["hidden_ffn"] * hidden * fb
    return total


def keep_array(structures: StructureSet, keep: Mapping[str, bool]) -> np.ndarray:
    """The keep mask over ``structures.groups`` from a map over all their ids."""
    missing = [g.id for g in structures.groups if g.id not in keep]
    check(not missing and len(keep) == len(structures.groups), "The gate masks",
          "one entry per head and FFN channel of the model",
          f"{len(keep)} entries for {len(structures.groups)} groups")
    return np.array([keep[g.id] for g in structures.groups], dtype=bool)


def prune_hidden_width(family: GateFamily, model: nn.Module, keep_hidden: Any,
                       inplace: bool = False) -> nn.Module:
    """Remove the dropped hidden channels of ``model`` (a copy unless ``inplace``)
    physically: every tensor of ``family.hidden_tensors`` loses those entries along its
    hidden dimension, with the slicing and size fixing of :mod:`optprune.nn.surgery`.
    Merge LoRA adapters first."""
    from ..nn.surgery import _resize, _slice_tensors

    base = family.base(model)
    lora = [n for n, _ in base.named_parameters() if "lora_" in n]
    check(not lora, "The model whose hidden width is pruned", "free of LoRA adapters",
          f"{len(lora)} LoRA tensors (first {lora[:1]})", "Merge them first "
          "(peft's merge_and_unload).")
    dim = family.widths(base).hidden
    keep = np.asarray(keep_hidden, dtype=bool)
    check(keep.shape == (dim,), "The hidden keep mask", f"of shape ({dim},)", keep.shape)
    check(bool(keep.any()), "The hidden keep mask", "keeping at least one channel",
          int(keep.sum()))
    m = model if inplace else copy.deepcopy(model)
    base = family.base(m)
    drop = np.flatnonzero(~keep)
    touched = _slice_tensors(base, {name: {d: drop} for name, d in family.hidden_tensors(base)})
    for name in touched:
        _resize(base.get_submodule(name) if name else base)
    family.set_hidden_width(base, int(keep.sum()))
    return m
