"""Seeded digits MLPs and structured neuron pruning with fine-tuning, for the encoder's
experiments (small and self-contained; the general pruning path is ``optprune.nn``).

Training: ``64 -> hidden... -> 10`` ReLU MLP on scikit-learn's 8x8 digits (pixels / 16,
so inputs are in [0, 1]), Adam, mini-batches from a seeded generator, one torch thread:
the same seed gives the same weights bit for bit on one machine. An optional group
penalty ``lam * sum_j ||W_k[j, :]||_2`` over hidden neurons (group lasso, a stand-in for
the structured perspective regularizer of Cacciola et al.) drives whole neurons to zero.

Pruning: neuron j of hidden layer k scores ``||W_k[j, :]||_2 * ||W_{k+1}[:, j]||_2``
(its weight in and out). Two selections:

* ``"layerwise"``: each hidden layer keeps its ``ceil(keep_fraction * width)`` best
  neurons (the same fraction everywhere);
* ``"exact"``: the torch side's allocation (``optprune.nn.prune``): the neuron set of
  largest total score whose parameter count (exact, with the bilinear cost between
  adjacent layers) is at most the budget, solved to optimality by HiGHS; the widths per
  layer come out of the solve. The budget defaults to the parameter count of the
  layerwise network at the same ``keep_fraction``, so both selections give networks of
  the same size and differ only in where the neurons are kept. ``importance="taylor"``
  scores with first-order Taylor on the training data instead.

The pruned network is rebuilt with smaller Linear layers (really fewer parameters), then
fine-tuned.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import OptpruneError, ValidationError, check

__all__ = ["digits_data", "train_mlp", "train_cnn", "prune_channels", "CNN_INPUT_SHAPE",
           "prune_neurons", "finetune", "accuracy",
           "NeuronPruneReport", "prune_and_finetune", "neuron_scores", "SELECTIONS",
           "UnprovenSelectionWarning", "UnprovenSelectionError", "describe_selection",
           "judge_selection"]

SELECTIONS = ("layerwise", "exact")


class UnprovenSelectionWarning(UserWarning):
    """The exact neuron selection was used although the solver did not prove it optimal."""


class UnprovenSelectionError(OptpruneError, RuntimeError):
    """The exact neuron selection was not proven optimal and ``require_optimal`` was set."""


def judge_selection(info: dict, require_optimal: bool, stacklevel: int = 4) -> None:
    """Refuse (``require_optimal``) or warn about a selection that is not proven optimal."""
    if info.get("proven"):
        return
    what = f"The exact neuron selection is {describe_selection(info)}"
    if require_optimal:
        raise UnprovenSelectionError(
            f"{what}; require_optimal=True refuses it. Raise time_limit_s, or pass "
            "require_optimal=False to use the incumbent (with a warning).")
    warnings.warn(f"{what}; its incumbent is used for surgery. Raise time_limit_s or pass "
                  "require_optimal=True to refuse it.", UnprovenSelectionWarning,
                  stacklevel=stacklevel)


def describe_selection(info: dict | None) -> str:
    """One line on an exact selection's proof: "optimal" or its termination and gap."""
    if not info:
        return "layerwise (no solve)"
    if info.get("proven"):
        return "optimal"
    gap = info.get("gap")
    gap_s = "inf" if gap is None or not math.isfinite(gap) else f"{gap:.3g}"
    return (f"NOT proven optimal: {info.get('status')} after the {info.get('time_limit_s')} s "
            f"limit, gap {gap_s} (objective {info.get('objective')}, bound {info.get('bound')})")


def digits_data(seed: int = 0, test_fraction: float = 0.3):
    """(X_train, y_train, X_test, y_test) as numpy, X flat in [0, 1] (float64): the kit's
    split (``optprune.experiments.load_digits_split``) with the encoder's test fraction."""
    import torch

    from ..experiments import load_digits_split

    d = load_digits_split(test_fraction, seed, flat=True, dtype=torch.float64)
    return d.x_train.numpy(), d.y_train.numpy(), d.x_test.numpy(), d.y_test.numpy()


def _fit(model: Any, X: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int,
         group_lasso: float = 0.0, batch_size: int = 64, regression: bool = False) -> Any:
    """The kit's ``fit`` with the encoder's recipe: Adam (AdamW without decay) at a
    constant ``lr``, cross-entropy (or squared error with ``regression``), plus
    ``group_lasso`` times the row norms of every hidden layer's weight. The networks
    of the instance library were trained by this recipe (bit for bit the same as the
    loop it replaced: the library's network hashes are reproduced)."""
    import torch

    from ..experiments import fit

    torch.set_num_threads(1)
    Xt = torch.tensor(X, dtype=torch.float32)
    if regression:  # one output, mean squared error
        yt = torch.tensor(np.asarray(y, dtype=np.float64).reshape(-1, 1), dtype=torch.float32)
        lossf: Callable[..., torch.Tensor] = torch.nn.functional.mse_loss
    else:
        yt = torch.tensor(y, dtype=torch.long)
        lossf = torch.nn.functional.cross_entropy
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]

    def batch_loss(xb: Any, yb: Any, _step: int, _epoch: int) -> Any:
        loss = lossf(model(xb), yb)
        if group_lasso:
            loss = loss + group_lasso * sum(L.weight.norm(dim=1).sum() for L in linears[:-1])
        return loss

    fit(model, Xt, yt, epochs=epochs, lr=lr, weight_decay=0.0, seed=seed,
        schedule="constant", batch_size=batch_size, batch_loss=batch_loss)
    return model.eval()


def train_mlp(hidden: Sequence[int], X: np.ndarray, y: np.ndarray, seed: int = 0,
              epochs: int = 60, lr: float = 3e-3, group_lasso: float = 0.0,
              regression: bool = False) -> Any:
    """A trained ``nn.Sequential`` ReLU MLP (see the module docstring); with
    ``regression`` one linear output fitted to the float targets ``y`` by squared error."""
    import torch
    from torch import nn

    check(len(hidden) >= 1 and all(int(h) >= 1 for h in hidden), "The 'hidden' parameter",
          "a non-empty list of positive widths", list(hidden))
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = X.shape[1]
    for h in hidden:
        layers += [nn.Linear(d, int(h)), nn.ReLU()]
        d = int(h)
    layers.append(nn.Linear(d, 1 if regression else int(np.max(y)) + 1))
    return _fit(nn.Sequential(*layers), X, y, epochs, lr, seed, group_lasso,
                regression=regression)


CNN_INPUT_SHAPE = (1, 8, 8)


def train_cnn(channels: Sequence[int], X: np.ndarray, y: np.ndarray, seed: int = 0,
              epochs: int = 40, lr: float = 3e-3) -> Any:
    """A small digits CNN as an ``nn.Sequential``: per entry c of ``channels`` a 3x3
    convolution to c channels (padding 1; stride 1 for the first, 2 after) and a ReLU,
    then Flatten and a Linear layer to the classes. ``X``: flat 8x8 images (n x 64);
    the network takes (n, 1, 8, 8). Encoded as sparse affine layers (``from_torch``)."""
    import torch
    from torch import nn

    check(len(channels) >= 1 and all(int(c) >= 1 for c in channels), "The 'channels' parameter",
          "a non-empty list of positive channel counts", list(channels))
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c_in, side = 1, CNN_INPUT_SHAPE[1]
    for k, c in enumerate(channels):
        stride = 1 if k == 0 else 2
        layers += [nn.Conv2d(c_in, int(c), 3, stride=stride, padding=1), nn.ReLU()]
        c_in, side = int(c), (side - 1) // stride + 1
    layers += [nn.Flatten(), nn.Linear(c_in * side * side, int(np.max(y)) + 1)]
    return _fit(nn.Sequential(*layers), X.reshape(-1, *CNN_INPUT_SHAPE), y, epochs, lr, seed)


def prune_channels(model: Any, keep_fraction: float) -> Any:
    """A new, physically smaller CNN (``train_cnn``'s shape) keeping, in every
    convolution, the ``ceil(keep_fraction * channels)`` output channels of largest
    ``||filter||_2 * ||weights reading the channel||_2`` (the norm-product score of
    ``prune_neurons``, per channel)."""
    import torch
    from torch import nn

    check(0 < keep_fraction <= 1, "The 'keep_fraction' parameter", "in (0, 1]", keep_fraction)
    mods = list(model)
    convs = [i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    lin = [i for i, m in enumerate(mods) if isinstance(m, nn.Linear)]
    check(len(convs) >= 1 and len(lin) == 1, "The model to prune", "a train_cnn-shaped CNN",
          type(model).__name__)
    new = [m for m in mods]
    prev_keep = None
    with torch.no_grad():
        for n, i in enumerate(convs):
            conv = mods[i]
            W = conv.weight
            if n + 1 < len(convs):
                out_norm = mods[convs[n + 1]].weight.transpose(0, 1).reshape(W.shape[0], -1)
            else:
                L = mods[lin[0]]
                out_norm = L.weight.reshape(L.out_features, W.shape[0], -1).transpose(0, 1)
                out_norm = out_norm.reshape(W.shape[0], -1)
            score = W.reshape(W.shape[0], -1).norm(dim=1) * out_norm.norm(dim=1)
            k = max(1, math.ceil(keep_fraction * W.shape[0]))
            keep = torch.sort(torch.argsort(score, descending=True)[:k]).values
            Wk = W[keep] if prev_keep is None else W[keep][:, prev_keep]
            bias = conv.bias
            c = nn.Conv2d(Wk.shape[1], Wk.shape[0], conv.kernel_size, conv.stride, conv.padding,
                          bias=bias is not None)
            c.weight.copy_(Wk)
            if bias is not None and c.bias is not None:
                c.bias.copy_(bias[keep])
            new[i] = c
            prev_keep = keep
        L = mods[lin[0]]
        c_last = mods[convs[-1]].out_channels
        Wl = L.weight.reshape(L.out_features, c_last, -1)[:, prev_keep].reshape(L.out_features, -1)
        m = nn.Linear(Wl.shape[1], L.out_features)
        m.weight.copy_(Wl)
        m.bias.copy_(L.bias)
        new[lin[0]] = m
    return nn.Sequential(*new).eval()


def accuracy(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    """The kit's accuracy on numpy data (flat 8x8 images reshaped for a CNN)."""
    import torch

    from torch import nn

    from ..experiments import accuracy as kit_accuracy

    if any(isinstance(m, nn.Conv2d) for m in model):
        X = np.asarray(X).reshape(-1, *CNN_INPUT_SHAPE)
    return kit_accuracy(model, torch.tensor(X, dtype=torch.float32),
                        torch.as_tensor(np.asarray(y), dtype=torch.long))


def neuron_scores(model: Any) -> list[np.ndarray]:
    """Per hidden layer, ``||W_k[j, :]||_2 * ||W_{k+1}[:, j]||_2`` for each neuron j."""
    from torch import nn

    lin = [m for m in model if isinstance(m, nn.Linear)]
    return [(lin[k].weight.detach().double().norm(dim=1)
             * lin[k + 1].weight.detach().double().norm(dim=0)).numpy()
            for k in range(len(lin) - 1)]


def _linears(model: Any) -> list:
    from torch import nn

    check(isinstance(model, nn.Sequential), "The model to prune", "an nn.Sequential MLP",
          type(model).__name__)
    lin = [m for m in model if isinstance(m, nn.Linear)]
    check(len(lin) >= 2, "The number of Linear layers of the model to prune", "at least 2",
          len(lin))
    return lin


def _layerwise_keep(model: Any, keep_fraction: float) -> list[Any]:
    import torch

    lin = _linears(model)
    out = []
    for k in range(len(lin) - 1):
        W, Wn = lin[k].weight.detach(), lin[k + 1].weight.detach()
        score = W.norm(dim=1) * Wn.norm(dim=0)
        n_keep = max(1, math.ceil(keep_fraction * W.shape[0]))
        out.append(torch.sort(torch.argsort(score, descending=True)[:n_keep]).values)
    return out


def _mlp_params(widths: Sequence[int]) -> int:
    return int(sum(a * b + b for a, b in zip(widths[:-1], widths[1:])))


def _exact_keep(model: Any, budget_params: int, importance: str, data: tuple | None,
                time_limit_s: float | None, min_keep: int | float = 1,
                require_optimal: bool = False) -> tuple[list[np.ndarray], dict]:
    import torch

    from ..nn.pruning import build_problem
    from ..nn.structures import discover
    from ..alloc import allocate

    lin = _linears(model)
    structures = discover(model, (lin[0].in_features,))
    lin_pos = {id(m): i for i, m in enumerate(lin)}
    mods = dict(model.named_children())
    where = [lin_pos[id(mods[g.layer])] for g in structures.groups]
    per_layer = neuron_scores(model)
    if importance == "norm_product":
        scores = np.array([per_layer[k][g.index] for k, g in zip(where, structures.groups)])
    elif importance == "taylor":
        if data is None:
            raise ValidationError("The 'data' of the exact neuron selection with Taylor scores "
                                  "must be (X_train, y_train); got None.")
        from ..nn.importance import score

        X, y = data
        scores = score(structures, "taylor",
                       (torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.long)))
    else:
        raise ValidationError(f"The 'importance' of the exact neuron selection must be "
                              f"'norm_product' or 'taylor', got {importance!r}.")
    frac = budget_params / structures.dense_params
    p, _ = build_problem(structures, scores, frac, None, None, min_keep, False, None,
                         name="encode-neurons")
    r = allocate(p, backend="highs", time_limit_s=time_limit_s, rel_gap=1e-9, baselines=False)
    info = {"status": r.solve.termination.value, "objective": r.solve.objective,
            "bound": r.solve.bound, "budget_params": int(budget_params),
            "gap": r.solve.gap if math.isfinite(r.solve.gap) else None,
            "proven": r.solve.termination.value == "optimal", "time_limit_s": time_limit_s}
    if r.keep is None:
        raise UnprovenSelectionError(
            f"The exact neuron selection stopped ({info['status']}, time limit {time_limit_s} s) "
            "without any selection; raise time_limit_s or use selection='layerwise'.")
    judge_selection(info, require_optimal)
    keep_idx: list[list[int]] = [[] for _ in lin[:-1]]
    for g, k, w in zip(structures.groups, r.keep, where):
        if k:
            keep_idx[w].append(g.index)
    return [np.array(sorted(v), dtype=np.int64) for v in keep_idx], info


def prune_neurons(model: Any, keep_fraction: float, selection: str = "layerwise", *,
                  budget_params: int | None = None, importance: str = "norm_product",
                  data: tuple | None = None, time_limit_s: float | None = 60.0,
                  min_keep: int | float = 1, require_optimal: bool = False,
                  return_info: bool = False) -> Any:
    """A new, physically smaller ``nn.Sequential`` keeping the best neurons (module
    docstring). ``return_info`` also returns the allocation's proof (exact only):
    status, objective, bound, gap, ``proven`` and the ``time_limit_s`` it ran under.
    ``time_limit_s``, ``require_optimal`` (exact only): the solver's limit, and whether an
    unproven selection is refused (``UnprovenSelectionError``) rather than used with an
    ``UnprovenSelectionWarning``.

    ``min_keep`` (exact only): the fewest neurons any hidden layer keeps (an int, or a
    float fraction of its width). The default 1 lets the solver make a layer as narrow as
    the scores say, which with norm-product scores can mean a bottleneck of one neuron
    (``benchmarks/BENCHMARKS.md``, dense vs pruned)."""
    import torch
    from torch import nn

    check(0 < keep_fraction <= 1, "The 'keep_fraction' parameter", "in (0, 1]", keep_fraction)
    check(selection in SELECTIONS, "The 'selection' parameter", f"one of {list(SELECTIONS)}",
          selection)
    lin = _linears(model)
    info: dict = {}
    if selection == "layerwise":
        keep_idx = _layerwise_keep(model, keep_fraction)
    else:
        if budget_params is None:
            widths = [len(k) for k in _layerwise_keep(model, keep_fraction)]
            budget_params = _mlp_params([lin[0].in_features, *widths, lin[-1].out_features])
        keep_idx, info = _exact_keep(model, int(budget_params), importance, data, time_limit_s,
                                     min_keep, require_optimal)
    new: list[nn.Module] = []
    prev = None
    for k, L in enumerate(lin):
        rows = torch.as_tensor(keep_idx[k]) if k < len(keep_idx) else torch.arange(L.out_features)
        W = L.weight.detach()[rows]
        if prev is not None:
            W = W[:, prev]
        m = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            m.weight.copy_(W)
            m.bias.copy_(L.bias.detach()[rows])
        new.append(m)
        if k < len(lin) - 1:
            new.append(nn.ReLU())
        prev = rows
    out = nn.Sequential(*new).eval()
    return (out, info) if return_info else out


def finetune(model: Any, X: np.ndarray, y: np.ndarray, epochs: int = 20, lr: float = 1e-3,
             seed: int = 0, regression: bool = False) -> Any:
    from torch import nn

    if any(isinstance(m, nn.Conv2d) for m in model):
        X = np.asarray(X).reshape(-1, *CNN_INPUT_SHAPE)
    return _fit(model, X, y, epochs, lr, seed + 1000, regression=regression)


@dataclass(frozen=True)
class NeuronPruneReport:
    keep_fraction: float
    hidden_before: list[int]
    hidden_after: list[int]
    params_before: int
    params_after: int
    test_accuracy_before: float
    test_accuracy_after: float
    selection: str = "layerwise"
    allocation: dict | None = None  # the exact selection's proof (status, objective, bound, gap)


def _params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def prune_and_finetune(model: Any, keep_fraction: float, data: tuple, seed: int = 0,
                       finetune_epochs: int = 20, selection: str = "layerwise",
                       importance: str = "norm_product", time_limit_s: float | None = 60.0,
                       min_keep: int | float = 1, require_optimal: bool = False
                       ) -> tuple[Any, NeuronPruneReport]:
    """Prune (``selection``, see the module docstring) to the size of ``keep_fraction``
    of each hidden layer, fine-tune, report accuracy. ``time_limit_s``, ``min_keep``,
    ``require_optimal``: the exact selection's (``prune_neurons``)."""
    from torch import nn

    Xtr, ytr, Xte, yte = data
    pruned, info = prune_neurons(model, keep_fraction, selection, importance=importance,
                                 data=(Xtr, ytr), time_limit_s=time_limit_s,
                                 min_keep=min_keep, require_optimal=require_optimal,
                                 return_info=True)
    if finetune_epochs:
        pruned = finetune(pruned, Xtr, ytr, finetune_epochs, seed=seed)
    widths = lambda m: [L.out_features for L in m if isinstance(L, nn.Linear)][:-1]  # noqa: E731
    return pruned, NeuronPruneReport(keep_fraction, widths(model), widths(pruned), _params(model),
                               _params(pruned), accuracy(model, Xte, yte),
                               accuracy(pruned, Xte, yte), selection, info or None)
