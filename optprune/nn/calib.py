"""Calibration data: validation, batching, running the model, and input statistics of
consumers. This module is the one place the project calls a model on calibration data.

``data`` may be

* a tensor X of shape (N, *input_shape) (numpy arrays are converted), called ``model(X)``;
* a pair (X, y) of inputs and targets, X a tensor or a dict;
* a dict of keyword inputs whose tensors all have N samples on their first dimension
  (the Hugging Face way: ``input_ids``/``attention_mask``, ``pixel_values``...), called
  ``model(**X)``; a ``labels`` entry is taken out as the targets y;
* a list of such dicts (one batch each), a ``TensorDataset``, or any iterable of
  batches X, (X, y) or dicts (a DataLoader).

Every batch is moved to the model's device; floating tensors take the model's parameter
dtype, integer tensors (token ids, masks) keep theirs. A batch of inputs is a tensor or
a dict (:func:`run_model` calls the model with either); :func:`model_output` picks the
main tensor of whatever the model returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import ValidationError, check

__all__ = ["batches", "ConsumerStats", "consumer_stats", "param_dtype", "model_device",
           "run_model", "model_output", "n_samples", "place", "sample_input"]

Inputs = Any  # torch.Tensor | dict[str, torch.Tensor]
LABEL_KEYS = ("labels",)


# ----------------------------------------------------------------- the model's side
def param_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 for a model without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (cpu for a model without any)."""
    for t in model.parameters():
        return t.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def place(x: Inputs, dtype: torch.dtype | None = None,
          device: torch.device | str | None = None) -> Inputs:
    """``x`` (a tensor, a dict or a tuple of them) on ``device``, floating tensors cast to
    ``dtype``; integer and boolean tensors keep their dtype; anything else is unchanged."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() and dtype is not None and x.dtype != dtype:
            x = x.to(dtype)
        return x.to(device) if device is not None else x
    if isinstance(x, Mapping):
        return {k: place(v, dtype, device) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(place(v, dtype, device) for v in x)
    return x


def run_model(model: nn.Module, x: Inputs, where: str | None = None) -> Any:
    """``model(x)`` for a tensor, ``model(**x)`` for a dict of keyword inputs,
    ``model(*x)`` for a tuple. With ``where``, an exception of the forward pass becomes
    a ValidationError saying which inputs did not run which model."""
    try:
        if isinstance(x, Mapping):
            return model(**x)
        if isinstance(x, tuple):
            return model(*x)
        return model(x)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
        if where is None:
            raise
        raise ValidationError(
            f"The inputs of {where} must run {type(model).__name__}; {describe(x)} failed with "
            f"{type(exc).__name__}: {exc}. Pass what the model's forward takes: a tensor for "
            "model(X), or a dict of its keyword inputs (e.g. input_ids and attention_mask, "
            "or pixel_values), first dimension = samples.") from exc


def model_output(out: Any) -> torch.Tensor:
    """The main tensor of a model output: the tensor itself, else ``logits``, else
    ``last_hidden_state`` (Hugging Face outputs and dicts), else the first tensor of a
    tuple/list/dict."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        for key in ("logits", "last_hidden_state"):
            v = out.get(key)
            if isinstance(v, torch.Tensor):
                return v
        values = list(out.values())
    elif isinstance(out, (tuple, list)):
        values = list(out)
    else:
        values = []
    for v in values:
        if isinstance(v, (torch.Tensor, Mapping, tuple, list)):
            try:
                return model_output(v)
            except ValidationError:
                continue
    raise ValidationError(
        f"The model output must hold a tensor (a tensor, or logits / last_hidden_state / a "
        f"tuple of tensors); got {type(out).__name__}.")


def n_samples(x: Inputs) -> int:
    """The number of samples of a batch of inputs (its first dimension)."""
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.dim() else 1
    if isinstance(x, Mapping):
        for v in x.values():
            if isinstance(v, torch.Tensor) and v.dim():
                return int(v.shape[0])
    if isinstance(x, tuple) and x:
        return n_samples(x[0])
    raise ValidationError(f"A batch of inputs must hold a tensor; got {describe(x)}.")


def sample_input(x: Inputs, n: int = 1) -> Inputs:
    """The first ``n`` samples of a batch of inputs (tensors of a dict sliced on dim 0)."""
    if isinstance(x, torch.Tensor):
        return x[:n]
    if isinstance(x, Mapping):
        m = n_samples(x)
        return {k: (v[:n] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == m else v)
                for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(sample_input(v, n) for v in x)
    return x


def describe(x: Any) -> str:
    """A short description of inputs for messages: shapes and dtypes."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return f"a {str(x.dtype).replace('torch.', '')} tensor of shape {tuple(x.shape)}"
    if isinstance(x, Mapping):
        return "a dict {" + ", ".join(
            f"{k}: {tuple(v.shape) if isinstance(v, (torch.Tensor, np.ndarray)) else type(v).__name__}"
            for k, v in x.items()) + "}"
    return type(x).__name__


# ----------------------------------------------------------------- validation
def _as_tensor(x: Any) -> Any:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


def _check_x(x: Any, input_shape: tuple[int, ...] | None, where: str,
             integer_inputs: bool = False) -> torch.Tensor:
    x = _as_tensor(x)
    check(isinstance(x, torch.Tensor), f"The calibration inputs of {where}",
          "a torch.Tensor (or numpy array), or a dict of model inputs", type(x).__name__)
    if not integer_inputs:
        check(x.is_floating_point(), f"The dtype of the calibration inputs of {where}",
              "a floating point type", str(x.dtype).replace("torch.", ""),
              "Convert with X.float() (images and features, not class labels); token ids go "
              "in a dict such as {'input_ids': ids}.")
    if input_shape is not None:
        check(x.dim() >= 1 and tuple(x.shape[1:]) == tuple(input_shape),
              f"The shape of the calibration inputs of {where}",
              f"(N, {', '.join(map(str, input_shape))}) (a batch of the structures' input_shape)",
              tuple(x.shape))
    return x


def _check_dict(x: Mapping, where: str) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Validated dict inputs (tensors converted) and the targets taken from 'labels'."""
    check(len(x) > 0, f"The dict of calibration inputs of {where}", "non-empty (the model's "
          "keyword inputs, e.g. input_ids)", {})
    out: dict[str, Any] = {}
    y = None
    sizes = {}
    for k, v in x.items():
        check(isinstance(k, str), f"A key of the calibration inputs of {where}",
              "a str (a keyword of the model's forward)", k)
        v = _as_tensor(v)
        if isinstance(v, torch.Tensor) and v.dim() >= 1:
            sizes[k] = int(v.shape[0])
        if k in LABEL_KEYS:
            y = v
        else:
            out[k] = v
    check(len(set(sizes.values())) <= 1, f"The first dimensions of the calibration inputs of "
          f"{where}", "equal (one entry per sample in every tensor)", sizes)
    check(any(isinstance(v, torch.Tensor) for v in out.values()),
          f"The calibration inputs of {where}", "a dict holding at least one tensor",
          describe(x))
    return out, y


def _check_y(y: Any, n: int, where: str) -> torch.Tensor:
    y = _as_tensor(y)
    check(isinstance(y, torch.Tensor), f"The calibration targets of {where}", "a torch.Tensor",
          type(y).__name__)
    check(y.shape[:1] == (n,), f"The number of calibration targets of {where}",
          f"{n} (one per input)", tuple(y.shape))
    return y


def _is_pair(data: Any, input_shape: tuple[int, ...] | None) -> bool:
    """(X, y): two entries, X a tensor or dict, y a tensor with one row per sample."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        return False
    x, y = (_as_tensor(d) for d in data)
    if not isinstance(y, torch.Tensor):
        return False
    if isinstance(x, Mapping):
        return True
    if not isinstance(x, torch.Tensor) or x.shape[:1] != y.shape[:1]:
        return False
    # Two same-shaped batches of a list are batches, not (X, y), when y has X's shape.
    return input_shape is None or tuple(x.shape[1:]) == tuple(input_shape)


def _split(x: Inputs, y: torch.Tensor | None, batch_size: int
           ) -> Iterator[tuple[Inputs, torch.Tensor | None]]:
    n = n_samples(x)
    for i in range(0, n, batch_size):
        if isinstance(x, Mapping):
            xb = {k: (v[i:i + batch_size] if isinstance(v, torch.Tensor) and v.dim()
                      and v.shape[0] == n else v) for k, v in x.items()}
        else:
            xb = x[i:i + batch_size]
        yield xb, None if y is None else y[i:i + batch_size]


def batches(data: Any, input_shape: tuple[int, ...] | None = None, batch_size: int = 256,
            where: str = "the importance score", need_targets: bool = False,
            dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
            integer_inputs: bool = False
            ) -> Iterator[tuple[Inputs, torch.Tensor | None]]:
    """Yield validated (X, y) batches: X a tensor or a dict of keyword inputs (run it with
    :func:`run_model`), y the targets or None. Floating inputs are cast to ``dtype`` and
    everything moves to ``device`` (targets too).

    input_shape: when given, tensor inputs must have shape (N, *input_shape).
    integer_inputs: accept integer tensor inputs (token ids); otherwise a tensor X must
        be floating (integer X is usually a label vector passed by mistake).
    """
    check(data is not None, f"The 'data' of {where}", "calibration data (X, (X, y), a dict of "
          "model inputs, or a loader)", None)
    check(isinstance(batch_size, (int, np.integer)) and batch_size >= 1,
          f"The 'batch_size' of {where}", "a positive int", batch_size)
    input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)

    def prepared(x: Any, y: Any) -> tuple[Inputs, torch.Tensor | None]:
        if isinstance(x, Mapping):
            x, y_in = _check_dict(x, where)
            y = y if y is not None else y_in
        else:
            x = _check_x(x, input_shape, where, integer_inputs)
        n = n_samples(x)
        y = _check_y(y, n, where) if y is not None else None
        check(n > 0, f"The number of calibration inputs of {where}", "positive", 0)
        if need_targets and y is None:
            raise ValidationError(f"The 'data' of {where} must include targets: pass (X, y) "
                                  "(or a dict with 'labels').")
        return place(x, dtype, device), None if y is None else place(y, None, device)

    single: tuple[Any, Any] | None = None
    if isinstance(data, (torch.Tensor, np.ndarray, Mapping)):
        single = (data, None)
    elif _is_pair(data, input_shape):
        single = (data[0], data[1])
    elif isinstance(data, torch.utils.data.TensorDataset):
        t = data.tensors
        single = (t[0], t[1] if len(t) > 1 else None)
    if single is not None:
        x, y = prepared(*single)
        yield from _split(x, y, batch_size)
        return
    if isinstance(data, (str, bytes)) or not hasattr(data, "__iter__"):
        raise ValidationError(
            f"The 'data' of {where} must be a tensor X, a pair (X, y), a dict of model inputs, "
            f"a list of such dicts or an iterable of batches (a DataLoader); got "
            f"{type(data).__name__}.")
    count = 0
    for b in data:
        if isinstance(b, (tuple, list)) and not isinstance(b, Mapping):
            check(len(b) in (1, 2), f"A calibration batch of {where}", "X or (X, y)",
                  f"a sequence of {len(b)}")
            x, y = prepared(b[0], b[1] if len(b) > 1 else None)
        else:
            x, y = prepared(b, None)
        count += 1
        yield x, y
    check(count > 0, f"The number of calibration batches of {where}", "positive", 0)


# ----------------------------------------------------------------- consumer statistics
@dataclass(frozen=True)
class ConsumerStats:
    """Per input channel of one consumer, over all calibration samples and positions
    (tokens for a Linear, pixels for a Conv2d): count n, mean, sample variance
    (ddof = 1) and sum of squares (||X_j||_2^2)."""

    n: int
    mean: np.ndarray
    var: np.ndarray
    sqnorm: np.ndarray


def channels_first(mod: nn.Module) -> bool:
    """True when ``mod`` reads its input channels on dim 1 (convolutions), False when on
    the last dim (Linear, Hugging Face Conv1D)."""
    return isinstance(mod, nn.modules.conv._ConvNd)


def consumer_stats(model: nn.Module, consumers: list[str], data: Any,
                   input_shape: tuple[int, ...] | None = None, batch_size: int = 256,
                   where: str = "the importance score", integer_inputs: bool = False
                   ) -> dict[str, ConsumerStats]:
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
        handles.append(named[c].register_forward_pre_hook(make(c, channels_first(named[c]))))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in batches(data, input_shape, batch_size, where, dtype=param_dtype(model),
                                device=model_device(model), integer_inputs=integer_inputs):
                run_model(model, x, where)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    out = {}
    for c, (n, s1, s2) in acc.items():
        check(n > 0, f"The calibration inputs seen by {c} during {where}", "at least one "
              "(the module must run in the model's forward)", 0)
        s1, s2 = s1.cpu().numpy(), s2.cpu().numpy()
        mean = s1 / n
        var = np.maximum(s2 - n * mean * mean, 0.0) / max(n - 1, 1)
        out[c] = ConsumerStats(int(n), mean, var, s2)
    return out
