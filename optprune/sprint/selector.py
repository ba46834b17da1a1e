"""SPRINT's selector: which head configurations suit which question.

1. Correctness table: greedy answers a_{q,c} of every training question q under every
   configuration c; correct_{q,c} = [a_{q,c} == answer_q].
2. Question features phi(q): the dense model's final hidden states over the prompt,
   mean-pooled, concatenated with the state at '=' (the position that starts the
   reasoning), standardized with the training mean and deviation.
3. Embeddings: u_q = normalize(MLP(phi(q))), v_c = normalize(E[c]) (a learned table),
   alignment s_{q,c} = u_q . v_c (cosine). Contrastive training with the supervised
   InfoNCE loss (positives P(q) = configurations that answer q correctly):

       L = mean_q  -1/|P(q)| sum_{p in P(q)} log( exp(s_{q,p}/tau) / sum_c exp(s_{q,c}/tau) )

   over questions with 0 < |P(q)| < C (the others carry no contrast).
4. Predicted accuracy: P(correct | q, c) = sigmoid(a s_{q,c} + b_c), a logistic
   regression on a held-out part of the training questions (b_c: each configuration's
   own base rate), so the subset objective adds calibrated probabilities.
5. Dissimilarity of two configurations: D_ij = fraction of training questions on which
   their answers differ (two configurations that always agree add nothing to a vote).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, ValidationError, check
from ..experiments.checkpoint import load_checkpoint, save_checkpoint
from ..experiments.training import fit
from .configs import HeadConfig
from .model import SprintTransformer, group_by_steps
from .task import Question, Tokenizer


@torch.no_grad()
def question_features(model: SprintTransformer, tok: Tokenizer,
                      questions: Sequence[Question]) -> np.ndarray:
    """phi(q) = [mean over prompt of h_T, h_T at '='] from the dense model: (Q, 2 d)."""
    d = model.spec.d_model
    out = np.zeros((len(questions), 2 * d), dtype=np.float32)
    model.eval()
    for _, idx in group_by_steps(questions).items():
        prompt = torch.tensor([tok.prompt(questions[i]) for i in idx], dtype=torch.long)
        _, hidden = model(prompt, return_hidden=True)
        out[idx] = torch.cat([hidden.mean(1), hidden[:, -1]], dim=1).numpy()
    return out


def info_nce_loss(u: torch.Tensor, v: torch.Tensor, positives: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """Supervised InfoNCE (see module docstring); u (B, e), v (C, e) unit rows, positives bool."""
    logits = u @ v.T / temperature
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = positives.float()
    return (-(logp * pos).sum(1) / pos.sum(1).clamp(min=1)).mean()


class _Net(nn.Module):
    def __init__(self, feature_dim: int, n_configs: int, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.q = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(),
                               nn.Linear(hidden, embed_dim))
        self.c = nn.Embedding(n_configs, embed_dim)

    def forward(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.q(phi), dim=1), F.normalize(self.c.weight, dim=1)


@dataclass
class _Calib:
    a: float
    b: np.ndarray


_PARAMS = ("embed_dim", "hidden", "temperature", "epochs", "lr", "batch_size", "calib_fraction",
           "seed")


class ContrastiveSelector:
    """Fit with ``fit(features, answers, truth)``; fitted attributes end in ``_``."""

    def __init__(self, configs: Sequence[HeadConfig], embed_dim: int = 16, hidden: int = 64,
                 temperature: float = 0.1, epochs: int = 60, lr: float = 3e-3,
                 batch_size: int = 64, calib_fraction: float = 0.25, seed: int = 0) -> None:
        self.configs = list(configs)
        self.embed_dim, self.hidden, self.temperature = embed_dim, hidden, temperature
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.calib_fraction, self.seed = calib_fraction, seed

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.configs]

    def index_of(self, names: Sequence[str]) -> list[int]:
        """Positions of configuration ids; one error names every unknown id."""
        ids = self.ids
        parsed = [HeadConfig.parse(n).id for n in names]
        bad = [n for n, p in zip(names, parsed) if p not in ids]
        if bad:
            raise ValidationError(
                f"Unknown configurations {bad}: the selector was trained on {len(ids)} "
                f"configurations ({', '.join(ids[:8])}{', ...' if len(ids) > 8 else ''}). "
                "Use ids from that list.")
        return [ids.index(p) for p in parsed]

    # ---------------------------------------------------------------- fit
    def fit(self, features: np.ndarray, answers: np.ndarray, truth: np.ndarray,
            ) -> "ContrastiveSelector":
        feats = np.asarray(features, dtype=np.float32)
        answers = np.asarray(answers)
        truth = np.asarray(truth).ravel()
        q, c = answers.shape
        check(c == len(self.configs), "The answer table", f"of {len(self.configs)} columns "
              "(one per configuration)", answers.shape)
        check(feats.shape[0] == q and truth.size == q, "features, answers and truth",
              "the same number of questions", (feats.shape[0], q, truth.size))
        correct = answers == truth[:, None]
        self.mean_ = feats.mean(0)
        self.std_ = feats.std(0) + 1e-6
        phi = (feats - self.mean_) / self.std_
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(q)
        n_cal = int(round(self.calib_fraction * q))
        cal, tr = perm[:n_cal], perm[n_cal:]
        torch.manual_seed(self.seed)
        self.net_ = _Net(phi.shape[1], c, self.embed_dim, self.hidden)
        inform = tr[(correct[tr].sum(1) > 0) & (correct[tr].sum(1) < c)]
        check(inform.size >= 2, "The training questions",
              "at least two with some but not all configurations correct", inform.size,
              "Use more training questions or harder ones.")
        x_t = torch.from_numpy(phi[inform])
        pos_t = torch.from_numpy(correct[inform])
        with torch.no_grad():
            u, v = self.net_(x_t)
            self.initial_loss_ = float(info_nce_loss(u, v, pos_t, self.temperature))

        def loss(xb: torch.Tensor, pb: torch.Tensor, _step: int, _epoch: int) -> torch.Tensor:
            u, v = self.net_(xb)
            return info_nce_loss(u, v, pb, self.temperature)

        # Adam: AdamW without weight decay is the same update
        hist = fit(self.net_, x_t, pos_t, epochs=self.epochs, lr=self.lr,
                   batch_size=self.batch_size, weight_decay=0.0, seed=self.seed,
                   schedule="constant", batch_loss=loss)
        self.loss_history_: list[float] = hist.epoch_loss
        with torch.no_grad():
            u, v = self.net_(x_t)
            self.final_loss_ = float(info_nce_loss(u, v, pos_t, self.temperature))
        self.calib_ = self._calibrate(phi[cal] if n_cal else phi, correct[cal] if n_cal else correct)
        self.dissimilarity_ = (answers[:, :, None] != answers[:, None, :]).mean(0)
        self.train_accuracy_ = correct.mean(0)
        return self

    def _calibrate(self, phi: np.ndarray, correct: np.ndarray) -> _Calib:
        from sklearn.linear_model import LogisticRegression

        s = self._align(phi)
        q, c = s.shape
        x = np.concatenate([s.reshape(-1, 1), np.tile(np.eye(c), (q, 1))], axis=1)
        y = correct.reshape(-1).astype(int)
        if y.min() == y.max():  # one class only: constant probability
            return _Calib(0.0, np.full(c, 10.0 if y[0] else -10.0))
        lr = LogisticRegression(C=10.0, max_iter=500, fit_intercept=False).fit(x, y)
        return _Calib(float(lr.coef_[0, 0]), lr.coef_[0, 1:].copy())

    # ---------------------------------------------------------------- use
    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise ValidationError("This ContrastiveSelector is not fitted yet; call fit() first "
                                  "or load one with ContrastiveSelector.load().")

    def _align(self, phi: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            u, v = self.net_(torch.as_tensor(phi, dtype=torch.float32))
            return (u @ v.T).numpy().astype(np.float64)

    def alignment(self, features: np.ndarray) -> np.ndarray:
        """Cosine alignment s_{q,c} (Q, C)."""
        self._check_fitted()
        feats = np.atleast_2d(np.asarray(features, dtype=np.float32))
        check(feats.shape[1] == self.mean_.size, "The question features",
              f"{self.mean_.size} wide (the model the selector was trained with)", feats.shape)
        return self._align((feats - self.mean_) / self.std_)

    def predicted_accuracy(self, features: np.ndarray) -> np.ndarray:
        """P(correct | q, c) = sigmoid(a s_{q,c} + b_c), shape (Q, C)."""
        s = self.alignment(features)
        z = self.calib_.a * s + self.calib_.b[None, :]
        return 1.0 / (1.0 + np.exp(-z))

    # ---------------------------------------------------------------- io
    def save(self, path: str | Path) -> Path:
        """Write the fitted selector as a checkpoint of kind "sprint.selector"."""
        self._check_fitted()
        spec = {"kind": "sprint.selector", "configs": self.ids,
                "params": {k: getattr(self, k) for k in _PARAMS}}
        state = {**{f"net.{k}": v for k, v in self.net_.state_dict().items()},
                 "mean": torch.from_numpy(self.mean_), "std": torch.from_numpy(self.std_),
                 "calib_b": torch.from_numpy(self.calib_.b),
                 "dissimilarity": torch.from_numpy(self.dissimilarity_),
                 "train_accuracy": torch.from_numpy(self.train_accuracy_)}
        return save_checkpoint(path, state, spec, calib_a=self.calib_.a,
                               loss_history=self.loss_history_,
                               initial_loss=self.initial_loss_, final_loss=self.final_loss_)

    @classmethod
    def load(cls, path: str | Path) -> "ContrastiveSelector":
        """Rebuild a selector written by :meth:`save`."""
        ck = load_checkpoint(path, kind="sprint.selector",
                             hint="Make one with `optprune sprint train`.")
        spec, sd = ck.spec or {}, ck.state_dict
        try:
            self = cls([HeadConfig.parse(i) for i in spec["configs"]], **spec["params"])
            mean = sd["mean"].numpy()
            self.net_ = _Net(mean.size, len(self.configs), self.embed_dim, self.hidden)
            self.net_.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("net.")})
            self.mean_, self.std_ = mean, sd["std"].numpy()
            self.calib_ = _Calib(float(ck.meta["calib_a"]), sd["calib_b"].numpy())
            self.dissimilarity_ = sd["dissimilarity"].numpy()
            self.train_accuracy_ = sd["train_accuracy"].numpy()
            self.loss_history_ = list(ck.meta["loss_history"])
            self.initial_loss_ = float(ck.meta["initial_loss"])
            self.final_loss_ = float(ck.meta["final_loss"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"The checkpoint {str(path)!r} does not rebuild a SPRINT "
                                  f"selector: {type(exc).__name__}: {exc}") from exc
        return self


def majority_vote(candidates: Sequence[int] | np.ndarray,
                  weights: Sequence[float] | np.ndarray | None = None) -> int:
    """Most frequent valid answer (-1 = malformed is ignored); ties go to the larger
    summed weight, then to the answer seen first. -1 if every candidate is malformed."""
    tally: dict[int, list[float]] = {}
    for k, a in enumerate(candidates):
        a = int(a)
        if a < 0:
            continue
        w = 0.0 if weights is None else float(weights[k])
        if a not in tally:
            tally[a] = [0.0, 0.0, -k]
        tally[a][0] += 1
        tally[a][1] += w
    if not tally:
        return -1
    return max(tally.items(), key=lambda kv: tuple(kv[1]))[0]


def weighted_vote(candidates: Sequence[int], p_correct: Sequence[float], n_answers: int) -> int:
    """Answer with the largest summed log-odds weight (Bayes for independent voters).

    A voter right with probability p and otherwise uniformly wrong over the other
    n_answers - 1 answers gives the answer it names the likelihood ratio
    w = log((n_answers - 1) p / (1 - p)); voters with w <= 0 (no better than chance)
    get weight 0. Ties and all-zero weights fall back to ``majority_vote``.
    """
    p = np.clip(np.asarray(p_correct, dtype=np.float64), 1e-6, 1 - 1e-6)
    w = np.maximum(np.log((n_answers - 1) * p / (1 - p)), 0.0)
    tally: dict[int, float] = {}
    for a, wk in zip(candidates, w):
        if int(a) >= 0:
            tally[int(a)] = tally.get(int(a), 0.0) + float(wk)
    if not tally or max(tally.values()) <= 0:
        return majority_vote(candidates, p)
    best = max(tally.values())
    winners = [a for a, v in tally.items() if v >= best - 1e-12]
    if len(winners) == 1:
        return winners[0]
    keep = [k for k, a in enumerate(candidates) if int(a) in winners]
    return majority_vote([candidates[k] for k in keep], [p[k] for k in keep])
