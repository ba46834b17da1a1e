"""Optimizing over a trained regression surrogate: the constraint-learning problem of
``benchmarks/bench_surrogate.py`` and of the instance library's surrogate set.

Data: scikit-learn's diabetes (442 patients; age, sex, bmi, bp, s1-s6; target: disease
progression one year later), a seeded 75/25 split, features and target standardized
with the training split's mean and standard deviation.

The problem, for a reference patient x_ref and an intervention budget B (in standard
deviations of change)::

    max  f(x)                                   (the network's predicted progression)
    s.t. x_j in [min_j, max_j] of the training data
         x_j = x_ref_j for the fixed features (sex)
         d_j >= x_j - x_ref_j,  d_j >= x_ref_j - x_j,  sum_j d_j <= B

f enters as a block (``block.add_network_block``) whose input box is the data range
intersected with [x_ref - B, x_ref + B] (each |x_j - x_ref_j| <= d_j <= B): the same
feasible set, and a tighter box for the bounds (fewer binaries).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..solve import LinearModel, ModelBuilder
from .block import NetworkBlock, add_network_block

__all__ = ["diabetes_data", "budget_problem", "budget_lift", "r2_score", "FIXED_FEATURES"]

FIXED_FEATURES = ("sex",)


def diabetes_data(seed: int = 0) -> tuple:
    """(X_train, y_train, X_test, y_test, feature names, (y mean, y std)), standardized."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    d = load_diabetes()
    Xtr, Xte, ytr, yte = train_test_split(d.data, d.target, test_size=0.25, random_state=seed)
    mx, sx = Xtr.mean(0), Xtr.std(0)
    my, sy = ytr.mean(), ytr.std()
    return ((Xtr - mx) / sx, (ytr - my) / sy, (Xte - mx) / sx, (yte - my) / sy,
            list(d.feature_names), (float(my), float(sy)))


def budget_problem(net: Any, names: Sequence[str], lo: np.ndarray, hi: np.ndarray,
                   x_ref: np.ndarray, budget: float, fixed: Sequence[str] = FIXED_FEATURES,
                   output: str = "progression", name: str = "surrogate", bounds: str = "symbolic",
                   col_names: bool = True) -> tuple[LinearModel, NetworkBlock]:
    """The module docstring's MIP (maximization) and where the network's block sits."""
    names = list(names)
    x_ref = np.clip(np.asarray(x_ref, dtype=np.float64), lo, hi)
    box_lo = np.maximum(lo, x_ref - budget)
    box_hi = np.minimum(hi, x_ref + budget)
    for nm in fixed:
        j = names.index(nm)
        box_lo[j] = box_hi[j] = x_ref[j]
    b = ModelBuilder(name, "max")
    blk = add_network_block(b, net, names, [output], (box_lo, box_hi), name="nn",
                            bounds=bounds)
    n = len(names)
    d = b.add_columns(n, lower=0.0, upper=np.maximum(box_hi - x_ref, x_ref - box_lo),
                      names=[f"d_{nm}" for nm in names] if col_names else None)
    x = blk.input_columns
    r = np.arange(n)
    # d - x >= -x_ref ; d + x >= x_ref
    b.add_rows(np.r_[r, r], np.r_[d, x], np.r_[np.ones(n), -np.ones(n)], -x_ref, np.inf,
               count=n, names=[f"abs_lo_{nm}" for nm in names] if col_names else None)
    b.add_rows(np.r_[r, r], np.r_[d, x], np.ones(2 * n), x_ref, np.inf, count=n,
               names=[f"abs_up_{nm}" for nm in names] if col_names else None)
    b.add_rows(np.zeros(n), d, np.ones(n), -np.inf, budget, count=1,
               names=["budget"] if col_names else None)
    b.set_cost(np.array([blk.outputs[output]]), np.array([1.0]))
    model = b.build()
    model.metadata.update({
        "kind": "optprune.surrogate/1", "network_sha256": blk.network.sha256(),
        "network_sizes": [blk.network.input_dim] + [L.out_features for L in blk.network.layers],
        "objective": "max_prediction", "inputs": names, "output": output,
        "x_ref": x_ref.tolist(), "budget": float(budget), "fixed": list(fixed),
        "bounds_method": blk.bounds.method, "binaries": model.num_integer,
        "variables": model.num_cols,
        "x_columns": [int(c) for c in blk.input_columns],
        "d_columns": [int(c) for c in d],
        "output_column": int(blk.outputs[output]),
    })
    return model, blk


def budget_lift(model: LinearModel, blk: NetworkBlock, x: np.ndarray) -> np.ndarray:
    """The MIP point of ``budget_problem`` at the input x: the network's columns from
    its forward pass, d = |x - x_ref|."""
    x = np.asarray(x, dtype=np.float64)
    v = np.zeros(model.num_cols)
    blk.lift(v, x)
    v[model.metadata["d_columns"]] = np.abs(x - np.asarray(model.metadata["x_ref"]))
    return v


def r2_score(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    """The coefficient of determination of a torch regression model on (X, y)."""
    import torch

    with torch.no_grad():
        p = model(torch.tensor(X, dtype=torch.float32)).numpy().ravel()
    return float(1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2))
