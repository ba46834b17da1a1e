"""The embedded dataset every digits experiment of the project uses, with one split.

scikit-learn's ``load_digits``: 1,797 grey 8x8 images of the digits 0-9, shipped inside
the package (no download). One convention for every benchmark and test: pixels / 16 (in
[0, 1]), a stratified train/test split with ``test_fraction`` 0.25 (1,347 train / 450
test images) and ``random_state=seed``; image layout (N, 1, 8, 8) or flat (N, 64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import check

__all__ = ["DIGITS_SHAPE", "TEST_FRACTION", "Digits", "load_digits_split"]

DIGITS_SHAPE = (1, 8, 8)
TEST_FRACTION = 0.25


@dataclass(frozen=True)
class Digits:
    """A train/test split: inputs float (N, 1, 8, 8) or (N, 64) in [0, 1], labels int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def flat(self) -> "Digits":
        """The same split with each image flattened to 64 pixels (row-major)."""
        return Digits(self.x_train.flatten(1), self.y_train, self.x_test.flatten(1), self.y_test)

    def as_tuple(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_train, y_train, x_test, y_test)."""
        return self.x_train, self.y_train, self.x_test, self.y_test


def load_digits_split(test_fraction: float = TEST_FRACTION, seed: int = 0, flat: bool = False,
                      dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> Digits:
    """scikit-learn's digits, pixels / 16, stratified train/test split of ``seed``.

    ``flat=True`` gives (N, 64) inputs instead of (N, 1, 8, 8); ``dtype`` and ``device``
    place the inputs where the model lives (labels are int64 on the same device).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    check(isinstance(test_fraction, float) and 0 < test_fraction < 1,
          "The digits 'test_fraction'", "a float in (0, 1)", test_fraction)
    check(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool),
          "The split 'seed'", "an integer", seed)
    check(isinstance(dtype, torch.dtype) and dtype.is_floating_point, "The input 'dtype'",
          "a floating torch dtype", dtype)
    d = load_digits()
    x = (d.images / 16.0)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=test_fraction,
                                          random_state=int(seed), stratify=d.target)

    def inputs(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a.astype(np.float32)).to(device=device, dtype=dtype)
        return t.flatten(1) if flat else t

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).long().to(device)

    return Digits(inputs(xtr), labels(ytr), inputs(xte), labels(yte))
