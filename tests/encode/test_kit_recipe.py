"""The encoder trains and splits with the experiment kit, and that is the recipe its
instance library was built with: the same split as a plain stratified scikit-learn
split, and the same weights, bit for bit, as a plain Adam loop (so retraining the
library's networks reproduces their hashes)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from optprune.encode.prune import _fit, digits_data  # noqa: E402


def test_digits_data_is_the_stratified_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    ref = train_test_split(X / 16.0, y, test_size=0.3, random_state=5, stratify=y)
    Xtr, ytr, Xte, yte = digits_data(5)
    for a, b in zip((Xtr, Xte, ytr, yte), (ref[0], ref[1], ref[2], ref[3])):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def _plain_adam(model, X, y, epochs, lr, seed, group_lasso, regression):
    g = torch.Generator().manual_seed(seed)
    Xt = torch.tensor(X, dtype=torch.float32)
    if regression:
        yt = torch.tensor(np.asarray(y, np.float64).reshape(-1, 1), dtype=torch.float32)
        lossf = torch.nn.functional.mse_loss
    else:
        yt, lossf = torch.tensor(y, dtype=torch.long), torch.nn.functional.cross_entropy
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(Xt), generator=g)
        for s in range(0, len(Xt), 64):
            idx = perm[s:s + 64]
            opt.zero_grad()
            loss = lossf(model(Xt[idx]), yt[idx])
            if group_lasso:
                loss = loss + group_lasso * sum(L.weight.norm(dim=1).sum() for L in linears[:-1])
            loss.backward()
            opt.step()
    return model.eval()


@pytest.mark.parametrize("group_lasso,regression", [(0.0, False), (1e-3, False), (0.0, True)])
def test_the_kit_fit_is_the_encoders_adam_bit_for_bit(group_lasso, regression):
    Xtr, ytr, _, _ = digits_data(2)
    y = ytr.astype(np.float64) / 9.0 if regression else ytr
    torch.manual_seed(2)
    out = 1 if regression else 10
    a = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 12),
                            torch.nn.ReLU(), torch.nn.Linear(12, out))
    b = copy.deepcopy(a)
    _fit(a, Xtr, y, 2, 3e-3, 2, group_lasso, regression=regression)
    _plain_adam(b, Xtr, y, 2, 3e-3, 2, group_lasso, regression)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), k
