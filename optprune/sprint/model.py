"""A small decoder-only transformer with inference-time head masks.

Block l (pre-norm):

    x <- x + W_o^l concat_h( m_{l,h} * softmax(q_h k_h^T / sqrt(d_h) + causal) v_h ) + b_o^l
    x <- x + FFN(LN(x))

``m`` is the head mask, shape (L, H_max) for the whole batch or (B, L, H_max) for one
configuration per row; m_{l,h} = 0 zeroes head h's output *before* the output
projection, which is exactly removing that head's contribution W_o[:, h] o_h (SPRINT's
pruning of one head, formulations/sprint.md). Weights are never touched; ``without_heads``
builds the physically smaller model and tests check the two agree.

Layers may have different head counts (even 0). Generation uses a key/value cache;
masks act after attention, so the cache is valid under any mask.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, ValidationError, check
from ..experiments.checkpoint import load_checkpoint, save_checkpoint
from ..experiments.training import fit
from .task import Question, Tokenizer, generate_questions


@dataclass(frozen=True)
class ModelSpec:
    vocab_size: int
    max_len: int
    d_model: int = 64
    heads: tuple[int, ...] = (4, 4, 4)
    head_dim: int = 16
    d_ff: int = 128
    eq_id: int = 3
    op_ids: tuple[int, ...] = (4, 5, 6)

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(int(h) for h in self.heads))
        object.__setattr__(self, "op_ids", tuple(int(h) for h in self.op_ids))
        check(len(self.heads) >= 1 and all(h >= 0 for h in self.heads),
              "The 'heads' field of ModelSpec", "one non-negative head count per layer", self.heads)

    @property
    def n_layers(self) -> int:
        return len(self.heads)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        inner = n_heads * head_dim
        with warnings.catch_warnings():  # a 0-head layer has empty weights; that is fine
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.qkv = nn.Linear(d_model, 3 * inner)
            self.out = nn.Linear(inner, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: list | None = None) -> torch.Tensor:
        """x: (B, T, d). mask: (B, H) or (H,) of head multipliers. cache: [k, v] or []."""
        b, t, _ = x.shape
        h, dh = self.n_heads, self.head_dim
        if h == 0:
            return self.out.bias.expand(b, t, -1)
        q, k, v = self.qkv(x).view(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)
        past = 0
        if cache is not None:
            if cache:
                past = cache[0].shape[2]
                k = torch.cat([cache[0], k], dim=2)
                v = torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        att = (q @ k.transpose(-2, -1)) * dh ** -0.5
        if t > 1:
            qi = torch.arange(past, past + t).unsqueeze(1)
            kj = torch.arange(past + t).unsqueeze(0)
            att = att.masked_fill(kj > qi, float("-inf"))
        o = torch.softmax(att, dim=-1) @ v  # (B, H, T, dh)
        if mask is not None:
            m = mask if mask.dim() == 2 else mask.unsqueeze(0).expand(b, -1)
            o = o * m[:, :h].to(o.dtype).view(b, h, 1, 1)
        return self.out(o.transpose(1, 2).reshape(b, t, h * dh))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, head_dim: int, d_ff: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, head_dim)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x, mask=None, cache=None):
        x = x + self.attn(self.ln1(x), mask, cache)
        return x + self.ff(self.ln2(x))


class SprintTransformer(nn.Module):
    """Decoder-only transformer; ``forward(tokens, head_mask)`` returns logits (B, T, V)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.tok = nn.Embedding(spec.vocab_size, spec.d_model)
        self.pos = nn.Embedding(spec.max_len, spec.d_model)
        self.step = nn.Embedding(spec.max_len + 1, spec.d_model)
        self.blocks = nn.ModuleList(
            Block(spec.d_model, h, spec.head_dim, spec.d_ff) for h in spec.heads)
        self.ln_f = nn.LayerNorm(spec.d_model)
        self.head = nn.Linear(spec.d_model, spec.vocab_size)

    @property
    def heads(self) -> tuple[int, ...]:
        return self.spec.heads

    def check_mask(self, head_mask: torch.Tensor | None) -> torch.Tensor | None:
        if head_mask is None:
            return None
        hm = torch.as_tensor(head_mask, dtype=torch.float32)
        want = (self.spec.n_layers, max(self.heads) if self.heads else 0)
        if hm.dim() not in (2, 3) or tuple(hm.shape[-2:]) != want:
            raise ValidationError(
                f"The head mask must have shape (L, H_max) = {want} or (B, {want[0]}, {want[1]}); "
                f"got {tuple(hm.shape)}. Build it with optprune.sprint.configs.config_masks."
            )
        return hm

    def step_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """Step index of each position of whole sequences (B, T).

        Question tokens op_i, d_i get i (<bos>, a0 get 0); the token at offset j >= 0
        from '=' gets j + 1, the step whose result it predicts. Attending from the
        position that writes r_i to the tokens of step i is then a match of equal step
        embeddings (as "abacus" embeddings do for arithmetic), which a small model
        learns in a few hundred updates instead of thousands.
        """
        is_op = torch.zeros_like(tokens, dtype=torch.bool)
        for o in self.spec.op_ids:
            is_op |= tokens == o
        is_eq = tokens == self.spec.eq_id
        seen_eq = torch.cumsum(is_eq.long(), dim=1) > 0
        q_step = torch.cumsum(is_op.long(), dim=1)
        eq_pos = torch.where(is_eq.any(1), is_eq.long().argmax(1), tokens.shape[1])
        a_step = torch.arange(tokens.shape[1]).unsqueeze(0) - eq_pos.unsqueeze(1) + 1
        return torch.where(seen_eq, a_step, q_step).clamp(0, self.spec.max_len)

    def forward(self, tokens: torch.Tensor, head_mask: torch.Tensor | None = None,
                caches: list | None = None, return_hidden: bool = False,
                steps: torch.Tensor | None = None):
        """Logits (B, T, V) (and the final hidden states if ``return_hidden``).

        ``caches``: one list per layer for incremental decoding; ``steps``: step ids of
        ``tokens`` when they continue a cached prefix (whole sequences compute them).
        """
        hm = self.check_mask(head_mask)
        b, t = tokens.shape
        past = caches[0][0].shape[2] if caches and caches[0] else 0
        if past + t > self.spec.max_len:
            raise ValidationError(f"The sequence must have at most {self.spec.max_len} tokens "
                                  f"(the model's max_len); got {past + t}.")
        if steps is None:
            if past:
                raise ValidationError("Pass steps= when continuing a cached prefix.")
            steps = self.step_ids(tokens)
        x = self.tok(tokens) + self.pos(torch.arange(past, past + t)) + self.step(steps)
        for layer, blk in enumerate(self.blocks):
            m = None if hm is None else (hm[layer] if hm.dim() == 2 else hm[:, layer])
            x = blk(x, m, None if caches is None else caches[layer])
        hidden = self.ln_f(x)
        logits = self.head(hidden)
        return (logits, hidden) if return_hidden else logits

    def without_heads(self, pruned: Sequence[tuple[int, int]]) -> "SprintTransformer":
        """A physically smaller copy with the (layer, head) pairs removed (fewer parameters).

        Drops head h's rows of W_q, W_k, W_v (and biases) and its columns of W_o.
        """
        drop = {(int(layer), int(h)) for layer, h in pruned}
        for layer, h in drop:
            if not (0 <= layer < len(self.heads) and 0 <= h < self.heads[layer]):
                raise ValidationError(f"There is no head {h} in layer {layer}; the model has "
                                      f"heads per layer {list(self.heads)}.")
        new_heads = tuple(n - sum(1 for (la, _) in pruned if la == i)
                          for i, n in enumerate(self.heads))
        spec = ModelSpec(**{**asdict(self.spec), "heads": new_heads})
        small = SprintTransformer(spec)
        sd = {k: v.clone() for k, v in self.state_dict().items()}
        dh = self.spec.head_dim
        for i, n in enumerate(self.heads):
            keep = [h for h in range(n) if (i, h) not in pruned]
            cols = torch.tensor([h * dh + j for h in keep for j in range(dh)], dtype=torch.long)
            inner = n * dh
            rows = torch.cat([cols + s * inner for s in range(3)]) if len(keep) else cols
            p = f"blocks.{i}.attn."
            sd[p + "qkv.weight"] = sd[p + "qkv.weight"][rows]
            sd[p + "qkv.bias"] = sd[p + "qkv.bias"][rows]
            sd[p + "out.weight"] = sd[p + "out.weight"][:, cols]
        small.load_state_dict(sd)
        return small

    # ------------------------------------------------------------------ io
    def save(self, path: str | Path, **meta: object) -> Path:
        """Write the model as a checkpoint of kind "sprint" (optprune.experiments)."""
        spec = {"kind": "sprint", **asdict(self.spec)}
        return save_checkpoint(path, self, spec, **meta)

    @classmethod
    def load(cls, path: str | Path) -> "SprintTransformer":
        """Rebuild a model written by :meth:`save` (any head counts); eval mode."""
        ck = load_checkpoint(path, kind="sprint", hint="Make one with `optprune sprint train`.")
        spec = {k: v for k, v in (ck.spec or {}).items() if k != "kind"}
        try:
            model = cls(ModelSpec(**spec))
            model.load_state_dict(ck.state_dict)
        except (TypeError, RuntimeError) as exc:
            raise CheckpointError(f"The checkpoint {str(path)!r} does not rebuild a SPRINT "
                                  f"model: {exc}") from exc
        model.eval()
        return model


@torch.no_grad()
def generate(model: SprintTransformer, prompt: torch.Tensor, max_new_tokens: int,
             head_mask: torch.Tensor | None = None, temperature: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue ``prompt`` (B, T0) by ``max_new_tokens`` tokens (B, max_new_tokens).

    temperature 0 is greedy (argmax); otherwise tokens are sampled from
    softmax(logits / temperature). All rows share one prompt length (questions of one
    number of steps), so no padding is needed.
    """
    check(temperature >= 0, "The 'temperature' parameter", "non-negative", temperature)
    model.eval()
    caches: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    logits = model(prompt, head_mask, caches)[:, -1]
    step_id = int(model.step_ids(prompt[:1])[0, -1])
    out = []
    for i in range(max_new_tokens):
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        out.append(nxt)
        if i + 1 < max_new_tokens:
            step_id += 1
            sid = torch.full((prompt.shape[0], 1), step_id, dtype=torch.long)
            logits = model(nxt.unsqueeze(1), head_mask, caches, steps=sid)[:, -1]
    return torch.stack(out, dim=1)


def batch_examples(tok: Tokenizer, questions: Sequence[Question]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs and targets; targets are -100 except on the answer tokens."""
    seqs = [(tok.prompt(q), tok.target(q)) for q in questions]
    t = max(len(p) + len(a) for p, a in seqs) - 1
    x = torch.full((len(seqs), t), tok.pad, dtype=torch.long)
    y = torch.full((len(seqs), t), -100, dtype=torch.long)
    for i, (p, a) in enumerate(seqs):
        full = p + a
        x[i, : len(full) - 1] = torch.tensor(full[:-1])
        y[i, len(p) - 1: len(full) - 1] = torch.tensor(a)
    return x, y


@dataclass
class TrainReport:
    steps: int
    train_time_s: float
    final_loss: float
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def train_model(model: SprintTransformer, tok: Tokenizer, *, steps: int = 1500,
                batch_size: int = 64, lr: float = 3e-3, min_steps: int = 1, max_steps: int = 8,
                seed: int = 0, head_dropout: float = 0.0,
                time_limit_s: float | None = None, schedule_steps: int | None = None,
                on_step: Callable[[int, SprintTransformer], None] | None = None) -> TrainReport:
    """Teacher-forced next-token training on fresh random questions each step, by the
    kit's :func:`~optprune.experiments.fit` (AdamW, weight decay 0.01, one-cycle
    schedule, gradients clipped to norm 1, a non-finite loss stops with
    TrainingDivergedError).

    Loss: cross-entropy on the reasoning tokens r_1..r_k, <eos> only. ``head_dropout``
    zeroes each (example, layer, head) with that probability during training (unscaled,
    the same operation as an inference-time mask), which makes single-head pruning less
    destructive; 0 disables it. ``schedule_steps`` (default ``steps``) is the length of
    the one-cycle learning-rate schedule; a larger value stops training part-way along
    it (an under-trained model whose errors leave room for best-of-N).
    ``on_step(steps_done, model)`` runs after every step.
    """
    check(steps >= 1, "The 'steps' parameter of train_model", "a positive integer", steps)
    check(0 <= head_dropout < 1, "The 'head_dropout' parameter", "in [0, 1)", head_dropout)
    torch.manual_seed(seed)
    hmax = max(model.heads)

    def questions(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        qs = generate_questions(batch_size, seed=seed * 1_000_003 + step + 1,
                                min_steps=min_steps, max_steps=max_steps, modulus=tok.modulus)
        return batch_examples(tok, qs)

    def loss(x: torch.Tensor, y: torch.Tensor, _step: int, _epoch: int) -> torch.Tensor:
        hm = None
        if head_dropout > 0:
            hm = (torch.rand(batch_size, len(model.heads), hmax) >= head_dropout).float()
        logits = model(x, hm)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    hook = None if on_step is None else (lambda step: on_step(step + 1, model))
    h = fit(model, questions, steps=steps, lr=lr, weight_decay=0.01, schedule="onecycle",
            schedule_steps=schedule_steps, clip_grad_norm=1.0, batch_loss=loss,
            after_step=hook, time_limit_s=time_limit_s)
    return TrainReport(h.steps, h.time_s, float(np.mean(h.loss[-20:])), h.loss)


def group_by_steps(questions: Sequence[Question]) -> dict[int, np.ndarray]:
    """Indices of the questions with each number of steps (one prompt length per group)."""
    steps = np.array([q.steps for q in questions])
    return {int(k): np.flatnonzero(steps == k) for k in np.unique(steps)}


@torch.no_grad()
def answer(model: SprintTransformer, tok: Tokenizer, questions: Sequence[Question],
           head_mask: torch.Tensor | None = None, temperature: float = 0.0,
           seed: int = 0, repeats: int = 1) -> np.ndarray:
    """Answers (int, -1 = malformed) of every question, shape (len(questions), repeats).

    ``head_mask`` is (L, H_max) for all questions. With temperature > 0 each repeat is an
    independent sample (torch generator seeded by ``seed``).
    """
    out = np.full((len(questions), repeats), -1, dtype=np.int64)
    gen = torch.Generator().manual_seed(seed)
    for k, idx in group_by_steps(questions).items():
        prompt = torch.tensor([tok.prompt(questions[i]) for i in idx], dtype=torch.long)
        prompt = prompt.repeat_interleave(repeats, dim=0)
        g = generate(model, prompt, k + 1, head_mask, temperature, gen).numpy()
        ans = np.array([tok.answer_of(row, k) for row in g]).reshape(len(idx), repeats)
        out[idx] = ans
    return out


def accuracy(model: SprintTransformer, tok: Tokenizer, questions: Sequence[Question],
             head_mask: torch.Tensor | None = None) -> float:
    """Greedy accuracy of the final answer."""
    a = answer(model, tok, questions, head_mask)[:, 0]
    truth = np.array([q.answer for q in questions])
    return float(np.mean(a == truth)) if len(questions) else math.nan


def default_model(tok: Tokenizer, max_steps: int = 8, heads: Sequence[int] = (4, 4, 4),
                  d_model: int = 64, head_dim: int = 16, d_ff: int = 128,
                  seed: int = 0) -> SprintTransformer:
    torch.manual_seed(seed)
    return SprintTransformer(ModelSpec(tok.vocab_size, tok.max_len(max_steps), d_model,
                                       tuple(heads), head_dim, d_ff))


@torch.no_grad()
def answer_table(model: SprintTransformer, tok: Tokenizer, questions: Sequence[Question],
                 masks: torch.Tensor, temperature: float = 0.0, seed: int = 0) -> np.ndarray:
    """Answers of every question under every configuration: shape (Q, C), -1 = malformed.

    ``masks`` is (C, L, H_max); all (question, configuration) pairs of one prompt length
    run as one batch, each row with its own head mask.
    """
    masks = torch.as_tensor(masks, dtype=torch.float32)
    c = masks.shape[0]
    out = np.full((len(questions), c), -1, dtype=np.int64)
    gen = torch.Generator().manual_seed(seed)
    for k, idx in group_by_steps(questions).items():
        prompt = torch.tensor([tok.prompt(questions[i]) for i in idx], dtype=torch.long)
        prompt = prompt.repeat_interleave(c, dim=0)
        hm = masks.repeat(len(idx), 1, 1)
        g = generate(model, prompt, k + 1, hm, temperature, gen).numpy()
        out[idx] = np.array([tok.answer_of(row, k) for row in g]).reshape(len(idx), c)
    return out
