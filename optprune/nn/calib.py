"""Calibration data: validation, batching, and input statistics of consumers.

``data`` may be a tensor X of shape (N, *input_shape), a pair (X, y), a
``TensorDataset``, or any iterable of (X, y) / X batches (a DataLoader).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import ValidationError, check

__all__ = ["batches", "ConsumerStats", "consumer_stats", "param_dtype"]


def _check_x(x: Any, input_shape: tuple[int, ...], where: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    check(isinstance(x, torch.Tensor), f"The calibration inputs of {where}",
          "a torch.Tensor (or numpy array)", type(x).__name__)
    check(x.is_floating_point(), f"The dtype of the calibration inputs of {where}",
          "a floating point type", str(x.dtype).replace("torch.", ""),
          "Convert with X.float() (images and features, not class labels).")
    check(x.dim() >= 1 and tuple(x.shape[1:]) == tuple(input_shape),
          f"The shape of the calibration inputs of {where}",
          f"(N, {', '.join(map(str, input_shape))}) (a batch of the structures' input_shape)",
          tuple(x.shape))
    return x


def _check_y(y: Any, n: int, where: str) -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    check(isinstance(y, torch.Tensor), f"The calibration targets of {where}", "a torch.Tensor",
          type(y).__name__)
    check(y.shape[:1] == (n,), f"The number of calibration targets of {where}",
          f"{n} (one per input)", tuple(y.shape))
    return y


def param_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 for a model without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def batches(data: Any, input_shape: tuple[int, ...], batch_size: int = 256,
            where: str = "the importance score", need_targets: bool = False,
            dtype: torch.dtype = torch.float32) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield validated (X, y) batches (y None when the data has no targets).
    Floating inputs of another precision are cast to ``dtype``."""
    check(data is not None, f"The 'data' of {where}", "calibration data (X or (X, y) or a loader)",
          None)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        items = [(data, None)]
    elif isinstance(data, (tuple, list)) and len(data) == 2 and \
            isinstance(data[0], (torch.Tensor, np.ndarray)) and \
            isinstance(data[1], (torch.Tensor, np.ndarray)) and \
            (data[0].shape[:1] == data[1].shape[:1]) and \
            tuple(data[0].shape[1:]) == tuple(input_shape):
        items = [(data[0], data[1])]
    elif isinstance(data, torch.utils.data.TensorDataset):
        t = data.tensors
        items = [(t[0], t[1] if len(t) > 1 else None)]
    else:
        items = None
    if items is not None:
        x, y = items[0]
        x = _check_x(x, input_shape, where)
        y = _check_y(y, x.shape[0], where) if y is not None else None
        check(x.shape[0] > 0, f"The number of calibration inputs of {where}", "positive", 0)
        if need_targets and y is None:
            raise ValidationError(f"The 'data' of {where} must include targets: pass (X, y).")
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size].to(dtype), None if y is None else y[i:i + batch_size]
        return
    n = 0
    for b in data:
        if isinstance(b, (tuple, list)):
            x = _check_x(b[0], input_shape, where)
            y = _check_y(b[1], x.shape[0], where) if len(b) > 1 else None
        else:
            x, y = _check_x(b, input_shape, where), None
        if need_targets and y is None:
            raise ValidationError(f"The batches of {where} must include targets: yield (X, y).")
        n += 1
        yield x.to(dtype), y
    check(n > 0, f"The number of calibration batches of {where}", "positive", 0)


@dataclass(frozen=True)
class ConsumerStats:
    """Per input channel of one consumer, over all calibration samples and positions
    (tokens for a Linear, pixels for a Conv2d): count n, mean, sample variance
    (ddof = 1) and sum of squares (||X_j||_2^2)."""

    n: int
    mean: np.ndarray
    var: np.ndarray
    sqnorm: np.ndarray


def consumer_stats(model: nn.Module, consumers: list[str], data: Any,
                   input_shape: tuple[int, ...], batch_size: int = 256,
                   where: str = "the importance score") -> dict[str, ConsumerStats]:
    """Run ``model`` (eval mode, no grad) on ``data`` and accumulate, in float64, the
    statistics of the inputs of each named consumer module."""
    named = dict(model.named_modules())
    acc: dict[str, list] = {c: [0, None, None] for c in consumers}
    handles = []

    def make(cname: str, conv: bool):
        def hook(_m, args):
            x = args[0].detach().to(torch.float64)
            x2 = x.transpose(0, 1).reshape(x.shape[1], -1).T if conv else x.reshape(-1, x.shape[-1])
            a = acc[cname]
            a[0] += x2.shape[0]
            s1, s2 = x2.sum(0), (x2 * x2).sum(0)
            a[1] = s1 if a[1] is None else a[1] + s1
            a[2] = s2 if a[2] is None else a[2] + s2
        return hook

    for c in consumers:
        handles.append(named[c].register_forward_pre_hook(make(c, isinstance(named[c], nn.Conv2d))))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in batches(data, input_shape, batch_size, where, dtype=param_dtype(model)):
                model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    out = {}
    for c, (n, s1, s2) in acc.items():
        s1, s2 = s1.numpy(), s2.numpy()
        mean = s1 / n
        var = np.maximum(s2 - n * mean * mean, 0.0) / max(n - 1, 1)
        out[c] = ConsumerStats(int(n), mean, var, s2)
    return out
