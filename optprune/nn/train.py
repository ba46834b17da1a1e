"""The digits split, training loop and accuracy of the experiment kit under their
earlier names (``train`` is :func:`optprune.experiments.fit`); new code imports
:mod:`optprune.experiments`."""

from __future__ import annotations

from ..experiments.data import Digits, load_digits_split
from ..experiments.training import accuracy
from ..experiments.training import fit as train

__all__ = ["Digits", "load_digits_split", "train", "accuracy"]
