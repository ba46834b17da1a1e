"""Head configurations: which (layer, head) pairs are pruned at inference.

A configuration is a set of pruned heads; ``dense`` prunes none. Ids are stable
strings: a head is ``L{layer}H{head}`` (the long form ``blocks.{layer}.attn:head:{head}``,
the id optprune.nn uses for structures, is accepted too) and a configuration joins its
heads with ``+`` in sorted order, e.g. ``L0H2+L2H1``.

Cost of a configuration, in multiply-accumulates per generated token (with a cache of
``context`` past tokens): each head h of layer l costs 3 d d_h (q, k, v projections)
+ 2 d_h context (scores and weighted values) + d d_h (its columns of W_o); a pruned
head costs nothing, so

    cost(config) = dense_cost - sum_{(l,h) pruned} (4 d d_h + 2 d_h context).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import ValidationError
from .model import SprintTransformer

_SHORT = re.compile(r"L(\d+)H(\d+)")
_LONG = re.compile(r"blocks\.(\d+)\.attn:head:(\d+)")


@dataclass(frozen=True)
class HeadConfig:
    pruned: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "pruned",
                           tuple(sorted(set((int(a), int(b)) for a, b in self.pruned))))

    @property
    def id(self) -> str:
        return "+".join(f"L{a}H{b}" for a, b in self.pruned) or "dense"

    def __str__(self) -> str:
        return self.id

    @classmethod
    def parse(cls, text: str) -> "HeadConfig":
        """Parse ``dense``, ``L0H1``, ``L0H1+L2H3`` or ``blocks.0.attn:head:1``."""
        s = str(text).strip()
        if s == "dense":
            return cls(())
        heads = []
        for part in s.split("+"):
            m = _SHORT.fullmatch(part) or _LONG.fullmatch(part)
            if not m:
                raise ValidationError(
                    f"A head configuration must be 'dense' or heads 'L<layer>H<head>' joined "
                    f"by '+' (e.g. 'L0H1+L2H3'); got {text!r}.")
            heads.append((int(m.group(1)), int(m.group(2))))
        return cls(tuple(heads))


def head_counts(model: SprintTransformer | torch.nn.Module) -> tuple[int, ...]:
    """Heads per layer; ValidationError for a model without attention heads."""
    heads = getattr(model, "heads", None)
    if heads is None or sum(heads) == 0:
        raise ValidationError(
            f"SPRINT prunes attention heads, so the model must have at least one; got a "
            f"{type(model).__name__} with heads per layer {list(heads or [])}. Use a "
            f"SprintTransformer with heads=(4, 4, 4) or similar.")
    return tuple(int(h) for h in heads)


def validate(model: SprintTransformer, configs: Sequence[HeadConfig]) -> None:
    """Raise one ValidationError naming every configuration that prunes a missing head."""
    heads = head_counts(model)
    bad = [c.id for c in configs
           if any(not (0 <= a < len(heads) and 0 <= b < heads[a]) for a, b in c.pruned)]
    if bad:
        raise ValidationError(
            f"These configurations prune heads the model does not have: {bad}. The model "
            f"has {len(heads)} layers with heads per layer {list(heads)} "
            f"(valid heads are L<layer>H<head> with layer < {len(heads)}).")
    ids = [c.id for c in configs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValidationError(f"Configurations must be distinct; these repeat: {dup}.")


def candidate_configs(model: SprintTransformer, n_pairs: int = 0, include_dense: bool = True,
                      seed: int = 0) -> list[HeadConfig]:
    """dense, every single head, then ``n_pairs`` random distinct pairs of heads."""
    heads = head_counts(model)
    singles = [(a, b) for a, n in enumerate(heads) for b in range(n)]
    out = [HeadConfig(())] if include_dense else []
    out += [HeadConfig((h,)) for h in singles]
    pairs = list(itertools.combinations(singles, 2))
    if n_pairs > len(pairs):
        raise ValidationError(f"n_pairs must be at most {len(pairs)} (all pairs of the "
                              f"{len(singles)} heads); got {n_pairs}.")
    rng = np.random.default_rng(seed)
    for i in sorted(rng.choice(len(pairs), size=n_pairs, replace=False)) if n_pairs else []:
        out.append(HeadConfig(pairs[int(i)]))
    return out


def config_masks(model: SprintTransformer, configs: Iterable[HeadConfig]) -> torch.Tensor:
    """Head masks (C, L, H_max): 1 keeps a head, 0 prunes it (padding slots stay 1)."""
    configs = list(configs)
    validate(model, configs)
    heads = head_counts(model)
    m = torch.ones(len(configs), len(heads), max(heads))
    for i, c in enumerate(configs):
        for a, b in c.pruned:
            m[i, a, b] = 0.0
    return m


def config_costs(model: SprintTransformer, configs: Sequence[HeadConfig],
                 context: int = 16) -> np.ndarray:
    """Multiply-accumulates per generated token of each configuration (integers)."""
    validate(model, configs)
    s = model.spec
    head = 4 * s.d_model * s.head_dim + 2 * s.head_dim * context
    ffn = 2 * s.d_model * s.d_ff
    dense = sum(heads * head for heads in s.heads) + len(s.heads) * ffn \
        + s.d_model * s.vocab_size
    return np.array([dense - head * len(c.pruned) for c in configs], dtype=np.int64)
